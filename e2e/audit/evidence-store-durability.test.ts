// The durability tests of the audit trail (docs/audit-durability.md) with records in the evidence store:
// the store goes away and comes back during a session, the API server goes away for 60 s during 5,000
// statements, the sidecar is killed with SIGKILL mid-session and replays its spool, and the spool fills
// while the store is unreachable (FailClosed). Each time: nothing lost, nothing stored twice, the chain
// verifies against the signed heads, and each refused statement is accounted for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { AuditRecord, Session } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { controlPlaneEnv, directPgOptions, postgresEnv, testDir } from '../harness/env.ts';
import { applyCrds, createTestNamespace, kubectl } from '../harness/kube.ts';
import { waitForExit } from '../harness/processes.ts';
import type { SidecarProcess } from '../harness/sidecar-process.ts';
import { createEvidenceDatabase, type EvidenceDatabase } from './evidence-store-fixture.ts';
import {
  expectedCounters,
  lastStatus,
  listSessions,
  startAuditSidecar,
  verifySessions,
  waitFor,
  type VerifiedSession,
  failClosedInserts,
} from './durability-helpers.ts';
import { startTcpOutage } from './tcp-outage.ts';

/** Waits for a session in `phase`, then verifies every session from the store against its signed head. */
async function storedTrail(
  db: EvidenceDatabase,
  kubeconfig: string,
  namespace: string,
  phase: 'Closed' | 'Abandoned',
): Promise<VerifiedSession[]> {
  const sessions = await waitFor(
    `a session ${phase}`,
    async () => {
      const list = await listSessions(kubeconfig, namespace);
      return list.some((s) => s.status?.phase === phase) ? list : undefined;
    },
    300_000,
  );
  for (const s of sessions) assert.deepEqual(s.spec.records, [], 'records are in the store, not the object');
  return verifySessions(await db.withRecords(sessions), namespace);
}

/** Rows in the store per (session, seq): each must be exactly 1. */
async function storedTwice(db: EvidenceDatabase): Promise<string[]> {
  const c = await db.connect(db.auditor);
  const { rows } = await c.query<{ k: string }>(
    "select session_id || '/' || seq as k from chaperone.audit_records group by session_id, seq having count(*) <> 1",
  );
  return rows.map((r) => r.k);
}

async function client(sidecar: SidecarProcess, subject: string): Promise<pg.Client> {
  const token = await sidecar.issuer.sign({ sub: `system:serviceaccount:ci:${subject}` }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

test('evidence store: the store goes away for 20 s during 3,000 statements, then every record is stored exactly once', async (t) => {
  const db = createEvidenceDatabase(t);
  const outage = await startTcpOutage(t, postgresEnv().port);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { evidenceStore: db.sidecarConfigAt(outage.port) },
  });
  const c = await client(sidecar, 'store-outage');
  const run = async (from: number, to: number) => {
    for (let i = from; i < to; i++) await c.query(`select ${String(i)} as n`);
  };
  await run(0, 500);
  await outage.cut();
  const down = new Promise((resolve) => setTimeout(resolve, 20_000));
  await run(500, 2500);
  await waitFor('the failed flush logged', () =>
    Promise.resolve(/audit flush failed; records stay in the spool/.test(sidecar.logs()) ? true : undefined),
  );
  await down;
  await outage.restore();
  await run(2500, 3000);
  await c.end();

  const [v] = await storedTrail(db, kubeconfig, namespace, 'Closed');
  assert.ok(v !== undefined);
  assert.equal(v.records.length, 2 * 3000 + 2);
  assert.deepEqual(
    v.records,
    (await sidecar.settledRecords()).map((l) => l.record),
    'the store holds what the sidecar wrote, in order',
  );
  assert.deepEqual(await storedTwice(db), []);
  assert.deepEqual(lastStatus(v).counters, expectedCounters(v.records));
});

