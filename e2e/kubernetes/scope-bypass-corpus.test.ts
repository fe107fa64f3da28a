// Scope bypass corpus: requests an allow rule matches although they do more than the rule says.
// - nodes/proxy reaches the kubelet's API, whose exec, run, attach, portForward and containerLogs act on a
//   pod's containers: RBAC's `get nodes/proxy` lets a WebSocket GET run a command in any pod of the node
//   past every rule on `pods/exec`. There is no kubelet here: what counts is whether the request reaches
//   the API server's proxy (a deny or approve rule on the pod command must stop it in the sidecar).
// - The Namespace object itself: RBAC reads `/api/v1/namespaces/<ns>` as in namespace <ns>, so a
//   namespace-wide grant covers deleting or relabelling the namespace (its pod-security labels).
// Sent as raw bytes over TLS to the real sidecar in front of the real API server; an answer the sidecar
// must give carries no API Priority and Fairness header (the API server sets it on every answer).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { controlPlaneEnv } from '../harness/env.ts';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange } from './raw-tls.ts';

const NODE = 'chaperone-node';

/**
 * Exec is denied in the test's namespace and held for approval in `held-*` namespaces, allowed in
 * `sandbox`; the node proxy is allowed (the hazard), and so is everything in the test's namespace.
 */
function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'no-exec',
          decision: 'deny',
          match: {
            kubernetes: {
              resources: ['pods'],
              subresources: ['exec', 'attach', 'portforward'],
              namespaces: [namespace],
            },
          },
        },
        {
          name: 'no-logs',
          decision: 'deny',
          match: { kubernetes: { resources: ['pods'], subresources: ['log'], namespaces: [namespace] } },
        },
        {
          name: 'exec-needs-approval',
          decision: 'approve',
          match: { kubernetes: { resources: ['pods'], subresources: ['exec'], namespaces: ['held-*'] } },
        },
        {
          name: 'exec-in-sandbox',
          decision: 'allow',
          match: {
            kubernetes: { verbs: ['create'], resources: ['pods'], subresources: ['exec'], namespaces: ['sandbox'] },
          },
        },
        {
          // The kubelet's metrics through the node proxy: nodes/proxy and what the kubelet reads it as.
          name: 'node-proxy',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get', 'create'], resources: ['nodes'], subresources: ['proxy', 'metrics'] } },
        },
        { name: 'everything-in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } },
        {
          name: 'read-own-namespace',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get'], resources: ['namespaces'], names: [namespace] } },
        },
      ],
      defaultDecision: 'deny',
      approval: { approverGroups: ['sre'], requiredApprovals: 1, timeout: '5m', allowSelfApproval: false },
    },
  };
}

interface Attack {
  readonly name: string;
  readonly bytes: string | Buffer;
  readonly status: number;
  readonly body?: RegExp;
  /** The policy allows what it really is: the API server answers (here its RBAC, the second layer). */
  readonly reaches?: boolean;
}

const ANSWERED_BY_API_SERVER = /^X-Kubernetes-Pf-Flowschema-Uid:/im;
/**
 * The API server answers proxy and other long-running requests without that header (priority and fairness
 * does not queue them); its RBAC refusal names the sidecar's own service account, which the sidecar never does.
 */
const REFUSED_BY_API_SERVER_RBAC = /system:serviceaccount:[^"\\]*:chaperone-sidecar/;

/** A request straight to the API server with a bearer token: status and body. */
function withToken(method: string, path: string, token: string, body: string, contentType: string): Promise<number> {
  const cp = controlPlaneEnv();
  const server = new URL(cp.server);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        method,
        hostname: server.hostname,
        port: server.port,
        path,
        ca: readFileSync(cp.caFile),
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': contentType,
          'content-length': String(Buffer.byteLength(body)),
        },
      },
      (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.once('error', reject);
    req.end(body);
  });
}

