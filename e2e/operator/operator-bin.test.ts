// The chaperone-operator binary as a child process against the shared control plane, scoped to one test
// namespace, with --enable-webhooks --webhook-url: it registers its own webhook configurations by URL
// (selecting only that namespace), compiles an AccessPolicy, injects an annotated Pod, prunes an expired
// Session, and exits 0 on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import {
  AUDIT_AUTHORITY_JWKS_KEY,
  AUDIT_AUTHORITY_NAME,
  GROUP,
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  SEAL_ANNOTATION,
  VERSION,
  verifyPolicySet,
  type AccessPolicy,
  type Session,
} from '@chaperone/api';
import {
  ANNOTATION_INJECTED,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  SIDECAR_CONTAINER,
} from '../../operator/src/injection/constants.ts';
import { parseJwks } from '../../operator/src/audit/audit-authority.ts';
import { sealProblems } from '../../operator/src/injection/sealed-pod.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { startOperatorProcess, TEST_SIDECAR_IMAGE } from '../harness/operator-process.ts';
import { poll as pollUntil } from '../harness/poll.ts';
import { agentPod, createPostgresResource, waitForServiceAccount } from '../injection/injection-fixture.ts';
import { buildTrail, createSigner, createTrail } from '../audit/trail-fixture.ts';

const DAY = 24 * 3_600_000;

test('chaperone-operator binary: webhooks registered by URL inject a pod; retention prunes; SIGTERM exits 0', async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const ns = await createTestNamespace(t, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
  await waitForServiceAccount(core, ns, 'default');
  await createPostgresResource({ core, custom }, ns);

  // An expired, closed Session of orders-db (retention 720h by default) and a recent one.
  const signer = await createSigner();
  const now = Date.now();
  const expired = await buildTrail({ name: 'expired', namespace: ns, signer, start: new Date(now - 40 * DAY) });
  const recent = await buildTrail({ name: 'recent', namespace: ns, signer, start: new Date(now - DAY) });
  for (const s of [expired, recent]) await createTrail(kc, s);

  const operator = await startOperatorProcess(t, { namespace: ns, extraArgs: ['--retention-interval', '2'] });
  const { names } = operator;
  const port = operator.webhookPort;
  const logs = operator.logs();
  const poll = <T>(what: string, fn: () => Promise<T | undefined>, lines: readonly string[]): Promise<T> =>
    pollUntil(what, fn).catch((err: unknown) => {
      throw new Error(`${String(err)}\noperator logs:\n${lines.join('\n')}`, { cause: err });
    });

  const mutating = await admission.readMutatingWebhookConfiguration({ name: names.mutating });
  const webhook = mutating.webhooks?.[0];
  assert.equal(webhook?.clientConfig.url, `https://127.0.0.1:${String(port)}/mutate-pods`);
  assert.ok((webhook.clientConfig.caBundle ?? '') !== '', 'the operator put its CA into caBundle');
  assert.ok(
    webhook.namespaceSelector?.matchExpressions?.some(
      (e) => e.key === 'kubernetes.io/metadata.name' && e.operator === 'In' && e.values?.includes(ns) === true,
    ),
    'with --namespace the webhook selects only that namespace',
  );

  // The leader compiles a policy ...
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'reads' },
      spec: {
        resources: { names: ['orders-db'] },
        rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
        defaultDecision: 'deny',
      },
    },
  });
  const policy = await poll(
    'the policy to be Ready',
    async () => {
      const p = (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'accesspolicies',
        name: 'reads',
      })) as AccessPolicy;
      return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true ? p : undefined;
    },
    logs,
  );
  assert.match(policy.status?.bundle?.digest ?? '', /^sha256:/);

  // ... publishes it in the namespace's policy set, signed with the operator's key ...
  const authorityKeys = parseJwks(
    (await core.readNamespacedConfigMap({ namespace: operator.operatorNamespace, name: AUDIT_AUTHORITY_NAME })).data?.[
      AUDIT_AUTHORITY_JWKS_KEY
    ] ?? '',
  );
  const policySet = await poll(
    'the signed policy set naming the policy',
    async () => {
      const cm = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
      const set = verifyPolicySet(cm.data?.[POLICY_SET_KEY] ?? '', authorityKeys);
      return set.policies.some((p) => p.name === 'reads') ? set : undefined;
    },
    logs,
  );
  assert.deepEqual(policySet.policies, [
    { name: 'reads', configMap: 'chaperone-policy-reads', digest: policy.status?.bundle?.digest },
  ]);
  assert.equal(policySet.namespace, ns);

  // ... and the webhook injects an annotated pod, sealing the sidecar it renders.
  const pod = await core.createNamespacedPod({ namespace: ns, body: agentPod('agent', 'orders-db') });
  const sidecar = pod.spec?.initContainers?.[0];
  assert.equal(sidecar?.name, SIDECAR_CONTAINER);
  assert.equal(sidecar.restartPolicy, 'Always');
  assert.equal(sidecar.image, TEST_SIDECAR_IMAGE);
  assert.ok(pod.metadata?.annotations?.[ANNOTATION_INJECTED] !== undefined);
  assert.ok(pod.metadata.annotations[SEAL_ANNOTATION] !== undefined);
  assert.deepEqual(sealProblems(pod, ns, authorityKeys), [], 'the stored pod matches its seal');
  assert.equal(pod.spec?.automountServiceAccountToken, false);
  const agentEnv = new Map((pod.spec.containers.at(0)?.env ?? []).map((e) => [e.name, e.value]));
  assert.equal(agentEnv.get('PGHOST'), '127.0.0.1');
  assert.equal(agentEnv.get('CHAPERONE_TOKEN_FILE'), '/var/run/secrets/chaperone/token');
  assert.ok(
    logs.some((l) => l.includes('"component":"admission"')),
    'the admission server logged',
  );

  // Retention: the expired session goes, the recent one stays.
  await poll(
    'the expired Session to be pruned',
    async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
      })) as { items: Session[] };
      const left = list.items.map((s) => s.metadata.name).sort();
      return left.length === 1 && left[0] === 'recent' ? true : undefined;
    },
    logs,
  );
  assert.ok(logs.some((l) => l.includes('"msg":"pruned expired sessions"')));

  // SIGTERM: reconcilers and admission stop, the Lease is released, exit 0.
  assert.equal(await operator.terminate(), 0, `exit code; logs:\n${logs.join('\n')}`);
  assert.ok(logs.some((l) => l.includes('"msg":"operator stopped"')));
});
