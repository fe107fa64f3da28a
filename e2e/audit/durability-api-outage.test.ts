// The API server goes away for 60 s (its launcher is stopped with SIGTERM) while a client runs 5,000
// statements through the sidecar; the statements keep running on the local spool. A control plane is
// started again on the same data directory and port; then every record arrives in Session objects exactly
// once and the chain verifies. Uses a private control plane so the shared one is never stopped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { testDir } from '../harness/env.ts';
import { applyCrds, kubectl } from '../harness/kube.ts';
import {
  expectedCounters,
  lastStatus,
  listSessions,
  startAuditSidecar,
  verifySessions,
  waitFor,
} from './durability-helpers.ts';

const STATEMENTS = 5000;
const OUTAGE_MS = 60_000;

test('durable audit: 60 s without the API server during 5,000 statements, then every record exactly once', async (t) => {
  const runDir = join(testDir(t), 'private-control-plane');
  mkdirSync(runDir, { recursive: true });
  let cp: ControlPlane = await startControlPlane(runDir);
  t.after(() => cp.stop());
  const port = Number(new URL(cp.server).port);
  await applyCrds(cp.kubeconfig);
  const namespace = 'audit-outage';
  await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });

  const sidecar = await startAuditSidecar(t, { kubeconfig: cp.kubeconfig, namespace, flushIntervalMs: 200 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:outage' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  // 500 statements before the outage, 4,000 while the API server is down, 500 after it is back.
  const run = async (from: number, to: number) => {
    for (let i = from; i < to; i++) await c.query(`select ${String(i)} as n`);
  };
  await run(0, 500);
  await cp.stop();
  const outage = new Promise((resolve) => setTimeout(resolve, OUTAGE_MS));
  await run(500, 4500);
  await outage;
  cp = await startControlPlane(runDir, { port });
  await run(4500, STATEMENTS);
  await c.end();

  const sessions = await waitFor(
    'the session closed in Kubernetes',
    async () => {
      const list = await listSessions(cp.kubeconfig, namespace);
      return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
    },
    300_000,
  );
  const [v] = await verifySessions(sessions, namespace);
  assert.ok(v !== undefined);
  assert.equal(v.records.length, 2 * STATEMENTS + 2, 'start, a decision and an outcome per statement, end');
  assert.deepEqual(
    v.records,
    (await sidecar.settledRecords()).map((line) => line.record),
  );
  const status = lastStatus(v);
  assert.deepEqual(status.counters, expectedCounters(v.records));
  assert.equal(status.counters.commands, STATEMENTS);
  // The outage was noticed, and its end reported, where an operator looks.
  assert.match(sidecar.logs(), /audit flush failed; records stay in the spool/);
  await waitFor('the recovery event', async () => {
    const events = await kubectl(['get', 'events', '-n', namespace, '-o', 'json'], { kubeconfig: cp.kubeconfig });
    return (JSON.parse(events) as { items: { reason: string }[] }).items.some((e) => e.reason === 'AuditFlushRecovered')
      ? true
      : undefined;
  });
});
