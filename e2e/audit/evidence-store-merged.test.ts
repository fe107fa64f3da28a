// One record per statement with the durable spool (docs/audit-durability.md, "One
// record per statement"): a statement's decision is durable before it runs, and when its outcome comes
// before the writer has taken the decision, the store gets one merged record. Here: merged records verify
// and count; an outcome that comes after the decision was stored gets its own record; a sidecar killed
// between a decision and its outcome leaves a verifiable chain ending in the decision (and the merged
// records it had only in its spool are rebuilt on replay); an edited merged record fails verify.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { carriesCommandOutcome, type AuditRecord } from '@chaperone/api';
import { controlPlaneEnv, directPgOptions, postgresEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
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
} from './durability-helpers.ts';
import { runCli } from './run-cli.ts';

async function client(sidecar: SidecarProcess, subject: string): Promise<pg.Client> {
  const token = await sidecar.issuer.sign({ sub: `system:serviceaccount:ci:${subject}` }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** A connection straight to the upstream database, which holds the advisory lock a statement waits for. */
async function lockHolder(key: number): Promise<pg.Client> {
  const c = new pg.Client(directPgOptions(postgresEnv().database));
  await c.connect();
  await c.query('select pg_advisory_lock($1)', [key]);
  return c;
}

/** Waits until the store holds the decision record of the statement whose text contains `marker`. */
async function decisionStored(db: EvidenceDatabase, marker: string): Promise<void> {
  const c = await db.connect(db.auditor);
  await waitFor(`the decision of ${marker} in the store`, async () => {
    const { rows } = await c.query(
      "select 1 from chaperone.audit_records where type = 'command.decision' and strpos(record, $1) > 0",
      [marker],
    );
    return rows.length > 0 ? true : undefined;
  });
}

/** Each statement's records: exactly one carries its outcome, merged into the decision or after it. */
function checkOnePerStatement(v: VerifiedSession): { merged: number; separate: number } {
  let merged = 0;
  let separate = 0;
  const records = v.records;
  records.forEach((r, i) => {
    if (r.type !== 'command.decision') return;
    if (r.outcome !== undefined) {
      merged += 1;
      return;
    }
    const later = records.slice(i + 1).filter((o) => o.type === 'command.outcome' && o.command?.id === r.command?.id);
    if (later.length === 1) separate += 1;
  });
  const outcomes = records.filter((r) => carriesCommandOutcome(r));
  assert.equal(outcomes.length, merged + separate, 'no outcome without its decision, none twice');
  return { merged, separate };
}

const byText = (records: readonly AuditRecord[], marker: string) =>
  records.find((r) => r.type === 'command.decision' && (r.command?.text ?? '').includes(marker));

test('evidence store: a decision and its outcome are one record; a late outcome is its own; an edited merged record fails verify', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  // No JSON-lines export: with one, every record is also written there at once, and records are not merged.
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { exportJsonLines: false, evidenceStore: db.sidecarConfig },
  });

  const quick = await client(sidecar, 'merged');
  for (let i = 0; i < 100; i++) await quick.query(`select ${String(i)} as n, 'merged' as tag`);
  await assert.rejects(quick.query("select 1/0, 'merged' as tag"), /division by zero/);
  await quick.end();

  // A statement that waits on a lock until its decision is in the store: its outcome comes too late to merge.
  const holder = await lockHolder(4242);
  t.after(() => holder.end());
  const slow = await client(sidecar, 'late');
  const waiting = slow.query("select pg_advisory_lock(4242), 'late-outcome' as tag");
  await decisionStored(db, 'late-outcome');
  await holder.query('select pg_advisory_unlock(4242)');
  await waiting;
  await slow.query("select 'after the late one' as tag");
  await slow.end();

  const sessions = await waitFor('both sessions Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 2 && list.every((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const verified = await verifySessions(await db.withRecords(sessions), namespace);
  const quickTrail = verified.find((v) => byText(v.records, "'merged' as tag") !== undefined);
  const lateTrail = verified.find((v) => byText(v.records, 'late-outcome') !== undefined);
  assert.ok(quickTrail !== undefined && lateTrail !== undefined);

  const quickCount = checkOnePerStatement(quickTrail);
  assert.equal(quickCount.merged + quickCount.separate, 101, 'every statement recorded');
  assert.ok(quickCount.merged > 0, 'outcomes that came before the writer took their decision are merged into it');
  assert.equal(quickTrail.records.length, 2 + 101 + quickCount.separate, 'one record per merged statement');
  for (const r of quickTrail.records) assert.equal(r.v, 3);
  assert.deepEqual(lastStatus(quickTrail).counters, expectedCounters(quickTrail.records));
  assert.equal(lastStatus(quickTrail).counters.errors, 1, 'the error is counted whether merged or not');
  // What a restarted writer resumes from: the store's counters function counts merged records the same way.
  const writer = await db.connect(db.writer);
  const { rows } = await writer.query<Record<string, string>>('select * from chaperone.session_counters($1, $2)', [
    quickTrail.sessionId,
    quickTrail.records.length,
  ]);
  assert.deepEqual(
    Object.fromEntries(Object.entries(rows[0] ?? {}).map(([k, n]) => [k, Number(n)])),
    expectedCounters(quickTrail.records),
  );

  // The late statement: its decision was stored alone, so its outcome is the next record, on its own.
  const late = byText(lateTrail.records, 'late-outcome');
  assert.ok(late !== undefined);
  assert.equal(late.outcome, undefined, 'the decision stored before the outcome came stays as it was');
  const next = lateTrail.records[late.seq];
  assert.equal(next?.type, 'command.outcome');
  assert.equal(next.command?.id, late.command?.id);
  assert.equal(next.outcome?.status, 'success');
  assert.deepEqual(lastStatus(lateTrail).counters, expectedCounters(lateTrail.records));

  const cli = (...args: string[]) =>
    runCli([...args, '-n', namespace, '--evidence-store', db.auditorUrl], {
      KUBECONFIG: kubeconfig,
      PGPASSWORD: db.auditor.password,
    });
  const clean = await cli('verify', '--all');
  assert.equal(clean.code, 0, clean.stdout + clean.stderr);
  // show prints a merged record as one line: the decision and how the statement ended.
  const quickName = quickTrail.parts[0]?.metadata.name ?? '';
  const shown = await cli('sessions', 'show', quickName);
  assert.equal(shown.code, 0, shown.stderr);
  const lines = shown.stdout.split('\n');
  assert.equal(
    lines.filter((l) => /\bcommand\.decision\b.*=> ALLOW.* {2}(success|error)\b/.test(l)).length,
    quickCount.merged,
    'each merged record shows its decision and its outcome',
  );
  assert.ok(
    lines.some((l) => /\bcommand\.(decision|outcome)\b.*error 22012/.test(l)),
    'select 1/0 fails with division_by_zero',
  );

  // An auditor with database superuser rights edits a merged record: the error becomes a success.
  const mergedError = quickTrail.records.find((r) => r.type === 'command.decision' && r.outcome?.status === 'error');
  const edited =
    mergedError ?? quickTrail.records.find((r) => r.type === 'command.decision' && r.outcome !== undefined);
  assert.ok(edited !== undefined);
  const status = edited.outcome?.status ?? '';
  db.superuser(
    `set session_replication_role = replica;
     update chaperone.audit_records set record = replace(record, '"status":"${status}"', '"status":"${status === 'error' ? 'success' : 'error'}"')
      where session_id = '${quickTrail.sessionId}' and seq = ${String(edited.seq)}`,
  );
  const tampered = await cli('verify', quickName, '-o', 'json');
  assert.equal(tampered.code, 1, tampered.stdout + tampered.stderr);
  const problems = (JSON.parse(tampered.stdout) as { problems: { kind: string; seq?: number }[] }).problems;
  assert.ok(
    problems.some((p) => p.kind === 'hash-mismatch' && p.seq === edited.seq),
    JSON.stringify(problems),
  );
});

