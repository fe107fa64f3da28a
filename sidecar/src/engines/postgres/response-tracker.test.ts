// The response tracker on its own: frames built by the simple test helper (test-wire.ts), commands as
// plain objects, outcomes collected from the callback. No sockets.
import type { ResultRewriter } from './masking/row-masker.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CombinedDecision } from '@chaperone/api';
import type { CommandOutcome, DecidedCommand } from '../../core/command.ts';
import { ResponseTracker, TRACKED_FRAMES } from './response-tracker.ts';
import type { Denial } from './error-responses.ts';
import { BackendCode } from './protocol/backend-messages.ts';
import { cstr, i8, msg } from './protocol/test-wire.ts';

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

function tracker(): { t: ResponseTracker; outcomes: [number, CommandOutcome][] } {
  const outcomes: [number, CommandOutcome][] = [];
  const t = new ResponseTracker({ onOutcome: (c, o) => outcomes.push([c.id, o]) });
  return { t, outcomes };
}

const complete = (tag: string): Buffer => msg('C', cstr(tag));
const ready = (status: 'I' | 'T' | 'E'): Buffer => msg('Z', Buffer.from(status));
const error = (code: string, message: string): Buffer =>
  msg('E', i8(0x53), cstr('ERROR'), i8(0x43), cstr(code), i8(0x4d), cstr(message), i8(0));
const parseComplete = msg('1');
const bindComplete = msg('2');
const noData = msg('n');
const ourDenial: Denial = { frame: Buffer.from('our denial'), code: '42501', id: 'PolicyDenied', message: 'denied' };

/** Feeds frames as the connection would (only the tracked ones), returning what goes to the client. */
function feed(t: ResponseTracker, ...frames: Buffer[]): Buffer[] {
  return frames.map((f) => t.onFrame(f[0] as BackendCode, f));
}

test('tracked frames are the ones that complete or fail a unit; DataRows stream raw by default', () => {
  for (const code of [BackendCode.CommandComplete, BackendCode.ErrorResponse, BackendCode.ReadyForQuery]) {
    assert.ok(TRACKED_FRAMES.includes(code));
  }
  assert.ok(!TRACKED_FRAMES.includes(BackendCode.DataRow));
  assert.equal(tracker().t.wantsDataRows, false);
});

test('a simple query: rows are counted from CommandComplete, the outcome comes at ReadyForQuery', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(1));
  const out = feed(t, complete('SELECT 3'), complete('INSERT 0 2'));
  assert.deepEqual(outcomes, [], 'no outcome before ReadyForQuery');
  feed(t, ready('T'));
  assert.deepEqual(outcomes, [[1, { status: 'success', rows: 5 }]]);
  assert.equal(t.transactionStatus, 'T');
  assert.deepEqual(out, [complete('SELECT 3'), complete('INSERT 0 2')], 'frames pass unchanged');
  assert.equal(t.pending, 0);
});

test('a denied simple query: the upstream error is replaced by ours and recorded as denied with its code', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(7), ourDenial);
  const [sent] = feed(t, error('42601', 'syntax error at or near "CHAPERONE_DENIED"'));
  assert.equal(sent, ourDenial.frame);
  feed(t, ready('I'));
  assert.deepEqual(outcomes, [[7, { status: 'denied', code: '42501' }]]);
});

test('an upstream error in a simple query is recorded with its SQLSTATE; 57014 is a cancel', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(1));
  t.expect('query', command(2));
  const e1 = error('23505', 'duplicate key');
  assert.equal(feed(t, e1)[0], e1, 'the upstream error passes through');
  feed(t, ready('E'), error('57014', 'canceling statement due to user request'), ready('I'));
  assert.deepEqual(outcomes, [
    [1, { status: 'error', code: '23505', message: 'duplicate key', rows: 0 }],
    [2, { status: 'cancelled', code: '57014', message: 'canceling statement due to user request', rows: 0 }],
  ]);
});

test('extended protocol: Parse/Bind/Describe/Execute/Sync complete in order; the Execute outcome comes when its transaction ends', () => {
  const { t, outcomes } = tracker();
  t.expect('parse');
  t.expect('bind');
  t.expect('describe');
  t.expect('execute', command(3));
  t.sync();
  feed(t, parseComplete, bindComplete, noData);
  assert.equal(t.pending, 2);
  feed(t, complete('UPDATE 4'));
  assert.deepEqual(outcomes, [], 'the implicit transaction commits at Sync');
  feed(t, ready('I'));
  assert.deepEqual(outcomes, [[3, { status: 'success', rows: 4 }]]);
  assert.equal(t.pending, 0);
});

