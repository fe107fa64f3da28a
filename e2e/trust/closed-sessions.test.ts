// D-3 of issue 17: a closed session stays closed. Against the shared API server, the CRD's rules refuse a
// record appended after session.end (correctly hashed, by anyone, administrators included), a phase going
// back and a status removed; the operator's Session webhook refuses a new part continuing a closed one,
// even from the pod's own sidecar token. Where those rules are gone (an administrator removed them, on a
// private control plane here), `kubectl chaperone verify` finds the same states and exits non-zero.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments, stringify } from 'yaml';
import { GROUP, VERSION, hashRecord, signChainHead, type AuditRecord, type Session } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { buildTrail, createSigner, createTrail, signHead } from '../audit/trail-fixture.ts';
import { startControlPlane } from '../harness/control-plane.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { createTestNamespace, kubectl } from '../harness/kube.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { refusal, startTrustFixture } from './trust-fixture.ts';

const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

/** A record appended after the last one, correctly hashed and linked. */
function appended(records: readonly AuditRecord[], type: AuditRecord['type'] = 'command.decision'): AuditRecord {
  const last = records.at(-1) as AuditRecord;
  const unhashed = {
    v: 1,
    seq: last.seq + 1,
    time: last.time,
    type,
    command: { id: 9999, kind: 'sql', text: 'delete from orders' },
    decision: { result: 'allow', policy: 'x/y', rule: 'r' },
    prevHash: last.hash,
  } as Omit<AuditRecord, 'hash'>;
  return { ...unhashed, hash: hashRecord(unhashed) };
}

