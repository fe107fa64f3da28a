// With an evidence store a live session's status is written when its phase changes and otherwise at most
// every 30 s, not with every head (docs/evidence-store.md, "How records flow"): each status write costs the
// API server as much as a head. The heads keep their pace; the session's end writes the Closed status with
// the counters its records give, and verify accepts it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';
import {
  expectedCounters,
  lastStatus,
  listSessions,
  startAuditSidecar,
  verifySessions,
  waitFor,
} from './durability-helpers.ts';

test('evidence store: heads with every flush, the status of a live session not; the end writes it', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    // A head with every flush: only the status is held back.
    audit: { exportJsonLines: false, evidenceStore: { ...db.sidecarConfig, headIntervalMs: 0 } },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:status' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  await c.query("select 'first' as tag");
  const [created] = await waitFor('the Session created, its status Active', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 1 && list[0]?.status?.phase === 'Active' ? list : undefined;
  });
  const firstStatus = created?.status;
  assert.ok(firstStatus !== undefined);

  // More commands, flushed and signed over several heads.
  for (let i = 0; i < 12; i++) {
    await c.query(`select ${String(i)} as n, 'later' as tag`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const firstHead = created?.spec.head?.seq ?? 0;
  const [signed] = await waitFor('a head covering the later commands', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return (list[0]?.spec.head?.seq ?? 0) >= firstHead + 12 ? list : undefined;
  });
  assert.ok(signed !== undefined);
  // The heads moved on; the status is the first one written (the same counters), not rewritten per head.
  assert.deepEqual(signed.status, firstStatus, 'the live status is not rewritten with every head');

  await c.end();
  const sessions = await waitFor('the session Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 1 && list[0]?.status?.phase === 'Closed' ? list : undefined;
  });
  const [v] = await verifySessions(await db.withRecords(sessions), namespace);
  assert.ok(v !== undefined);
  assert.equal(v.records.at(-1)?.type, 'session.end');
  assert.deepEqual(lastStatus(v).counters, expectedCounters(v.records), 'the Closed status counts every record');
  assert.equal(lastStatus(v).counters.commands, 13);
});
