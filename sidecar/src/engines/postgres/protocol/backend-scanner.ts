/**
 * Framing and selective decoding for server → client bytes.
 *
 * The proxy streams this direction: it forwards upstream bytes as they arrive and looks only at the few
 * frames its stages need. {@link BackendScanner} walks frame headers (5 bytes each) and never reads a body
 * unless the caller registered interest in that type; the `decode*` functions then read those frames.
 *
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import {
  AuthCode,
  BackendCode,
  ERROR_FIELD_CODES,
  isBackendCode,
  type ErrorFields,
  type FieldDescription,
  type OptionalErrorField,
  type TransactionStatus,
} from './backend-messages.ts';
import { ProtocolViolation } from './protocol-violation.ts';
import { WireReader } from './wire-reader.ts';

/** Default cap on the length of a frame the scanner must buffer (an interesting one): 64 MiB. */
export const DEFAULT_MAX_BUFFERED_FRAME_LENGTH = 64 * 1024 * 1024;

/**
 * One piece of the upstream stream, in order. Writing every segment's bytes (`bytes` or `frame`) in order
 * reproduces the input exactly.
 * - `raw`: bytes of frames nobody asked for (possibly starting or ending mid-frame); forward as is.
 * - `frame`: one complete frame (type byte, length, body) of an interesting type; forward it or replace it.
 *   With `dataRowRuns`, a DataRow segment may hold several whole DataRows in a row.
 */
export type ScanSegment =
  | { readonly kind: 'raw'; readonly bytes: Buffer }
  | { readonly kind: 'frame'; readonly code: BackendCode; readonly frame: Buffer };

export interface BackendScannerOptions {
  /** Backend type codes to return as whole frames; everything else is returned raw. Default: none. */
  readonly interest?: Iterable<BackendCode>;
  /**
   * Largest Int32 length accepted for an interesting frame, which must be buffered whole. Raw frames are
   * streamed and only need a valid length (4..2^31-1). Default {@link DEFAULT_MAX_BUFFERED_FRAME_LENGTH}.
   */
  readonly maxBufferedFrameLength?: number;
  /**
   * When DataRow is interesting: consecutive DataRows that lie whole in one chunk come back as one `frame`
   * segment holding all of them (one call per run instead of one per row, for the row masker). Default false.
   */
  readonly dataRowRuns?: boolean;
}

const MIN_PARTIAL_CAPACITY = 256;

/**
 * Incremental framer for backend messages.
 *
 * Usage: `push(chunk)`, then call `next()` until it returns `null`. Consecutive uninteresting frames in a
 * chunk come back as one `raw` view of that chunk, and a huge uninteresting frame (a 100 MB DataRow) streams
 * through chunk by chunk without being buffered. Interesting frames are returned whole: as a view of the
 * chunk when they fit inside it, or as a fresh copy when they straddle chunks (copied once, in a buffer
 * that grows with the bytes received). Views alias the pushed chunk and are valid until the next `push`;
 * the scanner never reuses its own buffers, so handing segments to `socket.write` is safe as long as the
 * chunk's owner does not recycle it (Node sockets do not).
 *
 * Unknown type bytes and lengths below 4 throw {@link ProtocolViolation}; the scanner is unusable after.
 */
export class BackendScanner {
  private readonly interest = new Uint8Array(256);
  private readonly maxBuffered: number;
  private readonly dataRowRuns: boolean;
  private failed: ProtocolViolation | null = null;

  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;

  /** Bytes still to stream of an uninteresting frame whose header has been seen. */
  private rawRemaining = 0;
  /** Header of a frame that straddles chunks. */
  private readonly header = Buffer.alloc(5);
  private headerLen = 0;
  private headerInteresting = false;
  /** Interesting frame being assembled across chunks. */
  private partial: Buffer | null = null;
  private partialLen = 0;
  private partialTotal = 0;

