// The real kubectl through the real sidecar against the real API server: what an AccessPolicy allows works
// (get, list, watch, create, server-side apply, patch, delete, auth can-i, auth whoami), what it denies
// fails with kubectl's own Forbidden error naming the policy and rule, Secrets come back masked, an approve
// rule holds nothing through (approvals are not enabled: refused), every request is one decision record with
// the Audit-ID the API server saw, and the agent's token is refused by the API server itself.
import { carriesCommandOutcome } from '@chaperone/api';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { controlPlaneEnv } from '../harness/env.ts';
import { toolPath } from '../harness/tools.ts';
import { AGENT, kubeconfigFor, RESOURCE, runKubectl, startKubeFixture, type KubeFixture } from './kube-fixture.ts';
import { join } from 'node:path';

const MASKED_DATA = Buffer.from('chaperone:masked').toString('base64');

function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'keep-keepers',
          decision: 'deny',
          match: { kubernetes: { verbs: ['delete'], resources: ['configmaps'], names: ['keep-*'] } },
          message: 'keep-* config maps stay',
        },
        {
          name: 'hold-pod-deletes',
          decision: 'approve',
          match: { kubernetes: { verbs: ['delete', 'deletecollection'], resources: ['pods'] } },
        },
        { name: 'no-exec', decision: 'deny', match: { kubernetes: { resources: ['pods'], subresources: ['exec'] } } },
        {
          name: 'work-in-namespace',
          decision: 'allow',
          match: { kubernetes: { namespaces: [namespace], resources: ['configmaps', 'secrets', 'pods'] } },
        },
        // A rule naming pods does not open their subresources (RBAC's reading, docs/policy.md).
        {
          name: 'attach-in-namespace',
          decision: 'allow',
          match: { kubernetes: { namespaces: [namespace], resources: ['pods'], subresources: ['attach'] } },
        },
      ],
      defaultDecision: 'deny',
      approval: { approverGroups: ['sre'], requiredApprovals: 1, timeout: '5m', allowSelfApproval: false },
    },
  };
}

/** Lines of a child's stdout until `predicate` holds for the text so far; then the child is stopped. */
function watchUntil(kubeconfig: string, args: string[], predicate: (text: string) => boolean): Promise<string> {
  const child = spawn(toolPath('kubectl'), ['--kubeconfig', kubeconfig, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`watch did not show what was expected in 60 s: ${out} ${err}`));
    }, 60_000);
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      if (predicate(out)) {
        clearTimeout(timer);
        child.kill();
        resolve(out);
      }
    });
    child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    child.once('exit', () => {
      clearTimeout(timer);
      if (!predicate(out)) reject(new Error(`watch ended early: ${out} ${err}`));
    });
  });
}

