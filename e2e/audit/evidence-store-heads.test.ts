// Signed heads at most once per headIntervalMs per session (docs/evidence-store.md, "Between heads"): records
// reach the store every flush, the head follows later; the session's end signs everything at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';
import { lastStatus, listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';

test('evidence store: between heads records are stored unsigned; the session end signs them all', async (t) => {
  const db = createEvidenceDatabase(t);
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    flushIntervalMs: 200,
    audit: { exportJsonLines: false, evidenceStore: { ...db.sidecarConfig, headIntervalMs: 60_000 } },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:heads' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  await c.query("select 'first' as tag");
  // The session's first batch creates its Session object with a head at once.
  const [created] = await waitFor('the Session created with its first head', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 1 && list[0]?.spec.head !== undefined ? list : undefined;
  });
  const firstHead = created?.spec.head?.seq ?? 0;
  assert.ok(firstHead >= 1);
  for (let i = 0; i < 20; i++) await c.query(`select ${String(i)} as n, 'later' as tag`);

  // The later records reach the store (one flush interval), while the head stays where it was.
  const auditor = await db.connect(db.auditor);
  const storedThrough = await waitFor('the later records in the store', async () => {
    const { rows } = await auditor.query<{ seq: string }>(
      "select max(seq) as seq from chaperone.audit_records where strpos(record, '''later'' as tag') > 0",
    );
    const seq = Number(rows[0]?.seq ?? 0);
    return seq > 0 ? seq : undefined;
  });
  const [meanwhile] = await listSessions(kubeconfig, namespace);
  assert.equal(meanwhile?.spec.head?.seq, firstHead, 'no head written before the interval');
  assert.ok(storedThrough > firstHead, 'stored beyond the signed head');

  await c.end();
  const sessions = await waitFor('the session Closed', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 1 && list[0]?.status?.phase === 'Closed' ? list : undefined;
  });
  const [v] = await verifySessions(await db.withRecords(sessions), namespace);
  assert.ok(v !== undefined);
  assert.equal(v.records.at(-1)?.type, 'session.end');
  assert.equal(v.parts[0]?.spec.head?.seq, v.records.at(-1)?.seq, 'the end is signed at once');
  assert.equal(lastStatus(v).counters.commands, 21);
});
