/**
 * Frontend (client → server) messages of the PostgreSQL v3 protocol, as decoded by {@link FrontendDecoder}.
 *
 * Every message carries `frame`: the exact bytes it was decoded from (header included), so the proxy can
 * forward it untouched. Buffer fields (`frame`, `params`, `data`, `payload`) are zero-copy views valid until
 * the next `FrontendDecoder.push`; copy them (`Buffer.from(view)`) to keep them longer. Strings are copies.
 * Body-less messages (Sync, Flush, CopyDone, Terminate) are the shared frozen constants below, whose `frame`
 * holds the same five bytes; never mutate a `frame`.
 *
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { WireReader } from './wire-reader.ts';

/** Type bytes of regular frontend messages. @see https://www.postgresql.org/docs/current/protocol-message-codes.html */
export const FrontendCode = {
  Bind: 0x42, // 'B'
  Close: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyFail: 0x66, // 'f'
  Describe: 0x44, // 'D'
  Execute: 0x45, // 'E'
  Flush: 0x48, // 'H'
  FunctionCall: 0x46, // 'F'
  Parse: 0x50, // 'P'
  PasswordMessage: 0x70, // 'p' (also GSSResponse, SASLInitialResponse, SASLResponse)
  Query: 0x51, // 'Q'
  Sync: 0x53, // 'S'
  Terminate: 0x58, // 'X'
} as const;
export type FrontendCode = (typeof FrontendCode)[keyof typeof FrontendCode];

/** Request codes of startup-phase packets (the Int32 after the length; no type byte). */
export const StartupCode = {
  CancelRequest: 80877102,
  SSLRequest: 80877103,
  GSSENCRequest: 80877104,
} as const;
export type StartupCode = (typeof StartupCode)[keyof typeof StartupCode];

/** Protocol 3.0 as sent in a StartupMessage: major 3 in the high 16 bits, minor 0. */
export const PROTOCOL_VERSION_3_0 = 196608;
/** Protocol 3.2 (PostgreSQL 18): adds variable-length cancel keys. */
export const PROTOCOL_VERSION_3_2 = 196610;

/** 'S' = prepared statement, 'P' = portal (for Describe and Close). */
export type TargetKind = 'S' | 'P';

/** First packet of a session: requested protocol version and connection parameters. */
export interface StartupMessage {
  readonly type: 'StartupMessage';
  readonly frame: Buffer;
  /** Raw requested version, e.g. 196608 for 3.0 or 196610 for 3.2. */
  readonly protocolVersion: number;
  /** Always 3: other majors are rejected by the decoder. */
  readonly majorVersion: number;
  /** Requested minor version; anything above what the proxy speaks must be negotiated down. */
  readonly minorVersion: number;
  /**
   * Ordinary parameters (`user`, `database`, `application_name`, `options`, `replication`, GUCs) in wire
   * order. Duplicate names are rejected by the decoder, so a policy and the server can never disagree on
   * which `user` counts.
   */
  readonly parameters: ReadonlyMap<string, string>;
  /** Protocol options (names starting with `_pq_.`), which need protocol negotiation rather than a GUC. */
  readonly protocolOptions: ReadonlyMap<string, string>;
}

/** Asks the server to switch to TLS; answered with a single byte ('S' or 'N'). */
export interface SSLRequest {
  readonly type: 'SSLRequest';
  readonly frame: Buffer;
}

/** Asks the server to switch to GSSAPI encryption; answered with a single byte ('G' or 'N'). */
export interface GSSENCRequest {
  readonly type: 'GSSENCRequest';
  readonly frame: Buffer;
}

/** Sent on a fresh connection to cancel the query running in another session. */
export interface CancelRequest {
  readonly type: 'CancelRequest';
  readonly frame: Buffer;
  readonly processId: number;
  /** 4 bytes under protocol 3.0; 4–256 bytes under 3.2. A view. */
  readonly secretKey: Buffer;
}

/** Simple query: one string that may hold several statements. */
export interface Query {
  readonly type: 'Query';
  readonly frame: Buffer;
  readonly query: string;
}

/** Extended protocol: prepare a statement (`name` '' = unnamed). */
export interface Parse {
  readonly type: 'Parse';
  readonly frame: Buffer;
  readonly name: string;
  readonly query: string;
  /** Parameter type OIDs; 0 = let the server infer. */
  readonly paramTypes: readonly number[];
}

/** Extended protocol: bind parameter values to a statement, creating a portal. */
export interface Bind {
  readonly type: 'Bind';
  readonly frame: Buffer;
  readonly portal: string;
  readonly statement: string;
  /** Empty = all text, one entry = applies to all, else one per parameter; 0 = text, 1 = binary. */
  readonly paramFormats: readonly number[];
  /** Parameter values as views; `null` is SQL NULL. */
  readonly params: readonly (Buffer | null)[];
  /** Same convention as `paramFormats`, for result columns. */
  readonly resultFormats: readonly number[];
}

/** Extended protocol: describe a statement or portal. */
export interface Describe {
  readonly type: 'Describe';
  readonly frame: Buffer;
  readonly kind: TargetKind;
  readonly name: string;
}

/** Extended protocol: run a portal. */
export interface Execute {
  readonly type: 'Execute';
  readonly frame: Buffer;
  readonly portal: string;
  /** 0 = no limit. */
  readonly maxRows: number;
}

/** Extended protocol: close a statement or portal. */
export interface Close {
  readonly type: 'Close';
  readonly frame: Buffer;
  readonly kind: TargetKind;
  readonly name: string;
}