test('evidence store: 60 s without the API server during 5,000 statements, then every record stored once and signed', async (t) => {
  const db = createEvidenceDatabase(t);
  const runDir = join(testDir(t), 'private-control-plane');
  mkdirSync(runDir, { recursive: true });
  let cp: ControlPlane = await startControlPlane(runDir);
  t.after(() => cp.stop());
  const port = Number(new URL(cp.server).port);
  await applyCrds(cp.kubeconfig);
  const namespace = 'evidence-outage';
  await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });
  const sidecar = await startAuditSidecar(t, {
    kubeconfig: cp.kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { evidenceStore: db.sidecarConfig },
  });
  const c = await client(sidecar, 'api-outage');
  const run = async (from: number, to: number) => {
    for (let i = from; i < to; i++) await c.query(`select ${String(i)} as n`);
  };
  await run(0, 500);
  await cp.stop();
  const outage = new Promise((resolve) => setTimeout(resolve, 60_000));
  await run(500, 4500);
  await outage;
  cp = await startControlPlane(runDir, { port });
  await run(4500, 5000);
  await c.end();

  const [v] = await storedTrail(db, cp.kubeconfig, namespace, 'Closed');
  assert.ok(v !== undefined);
  assert.equal(v.records.length, 2 * 5000 + 2);
  assert.deepEqual(
    v.records,
    (await sidecar.settledRecords()).map((l) => l.record),
  );
  assert.deepEqual(await storedTwice(db), []);
  assert.equal(lastStatus(v).counters.commands, 5000);
  assert.match(sidecar.logs(), /audit flush failed; records stay in the spool/);
});

test('evidence store: after SIGKILL mid-session the restarted sidecar replays its spool, each statement stored once', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const options = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 300,
    audit: { evidenceStore: { ...db.sidecarConfig, batchRecords: 200 } },
  };
  const first = await startAuditSidecar(t, options);
  const c = await client(first, 'killed');
  const answered: string[] = [];
  const load = (async () => {
    for (let i = 0; ; i++) {
      const text = `select ${String(i)} as n`;
      try {
        await c.query(text);
      } catch {
        return;
      }
      answered.push(text);
    }
  })();
  const spool = join(dir, 'audit', 'spool');
  await waitFor('statements flowing and records acknowledged', () =>
    Promise.resolve(answered.length >= 700 && existsSync(join(spool, 'ack')) ? true : undefined),
  );
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  await load;
  // As after a crash between a head write and the acknowledgement: the replay re-sends stored records. The
  // spool deletes a segment (the active one too, when nothing is in flight) once all of it is acknowledged,
  // so whether any stored record is left to re-send depends on where the kill fell: the oldest segment left
  // starting at or below the acknowledged id means it is.
  const acknowledged = Number(readFileSync(join(spool, 'ack'), 'utf8').trim());
  const oldestLeft = Math.min(
    ...readdirSync(spool)
      .filter((name) => /^segment-\d+\.log$/.test(name))
      .map((name) => Number(/\d+/.exec(name)?.[0])),
  );
  rmSync(join(spool, 'ack'));
  const second = await startAuditSidecar(t, options);
  const [v] = await storedTrail(db, kubeconfig, namespace, 'Abandoned');
  assert.ok(v !== undefined);
  const decisions = v.records.filter((r: AuditRecord) => r.type === 'command.decision');
  const recorded = new Map<string, number>();
  for (const r of decisions) recorded.set(r.command?.text ?? '', (recorded.get(r.command?.text ?? '') ?? 0) + 1);
  assert.deepEqual(
    answered.filter((text) => recorded.get(text) !== 1),
    [],
    'every answered statement is in the store exactly once',
  );
  assert.ok(decisions.length - answered.length <= 1, 'at most the statement in flight is recorded unanswered');
  assert.deepEqual(await storedTwice(db), []);
  if (oldestLeft <= acknowledged) {
    assert.match(second.logs(), /"msg":"audit records already in Kubernetes skipped"/);
  } else {
    assert.doesNotMatch(second.logs(), /"msg":"audit records already in Kubernetes skipped"/);
  }
  const status = lastStatus(v);
  assert.equal(status.phase, 'Abandoned');
  assert.deepEqual(status.counters, expectedCounters(v.records), 'counters resumed from the store');
});

