// Issue 18's durability promises with the evidence store where they are weakest: the replay of a large spool
// after SIGKILL (well over the 4,096 entries of one message to the audit worker, several sessions, outcomes
// merged into their decisions), the store going away in the middle of that replay, records already in the
// store but not yet under a signed head when the sidecar dies (the crash between the insert's commit and the
// spool's acknowledgement), and the store refusing batches (the writer's INSERT revoked for a while). Each
// time: every record stored exactly once, chains and heads verify with the real `kubectl chaperone verify`,
// nothing left in the spool, each session in its right phase, each refused statement accounted for.
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { controlPlaneEnv, directPgOptions, postgresEnv, testDir } from '../harness/env.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { createTestNamespace, kubectl } from '../harness/kube.ts';
import type { SidecarProcess } from '../harness/sidecar-process.ts';
import { createEvidenceDatabase, type EvidenceDatabase } from './evidence-store-fixture.ts';
import {
  listSessions,
  startAuditSidecar,
  verifySessions,
  waitFor,
  type VerifiedSession,
  failClosedInserts,
} from './durability-helpers.ts';
import {
  checkStatements,
  fillSpoolAndKill,
  finalSessions,
  kubeconfigThrough,
  replayedEntries,
  spoolEmptied,
} from './killed-spool.ts';
import { runCli } from './run-cli.ts';
import { AuditWorker } from '../../sidecar/src/core/audit/audit-worker-client.ts';
import type { PostgresEvidenceStoreOptions } from '../../sidecar/src/core/audit/evidence-store.ts';
import { loadOrCreateSigningKey } from '../../sidecar/src/core/audit/signing-key.ts';
import { Spool } from '../../sidecar/src/core/audit/spool.ts';
import { silentLogger } from '../../sidecar/src/core/observability/logger.ts';
import { startMeteredOutage } from './tcp-outage.ts';

/** (session, seq) held by other than exactly one row of the store. */
async function storedTwice(db: EvidenceDatabase): Promise<string[]> {
  const c = await db.connect(db.auditor);
  const { rows } = await c.query<{ k: string }>(
    "select session_id || '/' || seq as k from chaperone.audit_records group by session_id, seq having count(*) <> 1",
  );
  return rows.map((r) => r.k);
}

async function storedRows(db: EvidenceDatabase): Promise<number> {
  const c = await db.connect(db.auditor);
  const { rows } = await c.query<{ n: string }>('select count(*) as n from chaperone.audit_records');
  return Number(rows[0]?.n ?? 0);
}

/** `kubectl chaperone verify --all` against the store and the Session heads, as an auditor runs it. */
async function cliVerify(db: EvidenceDatabase, kubeconfig: string, namespace: string, sessions: number): Promise<void> {
  const verify = await runCli(['verify', '--all', '-n', namespace, '--evidence-store', db.auditorUrl], {
    KUBECONFIG: kubeconfig,
    PGPASSWORD: db.auditor.password,
  });
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  assert.match(verify.stdout, new RegExp(`${String(sessions)} session\\(s\\)`));
}

async function metric(sidecar: SidecarProcess, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
}

/** Every session's records from the store, verified against its signed head (chain, seq, signature). */
async function verifiedFromStore(
  db: EvidenceDatabase,
  kubeconfig: string,
  namespace: string,
  load: Parameters<typeof finalSessions>[2],
): Promise<VerifiedSession[]> {
  const sessions = await finalSessions(kubeconfig, namespace, load);
  for (const s of sessions) {
    assert.deepEqual(s.spec.records, [], 'records are in the store, not the object');
    assert.equal(s.spec.store?.type, 'postgres');
  }
  return verifySessions(await db.withRecords(sessions), namespace);
}

