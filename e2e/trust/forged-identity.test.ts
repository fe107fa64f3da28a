// D-1 and D-2 of issue 17, and the agent's and the sidecar's own accounts, against the real API server:
// an editor of the agents' namespace (a real user bound to the built-in `edit` ClusterRole) cannot obtain
// what identifies a sidecar — a token bound to an injected pod — nor pass a pod of her own for one, and
// neither the agent's token nor the sidecar's reaches further than it should. The genuine sidecar, run from
// the stored pod spec with the tokens the node's kubelet would project, is certified and its trail verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as k8s from '@kubernetes/client-node';
import { GROUP, SIGNER_CERTIFICATION_PATH, VERSION, type Session } from '@chaperone/api';
import { controlPlaneEnv, postgresEnv } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { poll } from '../harness/poll.ts';
import { runCli } from '../audit/run-cli.ts';
import { buildTrail, createSigner } from '../audit/trail-fixture.ts';
import { api, certify, kubectlAs, refusal, startTrustFixture } from './trust-fixture.ts';

/** A client authenticating with a bearer token against the shared control plane. */
function tokenClient<T extends k8s.ApiType>(token: string, type: new (config: k8s.Configuration) => T): T {
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'test', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
    users: [{ name: 'token', token }],
    contexts: [{ name: 'test', cluster: 'test', user: 'token' }],
    currentContext: 'test',
  });
  return kc.makeApiClient(type);
}

const READS = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'reads', decision: 'allow' as const, match: { sql: { statementKinds: ['select' as const] } } }],
  defaultDecision: 'deny' as const,
};

