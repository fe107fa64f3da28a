// D-8 of issue 17 and policy delivery: a running sidecar learns a policy created after its pod started,
// through the namespace's signed policy set; an editor who overwrites a bundle ConfigMap, the set itself
// (with her own key, unsigned, from another namespace, or an older genuinely signed set), or deletes it,
// weakens nothing: the sidecar refuses and keeps the last good policies, posts a Warning Event on its pod,
// and the operator restores the ConfigMaps and reports it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_WASM_FILE,
  GROUP,
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  VERSION,
  signPolicySet,
  statementSigner,
  verifyPolicySet,
  type AccessPolicy,
  type AccessPolicySpec,
} from '@chaperone/api';
import { bundleConfigMap, holdsBundle } from '../../operator/src/controllers/access-policy-controller.ts';
import { compilePolicy } from '../../operator/src/policy/compile-policy.ts';
import { directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { agentPgOptions, api, type RunningPod, startTrustFixture } from './trust-fixture.ts';

const policy = (statementKinds: ('select' | 'insert')[]): AccessPolicySpec => ({
  resources: { names: ['orders-db'] },
  rules: [{ name: 'allowed', decision: 'allow', match: { sql: { statementKinds } } }],
  defaultDecision: 'deny',
});
const ALLOW_ALL: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'allow',
};

/** One statement through the sidecar as the agent: 'ok' or the SQLSTATE it failed with. */
async function asAgent(running: RunningPod, sql: string): Promise<string> {
  const client = new pg.Client(agentPgOptions(running));
  await client.connect();
  try {
    await client.query(sql);
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  } finally {
    await client.end();
  }
}

