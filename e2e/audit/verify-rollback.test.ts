// Truncation and rollback against the real API server and the CLI. An admin deletes a Session and creates it
// again as it was at an earlier flush: its records up to then and the head the sidecar genuinely signed
// over them (delete and create are what an admin with full rights can do; the CRD's append-only rules only
// guard updates). Every signature still verifies, so the object alone can only show what docs/audit.md
// says it shows:
// - marked Closed without its session.end record: `session-truncated`;
// - left Active, as it was then: nothing, from the object alone (the documented limit);
// - against a signed operator checkpoint that saw the later head: `checkpoint-mismatch`; against a checkpoint
//   that saw only the earlier head: nothing to find; against an earlier evidence export: `baseline-mismatch`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { GENESIS_HASH, GROUP, VERSION, signCheckpoint, type Session } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { buildTrail, createSigner, createTrail, signHead } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';

interface Report {
  ok: boolean;
  problems: { severity: string; kind: string; object?: string; seq?: number }[];
  sessions: { lastSeq?: number }[];
}

test('truncation and rollback to an earlier genuinely signed head, with and without a checkpoint', async (t) => {
  const ns = await createTestNamespace(t);
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const kc = kubeConfig();
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const signer = await createSigner();
  const authority = await createSigner('authority');
  const name = 'orders-1';
  const commands = [{ text: 'select 1' }, { text: 'update orders set paid = true' }, { text: 'select 3' }];
  const [full] = await buildTrail({ name, namespace: ns, signer, commands });
  assert.ok(full !== undefined);
  const records = full.spec.records;
  assert.equal(records.length, 8);
  const { sessionId } = full.spec;

  // The object as the sidecar left it at an earlier flush: five records and the head it signed over them.
  const earlier = (phase: 'Active' | 'Closed'): Session => {
    const cut = records.slice(0, 5);
    const decisions = cut.filter((r) => r.type === 'command.decision').length;
    return {
      ...structuredClone(full),
      spec: { ...structuredClone(full.spec), records: cut },
      status: {
        phase,
        ...(phase === 'Closed' ? { endTime: `${(cut.at(-1)?.time ?? '').slice(0, 19)}Z` } : {}),
        counters: { commands: decisions, allowed: decisions, denied: 0, held: 0, errors: 0 },
      },
    };
  };
  const earlierHead = await signHead(ns, name, sessionId, records[4] ?? assert.fail(), signer);
  const restore = async (session: Session) => {
    await custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'sessions',
      name,
    });
    session.spec.head = earlierHead;
    await createTrail(kc, [session]);
  };

  const verify = async (...args: string[]): Promise<{ code: number; report: Report }> => {
    const r = await runCli(['verify', '--all', '-n', ns, '-o', 'json', ...args], {
      KUBECONFIG: controlPlaneEnv().kubeconfig,
    });
    assert.ok(r.code === 0 || r.code === 1, r.stderr);
    return { code: r.code, report: JSON.parse(r.stdout) as Report };
  };
  const errors = (report: Report) =>
    report.problems.filter((p) => p.severity === 'error').map((p) => `${p.kind}@${String(p.seq)}`);

  // The untouched session verifies; an evidence export and an operator checkpoint see its head at seq 8.
  await createTrail(kc, [full]);
  const clean = await verify();
  assert.equal(clean.code, 0, JSON.stringify(clean.report.problems));
  const evidence = join(dir, 'evidence.json');
  const exported = await runCli(['evidence', 'export', '-n', ns, '-o', evidence], {
    KUBECONFIG: controlPlaneEnv().kubeconfig,
  });
  assert.equal(exported.code, 0, exported.stderr);
  const authorityKeys = join(dir, 'authority.jwks.json');
  writeFileSync(authorityKeys, JSON.stringify({ keys: [authority.publicJwk] }));
  const checkpointFile = async (seq: number, file: string) => {
    const head = records[seq - 1] ?? assert.fail();
    const jws = await signCheckpoint(
      {
        typ: 'chaperone.dev/checkpoint/v1',
        time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        index: 1,
        previous: GENESIS_HASH,
        namespaces: [ns],
        sessions: [{ object: `${ns}/${name}`, sessionId, part: 0, seq, hash: head.hash }],
      },
      authority.privateJwk,
    );
    const path = join(dir, file);
    writeFileSync(path, `${jws}\n`);
    return path;
  };
  const sawLater = await checkpointFile(8, 'checkpoint-later.jws');
  const sawEarlier = await checkpointFile(5, 'checkpoint-earlier.jws');
  // The trail's signer keys are not certified (that is signer-uncertified.test.ts's subject): accepted here.
  const pinned = ['--authority-keys', authorityKeys, '--allow-uncertified', '--checkpoint'];
  assert.equal((await verify(...pinned, sawLater)).code, 0, 'the checkpoint agrees with the untouched session');

  await t.test('rolled back and marked Closed: session-truncated', async () => {
    await restore(earlier('Closed'));
    const { code, report } = await verify();
    assert.equal(code, 1);
    assert.deepEqual(errors(report), ['session-truncated@5']);
  });

  await t.test(
    'rolled back and left Active: invisible in the object alone, found by checkpoint and baseline',
    async () => {
      await restore(earlier('Active'));
      // The documented limit (docs/audit.md): every signature holds, nothing in the object tells.
      const alone = await verify();
      assert.equal(alone.code, 0, JSON.stringify(alone.report.problems));
      assert.equal(alone.report.sessions[0]?.lastSeq, 5);

      const later = await verify(...pinned, sawLater);
      assert.equal(later.code, 1);
      assert.deepEqual(errors(later.report), ['checkpoint-mismatch@8']);

      // A checkpoint taken before the later records existed has nothing to hold against the rollback.
      const before = await verify(...pinned, sawEarlier);
      assert.equal(before.code, 0, JSON.stringify(before.report.problems));

      const baseline = await verify('--baseline', evidence);
      assert.equal(baseline.code, 1);
      assert.deepEqual(errors(baseline.report), ['baseline-mismatch@8']);
    },
  );
});
