// The local node leaves the host as it found it: while it runs a pod, the host's mount table, iptables
// rules, fixed paths (/var/lib/kubelet, /run/containerd, …) and kernel tunables are untouched — the
// node's mounts, chains and tunables are inside its own namespaces, where the test finds them — and once
// it stops no process, mount, iptables chain, cgroup, link, route or directory of it is left. A node whose
// harness is SIGKILLed dies with it (its namespaces' init reads the harness's pipe), and the next harness
// removes what the kernel leaves (cgroups, the node's directory).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as k8s from '@kubernetes/client-node';
import { ENV, controlPlaneEnv } from '../harness/env.ts';
import { hostSnapshot, nodeTraces, type HostSnapshot } from '../harness/host-footprint.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import {
  KUBELET_KERNEL_TUNABLES,
  LOCAL_NODE_NAME,
  LOCAL_NODE_TOLERATION,
  builtImageRef,
  reapDeadNodes,
  startLocalNode,
  type NodeHostHandles,
} from '../harness/node.ts';
import { poll } from '../harness/poll.ts';
import { stopProcess } from '../harness/processes.ts';

const runDir = process.env[ENV.runDir] ?? '';
const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
/** Starting a node waits for any other node of this run (one per control plane) and imports images. */
const NODE_DEADLINE_MS = 600_000;

function startNode() {
  const cp = controlPlaneEnv();
  return startLocalNode({
    runDir,
    controlPlane: { kubeconfig: cp.kubeconfig, server: cp.server, caFile: cp.caFile },
    timeoutMs: NODE_DEADLINE_MS,
  });
}

/** A snapshot without any local node's link and routes: other test files' nodes may come and go meanwhile. */
function withoutNodeNetworks(snapshot: HostSnapshot): HostSnapshot {
  const ours = (l: string) => /^chp\d+(@|$)/.test(l) || /\bdev chp\d+\b/.test(l) || /\b10\.21[34]\.\d+\./.test(l);
  return {
    ...snapshot,
    links: snapshot.links.filter((l) => !ours(l)),
    routes: snapshot.routes.filter((l) => !ours(l)),
  };
}

after(async () => {
  // The killed node's Node object; a next node would replace it anyway.
  await core.deleteNode({ name: LOCAL_NODE_NAME }).catch(() => undefined);
});

