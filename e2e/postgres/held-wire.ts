// Raw-frame helpers for statements held for approval (the approval red-team tests): write a pipeline and
// wait for the notice that names its request, then for the ReadyForQuery that ends it.
import { errorFields, parseBackend, type RawClient } from './raw-client.ts';
import { exchange, type Reply } from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;

/** Where a held exchange began: the received bytes and ReadyForQuery count before it. */
export interface Held {
  readonly offset: number;
  readonly readies: number;
}

export function readies(client: RawClient): number {
  return parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
}

/** Writes `bytes` and waits for the notice that names the held statement's approval request. */
export async function held(client: RawClient, bytes: Buffer): Promise<Held> {
  const mark = { offset: client.receivedLength, readies: readies(client) };
  await exchange(client, bytes, 0, 'N');
  return mark;
}

/** The request the notice since `mark` names. */
export function requestOf(client: RawClient, mark: Held): string {
  const notice = client.received.subarray(mark.offset).toString('latin1');
  const name = /ApprovalRequest [a-z0-9-]+\/([a-z0-9-]+) /.exec(notice)?.[1];
  if (name === undefined) throw new Error('no notice naming an approval request');
  return name;
}

/** Waits until `n` ReadyForQuery arrived since `mark` (the held statement's end) and returns what came since. */
export async function settled(client: RawClient, mark: Held, n = 1): Promise<Reply> {
  if (!(await client.until(() => readies(client) >= mark.readies + n, TIMEOUT_MS))) {
    throw new Error(`no ReadyForQuery after the held statement (${client.end})`);
  }
  const messages = parseBackend(client.received.subarray(mark.offset), 0, true).messages;
  const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
  return {
    messages,
    types: messages.map((m) => m.type).join(' '),
    codes: errors.map((e) => e.code),
    errors: errors.map((e) => `${e.code} ${e.message}`),
    severity: errors.at(-1)?.severity,
    closed: client.serverEnded,
  };
}

/**
 * Writes a pipeline whose statement is held for approval, runs `whileHeld` (checks while nothing ran), has
 * `decide` settle the request the notice names, and waits for the pipeline's ReadyForQuery.
 */
export async function heldAndDecided(
  client: RawClient,
  bytes: Buffer,
  decide: (request: string) => Promise<void>,
  whileHeld?: () => Promise<void>,
): Promise<{ readonly request: string; readonly reply: Reply }> {
  const mark = await held(client, bytes);
  await whileHeld?.();
  const request = requestOf(client, mark);
  await decide(request);
  return { request, reply: await settled(client, mark) };
}
