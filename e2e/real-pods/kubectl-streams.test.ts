// `kubectl logs`, `kubectl logs -f` and `kubectl exec -i` through the Kubernetes engine, against a pod that
// really runs: the
// local node (e2e/harness/node.ts: containerd and a kubelet joined to the harness's control plane) runs a
// pod of the agent image that prints a numbered line every second. The API server reads logs from the
// kubelet; the sidecar (e2e/kubernetes/kube-fixture.ts, the real kubectl as the agent) decides
// `get pods/log` by policy, forwards it and streams `-f` chunk by chunk. Checked: the lines arrive (the
// follower sees lines the pod printed after kubectl started, so the stream is live, not a buffered
// body), a denied pod's logs are Forbidden, and each request is recorded with its Audit-ID, the follow
// ending `cancelled` when kubectl goes away. An exec over WebSocket v5 (kubectl's default) records what was
// typed and printed in its outcome, bounded and masked by the policy's detectors.
import { carriesCommandOutcome } from '@chaperone/api';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { AccessPolicySpec } from '@chaperone/api';
import { ENV, controlPlaneEnv } from '../harness/env.ts';
import {
  LOCAL_NODE_NAME,
  LOCAL_NODE_TOLERATION,
  builtImageRef,
  startLocalNode,
  type LocalNode,
} from '../harness/node.ts';
import { poll } from '../harness/poll.ts';
import { toolPath } from '../harness/tools.ts';
import { RESOURCE, startKubeFixture } from '../kubernetes/kube-fixture.ts';

let node: LocalNode | undefined;
before(async () => {
  const cp = controlPlaneEnv();
  node = await startLocalNode({
    runDir: process.env[ENV.runDir] ?? '',
    controlPlane: { kubeconfig: cp.kubeconfig, server: cp.server, caFile: cp.caFile },
  });
});
after(async () => {
  await node?.stop();
});

function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        { name: 'quiet-pods', decision: 'deny', match: { kubernetes: { names: ['quiet'], subresources: ['log'] } } },
        {
          name: 'exec-counter',
          decision: 'allow',
          match: { kubernetes: { verbs: ['create'], resources: ['pods'], subresources: ['exec'], names: ['counter'] } },
        },
        {
          name: 'read-pods',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get', 'list'], resources: ['pods'], namespaces: [namespace] } },
        },
        // A rule naming pods does not open their subresources (RBAC's reading, docs/policy.md).
        {
          name: 'read-logs',
          decision: 'allow',
          match: {
            kubernetes: { verbs: ['get'], resources: ['pods'], subresources: ['log'], namespaces: [namespace] },
          },
        },
      ],
      defaultDecision: 'deny',
      masking: [{ name: 'ids', detectors: ['us-ssn'], strategy: 'redact' }],
    },
  };
}

/** A pod on the local node printing `line N` every second (everything after `--` is the command). */
function countingPod(name: string, namespace: string) {
  return [
    'run',
    name,
    '-n',
    namespace,
    `--image=${builtImageRef('agent')}`,
    '--restart=Never',
    `--overrides=${JSON.stringify({
      spec: { tolerations: [LOCAL_NODE_TOLERATION] },
    })}`,
    '--command',
    '--',
    'sh',
    '-c',
    'i=0; while true; do i=$((i+1)); echo "line $i"; sleep 1; done',
  ];
}