test('evidence store: a spool of over 12,000 entries across 6 sessions replayed after SIGKILL, each record stored once', async (t) => {
  const db = createEvidenceDatabase(t);
  const outage = await startMeteredOutage(t, postgresEnv().port);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const sidecar = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 200,
    // Outcomes merge into their decisions (no JSON-lines export): the spool holds decision and outcome
    // entries, and a message of the replay may end between the two.
    audit: { exportJsonLines: false, evidenceStore: { ...db.sidecarConfigAt(outage.port), batchRecords: 500 } },
  };
  const load = await fillSpoolAndKill(t, { sidecar, outage });
  await outage.restore();
  const second = await startAuditSidecar(t, sidecar);
  const verified = await verifiedFromStore(db, kubeconfig, namespace, load);
  assert.ok(replayedEntries(second) > 3 * 4096, `replayed ${String(replayedEntries(second))} entries`);
  const { merged } = checkStatements(verified, load);
  assert.ok(merged > 6000, `${String(merged)} statements recorded as one merged record`);
  assert.deepEqual(await storedTwice(db), []);
  await cliVerify(db, kubeconfig, namespace, 6);
  await spoolEmptied(second, dir);
  for (const s of [load.first, second]) assert.ok(!s.logs().includes(db.writer.password), 'no credential logged');
});

test('evidence store: the killed spool replayed by the real audit worker with a flush between every two messages of 4,096 entries', async (t) => {
  // The sidecar hands a replayed spool to its audit worker in messages of 4,096 entries, posted one after
  // another; Node delivers messages already queued in one go, so in the sidecar a flush rarely falls between
  // two (the test above). Here the same spool (a real sidecar's, killed under load) goes to the real worker
  // thread (audit-worker.ts: its writer, evidence store and Session store) with a pause of several flush
  // intervals after every message: the writer flushes at every seam, wherever it falls in a session's
  // decision and outcome entries (the bug fixed in the eleventh session: an outcome lost at a seam, a
  // session written Abandoned before its later records; ReplayedSpoolEntries, spool-entries.ts).
  const db = createEvidenceDatabase(t);
  const outage = await startMeteredOutage(t, postgresEnv().port);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const evidenceStore = { ...db.sidecarConfigAt(outage.port), batchRecords: 500 };
  const sidecar = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 200,
    audit: { exportJsonLines: false, evidenceStore },
  };
  const load = await fillSpoolAndKill(t, { sidecar, outage, statementsAfterCut: 700 });
  await outage.restore();

  const opened = Spool.open({ dir: join(dir, 'audit', 'spool'), maxBytes: 256 * 1024 * 1024 });
  await opened.spool.close();
  const { entries } = opened;
  assert.ok(entries.length > 2 * 4096, `${String(entries.length)} entries to replay`);
  const key = await loadOrCreateSigningKey(join(dir, 'audit', 'signing-key.jwk'));
  let acknowledged = 0;
  let failure: Error | undefined;
  const worker = new AuditWorker({
    data: {
      stores: {
        // As the sidecar builds them (sidecar.ts), for the pod spawnSidecar names.
        sessionStore: { kind: 'kubernetes', options: { kubeconfig, namespace, host: 'test-pod' } },
        evidenceStore: db.sidecarConfigAt(outage.port).postgres as PostgresEvidenceStoreOptions,
        log: { level: 'error', base: { component: 'audit' } },
      },
      signingKey: { keyId: key.keyId, privateJwk: key.privateJwk, publicJwk: key.publicJwk },
      pod: { name: 'test-pod', namespace: 'tests', uid: 'test-pod-uid' },
      flushIntervalMs: 50,
      writer: { storeBatchRecords: 500 },
      holdDecisions: true,
    },
    logger: silentLogger,
    onAcknowledge: (id) => {
      acknowledged = id;
    },
    onFailure: (err) => {
      failure = err;
    },
  });
  t.after(() => worker.close(1000));
  await worker.ready();
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    if (e === undefined) continue;
    worker.replay(e.id, e.payload.toString('utf8'));
    // The 4,096th entry posts the message at once (audit-worker-client.ts): then several flushes.
    if ((i + 1) % 4096 === 0) await sleep(400);
  }
  worker.endReplay();
  // Bounded: a session refused for good (written Abandoned before its later records) never flushes.
  const written = await Promise.race([worker.flush().then(() => true), sleep(120_000).then(() => false)]);
  assert.ok(written, 'every replayed entry written within 120 s');
  assert.equal(failure, undefined);
  assert.equal(acknowledged, entries.at(-1)?.id, 'every replayed entry acknowledged');

  const verified = await verifiedFromStore(db, kubeconfig, namespace, load);
  const { merged } = checkStatements(verified, load);
  assert.ok(merged > 4000, `${String(merged)} statements recorded as one merged record`);
  assert.deepEqual(await storedTwice(db), []);
  await cliVerify(db, kubeconfig, namespace, 6);
});