test('a local node keeps its mounts, iptables chains and kernel tunables to itself and leaves nothing behind', async (t) => {
  const before = hostSnapshot();
  const node = await startNode();
  t.after(() => node.stop());

  // A pod with what makes a kubelet mount and program things: an emptyDir, a projected service-account
  // token (tmpfs), a network namespace on the bridge, a Service lookup through CoreDNS and kube-proxy.
  const ns = await createTestNamespace(t);
  await core.createNamespacedPod({
    namespace: ns,
    body: {
      metadata: { name: 'footprint' },
      spec: {
        restartPolicy: 'Never',
        tolerations: [LOCAL_NODE_TOLERATION],
        containers: [
          {
            name: 'probe',
            image: builtImageRef('agent'),
            args: [
              '-c',
              'echo hi > /scratch/file && kubectl --server https://kubernetes.default.svc version >/dev/null 2>&1; cat /scratch/file; exec sleep 3600',
            ],
            volumeMounts: [{ name: 'scratch', mountPath: '/scratch' }],
          },
        ],
        volumes: [{ name: 'scratch', emptyDir: {} }],
      },
    },
  });
  await poll(
    'the pod to run',
    async () => {
      const pod = await core.readNamespacedPod({ namespace: ns, name: 'footprint' });
      return pod.status?.containerStatuses?.[0]?.state?.running === undefined ? undefined : true;
    },
    NODE_DEADLINE_MS,
  );

  // While it runs: the host is unchanged, the node's own namespaces hold the changes.
  const during = hostSnapshot();
  const traces = nodeTraces(node.host, node.dir);
  assert.ok(
    traces.processes.some((p) => p.includes('kubelet')),
    `the kubelet runs in the node's namespaces: ${traces.processes.join('\n')}`,
  );
  assert.ok(traces.processes.some((p) => p.includes('containerd')));
  assert.ok(traces.cgroups.length > 0, 'the kubelet created its cgroup root');
  assert.ok(traces.veth, 'the host end of the node link exists');
  assert.ok(
    during.routes.some((r) => r.startsWith(node.podCidr)),
    'the host routes the pod range to the node',
  );
  assert.deepEqual(during.mounts, before.mounts, "no mount of the node's is in the host's mount table");
  const nodeMounts = await node.exec('cat', ['/proc/self/mountinfo']);
  assert.match(nodeMounts, / \/var\/lib .* - overlay /, "/var/lib is an overlay in the node's mount namespace");
  assert.match(nodeMounts, /kubelet\/pods\/.* - tmpfs /, "the pod's token volume is a tmpfs in the node's namespace");
  assert.deepEqual(during.iptables, before.iptables, 'no iptables chain or rule on the host');
  const nodeRules = await node.exec('iptables-save', []);
  assert.match(nodeRules, /:KUBE-SERVICES/, "kube-proxy's chains are in the node's network namespace");
  assert.match(nodeRules, /CNI-/, "the bridge plugin's masquerading chain too");
  assert.deepEqual(during.paths, before.paths, 'no /var/lib/kubelet, /run/containerd, /etc/cni … on the host');
  assert.deepEqual(during.kernelTunables, before.kernelTunables, "the host's kernel tunables are unchanged");
  for (const [tunable, value] of Object.entries(KUBELET_KERNEL_TUNABLES)) {
    assert.equal(
      (await node.exec('cat', [`/proc/sys/${tunable}`])).trim(),
      value,
      `the kubelet sees ${tunable}=${value}`,
    );
  }

  await node.stop();
  const afterStop = hostSnapshot();
  assert.deepEqual(withoutNodeNetworks(afterStop), withoutNodeNetworks(before));
  assert.ok(!afterStop.routes.some((r) => r.startsWith(node.podCidr)), 'the route to the pod range went with the link');
  assert.deepEqual(nodeTraces(node.host, node.dir), { processes: [], cgroups: [], veth: false, directory: false });
});

test('a node whose harness is killed dies with it, and the next harness removes what is left', async (t) => {
  const before = hostSnapshot();
  const holder = spawn(process.execPath, [join(import.meta.dirname, 'hold-node.ts')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => stopProcess(holder, 1000).catch(() => undefined));
  const started = await new Promise<{ host: NodeHostHandles; dir: string }>((resolve, reject) => {
    createInterface({ input: holder.stdout }).once('line', (line) =>
      resolve(JSON.parse(line) as { host: NodeHostHandles; dir: string }),
    );
    holder.once('exit', (code) => reject(new Error(`hold-node exited with ${String(code)}`)));
  });
  assert.ok(nodeTraces(started.host, started.dir).processes.length > 0, 'the node runs');

  holder.kill('SIGKILL');
  // The namespaces' init reads the holder's pipe: it exits, and the kernel ends every process of the node.
  const left = await poll('the node to die with its harness', () => {
    const traces = nodeTraces(started.host, started.dir);
    return Promise.resolve(traces.processes.length === 0 && !traces.veth ? traces : undefined);
  });
  // What the kernel does not remove by itself: cgroup directories and the node's state directory.
  assert.ok(left.cgroups.length > 0, 'cgroups outlive their processes');
  assert.ok(left.directory);

  reapDeadNodes(runDir); // what the next startLocalNode does first
  assert.deepEqual(nodeTraces(started.host, started.dir), {
    processes: [],
    cgroups: [],
    veth: false,
    directory: false,
  });
  assert.deepEqual(withoutNodeNetworks(hostSnapshot()), withoutNodeNetworks(before));
});
