// A cluster admin with full rights removes the CRD's append-only CEL rules (in a private control plane,
// never the shared one) and edits, deletes and reorders records in place. The API server accepts it;
// kubectl chaperone verify says what was done and where, and exits 1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type Session } from '@chaperone/api';
import { startControlPlane } from '../harness/control-plane.ts';
import { applyCrds, kubectl } from '../harness/kube.ts';
import { testDir } from '../harness/env.ts';
import { buildTrail, createSigner, createTrail } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';

const NS = 'default';

test('in-place tampering after the CEL rules are removed is detected', { timeout: 300_000 }, async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const cp = await startControlPlane(dir);
  t.after(() => cp.stop());
  await applyCrds(cp.kubeconfig);

  // What an admin can do: drop the records' validation rules from the CRD.
  const crd = JSON.parse(
    await kubectl(['get', 'crd', 'sessions.chaperone.dev', '-o', 'json'], { kubeconfig: cp.kubeconfig }),
  );
  for (const v of crd.spec.versions) {
    const records = v.schema.openAPIV3Schema.properties.spec.properties.records;
    delete records['x-kubernetes-validations'];
    // And the bound on the record format version, so a record of an unknown version can be stored.
    delete records.items.properties.v.maximum;
  }
  await kubectl(['replace', '-f', '-'], { kubeconfig: cp.kubeconfig, input: JSON.stringify(crd) });
  const after = JSON.parse(
    await kubectl(['get', 'crd', 'sessions.chaperone.dev', '-o', 'json'], { kubeconfig: cp.kubeconfig }),
  );
  assert.equal(
    after.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.records['x-kubernetes-validations'],
    undefined,
  );

  const kc = new k8s.KubeConfig();
  kc.loadFromFile(cp.kubeconfig);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const signer = await createSigner();
  const commands = [{ text: 'select * from orders' }, { text: 'delete from orders', decision: 'deny' as const }];
  const names = ['clean', 'edited', 'deleted', 'swapped', 'identity'];
  for (const name of names) await createTrail(kc, await buildTrail({ name, namespace: NS, signer, commands }));
  // Format versions 1 (identity on every record) and 2 (no session stated) still verify; an unknown version
  // does not, even hashed and signed.
  await createTrail(kc, await buildTrail({ name: 'version-1', namespace: NS, signer, commands, version: 1 }));
  await createTrail(kc, await buildTrail({ name: 'version-2', namespace: NS, signer, commands, version: 2 }));
  await createTrail(kc, await buildTrail({ name: 'version-4', namespace: NS, signer, commands, version: 4 }));
  // Format 3: session.start states the pod's namespace under its hash; a spec that says another (written
  // so, and signed) is found.
  await createTrail(
    kc,
    await buildTrail({ name: 'moved', namespace: NS, signer, commands, statedNamespace: 'elsewhere' }),
  );

  const tamper = async (name: string, change: (records: Session['spec']['records']) => void) => {
    const s = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: 'sessions',
      name,
    })) as Session;
    change(s.spec.records);
    // Accepted: nothing in the API server stops a full-rights admin any more.
    await custom.replaceNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: 'sessions',
      name,
      body: s,
    });
  };
  await tamper('edited', (r) => {
    r[3]!.command!.text = 'select 1';
  });
  await tamper('deleted', (r) => {
    r.splice(2, 1);
    // Renumber too, so seq looks contiguous: the hash links still give it away.
    r.forEach((x, i) => (x.seq = i + 1));
  });
  await tamper('swapped', (r) => {
    [r[1], r[2]] = [r[2]!, r[1]!];
  });
  // Versions 2 and 3 name the caller once, on session.start; every later record is chained to it.
  await tamper('identity', (r) => {
    assert.equal(r[0]!.v, 3);
    assert.equal(r[0]!.type, 'session.start');
    assert.ok(
      r.slice(1).every((x) => x.identity === undefined && x.session === undefined),
      'version 3: identity and session on session.start only',
    );
    r[0]!.identity!.subject = 'system:serviceaccount:ci:someone-else';
  });

  const verify = (...args: string[]) => runCli(['verify', ...args], { KUBECONFIG: cp.kubeconfig });

  const clean = await verify('clean');
  assert.equal(clean.code, 0, clean.stdout + clean.stderr);

  const edited = await verify('edited');
  assert.equal(edited.code, 1);
  assert.match(
    edited.stdout,
    /ERROR hash-mismatch\s+default\/edited, part 0, seq 4: record content does not match its hash/,
  );

  const deleted = await verify('deleted', '-o', 'json');
  assert.equal(deleted.code, 1);
  const found = JSON.parse(deleted.stdout).problems.map((p: { kind: string; seq: number }) => `${p.kind}@${p.seq}`);
  assert.ok(found.includes('broken-link@3'), found.join(', '));
  assert.ok(
    found.some((f: string) => f.startsWith('hash-mismatch@')),
    'renumbered records no longer match their hashes',
  );

  const swapped = await verify('swapped');
  assert.equal(swapped.code, 1);
  assert.match(swapped.stdout, /ERROR seq-order\s+default\/swapped, part 0, seq 2: expected seq 4, found 2/);
  assert.match(swapped.stdout, /ERROR broken-link\s+default\/swapped, part 0, seq 3/);

  const identity = await verify('identity', '-o', 'json');
  assert.equal(identity.code, 1);
  const identityProblems = JSON.parse(identity.stdout).problems.map(
    (p: { kind: string; seq?: number }) => `${p.kind}@${String(p.seq)}`,
  );
  assert.ok(identityProblems.includes('hash-mismatch@1'), identityProblems.join(', '));
  assert.ok(identityProblems.includes('metadata-mismatch@1'), 'spec.identity no longer matches session.start');

  const v1 = await verify('version-1');
  assert.equal(v1.code, 0, v1.stdout + v1.stderr);
  const v2 = await verify('version-2');
  assert.equal(v2.code, 0, v2.stdout + v2.stderr);
  const v4 = await verify('version-4');
  assert.equal(v4.code, 1);
  assert.match(v4.stdout, /ERROR record-format\s+default\/version-4, part 0, seq 1: unknown record format version 4/);
  const moved = await verify('moved');
  assert.equal(moved.code, 1);
  assert.match(
    moved.stdout,
    /ERROR metadata-mismatch\s+default\/moved, part 0, seq 1: spec differs from the session stated in the signed session.start record \(namespace\)/,
  );

  const all = await verify('--all');
  assert.equal(all.code, 1);
  assert.match(all.stdout, /^OK\s+default\/clean/m);
  assert.match(all.stdout, /^FAIL default\/edited/m);
  assert.match(all.stdout, /^OK\s+default\/version-1/m);
  assert.match(all.stdout, /^OK\s+default\/version-2/m);
  assert.match(all.stdout, /9 session\(s\)/);
});
