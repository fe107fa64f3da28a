// The admission policies of config/admission against a real API server (a private control plane, so the
// cluster-wide policies do not affect other tests): only a pod's own sidecar — its service account with a
// token bound to that pod — writes the pod's Sessions; only the retention controller deletes them; an
// approval decision names exactly the user the API server authenticated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, type ApprovalRequest, type Session } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { applyCrds, kubectl, statusOf } from '../harness/kube.ts';
import { testDir } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { createTestNode, kubeletToken } from '../harness/identities.ts';
import { buildTrail, createSigner } from './trail-fixture.ts';

const NS = 'agents';
const OPERATOR_NS = 'chaperone-system';
const OPERATOR_SA = 'chaperone-operator';

/** This test's own control plane (its kubelets' identities are signed by its CA). */
let privateControlPlane: ControlPlane | undefined;

interface Env {
  cp: ControlPlane;
  admin: k8s.KubeConfig;
}

function tokenConfig(cp: ControlPlane, token: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'private', server: cp.server, caFile: cp.caFile }],
    users: [{ name: 'token', token }],
    contexts: [{ name: 'private', cluster: 'private', user: 'token', namespace: NS }],
    currentContext: 'private',
  });
  return kc;
}

async function token(admin: k8s.KubeConfig, namespace: string, sa: string, pod?: k8s.V1Pod): Promise<string> {
  // Pod-bound tokens come from the kubelet of the pod's node (config/admission refuses anyone else).
  if (pod !== undefined) return kubeletToken(pod, undefined, privateControlPlane);
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const res = await core.createNamespacedServiceAccountToken({
    namespace,
    name: sa,
    body: {
      spec: { audiences: [], expirationSeconds: 3600 },
    },
  });
  assert.ok(res.status?.token);
  return res.status.token;
}

async function expectForbidden(what: string, call: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(call, (err) => {
    const status = statusOf(err);
    assert.ok(status, `${what}: ${String(err)}`);
    assert.equal(status.code, 403, `${what}: ${JSON.stringify(status)}`);
    assert.match(status.message ?? '', message, what);
    return true;
  });
}

const sessionsOf = (kc: k8s.KubeConfig) => kc.makeApiClient(k8s.CustomObjectsApi);
const create = (kc: k8s.KubeConfig, body: Omit<Session, 'status'>, dryRun?: string) =>
  sessionsOf(kc).createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: NS,
    plural: 'sessions',
    body,
    dryRun,
  });

