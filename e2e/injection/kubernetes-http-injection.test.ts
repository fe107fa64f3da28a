// Injection of Kubernetes API and HTTP listeners, under the running operator against the shared control
// plane: a pod naming a `kubernetes` and an `http` ProtectedResource is injected by the operator's webhook,
// the stored pod is materialised as a kubelet would (e2e/harness/materialise-pod.ts) and its sidecar started
// with exactly the rendered config. The agent side uses only what the agent container holds: its env
// (KUBECONFIG), the kubeconfig the injector rendered (https to the sidecar's loopback listener, the
// sidecar's self-signed certificate from the shared read-only volume as CA, the agent's own audience-bound
// token) — with the real kubectl — and its token for the HTTP API. Checked: allowed and denied requests on
// both, the upstream credentials never among what the agent holds, the HTTP credential seen upstream only,
// the agent's token refused by the API server directly, the records in the Session trail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parse, stringify } from 'yaml';
import { GROUP, VERSION, type AccessPolicy, type AccessPolicySpec, type Session } from '@chaperone/api';
import {
  AGENT_LOOPBACK_TLS_DIR,
  ANNOTATION_AGENT_KUBECONFIG,
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  SIDECAR_CONTAINER,
  VOLUME_LOOPBACK_TLS,
} from '../../operator/src/injection/constants.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { materialiseSidecar, materialiseVolumes, resolvedContainerEnv } from '../harness/materialise-pod.ts';
import { startOperatorProcess } from '../harness/operator-process.ts';
import { poll } from '../harness/poll.ts';
import { freePort } from '../harness/postgres.ts';
import { kubeconfigFor, runKubectl } from '../kubernetes/kube-fixture.ts';
import { agentPod, waitForServiceAccount } from './injection-fixture.ts';

const HTTP_CREDENTIAL = `http-upstream-${Date.now().toString(36)}-secret-value`;

const POLICY: AccessPolicySpec = {
  resources: { names: ['cluster-api', 'echo-api'] },
  rules: [
    { name: 'read-pods', decision: 'allow', match: { kubernetes: { verbs: ['get', 'list'], resources: ['pods'] } } },
    { name: 'public-reads', decision: 'allow', match: { http: { methods: ['GET'], paths: ['/public/**'] } } },
  ],
  defaultDecision: 'deny',
};

/** Every regular file under `dir` with its content (kubelet-style `..data` links followed once). */
function filesUnder(dir: string): string[] {
  if (!statSync(dir).isDirectory()) return [readFileSync(dir, 'utf8')];
  return readdirSync(dir)
    .filter((e) => !e.startsWith('..'))
    .flatMap((e) => filesUnder(join(dir, e)));
}

