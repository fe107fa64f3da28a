// Approval holds in the Kubernetes engine (issues 13 and 15), all real: the real kubectl deletes a ConfigMap
// in a protected namespace through the sidecar; the approve rule holds the DELETE while the sidecar files an
// ApprovalRequest with its own pod-bound token; a person decides it with `kubectl chaperone approve|deny`
// against the real API server; approved, the delete reaches the API server exactly once and kubectl reports
// it; denied, kubectl prints the 403 Status and the ConfigMap stays. The trail holds the decision, the
// approval.requested and approval.decided records with the same binding hash, and the outcome. kubectl
// killed while held cancels the request, and approving it afterwards deletes nothing.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect as connectTls, type TLSSocket } from 'node:tls';
import type { AccessPolicySpec } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { kubectl } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { toolPath } from '../harness/tools.ts';
import { runKubectl } from '../kubernetes/kube-fixture.ts';
import { createApprovalWorld } from './approval-fixture.ts';

const RESOURCE = 'cluster-api';
const AGENT = 'system:serviceaccount:agents:deploy-bot';

function policies(ns: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'hold-deletes',
          decision: 'approve',
          match: { kubernetes: { verbs: ['delete'], namespaces: [ns], resources: ['configmaps'] } },
          message: 'deletes in this namespace need a second person',
        },
        { name: 'work', decision: 'allow', match: { kubernetes: { namespaces: [ns], resources: ['configmaps'] } } },
        {
          name: 'hold-exec',
          decision: 'approve',
          match: { kubernetes: { namespaces: [ns], resources: ['pods'], subresources: ['exec'] } },
        },
        {
          name: 'read-pods',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get'], namespaces: [ns], resources: ['pods'] } },
        },
      ],
      defaultDecision: 'deny',
      approval: {
        approverGroups: ['dba'],
        requiredApprovals: 1,
        timeout: '5m',
        allowSelfApproval: false,
        grants: { scopes: ['fingerprint', 'resource'], maxDuration: '10m' },
      },
    },
  };
}