test('scope bypass corpus against the Kubernetes engine', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  await f.admin(['create', 'configmap', 'inside', '-n', ns]);

  const request = (method: string, target: string, headers = '', body?: string): string => {
    const head = `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${headers}`;
    if (body === undefined) return `${head}Connection: close\r\n\r\n`;
    return `${head}Content-Length: ${String(Buffer.byteLength(body))}\r\nConnection: close\r\n\r\n${body}`;
  };
  const ws = `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from('chaperone-scope!').toString('base64')}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n`;
  const upgrade = (target: string) => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${ws}\r\n`;
  const kubelet = `/api/v1/nodes/${NODE}/proxy`;
  const merge = 'Content-Type: application/merge-patch+json\r\n';

  const cases: readonly Attack[] = [
    {
      name: "nodes/proxy WebSocket to the kubelet's exec of a pod exec is denied in",
      bytes: upgrade(`${kubelet}/exec/${ns}/victim/c?command=id&output=1`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy WebSocket to the kubelet's exec naming the pod's uid",
      bytes: upgrade(`${kubelet}/exec/${ns}/victim/0f1e2d3c-0000-4000-8000-000000000000/c?command=id&output=1`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy POST to the kubelet's run (a command, its output in the answer, no upgrade)",
      bytes: request('POST', `${kubelet}/run/${ns}/victim/c?cmd=id`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy WebSocket to the kubelet's attach",
      bytes: upgrade(`${kubelet}/attach/${ns}/victim/c?output=1`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy WebSocket to the kubelet's portForward",
      bytes: upgrade(`${kubelet}/portForward/${ns}/victim?port=8080`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy GET of the kubelet's containerLogs of a pod whose logs are denied",
      bytes: request('GET', `${kubelet}/containerLogs/${ns}/victim/c`),
      status: 403,
      body: /no-logs/,
    },
    {
      name: 'nodes/proxy to the kubelet with the endpoint in another case (Exec)',
      bytes: upgrade(`${kubelet}/Exec/${ns}/victim/c?command=id`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: 'nodes/proxy with a port in the node name, to exec',
      bytes: upgrade(`/api/v1/nodes/${NODE}:10250/proxy/exec/${ns}/victim/c?command=id`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: "nodes/proxy WebSocket to the kubelet's exec where exec needs approval (approvals not enabled)",
      bytes: upgrade(`${kubelet}/exec/held-prod/db/c?command=id&output=1`),
      status: 403,
      body: /exec-needs-approval/,
    },
    {
      name: 'the legacy /proxy/nodes/ prefix to the kubelet exec',
      bytes: upgrade(`/api/v1/proxy/nodes/${NODE}/exec/${ns}/victim/c?command=id`),
      status: 403,
    },
    {
      name: "nodes/proxy to the kubelet's metrics (what the rule is for) reaches the API server",
      bytes: request('GET', `${kubelet}/metrics`),
      status: 403,
      reaches: true,
    },
    {
      name: 'nodes/proxy exec in a namespace where exec is allowed reaches the API server',
      bytes: upgrade(`${kubelet}/exec/sandbox/tool/c?command=id&output=1`),
      status: 403,
      reaches: true,
    },
    // The Namespace object: cluster-scoped, not "in" itself.
    {
      name: 'DELETE of the namespace under a namespace-wide allow rule',
      bytes: request('DELETE', `/api/v1/namespaces/${ns}`),
      status: 403,
    },
    {
      name: 'PATCH of the namespace lifting its pod-security level under a namespace-wide allow rule',
      bytes: request(
        'PATCH',
        `/api/v1/namespaces/${ns}`,
        merge,
        JSON.stringify({ metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'privileged' } } }),
      ),
      status: 403,
    },
    {
      name: 'PUT of the namespace finalize subresource under a namespace-wide allow rule',
      bytes: request(
        'PUT',
        `/api/v1/namespaces/${ns}/finalize`,
        'Content-Type: application/json\r\n',
        JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns }, spec: { finalizers: [] } }),
      ),
      status: 403,
    },
    {
      name: 'PATCH of the namespace status under a namespace-wide allow rule',
      bytes: request(
        'PATCH',
        `/api/v1/namespaces/${ns}/status`,
        merge,
        JSON.stringify({ status: { phase: 'Active' } }),
      ),
      status: 403,
    },
    {
      name: 'GET of the namespace allowed by a rule naming it as a namespace object reaches the API server',
      bytes: request('GET', `/api/v1/namespaces/${ns}`),
      status: 200,
      reaches: true,
    },
    {
      name: 'a ConfigMap in the namespace stays allowed',
      bytes: request('GET', `/api/v1/namespaces/${ns}/configmaps/inside`),
      status: 200,
      reaches: true,
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const res = await exchange(f.sidecar.port, ca, c.bytes);
      assert.equal(res.status, c.status, `${res.head}\n${res.body}`);
      if (c.body !== undefined) assert.match(res.body, c.body);
      const byApiServer = ANSWERED_BY_API_SERVER.test(res.head) || REFUSED_BY_API_SERVER_RBAC.test(res.body);
      if (c.reaches === true) assert.ok(byApiServer, `answered by the API server:\n${res.head}\n${res.body}`);
      else {
        assert.ok(!byApiServer, `the API server saw it:\n${res.head}\n${res.body}`);
        assert.match(res.body, /"kind":"Status"/);
        assert.match(res.body, /chaperone: /);
      }
    });
  }

  await t.test('the namespace is untouched', async () => {
    const doc = JSON.parse(await f.admin(['get', 'namespace', ns, '-o', 'json'])) as {
      metadata: { labels?: Record<string, string>; deletionTimestamp?: string };
    };
    assert.equal(doc.metadata.deletionTimestamp, undefined);
    assert.equal(doc.metadata.labels?.['pod-security.kubernetes.io/enforce'], undefined);
  });

  await t.test('why: RBAC lets a Role on everything in a namespace relabel the namespace itself', async () => {
    await f.admin(['create', 'role', 'everything', '--verb=*', '--resource=*.*', '-n', ns]);
    await f.admin(['create', 'serviceaccount', 'wide', '-n', ns]);
    await f.admin(['create', 'rolebinding', 'wide', '--role=everything', `--serviceaccount=${ns}:wide`, '-n', ns]);
    const token = (await f.admin(['create', 'token', 'wide', '-n', ns, '--duration=10m'])).trim();
    const status = await withToken(
      'PATCH',
      `/api/v1/namespaces/${ns}`,
      token,
      JSON.stringify({ metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'privileged' } } }),
      'application/merge-patch+json',
    );
    assert.equal(status, 200, 'RBAC allowed the Role to patch its own namespace');
    const doc = JSON.parse(await f.admin(['get', 'namespace', ns, '-o', 'json'])) as {
      metadata: { labels?: Record<string, string> };
    };
    assert.equal(doc.metadata.labels?.['pod-security.kubernetes.io/enforce'], 'privileged');
  });
});
