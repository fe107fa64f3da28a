// The path an HTTP request is decided on, and forwarded with: normalised the way upstream servers and
// frameworks read paths, so policy sees what the upstream will serve (RFC 3986 §6.2.2). Pure.
// - Percent-escapes of unreserved characters are decoded (%41 → A, %2e → .), others upper-cased (%2f stays
//   refused, see below); malformed escapes and escapes that are not UTF-8 are refused.
// - Runs of slashes collapse to one (nginx merge_slashes, Spring, most routers).
// - Dot segments are resolved (RFC 3986 §5.2.4), also when they were written %2e; climbing above the root
//   is refused.
// - Refused outright, because upstreams disagree about them: encoded slashes and backslashes (%2F, %5C;
//   decoded by some servers and not others), raw backslashes (a separator on IIS and some routers), `;`
//   (path parameters: Tomcat and Spring cut `/admin;x` to `/admin`), control characters and NUL, and
//   double encoding (`%252e`: one decoding or two?).
// The normalised path is what the upstream receives, so the decision and the forwarded request agree.

export class UnnormalisablePath extends Error {
  override name = 'UnnormalisablePath';
}

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

function decodeUnreserved(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i] ?? '';
    if (c !== '%') {
      out += c;
      continue;
    }
    const hex = raw.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new UnnormalisablePath('malformed percent-escape');
    const code = parseInt(hex, 16);
    if (code < 0x20 || code === 0x7f) throw new UnnormalisablePath('encoded control character');
    if (code === 0x2f || code === 0x5c) throw new UnnormalisablePath('encoded slash or backslash');
    if (code === 0x3b) throw new UnnormalisablePath('encoded semicolon');
    const ch = String.fromCharCode(code);
    out += code < 0x80 && UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
    i += 2;
  }
  return out;
}

/** Checks that the remaining escapes form valid UTF-8 (a server decoding them must get text, not bytes we never saw). */
function checkUtf8(path: string): void {
  try {
    decodeURIComponent(path);
  } catch {
    throw new UnnormalisablePath('percent-escapes are not valid UTF-8');
  }
}

export function normalisePath(rawPath: string): string {
  if (!rawPath.startsWith('/')) throw new UnnormalisablePath('the path is not absolute');
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused here
  if (/[\x00-\x1f\x7f\\;]/.test(rawPath)) throw new UnnormalisablePath('backslash, semicolon or control character');
  // `%252e` is `%2e` to a server that decodes once and `.` to one that decodes twice (some proxies, some
  // frameworks): which one the upstream is cannot be known here.
  if (/%25[0-9A-Fa-f]{2}/.test(rawPath)) throw new UnnormalisablePath('double percent-encoding');
  const decoded = decodeUnreserved(rawPath);
  checkUtf8(decoded);
  const segments = decoded.split('/').slice(1);
  const out: string[] = [];
  for (const [i, segment] of segments.entries()) {
    const last = i === segments.length - 1;
    if (segment === '' && !last) continue;
    if (segment === '.') {
      if (last) out.push('');
      continue;
    }
    if (segment === '..') {
      if (out.length === 0 || (out.length === 1 && out[0] === ''))
        throw new UnnormalisablePath('path climbs above the root');
      out.pop();
      if (last) out.push('');
      continue;
    }
    out.push(segment);
  }
  return `/${out.join('/')}`;
}
