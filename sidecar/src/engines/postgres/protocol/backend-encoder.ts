/**
 * Encoders for the backend messages the proxy sends to clients itself (errors, authentication, canned
 * results). Pure functions returning Buffers; fixed frames are encoded once and shared, so callers must
 * not mutate returned Buffers.
 *
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import {
  AuthCode,
  BackendCode,
  ERROR_FIELD_CODES,
  type ErrorFields,
  type FieldDescription,
  type OptionalErrorField,
  type TransactionStatus,
} from './backend-messages.ts';
import { MessageWriter } from './message-writer.ts';

function fixed(code: number, body: readonly number[] = []): Buffer {
  const w = new MessageWriter(code, body.length);
  for (const b of body) w.int8(b);
  return w.finish();
}

function authentication(code: AuthCode, extra?: (w: MessageWriter) => void): Buffer {
  const w = new MessageWriter(BackendCode.Authentication, 16);
  w.int32(code);
  if (extra !== undefined) extra(w);
  return w.finish();
}

/** ReadyForQuery 'Z' with status 'I' (idle). */
export const READY_FOR_QUERY_IDLE: Buffer = fixed(BackendCode.ReadyForQuery, [0x49]);
/** ReadyForQuery 'Z' with status 'T' (in transaction). */
export const READY_FOR_QUERY_IN_TRANSACTION: Buffer = fixed(BackendCode.ReadyForQuery, [0x54]);
/** ReadyForQuery 'Z' with status 'E' (failed transaction). */
export const READY_FOR_QUERY_FAILED: Buffer = fixed(BackendCode.ReadyForQuery, [0x45]);
/** NoData 'n'. */
export const NO_DATA: Buffer = fixed(BackendCode.NoData);
/** EmptyQueryResponse 'I'. */
export const EMPTY_QUERY_RESPONSE: Buffer = fixed(BackendCode.EmptyQueryResponse);
/** ParseComplete '1'. */
export const PARSE_COMPLETE: Buffer = fixed(BackendCode.ParseComplete);
/** BindComplete '2'. */
export const BIND_COMPLETE: Buffer = fixed(BackendCode.BindComplete);
/** CloseComplete '3'. */
export const CLOSE_COMPLETE: Buffer = fixed(BackendCode.CloseComplete);
/** AuthenticationOk. */
export const AUTHENTICATION_OK: Buffer = authentication(AuthCode.Ok);
/** AuthenticationCleartextPassword. */
export const AUTHENTICATION_CLEARTEXT_PASSWORD: Buffer = authentication(AuthCode.CleartextPassword);

const SSL_ACCEPT = Buffer.from('S');
const SSL_REFUSE = Buffer.from('N');

/** ReadyForQuery for a transaction status; returns a shared constant frame. */
export function readyForQuery(status: TransactionStatus): Buffer {
  switch (status) {
    case 'I':
      return READY_FOR_QUERY_IDLE;
    case 'T':
      return READY_FOR_QUERY_IN_TRANSACTION;
    case 'E':
      return READY_FOR_QUERY_FAILED;
  }
}

/**
 * The single-byte answer to an SSLRequest: 'S' (go ahead with the TLS handshake) or 'N' (refused). The
 * same 'N' byte refuses a GSSENCRequest.
 */
export function sslResponse(accept: boolean): Buffer {
  return accept ? SSL_ACCEPT : SSL_REFUSE;
}

/** AuthenticationOk (shared constant). */
export function authenticationOk(): Buffer {
  return AUTHENTICATION_OK;
}

/** AuthenticationCleartextPassword (shared constant). */
export function authenticationCleartextPassword(): Buffer {
  return AUTHENTICATION_CLEARTEXT_PASSWORD;
}

/** AuthenticationMD5Password with the 4-byte salt. */
export function authenticationMD5Password(salt: Uint8Array): Buffer {
  if (salt.length !== 4) throw new RangeError(`MD5 salt must be 4 bytes, got ${salt.length}`);
  return authentication(AuthCode.MD5Password, (w) => w.bytes(salt));
}

/** AuthenticationSASL listing mechanisms in order of preference, e.g. `['SCRAM-SHA-256']`. */
export function authenticationSASL(mechanisms: readonly string[]): Buffer {
  if (mechanisms.length === 0) throw new RangeError('AuthenticationSASL needs at least one mechanism');
  return authentication(AuthCode.SASL, (w) => {
    for (const m of mechanisms) {
      if (m === '') throw new RangeError('SASL mechanism names cannot be empty');
      w.cstring(m);
    }
    w.int8(0);
  });
}

/** AuthenticationSASLContinue carrying the server-first message. */
export function authenticationSASLContinue(data: Uint8Array | string): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return authentication(AuthCode.SASLContinue, (w) => w.bytes(bytes));
}

/** AuthenticationSASLFinal carrying the server-final message. */
export function authenticationSASLFinal(data: Uint8Array | string): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return authentication(AuthCode.SASLFinal, (w) => w.bytes(bytes));
}