test('an error in an extended batch fails the message, cancels the rest until Sync, and blames the Execute of a failed Parse', () => {
  const { t, outcomes } = tracker();
  t.expect('parse'); // fails upstream
  t.expect('bind');
  t.expect('execute', command(1));
  t.expect('execute', command(2));
  t.sync();
  feed(t, error('42P01', 'relation "nope" does not exist'));
  assert.deepEqual(outcomes, [
    [1, { status: 'error', code: '42P01', message: 'relation "nope" does not exist', rows: 0 }],
    [2, { status: 'cancelled', rows: 0 }],
  ]);
  assert.equal(t.discardingUntilSync, false, 'the Sync was already queued');
  feed(t, ready('I'));
  assert.equal(t.pending, 0);
});

test('an extended error before the client sent Sync: messages are discarded until the Sync arrives', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1), ourDenial);
  const [sent] = feed(t, error('34000', 'portal "chaperone\u0001denied" does not exist'));
  assert.equal(sent, ourDenial.frame);
  assert.deepEqual(outcomes, [[1, { status: 'denied', code: '42501' }]]);
  assert.equal(t.discardingUntilSync, true);
  t.sync();
  assert.equal(t.discardingUntilSync, false);
  feed(t, ready('I'));
  assert.equal(t.pending, 0);
});

test('behind our refusal until the Sync: skipped commands are the caller’s, their undos run at the Sync', () => {
  const { t, outcomes } = tracker();
  t.expect('parse', command(1), ourDenial);
  assert.equal(t.refusedUntilSync, true, 'known as the substitute is sent, before the upstream answers');
  const undone: string[] = [];
  t.skippedBehindRefusal(() => undone.push('parse s2'));
  t.skippedBehindRefusal(() => undone.push('bind p2'));
  feed(t, error('42601', 'syntax error at or near "CHAPERONE_DENIED"'));
  assert.equal(t.refusedUntilSync, true, 'still skipping after the upstream’s error, up to the Sync');
  assert.deepEqual(undone, [], 'what the skipped messages named counts until the Sync');
  t.sync();
  assert.deepEqual(undone, ['bind p2', 'parse s2'], 'taken back in reverse order');
  assert.equal(t.refusedUntilSync, false);
  feed(t, ready('I'));
  assert.deepEqual(outcomes, [[1, { status: 'denied', code: '42501' }]]);
  assert.equal(t.pending, 0);
});

test('an upstream error is not a refusal: nothing behind it is decided', () => {
  const { t } = tracker();
  t.expect('execute', command(1));
  feed(t, error('22012', 'division by zero'));
  assert.equal(t.discardingUntilSync, true);
  assert.equal(t.refusedUntilSync, false);
});

test('an error at Sync (the implicit commit: a deferred constraint) is the Sync’s, scrubbed by the committed commands’ rewriters', () => {
  const { t, outcomes } = tracker();
  const scrubbed = Buffer.from('withheld');
  const rewriter: ResultRewriter = {
    rowDescription: (frame) => frame,
    dataRows: (frame) => frame,
    statementEnd: () => undefined,
    error: () => scrubbed,
    notice: () => Buffer.alloc(0),
    counts: () => [],
  };
  t.expect('parse');
  t.expect('bind');
  t.expect('execute', command(1), undefined, rewriter);
  t.sync();
  feed(t, parseComplete, bindComplete, complete('UPDATE 1'));
  assert.equal(outcomes.length, 0, 'not committed yet');
  const [sent] = feed(t, error('23503', 'Key (id, email)=(101, alice@example.com) is not present'));
  assert.equal(sent, scrubbed, 'the commit’s error echoes what the Execute wrote');
  assert.equal(t.discardingUntilSync, false, 'nothing after the Sync is skipped');
  feed(t, ready('I'));
  assert.equal(t.pending, 0);
  const rolledBack = {
    status: 'error',
    code: '23503',
    message: 'rolled back: the transaction failed with 23503',
    rows: 1,
  };
  assert.deepEqual(outcomes, [[1, rolledBack]], 'the commit failed: the UPDATE did not happen, and no value is echoed');
  // The next batch is tracked as before, and its commit error (no rewriter since) passes unchanged.
  t.expect('execute', command(2));
  t.sync();
  const upstream = error('40001', 'could not serialize access');
  feed(t, complete('UPDATE 1'));
  assert.equal(feed(t, upstream)[0], upstream);
  feed(t, ready('I'));
  assert.equal(t.pending, 0);
  const serialization = { status: 'error', code: '40001', message: 'rolled back: the transaction failed with 40001' };
  assert.deepEqual(outcomes.at(-1), [2, { ...serialization, rows: 1 }]);
});

