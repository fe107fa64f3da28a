// Frontend messages built the plainest possible way for the raw-socket tests, and one exchange helper
// that writes bytes (in pieces, if asked) and reads until a number of ReadyForQuery or the end of the
// connection. Deliberately independent of the sidecar's codecs (raw-client.ts builds on the same rule).
import { cstr, errorFields, i16, i32, msg, parseBackend, type BackendMessage, type RawClient } from './raw-client.ts';

export function parse(name: string, sql: string, types: readonly number[] = []): Buffer {
  return msg('P', cstr(name), cstr(sql), i16(types.length), ...types.map((t) => i32(t)));
}

export function bind(portal: string, statement: string, params: readonly (string | null)[] = []): Buffer {
  const values = params.map((p) =>
    p === null ? i32(-1) : Buffer.concat([i32(Buffer.byteLength(p)), Buffer.from(p, 'utf8')]),
  );
  return msg('B', cstr(portal), cstr(statement), i16(0), i16(params.length), ...values, i16(0));
}

export function execute(portal: string, maxRows = 0): Buffer {
  return msg('E', cstr(portal), i32(maxRows));
}

export function describe(kind: 'S' | 'P', name: string): Buffer {
  return msg('D', Buffer.from(kind), cstr(name));
}

export function close(kind: 'S' | 'P', name: string): Buffer {
  return msg('C', Buffer.from(kind), cstr(name));
}

/** FunctionCall ('F'): the function's OID, text-format arguments, a text-format result. */
export function functionCall(oid: number, args: readonly (string | null)[]): Buffer {
  const values = args.map((a) =>
    a === null ? i32(-1) : Buffer.concat([i32(Buffer.byteLength(a)), Buffer.from(a, 'utf8')]),
  );
  return msg('F', i32(oid), i16(1), i16(0), i16(args.length), ...values, i16(0));
}

export const FLUSH = msg('H');
export const COPY_DONE = msg('c');

export function copyData(text: string): Buffer {
  return msg('d', Buffer.from(text, 'utf8'));
}

export function copyFail(reason: string): Buffer {
  return msg('f', cstr(reason));
}

/** What one exchange received. */
export interface Reply {
  readonly messages: readonly BackendMessage[];
  /** The message types in order, e.g. `1 2 D C Z`. */
  readonly types: string;
  /** SQLSTATEs of the ErrorResponses, in order. */
  readonly codes: readonly string[];
  /** `code message` of each ErrorResponse, for assertion messages. */
  readonly errors: readonly string[];
  /** Severity of the last ErrorResponse, if any. */
  readonly severity: string | undefined;
  /** The server ended the connection. */
  readonly closed: boolean;
}

function readyCount(client: RawClient): number {
  return parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
}

/**
 * Writes `pieces` (each its own write, a few milliseconds apart, so that they arrive as separate TCP
 * segments) and waits for `readies` more ReadyForQuery, or the end of the connection.
 */
export async function exchange(
  client: RawClient,
  pieces: Buffer | readonly Buffer[],
  readies: number,
  /** With readies 0: wait for a message of this type instead of the end of the connection. */
  until?: string,
): Promise<Reply> {
  const before = client.receivedLength;
  const target = readyCount(client) + readies;
  const list = Buffer.isBuffer(pieces) ? [pieces] : pieces;
  for (const [i, piece] of list.entries()) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 3));
    client.write(piece);
  }
  if (readies > 0) await client.until(() => readyCount(client) >= target, 30_000);
  else if (until !== undefined) {
    const has = (): boolean =>
      parseBackend(client.received.subarray(before), 0, true).messages.some((m) => m.type === until);
    if (!(await client.until(has, 30_000))) throw new Error(`no ${until} message`);
  } else await client.untilClosed(30_000);
  const received = client.received.subarray(before);
  const messages = parseBackend(received, 0, true).messages;
  const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
  if (readies > 0 && readyCount(client) < target && client.end === 'open' && !client.serverEnded) {
    throw new Error(`no ReadyForQuery: received ${messages.map((m) => m.type).join(' ')}`);
  }
  return {
    messages,
    types: messages.map((m) => m.type).join(' '),
    codes: errors.map((e) => e.code),
    errors: errors.map((e) => `${e.code} ${e.message}`),
    severity: errors.at(-1)?.severity,
    closed: client.serverEnded,
  };
}

/** The text of the first column of every DataRow of a reply. */
export function firstColumns(reply: Reply): string[] {
  return reply.messages
    .filter((m) => m.type === 'D')
    .map((m) => {
      const len = m.body.readInt32BE(2);
      return len < 0 ? 'NULL' : m.body.toString('utf8', 6, 6 + len);
    });
}
