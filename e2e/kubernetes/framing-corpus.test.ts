// Hostile HTTP/1.1 framing sent as raw bytes over TLS to the real sidecar's Kubernetes engine in front of the
// real API server, angles the attack corpora do not send: an HTTP/2.0 request line, chunk extensions,
// trailers and headers past Node's count limit carrying impersonation, `Expect: 100-continue` with a body
// longer than announced, a refused DELETE whose body is an allowed DELETE, an HTTP/1.0 connection kept alive
// (its answer closes it whatever the upstream's framing: a second request is never served),
// chunk data longer than its size. Judged on the API server's state (which ConfigMaps exist) and on its own
// answers (impersonation would let the sidecar's namespace-bound account read nodes).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange } from './raw-tls.ts';

function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        { name: 'keep-keepers', decision: 'deny', match: { kubernetes: { verbs: ['delete'], names: ['keep-*'] } } },
        // Allowed by policy, refused by the API server: the sidecar's account is admin in the namespace only.
        { name: 'nodes', decision: 'allow', match: { kubernetes: { verbs: ['get', 'list'], resources: ['nodes'] } } },
        { name: 'in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } },
      ],
      defaultDecision: 'deny',
    },
  };
}

test('framing corpus against the Kubernetes engine', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}\r\n`;
  for (const name of ['keep-me', 'victim']) await f.admin(['create', 'configmap', name, '-n', ns]);
  const configMaps = `/api/v1/namespaces/${ns}/configmaps`;
  const head = (line: string, extra = '', version = 'HTTP/1.1') =>
    `${line} ${version}\r\nHost: ${host}\r\n${auth}${extra}`;
  const create = (name: string) => JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } });
  const deleteVictim = head(`DELETE ${configMaps}/victim`, 'Content-Length: 0\r\n');
  const impersonation = 'Impersonate-User: system:admin\r\nImpersonate-Group: system:masters\r\n';
  const close = 'Connection: close\r\n';

  const cases: readonly { name: string; bytes: string; status: number }[] = [
    {
      name: 'an HTTP/2.0 request line creating a ConfigMap (before: created)',
      bytes: `${head(`POST ${configMaps}`, `Content-Type: application/json\r\nContent-Length: ${String(create('h2-line').length)}\r\n${close}`, 'HTTP/2.0')}\r\n${create('h2-line')}`,
      status: 400,
    },
    {
      name: 'a chunk extension on a create: the API server reads the chunk data',
      bytes: `${head(`POST ${configMaps}`, `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n${close}`)}\r\n${create('chunk-ext').length.toString(16)};ext=1\r\n${create('chunk-ext')}\r\n0\r\n\r\n`,
      status: 201,
    },
    {
      name: 'impersonation in the trailers of a node list',
      bytes: `${head('GET /api/v1/nodes', `Transfer-Encoding: chunked\r\n${close}`)}\r\n0\r\n${impersonation}\r\n`,
      status: 403,
    },
    {
      name: 'impersonation after 2000 filler headers on a node list',
      bytes: `${head('GET /api/v1/nodes', `${'a:\r\n'.repeat(2000)}${impersonation}${close}`)}\r\n`,
      status: 431,
    },
    {
      name: 'Expect: 100-continue with a body longer than announced, the rest deleting a keeper',
      bytes: `${head(`POST ${configMaps}`, `Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${String(create('expected').length)}\r\n`)}\r\n${create('expected')}${head(`DELETE ${configMaps}/keep-me`, close)}\r\n`,
      status: 201,
    },
    {
      name: 'a refused DELETE of a keeper whose body is an allowed DELETE',
      bytes: `${head(`DELETE ${configMaps}/keep-me`, `Content-Type: application/json\r\nContent-Length: ${String(deleteVictim.length + 2)}\r\n${close}`)}\r\n${deleteVictim}\r\n`,
      status: 403,
    },
    {
      name: 'HTTP/1.0 kept alive, the second request deleting the victim',
      bytes: `${head(`GET ${configMaps}`, 'Connection: keep-alive\r\n', 'HTTP/1.0')}\r\n${head(`DELETE ${configMaps}/victim`, '', 'HTTP/1.0')}\r\n`,
      status: 200,
    },
    {
      // A single ConfigMap's answer has a length, so Node alone would keep an HTTP/1.0 connection alive.
      name: 'HTTP/1.0 kept alive behind an answer with a length, the second request deleting the victim',
      bytes: `${head(`GET ${configMaps}/keep-me`, 'Connection: keep-alive\r\n', 'HTTP/1.0')}\r\n${head(`DELETE ${configMaps}/victim`, '', 'HTTP/1.0')}\r\n`,
      status: 200,
    },
    {
      name: 'chunk data longer than its size, the rest deleting the victim',
      bytes: `${head(`POST ${configMaps}`, `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n`)}\r\n5\r\n${create('overlong')}\r\n0\r\n\r\n${deleteVictim}\r\n`,
      status: 400,
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const res = await exchange(f.sidecar.port, ca, c.bytes);
      assert.equal(res.status, c.status, `${res.head}\n${res.body}`);
      assert.match(res.body, /"kind":"Status"|"kind":"ConfigMap"|"kind":"ConfigMapList"/);
    });
  }

  await t.test('the API server state: what was decided ran, nothing else', async () => {
    const names = (await f.admin(['get', 'configmap', '-n', ns, '-o', 'name'])).split('\n');
    for (const kept of ['keep-me', 'victim', 'chunk-ext', 'expected'])
      assert.ok(names.includes(`configmap/${kept}`), `${kept}: ${names.join(' ')}`);
    for (const absent of ['h2-line', 'overlong'])
      assert.ok(!names.includes(`configmap/${absent}`), `${absent}: ${names.join(' ')}`);
  });
});