  constructor(options: BackendScannerOptions = {}) {
    this.maxBuffered = options.maxBufferedFrameLength ?? DEFAULT_MAX_BUFFERED_FRAME_LENGTH;
    this.dataRowRuns = options.dataRowRuns ?? false;
    if (!Number.isInteger(this.maxBuffered) || this.maxBuffered < 4 || this.maxBuffered > 0x7fffffff) {
      throw new RangeError(`maxBufferedFrameLength must be an integer in [4, 2^31-1], got ${this.maxBuffered}`);
    }
    if (options.interest !== undefined) this.setInterest(options.interest);
  }

  /**
   * Replaces the set of types returned as frames. Takes effect from the next frame whose header has not
   * been seen yet (a frame already streaming raw finishes raw).
   */
  setInterest(codes: Iterable<BackendCode>): void {
    this.interest.fill(0);
    for (const c of codes) this.interest[c] = 1;
  }

  /** Adds or removes one type from the interest set. */
  setInterested(code: BackendCode, interested: boolean): void {
    this.interest[code] = interested ? 1 : 0;
  }

  isInterested(code: BackendCode): boolean {
    return this.interest[code] === 1;
  }

  /** True when the stream is at a frame boundary (nothing partially received). */
  get atFrameBoundary(): boolean {
    return this.pos >= this.chunk.length && this.rawRemaining === 0 && this.headerLen === 0 && this.partial === null;
  }

  /**
   * Hands back the pushed bytes that `next()` has not returned yet, and forgets them, so a caller can stop
   * scanning after a given frame and pass the rest to someone else. Valid only between frames.
   * @throws Error if a frame is partially consumed.
   */
  detachRemainder(): Buffer {
    if (this.rawRemaining !== 0 || this.headerLen !== 0 || this.partial !== null) {
      throw new Error('detachRemainder: scanner is in the middle of a frame');
    }
    const rest = this.chunk.subarray(this.pos);
    this.chunk = Buffer.alloc(0);
    this.pos = 0;
    return rest;
  }

  /** Adds a chunk; unread bytes of the previous chunk, if any, are kept in front of it. */
  push(chunk: Buffer): void {
    if (this.failed !== null) throw this.failed;
    this.chunk = this.pos < this.chunk.length ? Buffer.concat([this.chunk.subarray(this.pos), chunk]) : chunk;
    this.pos = 0;
  }

  /**
   * Returns the next segment, or `null` when the chunk is exhausted.
   * @throws ProtocolViolation on an unknown type byte or invalid length.
   */
  next(): ScanSegment | null {
    if (this.failed !== null) throw this.failed;
    try {
      return this.step();
    } catch (err) {
      if (err instanceof ProtocolViolation) {
        this.failed = err;
        this.chunk = Buffer.alloc(0);
        this.pos = 0;
        this.partial = null;
      }
      throw err;
    }
  }