test('evidence store, spool durability Written: SIGKILL under load from 4 clients, every answered statement is stored once', async (t) => {
  // Written hands each record to the kernel before its statement is forwarded and syncs behind: a killed
  // sidecar (SIGKILL, OOM kill) loses nothing the clients saw answered (docs/audit-durability.md). Without
  // the JSON-lines export, so outcomes merge into their decisions: the kill falls among decisions, outcome
  // entries and merged records in the spool.
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const options = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 300,
    audit: {
      exportJsonLines: false,
      evidenceStore: { ...db.sidecarConfig, batchRecords: 200 },
      spoolDurability: 'Written',
    },
  };
  const first = await startAuditSidecar(t, options);
  const clients = await Promise.all([0, 1, 2, 3].map((i) => client(first, `written-${String(i)}`)));
  const answered: string[] = [];
  const loads = clients.map(async (c, k) => {
    for (let i = 0; ; i++) {
      const text = `select ${String(k)} as client, ${String(i)} as n`;
      try {
        await c.query(text);
      } catch {
        return;
      }
      answered.push(text);
    }
  });
  await waitFor('statements flowing from every client', () =>
    Promise.resolve(answered.length >= 1500 ? true : undefined),
  );
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  await Promise.all(loads);
  await startAuditSidecar(t, options);
  const sessions = await waitFor(
    'the 4 sessions Abandoned',
    async () => {
      const list = await listSessions(kubeconfig, namespace);
      return list.filter((s) => s.status?.phase === 'Abandoned').length === 4 ? list : undefined;
    },
    300_000,
  );
  const verified = await verifySessions(await db.withRecords(sessions), namespace);
  const recorded = new Map<string, number>();
  for (const v of verified) {
    for (const r of v.records) {
      if (r.type !== 'command.decision') continue;
      const text = r.command?.text ?? '';
      recorded.set(text, (recorded.get(text) ?? 0) + 1);
    }
  }
  assert.deepEqual(
    answered.filter((text) => recorded.get(text) !== 1),
    [],
    'every answered statement is in the store exactly once',
  );
  assert.ok(
    [...recorded.keys()].filter((text) => text.startsWith('select ')).length - answered.length <= 4,
    'at most the statement in flight per client is recorded unanswered',
  );
  assert.deepEqual(await storedTwice(db), []);
  assert.ok(
    verified.some((v) => v.records.some((r) => r.type === 'command.decision' && r.outcome !== undefined)),
    'statements recorded as one merged record',
  );
});

test('evidence store: spool full while the store is unreachable refuses FailClosed writes with 53100, each accounted for', async (t) => {
  const db = createEvidenceDatabase(t);
  const outage = await startTcpOutage(t, postgresEnv().port);
  await outage.cut();
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const database = await createTestDatabase(t, 'create table notes (n int primary key)');
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    database,
    spoolMaxBytes: 64 * 1024,
    listener: { auditFailureMode: 'FailClosed' },
    audit: { evidenceStore: db.sidecarConfigAt(outage.port) },
  });
  const c = await client(sidecar, 'full');
  const { accepted, refused, insert } = failClosedInserts(c);
  let n = 0;
  while (refused.length === 0 && n < 2000) await insert(n++);
  assert.equal(refused.length, 1, 'the spool filled up');
  for (let i = 0; i < 20; i++) await insert(n++);
  assert.equal(refused.length, 21, 'every write after the spool filled was refused');
  const tableNow = async (): Promise<number[]> => {
    const direct = new pg.Client(directPgOptions(database));
    await direct.connect();
    try {
      return (await direct.query<{ n: number }>('select n from notes order by n')).rows.map((r) => r.n);
    } finally {
      await direct.end();
    }
  };
  assert.deepEqual(await tableNow(), accepted, 'no refused INSERT reached PostgreSQL');

  await outage.restore();
  await waitFor('writes allowed again', async () => {
    const before = accepted.length;
    await insert(n++);
    return accepted.length > before ? true : undefined;
  });
  await c.end();
  assert.deepEqual(await tableNow(), accepted);

  const [v] = await storedTrail(db, kubeconfig, namespace, 'Closed');
  assert.ok(v !== undefined);
  assert.deepEqual(
    v.records.filter((r) => r.type === 'command.decision').map((r) => r.command?.text),
    accepted.map((a) => `insert into notes values (${String(a)})`),
    'each statement that ran has its decision record in the store, in order; a refused one has none',
  );
  assert.ok(!v.records.some((r) => r.type === 'audit.gap'), 'FailClosed loses nothing');
  assert.deepEqual(await storedTwice(db), []);
  const sessions: Session[] = await listSessions(kubeconfig, namespace);
  assert.equal(sessions.length, 1);
  const metrics = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
  assert.match(metrics, /chaperone_audit_spool_rejected_total\{reason="spool-full"\} [1-9]/);
});
