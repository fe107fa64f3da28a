// Which encodings the sidecar and the server read statements in alike. The analysis lexes text decoded as
// UTF-8; the server lexes bytes in its client encoding (converted to the server encoding). They agree only
// when both are UTF8:
//
// - Client encodings whose multibyte characters have ASCII trail bytes (SJIS, BIG5, GBK, UHC, GB18030,
//   JOHAB) can swallow a quote or backslash: in SJIS the bytes 0x81 0x5C are one character, so
//   `SELECT E'<0x81>\'; DELETE FROM t; --'` is one SELECT to a UTF-8 lexer and a SELECT plus a DELETE to
//   the server.
// - SQL_ASCII does no validation and no conversion: bytes that are not UTF-8 reach the server as they are
//   while the analysis sees U+FFFD, so a quoted identifier names one relation to the sidecar and another
//   to the server. Refused for the same reason.
// - ASCII-safe encodings (LATIN1, EUC_JP, ...) keep the statement structure, but PostgreSQL folds
//   unquoted non-ASCII identifier letters to lower case in single-byte server encodings (`Ärger` is
//   `ärger` to a LATIN1 server, `Ärger` to the analysis), so relation names differ. Hence the server
//   encoding must be UTF8 as well.
//
// Names are compared the way PostgreSQL's pg_char_to_encoding does (clean_encoding_name: keep letters and
// digits, lower-cased), so `utf-8`, `UTF8`, `Utf_8` and the alias `Unicode` are all UTF8.

/** An encoding name as PostgreSQL compares it: letters and digits only, lower case (`UTF-8` → `utf8`). */
export function normaliseEncodingName(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, '').toLowerCase();
}

/** Whether PostgreSQL reads `name` as the UTF8 encoding (`utf8` and its alias `unicode`, in any spelling). */
export function isUtf8EncodingName(name: string): boolean {
  const normalised = normaliseEncodingName(name);
  return normalised === 'utf8' || normalised === 'unicode';
}

/**
 * Why a client_encoding value (startup parameter, SET, or the server's ParameterStatus) cannot be used
 * through the sidecar; undefined when it is UTF8.
 */
export function clientEncodingRefusal(value: string): string | undefined {
  if (isUtf8EncodingName(value)) return undefined;
  return `client_encoding ${JSON.stringify(value)} is not supported through the chaperone sidecar: statements are analysed as UTF-8, and in another encoding the server can read different statements; use UTF8`;
}

/** Why a server_encoding (the database's encoding, from ParameterStatus) cannot be used; undefined for UTF8. */
export function serverEncodingRefusal(value: string): string | undefined {
  if (isUtf8EncodingName(value)) return undefined;
  return `the protected database's encoding is ${value}; the chaperone sidecar supports UTF8 databases only, because the server folds identifiers differently in other encodings than the sidecar's analysis does`;
}