test('D-3: a closed session stays closed, at admission and in verify', async (t) => {
  const fx = await startTrustFixture(t);
  const { ns, custom } = fx;
  const sessions = { group: GROUP, version: VERSION, namespace: ns, plural: 'sessions' };
  const signer = await createSigner();

  await t.test(
    'the CRD refuses a record after session.end, a phase going back and a removed status, for everyone',
    async (t2) => {
      // A namespace outside this fixture's admission policies: the administrator may write Sessions
      // there, and the CRD's own rules still hold.
      const plain = await createTestNamespace(t2);
      const [trail] = await buildTrail({ name: 'closed-1', namespace: plain, signer });
      assert.ok(trail);
      await createTrail(fx.admin, [trail]);
      const base = { group: GROUP, version: VERSION, namespace: plain, plural: 'sessions', name: 'closed-1' };
      const stored = (await custom.getNamespacedCustomObject(base)) as Session;
      const extra = appended(stored.spec.records);
      const head = await signHead(plain, 'closed-1', stored.spec.sessionId, extra, signer);
      const append = await refusal(
        custom.patchNamespacedCustomObject(
          {
            ...base,
            body: [
              { op: 'add', path: '/spec/records/-', value: extra },
              { op: 'replace', path: '/spec/head', value: head },
            ],
          },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.JsonPatch),
        ),
      );
      assert.equal(append.code, 422);
      assert.match(append.message ?? '', /no record may follow session\.end/);
      // A second session.end, or an end in the middle: refused alike.
      const replaced = structuredClone(stored);
      replaced.spec.records = [...stored.spec.records, appended(stored.spec.records, 'session.end')];
      const twice = await refusal(custom.replaceNamespacedCustomObject({ ...base, body: replaced }));
      assert.match(twice.message ?? '', /no record may follow session\.end/);
      const reopened = await refusal(
        custom.patchNamespacedCustomObjectStatus({ ...base, body: { status: { phase: 'Active' } } }, merge),
      );
      assert.equal(reopened.code, 422);
      assert.match(reopened.message ?? '', /a session does not go back/);
      const moved = await refusal(
        custom.patchNamespacedCustomObjectStatus(
          { ...base, body: { status: { endTime: '2030-01-01T00:00:00Z' } } },
          merge,
        ),
      );
      assert.match(moved.message ?? '', /endTime is immutable/);
      const removed = await refusal(
        custom.patchNamespacedCustomObjectStatus({ ...base, body: { status: null } }, merge),
      );
      assert.match(removed.message ?? '', /status cannot be removed/);
    },
  );

  await t.test(
    "the Session webhook refuses a new part continuing a closed session, even from the pod's sidecar",
    async () => {
      const pod = await fx.injectedPod(ns, 'agent');
      const podRef = { name: 'agent', uid: pod.metadata?.uid ?? '' };
      const [first] = await buildTrail({ name: 'agent-part-0', namespace: ns, signer, pod: podRef });
      assert.ok(first);
      // Created by the pod's own sidecar identity: the token its kubelet projects.
      const token = await kubeletToken(pod, undefined);
      const kc = new k8s.KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: 'test', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
        users: [{ name: 'sidecar', token }],
        contexts: [{ name: 'test', cluster: 'test', user: 'sidecar' }],
        currentContext: 'test',
      });
      const asSidecar = kc.makeApiClient(k8s.CustomObjectsApi);
      const { status: _s, ...body } = first;
      for (let i = 0; ; i++) {
        // The operator binds the sidecar Role once it sees the attested pod.
        try {
          await asSidecar.createNamespacedCustomObject({ ...sessions, body });
          break;
        } catch (err) {
          if (i > 100) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      const stored = (await custom.getNamespacedCustomObject({ ...sessions, name: 'agent-part-0' })) as Session;
      const next = appended(stored.spec.records);
      const continuation = {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: 'Session',
        metadata: { name: 'agent-part-1', namespace: ns },
        spec: {
          ...stored.spec,
          part: 1,
          previousPart: 'agent-part-0',
          records: [next],
          head: await signHead(ns, 'agent-part-1', stored.spec.sessionId, next, signer),
        },
      };
      const status = await refusal(asSidecar.createNamespacedCustomObject({ ...sessions, body: continuation }));
      assert.equal(status.code, 403);
      assert.match(status.message ?? '', /holds session\.end: a closed session stays closed/);
    },
  );

  await t.test(
    'without the rules, verify finds records after the end and a status set back, and exits 1',
    async (t2) => {
      // An administrator who removed the CRD's rules: a private control plane whose Session CRD has none.
      const dir = join(testDir(t2), 'private');
      mkdirSync(dir, { recursive: true });
      const cp = await startControlPlane(dir);
      t2.after(() => cp.stop());
      const crd = parseAllDocuments(
        readFileSync(join(REPO_ROOT, 'crds', 'sessions.chaperone.dev.yaml'), 'utf8'),
      )[0]?.toJS() as Record<string, unknown>;
      const strip = (value: unknown): unknown => {
        if (Array.isArray(value)) return value.map(strip);
        if (value !== null && typeof value === 'object') {
          return Object.fromEntries(
            Object.entries(value)
              .filter(([k]) => k !== 'x-kubernetes-validations')
              .map(([k, v]) => [k, strip(v)]),
          );
        }
        return value;
      };
      await kubectl(['apply', '-f', '-'], { kubeconfig: cp.kubeconfig, input: stringify(strip(crd)) });
      await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/sessions.chaperone.dev'], {
        kubeconfig: cp.kubeconfig,
      });
      await kubectl(['create', 'namespace', 'agents'], { kubeconfig: cp.kubeconfig });
      const admin = new k8s.KubeConfig();
      admin.loadFromFile(cp.kubeconfig);
      // A session whose end was followed by a correctly hashed record, re-signed with the sidecar's key (as
      // someone who had that key could), and whose status was set back to Active long after.
      const [forged] = await buildTrail({
        name: 'forged-1',
        namespace: 'agents',
        signer,
        start: new Date(Date.now() - 3_600_000),
      });
      assert.ok(forged);
      const late = appended(forged.spec.records);
      forged.spec.records.push(late);
      forged.spec.head = await signHead('agents', 'forged-1', forged.spec.sessionId, late, signer);
      forged.status = {
        phase: 'Active',
        counters: forged.status?.counters ?? { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 },
      };
      // Another: closed an hour ago (the head covering its end signed then), status set back to Active.
      const [reopened] = await buildTrail({
        name: 'reopened-1',
        namespace: 'agents',
        signer,
        start: new Date(Date.now() - 3_600_000),
      });
      assert.ok(reopened);
      const end = reopened.spec.records.at(-1) as AuditRecord;
      reopened.spec.head = {
        seq: end.seq,
        hash: end.hash,
        keyId: signer.kid,
        signature: await signChainHead(
          {
            typ: 'chaperone.dev/chain-head/v1',
            sessionId: reopened.spec.sessionId,
            object: 'agents/reopened-1',
            seq: end.seq,
            hash: end.hash,
            signedAt: new Date(Date.now() - 3_000_000).toISOString(),
          },
          signer.privateJwk,
        ),
      };
      reopened.status = {
        phase: 'Active',
        counters: reopened.status?.counters ?? { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 },
      };
      await createTrail(admin, [forged, reopened]);
      const verify = await runCli(['verify', '--all', '-n', 'agents', '--kubeconfig', cp.kubeconfig, '-o', 'json']);
      assert.equal(verify.code, 1, verify.stdout + verify.stderr);
      const report = JSON.parse(verify.stdout) as {
        problems: { kind: string; severity: string; object?: string; detail: string }[];
      };
      const errors = report.problems.filter((p) => p.severity === 'error');
      assert.ok(
        errors.some((p) => p.kind === 'records-after-end' && p.object === 'agents/forged-1'),
        JSON.stringify(report.problems),
      );
      assert.ok(
        errors.some(
          (p) => p.kind === 'status-mismatch' && p.object === 'agents/reopened-1' && /set back/.test(p.detail),
        ),
        JSON.stringify(report.problems),
      );
      // The text report names them too.
      const text = await runCli(['verify', '--all', '-n', 'agents', '--kubeconfig', cp.kubeconfig]);
      assert.equal(text.code, 1);
      assert.match(text.stdout + text.stderr, /records-after-end/);
      assert.match(text.stdout + text.stderr, /status-mismatch/);
    },
  );
});
