// A raw-socket PostgreSQL client for hostile-input tests: sends exactly the bytes it is given, records every
// byte it receives, and parses backend messages with a deliberately simple reader of its own (no shared code
// with the sidecar's codecs), so the tests can assert on what the sidecar really put on the wire.
import { connect, type Socket } from 'node:net';

// ---- building frontend bytes the plainest possible way -------------------------------------------------

export function i16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}

export function i32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
}

/** A string followed by NUL. */
export function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
}

/** A typed message: one type byte, Int32 length counting itself and the body, then the body. */
export function msg(type: string | number, ...body: Buffer[]): Buffer {
  const payload = Buffer.concat(body);
  const code = typeof type === 'number' ? type : type.charCodeAt(0);
  return Buffer.concat([Buffer.from([code]), i32(payload.length + 4), payload]);
}

/** An untyped startup-phase packet: Int32 length counting itself, then the body. */
export function packet(...body: Buffer[]): Buffer {
  const payload = Buffer.concat(body);
  return Buffer.concat([i32(payload.length + 4), payload]);
}

export const SSL_REQUEST = packet(i32(80877103));
export const GSSENC_REQUEST = packet(i32(80877104));
export const PROTOCOL_3_0 = 196608;

export function startupMessage(parameters: Record<string, string> = { user: 'agent', database: 'agent-db' }): Buffer {
  const pairs = Object.entries(parameters).flatMap(([k, v]) => [cstr(k), cstr(v)]);
  return packet(i32(PROTOCOL_3_0), ...pairs, Buffer.from([0]));
}

export function passwordMessage(password: string): Buffer {
  return msg('p', cstr(password));
}

export function query(sql: string): Buffer {
  return msg('Q', cstr(sql));
}

export const SYNC = msg('S');
export const TERMINATE = msg('X');

/** Deterministic PRNG (mulberry32) so fuzz runs are reproducible from their seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- reading backend bytes -----------------------------------------------------------------------------

export interface BackendMessage {
  /** The type character, or `'N'`/`'S'` with `single: true` for the one-byte SSL/GSSENC answer. */
  readonly type: string;
  readonly body: Buffer;
  readonly single?: true;
}

export interface ErrorFields {
  readonly severity: string;
  readonly code: string;
  readonly message: string;
}

/**
 * Splits received bytes into backend messages. `singleByteAnswers` is how many one-byte SSLRequest/GSSENCRequest
 * answers to expect at the start. Throws when the bytes are not a sequence of well-formed messages (the tail
 * may be an incomplete message only if `allowIncompleteTail`).
 */
export function parseBackend(
  bytes: Buffer,
  singleByteAnswers = 0,
  allowIncompleteTail = false,
): { messages: BackendMessage[]; tail: number } {
  const messages: BackendMessage[] = [];
  let at = 0;
  for (let i = 0; i < singleByteAnswers && at < bytes.length; i++) {
    const b = String.fromCharCode(bytes[at] ?? 0);
    if (b !== 'N' && b !== 'S' && b !== 'E') throw new Error(`unexpected SSL answer byte ${JSON.stringify(b)}`);
    if (b === 'E') break; // an ErrorResponse instead of the one-byte answer
    messages.push({ type: b, body: Buffer.alloc(0), single: true });
    at += 1;
  }
  while (at < bytes.length) {
    if (bytes.length - at < 5) {
      if (allowIncompleteTail) break;
      throw new Error(`incomplete backend message header at ${at}: ${bytes.subarray(at).toString('hex')}`);
    }
    const type = String.fromCharCode(bytes[at] ?? 0);
    const len = bytes.readInt32BE(at + 1);
    if (!/^[A-Za-z0-9]$/.test(type) || len < 4) {
      throw new Error(`malformed backend message at ${at}: ${bytes.subarray(at, at + 16).toString('hex')}`);
    }
    if (bytes.length - at < len + 1) {
      if (allowIncompleteTail) break;
      throw new Error(`incomplete backend message ${type} at ${at}`);
    }
    messages.push({ type, body: bytes.subarray(at + 5, at + 1 + len) });
    at += len + 1;
  }
  return { messages, tail: bytes.length - at };
}

/** The fields of an ErrorResponse or NoticeResponse body. */
export function errorFields(body: Buffer): ErrorFields {
  const fields = new Map<string, string>();
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    const code = String.fromCharCode(body[at] ?? 0);
    const end = body.indexOf(0, at + 1);
    if (end < 0) throw new Error('ErrorResponse field without NUL');
    fields.set(code, body.subarray(at + 1, end).toString('utf8'));
    at = end + 1;
  }
  if (at !== body.length - 1) throw new Error('ErrorResponse not terminated by a single NUL');
  return {
    severity: fields.get('V') ?? fields.get('S') ?? '',
    code: fields.get('C') ?? '',
    message: fields.get('M') ?? '',
  };
}