test('an error later in an extended batch rolls back the implicit transaction: earlier Executes did not happen', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1));
  t.expect('execute', command(2)); // fails
  t.expect('execute', command(3)); // skipped
  t.sync();
  feed(t, complete('INSERT 0 1'), error('23505', 'duplicate key'), ready('I'));
  assert.deepEqual(outcomes, [
    [2, { status: 'error', code: '23505', message: 'duplicate key', rows: 0 }],
    [3, { status: 'cancelled', rows: 0 }],
    [1, { status: 'error', code: '23505', message: 'rolled back: the transaction failed with 23505', rows: 1 }],
  ]);
});

test('a denial later in an extended batch rolls back the earlier Executes with the denial’s code', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1));
  t.expect('execute', command(2), ourDenial);
  t.sync();
  feed(t, complete('INSERT 0 1'), error('34000', 'portal does not exist'), ready('I'));
  assert.deepEqual(outcomes, [
    [2, { status: 'denied', code: '42501' }],
    [1, { status: 'error', code: '42501', message: 'rolled back: the transaction failed with 42501', rows: 1 }],
  ]);
});

test('in an explicit transaction block an error leaves earlier statements to the block: their outcome is success', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1));
  t.expect('execute', command(2));
  t.sync();
  feed(t, complete('INSERT 0 1'), error('23505', 'duplicate key'), ready('E'));
  assert.deepEqual(outcomes.at(-1), [1, { status: 'success', rows: 1 }]);
});

test('an Execute of COMMIT settles the Executes before it; only those after wait for Sync', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1));
  t.expect('execute', command(2)); // COMMIT
  t.expect('execute', command(3));
  t.sync();
  feed(t, complete('INSERT 0 1'), complete('COMMIT'));
  assert.deepEqual(outcomes, [
    [1, { status: 'success', rows: 1 }],
    [2, { status: 'success', rows: 0 }],
  ]);
  feed(t, complete('INSERT 0 1'), error('23503', 'violates foreign key'), ready('I'));
  assert.deepEqual(outcomes.at(-1), [
    3,
    { status: 'error', code: '23503', message: 'rolled back: the transaction failed with 23503', rows: 1 },
  ]);
});

test('the connection ends before Sync: Executes whose transaction never ended are recorded as cancelled', () => {
  const { t, outcomes } = tracker();
  t.expect('execute', command(1));
  feed(t, complete('INSERT 0 1'));
  t.cancelAll();
  assert.deepEqual(outcomes, [[1, { status: 'cancelled', rows: 1 }]]);
});

test('COPY: a Sync sent during copy-in gets no ReadyForQuery and is not waited for', () => {
  const { t, outcomes } = tracker();
  t.expect('parse');
  t.expect('bind');
  t.expect('execute', command(1));
  t.sync(); // libpq's Sync right after an extended COPY FROM STDIN: ignored by PostgreSQL in copy-in
  feed(t, parseComplete, bindComplete, msg('G', i8(0), Buffer.from([0, 0])));
  assert.equal(t.sync(), false, 'still in copy-in: neither forwarded nor queued');
  t.copyEnd();
  assert.equal(t.sync(), true);
  feed(t, complete('COPY 10'), ready('I'));
  assert.deepEqual(outcomes, [[1, { status: 'success', rows: 10 }]]);
  assert.equal(t.pending, 0);
});

test('COPY: a CopyDone that arrives before the upstream entered copy-in drops the Syncs in between', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(1));
  t.copyEnd();
  t.sync();
  feed(t, msg('G', i8(0), Buffer.from([0, 0])), complete('COPY 2'), ready('I'));
  assert.deepEqual(outcomes, [[1, { status: 'success', rows: 2 }]]);
  assert.equal(t.pending, 1, 'the Sync after the CopyDone still waits for its ReadyForQuery');
});

const COPY_IN = msg('G', i8(0), Buffer.from([0, 0]));

