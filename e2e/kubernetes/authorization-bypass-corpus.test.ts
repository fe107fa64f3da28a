// Authorization bypass corpus: requests a policy denies (Secrets, deleting Pods, exec) or never allowed,
// spelled so that the sidecar's reading of the request (verb, resource, subresource, dry run) could differ
// from the API server's. Sent as raw bytes over TLS to the real sidecar in front of the real API server.
// Each case says whether the API server may see the request; one it must not see is answered by the
// sidecar (no API Priority and Fairness header, which the API server puts on every answer), and the API
// server's state afterwards (pods, their ephemeral containers and status, ConfigMaps) shows what ran. The
// records say what the API server executed: a delete the API server ran for real is never recorded as a
// dry run, nor the reverse. Techniques of attack-corpus.test.ts are not repeated here.
import { carriesCommandOutcome } from '@chaperone/api';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { AccessPolicySpec } from '@chaperone/api';
import { kubeConfig } from '../harness/kube.ts';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange } from './raw-tls.ts';

/**
 * What an agent that reads and edits pods, manages ConfigMaps, reads nodes and services and creates service
 * accounts may do; never Secrets, never deleting a pod, never exec, attach or port-forward.
 */
function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        { name: 'no-secrets', decision: 'deny', match: { kubernetes: { resources: ['secrets'] } } },
        { name: 'no-pod-delete', decision: 'deny', match: { kubernetes: { verbs: ['delete'], resources: ['pods'] } } },
        {
          name: 'no-exec',
          decision: 'deny',
          match: { kubernetes: { resources: ['pods'], subresources: ['exec', 'attach', 'portforward'] } },
        },
        {
          name: 'pods',
          decision: 'allow',
          match: {
            kubernetes: {
              verbs: ['get', 'list', 'watch', 'create', 'patch', 'update'],
              resources: ['pods'],
              namespaces: [namespace],
            },
          },
        },
        {
          name: 'configmaps',
          decision: 'allow',
          match: { kubernetes: { resources: ['configmaps'], namespaces: [namespace] } },
        },
        {
          name: 'serviceaccounts',
          decision: 'allow',
          match: {
            kubernetes: { verbs: ['get', 'list', 'create'], resources: ['serviceaccounts'], namespaces: [namespace] },
          },
        },
        {
          name: 'services',
          decision: 'allow',
          match: { kubernetes: { verbs: ['get', 'list'], resources: ['services'], namespaces: [namespace] } },
        },
        { name: 'nodes', decision: 'allow', match: { kubernetes: { verbs: ['get', 'list'], resources: ['nodes'] } } },
      ],
      defaultDecision: 'deny',
    },
  };
}

/** A DELETE with a body sent straight to the API server as the cluster admin: its HTTP status. */
async function adminDelete(path: string, body: string): Promise<number> {
  const kc = kubeConfig();
  const server = new URL(kc.getCurrentCluster()?.server ?? '');
  const options: RequestOptions = {
    method: 'DELETE',
    hostname: server.hostname,
    port: server.port,
    path,
    headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
  };
  await kc.applyToHTTPSOptions(options);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(options, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
    });
    req.once('error', reject);
    req.end(body);
  });
}

interface Attack {
  readonly name: string;
  readonly bytes: string | Buffer;
  readonly status: number;
  readonly body?: RegExp;
  /** The API server may see it (the policy allows what it really is); otherwise the sidecar answers. */
  readonly reaches?: boolean;
  /** The answer has no body (HEAD). */
  readonly bodiless?: boolean;
}

/** The header the API server's priority and fairness filter sets on every answer it gives. */
const ANSWERED_BY_API_SERVER = /^X-Kubernetes-Pf-Flowschema-Uid:/im;

