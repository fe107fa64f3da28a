// The statement gate on its own: the real SQL analyzer, a real AgentSession writing into an in-memory sink,
// and a fixed policy decider (the policy engine has tests of its own). No sockets.
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuditRecord, CombinedDecision, Decision, Identity, SqlCommand } from '@chaperone/api';
import { AgentSession, type PolicyDecider } from '../../core/agent-session.ts';
import { AuditUnavailable, MemorySink, type AuditSink, type RecordOrigin } from '../../core/audit/audit-sink.ts';
import { PodChain } from '../../core/audit/pod-chain.ts';
import { silentLogger } from '../../core/observability/logger.ts';
import { createSidecarMetrics } from '../../core/observability/metrics.ts';
import type { PolicyRequest } from '../../core/policy/policy-engine.ts';
import { loadSqlParser } from './analysis/analyze-sql.ts';
import { createSqlAnalyzer } from './analysis/sql-analyzer.ts';
import type { SessionPins } from './analysis/session-state.ts';
import { StatementGate, substituteFrame, type GateVerdict, type SettledVerdict } from './statement-gate.ts';
import type { TransactionStatus } from './protocol/backend-messages.ts';
import type { Bind } from './protocol/frontend-messages.ts';

before(async () => {
  await loadSqlParser();
});

const IDENTITY: Identity = {
  subject: 'system:serviceaccount:ci:agent',
  issuer: 'https://issuer',
  tokenHash: 'sha256:00',
};

/** Allows reads and SETs; denies other side effects and anything touching public.secret; approval on public.approve_me. */
class FixedDecider implements PolicyDecider {
  readonly requests: PolicyRequest[] = [];
  decide(request: PolicyRequest): CombinedDecision {
    this.requests.push(request);
    const statements = (request.command as SqlCommand).statements;
    const relations = statements.flatMap((s) => s.relations);
    let decision: Decision = 'allow';
    let rule = 'reads';
    if (relations.includes('public.approve_me')) [decision, rule] = ['approve', 'needs-approval'];
    if (statements.some((s) => s.sideEffects && s.kind !== 'set') || relations.includes('public.secret'))
      [decision, rule] = ['deny', 'no-writes'];
    return { decision, policy: 'team/read-only', rule, bundleDigest: 'sha256:abc', reasons: [], masking: [] };
  }
}

