// Kubelet and proxy corpus: requests through the API server's proxy subresources that reach more than the
// rule allowing them says, against the real kubelet of the local node (e2e/harness/node.ts).
// - nodes/proxy: the API server forwards the rest of the path to the kubelet with its own client
//   certificate (system:masters), so `get nodes/proxy` reads `/pods` (every pod spec on the node, in every
//   namespace, environment included), `/configz`, `/stats`, `/logs` (the node's log files), `/debug/pprof`.
// - services/proxy and pods/proxy: the object may be named `[scheme:]name[:port]`, which a rule naming the
//   object must not miss; a Service can front the kubelet's port.
// The sidecar's account may use nodes/proxy (granted here, the hazard), so what the policy lets through
// reaches the kubelet: the kubelet's own answer (a PodList naming another namespace's pod, its
// configuration) is the proof, and a case the sidecar must refuse is answered with its Status.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { ENV, controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { LOCAL_NODE_NAME, LOCAL_NODE_TOLERATION, startLocalNode, type LocalNode } from '../harness/node.ts';
import { poll } from '../harness/poll.ts';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange, type RawResponse } from './raw-tls.ts';

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

/**
 * nodes/proxy allowed (the hazard) and the kubelet's metrics; pods readable in the test's namespace only;
 * exec denied there; the Service `kubelet` and the pod `guarded` denied by name.
 */
function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'no-exec',
          decision: 'deny',
          match: { kubernetes: { resources: ['pods'], subresources: ['exec', 'attach'], namespaces: [namespace] } },
        },
        {
          name: 'not-the-kubelet-service',
          decision: 'deny',
          match: { kubernetes: { resources: ['services'], names: ['kubelet'] } },
        },
        { name: 'not-guarded', decision: 'deny', match: { kubernetes: { resources: ['pods'], names: ['guarded'] } } },
        {
          name: 'node-proxy',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get', 'create', 'update'], resources: ['nodes'], subresources: ['proxy'] } },
        },
        {
          name: 'node-metrics',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get'], resources: ['nodes'], subresources: ['metrics'] } },
        },
        { name: 'everything-in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } },
      ],
      defaultDecision: 'deny',
    },
  };
}

interface Case {
  readonly name: string;
  readonly bytes: string;
  /** The sidecar's answer: its status, and what its Status says. */
  readonly refused?: { readonly status: number; readonly body: RegExp };
  /** Allowed: what the backend's own answer shows (the kubelet's body, or the API server's). */
  readonly reaches?: { readonly status: number; readonly body: RegExp };
}

/** The sidecar's refusals are Status bodies saying `chaperone: `; nothing behind it says that. */
const SIDECAR_STATUS = /"kind":"Status".*chaperone: /s;

