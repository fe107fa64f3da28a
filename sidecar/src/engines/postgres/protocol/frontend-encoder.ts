/**
 * Encoders for the frontend messages the sidecar itself sends upstream (its own login, cancel requests,
 * and the few messages a connection handler may need to inject). Pure functions returning new Buffers.
 *
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { FrontendCode, PROTOCOL_VERSION_3_0, StartupCode } from './frontend-messages.ts';
import { MessageWriter } from './message-writer.ts';

/**
 * StartupMessage for protocol 3.0. `parameters` must include `user`; order is preserved.
 * @throws RangeError on an empty parameter name (it would end the list early) or a NUL in any string.
 */
export function encodeStartupMessage(
  parameters: Iterable<readonly [string, string]>,
  protocolVersion: number = PROTOCOL_VERSION_3_0,
): Buffer {
  const w = new MessageWriter(null, 128);
  w.int32(protocolVersion);
  for (const [name, value] of parameters) {
    if (name === '') throw new RangeError('startup parameter names cannot be empty');
    w.cstring(name).cstring(value);
  }
  w.int8(0);
  return w.finish();
}

/** SSLRequest: 8 bytes, answered by one byte 'S' or 'N'. */
export function encodeSSLRequest(): Buffer {
  return new MessageWriter(null, 4).int32(StartupCode.SSLRequest).finish();
}

/**
 * CancelRequest. A number is the 4-byte key of protocol 3.0; a Buffer is sent as is (3.2 keys).
 */
export function encodeCancelRequest(processId: number, secretKey: number | Uint8Array): Buffer {
  const w = new MessageWriter(null, 12);
  w.int32(StartupCode.CancelRequest).int32(processId);
  if (typeof secretKey === 'number') w.int32(secretKey | 0);
  else w.bytes(secretKey);
  return w.finish();
}

/** PasswordMessage carrying a cleartext password or an MD5 response. */
export function encodePasswordMessage(password: string): Buffer {
  return new MessageWriter(FrontendCode.PasswordMessage, password.length + 1).cstring(password).finish();
}

/** SASLInitialResponse: chosen mechanism and the client-first message. */
export function encodeSASLInitialResponse(mechanism: string, data: string | Uint8Array): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return new MessageWriter(FrontendCode.PasswordMessage, mechanism.length + 5 + bytes.length)
    .cstring(mechanism)
    .int32(bytes.length)
    .bytes(bytes)
    .finish();
}

/** SASLResponse: the client-final message. */
export function encodeSASLResponse(data: string | Uint8Array): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return new MessageWriter(FrontendCode.PasswordMessage, bytes.length).bytes(bytes).finish();
}

/** Simple Query. */
export function encodeQuery(sql: string): Buffer {
  return new MessageWriter(FrontendCode.Query, sql.length + 1).cstring(sql).finish();
}

/** Sync, shared constant. */
export const SYNC_FRAME: Buffer = new MessageWriter(FrontendCode.Sync, 0).finish();
/** Terminate, shared constant. */
export const TERMINATE_FRAME: Buffer = new MessageWriter(FrontendCode.Terminate, 0).finish();

/** Parse with no parameter types: the sidecar substitutes it for a denied client Parse. */
export function encodeParse(name: string, sql: string): Buffer {
  return new MessageWriter(FrontendCode.Parse, name.length + sql.length + 8)
    .cstring(name)
    .cstring(sql)
    .int16(0)
    .finish();
}

/** Execute of `portal` with a row limit (0 = all). */
export function encodeExecute(portal: string, maxRows: number): Buffer {
  return new MessageWriter(FrontendCode.Execute, portal.length + 6).cstring(portal).int32(maxRows).finish();
}
