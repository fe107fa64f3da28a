// What a JWT's header and payload may not say, whoever signed them, checked by the sidecar and the token
// exchange alike: one name per member (RFC 7515 §4 and RFC 7519 §4 allow "the last one counts"; another
// reader of the same token — an auditor's tool, another service — may take the first, so the token would
// name two identities), and NumericDates (`exp`, `nbf`, `iat`) that a date can hold (JSON has no limit on
// a number's size: `1e309` parses as Infinity, which jose compares without complaint, so such a token
// never expires, and the exchange's evidence could not write its expiry), and header parameters that
// change what the payload is or how it is read.

/** The claims that are NumericDates (RFC 7519 §4.1). */
const NUMERIC_DATE_CLAIMS = ['exp', 'nbf', 'iat'] as const;
/** Seconds since the epoch a JavaScript Date can hold (±8.64e15 ms, ECMA-262 §21.4.1.1). */
const MAX_NUMERIC_DATE = 8.64e12;

/**
 * The first member name that occurs twice in one object of `text` (after unescaping, so `"s\u0075b"` and
 * `"sub"` are one name), or undefined. `text` must be JSON (the caller parsed it already).
 */
export function duplicateJsonMember(text: string): string | undefined {
  // One set of names per open object; undefined for an open array.
  const open: (Set<string> | undefined)[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{') open.push(new Set());
    else if (c === '[') open.push(undefined);
    else if (c === '}' || c === ']') open.pop();
    else if (c === '"') {
      let end = i + 1;
      while (end < text.length && text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      if (end >= text.length) return undefined; // not JSON: the caller's parse refuses it
      let next = end + 1;
      while (text[next] === ' ' || text[next] === '\t' || text[next] === '\n' || text[next] === '\r') next++;
      const names = open.at(-1);
      if (text[next] === ':' && names !== undefined) {
        const name = JSON.parse(text.slice(i, end + 1)) as string;
        if (names.has(name)) return name;
        names.add(name);
      }
      i = end;
    }
  }
  return undefined;
}

/** Why a NumericDate claim of `payload` is unusable (not finite, or past what a date holds), or undefined. */
export function numericDateProblem(payload: Readonly<Record<string, unknown>>): string | undefined {
  for (const claim of NUMERIC_DATE_CLAIMS) {
    const value = payload[claim];
    if (typeof value === 'number' && !(Math.abs(value) <= MAX_NUMERIC_DATE)) {
      return `${claim} is not a date (${String(value)})`;
    }
  }
  return undefined;
}

/**
 * Why a JWS header makes its token unacceptable as a JWT here, or undefined. Every one of these parameters
 * makes the payload something other than the base64url of a claims set for a reader that honours it, while
 * jose (and so the signature check) reads the claims set: one signed text would then say two things.
 * - `crit` (RFC 7515 §4.1.11): no extension is understood, so such a token must be refused whole.
 * - `cty` (RFC 7519 §5.2): `JWT` declares a nested token, whose inner token is never unwrapped and trusted
 *   here; any other value declares a payload that is not a claims set. Issuers of JWTs do not set it.
 * - `b64` (RFC 7797): `false` declares an unencoded payload; without `crit` jose ignores it, and a JWT never
 *   has one (RFC 7797 §7). Refused with either value.
 * - `zip`: compression is JWE's (RFC 7516 §4.1.3), never a JWS's; a reader that inflates reads other bytes.
 */
export function jwsHeaderProblem(header: Readonly<Record<string, unknown>>): string | undefined {
  if (header.crit !== undefined) return 'names critical header extensions';
  if (header.cty !== undefined) return 'declares a content type (cty), a nested or other payload, not a claims set';
  if (header.b64 !== undefined) return 'declares its payload encoding (b64, RFC 7797), which a JWT never does';
  if (header.zip !== undefined) return 'declares a compressed payload (zip), which a JWS never has';
  return undefined;
}