  private step(): ScanSegment | null {
    const chunk = this.chunk;
    const end = chunk.length;
    const runStart = this.pos;

    // Finish whatever straddled from the previous chunk. These states only exist at a chunk's start.
    if (this.partial !== null) return this.continuePartial();
    if (this.headerLen > 0) {
      // Uses the interest decided when the header started, so a header already forwarded raw stays raw.
      const interesting = this.headerInteresting;
      const take = Math.min(5 - this.headerLen, end - this.pos);
      chunk.copy(this.header, this.headerLen, this.pos, this.pos + take);
      this.headerLen += take;
      this.pos += take;
      if (this.headerLen < 5) return interesting || take === 0 ? null : raw(chunk, runStart, this.pos);
      const total = this.frameTotal(this.header, 0, interesting);
      this.headerLen = 0;
      if (interesting) {
        this.startPartial(total, this.header, 5);
        return this.continuePartial();
      }
      this.rawRemaining = total - 5;
    }

    for (;;) {
      if (this.rawRemaining > 0) {
        const take = Math.min(this.rawRemaining, end - this.pos);
        this.pos += take;
        this.rawRemaining -= take;
        if (this.rawRemaining > 0) break;
      }
      const avail = end - this.pos;
      if (avail === 0) break;
      const code = chunk[this.pos] ?? 0;
      if (!isBackendCode(code)) throw unknownCode(code);
      const interesting = this.interest[code] === 1;
      if (interesting && this.pos > runStart) break; // flush the raw run first
      if (avail < 5) {
        chunk.copy(this.header, 0, this.pos, end);
        this.headerLen = avail;
        this.headerInteresting = interesting;
        this.pos = end;
        if (interesting) return null; // its bytes are held for the frame, not forwarded raw
        break;
      }
      const total = this.frameTotal(chunk, this.pos, interesting);
      if (!interesting) {
        const take = Math.min(total, avail);
        this.pos += take;
        this.rawRemaining = total - take;
        continue;
      }
      if (avail >= total) {
        const start = this.pos;
        this.pos += total;
        if (code === BackendCode.DataRow && this.dataRowRuns) this.pos = this.endOfDataRowRun(chunk, this.pos);
        return { kind: 'frame', code, frame: chunk.subarray(start, this.pos) };
      }
      this.startPartial(total, chunk, this.pos + avail, this.pos);
      this.pos = end;
      return null;
    }
    return this.pos > runStart ? raw(chunk, runStart, this.pos) : null;
  }

  /** Validates a header and returns the frame's total size (type byte included). */
  private frameTotal(buf: Buffer, at: number, interesting: boolean): number {
    const code = buf[at] ?? 0;
    if (!isBackendCode(code)) throw unknownCode(code);
    const len = buf.readInt32BE(at + 1);
    if (len < 4) throw new ProtocolViolation(`invalid backend message length ${len} for type '${char(code)}'`);
    if (interesting && len > this.maxBuffered) {
      throw new ProtocolViolation(
        `backend message '${char(code)}' of ${len} bytes exceeds the ${this.maxBuffered}-byte buffering limit`,
      );
    }
    return len + 1;
  }

  /** Where the run of DataRows that lie whole in `chunk` from `at` ends (their headers validated as any frame's). */
  private endOfDataRowRun(chunk: Buffer, at: number): number {
    let pos = at;
    while (chunk.length - pos >= 5 && chunk[pos] === BackendCode.DataRow) {
      const len =
        ((chunk[pos + 1] ?? 0) << 24) |
        ((chunk[pos + 2] ?? 0) << 16) |
        ((chunk[pos + 3] ?? 0) << 8) |
        (chunk[pos + 4] ?? 0);
      // Out of bounds: left for step() to find at this frame, which throws the usual error.
      if (len < 4 || len > this.maxBuffered || chunk.length - pos <= len) break;
      pos += len + 1;
    }
    return pos;
  }

  /** Starts assembling an interesting frame from `src[from..to)`. */
  private startPartial(total: number, src: Buffer, to: number, from = 0): void {
    const cap = Math.min(total, Math.max(MIN_PARTIAL_CAPACITY, (to - from) * 2));
    this.partial = Buffer.allocUnsafe(cap);
    src.copy(this.partial, 0, from, to);
    this.partialLen = to - from;
    this.partialTotal = total;
  }

  private continuePartial(): ScanSegment | null {
    let partial = this.partial;
    if (partial === null) return null;
    const take = Math.min(this.partialTotal - this.partialLen, this.chunk.length - this.pos);
    const needed = this.partialLen + take;
    if (needed > partial.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.partialTotal, Math.max(needed, partial.length * 2)));
      partial.copy(grown, 0, 0, this.partialLen);
      partial = grown;
      this.partial = grown;
    }
    this.chunk.copy(partial, this.partialLen, this.pos, this.pos + take);
    this.pos += take;
    this.partialLen += take;
    if (this.partialLen < this.partialTotal) return null;
    const frame = partial.subarray(0, this.partialTotal);
    this.partial = null;
    this.partialLen = 0;
    this.partialTotal = 0;
    return { kind: 'frame', code: (frame[0] ?? 0) as BackendCode, frame };
  }
}