test('authorization bypass corpus against the Kubernetes engine', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  // Pods no node will run (no node matches the selector): they stay Pending, and a delete removes them at once.
  const pod = (name: string) =>
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: ns, labels: { app: 'victim' } },
      spec: {
        nodeSelector: { 'chaperone.dev/nowhere': 'true' },
        containers: [{ name: 'c', image: 'registry.invalid/pause:1' }],
      },
    });
  await f.admin(['apply', '-f', '-'], pod('victim'));
  await f.admin(['apply', '-f', '-'], pod('evictee'));
  await f.admin(['create', 'secret', 'generic', 'db', '--from-literal=password=hunter2-secret', '-n', ns]);
  await f.admin(['create', 'serviceaccount', 'builder', '-n', ns]);
  await f.admin(['create', 'service', 'clusterip', 'web', '--tcp=80:8080', '-n', ns]);
  for (const name of ['keep', 'dry-query-body', 'dry-body', 'dry-both'])
    await f.admin(['create', 'configmap', name, '-n', ns]);

  const request = (method: string, target: string, headers = '', body?: string | Buffer): string | Buffer => {
    const head = `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${headers}`;
    if (body === undefined) return `${head}Connection: close\r\n\r\n`;
    const bytes = typeof body === 'string' ? Buffer.from(body, 'latin1') : body;
    return Buffer.concat([
      Buffer.from(`${head}Content-Length: ${String(bytes.length)}\r\nConnection: close\r\n\r\n`, 'latin1'),
      bytes,
    ]);
  };
  const json = 'Content-Type: application/json\r\n';
  const ws = `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from('chaperone-bypass!').toString('base64')}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n`;
  const upgrade = (target: string) => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${ws}\r\n`;
  const podPath = `/api/v1/namespaces/${ns}/pods`;
  const deleteOptions = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({ kind: 'DeleteOptions', apiVersion: 'v1', ...extra });

  const cases: readonly Attack[] = [
    // Subresources an allow rule naming only the resource must not open (RBAC's reading: `pods` is not
    // `pods/log`, `pods/ephemeralcontainers` or `pods/eviction`).
    {
      name: 'pods/ephemeralcontainers under an allow rule for patching pods: a debug container in the pod',
      bytes: request(
        'PATCH',
        `${podPath}/victim/ephemeralcontainers`,
        'Content-Type: application/strategic-merge-patch+json\r\n',
        JSON.stringify({
          spec: { ephemeralContainers: [{ name: 'debugger', image: 'registry.invalid/busybox:1', command: ['sh'] }] },
        }),
      ),
      status: 403,
    },
    {
      name: 'pods/eviction under an allow rule for creating pods: deletes a pod past no-pod-delete',
      bytes: request(
        'POST',
        `${podPath}/evictee/eviction`,
        json,
        JSON.stringify({ apiVersion: 'policy/v1', kind: 'Eviction', metadata: { name: 'evictee', namespace: ns } }),
      ),
      status: 403,
      body: /no-pod-delete/,
    },
    {
      name: 'pods/status under an allow rule for patching pods: a forged condition',
      bytes: request(
        'PATCH',
        `${podPath}/victim/status`,
        'Content-Type: application/strategic-merge-patch+json\r\n',
        JSON.stringify({ status: { conditions: [{ type: 'chaperone.dev/forged', status: 'True' }] } }),
      ),
      status: 403,
    },
    {
      name: 'serviceaccounts/token (TokenRequest) under an allow rule for creating service accounts: a credential',
      bytes: request(
        'POST',
        `/api/v1/namespaces/${ns}/serviceaccounts/builder/token`,
        json,
        JSON.stringify({
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: { expirationSeconds: 600 },
        }),
      ),
      status: 403,
    },
    {
      name: 'pods/log under an allow rule for reading pods',
      bytes: request('GET', `${podPath}/victim/log`),
      status: 403,
    },
    {
      name: 'pods/proxy under an allow rule for reading pods',
      bytes: request('GET', `${podPath}/victim:8080/proxy/`),
      status: 403,
    },
    {
      name: 'pods/proxy upgraded to a WebSocket under an allow rule for reading pods',
      bytes: upgrade(`${podPath}/victim:8080/proxy/ws`),
      status: 403,
    },
    {
      name: 'services/proxy under an allow rule for reading services',
      bytes: request('GET', `/api/v1/namespaces/${ns}/services/web:80/proxy/admin`),
      status: 403,
    },
    {
      name: "nodes/proxy under an allow rule for reading nodes: the kubelet's pod list",
      bytes: request('GET', '/api/v1/nodes/chaperone-node/proxy/pods'),
      status: 403,
    },
    {
      name: "nodes/proxy upgraded to a WebSocket: the kubelet's exec, past no-exec",
      bytes: upgrade(`/api/v1/nodes/chaperone-node/proxy/exec/${ns}/victim/c?command=id&output=1`),
      status: 403,
    },
    // A DELETE with a body: the API server reads its options from the body and ignores the query.
    {
      name: 'dryRun=All in the query of a DELETE whose body the API server reads instead (it deletes)',
      bytes: request('DELETE', `/api/v1/namespaces/${ns}/configmaps/dry-query-body?dryRun=All`, json, deleteOptions()),
      status: 400,
      body: /dryRun/,
    },
    {
      name: 'dryRun=All in the query and in the body of a DELETE',
      bytes: request(
        'DELETE',
        `/api/v1/namespaces/${ns}/configmaps/dry-both?dryRun=All`,
        json,
        deleteOptions({ dryRun: ['All'] }),
      ),
      status: 400,
      body: /dryRun/,
    },
    {
      name: 'a dry run in the body of a DELETE of a pod is still decided as the delete',
      bytes: request('DELETE', `${podPath}/victim`, json, deleteOptions({ dryRun: ['All'] })),
      status: 403,
      body: /no-pod-delete/,
    },
    {
      name: 'a DELETE of a pod with preconditions and a propagation policy in its body',
      bytes: request(
        'DELETE',
        `${podPath}/victim?timeout=1s`,
        json,
        deleteOptions({ preconditions: { uid: 'x' }, propagationPolicy: 'Background', gracePeriodSeconds: 0 }),
      ),
      status: 403,
      body: /no-pod-delete/,
    },
    {
      name: 'DELETE with a labelSelector is a deletecollection of pods',
      bytes: request('DELETE', `${podPath}?labelSelector=app%3Dvictim&propagationPolicy=Background`),
      status: 403,
      body: /no-pod-delete/,
    },
    {
      name: 'POST with X-HTTP-Method-Override: DELETE (the API server does not honour it: 405)',
      bytes: request('POST', `${podPath}/victim`, `X-HTTP-Method-Override: DELETE\r\n${json}`, '{}'),
      status: 405,
      reaches: true,
    },
    {
      name: 'Expect: 100-continue on a denied pod delete (Node answers 100 before the decision; the body is read, then refused)',
      bytes: request('DELETE', `${podPath}/victim`, `Expect: 100-continue\r\n${json}`, deleteOptions()),
      status: 403,
      body: /no-pod-delete/,
    },
    // Paths.
    { name: 'a leading double slash', bytes: request('GET', `//api/v1/namespaces/${ns}/secrets/db`), status: 400 },
    {
      name: 'a dot segment from secrets to pods',
      bytes: request('GET', `/api/v1/namespaces/${ns}/secrets/../pods`),
      status: 400,
    },
    {
      name: 'overlong UTF-8 slash and dots (%c0%af, %c0%ae)',
      bytes: request('GET', `/api/v1/namespaces/${ns}/configmaps%c0%af%c0%ae%c0%ae%c0%afsecrets/db`),
      status: 400,
    },
    {
      name: 'an escaped letter in the resource (%73ecrets)',
      bytes: request('GET', `/api/v1/namespaces/${ns}/%73ecrets/db`),
      status: 403,
      body: /no-secrets/,
    },
    {
      name: 'a ; path parameter on the resource',
      bytes: request('GET', `/api/v1/namespaces/${ns}/secrets;v=1/db`),
      status: 403,
    },
    {
      name: 'a ; path parameter on a pod name before exec',
      bytes: request('POST', `${podPath}/victim;x/exec?command=id&stdout=true`),
      status: 403,
      body: /no-exec/,
    },
    { name: 'upper-case resource SECRETS', bytes: request('GET', `/api/v1/namespaces/${ns}/SECRETS/db`), status: 403 },
    {
      name: 'a capitalised subresource Exec',
      bytes: request('POST', `${podPath}/victim/Exec?command=id`),
      status: 403,
    },
    {
      name: 'a trailing slash after the secret name',
      bytes: request('GET', `/api/v1/namespaces/${ns}/secrets/db/`),
      status: 403,
      body: /no-secrets/,
    },
    { name: 'the core group as /apis/v1', bytes: request('GET', `/apis/v1/namespaces/${ns}/secrets/db`), status: 403 },
    {
      name: 'the legacy /watch/ prefix naming one secret',
      bytes: request('GET', `/api/v1/watch/namespaces/${ns}/secrets/db`),
      status: 403,
      body: /no-secrets/,
    },
    {
      name: 'the legacy /proxy/ prefix to a pod',
      bytes: request('GET', `/api/v1/proxy/namespaces/${ns}/pods/victim/`),
      status: 403,
    },
    {
      name: 'HEAD of a secret',
      bytes: request('HEAD', `/api/v1/namespaces/${ns}/secrets/db`),
      status: 403,
      bodiless: true,
    },
    { name: 'OPTIONS of a secret', bytes: request('OPTIONS', `/api/v1/namespaces/${ns}/secrets/db`), status: 400 },
    {
      name: '/.well-known/openid-configuration is no discovery document the sidecar opens',
      bytes: request('GET', '/.well-known/openid-configuration'),
      status: 403,
    },
    {
      name: 'server-side apply of a Secret',
      bytes: request(
        'PATCH',
        `/api/v1/namespaces/${ns}/secrets/db?fieldManager=agent&force=true`,
        'Content-Type: application/apply-patch+yaml\r\n',
        'apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: stolen\n',
      ),
      status: 403,
      body: /no-secrets/,
    },
    // Reviews: answered for the agent or decided by policy, never for the sidecar's credential.
    {
      name: 'a SubjectAccessReview (cluster-wide, for any user)',
      bytes: request(
        'POST',
        '/apis/authorization.k8s.io/v1/subjectaccessreviews',
        json,
        JSON.stringify({
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: { user: 'admin', resourceAttributes: { verb: 'get', resource: 'secrets', namespace: ns } },
        }),
      ),
      status: 403,
    },
    {
      name: 'a LocalSubjectAccessReview in the namespace',
      bytes: request(
        'POST',
        `/apis/authorization.k8s.io/v1/namespaces/${ns}/localsubjectaccessreviews`,
        json,
        JSON.stringify({
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'LocalSubjectAccessReview',
          metadata: { namespace: ns },
          spec: { user: 'admin', resourceAttributes: { verb: 'get', resource: 'secrets', namespace: ns } },
        }),
      ),
      status: 403,
    },
    {
      name: 'a SelfSubjectRulesReview is answered by the sidecar, not for its credential',
      bytes: request(
        'POST',
        '/apis/authorization.k8s.io/v1/selfsubjectrulesreviews',
        json,
        JSON.stringify({
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SelfSubjectRulesReview',
          spec: { namespace: ns },
        }),
      ),
      status: 201,
      body: /"incomplete":true/,
    },
    // Bodies.
    {
      name: 'a gzip-encoded create (the API server does not decode request bodies)',
      bytes: request(
        'POST',
        `/api/v1/namespaces/${ns}/configmaps`,
        `${json}Content-Encoding: gzip\r\n`,
        gzipSync(JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'gzipped' } })),
      ),
      status: 400,
      reaches: true,
    },
    {
      name: 'a GET whose chunked body is a DELETE (the body is dropped, never parsed as a request)',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${(() => {
        const smuggled = `DELETE /api/v1/namespaces/${ns}/configmaps/keep HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n\r\n`;
        return `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
      })()}`,
      status: 200,
      reaches: true,
    },
    // Headers.
    {
      name: 'Impersonate_User and Impersonate_Group spelled with underscores',
      bytes: request('GET', '/api/v1/nodes', 'Impersonate_User: system:admin\r\nImpersonate_Group: system:masters\r\n'),
      status: 403,
      body: /impersonation/,
    },
    {
      name: 'exec upgraded to a WebSocket',
      bytes: upgrade(`${podPath}/victim/exec?command=id&stdout=true`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: 'exec upgraded to SPDY (refused as the denial, before the protocol)',
      bytes: `POST ${podPath}/victim/exec?command=id&stdout=true HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n`,
      status: 403,
      body: /no-exec/,
    },
    {
      name: 'watch=1 on one named secret',
      bytes: request('GET', `/api/v1/namespaces/${ns}/secrets/db?watch=1`),
      status: 403,
      body: /no-secrets/,
    },
    {
      name: 'port-forward upgraded to a WebSocket',
      bytes: upgrade(`${podPath}/victim/portforward?ports=8080`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: 'attach without an upgrade (a plain POST)',
      bytes: request('POST', `${podPath}/victim/attach?stdout=true`),
      status: 403,
      body: /no-exec/,
    },
    {
      name: 'absolute-form naming the listener itself, to a secret',
      bytes: request('GET', `https://${host}/api/v1/namespaces/${ns}/secrets/db`),
      status: 403,
      body: /no-secrets/,
    },
    {
      name: 'a Host naming the in-cluster API server',
      bytes: `GET /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /no-secrets/,
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const res = await exchange(f.sidecar.port, ca, c.bytes);
      assert.equal(res.status, c.status, `${res.head}\n${res.body}`);
      if (c.body !== undefined) assert.match(res.body, c.body);
      if (c.reaches === true) assert.match(res.head, ANSWERED_BY_API_SERVER, 'answered by the API server');
      else {
        assert.doesNotMatch(res.head, ANSWERED_BY_API_SERVER, `the API server saw it:\n${res.head}\n${res.body}`);
        if (c.bodiless === true || c.status < 400) return;
        assert.match(res.body, /"kind":"Status"/);
        assert.match(res.body, /chaperone: /);
      }
    });
  }

  await t.test('the API server reads an upper-case resource as no resource it serves', async () => {
    // Why refusing case variants costs nothing: resources are lower-case, the API server matches them exactly.
    await assert.rejects(f.admin(['get', '--raw', `/api/v1/namespaces/${ns}/SECRETS/db`]), /NotFound|not found/i);
  });

  await t.test('why: the API server ignores dryRun in the query of a DELETE with a body, and deletes', async () => {
    await f.admin(['create', 'configmap', 'dry-admin', '-n', ns]);
    const path = `/api/v1/namespaces/${ns}/configmaps/dry-admin?dryRun=All`;
    assert.equal(await adminDelete(path, deleteOptions()), 200);
    assert.equal(await f.admin(['get', 'configmap', 'dry-admin', '-n', ns, '--ignore-not-found', '-o', 'name']), '');
  });

  await t.test('the API server state: nothing denied ran', async () => {
    const victim = JSON.parse(await f.admin(['get', 'pod', 'victim', '-n', ns, '-o', 'json'])) as {
      spec: { ephemeralContainers?: unknown[] };
      status: { conditions?: { type: string }[] };
    };
    assert.deepEqual(victim.spec.ephemeralContainers ?? [], [], 'no ephemeral container was added');
    assert.ok(!(victim.status.conditions ?? []).some((c) => c.type === 'chaperone.dev/forged'), 'status not forged');
    assert.match(await f.admin(['get', 'pod', 'evictee', '-n', ns, '-o', 'name']), /pod\/evictee/, 'not evicted');
    const configMaps = (await f.admin(['get', 'configmap', '-n', ns, '-o', 'name'])).split('\n');
    for (const name of ['keep', 'dry-query-body', 'dry-both', 'dry-body'])
      assert.ok(configMaps.includes(`configmap/${name}`), `${name} survives: ${configMaps.join(' ')}`);
    assert.ok(!configMaps.includes('configmap/gzipped'), configMaps.join(' '));
  });

  await t.test('a dry run asked for in the body of a DELETE is recorded as a dry run, and is one', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      request('DELETE', `/api/v1/namespaces/${ns}/configmaps/dry-body`, json, deleteOptions({ dryRun: ['All'] })),
    );
    assert.equal(res.status, 200, `${res.head}\n${res.body}`);
    assert.match(await f.admin(['get', 'configmap', 'dry-body', '-n', ns, '-o', 'name']), /dry-body/);
    const entries = await f.sidecar.settledRecords();
    const decision = entries.find(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/configmaps/dry-body'),
    );
    assert.match(decision?.record.command?.text ?? '', /\(dry run\)$/);
  });

  await t.test('a DELETE without a dry run is recorded as a delete, and is one', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      request('DELETE', `/api/v1/namespaces/${ns}/configmaps/keep`, json, deleteOptions({ dryRun: [] })),
    );
    assert.equal(res.status, 200, `${res.head}\n${res.body}`);
    assert.equal(await f.admin(['get', 'configmap', 'keep', '-n', ns, '--ignore-not-found', '-o', 'name']), '');
    const entries = await f.sidecar.settledRecords();
    const decision = entries.find(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/configmaps/keep'),
    );
    assert.doesNotMatch(decision?.record.command?.text ?? '(none)', /dry run/);
  });

  await t.test('every refused request is a denied decision with a denied outcome', async () => {
    const entries = await f.sidecar.settledRecords();
    const denied = entries.filter((e) => e.record.type === 'command.decision' && e.record.decision?.result === 'deny');
    const rules = new Set(denied.map((e) => e.record.decision?.rule));
    for (const rule of ['no-secrets', 'no-pod-delete', 'no-exec', 'default', 'unclassifiable', 'impersonation'])
      assert.ok(rules.has(rule), `a ${rule} denial is recorded (${[...rules].join(', ')})`);
    for (const d of denied) {
      const outcome = entries.find(
        (e) =>
          e.session.sessionId === d.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === d.record.command?.id,
      );
      assert.equal(outcome?.record.outcome?.status, 'denied', d.record.command?.text);
    }
  });
});