test('evidence store: SIGKILL between a decision and its outcome leaves a verifiable chain ending in the decision', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  // A flush interval longer than the test: nothing reaches the store before the kill, so the replay rebuilds
  // every merged record from its spooled decision and outcome entries.
  const options = {
    kubeconfig,
    namespace,
    dir,
    flushIntervalMs: 60_000,
    audit: { exportJsonLines: false, evidenceStore: db.sidecarConfig },
  };
  const first = await startAuditSidecar(t, options);
  const c = await client(first, 'killed-between');
  for (let i = 0; i < 20; i++) await c.query(`select ${String(i)} as n, 'before the kill' as tag`);
  const holder = await lockHolder(4343);
  t.after(() => holder.end());
  // Sent and decided (its decision durable), never answered: the sidecar dies while it waits on the lock.
  const waiting = c.query("select pg_advisory_lock(4343), 'in flight' as tag").catch((err: unknown) => err);
  await waitFor('the statement waiting on the lock upstream', async () => {
    const { rows } = await holder.query(
      "select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%in flight%'",
    );
    return rows.length > 0 ? true : undefined;
  });
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  assert.ok((await waiting) instanceof Error, 'the client lost its connection');

  await startAuditSidecar(t, { ...options, flushIntervalMs: 200 });
  const sessions = await waitFor('the session Abandoned', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.some((s) => s.status?.phase === 'Abandoned') ? list : undefined;
  });
  const [v] = await verifySessions(await db.withRecords(sessions), namespace);
  assert.ok(v !== undefined);
  const count = checkOnePerStatement(v);
  assert.equal(count.merged + count.separate, 20, 'each answered statement has its outcome');
  assert.ok(count.merged > 0, 'merged records rebuilt from the spool');
  const last = v.records.at(-1);
  assert.equal(last?.type, 'command.decision');
  assert.match(last.command?.text ?? '', /in flight/);
  assert.equal(last.outcome, undefined, 'the decision of the statement in flight, alone');
  assert.equal(lastStatus(v).phase, 'Abandoned');
  assert.deepEqual(lastStatus(v).counters, expectedCounters(v.records));
  const verify = await runCli(['verify', '--all', '-n', namespace, '--evidence-store', db.auditorUrl], {
    KUBECONFIG: kubeconfig,
    PGPASSWORD: db.auditor.password,
  });
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});

test('Session objects: a decision and its outcome are one record there too', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { exportJsonLines: false },
  });
  const c = await client(sidecar, 'objects');
  for (let i = 0; i < 300; i++) await c.query(`select ${String(i)} as n`);
  await c.end();
  const sessions = await waitFor('the session Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length > 0 && list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, namespace);
  assert.ok(v !== undefined);
  const count = checkOnePerStatement(v);
  assert.equal(count.merged + count.separate, 300);
  assert.ok(count.merged > 0);
  assert.equal(v.records.length, 2 + 300 + count.separate);
  assert.deepEqual(lastStatus(v).counters, expectedCounters(v.records));
});