test('COPY: the server ends copy-in with its error; a Sync sent afterwards is forwarded and answered', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(1));
  feed(t, COPY_IN);
  t.copyData(); // bad data: the server fails the COPY on it
  feed(t, error('22P02', 'invalid input syntax'), ready('I'));
  assert.equal(t.pending, 0);
  assert.equal(t.sync(), true, 'the server left copy-in: the Sync gets its ReadyForQuery');
  assert.equal(t.pending, 1);
  feed(t, ready('I'));
  assert.equal(t.pending, 0);
  assert.deepEqual(
    outcomes.map(([id, o]) => [id, o.status]),
    [[1, 'error']],
  );
});

test('COPY: a Sync behind CopyData a running COPY may have read is not forwarded, whatever the data does', () => {
  const { t } = tracker();
  t.expect('query', command(1)); // COPY ... FROM STDIN, its CopyInResponse not seen yet
  t.copyData();
  assert.equal(t.sync(), false, 'answered only if the COPY failed on that data: not forwarded');
  t.expect('query', command(2));
  feed(t, COPY_IN, error('22P02', 'invalid input syntax'), ready('I'));
  assert.equal(t.pending, 1, 'the next query still waits for its own response');
  feed(t, complete('SELECT 1'), ready('I'));
  assert.equal(t.pending, 0);
  assert.equal(t.sync(), true, 'nothing from before the CopyData is running any more');
});

test('COPY: CopyData with nothing in flight is dropped by the server and changes nothing', () => {
  const { t } = tracker();
  t.copyData();
  assert.equal(t.sync(), true);
  assert.equal(t.pending, 1);
});

test('cancelAll records every command still waiting as cancelled', () => {
  const { t, outcomes } = tracker();
  t.expect('query', command(1));
  t.expect('execute', command(2));
  t.expect('parse');
  t.cancelAll();
  assert.deepEqual(outcomes, [
    [1, { status: 'cancelled', rows: 0 }],
    [2, { status: 'cancelled', rows: 0 }],
  ]);
  assert.equal(t.pending, 0);
});

test('DataRow interest: a unit with a ResultRewriter sees its own rows and no other unit’s', () => {
  const { t, outcomes } = tracker();
  const row = (v: string): Buffer => msg('D', Buffer.from([0, 1]), Buffer.from([0, 0, 0, v.length]), Buffer.from(v));
  let ends = 0;
  const rewriter: ResultRewriter = {
    rowDescription: (frame) => frame,
    dataRows: (frame) => row(`masked:${frame.length}`),
    statementEnd: () => {
      ends += 1;
    },
    error: (frame) => frame,
    notice: () => Buffer.alloc(0),
    counts: () => [{ column: 'c', rule: 'p/r', strategy: 'redact', count: ends }],
  };
  t.expect('query', command(1));
  t.expect('query', command(2), undefined, rewriter);
  assert.equal(t.wantsDataRows, true);
  const first = row('abc');
  assert.equal(feed(t, first)[0], first, 'the first command has no rewriter: its row passes');
  feed(t, complete('SELECT 1'), ready('I'));
  const [masked] = feed(t, row('secret'));
  assert.deepEqual(masked, row(`masked:${row('secret').length}`));
  feed(t, complete('SELECT 1'), ready('I'));
  assert.equal(t.wantsDataRows, false, 'interest ends with the last rewriting unit');
  assert.equal(ends, 1, 'the rewriter heard its statement end');
  assert.deepEqual(outcomes.at(-1), [
    2,
    { status: 'success', rows: 1, masked: [{ column: 'c', rule: 'p/r', strategy: 'redact', count: 1 }] },
  ]);
});

test('thousands of pipelined units keep order and bounded memory', () => {
  const { t, outcomes } = tracker();
  for (let i = 1; i <= 5000; i++) t.expect('execute', command(i));
  t.sync();
  for (let i = 1; i <= 5000; i++) feed(t, complete('SELECT 1'));
  feed(t, ready('I'));
  assert.equal(outcomes.length, 5000);
  assert.ok(outcomes.every(([id], i) => id === i + 1));
  assert.equal(t.pending, 0);
});