/** A sink the test controls: it can refuse writes, and with `groupCommit` every write waits for settle(). */
class TestSink implements AuditSink {
  readonly deferrable = false;
  readonly records: { session: RecordOrigin; record: AuditRecord }[] = [];
  refuse: AuditUnavailable | undefined;
  private readonly groupCommit: boolean;
  private pending: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } | undefined;
  constructor(groupCommit = false) {
    this.groupCommit = groupCommit;
  }
  write(session: RecordOrigin, record: AuditRecord): void {
    if (this.refuse !== undefined) throw this.refuse;
    this.records.push({ session, record });
  }
  whenDurable(): Promise<void> | undefined {
    if (!this.groupCommit) return undefined;
    // One commit for everything written since the last one settled, as the spool does.
    this.pending ??= Promise.withResolvers();
    return this.pending.promise;
  }
  settle(err?: unknown): void {
    if (err === undefined) this.pending?.resolve();
    else this.pending?.reject(err);
    this.pending = undefined;
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function setup(options: { sink?: MemorySink | TestSink; failOpen?: boolean; pins?: SessionPins } = {}) {
  const sink = options.sink ?? new MemorySink();
  const policy = new FixedDecider();
  const upstream: { transactionStatus: TransactionStatus; pendingStatements: number } = {
    transactionStatus: 'I',
    pendingStatements: 0,
  };
  const session = new AgentSession({
    policy,
    sink,
    podChain: PodChain.inMemory({ namespace: 'ns', name: 'pod' }),
    metrics: createSidecarMetrics({ defaultMetrics: false }),
    listener: 'orders-db',
    resource: { name: 'orders-db', namespace: 'ns', type: 'postgres', labels: {} },
    pod: { name: 'pod', namespace: 'ns' },
    identity: IDENTITY,
    source: { address: '127.0.0.1:1', applicationName: 'test', user: 'u', database: 'd' },
    auditFailureMode: options.failOpen === true ? 'FailOpen' : 'FailClosed',
  });
  const gate = new StatementGate({
    analyzer: createSqlAnalyzer(),
    session,
    upstream,
    logger: silentLogger,
    pins: options.pins ?? { schema: 'public', readOnly: false },
  });
  return { gate, session, policy, upstream, sink };
}

/** The records written. */
function records(sink: MemorySink | TestSink): AuditRecord[] {
  return sink.records.map((r) => r.record);
}

/** ErrorResponse fields by code letter, read the simple way. */
function errorFields(frame: Buffer | undefined): Record<string, string> {
  assert.ok(frame !== undefined);
  assert.equal(String.fromCharCode(frame[0] as number), 'E');
  const fields: Record<string, string> = {};
  let at = 5;
  while (frame[at] !== 0) {
    const end = frame.indexOf(0, at + 1);
    fields[String.fromCharCode(frame[at] as number)] = frame.subarray(at + 1, end).toString('utf8');
    at = end + 1;
  }
  return fields;
}

function settled(verdict: GateVerdict): SettledVerdict {
  assert.notEqual(verdict.action, 'hold');
  return verdict as SettledVerdict;
}

function held(verdict: GateVerdict): Promise<SettledVerdict> {
  if (verdict.action !== 'hold') assert.fail(`expected a hold, got ${verdict.action}`);
  return verdict.until;
}

function bind(portal: string, statement: string, ...params: (string | null)[]): Bind {
  return {
    type: 'Bind',
    frame: Buffer.alloc(0),
    portal,
    statement,
    paramFormats: [],
    params: params.map((p) => (p === null ? null : Buffer.from(p))),
    resultFormats: [],
  };
}

test('an allowed query is forwarded with its recorded decision', () => {
  const { gate, sink } = setup();
  const v = settled(gate.query('SELECT * FROM orders WHERE id = 1'));
  assert.equal(v.action, 'forward');
  assert.equal(v.command?.decision.decision, 'allow');
  assert.equal(v.command.recorded, true);
  const [decision] = records(sink).filter((r) => r.type === 'command.decision');
  assert.ok(decision?.command !== undefined);
  assert.equal(decision.command.text, 'SELECT * FROM orders WHERE id = 1');
  assert.deepEqual(decision.command.relations, ['public.orders']);
  assert.equal(decision.decision?.result, 'allow');
});

test('a denied query is substituted, with a 42501 denial naming the policy, rule and bundle', () => {
  const { gate, sink } = setup();
  const v = settled(gate.query('DELETE FROM orders'));
  assert.equal(v.action, 'substitute');
  assert.equal(v.command?.decision.decision, 'deny');
  const f = errorFields(v.denial?.frame);
  assert.equal(f.S, 'ERROR');
  assert.equal(f.C, '42501');
  assert.match(f.M ?? '', /^chaperone: permission denied by policy team\/read-only, rule no-writes/);
  assert.equal(f.D, 'policy bundle sha256:abc');
  assert.equal(
    records(sink)
      .filter((r) => r.type === 'command.decision')
      .at(-1)?.decision?.result,
    'deny',
  );
});

test('a whole string is refused when one of its statements is: the read next to a write does not run', () => {
  const { gate } = setup();
  assert.equal(settled(gate.query('SELECT 1; DELETE FROM orders')).action, 'substitute');
});

test('an approve rule denies with ApprovalRequired while approvals are not enabled', () => {
  const { gate } = setup();
  const v = settled(gate.query('SELECT * FROM approve_me'));
  assert.equal(v.action, 'substitute');
  assert.match(errorFields(v.denial?.frame).M ?? '', /requires approval .*rule needs-approval/);
});

test('text the parser cannot read is refused with 42601 and its position, recorded as kind other', () => {
  const { gate, sink } = setup();
  const v = settled(gate.query('SELEC * FROM orders'));
  assert.equal(v.action, 'substitute');
  const f = errorFields(v.denial?.frame);
  assert.equal(f.C, '42601');
  assert.equal(f.P, '1');
  assert.deepEqual(records(sink).at(-1)?.command?.statementKinds, ['other']);
});

test('changing a parser-sensitive setting is refused before policy, and recorded as the sidecar’s deny', () => {
  const { gate, policy, sink } = setup();
  const v = settled(gate.query('SET standard_conforming_strings = off'));
  assert.equal(v.action, 'substitute');
  assert.equal(v.denial?.code, '42501');
  assert.match(errorFields(v.denial.frame).M ?? '', /changing standard_conforming_strings is not allowed/);
  assert.equal(policy.requests.length, 0, 'policy is not asked about a command it did not decide');
  const decision = records(sink).at(-1)?.decision;
  assert.equal(decision?.result, 'deny');
  assert.equal(decision.policy ?? '', '', 'no policy decided it');
  assert.equal(decision.rule, 'setting-refused');
  assert.match(decision.reasons?.[0] ?? '', /changing standard_conforming_strings is not allowed/);
});

test('a read-only session refuses every way of lifting the guard, and allows the ways of keeping it', () => {
  const { gate } = setup({ pins: { schema: 'public', readOnly: true } });
  for (const sql of [
    'SET default_transaction_read_only = off',
    'SET SESSION default_transaction_read_only TO false',
    'SET LOCAL transaction_read_only = off',
    "SET session_replication_role = 'replica'",
    'BEGIN READ WRITE',
    'START TRANSACTION READ ONLY, READ WRITE',
    'SET TRANSACTION READ WRITE',
    'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
    'SELECT 1; SET default_transaction_read_only = 0',
  ]) {
    const v = settled(gate.query(sql));
    assert.equal(v.action, 'substitute', sql);
    assert.equal(v.denial?.code, '42501', sql);
    assert.match(errorFields(v.denial.frame).M ?? '', /^chaperone: this session is read-only/, sql);
  }
  for (const sql of [
    'SET default_transaction_read_only = on',
    'RESET default_transaction_read_only',
    'BEGIN READ ONLY',
  ]) {
    assert.equal(settled(gate.query(sql)).action, 'forward', sql);
  }
  // The same statements in a session that may write are up to the policy.
  const writer = setup().gate;
  assert.equal(settled(writer.query('SET default_transaction_read_only = off')).action, 'forward');
});

test('an empty query is forwarded without a decision', () => {
  const { gate, policy } = setup();
  const v = settled(gate.query(' ; '));
  assert.deepEqual(v, { action: 'forward', command: undefined });
  assert.equal(policy.requests.length, 0);
});

test('Parse: allowed statements are prepared unrecorded and decided at every Execute with their parameters', () => {
  const { gate, sink, policy } = setup();
  const parsed = gate.parse('s1', 'SELECT * FROM orders WHERE id = $1');
  assert.equal(parsed.action, 'forward');
  assert.equal(parsed.command, undefined);
  assert.equal(records(sink).filter((r) => r.type === 'command.decision').length, 0);
  gate.bind(bind('', 's1', '42'));
  const first = settled(gate.execute(''));
  gate.bind(bind('', 's1', null));
  const second = settled(gate.execute(''));
  assert.equal(first.action, 'forward');
  assert.equal(second.action, 'forward');
  const decisions = records(sink).filter((r) => r.type === 'command.decision');
  assert.deepEqual(
    decisions.map((r) => r.command?.parameters),
    [['42'], ['NULL']],
  );
  assert.equal(policy.requests.length, 3, 'decided at Parse and at each Execute');
});

test('Parse typing a parameter by a user type’s OID is side-effecting (its input function and domain CHECK run); built-in types are not', () => {
  const { gate, policy } = setup();
  assert.equal(gate.parse('builtin', 'SELECT $1', [23, 0, 25]).action, 'forward');
  assert.equal(policy.requests.at(-1)?.command.type, 'sql');
  const v = gate.parse('domain', 'SELECT $1', [23, 16390]);
  assert.equal(v.action, 'substitute');
  assert.equal(v.denial?.code, '42501');
  const facts = (policy.requests.at(-1)?.command as SqlCommand).statements;
  assert.deepEqual(
    facts.map((f) => f.sideEffects),
    [true],
  );
});

test('Parse of a forbidden statement is substituted and recorded; its Execute is refused and recorded with the same reason', () => {
  const { gate, sink } = setup();
  const v = gate.parse('bad', 'UPDATE orders SET paid = true');
  assert.equal(v.action, 'substitute');
  assert.equal(v.denial?.code, '42501');
  assert.equal(records(sink).filter((r) => r.type === 'command.decision').length, 1);
  gate.bind(bind('p', 'bad'));
  // The upstream may still hold an older statement named "bad": the Execute must fail with our denial
  // (never the upstream's error about the substitute's internal portal name).
  const execute = settled(gate.execute('p'));
  assert.equal(execute.action, 'substitute');
  assert.equal(execute.denial, v.denial);
  assert.equal(execute.command?.recorded, true);
  const decisions = records(sink).filter((r) => r.type === 'command.decision');
  assert.equal(decisions.length, 2);
  assert.equal(decisions[1]?.command?.text, 'UPDATE orders SET paid = true');
  assert.equal(decisions[1].decision?.result, 'deny');
});

test('Execute of a portal the sidecar did not see bound fails closed', () => {
  const { gate } = setup();
  const v = settled(gate.execute('cursor_from_declare'));
  assert.equal(v.action, 'substitute');
  assert.match(errorFields(v.denial?.frame).M ?? '', /portal the sidecar did not see bound/);
  assert.equal(v.command?.recorded, true);
});

test('Close forgets a statement: binding it again finds nothing, so its Execute fails closed', () => {
  const { gate } = setup();
  gate.parse('s', 'SELECT 1');
  gate.close('S', 's');
  gate.bind(bind('p', 's'));
  assert.equal(settled(gate.execute('p')).action, 'substitute');
});

test('a Parse, Close or Bind the upstream refused or skipped: every later use of the name is refused until it is parsed again', () => {
  const { gate } = setup();
  // The upstream refused the second Parse of "s" (42P05: it still holds the first): Bind of "s" is refused.
  gate.parse('s', 'SELECT * FROM orders');
  const again = gate.parse('s', 'SELECT 1');
  assert.ok(again.action === 'forward' && again.undo !== undefined);
  again.undo();
  gate.bind(bind('p', 's'));
  const refused = settled(gate.execute('p'));
  assert.equal(refused.action, 'substitute');
  assert.match(errorFields(refused.denial?.frame).M ?? '', /may not be what the sidecar saw prepared/);
  // SQL EXECUTE of the name too.
  assert.equal(settled(gate.query('EXECUTE s')).action, 'substitute');
  // A Close that completes, then a Parse: the name is known again.
  gate.close('S', 's');
  const fresh = gate.parse('s', 'SELECT 2');
  assert.equal(fresh.action, 'forward');
  gate.bind(bind('p', 's'));
  assert.equal(settled(gate.execute('p')).action, 'forward');
  // A Close the upstream skipped: it may still hold "s".
  gate.close('S', 's')?.();
  gate.bind(bind('p', 's'));
  assert.equal(settled(gate.execute('p')).action, 'substitute');
  // A Bind the upstream refused: the portal is not known (an older one of that name may be open).
  gate.parse('t', 'SELECT 3');
  gate.bind(bind('q', 't'));
  gate.bind(bind('q', 't'))();
  assert.equal(settled(gate.execute('q')).action, 'substitute');
});

test('a SQL PREPARE or DEALLOCATE in a Query that failed leaves the name refused; DECLARE and CLOSE forget the portal of that name', () => {
  const { gate } = setup();
  settled(gate.query('PREPARE a AS SELECT * FROM orders'));
  const failed = settled(gate.query('PREPARE a AS SELECT 1'));
  assert.ok(failed.action === 'forward' && failed.undo !== undefined);
  failed.undo(); // 42P05: the server still holds the first
  assert.equal(settled(gate.query('EXECUTE a')).action, 'substitute');
  gate.bind(bind('p', 'a'));
  assert.equal(settled(gate.execute('p')).action, 'substitute');
  // SQL DEALLOCATE drops a protocol-level statement too.
  gate.parse('b', 'SELECT 1');
  settled(gate.query('DEALLOCATE b'));
  gate.bind(bind('p', 'b'));
  assert.equal(settled(gate.execute('p')).action, 'substitute', 'the sidecar no longer knows "b"');
  // A portal bound by the protocol, then a cursor DECLAREd with its name: the portal is forgotten.
  gate.parse('', 'SELECT 1');
  gate.bind(bind('c', ''));
  settled(gate.query('DECLARE c CURSOR WITH HOLD FOR SELECT * FROM orders'));
  assert.equal(settled(gate.execute('c')).action, 'substitute');
  gate.bind(bind('d', ''));
  settled(gate.query('CLOSE ALL'));
  assert.equal(settled(gate.execute('d')).action, 'substitute');
  // A Query without names to take back has no undo.
  const plain = settled(gate.query('SELECT 1'));
  assert.ok(plain.action === 'forward' && plain.undo === undefined);
});

test('SQL EXECUTE is decided as what PREPARE stored; a Bind may name a SQL-prepared statement too', () => {
  const { gate } = setup();
  assert.equal(
    settled(gate.query('PREPARE w AS DELETE FROM orders')).action,
    'substitute',
    'the PREPARE itself is a write',
  );
  assert.equal(settled(gate.query('PREPARE r AS SELECT * FROM secret')).action, 'substitute');
  assert.equal(settled(gate.query('PREPARE ok AS SELECT * FROM orders')).action, 'forward');
  assert.equal(settled(gate.query('EXECUTE ok')).action, 'forward');
  gate.bind(bind('p', 'ok'));
  assert.equal(settled(gate.execute('p')).action, 'forward');
});

test('relations are qualified with the pinned schema, which a SET cannot change', () => {
  const { gate, sink } = setup({ pins: { schema: 'app', readOnly: false } });
  settled(gate.query('SELECT * FROM t'));
  assert.deepEqual(records(sink).at(-1)?.command?.relations, ['app.t']);
  const set = settled(gate.query('SET search_path = other, public'));
  assert.equal(set.action, 'substitute');
  assert.match(errorFields(set.denial?.frame).M ?? '', /search_path/);
  settled(gate.query('SELECT * FROM t'));
  assert.deepEqual(records(sink).at(-1)?.command?.relations, ['app.t']);
});

test('the policy sees whether a transaction is open, from the upstream status', () => {
  const { gate, policy, upstream } = setup();
  gate.query('SELECT 1');
  upstream.transactionStatus = 'T';
  gate.query('SELECT 1');
  assert.deepEqual(
    policy.requests.map((r) => r.session.inTransaction),
    [false, true],
  );
});

test('the fast-path FunctionCall is always refused, and recorded', () => {
  const { gate, sink } = setup();
  const v = gate.functionCall(764);
  assert.equal(v.action, 'substitute');
  assert.match(errorFields(v.denial?.frame).M ?? '', /fast-path/);
  const decision = records(sink).at(-1);
  assert.equal(decision?.type, 'command.decision');
  assert.equal(decision.command?.text, 'FUNCTION CALL 764');
  assert.equal(decision.decision?.result, 'deny');
});

test('EXECUTE of a harmless PREPARE is decided with its own arguments (they run too)', () => {
  const { gate } = setup();
  assert.equal(settled(gate.query('PREPARE late(int) AS SELECT $1')).action, 'forward');
  assert.equal(settled(gate.query('EXECUTE late(1)')).action, 'forward');
  for (const sql of [
    'EXECUTE late(bump(1))',
    "EXECUTE late(setval('s', 7)::int)",
    'EXECUTE late((SELECT 1 FROM secret))',
  ]) {
    assert.equal(settled(gate.query(sql)).action, 'substitute', sql);
  }
});

test('with a group-committing sink an allowed query is held until its record is durable, then forwarded', async () => {
  const sink = new TestSink(true);
  const { gate } = setup({ sink });
  const v = held(gate.query('SELECT 1'));
  const denied = gate.query('DELETE FROM orders');
  assert.equal(denied.action, 'substitute', 'a denial is not held: nothing runs either way');
  sink.settle();
  assert.equal((await v).action, 'forward');
});

test('FailClosed: a record that cannot be made durable turns the held query into a 53100 denial', async () => {
  const sink = new TestSink(true);
  const { gate } = setup({ sink });
  const v = held(gate.query('SELECT 1'));
  sink.settle(new AuditUnavailable('disk-error', 'fdatasync failed'));
  const after = await v;
  const f = errorFields(after.action === 'substitute' ? after.denial?.frame : undefined);
  assert.equal(f.C, '53100');
  assert.match(f.M ?? '', /audit trail unavailable \(disk error\); resource is fail-closed/);
});

test('FailOpen: the same failed commit lets the held query through', async () => {
  const sink = new TestSink(true);
  const { gate } = setup({ sink, failOpen: true });
  const v = held(gate.query('SELECT 1'));
  sink.settle(new AuditUnavailable('disk-error', 'fdatasync failed'));
  assert.equal((await v).action, 'forward');
});

test('FailClosed: a sink that refuses the record denies at once with 53100, and the command has no trail', () => {
  const sink = new TestSink();
  const { gate } = setup({ sink });
  sink.refuse = new AuditUnavailable('spool-full', 'spool is full');
  const v = settled(gate.query('SELECT 1'));
  assert.equal(v.action, 'substitute');
  assert.equal(v.denial?.code, '53100');
  assert.equal(v.command?.recorded, false);
});

test('FailOpen: a refused record is lost, counted and the query runs; the next record written is the audit.gap', () => {
  const sink = new TestSink();
  const { gate, session } = setup({ sink, failOpen: true });
  sink.refuse = new AuditUnavailable('spool-full', 'spool is full');
  assert.equal(settled(gate.query('SELECT 1')).action, 'forward');
  assert.equal(session.lostRecords, 1);
  sink.refuse = undefined;
  gate.query('SELECT 2');
  const types = records(sink).map((r) => r.type);
  assert.deepEqual(types.slice(-2), ['audit.gap', 'command.decision']);
});

test('substitutes fail upstream: an unknown statement, a portal name that is not UTF-8', () => {
  assert.match(substituteFrame('Query').toString('latin1'), /CHAPERONE_DENIED/);
  assert.match(substituteFrame('Parse', 'stmt').toString('latin1'), /stmt\0CHAPERONE_DENIED/);
  const execute = substituteFrame('Execute');
  // 'E', length 10, the portal name 0xFF (invalid UTF-8: no client can have such a portal), maxRows 0.
  assert.deepEqual([...execute], [0x45, 0, 0, 0, 10, 0xff, 0, 0, 0, 0, 0]);
  assert.equal(execute.readInt32BE(1), execute.length - 1);
});

test('FETCH and MOVE only of cursors DECLAREd through the gate: never of a portal bound by the protocol', () => {
  const { gate } = setup();
  gate.parse('s', 'SELECT * FROM orders');
  gate.bind(bind('p', 's'));
  for (const sql of ['FETCH ALL FROM p', 'MOVE NEXT IN p', 'FETCH 1 FROM never_declared']) {
    const v = settled(gate.query(sql));
    assert.ok(v.action === 'substitute', sql);
    assert.match(errorFields(v.denial?.frame).M ?? '', /not declared/);
  }
  assert.equal(settled(gate.query('DECLARE c CURSOR FOR SELECT * FROM orders; FETCH 1 FROM c')).action, 'forward');
  assert.equal(settled(gate.query('FETCH ALL FROM c')).action, 'forward');
  // A Bind of the cursor's name: FETCH of it would now read a protocol portal.
  gate.bind(bind('c', 's'));
  assert.equal(settled(gate.query('FETCH ALL FROM c')).action, 'substitute');
  settled(gate.query('DECLARE d CURSOR FOR SELECT 1'));
  settled(gate.query('CLOSE d'));
  assert.equal(settled(gate.query('FETCH ALL FROM d')).action, 'substitute');
});

test('the substitute Bind fails as it is read: an invalid portal name no client can bind', () => {
  const frame = substituteFrame('Bind');
  assert.equal(String.fromCharCode(frame[0] as number), 'B');
  assert.equal(frame.readInt32BE(1), frame.length - 1);
  assert.equal(frame[5], 0xff, 'the portal name is the byte 0xFF, invalid UTF-8');
  assert.equal(frame[6], 0);
});
