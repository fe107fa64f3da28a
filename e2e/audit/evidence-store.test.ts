// The evidence store (docs/evidence-store.md) on the real harness PostgreSQL and API server: the records
// table is append-only for every role the installer creates, a real sidecar keeps its records there and
// only signed heads in Session objects, and `kubectl chaperone verify` reads the records from the store and
// finds each kind of tampering a database administrator can do (edit, delete, reorder, truncate, remove a
// whole session, insert a forged row) — and a deleted Session object through the pod's chain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { evidencePartitionSql, type Session } from '@chaperone/api';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';
import { customObjects, listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';
import { runCli } from './run-cli.ts';

const INSUFFICIENT_PRIVILEGE = '42501';
const RECORD = {
  session: 's-1',
  // Today, so that it falls into a daily partition the schema created (not the default one).
  time: `${new Date().toISOString().slice(0, 23)}001Z`,
};

async function insertAs(c: pg.Client, seq: number): Promise<void> {
  await c.query(
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
     values ($1, $2, $3, 'session.start', 'sha256:x', 'sha256:y', 'ns', 'ns', 'pod', 'db', '{}')`,
    [RECORD.session, seq, RECORD.time],
  );
}

test('evidence store: records are append-only for the writer, the auditor and the owner', async (t) => {
  const db = createEvidenceDatabase(t);
  const writer = await db.connect(db.writer);
  const auditor = await db.connect(db.auditor);
  await insertAs(writer, 1);
  // A replayed row (same session, seq and time) is a no-op, not an error: the writer retries batches.
  await writer.query(
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
     values ($1, 1, $2, 'session.start', 'sha256:x', 'sha256:y', 'ns', 'ns', 'pod', 'db', '{}') on conflict do nothing`,
    [RECORD.session, RECORD.time],
  );
  for (const sql of [
    'select * from chaperone.audit_records',
    `update chaperone.audit_records set record = '{"forged":true}'`,
    'delete from chaperone.audit_records',
    'truncate chaperone.audit_records',
    `update chaperone.audit_records set record = 'x' where session_id = 's-1' returning *`,
    'create table chaperone.shadow (x int)',
    'alter table chaperone.audit_records disable trigger all',
  ]) {
    await assert.rejects(writer.query(sql), { code: INSUFFICIENT_PRIVILEGE }, `writer: ${sql}`);
  }
  // The writer may count its session's records through the definer function, not read them.
  const counted = await writer.query('select * from chaperone.session_counters($1, 10)', [RECORD.session]);
  assert.equal(counted.rows[0]?.commands, '0');

  const read = await auditor.query('select session_id, seq from chaperone.audit_records');
  assert.deepEqual(read.rows, [{ session_id: 's-1', seq: '1' }]);
  for (const sql of [
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record) values ('s-2', 1, now(), 't', 'h', 'p', 'n', 'n', 'p', 'r', '{}')`,
    `update chaperone.audit_records set record = 'x'`,
    'delete from chaperone.audit_records',
    'truncate chaperone.audit_records',
  ]) {
    await assert.rejects(auditor.query(sql), { code: INSUFFICIENT_PRIVILEGE }, `auditor: ${sql}`);
  }
  // The owner holds every privilege on its table, and the triggers still refuse changes and truncation,
  // through the parent and through a partition.
  const partition = `chaperone.audit_records_${RECORD.time.slice(0, 10).replaceAll('-', '')}`;
  for (const sql of [
    `update chaperone.audit_records set record = 'x'`,
    'delete from chaperone.audit_records',
    'truncate chaperone.audit_records',
    'truncate chaperone.audit_records_default',
    `truncate ${partition}`,
    `delete from ${partition}`,
    `update ${partition} set seq = 2`,
  ]) {
    assert.throws(
      () => db.superuser(`set role ${db.owner};\n${sql};`),
      /chaperone audit records are append-only: (UPDATE|DELETE|TRUNCATE) refused/,
      `owner: ${sql}`,
    );
  }
  assert.equal(db.superuser('select count(*) from chaperone.audit_records').trim(), '1', 'the row is still there');
  // Retention is a whole partition dropped by the owner: a new day gets its partition first.
  db.superuser(`set role ${db.owner};\n${evidencePartitionSql(new Date('2026-12-24T00:00:00Z'))}`);
  db.superuser(`set role ${db.owner};\ndrop table chaperone.audit_records_20261224;`);
});

test('evidence store: a sidecar keeps records in the store, Sessions keep signed heads, verify detects tampering in the store', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { evidenceStore: { ...db.sidecarConfig, batchRecords: 100 } },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:evidence' }, { expiresIn: 3600 });
  // One long session (600 statements: more records than a Session object could hold) and eight short ones.
  const session = async (statements: number, tag: string) => {
    const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
    await c.connect();
    for (let i = 0; i < statements; i++) await c.query(`select ${String(i)} as n, '${tag}' as tag`);
    await c.end();
  };
  await session(600, 'long');
  const tags = ['clean', 'edited', 'deleted', 'reordered', 'truncated', 'removed', 'forged', 'identity'];
  for (const tag of tags) await session(5, tag);

  const sessions = await waitFor('every session Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 9 && list.every((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  for (const s of sessions) {
    assert.deepEqual(s.spec.records, [], 'the Session object keeps no records');
    assert.deepEqual(s.spec.store, { type: 'postgres', location: db.location });
    assert.equal(s.spec.part, 0, 'one object per session, however long');
  }
  // What the store holds is exactly what the sidecar wrote, each record once, signed by the heads.
  const filled = await db.withRecords(sessions);
  const verified = await verifySessions(filled, namespace);
  const stored = verified.flatMap((v) => v.records);
  const written = (await sidecar.settledRecords()).map((l) => l.record);
  assert.equal(stored.length, written.length);
  // Record format version 3: the identity and the session once, on session.start; the chain binds every
  // later record to it.
  for (const r of stored) {
    assert.equal(r.v, 3);
    assert.equal(r.identity !== undefined, r.type === 'session.start', `seq ${String(r.seq)} ${r.type}`);
    assert.equal(r.session !== undefined, r.type === 'session.start', `seq ${String(r.seq)} ${r.type}`);
  }
  assert.deepEqual(
    new Set(stored.map((r) => r.hash)),
    new Set(written.map((r) => r.hash)),
    'the store holds exactly the records the sidecar wrote',
  );
  assert.equal(verified.find((v) => v.records.length > 1000)?.records.length, 2 * 600 + 2);
  for (const v of verified) {
    assert.equal(v.parts[0]?.status?.counters.commands, v.records.filter((r) => r.type === 'command.decision').length);
  }
  assert.ok(!sidecar.logs().includes(db.writer.password), 'the store password is never logged');

  const verify = (...args: string[]) =>
    runCli(['verify', '-n', namespace, '--evidence-store', db.auditorUrl, ...args], {
      KUBECONFIG: kubeconfig,
      PGPASSWORD: db.auditor.password,
    });
  const all = await verify('--all');
  assert.equal(all.code, 0, all.stdout + all.stderr);
  assert.match(all.stdout, /9 session\(s\)/);
  // Without the store the verifier says where the records are instead of passing or guessing.
  const without = await runCli(['verify', '-n', namespace, '--all'], { KUBECONFIG: kubeconfig });
  assert.equal(without.code, 1);
  assert.match(
    without.stderr,
    /9 Session\(s\) keep their records in an evidence store \(postgres localhost:\d+\/evidence_\w+\): pass --evidence-store URL/,
  );

  // Tamper as a database superuser (row triggers off for this session only).
  const byTag = new Map<string, Session>();
  for (const v of verified) {
    const decision = v.records.find((r) => r.type === 'command.decision');
    const tag = /'(\w+)' as tag/.exec(decision?.command?.text ?? '')?.[1] ?? '';
    const part = v.parts[0];
    if (part !== undefined) byTag.set(tag, part);
  }
  const id = (tag: string) => byTag.get(tag)?.spec.sessionId ?? '';
  const tamper = (sql: string) => db.superuser(`set session_replication_role = replica;\n${sql}`);
  tamper(
    `update chaperone.audit_records set record = replace(record, '''edited'' as tag', '''benign'' as tag') where session_id = '${id('edited')}' and seq = 4`,
  );
  tamper(`delete from chaperone.audit_records where session_id = '${id('deleted')}' and seq = 5`);
  tamper(
    `update chaperone.audit_records a set record = b.record from chaperone.audit_records b
       where a.session_id = '${id('reordered')}' and b.session_id = a.session_id and ((a.seq = 4 and b.seq = 6) or (a.seq = 6 and b.seq = 4))`,
  );
  tamper(`delete from chaperone.audit_records where session_id = '${id('truncated')}' and seq > 8`);
  tamper(`delete from chaperone.audit_records where session_id = '${id('removed')}'`);
  // The identity the whole session was recorded under, on its session.start row, changed to someone else's.
  tamper(
    `update chaperone.audit_records set record = replace(record, 'system:serviceaccount:ci:evidence', 'system:serviceaccount:ci:someone-else') where session_id = '${id('identity')}' and seq = 1`,
  );
  // The writer role can add rows (that is its job): a forged record at a seq already taken.
  const writer = await db.connect(db.writer);
  const victim = filled.find((s) => s.spec.sessionId === id('forged'))?.spec.records[3];
  assert.ok(victim !== undefined);
  const forged = {
    ...victim,
    command: { ...victim.command, text: 'select 1' },
    time: `${new Date().toISOString().slice(0, 11)}00:00:00.000001Z`,
  };
  await writer.query(
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
     values ($1, $2, $3, $4, $5, $6, $7, $7, 'p', 'r', $8)`,
    [
      id('forged'),
      forged.seq,
      forged.time,
      forged.type,
      forged.hash,
      forged.prevHash,
      namespace,
      JSON.stringify(forged),
    ],
  );

  const kinds = async (tag: string) => {
    const r = await verify(byTag.get(tag)?.metadata.name ?? '', '-o', 'json');
    assert.equal(r.code, tag === 'clean' ? 0 : 1, `${tag}: ${r.stdout}${r.stderr}`);
    return (JSON.parse(r.stdout) as { problems: { kind: string; seq?: number }[] }).problems.map(
      (p) => `${p.kind}@${String(p.seq)}`,
    );
  };
  assert.deepEqual(await kinds('clean'), []);
  assert.ok((await kinds('edited')).includes('hash-mismatch@4'));
  const deleted = await kinds('deleted');
  assert.ok(deleted.includes('seq-gap@6') && deleted.includes('broken-link@6'), deleted.join(', '));
  assert.ok((await kinds('reordered')).includes('seq-order@5'));
  assert.ok((await kinds('truncated')).some((k) => k.startsWith('head-mismatch@')));
  assert.ok((await kinds('removed')).some((k) => k.startsWith('head-mismatch@')));
  assert.ok((await kinds('forged')).some((k) => k.startsWith('seq-order@') || k.startsWith('hash-mismatch@')));
  const identity = await kinds('identity');
  assert.ok(identity.includes('hash-mismatch@1'), identity.join(', '));
  assert.ok(identity.includes('metadata-mismatch@1'), 'spec.identity no longer matches session.start');

  // A whole Session object deleted (its records still in the store): the pod's chain names it.
  const victimObject = byTag.get('clean')?.metadata.name ?? '';
  await customObjects(kubeconfig).deleteNamespacedCustomObject({
    group: 'chaperone.dev',
    version: 'v1alpha1',
    namespace,
    plural: 'sessions',
    name: victimObject,
  });
  const afterDelete = await verify('--all', '-o', 'json');
  assert.equal(afterDelete.code, 1);
  assert.ok(
    (JSON.parse(afterDelete.stdout) as { problems: { kind: string }[] }).problems.some(
      (p) => p.kind === 'session-missing',
    ),
  );
});