// ---- the client -----------------------------------------------------------------------------------------

export type EndKind = 'closed' | 'reset' | 'open';

/** One raw TCP connection; everything received is kept in `received`. */
export class RawClient {
  readonly socket: Socket;
  private readonly chunks: Buffer[] = [];
  private receivedBytes = 0;
  private ended: EndKind = 'open';
  private readonly waiters = new Set<() => void>();

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.receivedBytes += chunk.length;
      this.wake();
    });
    socket.on('error', () => {
      // ECONNRESET, EPIPE and the like: the server tore the connection down.
      if (this.ended === 'open') this.ended = 'reset';
      this.wake();
    });
    socket.on('close', () => {
      if (this.ended === 'open') this.ended = 'closed';
      this.wake();
    });
  }

  static connect(host: string, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port, noDelay: true, allowHalfOpen: true });
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new RawClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Over a Unix socket: the harness PostgreSQL trusts its superuser there, so tests can speak to it raw. */
  static connectPath(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path, allowHalfOpen: true });
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new RawClient(socket));
      });
      socket.once('error', reject);
    });
  }

  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  get receivedLength(): number {
    return this.receivedBytes;
  }

  /** How the server side ended so far: `closed` (FIN), `reset` (RST or EPIPE), or still `open`. */
  get end(): EndKind {
    return this.ended;
  }

  /** Whether the server has sent its FIN (the socket saw 'end'), even if our side is still open. */
  get serverEnded(): boolean {
    return this.socket.readableEnded || this.ended !== 'open';
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(bytes);
  }

  /** Half-closes our side (FIN), as a client that stops mid-message does. */
  finish(): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Waits until `done()` is true, the server ends the connection, or `timeoutMs` passes; returns whether
   * `done()` became true.
   */
  async until(done: () => boolean, timeoutMs: number): Promise<boolean> {
    if (done()) return true;
    return new Promise((resolve) => {
      const check = (): void => {
        if (done()) finish(true);
        else if (this.ended !== 'open' || this.socket.readableEnded) finish(false);
      };
      const timer = setTimeout(() => finish(done()), timeoutMs);
      const finish = (value: boolean): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        this.socket.removeListener('end', check);
        resolve(value);
      };
      this.waiters.add(check);
      this.socket.on('end', check);
      this.socket.resume();
    });
  }

  /** Waits until a complete backend message of `type` has been received (after `singleByteAnswers`). */
  untilMessage(type: string, timeoutMs: number, singleByteAnswers = 0): Promise<boolean> {
    return this.until(
      () => parseBackend(this.received, singleByteAnswers, true).messages.some((m) => m.type === type && !m.single),
      timeoutMs,
    );
  }

  /** Waits for the server to end the connection; returns how it ended (`open` on timeout). */
  async untilClosed(timeoutMs: number): Promise<EndKind> {
    await this.until(() => this.ended !== 'open' || this.socket.readableEnded, timeoutMs);
    if (this.ended === 'open' && this.socket.readableEnded) return 'closed';
    return this.ended;
  }
}

/** Startup + cleartext password with `token`; resolves with the client once ReadyForQuery arrived. */
export async function authenticatedClient(
  host: string,
  port: number,
  token: string,
  timeoutMs: number,
): Promise<RawClient> {
  const c = await RawClient.connect(host, port);
  c.write(startupMessage());
  if (!(await c.untilMessage('R', timeoutMs))) {
    c.destroy();
    throw new Error(`no authentication request: ${c.received.toString('hex')}`);
  }
  c.write(passwordMessage(token));
  if (!(await c.untilMessage('Z', timeoutMs))) {
    c.destroy();
    throw new Error(`no ReadyForQuery after login: ${c.received.toString('hex')} (${c.end})`);
  }
  return c;
}

/** What one simple Query round trip received: its bytes, the SQLSTATEs of its ErrorResponses, the last ReadyForQuery status. */
export interface QueryRound {
  readonly bytes: Buffer;
  readonly errors: readonly string[];
  readonly status: string;
}

/** Sends `sql` as one simple Query and waits for its ReadyForQuery; throws when none arrives in time. */
export async function simpleQueryRound(client: RawClient, sql: string, timeoutMs = 30_000): Promise<QueryRound> {
  const before = client.receivedLength;
  const readyCount = (): number => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  const readyBefore = readyCount();
  client.write(query(sql));
  if (!(await client.until(() => readyCount() > readyBefore, timeoutMs))) {
    throw new Error(`no ReadyForQuery after ${sql} (${client.end})`);
  }
  const bytes = client.received.subarray(before);
  const messages = parseBackend(bytes).messages;
  return {
    bytes,
    errors: messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body).code),
    status: messages.findLast((m) => m.type === 'Z')?.body.toString() ?? '',
  };
}