test('admission protection of Sessions and approval decisions', { timeout: 300_000 }, async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const cp = await startControlPlane(dir);
  t.after(() => cp.stop());
  privateControlPlane = cp;
  const admin = new k8s.KubeConfig();
  admin.loadFromFile(cp.kubeconfig);
  await applyCrds(cp.kubeconfig);
  await kubectl(['apply', '-f', join(REPO_ROOT, 'config', 'admission')], { kubeconfig: cp.kubeconfig });
  const env: Env = { cp, admin };

  // The namespaces, the sidecar's service account with RBAC to write Sessions, two pods (stored, never run).
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  for (const name of [NS, OPERATOR_NS]) await core.createNamespace({ body: { metadata: { name } } });
  await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'agent' } } });
  await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'approver' } } });
  await core.createNamespacedServiceAccount({ namespace: OPERATOR_NS, body: { metadata: { name: OPERATOR_SA } } });
  await rbac.createNamespacedRole({
    namespace: NS,
    body: {
      metadata: { name: 'audit-writer' },
      rules: [
        {
          apiGroups: [GROUP],
          resources: ['sessions', 'sessions/status', 'approvalrequests', 'approvalrequests/status'],
          // delete is granted on purpose: the admission policy, not RBAC, is what must refuse it.
          verbs: ['get', 'list', 'create', 'update', 'patch', 'delete'],
        },
      ],
    },
  });
  const subjects = [
    { kind: 'ServiceAccount', name: 'agent', namespace: NS },
    { kind: 'ServiceAccount', name: 'approver', namespace: NS },
    { kind: 'ServiceAccount', name: OPERATOR_SA, namespace: OPERATOR_NS },
  ];
  await rbac.createNamespacedRoleBinding({
    namespace: NS,
    body: {
      metadata: { name: 'audit-writer' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'audit-writer' },
      subjects,
    },
  });
  // The pods are bound to this Node: it must exist (createTestNode says why).
  await createTestNode(core, t, 'node-agents');
  const podBody = (name: string): k8s.V1Pod => ({
    metadata: { name },
    spec: {
      serviceAccountName: 'agent',
      nodeName: 'node-agents',
      containers: [{ name: 'agent', image: 'example.invalid/agent:1' }],
    },
  });
  const podA = await core.createNamespacedPod({ namespace: NS, body: podBody('agent-a') });
  const podB = await core.createNamespacedPod({ namespace: NS, body: podBody('agent-b') });

  const signer = await createSigner();
  const trail = async (name: string, pod: k8s.V1Pod, uid = pod.metadata?.uid, closed = true) => {
    const [s] = await buildTrail({
      name,
      namespace: NS,
      signer,
      pod: { name: pod.metadata?.name ?? '', uid },
      closed,
    });
    const { status: _status, ...body } = s!;
    return body;
  };

  // Policies are enforced once the API server has loaded and type-checked them.
  const probe = await trail('probe', podA);
  await poll('the admission policies to be enforced', () =>
    create(admin, probe, 'All').then(
      () => undefined,
      (err: unknown) => (statusOf(err)?.code === 403 ? true : undefined),
    ),
  );

  const sidecarA = tokenConfig(env.cp, await token(admin, NS, 'agent', podA));

  await t.test("the pod's sidecar writes and appends to its own Session", async () => {
    // Still open: nothing may follow a session.end (the CRD refuses it), so the append comes before it.
    const body = await trail('a-1', podA, podA.metadata?.uid, false);
    await create(sidecarA, body);
    const [longer] = await buildTrail({
      name: 'a-1',
      namespace: NS,
      signer,
      pod: body.spec.pod,
      commands: [{ text: 'select 1' }, { text: 'select 2' }],
    });
    // Same session id and records prefix as the stored object: append by replacing the whole spec.
    const stored = (await sessionsOf(sidecarA).getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: 'sessions',
      name: 'a-1',
    })) as Session;
    assert.ok(longer);
    stored.spec.records = [...stored.spec.records, ...longer.spec.records.slice(stored.spec.records.length)];
    // The CRD's CEL rules only check order and append-only; the chain itself is the verifier's business.
    await sessionsOf(sidecarA).replaceNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: 'sessions',
      name: 'a-1',
      body: stored,
    });
    await sessionsOf(sidecarA).patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: 'sessions',
        name: 'a-1',
        body: { status: { phase: 'Active', counters: { commands: 1, allowed: 1, denied: 0, held: 0, errors: 0 } } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
  });

  await t.test("the same sidecar cannot write another pod's Session", async () => {
    await expectForbidden('other pod name', create(sidecarA, await trail('b-1', podB)), /bound to pod agent-a/);
    await expectForbidden(
      'own pod name, wrong uid',
      create(sidecarA, await trail('a-uid', podA, podB.metadata?.uid)),
      /spec\.pod\.uid does not match/,
    );
  });

  await t.test('a token not bound to a pod, an admin and another namespace cannot write Sessions', async () => {
    const unbound = tokenConfig(env.cp, await token(admin, NS, 'agent'));
    await expectForbidden('unbound token', create(unbound, await trail('u-1', podA)), /not bound to a pod/);
    await expectForbidden('admin', create(admin, await trail('adm-1', podA)), /is not a service account/);
    const operator = tokenConfig(env.cp, await token(admin, OPERATOR_NS, OPERATOR_SA));
    await expectForbidden(
      'operator',
      create(operator, await trail('op-1', podA)),
      /not a service account of namespace agents/,
    );
  });

  await t.test('only the retention controller deletes Sessions', async () => {
    const del = (kc: k8s.KubeConfig) =>
      sessionsOf(kc).deleteNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: 'sessions',
        name: 'a-1',
      });
    await expectForbidden('sidecar delete', del(sidecarA), /only the retention controller/);
    await expectForbidden('admin delete', del(admin), /only the retention controller/);
    const operator = tokenConfig(env.cp, await token(admin, OPERATOR_NS, OPERATOR_SA));
    await del(operator);
  });

  await t.test('an approval decision carries the authenticated approver, not a typed one', async () => {
    const ar: ApprovalRequest = {
      apiVersion: API_VERSION,
      kind: 'ApprovalRequest',
      metadata: { name: 'drop-orders' },
      spec: {
        resource: 'orders-db',
        session: 'a-1',
        requester: { subject: 'chaperone:agent:report-writer', issuer: 'https://issuer.test' },
        command: { kind: 'sql', text: 'drop table orders' },
        policy: { name: 'default/orders', rule: 'ddl' },
        requiredApprovals: 1,
        allowSelfApproval: false,
        expiresTime: new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z'),
      },
    };
    // Filed by the sidecar holding the command, as the sidecar would.
    const client = sessionsOf(sidecarA);
    await client.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: 'approvalrequests',
      body: ar,
    });
    const approver = tokenConfig(env.cp, await token(admin, NS, 'approver'));
    const me = `system:serviceaccount:${NS}:approver`;
    const decide = (kc: k8s.KubeConfig, decisions: unknown[]) =>
      sessionsOf(kc).patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: NS,
          plural: 'approvalrequests',
          name: 'drop-orders',
          body: { status: { phase: 'Pending', decisions } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    const at = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const forged = { approver: { username: 'alice@example.com' }, decision: 'approve', time: at };
    await expectForbidden('forged approver', decide(approver, [forged]), /not alice@example\.com/);
    await expectForbidden('admin forging', decide(admin, [forged]), /not alice@example\.com/);
    await expectForbidden(
      'forged groups',
      decide(approver, [{ approver: { username: me, groups: ['system:masters'] }, decision: 'approve', time: at }]),
      /approver\.groups/,
    );
    const genuine = { approver: { username: me }, decision: 'approve', time: at };
    await decide(approver, [genuine]);
    // The sidecar may then move the phase on without adding decisions.
    const sidecarUpdate = await sessionsOf(sidecarA).patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: 'approvalrequests',
        name: 'drop-orders',
        body: { status: { phase: 'Approved' } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    assert.equal((sidecarUpdate as ApprovalRequest).status?.decisions?.[0]?.approver.username, me);
  });

  writeFileSync(join(dir, 'done'), '');
});
