// Approval decisions (issue 17): admission enforces who may decide a held command, not only that a
// decision names its author. Real users (client certificates with their groups) decide ApprovalRequests
// that the sidecar filed with its pod-bound token: only the request's approvers or members of its
// approverGroups may decide, never the requester or anyone in its delegation chain unless
// allowSelfApproval, each approver once, and only while the request is Pending. Nobody but a sidecar
// files a request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, type ApprovalRequest } from '@chaperone/api';
import { controlPlaneEnv } from '../harness/env.ts';
import { clientIdentity, kubeletToken, type TestIdentity } from '../harness/identities.ts';
import { poll } from '../harness/poll.ts';
import { api, refusal, startTrustFixture } from './trust-fixture.ts';

const plural = 'approvalrequests';
const at = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

function request(name: string, ns: string, spec: Partial<ApprovalRequest['spec']>): ApprovalRequest {
  return {
    apiVersion: API_VERSION,
    kind: 'ApprovalRequest',
    metadata: { name, namespace: ns },
    spec: {
      resource: 'orders-db',
      session: 'orders-db-abc-0',
      requester: {
        subject: `system:serviceaccount:${ns}:default`,
        issuer: controlPlaneEnv().issuer,
        chain: [{ subject: 'alice@example.com', kind: 'human' }],
      },
      command: { kind: 'sql', text: 'drop table orders' },
      policy: { name: `${ns}/orders`, rule: 'ddl' },
      requiredApprovals: 1,
      allowSelfApproval: false,
      expiresTime: new Date(Date.now() + 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z'),
      ...spec,
    },
  };
}

test('approval decisions: approverGroups, approvers, self-approval, once each, only while Pending', async (t) => {
  const fx = await startTrustFixture(t);
  const { ns } = fx;
  const rbac = fx.admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  const users: Record<string, TestIdentity> = {
    alice: await clientIdentity('alice@example.com', ['dba']),
    bob: await clientIdentity('bob@example.com', ['developers']),
    carol: await clientIdentity('carol@example.com', []),
    dave: await clientIdentity('dave@example.com', ['dba']),
    erin: await clientIdentity('erin@example.com', ['dba']),
  };
  // Every one of them may update decisions as far as RBAC goes: admission is what must decide.
  await rbac.createNamespacedRole({
    namespace: ns,
    body: {
      metadata: { name: 'deciders' },
      rules: [
        { apiGroups: [GROUP], resources: [plural], verbs: ['get', 'list', 'create'] },
        { apiGroups: [GROUP], resources: [`${plural}/status`], verbs: ['get', 'update', 'patch'] },
      ],
    },
  });
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: {
      metadata: { name: 'deciders' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'deciders' },
      subjects: [...Object.values(users), fx.editor].map((u) => ({
        kind: 'User',
        apiGroup: 'rbac.authorization.k8s.io',
        name: u.user,
      })),
    },
  });

  // The API server loads admission policies one at a time and asynchronously; the fixture waits for the
  // pod-bound token policy only. Wait until this one refuses the editor too (a probe that got through is
  // deleted), or the first steps below race its loading.
  const adminCustom = fx.admin.makeApiClient(k8s.CustomObjectsApi);
  let probes = 0;
  await poll(
    'the approval decisions policy to refuse an editor filing a request',
    async () => {
      const name = `probe-${String(++probes)}`;
      const status = await refusal(
        api(fx.editor, k8s.CustomObjectsApi).createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural,
          body: request(name, ns, {}),
        }),
      ).catch(() => undefined);
      if (status === undefined) {
        await adminCustom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: ns, plural, name });
        return undefined;
      }
      return status.code === 403 && /filed by the sidecar/.test(status.message ?? '') ? true : undefined;
    },
    60_000,
  );

  // The sidecar files the requests, with the pod-bound token its kubelet projects.
  const pod = await fx.injectedPod(ns, 'agent');
  const sidecarKc = new k8s.KubeConfig();
  sidecarKc.loadFromOptions({
    clusters: [{ name: 'test', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
    users: [{ name: 'sidecar', token: await kubeletToken(pod, undefined) }],
    contexts: [{ name: 'test', cluster: 'test', user: 'sidecar' }],
    currentContext: 'test',
  });
  const sidecar = sidecarKc.makeApiClient(k8s.CustomObjectsApi);
  const file = (body: ApprovalRequest) =>
    poll(`the sidecar to file ${body.metadata.name ?? ''} (its Role is bound once the pod is attested)`, () =>
      sidecar
        .createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: ns, plural, body })
        .then(() => true),
    );

  const decide = (who: TestIdentity, name: string, decisions: unknown[]) =>
    api(who, k8s.CustomObjectsApi).patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural,
        name,
        body: { status: { phase: 'Pending', decisions } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
  const current = async (name: string) =>
    (
      (await fx.custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural,
        name,
      })) as ApprovalRequest
    ).status?.decisions ?? [];
  // Each decision distinct (a comment), so that one repeated within the same second is still an addition.
  let made = 0;
  const decision = (username: string, groups?: string[]) => ({
    approver: { username, ...(groups === undefined ? {} : { groups }) },
    decision: 'approve',
    time: at(),
    comment: `decision ${String(++made)}`,
  });

  await t.test('only a sidecar files a request, and without decisions', async () => {
    const byEditor = await refusal(
      api(fx.editor, k8s.CustomObjectsApi).createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural,
        body: request('by-editor', ns, {}),
      }),
    );
    assert.equal(byEditor.code, 403);
    assert.match(byEditor.message ?? '', /filed by the sidecar holding the command/);
    // Decisions sent along with the request are not kept (status is a subresource): none to forge.
    const prefilled = request('dba-only', ns, { approverGroups: ['dba'] });
    prefilled.status = { phase: 'Approved', decisions: [decision('dave@example.com')] as never };
    await file(prefilled);
    assert.deepEqual(await current('dba-only'), []);
  });

  await t.test('approverGroups: outsiders and the requester chain are refused, a member decides once', async () => {
    const outsider = await refusal(decide(users.bob!, 'dba-only', [decision('bob@example.com')]));
    assert.equal(outsider.code, 403);
    assert.match(
      outsider.message ?? '',
      /neither among the approvers of the request nor in its approverGroups \(dba\)/,
    );
    // alice is in dba, but she is in the delegation chain of the requester.
    const self = await refusal(decide(users.alice!, 'dba-only', [decision('alice@example.com')]));
    assert.equal(self.code, 403);
    assert.match(self.message ?? '', /allowSelfApproval is false/);
    // Claiming a group one does not have changes nothing.
    const claimed = await refusal(decide(users.bob!, 'dba-only', [decision('bob@example.com', ['dba'])]));
    assert.equal(claimed.code, 403);
    // Two decisions of one approver in one update count once: refused too.
    const double = await refusal(
      decide(users.dave!, 'dba-only', [decision('dave@example.com'), decision('dave@example.com')]),
    );
    assert.equal(double.code, 403);
    assert.match(double.message ?? '', /decides a request once/);
    await decide(users.dave!, 'dba-only', [decision('dave@example.com')]);
    const before = await current('dba-only');
    const twice = await refusal(decide(users.dave!, 'dba-only', [...before, decision('dave@example.com')]));
    assert.equal(twice.code, 403);
    assert.match(twice.message ?? '', /decides a request once/);
    // Another member after dave: fine while Pending.
    await decide(users.erin!, 'dba-only', [...before, decision('erin@example.com')]);
    assert.deepEqual(
      (await current('dba-only')).map((d) => d.approver.username),
      ['dave@example.com', 'erin@example.com'],
    );
  });

  await t.test('no decision is added once the request is decided', async () => {
    // Only the sidecar sets the phase; an administrator cannot (nor the requester, nor an approver).
    const byAdmin = await refusal(
      fx.custom.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural,
          name: 'dba-only',
          body: { status: { phase: 'Approved' } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      ),
    );
    assert.equal(byAdmin.code, 403);
    assert.match(byAdmin.message ?? '', /only the sidecar holding the command sets the phase/);
    await sidecar.patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural,
        name: 'dba-only',
        body: { status: { phase: 'Approved' } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    const existing = await current('dba-only');
    const late = await refusal(
      api(users.alice!, k8s.CustomObjectsApi).patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural,
          name: 'dba-only',
          body: { status: { decisions: [...existing, decision('alice@example.com')] } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      ),
    );
    assert.equal(late.code, 403);
    // A final phase stays final, even for the sidecar.
    const reopened = await refusal(
      sidecar.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural,
          name: 'dba-only',
          body: { status: { phase: 'Pending' } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      ),
    );
    assert.equal(reopened.code, 403);
    assert.match(reopened.message ?? '', /a final phase does not change/);
  });

  await t.test('approvers by name, and self-approval when the request allows it', async () => {
    await file(
      request('carol-only', ns, {
        approvers: ['carol@example.com'],
        allowSelfApproval: true,
        requester: { subject: 'carol@example.com', issuer: 'https://sso.example.com' },
      }),
    );
    const dave = await refusal(decide(users.dave!, 'carol-only', [decision('dave@example.com')]));
    assert.equal(dave.code, 403);
    await decide(users.carol!, 'carol-only', [decision('carol@example.com')]);
    assert.deepEqual(
      (await current('carol-only')).map((d) => d.approver.username),
      ['carol@example.com'],
    );
    // A decision naming someone else than its author is refused, as before.
    const existing = await current('carol-only');
    const forged = await refusal(
      decide(users.erin!, 'carol-only', [...existing, { ...decision('carol@example.com'), decision: 'deny' }]),
    );
    assert.equal(forged.code, 403);
    assert.match(forged.message ?? '', /as the API server authenticated them \(erin@example\.com\)/);
  });
});