test('policy delivery and tampering: signed policy sets through the API', async (t) => {
  const fx = await startTrustFixture(t);
  const { ns, core, custom } = fx;
  const table = `trust_orders_${fx.instance}`;
  const direct = new pg.Client(directPgOptions());
  await direct.connect();
  await direct.query(`create table if not exists ${table} (id int)`);
  await direct.end();
  const insert = `insert into ${table} values (1)`;
  const select = `select count(*) from ${table}`;

  const pod = await fx.injectedPod(ns, 'agent');
  const running = await fx.runSidecar(t, pod);
  const sidecarLog = () => readFileSync(running.sidecar.logFile, 'utf8');
  const editorCore = api(fx.editor, k8s.CoreV1Api);

  await t.test('without any policy every command is denied', async () => {
    assert.equal(await asAgent(running, select), '42501');
  });

  let v1: { set: string; bundle: k8s.V1ConfigMap } | undefined;
  await t.test('a policy created after the pod started reaches its running sidecar', async () => {
    await fx.createPolicy(ns, 'orders', policy(['select', 'insert']));
    await poll('the new policy to be enforced by the running sidecar', async () =>
      (await asAgent(running, select)) === 'ok' ? true : undefined,
    );
    assert.equal(await asAgent(running, insert), 'ok');
    const set = (await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP })).data?.[
      POLICY_SET_KEY
    ];
    assert.ok(set);
    v1 = { set, bundle: await core.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders' }) };
    // Narrowed: inserts are no longer allowed. The edit reaches the sidecar the same way.
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'accesspolicies',
        name: 'orders',
        body: { spec: policy(['select']) },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    await poll('the narrowed policy to be enforced', async () =>
      (await asAgent(running, insert)) === '42501' ? true : undefined,
    );
    assert.equal(await asAgent(running, select), 'ok');
  });

  const orders = async () =>
    (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'accesspolicies',
      name: 'orders',
    })) as AccessPolicy;
  const events = async (reason: string) =>
    (await core.listNamespacedEvent({ namespace: ns })).items.filter((e) => e.reason === reason);
  const stillEnforced = async () => {
    assert.equal(await asAgent(running, insert), '42501', 'the narrowed policy is still in force');
    assert.equal(await asAgent(running, select), 'ok');
  };

  await t.test('D-8: an allow-all bundle written over the policy ConfigMap is restored and never loaded', async () => {
    const digest = (await orders()).status?.bundle?.digest ?? '';
    const allowAll = await compilePolicy({ namespace: ns, name: 'orders', spec: ALLOW_ALL });
    assert.ok(allowAll.ok);
    const live = await core.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders' });
    // Same name, same labels and digest annotation: only the bytes are the attacker's.
    live.binaryData = { [BUNDLE_WASM_FILE]: Buffer.from(allowAll.wasm).toString('base64') };
    live.data = { [BUNDLE_MANIFEST_FILE]: JSON.stringify({ manifest: allowAll.manifest, digest }) };
    await editorCore.replaceNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders', body: live });
    await poll('the operator to restore the bundle', async () => {
      const cm = await core.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders' });
      return holdsBundle(cm, digest) ? true : undefined;
    });
    await poll('the BundleRestored Event on the policy', async () =>
      (await events('BundleRestored')).some((e) => e.involvedObject.name === 'orders') ? true : undefined,
    );
    await stillEnforced();
  });

  await t.test('D-8: a policy set signed by the editor, unsigned, or from another namespace is refused', async () => {
    // Her own bundle ConfigMap, and a set naming it, signed with her own key.
    const allowAll = await compilePolicy({ namespace: ns, name: 'orders', spec: ALLOW_ALL });
    assert.ok(allowAll.ok);
    const owner = await orders();
    const evil = bundleConfigMap(owner, allowAll);
    evil.metadata = { name: 'evil-bundle', namespace: ns };
    await editorCore.createNamespacedConfigMap({ namespace: ns, body: evil });
    const mallory = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
    const operatorKid = fx.operator.authority?.keyId ?? '';
    const forgedSets: [string, string][] = [
      [
        'signed with her own key under the operator key id',
        signPolicySet(
          {
            namespace: ns,
            issuedAt: new Date(Date.now() + 3_600_000).toISOString(),
            policies: [{ name: 'orders', configMap: 'evil-bundle', digest: allowAll.digest }],
          },
          statementSigner({ ...mallory, kid: operatorKid }),
        ),
      ],
      ['not a JWS at all', '{"policies":[{"name":"orders","configMap":"evil-bundle"}]}'],
    ];
    const authority = fx.operator.authority;
    assert.ok(authority);
    forgedSets.push([
      'genuinely signed, for another namespace',
      signPolicySet(
        {
          namespace: `${ns}-elsewhere`,
          issuedAt: new Date(Date.now() + 3_600_000).toISOString(),
          policies: [{ name: 'orders', configMap: 'evil-bundle', digest: allowAll.digest }],
        },
        statementSigner(authority.privateJwk),
      ),
    ]);
    for (const [what, jws] of forgedSets) {
      const before = (sidecarLog().match(/policy set refused/g) ?? []).length;
      // An unconditional update (no resourceVersion): the operator may be restoring it right now.
      const cm: k8s.V1ConfigMap = {
        metadata: { name: POLICY_SET_CONFIGMAP, namespace: ns },
        data: { [POLICY_SET_KEY]: jws },
      };
      await editorCore.replaceNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP, body: cm });
      await poll(`the sidecar to refuse a set ${what}`, () =>
        Promise.resolve((sidecarLog().match(/policy set refused/g) ?? []).length > before ? true : undefined),
      );
      await poll('the operator to restore the set', async () => {
        const live = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
        try {
          return verifyPolicySet(live.data?.[POLICY_SET_KEY] ?? '', authority.publicKeys).namespace === ns
            ? true
            : undefined;
        } catch {
          return undefined;
        }
      });
      await stillEnforced();
    }
    await poll("the sidecar's PolicySetRejected Event on its pod", async () =>
      (await events('PolicySetRejected')).some(
        (e) => e.involvedObject.kind === 'Pod' && e.involvedObject.name === 'agent',
      )
        ? true
        : undefined,
    );
    await poll("the operator's PolicySetRestored Event on the ConfigMap", async () =>
      (await events('PolicySetRestored')).some((e) => e.involvedObject.name === POLICY_SET_CONFIGMAP)
        ? true
        : undefined,
    );
  });

  await t.test('D-8: an older, genuinely signed set replayed with its bundle is refused as a rollback', async () => {
    assert.ok(v1);
    const before = (sidecarLog().match(/a rollback/g) ?? []).length;
    // The older bundle bytes back in place, then the older set that names them.
    const bundle = await core.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders' });
    bundle.data = v1.bundle.data ?? {};
    bundle.binaryData = v1.bundle.binaryData ?? {};
    bundle.metadata!.annotations = v1.bundle.metadata?.annotations ?? {};
    await editorCore.replaceNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders', body: bundle });
    const cm = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
    cm.data = { [POLICY_SET_KEY]: v1.set };
    await editorCore.replaceNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP, body: cm });
    await poll('the sidecar to refuse the rollback', () =>
      Promise.resolve((sidecarLog().match(/a rollback/g) ?? []).length > before ? true : undefined),
    );
    await stillEnforced();
    const current = (await orders()).status?.bundle?.digest ?? '';
    await poll('the operator to restore bundle and set', async () => {
      const b = await core.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policy-orders' });
      const s = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
      return holdsBundle(b, current) && s.data?.[POLICY_SET_KEY] !== v1?.set ? true : undefined;
    });
  });

  await t.test('the set deleted by the editor comes back; the sidecar keeps its policies meanwhile', async () => {
    await editorCore.deleteNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
    await stillEnforced();
    await poll('the operator to publish the set again', async () =>
      (await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP })).data?.[POLICY_SET_KEY] ===
      undefined
        ? undefined
        : true,
    );
    await stillEnforced();
  });
});