test('kubelet paths through nodes/proxy and proxy target spellings against the real kubelet', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const other = await createTestNamespace(t);
  const nodeIp = node?.nodeIp ?? '';
  const sa = `system:serviceaccount:${ns}:chaperone-sidecar`;
  // The hazard: the sidecar's account may use the node proxy (as a monitoring agent's often may).
  const role = `kubelet-corpus-${ns}`;
  await f.admin(['create', 'clusterrole', role, '--verb=get,create,update', '--resource=nodes/proxy']);
  await f.admin([
    'create',
    'clusterrolebinding',
    role,
    `--clusterrole=${role}`,
    `--serviceaccount=${ns}:chaperone-sidecar`,
  ]);
  t.after(async () => {
    await f.admin(['delete', 'clusterrolebinding', role]).catch(() => undefined);
    await f.admin(['delete', 'clusterrole', role]).catch(() => undefined);
  });
  // A pod of another namespace bound to the node, with a value in its environment: the kubelet lists it
  // in /pods whether or not it runs.
  const leaky = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'leaky', namespace: other },
    spec: {
      nodeName: LOCAL_NODE_NAME,
      tolerations: [LOCAL_NODE_TOLERATION],
      containers: [
        { name: 'c', image: 'localhost/not-pulled:1', env: [{ name: 'DB_PASSWORD', value: 'hunter2-from-env' }] },
      ],
    },
  };
  await f.admin(['apply', '-f', '-'], JSON.stringify(leaky));
  // Services fronting the kubelet's port (no selector: the endpoints are written here).
  for (const name of ['kubelet', 'open']) {
    await f.admin(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          {
            apiVersion: 'v1',
            kind: 'Service',
            metadata: { name, namespace: ns },
            spec: { ports: [{ name: 'https', port: 10250, protocol: 'TCP' }] },
          },
          {
            apiVersion: 'discovery.k8s.io/v1',
            kind: 'EndpointSlice',
            metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': name } },
            addressType: 'IPv4',
            ports: [{ name: 'https', port: 10250, protocol: 'TCP' }],
            endpoints: [{ addresses: [nodeIp], conditions: { ready: true } }],
          },
          {
            apiVersion: 'v1',
            kind: 'Endpoints',
            metadata: { name, namespace: ns },
            subsets: [{ addresses: [{ ip: nodeIp }], ports: [{ name: 'https', port: 10250, protocol: 'TCP' }] }],
          },
        ],
      }),
    );
  }
  await f.admin(['run', 'guarded', '-n', ns, '--image=localhost/not-pulled:1', '--restart=Never']);
  await poll(
    'the kubelet to list the pod of the other namespace',
    async () => {
      const out = await f.admin(['get', '--raw', `/api/v1/nodes/${LOCAL_NODE_NAME}/proxy/pods`]).catch(() => '');
      return out.includes('hunter2-from-env') ? true : undefined;
    },
    120_000,
  );

  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  const request = (method: string, target: string, body?: string): string => {
    const head = `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n`;
    if (body === undefined) return `${head}Connection: close\r\n\r\n`;
    return `${head}Content-Length: ${String(Buffer.byteLength(body))}\r\nConnection: close\r\n\r\n${body}`;
  };
  const get = (target: string) => request('GET', target);
  const kubelet = `/api/v1/nodes/${LOCAL_NODE_NAME}/proxy`;
  const denied = (body: RegExp) => ({ status: 403, body });
  const ambiguous = { status: 400, body: /AmbiguousRequest|BadRequest/ };
  const undecidable = denied(/undecidable-proxy/);
  const allPods = denied(/list pods in every namespace/);

  const cases: readonly Case[] = [
    // Kubelet paths: each decided as what it does.
    { name: '/pods: every pod spec on the node (another namespace)', bytes: get(`${kubelet}/pods`), refused: allPods },
    { name: '/pods/ with a trailing slash', bytes: get(`${kubelet}/pods/`), refused: allPods },
    { name: '/pods with a query string', bytes: get(`${kubelet}/pods?limit=1`), refused: allPods },
    { name: '/runningpods/', bytes: get(`${kubelet}/runningpods/`), refused: allPods },
    { name: '/Pods in another case', bytes: get(`${kubelet}/Pods`), refused: allPods },
    {
      name: 'the node named https:<node>:10250, to /pods',
      bytes: get(`/api/v1/nodes/https:${LOCAL_NODE_NAME}:10250/proxy/pods`),
      refused: allPods,
    },
    {
      name: 'the node named <node>:10250, to /pods',
      bytes: get(`/api/v1/nodes/${LOCAL_NODE_NAME}:10250/proxy/pods`),
      refused: allPods,
    },
    {
      name: '/configz: the kubelet configuration',
      bytes: get(`${kubelet}/configz`),
      refused: denied(/nodes\/configz/),
    },
    { name: '/stats/summary', bytes: get(`${kubelet}/stats/summary`), refused: denied(/nodes\/stats/) },
    { name: "/logs/: the node's log files", bytes: get(`${kubelet}/logs/`), refused: denied(/nodes\/log/) },
    { name: '/spec/', bytes: get(`${kubelet}/spec/`), refused: denied(/nodes\/spec/) },
    { name: '/healthz', bytes: get(`${kubelet}/healthz`), refused: denied(/nodes\/healthz/) },
    {
      name: '/checkpoint of a pod where exec is denied (a copy of its memory)',
      bytes: request('POST', `${kubelet}/checkpoint/${ns}/guarded/guarded`),
      refused: denied(/no-exec|not-guarded/),
    },
    { name: '/debug/pprof/ (unknown to the engine)', bytes: get(`${kubelet}/debug/pprof/`), refused: undecidable },
    {
      name: '/debug/pprof/goroutine?debug=2',
      bytes: get(`${kubelet}/debug/pprof/goroutine?debug=2`),
      refused: undecidable,
    },
    {
      name: 'PUT /debug/flags/v (the kubelet log verbosity)',
      bytes: request('PUT', `${kubelet}/debug/flags/v`, '0'),
      refused: undecidable,
    },
    { name: 'the kubelet root, no path', bytes: get(kubelet), refused: undecidable },
    { name: 'the kubelet root with ?path=/pods', bytes: get(`${kubelet}?path=/pods`), refused: undecidable },
    {
      name: 'a node name the API server cannot split (ftp:<node>:10250)',
      bytes: get(`/api/v1/nodes/ftp:${LOCAL_NODE_NAME}:10250/proxy/pods`),
      refused: undecidable,
    },
    // Other spellings of /pods: refused before any decision, as the classification already did.
    { name: '//pods', bytes: get(`${kubelet}//pods`), refused: ambiguous },
    { name: '/metrics/../pods', bytes: get(`${kubelet}/metrics/../pods`), refused: ambiguous },
    { name: '/metrics%2F..%2Fpods', bytes: get(`${kubelet}/metrics%2F..%2Fpods`), refused: ambiguous },
    { name: '/metrics/%2e%2e/pods', bytes: get(`${kubelet}/metrics/%2e%2e/pods`), refused: ambiguous },
    { name: '/./pods', bytes: get(`${kubelet}/./pods`), refused: ambiguous },
    { name: '/%70ods (an escaped letter) is /pods', bytes: get(`${kubelet}/%70ods`), refused: allPods },
    // Proxy targets spelled with a scheme and port: the plain name decides too.
    {
      name: 'services/https:kubelet:10250/proxy/pods (a Service fronting the kubelet, denied by name)',
      bytes: get(`/api/v1/namespaces/${ns}/services/https:kubelet:10250/proxy/pods`),
      refused: denied(/not-the-kubelet-service/),
    },
    {
      name: 'services/kubelet:https/proxy/pods',
      bytes: get(`/api/v1/namespaces/${ns}/services/kubelet:https/proxy/pods`),
      refused: denied(/not-the-kubelet-service/),
    },
    {
      name: 'services/kubelet/proxy/pods (the plain name, denied before too)',
      bytes: get(`/api/v1/namespaces/${ns}/services/kubelet/proxy/pods`),
      refused: denied(/not-the-kubelet-service/),
    },
    {
      name: 'pods/https:guarded:443/proxy/ (a pod denied by name)',
      bytes: get(`/api/v1/namespaces/${ns}/pods/https:guarded:443/proxy/`),
      refused: denied(/not-guarded/),
    },
    {
      name: 'pods/guarded:8080/proxy/',
      bytes: get(`/api/v1/namespaces/${ns}/pods/guarded:8080/proxy/`),
      refused: denied(/not-guarded/),
    },
    // What the rules are for still reaches the kubelet.
    {
      name: "/metrics: the kubelet's metrics (nodes/metrics allowed)",
      bytes: get(`${kubelet}/metrics`),
      reaches: { status: 200, body: /^# (HELP|TYPE) /m },
    },
    {
      name: '/metrics/cadvisor',
      bytes: get(`${kubelet}/metrics/cadvisor`),
      reaches: { status: 200, body: /^# (HELP|TYPE) /m },
    },
    {
      // The API server's service proxy dials only endpoint addresses that reference a pod holding them
      // (isValidAddress): a Service fronts the kubelet only through a hostNetwork pod on the node.
      name: 'services/https:open:10250/proxy/pods (allowed) reaches the API server, which dials no bare address',
      bytes: get(`/api/v1/namespaces/${ns}/services/https:open:10250/proxy/pods`),
      reaches: { status: 503, body: /no endpoints available/ },
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const res: RawResponse = await exchange(f.sidecar.port, ca, c.bytes);
      assert.doesNotMatch(res.body, /hunter2-from-env/, 'the other namespace pod spec reached the agent');
      if (c.refused !== undefined) {
        assert.equal(res.status, c.refused.status, `${res.head}\n${res.body.slice(0, 600)}`);
        assert.match(res.body, SIDECAR_STATUS, `answered by the sidecar:\n${res.body.slice(0, 600)}`);
        assert.match(res.body, c.refused.body);
      } else if (c.reaches !== undefined) {
        assert.equal(res.status, c.reaches.status, `${res.head}\n${res.body.slice(0, 600)}`);
        assert.doesNotMatch(res.body, SIDECAR_STATUS);
        assert.match(res.body, c.reaches.body);
      }
    });
  }

  await t.test('why: the same /pods straight from the API server with the sidecar account', async () => {
    // The second layer (RBAC) allows it: only the sidecar's policy stands between the agent and it.
    const out = await f.admin(['get', '--raw', `${kubelet}/pods`, `--as=${sa}`]);
    assert.match(out, /"kind":"PodList"/);
    assert.match(out, new RegExp(`"namespace":"${other}"`));
  });
});