test('an injected pod reaches the Kubernetes API and an HTTP API only through its sidecar', async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const cp = controlPlaneEnv();
  const ns = await createTestNamespace(t, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
  await waitForServiceAccount(core, ns, 'default');

  // The Kubernetes resource's credential: a token of an account that may only read in this namespace.
  await kubectl(['create', 'serviceaccount', 'upstream-reader', '-n', ns]);
  await kubectl([
    'create',
    'rolebinding',
    'upstream-reader',
    '--clusterrole=view',
    `--serviceaccount=${ns}:upstream-reader`,
    '-n',
    ns,
  ]);
  const kubeToken = (await kubectl(['create', 'token', 'upstream-reader', '-n', ns, '--duration=1h'])).trim();
  await core.createNamespacedSecret({
    namespace: ns,
    body: { metadata: { name: 'cluster-api-token' }, stringData: { token: kubeToken } },
  });
  await core.createNamespacedSecret({
    namespace: ns,
    body: { metadata: { name: 'cluster-api-ca' }, stringData: { 'ca.crt': readFileSync(cp.caFile, 'utf8') } },
  });
  await core.createNamespacedSecret({
    namespace: ns,
    body: { metadata: { name: 'echo-api-key' }, stringData: { key: HTTP_CREDENTIAL } },
  });

  // The HTTP API: records what it received and answers with JSON.
  const received: { url: string; headers: IncomingHttpHeaders }[] = [];
  const api = createServer((req, res) => {
    received.push({ url: req.url ?? '', headers: req.headers });
    const body = JSON.stringify({ path: req.url, ok: true });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => api.close(() => resolve())));
  const apiPort = (api.address() as { port: number }).port;

  const kubePort = await freePort();
  const httpPort = await freePort();
  const resource = (name: string, spec: Record<string, unknown>) =>
    custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'ProtectedResource', metadata: { name }, spec },
    });
  await resource('cluster-api', {
    type: 'kubernetes',
    endpoint: { url: cp.server },
    tls: { mode: 'verify-full', caSecretRef: { name: 'cluster-api-ca', key: 'ca.crt' } },
    credentialSecretRef: { name: 'cluster-api-token', usernameKey: 'username', passwordKey: 'token' },
    listenPort: kubePort,
  });
  await resource('echo-api', {
    type: 'http',
    endpoint: { url: `http://127.0.0.1:${String(apiPort)}` },
    credentialSecretRef: { name: 'echo-api-key', usernameKey: 'username', passwordKey: 'key' },
    listenPort: httpPort,
  });
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'AccessPolicy', metadata: { name: 'agent-reads' }, spec: POLICY },
  });

  const operator = await startOperatorProcess(t, { namespace: ns, extraArgs: ['--enable-audit-authority'] });
  const withLogs = (err: unknown): never => {
    throw new Error(`${String(err)}\noperator logs (last 20):\n${operator.logs().slice(-20).join('\n')}`, {
      cause: err,
    });
  };
  await poll('the policy to be Ready', async () => {
    const p = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'accesspolicies',
      name: 'agent-reads',
    })) as AccessPolicy;
    return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true ? true : undefined;
  }).catch(withLogs);

  const created = await core.createNamespacedPod({ namespace: ns, body: agentPod('agent', 'cluster-api,echo-api') });
  const pod = await core.readNamespacedPod({ namespace: ns, name: created.metadata?.name ?? '' });

  await t.test('the injector renders both listeners and an https kubeconfig with the loopback CA', () => {
    const config = parse(pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '') as {
      listeners: Record<string, unknown>[];
    };
    const byName = new Map(config.listeners.map((l) => [l.name, l]));
    assert.deepEqual(byName.get('cluster-api'), {
      name: 'cluster-api',
      type: 'kubernetes',
      listen: `127.0.0.1:${String(kubePort)}`,
      tls: { selfSignedCertFile: `${AGENT_LOOPBACK_TLS_DIR}/cluster-api.crt` },
      upstream: {
        url: cp.server,
        tls: { mode: 'verify-full', caFile: '/etc/chaperone/credentials/cluster-api/ca.crt' },
        tokenFile: '/etc/chaperone/credentials/cluster-api/password',
      },
      resource: { namespace: ns, labels: {} },
      auditFailureMode: 'FailClosed',
    });
    assert.deepEqual(byName.get('echo-api'), {
      name: 'echo-api',
      type: 'http',
      listen: `127.0.0.1:${String(httpPort)}`,
      upstream: {
        url: `http://127.0.0.1:${String(apiPort)}`,
        tls: { mode: 'disable' },
        credential: { valueFile: '/etc/chaperone/credentials/echo-api/password' },
      },
      resource: { namespace: ns, labels: {} },
      auditFailureMode: 'FailClosed',
    });
    const kubeconfig = parse(pod.metadata?.annotations?.[ANNOTATION_AGENT_KUBECONFIG] ?? '') as {
      clusters: { name: string; cluster: Record<string, string> }[];
      users: { user: Record<string, string> }[];
      'current-context': string;
    };
    assert.deepEqual(kubeconfig.clusters, [
      {
        name: 'cluster-api',
        cluster: {
          server: `https://127.0.0.1:${String(kubePort)}`,
          'certificate-authority': `${AGENT_LOOPBACK_TLS_DIR}/cluster-api.crt`,
        },
      },
    ]);
    assert.deepEqual(kubeconfig.users[0]?.user, { tokenFile: '/var/run/secrets/chaperone/token' });
    assert.equal(kubeconfig['current-context'], 'cluster-api');
    // The loopback volume: written by the sidecar, read-only in the agent.
    const all = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])];
    const sidecarMount = all
      .find((c) => c.name === SIDECAR_CONTAINER)
      ?.volumeMounts?.find((m) => m.name === VOLUME_LOOPBACK_TLS);
    const agentMount = all.find((c) => c.name === 'agent')?.volumeMounts?.find((m) => m.name === VOLUME_LOOPBACK_TLS);
    assert.equal(sidecarMount?.readOnly, undefined);
    assert.equal(agentMount?.readOnly, true);
    const emptyDir = pod.spec?.volumes?.find((v) => v.name === VOLUME_LOOPBACK_TLS)?.emptyDir;
    assert.equal(emptyDir?.medium, 'Memory');
    assert.equal(emptyDir.sizeLimit, '1Mi');
  });

  await poll('the sidecar RoleBinding to name the pod service account', async () => {
    const binding = await rbac.readNamespacedRoleBinding({ namespace: ns, name: 'chaperone-sidecar' });
    return binding.subjects?.some((s) => s.kind === 'ServiceAccount' && s.name === 'default') === true
      ? true
      : undefined;
  }).catch(withLogs);

  const root = join(testDir(t), 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  const sidecar = await (await materialiseSidecar(core, pod, join(root, 'sidecar'))).start();
  t.after(() => sidecar.stop());

  // The agent container as the kubelet would fill it. The loopback-TLS emptyDir is one directory shared by
  // both containers in a pod; here the sidecar's copy is where the agent's kubeconfig finds its CA.
  const agentRoot = join(root, 'agent');
  await materialiseVolumes(core, pod, 'agent', agentRoot);
  const agentEnv = await resolvedContainerEnv(core, pod, pod.spec?.containers[0] as k8s.V1Container);
  assert.equal(agentEnv.KUBECONFIG, '/var/run/secrets/chaperone/kubeconfig');
  const agentKubeconfig = parse(readFileSync(join(agentRoot, agentEnv.KUBECONFIG), 'utf8')) as {
    clusters: { cluster: Record<string, string> }[];
    users: { user: Record<string, string> }[];
  };
  const ca = agentKubeconfig.clusters[0]?.cluster ?? {};
  ca['certificate-authority'] = join(root, 'sidecar', ca['certificate-authority'] ?? '');
  const user = agentKubeconfig.users[0]?.user ?? {};
  user.tokenFile = join(agentRoot, user.tokenFile ?? '');
  const kubeconfigFile = join(root, 'agent.kubeconfig');
  writeFileSync(kubeconfigFile, stringify(agentKubeconfig));
  const agentToken = readFileSync(user.tokenFile, 'utf8');
  const agent = (args: string[]) => runKubectl(kubeconfigFile, args);

  await t.test('nothing the agent holds is an upstream credential', () => {
    const held = [
      ...Object.values(agentEnv),
      ...(pod.spec?.containers[0]?.volumeMounts ?? []).flatMap((m) => {
        try {
          return filesUnder(join(agentRoot, m.mountPath));
        } catch {
          return [];
        }
      }),
    ];
    for (const secret of [kubeToken, HTTP_CREDENTIAL]) {
      assert.ok(!held.some((v) => v.includes(secret)), 'an upstream credential is among what the agent holds');
    }
    assert.ok(held.includes(agentToken), 'the agent token is among what the agent holds');
  });

  await t.test(
    'kubectl with the injected kubeconfig: allowed reads work, the rest is Forbidden by policy',
    async () => {
      await kubectl(['run', 'listed', '--image=busybox', '--restart=Never', '-n', ns]);
      const pods = await agent(['get', 'pods', '-n', ns, '-o', 'name']);
      assert.equal(pods.code, 0, pods.stderr);
      assert.match(pods.stdout, /^pod\/listed$/m);
      const secrets = await agent(['get', 'secrets', '-n', ns]);
      assert.notEqual(secrets.code, 0);
      assert.match(secrets.stderr, /Error from server \(Forbidden\): chaperone: .*agent-reads/);
      const create = await agent(['create', 'configmap', 'x', '-n', ns]);
      assert.notEqual(create.code, 0);
      assert.match(create.stderr, /chaperone: permission denied by policy .*agent-reads/);
    },
  );

  await t.test('the agent token sent straight to the API server is refused', async () => {
    const direct = join(root, 'direct.kubeconfig');
    writeFileSync(direct, kubeconfigFor(cp.server, agentToken, cp.caFile));
    const refused = await runKubectl(direct, ['get', 'pods', '-n', ns]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /Unauthorized|You must be logged in/);
  });

  await t.test(
    'the HTTP API through the sidecar: the credential is injected upstream, denied paths never leave',
    async () => {
      const call = (path: string) =>
        fetch(`http://127.0.0.1:${String(httpPort)}${path}`, { headers: { authorization: `Bearer ${agentToken}` } });
      const allowed = await call('/public/items');
      assert.equal(allowed.status, 200);
      assert.deepEqual(await allowed.json(), { path: '/public/items', ok: true });
      const last = received.at(-1);
      assert.equal(last?.headers.authorization, `Bearer ${HTTP_CREDENTIAL}`);
      const seen = received.length;
      const denied = await call('/admin/users');
      assert.equal(denied.status, 403);
      assert.match(((await denied.json()) as { detail: string }).detail, /agent-reads/);
      assert.equal(received.length, seen, 'a denied request reached the upstream');
      const unauthenticated = await fetch(`http://127.0.0.1:${String(httpPort)}/public/items`);
      assert.equal(unauthenticated.status, 401);
    },
  );

  await t.test('the Session trail has both resources, allowed and denied', async () => {
    const wanted = {
      'cluster-api allow list pods': (r: Row) =>
        r.resource === 'cluster-api' && r.decision === 'allow' && r.text.includes(`/api/v1/namespaces/${ns}/pods`),
      'cluster-api deny secrets': (r: Row) =>
        r.resource === 'cluster-api' && r.decision === 'deny' && r.text.includes('/secrets'),
      'echo-api allow /public/items': (r: Row) =>
        r.resource === 'echo-api' && r.decision === 'allow' && r.text === 'GET /public/items',
      'echo-api deny /admin/users': (r: Row) =>
        r.resource === 'echo-api' && r.decision === 'deny' && r.text === 'GET /admin/users',
    };
    let missing: string[] = [];
    await poll('the records of both listeners', async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
      })) as { items: Session[] };
      const rows: Row[] = list.items.flatMap((s) =>
        s.spec.records
          .filter((r) => r.type === 'command.decision')
          .map((r) => ({ resource: s.spec.resource.name, text: r.command?.text ?? '', decision: r.decision?.result })),
      );
      missing = Object.entries(wanted)
        .filter(([, has]) => !rows.some(has))
        .map(([name]) => name);
      return missing.length === 0 ? true : undefined;
    }).catch((err: unknown) => {
      throw new Error(`records missing: ${missing.join(', ')}`, { cause: err });
    });
  });
});

interface Row {
  readonly resource: string;
  readonly text: string;
  readonly decision: string | undefined;
}