export interface Sync {
  readonly type: 'Sync';
  readonly frame: Buffer;
}

export interface Flush {
  readonly type: 'Flush';
  readonly frame: Buffer;
}

export interface Terminate {
  readonly type: 'Terminate';
  readonly frame: Buffer;
}

/** COPY FROM STDIN payload; `data` is a view. */
export interface CopyData {
  readonly type: 'CopyData';
  readonly frame: Buffer;
  readonly data: Buffer;
}

export interface CopyDone {
  readonly type: 'CopyDone';
  readonly frame: Buffer;
}

export interface CopyFail {
  readonly type: 'CopyFail';
  readonly frame: Buffer;
  readonly message: string;
}

/**
 * The 'p' message. Its body means a cleartext/MD5 password, a SASLInitialResponse, a SASLResponse or a
 * GSSAPI token depending on the authentication request the client is answering, so it is kept raw; read it
 * with {@link readPasswordString}, {@link readSaslInitialResponse} or {@link readSaslResponse}.
 */
export interface PasswordMessage {
  readonly type: 'PasswordMessage';
  readonly frame: Buffer;
  /** Body after the 5-byte header; a view. */
  readonly payload: Buffer;
}

/** Legacy fast-path function call ('F'); recognised only so the proxy can refuse it by name. */
export interface FunctionCall {
  readonly type: 'FunctionCall';
  readonly frame: Buffer;
  readonly functionOid: number;
  /** Undecoded arguments after the OID; a view. */
  readonly payload: Buffer;
}

/** Packets of the startup phase (no type byte). */
export type StartupPhaseMessage = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest;

/** Messages after the StartupMessage (type byte + Int32 length). */
export type RegularFrontendMessage =
  | Query
  | Parse
  | Bind
  | Describe
  | Execute
  | Close
  | Sync
  | Flush
  | Terminate
  | CopyData
  | CopyDone
  | CopyFail
  | PasswordMessage
  | FunctionCall;

/** Everything {@link FrontendDecoder} can produce; switch on `type`. */
export type FrontendMessage = StartupPhaseMessage | RegularFrontendMessage;

/** Discriminator values of {@link FrontendMessage}. */
export type FrontendMessageType = FrontendMessage['type'];

/** Reads a PasswordMessage as a cleartext password or an MD5 response (`md5` + 32 hex digits). */
export function readPasswordString(msg: PasswordMessage): string {
  const r = new WireReader(msg.payload, 0, msg.payload.length, 'PasswordMessage');
  const s = r.cstring('password');
  r.done();
  return s;
}

/** Body of a SASLInitialResponse: the chosen mechanism and the client-first message. */
export interface SaslInitialResponse {
  readonly mechanism: string;
  /** Client-first message as a view; `null` when the client sent length -1 (no initial response). */
  readonly data: Buffer | null;
}

/** Reads a PasswordMessage sent in answer to AuthenticationSASL. */
export function readSaslInitialResponse(msg: PasswordMessage): SaslInitialResponse {
  const r = new WireReader(msg.payload, 0, msg.payload.length, 'SASLInitialResponse');
  const mechanism = r.cstring('mechanism');
  const len = r.int32('data length');
  let data: Buffer | null = null;
  if (len !== -1) data = r.bytes(len, 'data');
  r.done();
  return { mechanism, data };
}

/** Reads a PasswordMessage sent in answer to AuthenticationSASLContinue: the body is the SASL data. */
export function readSaslResponse(msg: PasswordMessage): Buffer {
  return msg.payload;
}

/** What {@link protocolNegotiation} says the proxy must tell the client before anything else. */
export interface ProtocolNegotiation {
  /** Newest minor version the proxy supports, for NegotiateProtocolVersion. */
  readonly newestMinorVersion: number;
  /** `_pq_.` options the proxy does not support. */
  readonly unrecognizedOptions: readonly string[];
}

/**
 * Decides whether a NegotiateProtocolVersion message is needed, as the server does: when the client asked
 * for a newer minor version than the proxy speaks, or sent protocol options it does not know.
 *
 * @param newestMinorVersion minor version the proxy speaks; default 0 (3.0).
 * @param supportedOptions `_pq_.` option names the proxy understands; default none.
 * @returns `null` when the client's request can be used as is.
 */
export function protocolNegotiation(
  startup: StartupMessage,
  newestMinorVersion = 0,
  supportedOptions: ReadonlySet<string> = new Set(),
): ProtocolNegotiation | null {
  const unrecognizedOptions = [...startup.protocolOptions.keys()].filter((k) => !supportedOptions.has(k));
  if (startup.minorVersion <= newestMinorVersion && unrecognizedOptions.length === 0) return null;
  return { newestMinorVersion: Math.min(newestMinorVersion, startup.minorVersion), unrecognizedOptions };
}

/** Shared frames and messages for body-less messages: their bytes never vary. */
function fixedFrame(code: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = code;
  b.writeInt32BE(4, 1);
  return b;
}

export const SYNC: Sync = Object.freeze({ type: 'Sync', frame: fixedFrame(FrontendCode.Sync) });
export const FLUSH: Flush = Object.freeze({ type: 'Flush', frame: fixedFrame(FrontendCode.Flush) });
export const TERMINATE: Terminate = Object.freeze({ type: 'Terminate', frame: fixedFrame(FrontendCode.Terminate) });
export const COPY_DONE: CopyDone = Object.freeze({ type: 'CopyDone', frame: fixedFrame(FrontendCode.CopyDone) });
