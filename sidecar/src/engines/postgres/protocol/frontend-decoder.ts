/**
 * Incremental decoder for client → server bytes.
 *
 * @see https://www.postgresql.org/docs/current/protocol-flow.html
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import {
  COPY_DONE,
  FLUSH,
  FrontendCode,
  StartupCode,
  SYNC,
  TERMINATE,
  type FrontendMessage,
  type RegularFrontendMessage,
  type StartupPhaseMessage,
  type TargetKind,
} from './frontend-messages.ts';
import { ProtocolViolation, UnsupportedProtocolVersion } from './protocol-violation.ts';
import { WireReader } from './wire-reader.ts';

/** Smallest startup packet: Int32 length + Int32 code. */
export const MIN_STARTUP_PACKET_LENGTH = 8;
/** Largest startup packet the server accepts (MAX_STARTUP_PACKET_LENGTH in pqcomm.h). */
export const MAX_STARTUP_PACKET_LENGTH = 10000;
/** Default cap on a regular message's length field: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024;
/** Cancel keys are 4 bytes under 3.0 and at most 256 bytes under 3.2. */
const MIN_CANCEL_KEY_LENGTH = 4;
const MAX_CANCEL_KEY_LENGTH = 256;

/**
 * Where the decoder is in the session:
 * - `startup`: expecting untyped packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest);
 * - `regular`: after a StartupMessage, expecting typed messages;
 * - `ended`: after a CancelRequest; the client must send nothing more;
 * - `failed`: after a {@link ProtocolViolation}; the decoder refuses further use.
 */
export type FrontendDecoderPhase = 'startup' | 'regular' | 'ended' | 'failed';

export interface FrontendDecoderOptions {
  /**
   * Largest accepted value of a regular message's Int32 length field (which counts itself but not the
   * type byte). Longer messages are rejected from their 5-byte header, before any buffering.
   * Default {@link DEFAULT_MAX_MESSAGE_LENGTH} (64 MiB); must be between 4 and 2^31 - 1.
   */
  readonly maxMessageLength?: number;
  /** Phase to start in. Default `'startup'`; `'regular'` suits a connection whose startup is already done. */
  readonly initialPhase?: 'startup' | 'regular';
}

function checkedMaxLength(max: number): number {
  if (!Number.isInteger(max) || max < 4 || max > 0x7fffffff) {
    throw new RangeError(`maxMessageLength must be an integer in [4, 2^31-1], got ${max}`);
  }
  return max;
}

/** Smallest buffer allocated for a frame that straddles chunks; grows by doubling up to the frame size. */
const MIN_PARTIAL_CAPACITY = 256;

/**
 * Turns arbitrary chunks of client bytes into {@link FrontendMessage}s.
 *
 * Usage: `push(chunk)`, then call `next()` until it returns `null`, then push the next chunk. Complete
 * frames inside a chunk are returned as views of that chunk (no copy); only a frame that straddles chunks is
 * copied, once, into a buffer that grows with the bytes actually received, so a length field can never make
 * the decoder allocate more than about twice what the client sent. Views are valid until the next `push`
 * (the chunk may be reused by its owner afterwards).
 *
 * After the StartupMessage the decoder switches to the regular phase by itself. After an SSLRequest or a
 * GSSENCRequest it stays in the startup phase and requires that no further bytes were buffered: a client
 * must wait for the one-byte answer, and bytes sent before the TLS handshake could otherwise be injected
 * into the encrypted session (CVE-2021-23214).
 *
 * Any malformed input throws {@link ProtocolViolation}; the decoder is then in phase `failed` and every
 * later call throws again, because the stream can no longer be framed. Close the connection.
 */
export class FrontendDecoder {
  private maxMessageLength: number;
  private currentPhase: FrontendDecoderPhase;
  private failure: ProtocolViolation | null = null;

  /** Current chunk and read cursor within it. */
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;

  /** Bytes of a frame that straddles chunks (owned copy), how many are filled, and its total size once known. */
  private partial: Buffer | null = null;
  private partialLen = 0;
  private partialTotal = 0;

  private sslRequested = false;
  private gssRequested = false;

  constructor(options: FrontendDecoderOptions = {}) {
    this.maxMessageLength = checkedMaxLength(options.maxMessageLength ?? DEFAULT_MAX_MESSAGE_LENGTH);
    this.currentPhase = options.initialPhase ?? 'startup';
  }

  /**
   * Changes the cap on later messages' length fields: a connection keeps it small until the client has
   * authenticated (a password message holds a token, not 64 MiB) and raises it afterwards.
   */
  setMaxMessageLength(max: number): void {
    this.maxMessageLength = checkedMaxLength(max);
  }

  /** The phase the next message will be decoded in. */
  get phase(): FrontendDecoderPhase {
    return this.currentPhase;
  }