test('kubectl logs, logs -f and exec -i through the sidecar against a running pod', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  await f.admin(countingPod('counter', ns));
  await f.admin(countingPod('quiet', ns));
  const describe = async () =>
    `${await f.admin(['get', 'pods', '-n', ns, '-o', 'wide']).catch((e: unknown) => String(e))}\n${await f
      .admin(['get', 'events', '-n', ns])
      .catch((e: unknown) => String(e))}\nkubelet:\n${node?.logs('kubelet').split('\n').slice(-15).join('\n') ?? ''}`;
  for (const pod of ['counter', 'quiet']) {
    // A failure bound: image unpacking and a container start on a shared 2-core machine.
    await poll(
      `pod ${pod} to print`,
      async () => ((await f.admin(['logs', pod, '-n', ns]).catch(() => '')).includes('line 2') ? true : undefined),
      240_000,
    ).catch(async (e: unknown) => {
      throw new Error(`${String(e)}\n${await describe()}`, { cause: e });
    });
  }

  await t.test('kubectl logs: the lines the pod printed', async () => {
    assert.equal(
      await f.admin(['get', 'pod', 'counter', '-n', ns, '-o', 'jsonpath={.spec.nodeName}']),
      LOCAL_NODE_NAME,
      'run by the local node',
    );
    const res = await f.agent(['logs', 'counter', '-n', ns]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /^line 1\nline 2\n/);
  });

  await t.test('kubectl logs of a denied pod: Forbidden by policy, naming the rule', async () => {
    const res = await f.agent(['logs', 'quiet', '-n', ns]);
    assert.notEqual(res.code, 0);
    assert.match(
      res.stderr,
      /Error from server \(Forbidden\): chaperone: permission denied by policy .*rule quiet-pods/,
    );
  });

  await t.test('kubectl logs -f streams lines printed after it started', async () => {
    const child = spawn(
      toolPath('kubectl'),
      ['--kubeconfig', f.agentKubeconfig, 'logs', '-f', '--tail=1', 'counter', '-n', ns],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      // With --tail=1 the first line shows where the pod was when the stream opened; a line two numbers
      // later can only have come through the open stream.
      const first = await poll('the first followed line', () => {
        const m = /line (\d+)\n/.exec(out);
        return Promise.resolve(m === null ? undefined : Number(m[1]));
      });
      const lines = () => [...out.matchAll(/line (\d+)\n/g)].map((m) => Number(m[1]));
      await poll(
        'lines printed after the stream opened',
        () => Promise.resolve(Math.max(...lines()) >= first + 2 && out.split('\n').length > 3 ? true : undefined),
        60_000,
      ).catch((e: unknown) => {
        throw new Error(`${String(e)}\nstdout: ${out}\nstderr: ${err}`, { cause: e });
      });
      // Consecutive numbers: nothing lost or reordered by the relay.
      const seen = lines();
      const last = seen.at(-1) ?? 0;
      assert.deepEqual(seen.slice(-3), [last - 2, last - 1, last]);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });

  await t.test('kubectl exec -i: what was typed and printed is in the outcome record, masked', async () => {
    const res = await f.agent(
      ['exec', '-i', 'counter', '-n', ns, '--', 'sh'],
      'echo typed-$((6*7))\necho ssn 078-05-1120\nexit\n',
    );
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /typed-42\nssn 078-05-1120\n/);
    const denied = await f.agent(['exec', 'quiet', '-n', ns, '--', 'true']);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /Forbidden|chaperone: permission denied/);
    const outcome = await poll('the exec outcome', async () => {
      const all = await f.sidecar.settledRecords();
      const decision = all.find(
        (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/pods/counter/exec'),
      );
      return all.find(
        (e) =>
          decision !== undefined &&
          e.session.sessionId === decision.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === decision.record.command?.id,
      );
    });
    const message = outcome.record.outcome?.message ?? '';
    assert.match(message, /stdin \(\d+ B\): "echo typed-\$\(\(6\*7\)\)\\necho ssn /, message);
    assert.match(message, /stdout \(\d+ B\): "typed-42\\nssn /, message);
    assert.ok(!message.includes('078-05-1120'), message);
    assert.ok(message.length <= 1024);
  });

  await t.test('records: each request with its Audit-ID, the follow ending cancelled', async () => {
    const entries = await poll('the follow outcome', async () => {
      const all = await f.sidecar.settledRecords();
      const follow = all.find(
        (e) =>
          e.record.type === 'command.decision' &&
          (e.record.command?.text ?? '').includes('/pods/counter/log') &&
          (e.record.command?.text ?? '').includes('follow=true'),
      );
      if (follow === undefined) return undefined;
      const outcome = all.find(
        (e) =>
          e.session.sessionId === follow.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === follow.record.command?.id,
      );
      return outcome === undefined ? undefined : { all, follow, outcome };
    });
    assert.equal(entries.follow.record.decision?.result, 'allow');
    assert.equal(entries.outcome.record.outcome?.status, 'cancelled');
    const logDecisions = entries.all.filter(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/log'),
    );
    for (const d of logDecisions) assert.match(d.record.command?.requestId ?? '', /^[0-9a-f-]{36}$/);
    const denied = logDecisions.find((e) => (e.record.command?.text ?? '').includes('/pods/quiet/log'));
    assert.equal(denied?.record.decision?.result, 'deny');
    assert.equal(denied.record.decision.rule, 'quiet-pods');
  });
});