test('kubectl through the Kubernetes engine', async (t) => {
  const f: KubeFixture = await startKubeFixture(t, policy);
  const ns = f.namespace;

  await t.test('get, list, create, server-side apply, patch, delete work when allowed', async () => {
    const created = await f.agent(['create', 'configmap', 'alpha', '--from-literal=k=v', '-n', ns]);
    assert.equal(created.code, 0, created.stderr);
    const got = await f.agent(['get', 'configmap', 'alpha', '-n', ns, '-o', 'jsonpath={.data.k}']);
    assert.equal(got.stdout, 'v');
    const listed = await f.agent(['get', 'configmaps', '-n', ns, '-o', 'name']);
    assert.match(listed.stdout, /configmap\/alpha/);
    const applied = await f.agent(
      ['apply', '--server-side', '--field-manager=agent', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'beta', namespace: ns },
        data: { a: '1' },
      }),
    );
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(applied.stdout, /serverside-applied/);
    const patched = await f.agent(['patch', 'configmap', 'beta', '-n', ns, '--type=merge', '-p', '{"data":{"a":"2"}}']);
    assert.equal(patched.code, 0, patched.stderr);
    assert.equal(await f.admin(['get', 'configmap', 'beta', '-n', ns, '-o', 'jsonpath={.data.a}']), '2');
    const deleted = await f.agent(['delete', 'configmap', 'beta', '-n', ns]);
    assert.equal(deleted.code, 0, deleted.stderr);
    const gone = await runKubectl(controlPlaneEnv().kubeconfig, ['get', 'configmap', 'beta', '-n', ns]);
    assert.match(gone.stderr, /NotFound/);
  });

  await t.test(
    'denied requests fail with kubectl Forbidden naming the policy and rule, and change nothing',
    async () => {
      await f.admin(['create', 'configmap', 'keep-me', '-n', ns]);
      const refused = await f.agent(['delete', 'configmap', 'keep-me', '-n', ns]);
      assert.notEqual(refused.code, 0);
      assert.match(
        refused.stderr,
        /Error from server \(Forbidden\): chaperone: permission denied by policy default\/kube, rule keep-keepers: keep-\* config maps stay/,
      );
      assert.match(await f.admin(['get', 'configmap', 'keep-me', '-n', ns, '-o', 'name']), /keep-me/);
      const otherNamespace = await f.agent(['get', 'pods', '-n', 'kube-system']);
      assert.match(
        otherNamespace.stderr,
        /Error from server \(Forbidden\): chaperone: permission denied by policy default\/kube, rule default/,
      );
      const impersonating = await f.agent(['get', 'configmaps', '-n', ns, '--as=system:admin']);
      assert.match(impersonating.stderr, /Forbidden.*impersonation headers are not allowed/);
    },
  );

  await t.test(
    'an approve rule holds a pod delete; without approvals enabled it is refused and nothing is deleted',
    async () => {
      await f.admin(
        ['create', '-f', '-'],
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name: 'worker', namespace: ns },
          spec: { containers: [{ name: 'c', image: 'busybox' }] },
        }),
      );
      const held = await f.agent(['delete', 'pod', 'worker', '-n', ns, '--wait=false']);
      assert.match(held.stderr, /Forbidden.*requires approval \(policy default\/kube, rule hold-pod-deletes\)/);
      assert.match(await f.admin(['get', 'pod', 'worker', '-n', ns, '-o', 'name']), /worker/);
    },
  );

  await t.test('exec is decided before the upgrade: denied by policy with a Status kubectl prints', async () => {
    const exec = await f.agent(['exec', 'worker', '-n', ns, '--', 'true']);
    assert.notEqual(exec.code, 0);
    assert.match(exec.stderr, /chaperone: permission denied by policy default\/kube, rule no-exec/);
  });

  await t.test(
    'an allowed attach is forwarded as a WebSocket upgrade; the API server answers it (no node here)',
    async () => {
      const attach = await f.agent(['attach', 'worker', '-n', ns, '-c', 'c']);
      assert.notEqual(attach.code, 0);
      const entries = await f.sidecar.settledRecords();
      const decision = entries.find(
        (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes(`/pods/worker/attach`),
      );
      assert.ok(decision);
      assert.equal(decision.record.decision?.result, 'allow');
      const outcome = entries.find(
        (e) =>
          e.session.sessionId === decision.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === decision.record.command?.id,
      );
      assert.ok(outcome);
      // The API server, not the sidecar, refused to upgrade: the pod was never scheduled.
      assert.equal(outcome.record.outcome?.message, 'the API server did not upgrade the connection');
      assert.match(outcome.record.outcome.code ?? '', /^[45]\d\d$/);
    },
  );

  await t.test('Secrets come back masked in get, list and watch; a masked value is never written back', async () => {
    await f.admin(['create', 'secret', 'generic', 'db', '--from-literal=password=s3cret-value', '-n', ns]);
    const plain = Buffer.from('s3cret-value').toString('base64');
    const made = await f.agent([
      'create',
      'secret',
      'generic',
      'agent-made',
      '--from-literal=token=agent-secret-value',
      '-n',
      ns,
    ]);
    assert.equal(made.code, 0, made.stderr);
    assert.equal(
      await f.admin(['get', 'secret', 'agent-made', '-n', ns, '-o', 'jsonpath={.data.token}']),
      Buffer.from('agent-secret-value').toString('base64'),
    );
    const yaml = await f.agent(['get', 'secret', 'db', '-n', ns, '-o', 'yaml']);
    assert.equal(yaml.code, 0, yaml.stderr);
    assert.match(yaml.stdout, new RegExp(`password: ${MASKED_DATA}`));
    assert.ok(!yaml.stdout.includes(plain));
    const list = await f.agent(['get', 'secrets', '-n', ns, '-o', 'json']);
    assert.ok(list.stdout.includes(MASKED_DATA) && !list.stdout.includes(plain));
    const table = await f.agent(['get', 'secrets', '-n', ns]);
    assert.match(table.stdout, /db\s+Opaque\s+1/);
    const watched = await watchUntil(f.agentKubeconfig, ['get', 'secrets', '-n', ns, '-w', '-o', 'json'], (s) =>
      s.includes('"name": "db"'),
    );
    assert.ok(watched.includes(MASKED_DATA) && !watched.includes(plain));
    const decoded = await f.agent(['get', 'secret', 'db', '-n', ns, '-o', 'jsonpath={.data.password}']);
    const writeBack = await f.agent([
      'patch',
      'secret',
      'db',
      '-n',
      ns,
      '--type=merge',
      '-p',
      `{"data":{"password":"${decoded.stdout}"}}`,
    ]);
    assert.match(writeBack.stderr, /Forbidden.*masked/);
    assert.equal(await f.admin(['get', 'secret', 'db', '-n', ns, '-o', 'jsonpath={.data.password}']), plain);
  });

  await t.test('watch streams events as they happen', async () => {
    const seen = watchUntil(f.agentKubeconfig, ['get', 'configmaps', '-n', ns, '-w', '-o', 'name'], (s) =>
      s.includes('configmap/gamma'),
    );
    // The watch is established once its initial list shows; then the new object must arrive as an event.
    await new Promise((r) => setTimeout(r, 500));
    await f.admin(['create', 'configmap', 'gamma', '-n', ns]);
    assert.match(await seen, /configmap\/gamma/);
  });

  await t.test('auth can-i answers from the policy for the agent; whoami names the agent', async () => {
    const yes = await f.agent(['auth', 'can-i', 'create', 'configmaps', '-n', ns]);
    assert.equal(yes.stdout.trim(), 'yes');
    const no = await f.agent(['auth', 'can-i', 'delete', 'configmaps/keep-me', '-n', ns]);
    assert.equal(no.stdout.trim(), 'no - chaperone: denied by policy default/kube, rule keep-keepers');
    // The sidecar's credential is a namespace admin there; the agent's policy says no.
    const notInPolicy = await f.agent(['auth', 'can-i', 'create', 'deployments.apps', '-n', ns]);
    assert.equal(notInPolicy.stdout.trim(), 'no - chaperone: denied by policy default/kube, rule default');
    const whoami = await f.agent(['auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}']);
    assert.equal(whoami.stdout, AGENT);
  });

  await t.test('every request is in the trail with the Audit-ID the API server returned', async () => {
    const auditId = await new Promise<string>((resolve, reject) => {
      const req = request(
        {
          host: f.sidecar.host,
          port: f.sidecar.port,
          path: `/api/v1/namespaces/${ns}/configmaps/alpha`,
          headers: { authorization: `Bearer ${f.agentToken}` },
          ca: readFileSync(f.servingCertFile),
        },
        (res) => {
          res.resume();
          res.once('end', () => resolve(String(res.headers['audit-id'])));
        },
      );
      req.once('error', reject);
      req.end();
    });
    const entries = await f.sidecar.settledRecords();
    const records = entries.map((r) => r.record);
    const decisions = records.filter((r) => r.type === 'command.decision');
    const mine = entries.find((e) => e.record.type === 'command.decision' && e.record.command?.requestId === auditId);
    assert.ok(mine, `a decision record with requestId ${auditId}`);
    assert.match(mine.record.command?.text ?? '', new RegExp(`GET /api/v1/namespaces/${ns}/configmaps/alpha`));
    assert.equal(mine.record.decision?.rule, 'work-in-namespace');
    const outcome = entries.find(
      (e) =>
        e.session.sessionId === mine.session.sessionId &&
        carriesCommandOutcome(e.record) &&
        e.record.command?.id === mine.record.command?.id,
    );
    assert.equal(outcome?.record.outcome?.code, '200');
    for (const d of decisions) assert.match(d.command?.requestId ?? '', /^[0-9a-f-]{36}$/);
    const denied = decisions.find((r) => r.decision?.rule === 'keep-keepers');
    assert.ok(denied);
    const applied = decisions.find(
      (r) => r.command?.text?.startsWith('PATCH') === true && r.command.body?.includes('"beta"') === true,
    );
    assert.ok(applied, 'the server-side apply body is recorded');
    const secretBodies = decisions.filter(
      (r) => r.command?.text?.includes('/secrets/db') === true && r.command.body !== undefined,
    );
    assert.ok(secretBodies.length > 0);
    for (const r of secretBodies)
      assert.ok(!(r.command?.body ?? '').includes(Buffer.from('s3cret-value').toString('base64')));
    // The sidecar's credential appears nowhere it could leak.
    const everything = JSON.stringify(records) + f.sidecar.logs();
    assert.ok(!everything.includes(f.sidecarToken));
    assert.ok(!everything.includes(f.agentToken));
  });

  await t.test('the agent token is refused when sent straight to the API server', async () => {
    const cp = controlPlaneEnv();
    const direct = join(f.sidecar.dir, 'direct.kubeconfig');
    writeFileSync(direct, kubeconfigFor(cp.server, f.agentToken, cp.caFile));
    const res = await runKubectl(direct, ['get', 'configmaps', '-n', ns]);
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /Unauthorized|must be logged in/);
  });

  await t.test('requests without a valid token are refused with 401 and recorded as auth failures', async () => {
    const anonymous = join(f.sidecar.dir, 'anonymous.kubeconfig');
    writeFileSync(anonymous, kubeconfigFor(f.url, 'not-a-token', f.servingCertFile));
    const res = await runKubectl(anonymous, ['get', 'configmaps', '-n', ns]);
    assert.match(res.stderr, /Unauthorized|must be logged in/);
    const records = (await f.sidecar.settledRecords()).map((r) => r.record);
    assert.ok(records.some((r) => r.type === 'auth.failure'));
  });
});