  /**
   * Bytes received but not yet returned as messages. A connection handler that stops calling `next()`
   * (for example while a statement waits for approval) should pause the socket when this grows.
   */
  get bufferedBytes(): number {
    return this.chunk.length - this.pos + this.partialLen;
  }

  /**
   * Adds a chunk. Views returned by earlier `next()` calls become invalid. If the previous chunk was not
   * fully drained, its unread bytes are kept (copied in front of the new chunk).
   */
  push(chunk: Buffer): void {
    this.throwIfFailed();
    if (this.pos < this.chunk.length) {
      this.chunk = Buffer.concat([this.chunk.subarray(this.pos), chunk]);
    } else {
      this.chunk = chunk;
    }
    this.pos = 0;
  }

  /**
   * Returns the next complete message, or `null` when more bytes are needed.
   * @throws ProtocolViolation on malformed input (the decoder is unusable afterwards).
   */
  next(): FrontendMessage | null {
    this.throwIfFailed();
    try {
      return this.step();
    } catch (err) {
      // Nothing buffered survives an error: the stream can no longer be framed.
      this.fail();
      if (err instanceof ProtocolViolation) this.failure = err;
      throw err;
    }
  }

  /** Convenience: `push(chunk)` then drain `next()` into an array. */
  decode(chunk: Buffer): FrontendMessage[] {
    this.push(chunk);
    const out: FrontendMessage[] = [];
    for (let m = this.next(); m !== null; m = this.next()) out.push(m);
    return out;
  }

  private throwIfFailed(): void {
    if (this.currentPhase === 'failed') {
      throw this.failure ?? new ProtocolViolation('decoder is unusable after a previous error');
    }
  }

  /** Drops all buffered state so nothing leaks past an error. */
  private fail(): void {
    this.currentPhase = 'failed';
    this.chunk = Buffer.alloc(0);
    this.pos = 0;
    this.partial = null;
    this.partialLen = 0;
    this.partialTotal = 0;
  }

  private step(): FrontendMessage | null {
    const phase = this.currentPhase;
    if (phase === 'ended') {
      if (this.bufferedBytes > 0) throw new ProtocolViolation('unexpected data after CancelRequest');
      return null;
    }
    const headerSize = phase === 'startup' ? 4 : 5;
    const frame = this.nextFrame(headerSize);
    if (frame === null) return null;
    if (phase === 'startup') return this.decodeStartup(frame);
    return decodeRegular(frame);
  }

  /** Frames one message (header included), or returns null after stashing an incomplete tail. */
  private nextFrame(headerSize: number): Buffer | null {
    const chunk = this.chunk;
    let avail = chunk.length - this.pos;

    if (this.partialLen === 0) {
      if (avail === 0) return null;
      if (avail >= headerSize) {
        const total = this.frameLength(chunk, this.pos);
        if (avail >= total) {
          // Fast path: the whole frame is inside this chunk.
          const frame = chunk.subarray(this.pos, this.pos + total);
          this.pos += total;
          return frame;
        }
        this.partialTotal = total;
      } else if (headerSize === 5) {
        // Reject garbage from the first byte rather than waiting for a header.
        checkRegularCode(chunk[this.pos] ?? 0);
      }
    }

    // Slow path: accumulate a frame that straddles chunks.
    if (this.partialTotal === 0) {
      const take = Math.min(headerSize - this.partialLen, avail);
      this.append(take, headerSize);
      avail -= take;
      if (this.partialLen < headerSize) return null;
      this.partialTotal = this.frameLength(this.partialBuffer(), 0);
    }
    const take = Math.min(this.partialTotal - this.partialLen, avail);
    this.append(take, this.partialTotal);
    if (this.partialLen < this.partialTotal) return null;
    const frame = this.partialBuffer().subarray(0, this.partialTotal);
    // A fresh buffer per straddling frame, so the returned view stays valid until the next push.
    this.partial = null;
    this.partialLen = 0;
    this.partialTotal = 0;
    return frame;
  }

  private partialBuffer(): Buffer {
    if (this.partial === null) throw new Error('unreachable: no partial frame');
    return this.partial;
  }

  /** Copies `n` bytes from the chunk into the partial buffer, growing it geometrically up to `limit`. */
  private append(n: number, limit: number): void {
    const needed = this.partialLen + n;
    const cap = this.partial?.length ?? 0;
    if (needed > cap) {
      const grown = Math.min(limit, Math.max(needed, cap * 2, MIN_PARTIAL_CAPACITY));
      const next = Buffer.allocUnsafe(grown);
      if (this.partial !== null) this.partial.copy(next, 0, 0, this.partialLen);
      this.partial = next;
    }
    if (n > 0) {
      this.chunk.copy(this.partialBuffer(), this.partialLen, this.pos, this.pos + n);
      this.pos += n;
      this.partialLen += n;
    }
  }