/** ParameterStatus 'S' (e.g. server_version, client_encoding). */
export function parameterStatus(name: string, value: string): Buffer {
  return new MessageWriter(BackendCode.ParameterStatus, name.length + value.length + 2)
    .cstring(name)
    .cstring(value)
    .finish();
}

/**
 * BackendKeyData 'K'. A number is written as the 4-byte key of protocol 3.0; a Buffer (4–256 bytes) is
 * written as is, for protocol 3.2.
 */
export function backendKeyData(processId: number, secretKey: number | Uint8Array): Buffer {
  const w = new MessageWriter(BackendCode.BackendKeyData, 8);
  w.int32(processId);
  if (typeof secretKey === 'number') {
    w.int32(secretKey | 0);
  } else {
    if (secretKey.length < 4 || secretKey.length > 256) {
      throw new RangeError(`cancel key must be 4..256 bytes, got ${secretKey.length}`);
    }
    w.bytes(secretKey);
  }
  return w.finish();
}

/**
 * NegotiateProtocolVersion 'v': the newest 3.x version supported and the protocol options not recognised.
 * The field holds the whole version code (major << 16 | minor), as PostgreSQL sends it (PG_PROTOCOL_LATEST,
 * 0x00030000 for 3.0) and libpq 18 reads it: a bare minor (0) reads as a downgrade to 0.0, which libpq
 * refuses ("server requested downgrade to pre-3.0 protocol version").
 */
export function negotiateProtocolVersion(newestMinorVersion: number, unrecognizedOptions: readonly string[]): Buffer {
  const w = new MessageWriter(BackendCode.NegotiateProtocolVersion, 16);
  w.int32(((3 << 16) | newestMinorVersion) >>> 0).int32(unrecognizedOptions.length);
  for (const o of unrecognizedOptions) w.cstring(o);
  return w.finish();
}

/** NoData (shared constant). */
export function noData(): Buffer {
  return NO_DATA;
}

/** EmptyQueryResponse (shared constant). */
export function emptyQueryResponse(): Buffer {
  return EMPTY_QUERY_RESPONSE;
}

/** CommandComplete 'C' with a command tag such as `SELECT 3` or `INSERT 0 1`. */
export function commandComplete(tag: string): Buffer {
  return new MessageWriter(BackendCode.CommandComplete, tag.length + 1).cstring(tag).finish();
}

/** RowDescription 'T'. */
export function rowDescription(fields: readonly FieldDescription[]): Buffer {
  const w = new MessageWriter(BackendCode.RowDescription, 2 + fields.length * 24);
  w.int16(fields.length);
  for (const f of fields) {
    w.cstring(f.name).uint32(f.tableOid).int16(f.columnAttr).uint32(f.typeOid).int16(f.typeSize);
    w.int32(f.typeModifier).int16(f.format);
  }
  return w.finish();
}

/** DataRow 'D'. Strings are written as UTF-8; `null` is SQL NULL (length -1). */
export function dataRow(values: readonly (Uint8Array | string | null)[]): Buffer {
  let size = 2;
  for (const v of values)
    size += 4 + (v === null ? 0 : typeof v === 'string' ? Buffer.byteLength(v, 'utf8') : v.length);
  const w = new MessageWriter(BackendCode.DataRow, size);
  w.int16(values.length);
  for (const v of values) {
    if (v === null) {
      w.int32(-1);
    } else {
      const bytes = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
      w.int32(bytes.length).bytes(bytes);
    }
  }
  return w.finish();
}

/**
 * ErrorResponse 'E'. Fields go out in the server's order (S, V, C, M, then the optional ones, then
 * `extra`). NUL characters inside values are replaced with U+FFFD, because this is the path used to
 * report problems and must not itself fail on odd input.
 */
export function errorResponse(fields: ErrorFields): Buffer {
  return noticeOrError(BackendCode.ErrorResponse, fields);
}

/** NoticeResponse 'N'; same fields and rules as {@link errorResponse}. */
export function noticeResponse(fields: ErrorFields): Buffer {
  return noticeOrError(BackendCode.NoticeResponse, fields);
}

const OPTIONAL_FIELDS = Object.entries(ERROR_FIELD_CODES) as [OptionalErrorField, string][];

function clean(s: string): string {
  return s.includes('\0') ? s.replaceAll('\0', '\uFFFD') : s;
}

function noticeOrError(code: number, fields: ErrorFields): Buffer {
  const w = new MessageWriter(code, 128);
  const put = (c: string, v: string): void => {
    w.int8(c.charCodeAt(0)).cstring(clean(v));
  };
  put('S', fields.severity);
  put('V', fields.severityNonLocalized ?? fields.severity);
  put('C', fields.code);
  put('M', fields.message);
  for (const [name, c] of OPTIONAL_FIELDS) {
    const v = fields[name];
    if (v !== undefined) put(c, v);
  }
  if (fields.extra !== undefined) {
    for (const [c, v] of Object.entries(fields.extra)) {
      if (c.length !== 1 || c.charCodeAt(0) === 0 || c.charCodeAt(0) > 0x7f) {
        throw new RangeError(`error field codes are single ASCII characters, got ${JSON.stringify(c)}`);
      }
      put(c, v);
    }
  }
  w.int8(0);
  return w.finish();
}