test('evidence store: the store goes away in the middle of the replay and comes back, each record stored once', async (t) => {
  const db = createEvidenceDatabase(t);
  const outage = await startMeteredOutage(t, postgresEnv().port);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const sidecar = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 200,
    audit: { exportJsonLines: false, evidenceStore: { ...db.sidecarConfigAt(outage.port), batchRecords: 500 } },
  };
  const load = await fillSpoolAndKill(t, { sidecar, outage });
  await outage.restore();
  const before = await storedRows(db);
  // The replay sends well over 6 MB of records: the store goes away after 3 MB of them, mid-replay.
  const cut = outage.cutAfter(3_000_000);
  const second = await startAuditSidecar(t, sidecar);
  await cut;
  const failedAt = second.logs().length;
  await waitFor('the failed flush logged', () =>
    Promise.resolve(
      /audit flush failed; records stay in the spool/.test(second.logs().slice(failedAt)) ? true : undefined,
    ),
  );
  const during = await storedRows(db);
  assert.ok(during > before, `part of the replay stored before the outage (${String(before)} → ${String(during)})`);
  // The worker passes its counters to the main thread's registry every 250 ms.
  await waitFor('the failures counted, records waiting in the spool', async () =>
    (await metric(second, /^chaperone_audit_flush_failures_total\{reason="unavailable"\} (\d+)/m)) >= 1 &&
    (await metric(second, /^chaperone_audit_pending_records (\d+)/m)) > 0
      ? true
      : undefined,
  );
  await sleep(5000);
  await outage.restore();

  const verified = await verifiedFromStore(db, kubeconfig, namespace, load);
  const stored = await storedRows(db);
  assert.ok(stored > during, `the rest stored after the outage (${String(during)} → ${String(stored)})`);
  checkStatements(verified, load);
  assert.deepEqual(await storedTwice(db), []);
  await cliVerify(db, kubeconfig, namespace, 6);
  await spoolEmptied(second, dir);
  assert.match(second.logs(), /"msg":"audit flush recovered"/);
  const events = JSON.parse(await kubectl(['get', 'events', '-n', namespace, '-o', 'json'], { kubeconfig })) as {
    items: { reason: string; message: string }[];
  };
  assert.ok(
    events.items.some((e) => e.reason === 'AuditFlushFailed' && /evidence store/.test(e.message)),
    'a Warning Event says records could not reach the evidence store',
  );
  for (const s of [load.first, second]) {
    assert.ok(!s.logs().includes(db.writer.password), 'no credential logged');
  }
  for (const e of events.items) assert.ok(!e.message.includes(db.writer.password), 'no credential in an Event');
});

test('evidence store: records stored but under no signed head when the sidecar is killed are stored once after the replay', async (t) => {
  // The API server is cut, the store is not: every batch is inserted (COPY, committed) and its head write
  // fails, so the spool acknowledges nothing past the first heads: the crash between the insert's commit and
  // the spool's acknowledgement, for thousands of records. The replay sends them all again (as an idempotent
  // insert: the session was replayed) and signs the heads; the store must keep each row once, untouched.
  const db = createEvidenceDatabase(t);
  const { kubeconfig, server } = controlPlaneEnv();
  const apiOutage = await startMeteredOutage(t, Number(new URL(server).port));
  const namespace = await createTestNamespace(t);
  const dir = testDir(t);
  const sidecar = {
    kubeconfig: kubeconfigThrough(t, kubeconfig, apiOutage.port),
    namespace,
    dir,
    flushIntervalMs: 200,
    // The default batch (4,096) and head interval: each retry of the head inserts what came meanwhile.
    audit: { exportJsonLines: false, evidenceStore: db.sidecarConfig },
  };
  const load = await fillSpoolAndKill(t, { sidecar, outage: apiOutage });
  const sessions = await listSessions(kubeconfig, namespace);
  const c = await db.connect(db.auditor);
  let unsigned = 0;
  for (const s of sessions) {
    const { rows } = await c.query<{ n: string }>(
      'select count(*) as n from chaperone.audit_records where session_id = $1 and seq > $2',
      [s.spec.sessionId, s.spec.head?.seq ?? 0],
    );
    unsigned += Number(rows[0]?.n ?? 0);
  }
  assert.ok(unsigned > 4096, `${String(unsigned)} records stored beyond their session's signed head at the kill`);
  const before = await storedRows(db);
  // As after a crash before the acknowledgement file was written: the replay re-sends signed records too.
  rmSync(join(dir, 'audit', 'spool', 'ack'));
  await apiOutage.restore();
  const restartedAt = new Date();
  const second = await startAuditSidecar(t, sidecar);

  const verified = await verifiedFromStore(db, kubeconfig, namespace, load);
  checkStatements(verified, load);
  assert.deepEqual(await storedTwice(db), []);
  const { rows } = await c.query<{ n: string }>(
    'select count(*) as n from chaperone.audit_records where stored_at < $1',
    [restartedAt],
  );
  assert.equal(Number(rows[0]?.n), before, 'the rows stored before the kill are there once, as they were');
  assert.ok(replayedEntries(second) > 2 * 4096, `replayed ${String(replayedEntries(second))} entries`);
  assert.match(second.logs(), /"msg":"audit records already in Kubernetes skipped"/);
  await cliVerify(db, kubeconfig, namespace, 6);
  await spoolEmptied(second, dir);
});

