// Which recorded successes a rollback names: the response tracker fed the frames PostgreSQL sends for
// transaction blocks (simple and extended protocol), with the transaction control the gate derives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CombinedDecision } from '@chaperone/api';
import type { CommandOutcome, DecidedCommand } from '../../core/command.ts';
import { ResponseTracker } from './response-tracker.ts';
import type { BackendCode } from './protocol/backend-messages.ts';
import { cstr, i8, msg } from './protocol/test-wire.ts';
import type { TransactionControl } from './transaction-log.ts';

const ALLOW: CombinedDecision = {
  decision: 'allow',
  policy: 'p',
  rule: 'r',
  bundleDigest: '',
  reasons: [],
  masking: [],
};

function command(id: number): DecidedCommand {
  return { id, decision: ALLOW, startedAt: 0, recorded: true, audit: { state: 'clear' } };
}

function tracker(): { t: ResponseTracker; outcomes: Map<number, CommandOutcome> } {
  const outcomes = new Map<number, CommandOutcome>();
  const t = new ResponseTracker({ onOutcome: (c, o) => outcomes.set(c.id, o) });
  return { t, outcomes };
}

const complete = (tag: string): Buffer => msg('C', cstr(tag));
const ready = (status: 'I' | 'T' | 'E'): Buffer => msg('Z', Buffer.from(status));
const error = (code: string): Buffer =>
  msg('E', i8(0x53), cstr('ERROR'), i8(0x43), cstr(code), i8(0x4d), cstr('failed'), i8(0));

function feed(t: ResponseTracker, ...frames: Buffer[]): void {
  for (const f of frames) t.onFrame(f[0] as BackendCode, f);
}

const control = (action: TransactionControl['action'], name?: string, alone = true): TransactionControl => ({
  action,
  name,
  alone,
});

/** One simple query: its control, the frames the server answers. */
function query(t: ResponseTracker, id: number, c: TransactionControl | undefined, ...frames: Buffer[]): void {
  t.expect('query', command(id), undefined, undefined, undefined, c);
  feed(t, ...frames);
}

test('BEGIN; DELETE; UPDATE; ROLLBACK: the ROLLBACK names the two commands it undid', () => {
  const { t, outcomes } = tracker();
  query(t, 1, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 2, undefined, complete('DELETE 5'), ready('T'));
  query(t, 3, undefined, complete('UPDATE 1'), ready('T'));
  query(t, 4, control('rollback'), complete('ROLLBACK'), ready('I'));
  assert.deepEqual(outcomes.get(2), { status: 'success', rows: 5 });
  assert.deepEqual(outcomes.get(4), { status: 'success', rows: 0, rolledBack: { commands: 2, first: 2, last: 3 } });
});

test('COMMIT keeps every outcome as it was, with nothing added', () => {
  const { t, outcomes } = tracker();
  query(t, 1, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 2, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 3, control('commit'), complete('COMMIT'), ready('I'));
  assert.deepEqual(outcomes.get(3), { status: 'success', rows: 0 });
  // The next transaction's rollback names only its own commands.
  query(t, 4, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 5, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 6, control('rollback'), complete('ROLLBACK'), ready('I'));
  assert.deepEqual(outcomes.get(6)?.rolledBack, { commands: 1, first: 5, last: 5 });
});

test('a COMMIT of a failed transaction (tag ROLLBACK) and a COMMIT that fails name what was undone', () => {
  const { t, outcomes } = tracker();
  query(t, 1, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 2, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 3, undefined, error('23505'), ready('E'));
  query(t, 4, control('commit'), complete('ROLLBACK'), ready('I'));
  assert.equal(outcomes.get(3)?.status, 'error');
  assert.deepEqual(outcomes.get(4)?.rolledBack, { commands: 1, first: 2, last: 2 });

  query(t, 5, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 6, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 7, control('commit'), error('23503'), ready('I')); // a deferred constraint
  assert.deepEqual(outcomes.get(7), {
    status: 'error',
    code: '23503',
    message: 'failed',
    rows: 0,
    rolledBack: { commands: 1, first: 6, last: 6 },
  });
});

test('ROLLBACK TO SAVEPOINT names the commands since the savepoint; RELEASE forgets it', () => {
  const { t, outcomes } = tracker();
  query(t, 1, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 2, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 3, control('savepoint', 'a'), complete('SAVEPOINT'), ready('T'));
  query(t, 4, undefined, complete('DELETE 3'), ready('T'));
  query(t, 5, control('savepoint', 'b'), complete('SAVEPOINT'), ready('T'));
  query(t, 6, undefined, complete('UPDATE 2'), ready('T'));
  query(t, 7, control('rollback-to', 'a'), complete('ROLLBACK'), ready('T'));
  assert.deepEqual(outcomes.get(7)?.rolledBack, { commands: 2, first: 4, last: 6 });
  // b went with the rollback to a; a stays.
  query(t, 8, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 9, control('rollback-to', 'b'), error('3B001'), ready('E'));
  assert.equal(outcomes.get(9)?.rolledBack, undefined);
  query(t, 10, control('rollback-to', 'a'), complete('ROLLBACK'), ready('T'));
  assert.deepEqual(outcomes.get(10)?.rolledBack, { commands: 1, first: 8, last: 8 });
  query(t, 11, control('savepoint', 'c'), complete('SAVEPOINT'), ready('T'));
  query(t, 12, undefined, complete('INSERT 0 1'), ready('T'));
  query(t, 13, control('release', 'c'), complete('RELEASE'), ready('T'));
  query(t, 14, control('rollback'), complete('ROLLBACK'), ready('I'));
  assert.deepEqual(outcomes.get(14)?.rolledBack, { commands: 2, first: 2, last: 12 });
});

test('a string that begins a block and writes in it is undone with the block', () => {
  const { t, outcomes } = tracker();
  query(t, 1, control('begin', undefined, false), complete('BEGIN'), complete('DELETE 1'), ready('T'));
  query(t, 2, control('rollback'), complete('ROLLBACK'), ready('I'));
  assert.deepEqual(outcomes.get(2)?.rolledBack, { commands: 1, first: 1, last: 1 });
});

test('extended protocol, one batch: BEGIN, INSERT, ROLLBACK, Sync', () => {
  const { t, outcomes } = tracker();
  const execute = (id: number, c?: TransactionControl): void => {
    t.expect('parse');
    t.expect('bind');
    t.expect('execute', command(id), undefined, undefined, undefined, c);
  };
  execute(1, control('begin'));
  execute(2);
  execute(3, control('rollback'));
  t.sync();
  const pb = [msg('1'), msg('2')];
  feed(t, ...pb, complete('BEGIN'), ...pb, complete('INSERT 0 1'), ...pb, complete('ROLLBACK'), ready('I'));
  assert.deepEqual(outcomes.get(2), { status: 'success', rows: 1 });
  assert.deepEqual(outcomes.get(3)?.rolledBack, { commands: 1, first: 2, last: 2 });
});

test('outside a transaction block nothing is kept; a disconnect inside one returns what the server undoes', () => {
  const { t, outcomes } = tracker();
  query(t, 1, undefined, complete('INSERT 0 1'), ready('I'));
  assert.equal(t.cancelAll(), undefined, 'an autocommitted statement is not undone');
  query(t, 2, control('begin'), complete('BEGIN'), ready('T'));
  query(t, 3, undefined, complete('DELETE 4'), ready('T'));
  t.expect('query', command(4)); // sent, never answered
  assert.deepEqual(t.cancelAll(), { commands: 1, first: 3, last: 3 });
  assert.equal(outcomes.get(4)?.status, 'cancelled');
});
