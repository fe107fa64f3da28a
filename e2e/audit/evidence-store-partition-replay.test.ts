// A session whose records straddle a day partition of the evidence store (UTC midnight) replayed after its
// process died with records stored beyond the signed head: the replay's idempotent insert meets rows in
// two partitions. The primary key (session_id, seq, time) is enforced per partition, and a record's time
// picks its partition, so a replayed record meets its stored twin in the same partition and is skipped:
// each row once, in its day's partition (never the default one), untouched, the counters resumed across
// both days, and `kubectl chaperone verify` passing. Real SessionWriter and store, real API server and
// PostgreSQL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PostgresEvidenceStore,
  type PostgresEvidenceStoreOptions,
} from '../../sidecar/src/core/audit/evidence-store.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { expectedCounters, lastStatus, listSessions, verifySessions, waitFor } from './durability-helpers.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';
import { HandChain, replayOrigin, replayWriter, testSigningKey, type RecordContent } from './replay-fixture.ts';
import { runCli } from './run-cli.ts';

test('evidence store: a session straddling midnight replayed with stored, unsigned records: each row once, in its day', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const key = await testSigningKey(t);
  const origin = replayOrigin(namespace, '7e91c0de-0000-4000-8000-00000000da75');
  // Today's UTC midnight: the partitions of yesterday and today exist (docs/evidence-store.md).
  const midnight = new Date();
  midnight.setUTCHours(0, 0, 0, 0);
  // 20 records before midnight, the rest after, 1 ms apart.
  const chain = new HandChain((seq) => new Date(midnight.getTime() + (seq - 21)).toISOString().replace('Z', '000Z'));
  const { records } = chain;
  const add = (content: RecordContent) => chain.add(content);
  add({ type: 'session.start', identity: { subject: 'system:serviceaccount:ci:midnight', issuer: 'https://issuer' } });
  for (let i = 1; i <= 38; i++) {
    add({
      type: 'command.decision',
      command: { id: i, kind: 'sql', text: `select ${String(i)}` },
      decision: { result: i % 5 === 0 ? 'deny' : 'allow', rule: 'r' },
    });
  }
  add({ type: 'session.end', outcome: { status: 'success', message: 'client disconnected' } });

  const writer = () => {
    const evidence = new PostgresEvidenceStore(db.sidecarConfig.postgres as PostgresEvidenceStoreOptions);
    // Heads lag: after the first one, records are stored and not yet signed.
    const w = replayWriter(t, namespace, key, { evidence, storeHeadIntervalMs: 600_000 });
    t.after(() => evidence.close()); // after the writer's stop (hooks run in order)
    return w;
  };
  const first = writer();
  first.start();
  records.slice(0, 10).forEach((r, i) => first.enqueue(i + 1, origin, r));
  await waitFor('the session and its first head', async () => {
    const [s] = await listSessions(kubeconfig, namespace);
    return s?.spec.head?.seq === 10 ? s : undefined;
  });
  // Up to the session's end, which only the spool will hold (it ends at the kill).
  records.slice(10, -1).forEach((r, i) => first.enqueue(i + 11, origin, r));
  const auditor = await db.connect(db.auditor);
  const count = async () =>
    Number((await auditor.query<{ n: string }>('select count(*) as n from chaperone.audit_records')).rows[0]?.n);
  await waitFor('every record but the end stored', async () =>
    (await count()) === records.length - 1 ? true : undefined,
  );
  // The process dies with 29 records stored beyond the head, which covers seq 10 only.
  await first.stop();
  const [before] = await listSessions(kubeconfig, namespace);
  assert.equal(before?.spec.head?.seq, 10);

  const restartedAt = new Date();
  const second = writer();
  second.start();
  records.forEach((r, i) => second.enqueue(i + 1, origin, r, true));
  assert.equal(await second.flush(60_000), true, 'every record written');

  const sessions = await listSessions(kubeconfig, namespace);
  const [v] = await verifySessions(await db.withRecords(sessions), namespace, { podLinks: false });
  assert.ok(v !== undefined);
  assert.deepEqual(v.records, records, 'each record once, as written');
  assert.equal(v.parts[0]?.spec.head?.seq, records.length, 'the head signs the last record');
  assert.equal(lastStatus(v).phase, 'Closed');
  assert.deepEqual(lastStatus(v).counters, expectedCounters(records), 'counters across both days');
  const day = (d: Date) => d.toISOString().slice(0, 10).replaceAll('-', '');
  const yesterday = new Date(midnight.getTime() - 86_400_000);
  assert.equal(
    db.superuser('select tableoid::regclass::text, count(*) from chaperone.audit_records group by 1 order by 1'),
    `chaperone.audit_records_${day(yesterday)}|20\nchaperone.audit_records_${day(midnight)}|20\n`,
    "each day's records in its partition",
  );
  const untouched = await auditor.query<{ n: string }>(
    'select count(*) as n from chaperone.audit_records where stored_at < $1',
    [restartedAt],
  );
  assert.equal(Number(untouched.rows[0]?.n), records.length - 1, 'the stored rows kept: the replay added the end only');
  const verify = await runCli(['verify', '--all', '-n', namespace, '--evidence-store', db.auditorUrl], {
    KUBECONFIG: kubeconfig,
    PGPASSWORD: db.auditor.password,
  });
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});