test('onFailure: a message that completes keeps what the gate assumed; one that fails or is skipped takes it back', () => {
  const { t } = tracker();
  const undone: string[] = [];
  const told: (string | undefined)[] = [];
  const note = (name: string) => (error?: { code: string }) => {
    undone.push(name);
    told.push(error?.code);
  };
  // Completed: nothing taken back.
  t.expect('parse');
  t.onFailure(note('ok'));
  t.expect('sync');
  feed(t, parseComplete, ready('I'));
  assert.deepEqual(undone, []);
  // The first Parse fails (42P05), the Bind and Close after it are skipped: all three are taken back, once.
  t.expect('parse');
  t.onFailure(note('parse'));
  t.expect('bind');
  t.onFailure(note('bind'));
  t.expect('close');
  t.onFailure(note('close'));
  t.expect('sync');
  feed(t, error('42P05', 'prepared statement "s" already exists'), ready('I'));
  assert.deepEqual(undone, ['parse', 'bind', 'close']);
  // Only the message that failed on its own is told the server's error (an approved Bind records it).
  assert.deepEqual(told, ['42P05', undefined, undefined]);
  // A simple query with an error (in any of its statements) takes back what it assumed; a successful one does not.
  t.expect('query', command(1));
  t.onFailure(note('query ok'));
  feed(t, complete('PREPARE'), ready('I'));
  t.expect('query', command(2));
  t.onFailure(note('query failed'));
  feed(t, error('22012', 'division by zero'), ready('I'));
  assert.deepEqual(undone, ['parse', 'bind', 'close', 'query failed']);
  // A message that got no response of its own before ReadyForQuery did not complete either.
  t.expect('close');
  t.onFailure(note('no answer'));
  t.expect('sync');
  feed(t, ready('I'));
  assert.deepEqual(undone, ['parse', 'bind', 'close', 'query failed', 'no answer']);
});

test('COPY: a CopyDone or CopyFail sent when no COPY is active gets no answer and takes no statement’s response', () => {
  const { t, outcomes } = tracker();
  let rowsSeen = 0;
  const rewriter: ResultRewriter = {
    rowDescription: (frame) => frame,
    dataRows: (frame) => {
      rowsSeen += 1;
      return frame;
    },
    statementEnd: () => undefined,
    error: (frame) => frame,
    notice: (frame) => frame,
    counts: () => [],
  };
  t.copyEnd(); // stray: the server ignores it
  t.expect('query', command(1), undefined, rewriter);
  t.copyEnd(); // stray again, pipelined after the query
  t.expect('query', command(2), undefined, rewriter);
  assert.equal(t.wantsDataRows, true);
  feed(t, msg('T'), msg('D'), complete('SELECT 1'), ready('I'));
  feed(t, msg('T'), msg('D'), complete('SELECT 1'), ready('I'));
  assert.equal(rowsSeen, 2, 'each query’s rows went through its own rewriter');
  assert.deepEqual(outcomes, [
    [1, { status: 'success', rows: 1 }],
    [2, { status: 'success', rows: 1 }],
  ]);
  assert.equal(t.pending, 0);
});

test('an Execute answered before its Sync (Flush) stays pending for the catalogue until ReadyForQuery', () => {
  const { t } = tracker();
  t.expect('parse');
  t.expect('bind');
  t.expect('execute', command(1));
  assert.equal(t.pendingStatements, 1);
  feed(t, parseComplete, bindComplete, complete('CREATE VIEW'));
  assert.equal(t.pending, 0, 'every response arrived');
  assert.equal(t.pendingStatements, 1, 'the implicit transaction is open until the Sync');
  t.expect('sync');
  feed(t, ready('I'));
  assert.equal(t.pendingStatements, 0);
});

test('a substitute in the extended protocol fails upstream: what follows it is discarded until Sync, at once', () => {
  for (const kind of ['parse', 'bind', 'execute'] as const) {
    const { t, outcomes } = tracker();
    t.expect(kind, command(1), ourDenial);
    // Before the upstream's error arrives: a pipelined Execute behind it is not decided (nor held, nor filed).
    assert.equal(t.discardingUntilSync, true, kind);
    assert.equal(t.sync(), true);
    assert.equal(t.discardingUntilSync, false);
    const out = feed(t, error('22021', 'invalid byte sequence'), ready('I'));
    assert.equal(out[0]?.toString(), 'our denial');
    assert.deepEqual(outcomes, [[1, { status: 'denied', code: '42501' }]]);
  }
  // A simple query's substitute is answered with its own ReadyForQuery: nothing is skipped.
  const { t } = tracker();
  t.expect('query', command(2), ourDenial);
  assert.equal(t.discardingUntilSync, false);
});
