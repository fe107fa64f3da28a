// Kubelet and proxy corpus: requests through the API server's proxy subresources that reach more than the
// rule allowing them says, against the real kubelet of the local node (e2e/harness/node.ts).
// - nodes/proxy: the API server forwards the rest of the path to the kubelet with its own client
//   certificate (system:masters), so `get nodes/proxy` reads `/pods` (every pod spec on the node, in every
//   namespace, environment included), `/configz`, `/stats`, `/logs` (the node's log files), `/debug/pprof`.
// - services/proxy and pods/proxy: the object may be named `[scheme:]name[:port]`, which a rule naming the
//   object must not miss; a Service can front the kubelet's port.
// - An aggregated API server (a real APIService in front of a loopback HTTPS server reached through the
//   node's link) that ignores `dryRun`: what it did to its own objects is compared with the record.
// The sidecar's account may use nodes/proxy (granted here, the hazard), so what the policy lets through
// reaches the kubelet: the kubelet's own answer (a PodList naming another namespace's pod, its
// configuration) is the proof, and a case the sidecar must refuse is answered with its Status.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { ENV, controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { LOCAL_NODE_NAME, LOCAL_NODE_TOLERATION, startLocalNode, type LocalNode } from '../harness/node.ts';
import { poll } from '../harness/poll.ts';
import { writeTlsFiles } from '../harness/postgres.ts';
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

const GROUP = 'widgets.chaperone.test';

/**
 * An aggregated API server on loopback (HTTPS) that serves `widgets` and, as some do, ignores `dryRun`:
 * every write it receives is real. `received` is its own log of requests.
 */
async function startWidgetServer(
  t: TestContext,
  dir: string,
): Promise<{ port: number; received: string[]; widgets: Set<string> }> {
  mkdirSync(dir, { recursive: true });
  const tls = writeTlsFiles(dir);
  const received: string[] = [];
  const widgets = new Set(['w0', 'w1', 'w2', 'w3', 'w4', 'kept']);
  const json = (res: ServerResponse, code: number, doc: unknown) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(doc));
  };
  const server = createHttpsServer(
    { cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) },
    (req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      req.once('end', () => {
        const url = new URL(req.url ?? '/', 'https://x');
        const path = url.pathname;
        if (path.startsWith(`/apis/${GROUP}/v1/namespaces/`)) received.push(`${req.method ?? ''} ${req.url ?? ''}`);
        if (path === '/apis') {
          json(res, 200, {
            kind: 'APIGroupList',
            apiVersion: 'v1',
            groups: [{ name: GROUP, versions: [{ groupVersion: `${GROUP}/v1`, version: 'v1' }] }],
          });
        } else if (path === `/apis/${GROUP}`) {
          json(res, 200, {
            kind: 'APIGroup',
            apiVersion: 'v1',
            name: GROUP,
            versions: [{ groupVersion: `${GROUP}/v1`, version: 'v1' }],
          });
        } else if (path === `/apis/${GROUP}/v1`) {
          json(res, 200, {
            kind: 'APIResourceList',
            apiVersion: 'v1',
            groupVersion: `${GROUP}/v1`,
            resources: [
              {
                name: 'widgets',
                singularName: 'widget',
                namespaced: true,
                kind: 'Widget',
                verbs: ['get', 'list', 'create', 'delete', 'patch'],
              },
            ],
          });
        } else {
          const m = /^\/apis\/[^/]+\/v1\/namespaces\/([^/]+)\/widgets(?:\/([^/]+))?$/.exec(path);
          if (m === null) {
            json(res, 404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 404 });
            return;
          }
          const [, namespace, name] = m;
          const widget = (n: string) => ({
            apiVersion: `${GROUP}/v1`,
            kind: 'Widget',
            metadata: { name: n, namespace, uid: `uid-${n}` },
          });
          if (req.method === 'POST') {
            widgets.add('created');
            json(res, 201, widget('created'));
            return;
          }
          if (name === undefined || !widgets.has(name)) {
            json(res, 404, {
              kind: 'Status',
              apiVersion: 'v1',
              status: 'Failure',
              reason: 'NotFound',
              code: 404,
            });
            return;
          }
          // dryRun is not read: the write happens.
          if (req.method === 'DELETE') widgets.delete(name);
          json(res, 200, widget(name));
          return;
        }
      });
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as AddressInfo).port, received, widgets };
}

/** Deletes of widgets may be done; `kept` may not be deleted. */
function widgetPolicy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'keep-kept',
          decision: 'deny',
          match: { kubernetes: { verbs: ['delete'], apiGroups: [GROUP], resources: ['widgets'], names: ['kept'] } },
        },
        { name: 'everything-in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } },
      ],
      defaultDecision: 'deny',
    },
  };
}

