// A full spool (Session objects cannot be written: their namespace does not exist yet, and the spool is
// small). FailClosed: writes are refused with 53100 and a clear message before they reach PostgreSQL (the
// table holds exactly the accepted INSERTs), the session stays usable, and writes are allowed again once
// the writer empties the spool. FailOpen: statements go on, the lost
// records are counted, and an audit.gap record says so once records can be written again.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { createTestDatabase } from '../harness/databases.ts';
import { controlPlaneEnv, directPgOptions } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { failClosedInserts, listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';

async function laterNamespace(t: TestContext): Promise<{ name: string; create: () => Promise<void> }> {
  const base = await createTestNamespace(t);
  const name = `${base.slice(0, 50)}-later`;
  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
  t.after(async () => {
    await core.deleteNamespace({ name }).catch(() => undefined);
  });
  return {
    name,
    create: async () => {
      await core.createNamespace({ body: { metadata: { name, labels: { 'chaperone.dev/test': 'true' } } } });
    },
  };
}

test('durable audit: spool full on a FailClosed resource refuses writes with 53100 before they run, and allows again once there is room', async (t) => {
  const { kubeconfig } = controlPlaneEnv();
  const ns = await laterNamespace(t);
  const database = await createTestDatabase(t, 'create table notes (n int primary key)');
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace: ns.name,
    database,
    spoolMaxBytes: 64 * 1024,
    listener: { auditFailureMode: 'FailClosed' },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:full' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  // Every statement inserts a value of its own, so the table says exactly which statements ran.
  const { accepted, refused, insert } = failClosedInserts(c);
  let n = 0;
  while (refused.length === 0 && n < 2000) await insert(n++);
  assert.equal(refused.length, 1, 'the spool filled up');
  assert.ok(accepted.length > 10);
  // The session stays usable and keeps refusing every write while the spool is full.
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
  // None of the refused INSERTs reached PostgreSQL: the table holds exactly the accepted ones.
  assert.deepEqual(await tableNow(), accepted);

  await ns.create();
  await waitFor('writes allowed again', async () => {
    const before = accepted.length;
    await insert(n++);
    return accepted.length > before ? true : undefined;
  });
  await c.end();
  assert.deepEqual(await tableNow(), accepted, 'while waiting for room, refused writes did not run either');
  assert.ok(refused.every((r) => !accepted.includes(r)));

  const sessions = await waitFor('the session closed', async () => {
    const list = await listSessions(kubeconfig, ns.name);
    return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, ns.name); // refused records left no hole in the chain
  assert.ok(v !== undefined);
  const texts = v.records.filter((r) => r.type === 'command.decision').map((r) => r.command?.text);
  assert.deepEqual(
    texts,
    accepted.map((a) => `insert into notes values (${String(a)})`),
    'each statement that ran has its decision record, in order; a refused one has none',
  );
  assert.ok(!v.records.some((r) => r.type === 'audit.gap'), 'FailClosed loses nothing');
  const metrics = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
  assert.match(metrics, /chaperone_audit_spool_rejected_total\{reason="spool-full"\} [1-9]/);
  assert.match(sidecar.logs(), /audit spool full/);
});

test('durable audit: spool full on a FailOpen resource lets statements through and records the gap', async (t) => {
  const { kubeconfig } = controlPlaneEnv();
  const ns = await laterNamespace(t);
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace: ns.name,
    spoolMaxBytes: 64 * 1024,
    listener: { auditFailureMode: 'FailOpen' },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:open' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  for (let i = 0; i < 300; i++) await c.query(`select ${String(i)} as n`); // far more than 64 KiB of records
  await ns.create();
  await waitFor('the spool emptied into Kubernetes', async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
    const used = /^chaperone_audit_spool_bytes (\d+)/m.exec(metrics);
    const flushed = /^chaperone_audit_flushed_records_total (\d+)/m.exec(metrics);
    return Number(used?.[1] ?? Infinity) < 16 * 1024 && Number(flushed?.[1] ?? 0) > 0 ? true : undefined;
  });
  await c.query('select 1000 as n');
  await c.end();

  const sessions = await waitFor('the session closed', async () => {
    const list = await listSessions(kubeconfig, ns.name);
    return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, ns.name);
  assert.ok(v !== undefined);
  const gaps = v.records.filter((r) => r.type === 'audit.gap');
  assert.ok(gaps.length >= 1);
  const lost = gaps.reduce((n, r) => n + (r.gap?.lostRecords ?? 0), 0);
  assert.match(gaps[0]?.gap?.reason ?? '', /spool-full/);
  // Every record the session produced is either in the trail or counted in a gap.
  const decisions = v.records.filter((r) => r.type === 'command.decision').length;
  const outcomes = v.records.filter((r) => r.type === 'command.outcome').length;
  assert.equal(decisions + outcomes + lost, 2 * 301);
  assert.ok(v.records.some((r) => r.command?.text === 'select 1000 as n'));
});