function raw(chunk: Buffer, from: number, to: number): ScanSegment {
  return { kind: 'raw', bytes: chunk.subarray(from, to) };
}

function char(code: number): string {
  return code >= 0x20 && code < 0x7f ? String.fromCharCode(code) : `0x${code.toString(16).padStart(2, '0')}`;
}

function unknownCode(code: number): ProtocolViolation {
  return new ProtocolViolation(`invalid backend message type ${char(code)}`);
}

/**
 * Feeds one chunk through `scanner` and returns the Buffers to write downstream, in order: raw runs as is,
 * and each interesting frame either as is or replaced by what `rewrite` returns (`undefined` keeps the
 * original). Suited to `socket.writev`-style output or `Buffer.concat`.
 */
export function scanChunk(
  scanner: BackendScanner,
  chunk: Buffer,
  rewrite: (code: BackendCode, frame: Buffer) => Buffer | undefined,
): Buffer[] {
  scanner.push(chunk);
  const out: Buffer[] = [];
  for (let s = scanner.next(); s !== null; s = scanner.next()) {
    if (s.kind === 'raw') out.push(s.bytes);
    else out.push(rewrite(s.code, s.frame) ?? s.frame);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Decoders for the frames the proxy looks at. Each takes a whole frame (header included), checks its type,
// and throws ProtocolViolation on malformed content. Buffer results are views of the frame.

function body(frame: Buffer, code: BackendCode, what: string): WireReader {
  if (frame.length < 5 || frame[0] !== code) {
    throw new ProtocolViolation(`${what}: frame has type ${char(frame[0] ?? 0)}, expected ${char(code)}`);
  }
  if (frame.readInt32BE(1) !== frame.length - 1) throw new ProtocolViolation(`${what}: length field mismatch`);
  return new WireReader(frame, 5, frame.length, what);
}

/** RowDescription 'T' → column descriptions. */
export function decodeRowDescription(frame: Buffer): FieldDescription[] {
  const r = body(frame, BackendCode.RowDescription, 'RowDescription');
  const count = r.int16('field count');
  if (count < 0) throw new ProtocolViolation('RowDescription: negative field count');
  r.need(count * 19, 'fields');
  const fields = new Array<FieldDescription>(count);
  for (let i = 0; i < count; i++) {
    fields[i] = {
      name: r.cstring('field name'),
      tableOid: r.uint32('table OID'),
      columnAttr: r.int16('column attribute number'),
      typeOid: r.uint32('type OID'),
      typeSize: r.int16('type size'),
      typeModifier: r.int32('type modifier'),
      format: r.int16('format code'),
    };
  }
  r.done();
  return fields;
}

/** DataRow 'D' → column values as views of the frame; `null` is SQL NULL. */
export function decodeDataRow(frame: Buffer): (Buffer | null)[] {
  const r = body(frame, BackendCode.DataRow, 'DataRow');
  const count = r.int16('column count');
  if (count < 0) throw new ProtocolViolation('DataRow: negative column count');
  r.need(count * 4, 'columns');
  const values = new Array<Buffer | null>(count);
  for (let i = 0; i < count; i++) {
    const len = r.int32('column length');
    values[i] = len === -1 ? null : r.bytes(len, `column ${i + 1}`);
  }
  r.done();
  return values;
}

/** Decoded CommandComplete. */
export interface CommandCompleteInfo {
  /** The whole tag, e.g. `INSERT 0 5`, `SELECT 3`, `CREATE TABLE`. */
  readonly tag: string;
  /** The command word(s) without counts, e.g. `INSERT`, `SELECT`, `CREATE TABLE`. */
  readonly command: string;
  /** Rows affected or returned, for tags that carry a count; otherwise `null`. */
  readonly rows: number | null;
}

const COUNTED_COMMANDS = new Set(['INSERT', 'DELETE', 'UPDATE', 'MERGE', 'SELECT', 'MOVE', 'FETCH', 'COPY']);

/** CommandComplete 'C' → tag, command and row count. */
export function decodeCommandComplete(frame: Buffer): CommandCompleteInfo {
  const r = body(frame, BackendCode.CommandComplete, 'CommandComplete');
  const tag = r.cstring('command tag');
  r.done();
  const words = tag.split(' ');
  const first = words[0] ?? '';
  const last = words[words.length - 1] ?? '';
  if (COUNTED_COMMANDS.has(first) && words.length >= 2 && /^\d+$/.test(last)) {
    // INSERT's tag is "INSERT oid rows"; the others are "COMMAND rows".
    return { tag, command: first, rows: Number(last) };
  }
  return { tag, command: tag, rows: null };
}

/** COUNTED_COMMANDS as the bytes of their tag's first word. */
const COUNTED_COMMAND_BYTES: readonly Uint8Array[] = [...COUNTED_COMMANDS].map((c) => Buffer.from(c, 'latin1'));

/**
 * Whether `frame[from..to)` is one of COUNTED_COMMAND_BYTES, compared byte by byte in JavaScript: for a
 * tag's first word (≤ 6 bytes) that is cheaper than a call into Buffer.compare's C++ per candidate.
 */
function isCountedCommand(frame: Buffer, from: number, to: number): boolean {
  const length = to - from;
  for (const c of COUNTED_COMMAND_BYTES) {
    if (c.length !== length) continue;
    let i = 0;
    while (i < length && c[i] === frame[from + i]) i++;
    if (i === length) return true;
  }
  return false;
}

/**
 * The row count of a CommandComplete, as `decodeCommandComplete(frame).rows`, read from the tag's bytes
 * without making strings of it: the response tracker needs only this, once per statement. One pass in
 * JavaScript over the tag (a dozen bytes) finds its NUL and its first and last spaces: no Buffer.indexOf
 * or lastIndexOf, each a call into C++.
 */
export function commandCompleteRows(frame: Buffer): number | null {
  const end = frame.length - 1; // where the tag's NUL must be
  if (
    frame.length < 5 ||
    frame[0] !== BackendCode.CommandComplete ||
    frame.readInt32BE(1) !== end ||
    frame[end] !== 0
  ) {
    return decodeCommandComplete(frame).rows; // malformed (or not a CommandComplete): the full decoder says what
  }
  let firstSpace = -1;
  let lastSpace = -1;
  for (let i = 5; i < end; i++) {
    const b = frame[i];
    if (b === 0) return decodeCommandComplete(frame).rows; // a NUL inside: trailing bytes after the tag
    if (b === 0x20) {
      if (firstSpace < 0) firstSpace = i;
      lastSpace = i;
    }
  }
  if (firstSpace < 0) return null;
  if (!isCountedCommand(frame, 5, firstSpace)) return null;
  if (lastSpace + 1 === end) return null; // an empty last word
  let rows = 0;
  for (let i = lastSpace + 1; i < end; i++) {
    const digit = (frame[i] as number) - 0x30;
    if (digit < 0 || digit > 9) return null;
    rows = rows * 10 + digit;
  }
  // Beyond 15 digits the sum above may round differently from Number() of the text.
  return end - lastSpace - 1 > 15 ? Number(frame.toString('latin1', lastSpace + 1, end)) : rows;
}

const FIELD_NAME_BY_CODE = new Map<string, OptionalErrorField>(
  (Object.entries(ERROR_FIELD_CODES) as [OptionalErrorField, string][]).map(([name, c]) => [c, name]),
);

/** ErrorResponse 'E' or NoticeResponse 'N' → fields; unknown field codes land in `extra`. */
export function decodeErrorFields(frame: Buffer): ErrorFields {
  const code = frame[0] === BackendCode.NoticeResponse ? BackendCode.NoticeResponse : BackendCode.ErrorResponse;
  const r = body(frame, code, code === BackendCode.ErrorResponse ? 'ErrorResponse' : 'NoticeResponse');
  let severity = '';
  let severityNonLocalized: string | undefined;
  let sqlState = '';
  let message = '';
  const named: Partial<Record<OptionalErrorField, string>> = {};
  const extra: Record<string, string> = {};
  for (;;) {
    const fieldCode = r.byte('field type');
    if (fieldCode === 0) break;
    const c = String.fromCharCode(fieldCode);
    const value = r.cstring(`field '${char(fieldCode)}'`);
    switch (c) {
      case 'S':
        severity = value;
        break;
      case 'V':
        severityNonLocalized = value;
        break;
      case 'C':
        sqlState = value;
        break;
      case 'M':
        message = value;
        break;
      default: {
        const name = FIELD_NAME_BY_CODE.get(c);
        if (name !== undefined) named[name] = value;
        else extra[c] = value;
      }
    }
  }
  r.done();
  return {
    severity,
    ...(severityNonLocalized !== undefined ? { severityNonLocalized } : {}),
    code: sqlState,
    message,
    ...named,
    ...(Object.keys(extra).length > 0 ? { extra } : {}),
  };
}

/** ReadyForQuery 'Z' → transaction status. */
export function decodeReadyForQuery(frame: Buffer): TransactionStatus {
  const r = body(frame, BackendCode.ReadyForQuery, 'ReadyForQuery');
  const s = r.byte('status');
  r.done();
  if (s === 0x49) return 'I';
  if (s === 0x54) return 'T';
  if (s === 0x45) return 'E';
  throw new ProtocolViolation(`ReadyForQuery: invalid transaction status ${char(s)}`);
}

/** ParameterStatus 'S' → name and value. */
export function decodeParameterStatus(frame: Buffer): { readonly name: string; readonly value: string } {
  const r = body(frame, BackendCode.ParameterStatus, 'ParameterStatus');
  const name = r.cstring('name');
  const value = r.cstring('value');
  r.done();
  return { name, value };
}

/**
 * A NotificationResponse 'A' with the notifying process id `from` replaced by `to` (a copy); any other frame
 * as it is. The sidecar gives clients its own process id, so notifications of their own backend carry that.
 */
export function withNotifierPid(frame: Buffer, from: number, to: number): Buffer {
  if (frame.length < 9 || frame[0] !== BackendCode.NotificationResponse || frame.readInt32BE(5) !== from) return frame;
  const copy = Buffer.from(frame);
  copy.writeInt32BE(to, 5);
  return copy;
}

/** Decoded BackendKeyData. */
export interface BackendKey {
  readonly processId: number;
  /** 4 bytes under protocol 3.0, up to 256 under 3.2. */
  readonly secretKey: Buffer;
}

/** BackendKeyData 'K' → process id and cancel key (a view). */
export function decodeBackendKeyData(frame: Buffer): BackendKey {
  const r = body(frame, BackendCode.BackendKeyData, 'BackendKeyData');
  const processId = r.int32('process id');
  const secretKey = r.rest();
  if (secretKey.length < 4 || secretKey.length > 256) {
    throw new ProtocolViolation(`BackendKeyData: cancel key of ${secretKey.length} bytes (expected 4..256)`);
  }
  return { processId, secretKey };
}

/** NotificationResponse 'A' (LISTEN/NOTIFY). */
export function decodeNotificationResponse(frame: Buffer): {
  readonly processId: number;
  readonly channel: string;
  readonly payload: string;
} {
  const r = body(frame, BackendCode.NotificationResponse, 'NotificationResponse');
  const processId = r.int32('process id');
  const channel = r.cstring('channel');
  const payload = r.cstring('payload');
  r.done();
  return { processId, channel, payload };
}

/** Decoded CopyInResponse / CopyOutResponse / CopyBothResponse. */
export interface CopyResponseInfo {
  readonly direction: 'in' | 'out' | 'both';
  /** 0 = textual, 1 = binary, for the whole COPY. */
  readonly format: number;
  readonly columnFormats: readonly number[];
}

/** CopyInResponse 'G', CopyOutResponse 'H' or CopyBothResponse 'W'. */
export function decodeCopyResponse(frame: Buffer): CopyResponseInfo {
  const t = frame[0];
  const code =
    t === BackendCode.CopyOutResponse
      ? BackendCode.CopyOutResponse
      : t === BackendCode.CopyBothResponse
        ? BackendCode.CopyBothResponse
        : BackendCode.CopyInResponse;
  const direction = code === BackendCode.CopyInResponse ? 'in' : code === BackendCode.CopyOutResponse ? 'out' : 'both';
  const r = body(frame, code, 'CopyResponse');
  const format = r.byte('format');
  const count = r.int16('column count');
  if (count < 0) throw new ProtocolViolation('CopyResponse: negative column count');
  r.need(count * 2, 'column formats');
  const columnFormats = new Array<number>(count);
  for (let i = 0; i < count; i++) columnFormats[i] = r.int16('column format');
  r.done();
  return { direction, format, columnFormats };
}

/** Decoded Authentication 'R' request. */
export type AuthenticationRequest =
  | { readonly code: typeof AuthCode.Ok }
  | { readonly code: typeof AuthCode.CleartextPassword }
  | { readonly code: typeof AuthCode.MD5Password; readonly salt: Buffer }
  | { readonly code: typeof AuthCode.SASL; readonly mechanisms: readonly string[] }
  | { readonly code: typeof AuthCode.SASLContinue; readonly data: Buffer }
  | { readonly code: typeof AuthCode.SASLFinal; readonly data: Buffer }
  | {
      readonly code:
        typeof AuthCode.KerberosV5 | typeof AuthCode.GSS | typeof AuthCode.GSSContinue | typeof AuthCode.SSPI;
      readonly data: Buffer;
    };

/** Authentication 'R' → the request the server is making. */
export function decodeAuthentication(frame: Buffer): AuthenticationRequest {
  const r = body(frame, BackendCode.Authentication, 'Authentication');
  const code = r.int32('authentication code');
  switch (code) {
    case AuthCode.Ok:
    case AuthCode.CleartextPassword:
      r.done();
      return { code };
    case AuthCode.MD5Password: {
      const salt = r.bytes(4, 'salt');
      r.done();
      return { code, salt };
    }
    case AuthCode.SASL: {
      const mechanisms: string[] = [];
      for (let m = r.cstring('mechanism'); m !== ''; m = r.cstring('mechanism')) mechanisms.push(m);
      r.done();
      return { code, mechanisms };
    }
    case AuthCode.SASLContinue:
    case AuthCode.SASLFinal:
    case AuthCode.KerberosV5:
    case AuthCode.GSS:
    case AuthCode.GSSContinue:
    case AuthCode.SSPI:
      return { code, data: r.rest() };
    default:
      throw new ProtocolViolation(`Authentication: unknown request code ${code}`);
  }
}

/** NegotiateProtocolVersion 'v' → newest 3.x minor version and unrecognised options. */
export function decodeNegotiateProtocolVersion(frame: Buffer): {
  readonly newestMinorVersion: number;
  readonly unrecognizedOptions: readonly string[];
} {
  const r = body(frame, BackendCode.NegotiateProtocolVersion, 'NegotiateProtocolVersion');
  // The whole version code (major << 16 | minor), as PostgreSQL sends it.
  const version = r.int32('protocol version');
  if (version >>> 16 !== 3) throw new ProtocolViolation('NegotiateProtocolVersion: a version other than 3.x');
  const newestMinorVersion = version & 0xffff;
  const count = r.int32('option count');
  if (count < 0) throw new ProtocolViolation('NegotiateProtocolVersion: negative option count');
  r.need(count, 'options');
  const unrecognizedOptions: string[] = [];
  for (let i = 0; i < count; i++) unrecognizedOptions.push(r.cstring('option name'));
  r.done();
  return { newestMinorVersion, unrecognizedOptions };
}
