// Session retention against the real API server: expired sessions go as a whole (every part), recent and
// active ones stay, sessions of a resource with unknown retention stay; what remains still verifies,
// the successor of a pruned session included (its missing predecessor is explained by retention).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type ProtectedResource, type Session } from '@chaperone/api';
import { pruneExpiredSessions, retentionFromResources } from '../../operator/src/controllers/session-retention.ts';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { buildTrail, createSigner, createTrail, lastHash } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const DAY = 24 * 3_600_000;

test('pruneExpiredSessions deletes whole expired sessions only, and the rest still verifies', async (t) => {
  const ns = await createTestNamespace(t);
  const kc = kubeConfig();
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const pr = `apiVersion: chaperone.dev/v1alpha1
kind: ProtectedResource
metadata: {name: orders-db, namespace: ${ns}}
spec:
  type: postgres
  endpoint: {host: orders-db.example, port: 5432, database: orders}
  credentialSecretRef: {name: orders-db-credentials}
  audit: {failureMode: FailClosed, retention: 720h}
`;
  await kubectl(['apply', '-f', '-'], { input: pr });
  const resources = (await custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
  })) as { items: ProtectedResource[] };
  const retentionFor = retentionFromResources(resources.items);
  assert.equal(retentionFor('orders-db'), 30 * DAY);

  const now = new Date();
  const signer = await createSigner();
  const start = (daysAgo: number) => new Date(now.getTime() - daysAgo * DAY);
  // Pod p1: an old session in two parts (expired), then a recent one linked to it.
  const old = await buildTrail({
    name: 'old',
    namespace: ns,
    signer,
    start: start(40),
    recordsPerPart: 3,
    pod: { name: 'p1' },
  });
  const recent = await buildTrail({
    name: 'recent',
    namespace: ns,
    signer,
    start: start(1),
    prevHash: lastHash(old),
    pod: { name: 'p1' },
  });
  // An old session still Active (sidecar alive or not yet marked Abandoned) and one of an unknown resource.
  const active = await buildTrail({
    name: 'active',
    namespace: ns,
    signer,
    start: start(40),
    closed: false,
    pod: { name: 'p2' },
  });
  const orphan = await buildTrail({
    name: 'orphan',
    namespace: ns,
    signer,
    start: start(40),
    resource: 'gone-db',
    pod: { name: 'p3' },
  });
  for (const s of [old, recent, active, orphan]) await createTrail(kc, s);

  const result = await pruneExpiredSessions(custom, ns, now, retentionFor);
  assert.deepEqual([...result.deleted].sort(), [`${ns}/old`, `${ns}/old-1`]);
  assert.deepEqual(result.unknownRetention, [`${ns}/orphan`]);
  assert.ok(result.nextExpiry !== undefined && result.nextExpiry.getTime() > now.getTime());

  const left = (await custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'sessions',
  })) as {
    items: Session[];
  };
  assert.deepEqual(left.items.map((s) => s.metadata.name).sort(), ['active', 'orphan', 'recent']);

  // Idempotent: nothing more to do.
  assert.deepEqual((await pruneExpiredSessions(custom, ns, now, retentionFor)).deleted, []);

  // The CLI reads the retention from the ProtectedResource: the pruned predecessor is not a deletion.
  const verified = await runCli(['verify', '--all', '-n', ns], { KUBECONFIG: controlPlaneEnv().kubeconfig });
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.match(verified.stdout, /OK\s+.*\/recent/);

  // Without the retention (ProtectedResource deleted), the same gap is reported as a deleted session.
  await kubectl(['delete', 'protectedresource', 'orders-db', '-n', ns]);
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const out = join(dir, 'verify.json');
  const strict = await runCli(['verify', 'recent', '-n', ns, '-o', 'json'], {
    KUBECONFIG: controlPlaneEnv().kubeconfig,
  });
  writeFileSync(out, strict.stdout);
  assert.equal(strict.code, 1);
  assert.deepEqual(
    JSON.parse(strict.stdout).problems.map((p: { kind: string }) => p.kind),
    ['session-missing'],
  );
});