test('evidence store: the store refuses batches (INSERT revoked) under FailClosed with a small spool: each refused statement accounted for', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const database = await createTestDatabase(t, 'create table notes (n int primary key)');
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    database,
    spoolMaxBytes: 64 * 1024,
    listener: { auditFailureMode: 'FailClosed' },
    audit: { evidenceStore: db.sidecarConfig },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:refused' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  c.on('error', () => undefined);
  await c.connect();
  const { accepted, refused, insert } = failClosedInserts(c);
  let n = 0;
  for (; n < 20; n++) await insert(n);
  await waitFor('the first records stored', async () => ((await storedRows(db)) > 0 ? true : undefined));
  // The store answers, and refuses: a permission revoked for a while (an operator's mistake, a migration).
  db.superuser(`revoke insert on chaperone.audit_records from ${db.writer.user}`);
  while (refused.length === 0 && n < 3000) await insert(n++);
  assert.equal(refused.length, 1, 'the spool filled up');
  for (let i = 0; i < 20; i++) await insert(n++);
  assert.equal(refused.length, 21, 'every write after the spool filled was refused');
  // What happened, in the log: the store's own refusal.
  await waitFor('the refused flush logged', () =>
    Promise.resolve(
      /audit flush failed; records stay in the spool.*permission denied for table audit_records/.test(sidecar.logs())
        ? true
        : undefined,
    ),
  );
  // The worker passes its counters to the main thread's registry every 250 ms.
  await waitFor('the refusals counted as the store refusing, not as an outage', async () =>
    (await metric(sidecar, /^chaperone_audit_flush_failures_total\{reason="store-refused"\} (\d+)/m)) >= 1
      ? true
      : undefined,
  );
  const rejected = await metric(sidecar, /^chaperone_audit_spool_rejected_total\{reason="spool-full"\} (\d+)/m);
  assert.equal(rejected, refused.length, 'each refused statement counted once as a refused record');

  db.superuser(`grant insert on chaperone.audit_records to ${db.writer.user}`);
  await waitFor('writes allowed again', async () => {
    const before = accepted.length;
    await insert(n++);
    return accepted.length > before ? true : undefined;
  });
  await c.end();
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  const table = (await direct.query<{ n: number }>('select n from notes order by n')).rows.map((r) => r.n);
  await direct.end();
  assert.deepEqual(table, accepted, 'no refused INSERT reached PostgreSQL');

  const sessions = await waitFor('the session Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(await db.withRecords(sessions), namespace);
  assert.ok(v !== undefined);
  assert.deepEqual(
    v.records.filter((r) => r.type === 'command.decision').map((r) => r.command?.text),
    accepted.map((a) => `insert into notes values (${String(a)})`),
    'each statement that ran has its decision record in the store, in order; a refused one has none',
  );
  assert.ok(!v.records.some((r) => r.type === 'audit.gap'), 'FailClosed loses nothing');
  assert.deepEqual(await storedTwice(db), []);
  assert.match(sidecar.logs(), /"msg":"audit flush recovered"/);
  assert.ok(!sidecar.logs().includes(db.writer.password), 'no credential logged');
  await cliVerify(db, kubeconfig, namespace, 1);
});