  /** Validates a header and returns the frame's total size in bytes. */
  private frameLength(buf: Buffer, at: number): number {
    if (this.currentPhase === 'startup') {
      const len = buf.readInt32BE(at);
      if (len < MIN_STARTUP_PACKET_LENGTH || len > MAX_STARTUP_PACKET_LENGTH) {
        throw new ProtocolViolation(
          `invalid startup packet length ${len} (must be ${MIN_STARTUP_PACKET_LENGTH}..${MAX_STARTUP_PACKET_LENGTH})`,
        );
      }
      return len;
    }
    const code = buf[at] ?? 0;
    checkRegularCode(code);
    const len = buf.readInt32BE(at + 1);
    if (len < 0) throw new ProtocolViolation(`invalid message length ${len} (negative)`);
    if (len < 4) throw new ProtocolViolation(`invalid message length ${len} (less than 4)`);
    if (len > this.maxMessageLength) {
      throw new ProtocolViolation(`message length ${len} exceeds the limit of ${this.maxMessageLength} bytes`);
    }
    return len + 1;
  }

  private decodeStartup(frame: Buffer): StartupPhaseMessage {
    const code = frame.readInt32BE(4);
    switch (code) {
      case StartupCode.SSLRequest:
      case StartupCode.GSSENCRequest: {
        const isSsl = code === StartupCode.SSLRequest;
        const name = isSsl ? 'SSLRequest' : 'GSSENCRequest';
        if (frame.length !== 8) throw new ProtocolViolation(`${name} has length ${frame.length}, expected 8`);
        if (isSsl ? this.sslRequested : this.gssRequested) {
          throw new UnsupportedProtocolVersion(
            `${name} sent twice: unsupported frontend protocol 1234.${String(code & 0xffff)}: server supports 3.0 to 3.0`,
          );
        }
        if (this.bufferedBytes > 0) {
          throw new ProtocolViolation(`received unencrypted data after ${name}`);
        }
        if (isSsl) this.sslRequested = true;
        else this.gssRequested = true;
        return isSsl ? { type: 'SSLRequest', frame } : { type: 'GSSENCRequest', frame };
      }
      case StartupCode.CancelRequest: {
        const keyLength = frame.length - 12;
        if (keyLength < MIN_CANCEL_KEY_LENGTH || keyLength > MAX_CANCEL_KEY_LENGTH) {
          throw new ProtocolViolation(`CancelRequest has length ${frame.length}, expected 16..268`);
        }
        this.currentPhase = 'ended';
        return {
          type: 'CancelRequest',
          frame,
          processId: frame.readInt32BE(8),
          secretKey: frame.subarray(12),
        };
      }
      default: {
        const major = code >>> 16;
        const minor = code & 0xffff;
        if (major !== 3) {
          throw new UnsupportedProtocolVersion(
            `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`,
          );
        }
        const message = decodeStartupParameters(frame, code, major, minor);
        this.currentPhase = 'regular';
        return message;
      }
    }
  }
}

function decodeStartupParameters(frame: Buffer, code: number, major: number, minor: number): StartupPhaseMessage {
  const r = new WireReader(frame, 8, frame.length, 'StartupMessage');
  const parameters = new Map<string, string>();
  const protocolOptions = new Map<string, string>();
  // Pairs of NUL-terminated strings, ended by an empty name.
  for (;;) {
    const name = r.cstring('parameter name');
    if (name === '') break;
    const value = r.cstring(`value of parameter "${name}"`);
    const target = name.startsWith('_pq_.') ? protocolOptions : parameters;
    if (target.has(name)) throw new ProtocolViolation(`StartupMessage: duplicate parameter "${name}"`);
    target.set(name, value);
  }
  r.done();
  return {
    type: 'StartupMessage',
    frame,
    protocolVersion: code,
    majorVersion: major,
    minorVersion: minor,
    parameters,
    protocolOptions,
  };
}

function checkRegularCode(code: number): void {
  switch (code) {
    case FrontendCode.Bind:
    case FrontendCode.Close:
    case FrontendCode.CopyData:
    case FrontendCode.CopyDone:
    case FrontendCode.CopyFail:
    case FrontendCode.Describe:
    case FrontendCode.Execute:
    case FrontendCode.Flush:
    case FrontendCode.FunctionCall:
    case FrontendCode.Parse:
    case FrontendCode.PasswordMessage:
    case FrontendCode.Query:
    case FrontendCode.Sync:
    case FrontendCode.Terminate:
      return;
    default:
      throw new ProtocolViolation(`invalid frontend message type 0x${code.toString(16).padStart(2, '0')}`);
  }
}