test('a delete in a protected namespace waits for approval through the Kubernetes engine', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people, pod } = world;
  const dir = join(testDir(t), 'kube-sidecar');
  mkdirSync(dir, { recursive: true });
  // The sidecar's upstream credential: a service account with `admin` in this namespace only.
  await kubectl(['create', 'serviceaccount', 'kube-upstream', '-n', ns]);
  await kubectl([
    'create',
    'rolebinding',
    'kube-upstream',
    '--clusterrole=admin',
    `--serviceaccount=${ns}:kube-upstream`,
    '-n',
    ns,
  ]);
  const upstreamToken = join(dir, 'upstream-token');
  writeFileSync(upstreamToken, (await kubectl(['create', 'token', 'kube-upstream', '-n', ns, '--duration=1h'])).trim());
  const podToken = join(dir, 'pod-token');
  writeFileSync(podToken, await kubeletToken(pod, undefined));
  const cp = controlPlaneEnv();
  const access = { server: cp.server, tokenFile: podToken, caFile: cp.caFile };
  const agentTokenFile = join(dir, 'agent-token');
  const agentKubeconfig = join(dir, 'agent.kubeconfig');
  const sidecar = await spawnSidecar({
    dir,
    policies: policies(ns),
    policyNamespace: ns,
    listeners: [
      {
        name: RESOURCE,
        type: 'kubernetes',
        listen: '127.0.0.1:0',
        tls: { selfSignedCertFile: join(dir, 'serving.crt') },
        agentKubeconfig: { path: agentKubeconfig, tokenFile: agentTokenFile },
        upstream: { url: cp.server, tls: { mode: 'verify-full', caFile: cp.caFile }, tokenFile: upstreamToken },
        resource: { namespace: ns, labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
    pod: { namespace: ns, name: pod.metadata?.name ?? '', uid: pod.metadata?.uid ?? '' },
    approvals: { kubernetes: { ...access, namespace: ns } },
    logLevel: 'debug',
  });
  t.after(() => sidecar.stop());
  writeFileSync(agentTokenFile, await sidecar.issuer.sign({ sub: AGENT }));
  const agent = (args: string[]) => runKubectl(agentKubeconfig, args);
  const cli = (args: string[]) => runCli([...args, '--kubeconfig', people.carol.kubeconfig]);

  /** The pending ApprovalRequest whose request line names `configMap`, once the sidecar filed it. */
  const pendingFor = (configMap: string) =>
    poll('the ApprovalRequest of the held delete', async () => {
      return (await world.requests()).find(
        (r) => r.spec.command.kind === 'kubernetes' && r.spec.command.text.includes(`/configmaps/${configMap}`),
      );
    });
  const exists = async (name: string) =>
    (await runKubectl(cp.kubeconfig, ['get', 'configmap', name, '-n', ns, '-o', 'name'])).code === 0;

  await t.test('approved: the held delete proceeds, once', async () => {
    await kubectl(['create', 'configmap', 'doomed', '-n', ns, '--from-literal=a=1']);
    const deleting = agent(['delete', 'configmap', 'doomed', '-n', ns, '--wait=false']);
    const request = await pendingFor('doomed');
    assert.equal(request.spec.policy.rule, 'hold-deletes');
    assert.match(request.spec.command.text, new RegExp(`^DELETE /api/v1/namespaces/${ns}/configmaps/doomed`));
    assert.equal(request.spec.requester.subject, AGENT);
    // Held: the ConfigMap is still there while nobody has decided.
    assert.equal(await exists('doomed'), true);
    const approved = await cli(['approve', request.metadata.name ?? '', '-n', ns, '--comment', 'cleanup']);
    assert.equal(approved.code, 0, approved.stderr);
    const result = await deleting;
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /configmap "doomed" deleted/);
    assert.equal(await exists('doomed'), false);

    const records = await poll('the approved delete in the trail', async () => {
      const all = (await sidecar.settledRecords()).map((r) => r.record);
      const decided = all.find((r) => r.type === 'approval.decided' && r.approval?.request === request.metadata.name);
      const outcome = all.find((r) => r.type === 'command.outcome' && r.approval?.request === request.metadata.name);
      return decided !== undefined && outcome !== undefined ? all : undefined;
    });
    const name = request.metadata.name;
    const requested = records.find((r) => r.type === 'approval.requested' && r.approval?.request === name);
    const decided = records.find((r) => r.type === 'approval.decided' && r.approval?.request === name);
    const outcomes = records.filter((r) => r.type === 'command.outcome' && r.approval?.request === name);
    assert.equal(requested?.approval?.phase, 'Pending');
    assert.equal(decided?.approval?.phase, 'Approved');
    assert.equal(decided.approval.bindingHash, requested.approval.bindingHash);
    assert.equal(request.spec.bindingHash, requested.approval.bindingHash);
    assert.deepEqual(
      decided.approval.decisions?.map((d) => [d.approver, d.decision]),
      [['carol@example.com', 'approve']],
    );
    assert.equal(outcomes.length, 1, 'the delete ran exactly once');
    assert.equal(outcomes[0]?.outcome?.status, 'success');
    assert.equal(outcomes[0].outcome.code, '200');
    const decision = records.find((r) => r.type === 'command.decision' && r.command?.id === requested.command?.id);
    assert.equal(decision?.decision?.result, 'approve');
    assert.match(decision.command?.requestId ?? '', /^[0-9a-f-]{36}$/, 'the Audit-ID is recorded');
  });

  await t.test('denied: kubectl prints the 403 Status and the ConfigMap stays', async () => {
    await kubectl(['create', 'configmap', 'keeper', '-n', ns, '--from-literal=a=1']);
    const deleting = agent(['delete', 'configmap', 'keeper', '-n', ns, '--wait=false']);
    const request = await pendingFor('keeper');
    const denied = await cli(['deny', request.metadata.name ?? '', '-n', ns, '--comment', 'not today']);
    assert.equal(denied.code, 0, denied.stderr);
    const result = await deleting;
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /Error from server \(Forbidden\)/);
    assert.match(
      result.stderr,
      new RegExp(`approval request ${request.metadata.name ?? ''} was denied by carol@example.com`),
    );
    assert.equal(await exists('keeper'), true);
    const entries = await poll('the denied delete in the trail', async () => {
      const all = await sidecar.settledRecords();
      const decided = all.find(
        (e) => e.record.type === 'approval.decided' && e.record.approval?.request === request.metadata.name,
      );
      if (decided === undefined) return undefined;
      // Command ids count per session: the outcome of this command is in the decided record's session.
      const outcome = all.find(
        (e) =>
          e.session.sessionId === decided.session.sessionId &&
          e.record.type === 'command.outcome' &&
          e.record.command?.id === decided.record.command?.id,
      );
      return outcome === undefined ? undefined : { decided: decided.record, outcome: outcome.record };
    });
    assert.equal(entries.decided.approval?.phase, 'Denied');
    const outcome = entries.outcome;
    assert.equal(outcome.outcome?.status, 'denied');
    assert.equal(outcome.outcome.code, '403');
  });

  await t.test('kubectl going away while held withdraws the request; nothing is deleted', async () => {
    await kubectl(['create', 'configmap', 'abandoned', '-n', ns, '--from-literal=a=1']);
    const child = spawn(toolPath('kubectl'), [
      '--kubeconfig',
      agentKubeconfig,
      'delete',
      'configmap',
      'abandoned',
      '-n',
      ns,
      '--wait=false',
    ]);
    const exited = new Promise((resolve) => child.once('close', resolve));
    const request = await pendingFor('abandoned');
    child.kill('SIGKILL');
    await exited;
    const settled = await poll('the request to be cancelled', async () => {
      const current = await world.request(request.metadata.name ?? '');
      return current.status?.phase === 'Cancelled' ? current : undefined;
    });
    assert.equal(settled.status?.phase, 'Cancelled');
    // Approving it now forwards nothing: the request is settled and its connection is gone.
    await cli(['approve', request.metadata.name ?? '', '-n', ns]);
    await poll('the cancelled hold in the trail', async () => {
      const all = (await sidecar.settledRecords()).map((e) => e.record);
      const decided = all.find((r) => r.type === 'approval.decided' && r.approval?.request === request.metadata.name);
      return decided?.approval?.phase === 'Cancelled' ? decided : undefined;
    });
    assert.equal(await exists('abandoned'), true);
  });

  await t.test('pipelined held deletes: the client going away withdraws each; nothing is deleted', async () => {
    await kubectl(['create', 'configmap', 'piped-1', '-n', ns, '--from-literal=a=1']);
    await kubectl(['create', 'configmap', 'piped-2', '-n', ns, '--from-literal=a=1']);
    const token = readFileSync(agentTokenFile, 'utf8');
    const del = (name: string) =>
      `DELETE /api/v1/namespaces/${ns}/configmaps/${name} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\n\r\n`;
    const socket = await new Promise<TLSSocket>((resolve, reject) => {
      const s = connectTls(
        { host: sidecar.host, port: sidecar.port, ca: readFileSync(join(dir, 'serving.crt')), servername: 'localhost' },
        () => resolve(s),
      );
      s.once('error', reject);
    });
    // The second delete's response waits behind the first: it is not attached to the connection while held.
    socket.write(del('piped-1') + del('piped-2'));
    const first = await pendingFor('piped-1');
    const second = await pendingFor('piped-2');
    socket.destroy();
    for (const request of [first, second]) {
      const settled = await poll(`${request.metadata.name ?? ''} to be cancelled`, async () => {
        const current = await world.request(request.metadata.name ?? '');
        return current.status?.phase === 'Cancelled' ? current : undefined;
      });
      assert.equal(settled.status?.phase, 'Cancelled');
      // Approving it now forwards nothing: the request is settled and its connection is gone.
      await cli(['approve', request.metadata.name ?? '', '-n', ns]);
    }
    const outcomes = await poll('both outcomes in the trail', async () => {
      const entries = await sidecar.settledRecords();
      const sessionId = entries.find(
        (e) => e.record.type === 'approval.requested' && e.record.approval?.request === second.metadata.name,
      )?.session.sessionId;
      const mine = entries.filter((e) => e.session.sessionId === sessionId).map((e) => e.record);
      const decisions = mine.filter((r) => r.type === 'command.decision');
      const found = decisions.map((d) => [
        ...(d.outcome === undefined ? [] : [d.outcome]),
        ...mine.filter((r) => r.type === 'command.outcome' && r.command?.id === d.command?.id).map((r) => r.outcome),
      ]);
      return decisions.length === 2 && found.every((o) => o.length > 0) ? found : undefined;
    });
    for (const found of outcomes) {
      assert.equal(found.length, 1, JSON.stringify(outcomes));
      assert.equal(found[0]?.status, 'denied');
      assert.equal(found[0].code, '499');
    }
    assert.equal(await exists('piped-1'), true);
    assert.equal(await exists('piped-2'), true);
  });

  await t.test('exec is held before the upgrade: denied, nothing is forwarded; approved, forwarded once', async () => {
    const podName = pod.metadata?.name ?? '';
    const pendingExec = (after: readonly string[]) =>
      poll('the ApprovalRequest of the held exec', async () => {
        return (await world.requests()).find(
          (r) => r.spec.command.text.includes(`/pods/${podName}/exec`) && !after.includes(r.metadata.name ?? ''),
        );
      });
    const outcomesOf = async (name: string) =>
      (await sidecar.settledRecords())
        .map((e) => e.record)
        .filter((r) => r.type === 'command.outcome' && r.approval?.request === name);

    const denied = agent(['exec', podName, '-n', ns, '-c', 'agent', '--', 'rm', '-rf', '/data']);
    const first = await pendingExec([]);
    const firstName = first.metadata.name ?? '';
    assert.equal(first.spec.policy.rule, 'hold-exec');
    assert.match(first.spec.command.text, /command=rm/, 'the approval names the command it runs');
    assert.equal((await cli(['deny', firstName, '-n', ns, '--comment', 'no'])).code, 0);
    const deniedRun = await denied;
    t.diagnostic(`kubectl after the denial: ${deniedRun.stderr.trim()}`);
    assert.notEqual(deniedRun.code, 0);
    assert.deepEqual(await outcomesOf(firstName), [], 'nothing ran under the denied request');

    const approvedRun = agent(['exec', podName, '-n', ns, '-c', 'agent', '--', 'true']);
    const second = await pendingExec([firstName]);
    const secondName = second.metadata.name ?? '';
    assert.equal((await cli(['approve', secondName, '-n', ns])).code, 0);
    const result = await approvedRun;
    t.diagnostic(`kubectl after the approval: ${result.stderr.trim()}`);
    // Forwarded: the API server answers it (no kubelet runs for this pod's node), once.
    const outcomes = await poll('the forwarded exec in the trail', async () => {
      const found = await outcomesOf(secondName);
      return found.length > 0 ? found : undefined;
    });
    assert.equal(outcomes.length, 1, 'forwarded exactly once');
    // The API server's own answer (no kubelet serves this pod), not a refusal by the sidecar.
    assert.match(outcomes[0]?.outcome?.message ?? '', /the API server did not upgrade the connection/);
    assert.notEqual(outcomes[0]?.outcome?.code, '403');
    assert.equal((await world.request(secondName)).status?.phase, 'Approved');
    assert.equal((await world.request(firstName)).status?.phase, 'Denied');
    // kubectl then falls back to SPDY, which the sidecar refuses without filing anything (docs/approvals.md).
    assert.notEqual(result.code, 0);
    const execs = (await world.requests()).filter((r) => r.spec.command.text.includes(`/pods/${podName}/exec`));
    assert.equal(execs.length, 2, 'one request per exec, none for the SPDY fallbacks');
  });

  await t.test('a resource grant: later deletes run unheld until it is revoked', async () => {
    for (const name of ['granted-1', 'granted-2', 'granted-3']) {
      await kubectl(['create', 'configmap', name, '-n', ns, '--from-literal=a=1']);
    }
    const first = agent(['delete', 'configmap', 'granted-1', '-n', ns, '--wait=false']);
    const request = await pendingFor('granted-1');
    const name = request.metadata.name ?? '';
    const approved = await cli(['approve', name, '-n', ns, '--for', '5m', '--scope', 'resource']);
    assert.equal(approved.code, 0, approved.stderr);
    assert.equal((await first).code, 0);
    // Another object, a new kubectl run: deleted at once, and no request names it.
    const second = await agent(['delete', 'configmap', 'granted-2', '-n', ns, '--wait=false']);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(await exists('granted-2'), false);
    assert.equal(
      (await world.requests()).filter((r) => r.spec.command.text.includes('/configmaps/granted-2')).length,
      0,
    );
    const used = await poll('the delete under the grant in the trail', async () => {
      const all = (await sidecar.settledRecords()).map((e) => e.record);
      return all.find(
        (r) =>
          r.type === 'approval.decided' &&
          r.approval?.request === name &&
          r.approval.bindingHash !== request.spec.bindingHash,
      );
    });
    assert.deepEqual(used.approval?.grant?.scopes, ['resource']);
    assert.deepEqual(
      used.approval.decisions?.map((d) => d.approver),
      ['carol@example.com'],
    );

    assert.equal((await cli(['revoke', name, '-n', ns])).code, 0);
    await poll('the grant to be revoked', async () =>
      (await world.request(name)).status?.grant?.endReason === 'Revoked' ? true : undefined,
    );
    const third = agent(['delete', 'configmap', 'granted-3', '-n', ns, '--wait=false']);
    const held = await pendingFor('granted-3');
    assert.equal(await exists('granted-3'), true);
    assert.equal((await cli(['deny', held.metadata.name ?? '', '-n', ns])).code, 0);
    assert.notEqual((await third).code, 0);
    assert.equal(await exists('granted-3'), true);
  });
});
