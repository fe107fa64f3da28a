// Request-smuggling and header-ambiguity defences shared by the HTTP-speaking engines (Kubernetes API, HTTP).
// Pure: reads what Node's parser kept of a request (the raw header list, the request target) and says why a
// request must be refused, or which headers may travel upstream. Node's parser already refuses much of this
// (llhttp in strict mode); these checks hold regardless of parser leniency, because a proxy that reads a
// request one way while its upstream reads it another is the smuggling bug (RFC 9112 §6.3, §11.2).

export class AmbiguousRequest extends Error {
  override name = 'AmbiguousRequest';
}

/** Headers that may appear once only: a second copy could be read by the upstream where we read the first. */
const SINGLETON_HEADERS: ReadonlySet<string> = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'authorization',
  'content-type',
  'content-encoding',
  'expect',
  'upgrade',
  'audit-id',
]);

/** Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded, plus proxy credentials. */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/**
 * Headers in which a proxy tells its upstream who the client is and how it was reached. The sidecar is
 * the proxy; an agent sending them would have the upstream believe (and log: kube-apiserver records
 * X-Forwarded-For in its audit events' sourceIPs) an address or host the sidecar never saw.
 */
export const FORWARDING_HEADERS: ReadonlySet<string> = new Set([
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-path',
  'x-forwarded-uri',
  'x-forwarded-server',
  'x-forwarded-scheme',
  'x-forwarded-ssl',
  'x-real-ip',
  'x-client-ip',
  'true-client-ip',
  'x-cluster-client-ip',
  'client-ip',
]);

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible ASCII, obs-text, space and tab; never CR, LF or NUL (RFC 9110 §5.5).
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

export interface CheckedHeaders {
  /** Lower-cased name → value, one entry per header (duplicates of list headers joined with ", "). */
  readonly headers: ReadonlyMap<string, string>;
  /** The Host header's value. */
  readonly host: string;
  /** Body length from Content-Length, or 'chunked', or 0 when neither is present. */
  readonly body: number | 'chunked';
  /** Names listed in Connection, lower-cased (also hop-by-hop). */
  readonly connectionTokens: ReadonlySet<string>;
}

/**
 * Checks the raw header list of a request (alternating names and values, as node:http's rawHeaders). Refuses
 * duplicate singletons, Content-Length with Transfer-Encoding, any Transfer-Encoding but a lone `chunked`,
 * a non-decimal Content-Length, invalid names or values (an obs-fold continuation would surface as a
 * value with CR/LF or as a name with whitespace), and a missing Host.
 */
export function checkHeaders(rawHeaders: readonly string[]): CheckedHeaders {
  const headers = new Map<string, string>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] ?? '').toLowerCase();
    const value = rawHeaders[i + 1] ?? '';
    if (!TOKEN.test(name)) throw new AmbiguousRequest(`invalid header name ${JSON.stringify(name)}`);
    if (!FIELD_VALUE.test(value)) throw new AmbiguousRequest(`invalid characters in the value of ${name}`);
    const previous = headers.get(name);
    if (previous !== undefined) {
      if (SINGLETON_HEADERS.has(name)) throw new AmbiguousRequest(`duplicate ${name} header`);
      headers.set(name, name === 'cookie' ? `${previous}; ${value}` : `${previous}, ${value}`);
    } else headers.set(name, value);
  }
  const host = headers.get('host');
  if (host === undefined || host === '') throw new AmbiguousRequest('missing Host header');
  if (!/^[A-Za-z0-9.\-_~%!$&'()*+,;=:[\]]+$/.test(host)) throw new AmbiguousRequest('invalid Host header');
  const length = headers.get('content-length');
  const encoding = headers.get('transfer-encoding');
  if (length !== undefined && encoding !== undefined) {
    throw new AmbiguousRequest('both Content-Length and Transfer-Encoding');
  }
  let body: number | 'chunked' = 0;
  if (encoding !== undefined) {
    if (encoding.trim().toLowerCase() !== 'chunked') {
      throw new AmbiguousRequest(`Transfer-Encoding ${JSON.stringify(encoding)} is not a lone chunked`);
    }
    body = 'chunked';
  } else if (length !== undefined) {
    if (!/^[0-9]{1,15}$/.test(length)) throw new AmbiguousRequest('Content-Length is not a decimal number');
    body = Number(length);
  }
  const connectionTokens = new Set(
    (headers.get('connection') ?? '')
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter((t) => t !== ''),
  );
  return { headers, host, body, connectionTokens };
}

export interface RequestTarget {
  /** The path as sent (percent-escapes intact). */
  readonly rawPath: string;
  /** The query without `?`, as sent; '' when absent. */
  readonly rawQuery: string;
}

/**
 * Splits the request target. Origin-form (`/path?query`) is the norm; absolute-form
 * (`http://host/path`) is taken only when its authority is the Host header's value, since otherwise the
 * upstream or an intermediary could route by one while we decide by the other (RFC 9112 §3.2.2).
 * asterisk-form and authority-form (CONNECT) are refused.
 */
export function splitTarget(target: string, host: string): RequestTarget {
  let pathAndQuery = target;
  if (!target.startsWith('/')) {
    const m = /^https?:\/\/([^/?#]*)(.*)$/i.exec(target);
    if (m === null) throw new AmbiguousRequest('request target is neither origin-form nor absolute-form');
    if ((m[1] ?? '').toLowerCase() !== host.toLowerCase()) {
      throw new AmbiguousRequest('absolute-form target names another host than the Host header');
    }
    pathAndQuery = m[2] === '' || m[2] === undefined ? '/' : m[2];
    if (!pathAndQuery.startsWith('/')) throw new AmbiguousRequest('absolute-form target without a path');
  }
  if (pathAndQuery.includes('#')) throw new AmbiguousRequest('fragment in the request target');
  const q = pathAndQuery.indexOf('?');
  return q === -1
    ? { rawPath: pathAndQuery, rawQuery: '' }
    : { rawPath: pathAndQuery.slice(0, q), rawQuery: pathAndQuery.slice(q + 1) };
}

/**
 * The request headers to send upstream: hop-by-hop headers, those named in Connection, `drop` (the agent's
 * credentials, ...) and anything Node recomputes (content-length, host) removed.
 */
export function forwardableHeaders(checked: CheckedHeaders, drop: (name: string) => boolean): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of checked.headers) {
    if (HOP_BY_HOP.has(name) || checked.connectionTokens.has(name) || name === 'host' || name === 'content-length') {
      continue;
    }
    if (drop(name)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * Response headers to pass to the client: hop-by-hop ones, those the response's Connection names and `drop`
 * (content-length when the engine rewrites the body) removed.
 */
export function forwardableResponseHeaders(
  raw: readonly string[],
  drop: (name: string) => boolean = () => false,
): [string, string][] {
  const pairs: [string, string][] = [];
  const named = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if ((raw[i] ?? '').toLowerCase() === 'connection') {
      for (const t of (raw[i + 1] ?? '').split(',')) named.add(t.trim().toLowerCase());
    }
  }
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower) || drop(lower)) continue;
    pairs.push([name, raw[i + 1] ?? '']);
  }
  return pairs;
}

/** The bearer token of an Authorization header, or undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  const m = /^Bearer[ ]+([^ ]+)[ ]*$/i.exec(authorization);
  return m?.[1];
}
