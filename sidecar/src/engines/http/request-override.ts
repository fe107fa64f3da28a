// Headers and parameters that make an upstream run another method or path than the request line says, or
// believe a client address or host the sidecar never saw. The policy decides on the request line; a server
// behind the sidecar that honours `X-HTTP-Method-Override: DELETE` on a POST (Express method-override,
// ASP.NET, Google APIs), `_method=DELETE` (Rails, Laravel, Spring's HiddenHttpMethodFilter), `X-Original-URL`
// or `X-Rewrite-URL` (IIS, older Symfony), or trusts `X-Forwarded-For`/`Forwarded` from its proxy (an
// allow-list by address, a prefix that reroutes) would run what the policy never decided. The sidecar is
// that proxy, so the agent may not send them: such a request is refused, never forwarded. Pure.
import { FORWARDING_HEADERS } from '../http-base/request-hygiene.ts';

/** Request headers (lower case) refused whatever their value, besides FORWARDING_HEADERS. */
const OVERRIDE_HEADERS: ReadonlySet<string> = new Set([
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
  'x-original-method',
  'x-original-url',
  'x-rewrite-url',
  'x-original-uri',
  'x-envoy-original-path',
]);

/** The method-override parameter frameworks read from the query or a form body. */
const METHOD_PARAMETER = '_method';

/**
 * What in a request could make the upstream act on something other than what the policy decided, or
 * undefined. `headers`: the checked request headers (lower-case names); `query`: every reading of every
 * query parameter (request-reading.ts); `body`: the request body and its Content-Type.
 */
export function requestOverride(
  headers: Iterable<string>,
  query: Readonly<Record<string, readonly string[]>>,
  body: Buffer,
  contentType: string | undefined,
): string | undefined {
  for (const spelled of headers) {
    // CGI and WSGI servers (and nginx with underscores_in_headers) read `X_HTTP_Method_Override` as the
    // dashed name (both become HTTP_X_HTTP_METHOD_OVERRIDE).
    const name = spelled.replaceAll('_', '-');
    if (OVERRIDE_HEADERS.has(name) || FORWARDING_HEADERS.has(name)) return `the ${spelled} header`;
  }
  for (const name of Object.keys(query)) {
    if (name.toLowerCase() === METHOD_PARAMETER) return `the ${METHOD_PARAMETER} query parameter`;
  }
  if (body.length === 0) return undefined;
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type === 'application/x-www-form-urlencoded') {
    for (const name of new URLSearchParams(body.toString('latin1')).keys()) {
      if (name.toLowerCase() === METHOD_PARAMETER) return `the ${METHOD_PARAMETER} form field`;
    }
  } else if (type === 'multipart/form-data') {
    if (/name\s*=\s*"?_method"?/i.test(body.toString('latin1'))) return `the ${METHOD_PARAMETER} form field`;
  }
  return undefined;
}