test('dry runs and decisions of an aggregated API server that ignores dryRun', async (t) => {
  const f = await startKubeFixture(t, widgetPolicy);
  const ns = f.namespace;
  const backend = await startWidgetServer(t, join(testDir(t), 'widget-server'));
  const exposed = await (node as LocalNode).exposeHostPort(backend.port);
  const apiService = `v1.${GROUP}`;
  await f.admin(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [
        {
          apiVersion: 'v1',
          kind: 'Service',
          metadata: { name: 'widgets', namespace: ns },
          spec: { ports: [{ name: 'https', port: 443, protocol: 'TCP', targetPort: exposed.port }] },
        },
        {
          apiVersion: 'v1',
          kind: 'Endpoints',
          metadata: { name: 'widgets', namespace: ns },
          subsets: [{ addresses: [{ ip: exposed.host }], ports: [{ name: 'https', port: exposed.port }] }],
        },
        {
          apiVersion: 'discovery.k8s.io/v1',
          kind: 'EndpointSlice',
          metadata: { name: 'widgets', namespace: ns, labels: { 'kubernetes.io/service-name': 'widgets' } },
          addressType: 'IPv4',
          ports: [{ name: 'https', port: exposed.port, protocol: 'TCP' }],
          endpoints: [{ addresses: [exposed.host], conditions: { ready: true } }],
        },
        {
          apiVersion: 'apiregistration.k8s.io/v1',
          kind: 'APIService',
          metadata: { name: apiService },
          spec: {
            group: GROUP,
            version: 'v1',
            service: { namespace: ns, name: 'widgets', port: 443 },
            insecureSkipTLSVerify: true,
            groupPriorityMinimum: 1000,
            versionPriority: 15,
          },
        },
        {
          apiVersion: 'rbac.authorization.k8s.io/v1',
          kind: 'Role',
          metadata: { name: 'widgets', namespace: ns },
          rules: [{ apiGroups: [GROUP], resources: ['widgets'], verbs: ['*'] }],
        },
        {
          apiVersion: 'rbac.authorization.k8s.io/v1',
          kind: 'RoleBinding',
          metadata: { name: 'widgets', namespace: ns },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'widgets' },
          subjects: [{ kind: 'ServiceAccount', name: 'chaperone-sidecar', namespace: ns }],
        },
      ],
    }),
  );
  t.after(async () => {
    await f.admin(['delete', 'apiservice', apiService, '--ignore-not-found']).catch(() => undefined);
  });
  await poll(
    'the aggregator to proxy to the widget server',
    async () => {
      const out = await f.admin(['get', '--raw', `/apis/${GROUP}/v1/namespaces/${ns}/widgets/w0`]).catch(() => '');
      return out.includes('"kind":"Widget"') ? true : undefined;
    },
    120_000,
  );

  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  const widgets = `/apis/${GROUP}/v1/namespaces/${ns}/widgets`;
  const send = (method: string, target: string, body?: string) => {
    const head = `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n`;
    const bytes =
      body === undefined
        ? `${head}Connection: close\r\n\r\n`
        : `${head}Content-Type: application/json\r\nContent-Length: ${String(Buffer.byteLength(body))}\r\nConnection: close\r\n\r\n${body}`;
    return exchange(f.sidecar.port, ca, bytes);
  };
  /** The decision record of the request whose text holds `needle`. */
  const recorded = async (needle: string): Promise<string> => {
    const entries = await f.sidecar.settledRecords();
    const decision = entries.findLast(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes(needle),
    );
    return decision?.record.command?.text ?? '(none)';
  };

  // Each write a dry run by the client's asking; the server performs it. The record must not say it did not.
  const dryRuns: readonly { name: string; run: () => Promise<RawResponse>; needle: string; gone: string }[] = [
    {
      name: 'DELETE ?dryRun=All',
      run: () => send('DELETE', `${widgets}/w1?dryRun=All`),
      needle: '/widgets/w1?dryRun=All',
      gone: 'w1',
    },
    {
      name: 'DELETE with DeleteOptions {"dryRun":["All"]} in the body',
      run: () => send('DELETE', `${widgets}/w2`, JSON.stringify({ kind: 'DeleteOptions', dryRun: ['All'] })),
      needle: '/widgets/w2',
      gone: 'w2',
    },
    {
      name: 'POST ?dryRun=All (create)',
      run: () => send('POST', `${widgets}?dryRun=All`, JSON.stringify({ metadata: { name: 'created' } })),
      needle: 'POST /apis/',
      gone: '',
    },
  ];
  for (const c of dryRuns) {
    await t.test(`${c.name}: the server wrote for real, and the record says the dry run is not verified`, async () => {
      const res = await c.run();
      assert.ok(res.status === 200 || res.status === 201, `${res.head}\n${res.body}`);
      assert.ok(
        backend.received.some((r) => r.includes(c.needle.replace(/^POST /, ''))),
        backend.received.join('\n'),
      );
      if (c.gone !== '') assert.ok(!backend.widgets.has(c.gone), `${c.gone} deleted by the server`);
      else assert.ok(backend.widgets.has('created'), 'created by the server');
      const text = await recorded(c.needle);
      assert.doesNotMatch(text, /\(dry run\)$/, `recorded: ${text}`);
      assert.match(text, /dry run asked.*not verified/, `recorded: ${text}`);
    });
  }

  await t.test(
    'kubectl delete --dry-run=server of a widget: the server deleted it, the record does not say dry run',
    async () => {
      const res = await f.agent(['delete', `widgets.${GROUP}`, 'w3', '-n', ns, '--dry-run=server']);
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stdout, /deleted .*\(server dry run\)/);
      assert.ok(!backend.widgets.has('w3'), 'the server deleted w3 for real');
      const text = await recorded('/widgets/w3');
      assert.doesNotMatch(text, /\(dry run\)$/, `recorded: ${text}`);
      assert.match(text, /dry run asked.*not verified/, `recorded: ${text}`);
    },
  );

  await t.test('a deny rule on the aggregated resource holds: the server never sees the delete', async () => {
    const res = await send('DELETE', `${widgets}/kept`);
    assert.equal(res.status, 403, `${res.head}\n${res.body}`);
    assert.match(res.body, /keep-kept/);
    assert.ok(backend.widgets.has('kept'));
    assert.ok(!backend.received.some((r) => r.includes('/widgets/kept')), backend.received.join('\n'));
  });

  await t.test('an allowed read reaches the server', async () => {
    const res = await send('GET', `${widgets}/w0`);
    assert.equal(res.status, 200, `${res.head}\n${res.body}`);
    assert.match(res.body, /"kind":"Widget"/);
  });
});
