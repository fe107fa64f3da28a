// AgentSession on its own: a fixed decider, sinks the test controls. Where records are written (at once or
// right after the engine's step), in which order, and what a refused record means per failure mode.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decisionBundleDigests, verifyChain, type AuditRecord, type CombinedDecision } from '@chaperone/api';
import { AgentSession } from './agent-session.ts';
import { AuditUnavailable, type AuditSink, type RecordOrigin } from './audit/audit-sink.ts';
import { PodChain } from './audit/pod-chain.ts';
import type { CommandDescription } from './command.ts';
import { createSidecarMetrics } from './observability/metrics.ts';

class ListSink implements AuditSink {
  readonly records: AuditRecord[] = [];
  refuse: AuditUnavailable | undefined;
  readonly deferrable: boolean;
  constructor(deferrable: boolean) {
    this.deferrable = deferrable;
  }
  write(_origin: RecordOrigin, record: AuditRecord): void {
    if (this.refuse !== undefined) throw this.refuse;
    this.records.push(record);
  }
  whenDurable(): undefined {
    return undefined;
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const ALLOW: CombinedDecision = {
  decision: 'allow',
  policy: 'p',
  rule: 'r',
  bundleDigest: '',
  reasons: [],
  masking: [],
};
const SELECT: CommandDescription = {
  command: {
    type: 'sql',
    statements: [{ kind: 'select', relations: ['public.t'], functions: [], sideEffects: false }],
  },
  fingerprint: 'select|public.t||0;',
  text: 'SELECT * FROM t',
};

function session(sink: ListSink, mode: 'FailClosed' | 'FailOpen' = 'FailClosed'): AgentSession {
  return new AgentSession({
    policy: { decide: () => ALLOW },
    sink,
    podChain: PodChain.inMemory({ namespace: 'ns', name: 'pod' }),
    metrics: createSidecarMetrics({ defaultMetrics: false }),
    listener: 'db',
    resource: { name: 'db', namespace: 'ns', type: 'postgres', labels: {} },
    pod: { name: 'pod', namespace: 'ns' },
    identity: { subject: 'agent', issuer: 'https://issuer' },
    source: { address: '127.0.0.1:1', applicationName: 'a', user: 'u', database: 'd' },
    auditFailureMode: mode,
  });
}

const afterStep = (): Promise<void> => new Promise((resolve) => queueMicrotask(resolve));

test('with a deferrable sink the decision is cleared at once and waits for its outcome: one record for both', async () => {
  const sink = new ListSink(true);
  const s = session(sink);
  assert.deepEqual(
    sink.records.map((r) => r.type),
    ['session.start'],
  );
  const command = s.decide(SELECT, { inTransaction: false });
  assert.equal(command.audit.state, 'clear');
  await afterStep();
  assert.equal(sink.records.length, 1, 'the decision waits for its outcome');
  s.complete(command, 'sql', { status: 'success', rows: 1 });
  assert.equal(sink.records.length, 1, 'not yet: the engine has not handed its bytes on');
  await afterStep();
  assert.deepEqual(
    sink.records.map((r) => [r.type, r.command?.id, r.decision?.result, r.outcome?.status, r.outcome?.rows]),
    [
      ['session.start', undefined, undefined, undefined, undefined],
      ['command.decision', 1, 'allow', 'success', 1],
    ],
  );
  const [start, merged] = sink.records;
  assert.ok(start !== undefined && merged !== undefined);
  assert.equal(merged.command?.text, 'SELECT * FROM t', 'the decision record as it was');
  assert.equal(merged.seq, 2);
  assert.deepEqual(verifyChain(sink.records, start.prevHash), []);
});

test('records keep their order and one chain whether written at once or after the step', async () => {
  for (const deferrable of [true, false]) {
    const sink = new ListSink(deferrable);
    const s = session(sink);
    const first = s.decide(SELECT, { inTransaction: false });
    s.complete(first, 'sql', { status: 'success', rows: 1 });
    const second = s.decide(SELECT, { inTransaction: true });
    s.complete(second, 'sql', { status: 'error', code: '23505', message: 'duplicate key' });
    // Pipelined: the third is decided before the fourth's decision, its outcome after it.
    const third = s.decide(SELECT, { inTransaction: false });
    const fourth = s.decide(SELECT, { inTransaction: false });
    s.complete(third, 'sql', { status: 'success', rows: 0 });
    s.complete(fourth, 'sql', { status: 'success', rows: 0 });
    s.end('client disconnected'); // written at once, after everything queued before it
    const shape = sink.records.map((r) => [r.type, r.command?.id, r.outcome?.status]);
    assert.deepEqual(
      shape,
      deferrable
        ? [
            ['session.start', undefined, undefined],
            ['command.decision', 1, 'success'],
            ['command.decision', 2, 'error'],
            ['command.decision', 3, undefined], // another record came before its outcome: written alone
            ['command.decision', 4, undefined], // its outcome came after the third's: not held any more
            ['command.outcome', 3, 'success'],
            ['command.outcome', 4, 'success'],
            ['session.end', undefined, 'success'],
          ]
        : [
            ['session.start', undefined, undefined],
            ['command.decision', 1, undefined],
            ['command.outcome', 1, 'success'],
            ['command.decision', 2, undefined],
            ['command.outcome', 2, 'error'],
            ['command.decision', 3, undefined],
            ['command.decision', 4, undefined],
            ['command.outcome', 3, 'success'],
            ['command.outcome', 4, 'success'],
            ['session.end', undefined, 'success'],
          ],
      `deferrable ${String(deferrable)}`,
    );
    assert.deepEqual(verifyChain(sink.records, sink.records[0]?.prevHash), []);
    const times = sink.records.map((r) => r.time);
    assert.deepEqual(times, [...times].sort(), 'times never go backwards');
    await afterStep();
    assert.equal(sink.records.length, shape.length, 'nothing written twice');
  }
});

test('a held decision whose outcome does not come is written alone, and the outcome later on its own', async () => {
  const sink = new ListSink(true);
  const s = session(sink);
  const command = s.decide(SELECT, { inTransaction: false });
  const until = Date.now() + 10_000;
  while (sink.records.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(
    sink.records.map((r) => [r.type, r.outcome?.status]),
    [
      ['session.start', undefined],
      ['command.decision', undefined],
    ],
  );
  s.complete(command, 'sql', { status: 'cancelled', code: '57014' });
  await afterStep();
  assert.deepEqual(
    sink.records.slice(2).map((r) => [r.type, r.command?.id, r.outcome?.code]),
    [['command.outcome', 1, '57014']],
  );
  assert.deepEqual(verifyChain(sink.records, sink.records[0]?.prevHash), []);
});

test('FailClosed: a refused session.start refuses the session; a refused decision refuses the command', () => {
  const sink = new ListSink(false);
  sink.refuse = new AuditUnavailable('spool-full', 'full');
  assert.throws(() => session(sink), AuditUnavailable);
  sink.refuse = undefined;
  const s = session(sink);
  sink.refuse = new AuditUnavailable('spool-full', 'full');
  const command = s.decide(SELECT, { inTransaction: false });
  assert.equal(command.audit.state, 'refused');
  assert.equal(command.recorded, false);
  sink.refuse = undefined;
  s.complete(command, 'sql', { status: 'denied', code: '53100' });
  s.end('done');
  assert.deepEqual(
    sink.records.map((r) => r.type),
    ['session.start', 'session.end'],
    'no outcome for a command without its decision record',
  );
});

test('FailOpen: a refused decision is lost and the command goes ahead; the gap is recorded before the next record', () => {
  const sink = new ListSink(false);
  const s = session(sink, 'FailOpen');
  sink.refuse = new AuditUnavailable('disk-error', 'EIO');
  const command = s.decide(SELECT, { inTransaction: false });
  assert.equal(command.audit.state, 'clear');
  assert.equal(s.lostRecords, 1);
  sink.refuse = undefined;
  s.end('done');
  assert.deepEqual(
    sink.records.map((r) => r.type),
    ['session.start', 'audit.gap', 'session.end'],
  );
  assert.equal(sink.records[1]?.gap?.lostRecords, 1);
});

test('session.end says how the session ended: in order by default, or the error that ended it', () => {
  const sink = new ListSink(false);
  session(sink).end('client terminated the session');
  const broken = session(sink);
  broken.end('chaperone: protocol violation: bad frame', { status: 'error', code: '08P01' });
  broken.end('closed again', { status: 'success' }); // once only
  session(sink).end('chaperone: the server turned standard_conforming_strings off', {
    status: 'denied',
    code: '0A000',
  });
  assert.deepEqual(
    sink.records.filter((r) => r.type === 'session.end').map((r) => r.outcome),
    [
      { message: 'client terminated the session', status: 'success' },
      { code: '08P01', message: 'chaperone: protocol violation: bad frame', status: 'error' },
      { code: '0A000', message: 'chaperone: the server turned standard_conforming_strings off', status: 'denied' },
    ],
  );
});

test("a policy's bundle digest is named by its first decision in the session and again when it changes", () => {
  const sink = new ListSink(false);
  const digest = (c: string): string => `sha256:${c.repeat(64)}`;
  let current: CombinedDecision = { ...ALLOW, policy: 'ns/a', bundleDigest: digest('a') };
  const s = new AgentSession({
    policy: { decide: () => current },
    sink,
    podChain: PodChain.inMemory({ namespace: 'ns', name: 'pod' }),
    metrics: createSidecarMetrics({ defaultMetrics: false }),
    listener: 'db',
    resource: { name: 'db', namespace: 'ns', type: 'postgres', labels: {} },
    pod: { name: 'pod', namespace: 'ns' },
    identity: { subject: 'agent', issuer: 'https://issuer' },
    source: { address: '127.0.0.1:1', applicationName: 'a', user: 'u', database: 'd' },
    auditFailureMode: 'FailClosed',
  });
  const decideOne = (): void => {
    s.decide(SELECT, { inTransaction: false });
  };
  decideOne(); // ns/a under a: named
  decideOne(); // the same: left out
  current = { ...ALLOW, policy: 'ns/b', bundleDigest: digest('b') };
  decideOne(); // another policy: named
  current = { ...ALLOW, policy: 'ns/a', bundleDigest: digest('a') };
  decideOne(); // ns/a still under a: left out
  current = { ...ALLOW, policy: 'ns/a', bundleDigest: digest('c') };
  decideOne(); // reloaded: named
  sink.refuse = new AuditUnavailable('spool-full', 'full');
  decideOne(); // refused, not written
  sink.refuse = undefined;
  decideOne(); // after a refused record: named again
  assert.deepEqual(
    sink.records
      .filter((r) => r.type === 'command.decision')
      .map((r) => [r.decision?.policy, r.decision?.bundleDigest]),
    [
      ['ns/a', digest('a')],
      ['ns/a', undefined],
      ['ns/b', digest('b')],
      ['ns/a', undefined],
      ['ns/a', digest('c')],
      ['ns/a', digest('c')],
    ],
  );
  // What a reader resolves: the digest each decision was made under.
  assert.deepEqual(
    decisionBundleDigests(sink.records).filter((d) => d !== undefined),
    [digest('a'), digest('a'), digest('b'), digest('a'), digest('c'), digest('c')],
  );
});