test('a forged sidecar identity: pod-bound tokens, impostor pods, the agent and the sidecar accounts', async (t) => {
  const fx = await startTrustFixture(t);
  const { ns, core } = fx;
  const webhooks = fx.operator.webhooks;
  assert.ok(webhooks !== undefined);
  const certifyUrl = webhooks.server.url(SIGNER_CERTIFICATION_PATH);
  const ca = webhooks.certificates.current().caBundlePem;
  await fx.createPolicy(ns, 'reads', READS);
  const pod = await fx.injectedPod(ns, 'agent');
  const uid = pod.metadata?.uid ?? '';
  const running = await fx.runSidecar(t, pod);

  await t.test('D-1: the editor cannot mint a token bound to the injected pod, by any client or audience', async () => {
    const bound = ['--bound-object-kind', 'Pod', '--bound-object-name', 'agent', '--bound-object-uid', uid];
    for (const extra of [[], ['--audience', controlPlaneEnv().issuer], ['--audience', 'chaperone']]) {
      const r = await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns, ...bound, ...extra]);
      assert.notEqual(r.code, 0, `kubectl create token ${extra.join(' ')} succeeded`);
      assert.match(r.stderr, /tokens bound to a pod are minted only by the kubelet/);
    }
    const generated = await fx.injectedPod(ns, 'worker', { generateName: true });
    for (const audiences of [[], ['chaperone'], [controlPlaneEnv().issuer]]) {
      const status = await refusal(
        api(fx.editor, k8s.CoreV1Api).createNamespacedServiceAccountToken({
          namespace: ns,
          name: 'default',
          body: {
            spec: {
              audiences,
              boundObjectRef: {
                apiVersion: 'v1',
                kind: 'Pod',
                name: generated.metadata?.name ?? '',
                uid: generated.metadata?.uid ?? '',
              },
            },
          },
        }),
      );
      assert.equal(status.code, 403);
      assert.match(status.message ?? '', /mallory@example\.com/);
    }
    // Impersonating a kubelet is not something `edit` grants.
    const asNode = await kubectlAs(fx.editor, [
      'create',
      'token',
      'default',
      '-n',
      ns,
      ...bound,
      '--as',
      `system:node:${fx.nodeName}`,
      '--as-group',
      'system:nodes',
    ]);
    assert.notEqual(asNode.code, 0);
    assert.match(asNode.stderr, /cannot impersonate/);
    // Unbound tokens remain available: the policy is about pod binding, and they identify no sidecar.
    const unbound = await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns]);
    assert.equal(unbound.code, 0, unbound.stderr);
  });

  await t.test('an unbound or impersonated service account is no sidecar: no certificate, no Session', async () => {
    const unbound = (await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns])).stdout.trim();
    const refusedCert = await certify(certifyUrl, ca, unbound);
    assert.equal(refusedCert.status, 403);
    assert.match(refusedCert.message, /not a service-account token bound to a pod/);
    const [trail] = await buildTrail({
      name: 'forged',
      namespace: ns,
      signer: await createSigner(),
      pod: { name: 'agent', uid },
    });
    assert.ok(trail);
    const { status: _status, ...body } = trail;
    const asUnbound = await refusal(
      tokenClient(unbound, k8s.CustomObjectsApi).createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
        body,
      }),
    );
    assert.equal(asUnbound.code, 403);
    assert.match(asUnbound.message ?? '', /not bound to a pod/);
    // `edit` may impersonate the namespace's service accounts; impersonation carries no pod binding.
    const impersonated = await kubectlAs(
      fx.editor,
      ['create', '-n', ns, '-f', '-', '--as', `system:serviceaccount:${ns}:default`],
      JSON.stringify(body),
    );
    assert.notEqual(impersonated.code, 0);
    assert.match(impersonated.stderr, /not bound to a pod/);
  });

  await t.test('D-2: a pod bringing its own chaperone-sidecar is refused where the webhooks run', async () => {
    const impostor = (annotations: Record<string, string>): k8s.V1Pod => ({
      metadata: { name: `impostor-${String(Object.keys(annotations).length)}`, annotations },
      spec: {
        nodeName: fx.nodeName,
        initContainers: [
          {
            name: 'chaperone-sidecar',
            image: 'attacker.example/sidecar:1',
            restartPolicy: 'Always',
            volumeMounts: [{ name: 'creds', mountPath: '/creds' }],
          },
        ],
        containers: [{ name: 'agent', image: 'postgres:17' }],
        volumes: [{ name: 'creds', secret: { secretName: 'orders-db-credentials' } }],
      },
    });
    const attempts: Record<string, string>[] = [
      {},
      { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': 'orders-db' },
      {
        'chaperone.dev/injected': 'abc',
        'chaperone.dev/seal': pod.metadata?.annotations?.['chaperone.dev/seal'] ?? '',
      },
    ];
    for (const annotations of attempts) {
      const status = await refusal(
        api(fx.editor, k8s.CoreV1Api).createNamespacedPod({ namespace: ns, body: impostor(annotations) }),
      );
      assert.equal(status.code, 403);
      assert.match(status.message ?? '', /only the injector may set|chaperone strict mode/);
    }
  });

  await t.test('D-2: an impostor pod where no webhook runs gets no certificate and writes no Session', async (t2) => {
    // A namespace without injection or strict mode: the editor's pod is admitted as she wrote it, and the
    // kubelet of its node would project a pod-bound token into it.
    const plain = await fx.namespace(t2);
    await core.createNamespacedServiceAccount({ namespace: plain, body: { metadata: { name: 'impostor' } } });
    await api(fx.editor, k8s.CoreV1Api).createNamespacedPod({
      namespace: plain,
      body: {
        metadata: { name: 'impostor', annotations: { 'chaperone.dev/injected': 'abc123' } },
        spec: {
          serviceAccountName: 'impostor',
          nodeName: fx.nodeName,
          initContainers: [{ name: 'chaperone-sidecar', image: 'attacker.example/sidecar:1', restartPolicy: 'Always' }],
          containers: [{ name: 'agent', image: 'postgres:17' }],
        },
      },
    });
    const stored = await core.readNamespacedPod({ namespace: plain, name: 'impostor' });
    const token = await kubeletToken(stored, undefined);
    const refusedCert = await certify(certifyUrl, ca, token);
    assert.equal(refusedCert.status, 403);
    assert.match(refusedCert.message, /does not run the Chaperone sidecar as the operator sealed it/);
    // Even with RBAC on Sessions (as a service account shared with a genuine pod would have), admission refuses.
    const rbac = fx.admin.makeApiClient(k8s.RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({
      namespace: plain,
      body: {
        metadata: { name: 'writer' },
        rules: [{ apiGroups: [GROUP], resources: ['sessions'], verbs: ['create'] }],
      },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: plain,
      body: {
        metadata: { name: 'writer' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'writer' },
        subjects: [{ kind: 'ServiceAccount', name: 'impostor', namespace: plain }],
      },
    });
    const [trail] = await buildTrail({
      name: 'impostor-1',
      namespace: plain,
      signer: await createSigner(),
      pod: { name: 'impostor', uid: stored.metadata?.uid ?? '' },
    });
    assert.ok(trail);
    const { status: _s, ...body } = trail;
    const write = await refusal(
      tokenClient(token, k8s.CustomObjectsApi).createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: plain,
        plural: 'sessions',
        body,
      }),
    );
    assert.equal(write.code, 403);
    assert.match(write.message ?? '', /only a sidecar the operator sealed, alone in its pod, writes Sessions/);
  });

  await t.test('D-2: the sidecar Role is bound to the service account of the attested pod only', async () => {
    const binding = await poll('the sidecar RoleBinding', async () => {
      const b = await fx.admin
        .makeApiClient(k8s.RbacAuthorizationV1Api)
        .readNamespacedRoleBinding({ namespace: ns, name: 'chaperone-sidecar' });
      return (b.subjects ?? []).length > 0 ? b : undefined;
    });
    assert.deepEqual(
      binding.subjects?.map((s) => `${s.namespace ?? ''}/${s.name}`),
      [`${ns}/default`],
    );
  });

  await t.test("the agent's token is no API credential and no sidecar identity", async () => {
    const asAgent = await refusal(
      tokenClient(running.agentToken, k8s.CoreV1Api).listNamespacedSecret({ namespace: ns }),
    );
    assert.equal(asAgent.code, 401);
    const cert = await certify(certifyUrl, ca, running.agentToken);
    assert.equal(cert.status, 401);
  });

  await t.test("the sidecar's own token is confined to what the sidecar needs", async () => {
    const core2 = tokenClient(running.sidecarToken, k8s.CoreV1Api);
    assert.equal((await refusal(core2.listNamespacedSecret({ namespace: ns }))).code, 403);
    assert.equal((await refusal(core2.readNamespacedConfigMap({ namespace: ns, name: 'kube-root-ca.crt' }))).code, 403);
    assert.equal(
      (
        await refusal(
          core2.createNamespacedPod({
            namespace: ns,
            body: { metadata: { name: 'x' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } },
          }),
        )
      ).code,
      403,
    );
    assert.equal(
      (
        await refusal(
          core2.createNamespacedServiceAccountToken({
            namespace: ns,
            name: 'default',
            body: { spec: { audiences: [] } },
          }),
        )
      ).code,
      403,
    );
    const custom2 = tokenClient(running.sidecarToken, k8s.CustomObjectsApi);
    const patchPolicy = await refusal(
      custom2.patchNamespacedCustomObject(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: 'accesspolicies',
          name: 'reads',
          body: { spec: { defaultDecision: 'allow' } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      ),
    );
    assert.equal(patchPolicy.code, 403);
    // A Session naming another pod, with the sidecar's own pod-bound token.
    const [other] = await buildTrail({
      name: 'other-pod',
      namespace: ns,
      signer: await createSigner(),
      pod: { name: 'worker-xyz', uid: 'f'.repeat(8) },
    });
    assert.ok(other);
    const { status: _s, ...body } = other;
    const foreign = await refusal(
      custom2.createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: ns, plural: 'sessions', body }),
    );
    assert.equal(foreign.code, 403);
    assert.match(foreign.message ?? '', /bound to pod agent/);
    // What it needs: the namespace's policy set, by name.
    const set = await core2.readNamespacedConfigMap({ namespace: ns, name: 'chaperone-policies' });
    assert.ok(set.data?.['policies.jws']);
  });

  await t.test(
    'nobody execs into or attaches to the sidecar; the agent container is not covered by that policy',
    async () => {
      for (const verb of [
        ['exec', 'agent', '-c', 'chaperone-sidecar', '--', 'cat', '/var/lib/chaperone/audit/signing-key.jwk'],
        ['attach', 'agent', '-c', 'chaperone-sidecar'],
      ]) {
        const r = await kubectlAs(fx.editor, [...verb.slice(0, 2), '-n', ns, ...verb.slice(2)]);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /may not exec into or attach to it/);
      }
      // Exec into the agent passes admission and then fails only because no kubelet runs the pod here.
      const agent = await kubectlAs(fx.editor, ['exec', 'agent', '-n', ns, '-c', 'agent', '--', 'true']);
      assert.notEqual(agent.code, 0);
      assert.doesNotMatch(agent.stderr, /may not exec into/);
    },
  );

  await t.test('the genuine sidecar is certified and its trail verifies with --require-certified', async () => {
    const pg = postgresEnv();
    const env = {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      ...running.agentEnv,
      PGPASSWORD: running.agentToken,
    };
    const psql = spawnSync('psql', ['-X', '-A', '-t', '-c', 'select 40 + 2'], {
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(psql.status, 0, psql.stderr);
    assert.equal(psql.stdout.trim(), '42');
    assert.ok(pg.port > 0);
    await poll('the sidecar to close the session in a Session object', async () => {
      const list = (await fx.custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
      })) as { items: Session[] };
      return list.items.some((s) => s.status?.phase === 'Closed' && s.spec.signer?.certificate !== undefined)
        ? true
        : undefined;
    });
    const verify = await runCli([
      'verify',
      '--all',
      '-n',
      ns,
      '--kubeconfig',
      controlPlaneEnv().kubeconfig,
      '--authority-namespace',
      fx.operatorNamespace,
      '--require-certified',
    ]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  });
});
