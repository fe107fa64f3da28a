// What the HTTP engine's policy reads of a request besides its method and path: the query parameters and
// the headers, each as every reading an upstream could take (docs/http-engine.md). Pure. Where upstreams
// differ, the policy gets all readings — a repeated parameter's every value (first-wins and last-wins
// servers alike), `+` as a space (form decoding: Express, Go, Spring, Python) and as itself (servers
// that decode only escapes), an escape left after one decoding and what a second decoding makes of it —
// and allow rules need every reading allowed, deny rules any one (render-rego.ts). Ambiguities no list of
// readings covers are refused: `;` (a separator to some servers, Go < 1.17, older Python), malformed or
// non-UTF-8 escapes, control characters.

export class UnreadableQuery extends Error {
  override name = 'UnreadableQuery';
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new UnreadableQuery('malformed or non-UTF-8 percent-escape in the query');
  }
}

/** Every reading of one encoded name or value. */
function readings(encoded: string): string[] {
  const out = new Set<string>();
  const variants = encoded.includes('+') ? [encoded.replaceAll('+', '%20'), encoded.replaceAll('+', '%2B')] : [encoded];
  for (const variant of variants) {
    const once = decode(variant);
    out.add(once);
    // A second decoding, by servers (or a proxy in front of them) that decode twice; one that cannot
    // decode it again refuses the request itself.
    if (/%[0-9A-Fa-f]{2}/.test(once)) {
      try {
        out.add(decodeURIComponent(once));
      } catch {
        // not decodable twice
      }
    }
  }
  return [...out];
}

/** The query's parameters: name → every reading of every value, in order of appearance. */
export function readQuery(rawQuery: string): Record<string, string[]> {
  const query: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  if (rawQuery === '') return query;
  if (rawQuery.includes(';')) throw new UnreadableQuery('";" in the query (a separator to some servers)');
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused here
  if (/[\x00-\x1f\x7f]/.test(rawQuery)) throw new UnreadableQuery('control character in the query');
  for (const pair of rawQuery.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const names = readings(eq === -1 ? pair : pair.slice(0, eq));
    const values = readings(eq === -1 ? '' : pair.slice(eq + 1));
    for (const name of names) {
      const list = (query[name] ??= []);
      for (const v of values) if (!list.includes(v)) list.push(v);
    }
  }
  return query;
}

/**
 * Header name → values, as forwarded (one line per name; duplicates were joined by checkHeaders). A name
 * with `_` is also read as its dashed spelling: CGI, WSGI (wsgiref, Werkzeug), PHP and nginx with
 * underscores_in_headers give `X_Debug` and `X-Debug` one name (HTTP_X_DEBUG), so a rule on `X-Debug`
 * sees both.
 */
export function readHeaders(forwarded: Readonly<Record<string, string>>): Record<string, string[]> {
  const headers: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (const [name, value] of Object.entries(forwarded)) {
    for (const reading of name.includes('_') ? [name, name.replaceAll('_', '-')] : [name]) {
      const list = (headers[reading] ??= []);
      if (!list.includes(value)) list.push(value);
    }
  }
  return headers;
}