function targetKind(r: WireReader, what: string): TargetKind {
  const k = r.byte('kind');
  if (k === 0x53) return 'S';
  if (k === 0x50) return 'P';
  throw new ProtocolViolation(`invalid ${what} message subtype 0x${k.toString(16).padStart(2, '0')}`);
}

/** Reads `count` Int16 format codes. */
function formatCodes(r: WireReader, count: number, field: string): number[] {
  r.need(count * 2, field);
  const out = new Array<number>(count);
  for (let i = 0; i < count; i++) out[i] = r.int16(field);
  return out;
}

function bodyless<T extends RegularFrontendMessage>(frame: Buffer, constant: T): T {
  if (frame.length !== 5)
    throw new ProtocolViolation(`${constant.type} message has a body (length ${frame.length - 1})`);
  return constant;
}

/** Decodes one complete regular frame (type byte + length + body). */
function decodeRegular(frame: Buffer): RegularFrontendMessage {
  const code = frame[0] ?? 0;
  switch (code) {
    case FrontendCode.Query: {
      const r = new WireReader(frame, 5, frame.length, 'Query');
      const query = r.cstring('query string');
      r.done();
      return { type: 'Query', frame, query };
    }
    case FrontendCode.Parse: {
      const r = new WireReader(frame, 5, frame.length, 'Parse');
      const name = r.cstring('statement name');
      const query = r.cstring('query string');
      const count = r.uint16('parameter type count');
      r.need(count * 4, 'parameter types');
      const paramTypes = new Array<number>(count);
      for (let i = 0; i < count; i++) paramTypes[i] = r.uint32('parameter type');
      r.done();
      return { type: 'Parse', frame, name, query, paramTypes };
    }
    case FrontendCode.Bind: {
      const r = new WireReader(frame, 5, frame.length, 'Bind');
      const portal = r.cstring('portal name');
      const statement = r.cstring('statement name');
      const paramFormats = formatCodes(r, r.uint16('parameter format count'), 'parameter formats');
      const paramCount = r.uint16('parameter count');
      if (paramFormats.length > 1 && paramFormats.length !== paramCount) {
        throw new ProtocolViolation(`Bind: ${paramFormats.length} parameter formats but ${paramCount} parameters`);
      }
      r.need(paramCount * 4, 'parameter values');
      const params = new Array<Buffer | null>(paramCount);
      for (let i = 0; i < paramCount; i++) {
        const len = r.int32('parameter length');
        params[i] = len === -1 ? null : r.bytes(len, `parameter ${i + 1}`);
      }
      const resultFormats = formatCodes(r, r.uint16('result format count'), 'result formats');
      r.done();
      return { type: 'Bind', frame, portal, statement, paramFormats, params, resultFormats };
    }
    case FrontendCode.Describe: {
      const r = new WireReader(frame, 5, frame.length, 'Describe');
      const kind = targetKind(r, 'Describe');
      const name = r.cstring('name');
      r.done();
      return { type: 'Describe', frame, kind, name };
    }
    case FrontendCode.Execute: {
      const r = new WireReader(frame, 5, frame.length, 'Execute');
      const portal = r.cstring('portal name');
      const maxRows = r.int32('row limit');
      r.done();
      return { type: 'Execute', frame, portal, maxRows };
    }
    case FrontendCode.Close: {
      const r = new WireReader(frame, 5, frame.length, 'Close');
      const kind = targetKind(r, 'Close');
      const name = r.cstring('name');
      r.done();
      return { type: 'Close', frame, kind, name };
    }
    case FrontendCode.Sync:
      return bodyless(frame, SYNC);
    case FrontendCode.Flush:
      return bodyless(frame, FLUSH);
    case FrontendCode.Terminate:
      return bodyless(frame, TERMINATE);
    case FrontendCode.CopyDone:
      return bodyless(frame, COPY_DONE);
    case FrontendCode.CopyData:
      return { type: 'CopyData', frame, data: frame.subarray(5) };
    case FrontendCode.CopyFail: {
      const r = new WireReader(frame, 5, frame.length, 'CopyFail');
      const message = r.cstring('error message');
      r.done();
      return { type: 'CopyFail', frame, message };
    }
    case FrontendCode.PasswordMessage:
      return { type: 'PasswordMessage', frame, payload: frame.subarray(5) };
    case FrontendCode.FunctionCall: {
      const r = new WireReader(frame, 5, frame.length, 'FunctionCall');
      const functionOid = r.uint32('function OID');
      return { type: 'FunctionCall', frame, functionOid, payload: r.rest() };
    }
    default:
      // Unreachable: frameLength() already checked the code.
      throw new ProtocolViolation(`invalid frontend message type 0x${code.toString(16).padStart(2, '0')}`);
  }
}
