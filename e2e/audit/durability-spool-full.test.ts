// A full spool (Session objects cannot be written: their namespace does not exist yet, and the spool is
// small). FailClosed: statements are denied with 53100 and a clear message, the session stays usable, and
// statements are allowed again once the writer empties the spool. FailOpen: statements go on, the lost
// records are counted, and an audit.gap record says so once records can be written again.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';

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

test('durable audit: spool full on a FailClosed resource denies with 53100, and allows again once there is room', async (t) => {
  const { kubeconfig } = controlPlaneEnv();
  const ns = await laterNamespace(t);
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace: ns.name,
    spoolMaxBytes: 64 * 1024,
    listener: { auditFailureMode: 'FailClosed' },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:full' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  let refusal: (Error & { code?: string; hint?: string }) | undefined;
  let allowed = 0;
  for (let i = 0; i < 2000 && refusal === undefined; i++) {
    try {
      await c.query(`select ${String(i)} as n`);
      allowed += 1;
    } catch (err) {
      refusal = err as Error & { code?: string };
    }
  }
  assert.ok(refusal !== undefined, 'the spool filled up');
  assert.equal(refusal.code, '53100');
  assert.equal(refusal.message, 'chaperone: audit trail unavailable (spool full); resource is fail-closed');
  assert.ok(allowed > 10);
  // The session stays usable and keeps refusing while the spool is full.
  await assert.rejects(c.query('select 42'), (err: Error & { code?: string }) => err.code === '53100');

  await ns.create();
  await waitFor('statements allowed again', async () => {
    try {
      await c.query('select 1');
      return true;
    } catch (err) {
      if ((err as { code?: string }).code !== '53100') throw err;
      return undefined;
    }
  });
  await c.end();

  const sessions = await waitFor('the session closed', async () => {
    const list = await listSessions(kubeconfig, ns.name);
    return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, ns.name); // refused records left no hole in the chain
  assert.ok(v !== undefined);
  assert.ok(!v.records.some((r) => r.command?.text === 'select 42'), 'a refused statement has no record');
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
