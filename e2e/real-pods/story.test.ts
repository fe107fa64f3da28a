// The whole story on real pods, as a user lives it: `make release` (scripts/release.ts for a test version),
// the release's image archives imported and `helm install` of its packaged chart, on a local node (containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS; see
// e2e/harness/node.ts) joined to the harness's control plane. The operator runs as two pods with leader
// election and serves its webhooks through its Service; a ProtectedResource for the harness's PostgreSQL
// (reached from pods through a selector-less Service); a read-only AccessPolicy; an annotated Job. The
// webhook injects the native sidecar, the kubelet runs it before the agent and stops it after; the
// agent (psql in the agent image) reaches PostgreSQL only through the sidecar with its projected token:
// reads allowed, a write denied with 42501, going around the sidecar fails; then an AccessPolicy created
// while the agent's psql session is open reaches the running sidecar through the signed policy set and
// denies the session's next statement. At the chart's highest trust level (docs/audit.md, "Trust
// levels"): the agents' namespace is strict (sealed pods), the credential lives in the chart's credential
// namespace and the operator delivers it to the attested sidecar, and the operator writes the Sessions
// into the chart's audit namespace; `kubectl chaperone verify --require-certified` passes there. The
// sidecar's pod-bound tokens come from the node's kubelet, the only minter the chart's admission policy
// allows. Both namespaces with pods enforce the restricted Pod Security Standard. The release's own
// kubectl-chaperone, run from a clean environment, lists and verifies the Sessions; `helm uninstall`
// removes the operator and its webhooks and keeps the evidence, which still verifies.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import {
  AUDIT_AUTHORITY_JWKS_KEY,
  AUDIT_AUTHORITY_NAME,
  GROUP,
  VERSION,
  verifySignerCertificate,
  type AccessPolicy,
  type AccessPolicySpec,
  type Session,
} from '@chaperone/api';
import {
  ANNOTATION_INJECT,
  ANNOTATION_RESOURCES,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  LABEL_STRICT,
  SIDECAR_CONTAINER,
  VOLUME_CREDENTIALS,
} from '../../operator/src/injection/constants.ts';
import { buildTrail, createSigner } from '../audit/trail-fixture.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { ENV, controlPlaneEnv, postgresEnv } from '../harness/env.ts';
import { createTestNamespace, kubeConfig, kubectl, statusOf } from '../harness/kube.ts';
import {
  LOCAL_NODE_NAME,
  LOCAL_NODE_TOLERATION,
  builtImageRef,
  startLocalNode,
  type LocalNode,
} from '../harness/node.ts';
import { poll } from '../harness/poll.ts';
import { REPO_ROOT, toolPath } from '../harness/tools.ts';
import { makeTestRelease } from '../release/test-release.ts';

const run = promisify(execFile);
/** Pods start on a shared 2-core machine: images unpack, Node.js starts, probes pass. */
const POD_DEADLINE_MS = 240_000;

let node: LocalNode;
before(async () => {
  const cp = controlPlaneEnv();
  node = await startLocalNode({
    runDir: process.env[ENV.runDir] ?? '',
    controlPlane: { kubeconfig: cp.kubeconfig, server: cp.server, caFile: cp.caFile },
    log: (line) => console.log(line),
  });
});
after(async () => {
  await node.stop();
});

const kc = kubeConfig();
const core = kc.makeApiClient(k8s.CoreV1Api);
const apps = kc.makeApiClient(k8s.AppsV1Api);
const batch = kc.makeApiClient(k8s.BatchV1Api);
const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
const discovery = kc.makeApiClient(k8s.DiscoveryV1Api);
const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
const custom = kc.makeApiClient(k8s.CustomObjectsApi);
const disruption = kc.makeApiClient(k8s.PolicyV1Api);

/** The Kubernetes version tools.env pins (what the harness's control plane runs). */
function kubernetesVersion(): string {
  const pinned = /^KUBERNETES_VERSION=v?(\S+)$/m.exec(readFileSync(join(REPO_ROOT, 'tools.env'), 'utf8'))?.[1];
  assert.ok(pinned);
  return pinned;
}

async function helm(args: string[]): Promise<string> {
  const { stdout } = await run(toolPath('helm'), ['--kubeconfig', controlPlaneEnv().kubeconfig, ...args], {
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

/** Why a pod is not where we wait for it to be: its status and the events about it. */
async function describePods(namespace: string): Promise<string> {
  const out = await kubectl(['get', 'pods', '-n', namespace, '-o', 'wide']).catch((e: unknown) => String(e));
  const events = await kubectl(['get', 'events', '-n', namespace, '--sort-by=.lastTimestamp']).catch((e: unknown) =>
    String(e),
  );
  return `${out}\n${events}\nkubelet:\n${node.logs('kubelet').split('\n').slice(-15).join('\n')}`;
}

/**
 * The chart's own admission policies (Session writers and deletion, approval decisions, pod-bound tokens
 * from kubelets only, no exec into the sidecar), rendered for this release but bound to the story's
 * namespaces only: the control plane is shared with test files that write Sessions and request tokens as
 * test clients. Removed when the test ends.
 */
async function installChartAdmissionPolicies(
  t: TestContext,
  chart: string,
  release: string,
  system: string,
  namespaces: readonly string[],
) {
  const rendered = await helm([
    'template',
    release,
    chart,
    '--namespace',
    system,
    '--kube-version',
    kubernetesVersion(),
    '--show-only',
    'templates/admission-policies.yaml',
  ]);
  const documents = parseAllDocuments(rendered)
    .map((d) => d.toJS() as k8s.KubernetesObject | null)
    .filter((d): d is k8s.KubernetesObject => d !== null);
  const suffix = `-${namespaces[0] ?? ''}`;
  for (const doc of documents) {
    const name = `${doc.metadata?.name ?? ''}${suffix}`;
    (doc.metadata ??= {}).name = name;
    if (doc.kind === 'ValidatingAdmissionPolicy') {
      const policy = doc as k8s.V1ValidatingAdmissionPolicy;
      await admission.createValidatingAdmissionPolicy({ body: policy });
      t.after(() => admission.deleteValidatingAdmissionPolicy({ name }).then(() => undefined));
    } else if (doc.kind === 'ValidatingAdmissionPolicyBinding') {
      const binding = doc as k8s.V1ValidatingAdmissionPolicyBinding;
      assert.ok(binding.spec);
      binding.spec.policyName = `${binding.spec.policyName}${suffix}`;
      const matchResources = binding.spec.matchResources ?? {};
      matchResources.namespaceSelector = {
        matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: [...namespaces] }],
      };
      binding.spec.matchResources = matchResources;
      await admission.createValidatingAdmissionPolicyBinding({ body: binding });
      t.after(() => admission.deleteValidatingAdmissionPolicyBinding({ name }).then(() => undefined));
    }
  }
  assert.ok(
    documents.some((d) => d.kind === 'ValidatingAdmissionPolicy'),
    'the chart renders admission policies',
  );
  // Enforced once the API server has loaded them: an administrator's Session write is refused from then on.
  for (const namespace of namespaces) {
    const [probe] = await buildTrail({ name: 'probe', namespace, signer: await createSigner() });
    assert.ok(probe);
    const { status: _status, ...body } = probe;
    await poll(`the Session writers policy to be enforced in ${namespace}`, () =>
      custom
        .createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace,
          plural: 'sessions',
          body,
          dryRun: 'All',
        })
        .then(
          () => undefined,
          (err: unknown) => (statusOf(err)?.code === 403 ? true : undefined),
        ),
    );
  }
}

/** The injected sidecar's resources as the story's platform team sets them (chart value sidecarResources). */
const SIDECAR_RESOURCES = { requests: { cpu: '20m', memory: '96Mi' }, limits: { memory: '320Mi' } } as const;

const RESTRICTED = { 'pod-security.kubernetes.io/enforce': 'restricted' } as const;

const READ_ONLY_ORDERS: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [
    {
      name: 'reads',
      decision: 'allow',
      match: { sql: { statementKinds: ['select', 'show', 'set', 'transaction'], sideEffects: false } },
    },
  ],
  defaultDecision: 'deny',
};

/** Created while the agent's live session is open: no more reads of orders. */
const NO_ORDERS: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [
    {
      name: 'orders-closed',
      decision: 'deny',
      match: { sql: { relations: ['public.orders'] } },
      message: 'orders are closed for the night',
    },
  ],
  defaultDecision: 'allow',
};

/**
 * The agent's script: a read, a write, and an attempt to go around the sidecar; then one live psql
 * session repeating a read every second (`\watch` stops when a statement fails), which the policy
 * created meanwhile ends. Each part marked in its log.
 */
function agentScript(directHost: string): string {
  return [
    'export PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")"',
    'echo "== read"',
    "psql -X -A -t -c 'select item from orders order by id' || exit 10",
    'echo "== write"',
    'if psql -X -A -t -v VERBOSITY=verbose -v ON_ERROR_STOP=1 -c "insert into orders values (3, \'plum\')" 2>&1; then exit 11; fi',
    'echo "== around"',
    `if PGHOST=${directHost} PGPORT=5432 PGSSLMODE=require PGCONNECT_TIMEOUT=10 psql -X -A -t -c 'select 1' 2>&1; then exit 12; fi`,
    'echo "== live"',
    // One connection, fed through stdin (psql's \watch repeats the query buffer of its input).
    `printf '%s\\n' "select 'live', pg_backend_pid(), count(*) from orders \\\\watch 1" | psql -X -A -t -v VERBOSITY=verbose 2>&1`,
    'echo "== done"',
  ].join('\n');
}

test('helm install on a local node, then an annotated Job reads through its injected sidecar and is audited', async (t) => {
  const suffix = randomBytes(3).toString('hex');
  const release = `story-${suffix}`;
  const system = `chaperone-story-${suffix}`;
  // The chart creates these two (values auditNamespace and credentials) and keeps them on uninstall.
  const auditNamespace = `chaperone-audit-${suffix}`;
  const credentialNamespace = `chaperone-credentials-${suffix}`;
  // Both namespaces with pods enforce the restricted Pod Security Standard: the operator pods and the
  // injected sidecar must pass it for real, not only look as if they would. The agents' namespace is
  // strict: only sealed pods whose sidecar is alone with its token are admitted.
  const ns = await createTestNamespace(t, {
    [LABEL_INJECTION]: LABEL_INJECTION_ENABLED,
    [LABEL_STRICT]: 'true',
    ...RESTRICTED,
  });
  await core.createNamespace({ body: { metadata: { name: system, labels: { ...RESTRICTED } } } });
  const cp = controlPlaneEnv();

  // 1. `make release` as a release manager runs it, and `helm install` of the packaged chart as an operator
  // of the cluster would: its images (tagged with the release's version, as the packaged chart names them)
  // imported from the release's image archives into the node's containerd, no image value overridden. The
  // chart's defaults otherwise: two replicas, leader election, webhooks behind their Service, audit
  // authority. Scoped to the story's namespace, because other test files share this control plane.
  const root = mkdtempSync(join(tmpdir(), 'chaperone-story-'));
  t.after(() => {
    rmSync(root, { recursive: true, force: true });
  });
  const made = await makeTestRelease(root);
  assert.equal(made.exitCode, 0, made.stderr);
  await node.importImages([made.images.operator, made.images.sidecar]);
  const operatorImage = `ghcr.io/chaperone/chaperone-operator:${made.version}`;
  const sidecarImage = `ghcr.io/chaperone/chaperone-sidecar:${made.version}`;
  const uninstall = () => helm(['uninstall', release, '--namespace', system, '--wait', '--timeout', '2m']);
  t.after(async () => {
    await uninstall().catch(() => undefined);
    for (const name of [system, auditNamespace, credentialNamespace]) {
      await core.deleteNamespace({ name }).catch(() => undefined);
    }
  });
  await helm([
    'install',
    release,
    made.chart,
    '--namespace',
    system,
    '--wait',
    '--timeout',
    `${String(POD_DEADLINE_MS / 1000)}s`,
    '--set',
    `serviceAccountIssuer=${cp.issuer}`,
    '--set',
    `watchNamespace=${ns}`,
    '--set',
    'admissionPolicies.enabled=false',
    '--set',
    `auditNamespace.name=${auditNamespace}`,
    '--set',
    `credentials.namespace=${credentialNamespace}`,
    '--set-json',
    `tolerations=${JSON.stringify([LOCAL_NODE_TOLERATION])}`,
    // The injected sidecar as a platform team tunes it (the image was imported, never pulled: Never).
    '--set',
    'sidecarImage.pullPolicy=Never',
    '--set-json',
    `sidecarResources=${JSON.stringify(SIDECAR_RESOURCES)}`,
  ]).catch(async (err: unknown) => {
    throw new Error(`helm install failed: ${String(err)}\n${await describePods(system)}`, { cause: err });
  });

  const deployment = (await apps.listNamespacedDeployment({ namespace: system })).items[0];
  assert.ok(deployment?.metadata?.name);
  assert.equal(deployment.status?.readyReplicas, 2, 'both operator replicas pass their readiness probe');
  // The webhooks fail closed: a PodDisruptionBudget keeps one operator pod up through a drain.
  const budget = await poll('the PodDisruptionBudget to count both replicas', async () => {
    const b = await disruption.readNamespacedPodDisruptionBudget({ namespace: system, name: `${release}-chaperone` });
    return b.status?.currentHealthy === 2 ? b : undefined;
  });
  assert.equal(budget.spec?.maxUnavailable, 1);
  assert.equal(budget.status?.disruptionsAllowed, 1);
  const operatorPods = (
    await core.listNamespacedPod({ namespace: system, labelSelector: `app.kubernetes.io/instance=${release}` })
  ).items;
  assert.equal(operatorPods.length, 2);
  for (const pod of operatorPods) {
    assert.equal(pod.status?.phase, 'Running');
    assert.equal(pod.spec?.nodeName, LOCAL_NODE_NAME, 'scheduled onto the local node and run by its kubelet');
    const container = pod.status.containerStatuses?.[0];
    assert.equal(container?.ready, true);
    assert.equal(container.image, operatorImage);
    // runAsNonRoot with no runAsUser in the pod: the kubelet ran it only because the image's USER is 65532.
    assert.equal(pod.spec.securityContext?.runAsNonRoot, true);
    assert.equal(pod.spec.containers[0]?.securityContext?.readOnlyRootFilesystem, true);
  }
  // Leader election: one replica holds the Lease.
  const lease = await poll('an operator replica to hold the leader Lease', async () => {
    const leases = await coordination.listNamespacedLease({ namespace: system });
    return leases.items.find((l) =>
      operatorPods.some((p) => l.spec?.holderIdentity?.includes(p.metadata?.name ?? '-')),
    );
  });
  assert.ok(lease.spec?.holderIdentity);
  // The webhook Service has both replicas as endpoints; the operator wrote its CA into the configuration.
  const webhookService = `${release}-chaperone-webhook`;
  const slices = await discovery.listNamespacedEndpointSlice({
    namespace: system,
    labelSelector: `kubernetes.io/service-name=${webhookService}`,
  });
  assert.equal(slices.items.flatMap((s) => s.endpoints).filter((e) => e?.conditions?.ready === true).length, 2);
  const mutating = await poll('the operator to write its CA into the mutating webhook', async () => {
    const config = await admission.readMutatingWebhookConfiguration({ name: `${release}-chaperone-pod-injector` });
    return (config.webhooks?.[0]?.clientConfig.caBundle ?? '') === '' ? undefined : config;
  });
  assert.equal(mutating.webhooks?.[0]?.clientConfig.service?.name, webhookService);

  await installChartAdmissionPolicies(t, made.chart, release, system, [ns, auditNamespace]);
  // The restricted standard is enforced here: a pod that does not meet it is refused.
  const unrestricted = await core
    .createNamespacedPod({
      namespace: system,
      dryRun: 'All',
      body: {
        metadata: { name: 'unrestricted' },
        spec: { containers: [{ name: 'c', image: builtImageRef('agent') }] },
      },
    })
    .then(
      () => undefined,
      (err: unknown) => statusOf(err)?.message,
    );
  assert.match(unrestricted ?? 'admitted', /violates PodSecurity "restricted/);

  // 2. The harness's PostgreSQL as an external database behind a Service without a selector, as a
  // platform team would publish one: pods resolve postgres.<ns>.svc through CoreDNS and reach it
  // through kube-proxy. Its certificate names `localhost`: the resource says so (tls.serverName).
  const pg = postgresEnv();
  const exposed = await node.exposeHostPort(pg.port);
  await core.createNamespacedService({
    namespace: ns,
    body: { metadata: { name: 'postgres' }, spec: { ports: [{ name: 'postgres', port: 5432, protocol: 'TCP' }] } },
  });
  await discovery.createNamespacedEndpointSlice({
    namespace: ns,
    body: {
      metadata: { name: 'postgres-1', labels: { 'kubernetes.io/service-name': 'postgres' } },
      addressType: 'IPv4',
      endpoints: [{ addresses: [exposed.host], conditions: { ready: true } }],
      ports: [{ name: 'postgres', port: exposed.port, protocol: 'TCP' }],
    },
  });
  const database = await createTestDatabase(
    t,
    "create table orders (id int primary key, item text not null); insert into orders values (1, 'apple'), (2, 'pear');",
  );
  // The credential lives in the chart's credential namespace, allowed for the agents' namespace only: the
  // operator delivers it to the attested sidecar; no Secret of the agents' namespace holds it.
  await core.createNamespacedSecret({
    namespace: credentialNamespace,
    body: {
      metadata: { name: 'orders-db', annotations: { 'chaperone.dev/allowed-namespaces': ns } },
      stringData: { username: pg.user, password: pg.password },
    },
  });
  await core.createNamespacedSecret({
    namespace: ns,
    body: { metadata: { name: 'orders-db-ca' }, stringData: { 'ca.crt': readFileSync(pg.caFile, 'utf8') } },
  });
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'ProtectedResource',
      metadata: { name: 'orders-db' },
      spec: {
        type: 'postgres',
        endpoint: { host: `postgres.${ns}.svc`, port: 5432, database },
        tls: { mode: 'verify-full', serverName: 'localhost', caSecretRef: { name: 'orders-db-ca', key: 'ca.crt' } },
        credentialSecretRef: {
          name: 'orders-db',
          namespace: credentialNamespace,
          usernameKey: 'username',
          passwordKey: 'password',
        },
      },
    },
  });

  // 3. The policy, compiled by the operator's leader (opa in its image) into a bundle ConfigMap.
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'orders-read-only' },
      spec: READ_ONLY_ORDERS,
    },
  });
  await poll(
    'the operator pods to compile the policy into its bundle ConfigMap',
    async () => {
      const policy = (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'accesspolicies',
        name: 'orders-read-only',
      })) as AccessPolicy;
      const bundle = policy.status?.bundle;
      if (bundle === undefined) return undefined;
      return core.readNamespacedConfigMap({ namespace: ns, name: bundle.configMapName });
    },
    POD_DEADLINE_MS,
  );
  await poll('the ProtectedResource controller to grant the sidecar its Role', async () => {
    const roles = await kc.makeApiClient(k8s.RbacAuthorizationV1Api).listNamespacedRole({ namespace: ns });
    return roles.items.length > 0 ? true : undefined;
  });

  // 4. An annotated Job. The agent image has psql and kubectl; it knows nothing of Chaperone.
  const agentImage = builtImageRef('agent');
  await batch.createNamespacedJob({
    namespace: ns,
    body: {
      metadata: { name: 'orders-report' },
      spec: {
        backoffLimit: 0,
        template: {
          metadata: {
            labels: { app: 'orders-report' },
            annotations: { [ANNOTATION_INJECT]: 'true', [ANNOTATION_RESOURCES]: 'orders-db' },
          },
          spec: {
            restartPolicy: 'Never',
            tolerations: [LOCAL_NODE_TOLERATION],
            containers: [
              {
                name: 'agent',
                image: agentImage,
                args: ['-c', agentScript(`postgres.${ns}.svc`)],
                securityContext: {
                  runAsNonRoot: true,
                  allowPrivilegeEscalation: false,
                  capabilities: { drop: ['ALL'] },
                  seccompProfile: { type: 'RuntimeDefault' },
                },
              },
            ],
          },
        },
      },
    },
  });
  const diagnose = async (err: unknown): Promise<never> => {
    const logs = await kubectl(['logs', '-n', ns, 'job/orders-report', '--all-containers']).catch((e: unknown) =>
      String(e),
    );
    throw new Error(`${String(err)}\n${await describePods(ns)}\nlogs:\n${logs}`, { cause: err });
  };

  // 5. While the agent's live session reads through the running sidecar, the security team creates a
  // second policy. The operator compiles it and signs a new policy set; the sidecar, watching the set
  // through the API with its own token, loads it; the session's next read is denied on the same connection.
  await poll(
    "the agent's live session to read through the sidecar",
    async () => {
      const out = await kubectl(['logs', '-n', ns, 'job/orders-report', '-c', 'agent']).catch(() => '');
      return /^live\|\d+\|2$/m.test(out.split('== live\n')[1] ?? '') ? true : undefined;
    },
    POD_DEADLINE_MS,
  ).catch(diagnose);
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'AccessPolicy', metadata: { name: 'no-orders' }, spec: NO_ORDERS },
  });
  const job = await poll(
    'the Job to finish',
    async () => {
      const j = await batch.readNamespacedJob({ namespace: ns, name: 'orders-report' });
      return (j.status?.succeeded ?? 0) + (j.status?.failed ?? 0) > 0 ? j : undefined;
    },
    POD_DEADLINE_MS,
  )
    .then((j) => {
      if (j.status?.succeeded !== 1) throw new Error('the Job failed');
      return j;
    })
    .catch(diagnose);
  assert.equal(job.status?.succeeded, 1);

  // 6. The pod as the kubelet ran it: the sidecar injected as a native sidecar, started first, stopped
  // after the agent finished; the agent holds no credential.
  const [pod] = (await core.listNamespacedPod({ namespace: ns, labelSelector: 'app=orders-report' })).items;
  assert.ok(pod?.metadata?.name);
  assert.equal(pod.status?.phase, 'Succeeded');
  assert.equal(pod.spec?.nodeName, LOCAL_NODE_NAME);
  const sidecarSpec = pod.spec.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  assert.equal(sidecarSpec?.restartPolicy, 'Always', 'a native sidecar');
  assert.equal(sidecarSpec.image, sidecarImage);
  // The chart's sidecar values reached the pod through the operator's flags; the kubelet ran it hardened.
  assert.equal(sidecarSpec.imagePullPolicy, 'Never');
  assert.deepEqual(JSON.parse(JSON.stringify(sidecarSpec.resources)), SIDECAR_RESOURCES);
  assert.equal(sidecarSpec.livenessProbe?.httpGet?.path, '/healthz');
  assert.deepEqual(
    [sidecarSpec.securityContext?.readOnlyRootFilesystem, sidecarSpec.securityContext?.seccompProfile?.type],
    [true, 'RuntimeDefault'],
  );
  assert.deepEqual(sidecarSpec.securityContext?.capabilities?.drop, ['ALL']);
  const sidecarStatus = pod.status.initContainerStatuses?.find((c) => c.name === SIDECAR_CONTAINER);
  const sidecarEnded = sidecarStatus?.state?.terminated;
  assert.ok(sidecarEnded, 'the kubelet stopped the sidecar when the Job finished');
  assert.equal(sidecarEnded.exitCode, 0, 'the sidecar shut down cleanly on SIGTERM');
  const agentEnded = pod.status.containerStatuses?.find((c) => c.name === 'agent')?.state?.terminated;
  assert.ok(agentEnded);
  assert.equal(agentEnded.exitCode, 0);
  assert.ok(
    (sidecarEnded.startedAt?.getTime() ?? Infinity) <= (agentEnded.startedAt?.getTime() ?? 0),
    'the sidecar started before the agent',
  );
  const agentSpec = pod.spec.containers.find((c) => c.name === 'agent');
  assert.ok(!(agentSpec?.volumeMounts ?? []).some((m) => m.name === VOLUME_CREDENTIALS));
  assert.ok(!(agentSpec?.env ?? []).some((e) => e.valueFrom?.secretKeyRef !== undefined));

  // 7. What the agent saw: its reads, a denial of its write, no way around the sidecar, and its live
  // session denied by the policy created after it started, on the connection it had all along.
  const logs = await kubectl(['logs', '-n', ns, pod.metadata.name, '-c', 'agent']);
  const section = (name: string) => logs.split(`== ${name}\n`)[1]?.split('\n== ')[0] ?? '';
  assert.equal(section('read').trim(), 'apple\npear');
  assert.match(section('write'), /ERROR:\s+42501/);
  assert.match(section('around'), /authentication failed|does not exist|no pg_hba\.conf entry/);
  const live = section('live').split('\n');
  const denial = live.findIndex((line) => /ERROR:\s+42501/.test(line));
  assert.ok(denial > 0, `the live session read, then was denied:\n${section('live')}`);
  const reads = live.slice(0, denial).filter((line) => line.startsWith('live|'));
  assert.ok(reads.length > 0);
  assert.equal(new Set(reads).size, 1, 'every read on the same upstream backend, with the same answer');
  assert.match(live.slice(denial).join('\n'), /no-orders, rule orders-closed: orders are closed for the night/);
  assert.match(logs, /== done/);
  const rows = await run('psql', [
    '-X',
    '-A',
    '-t',
    '-c',
    'select count(*) from orders',
    `host=127.0.0.1 port=${String(pg.port)} dbname=${database} user=${pg.user} password=${pg.password} sslmode=require`,
  ]);
  assert.equal(rows.stdout.trim(), '2', 'the denied write never reached PostgreSQL');

  // 8. The audit trail: the sidecar's records, written by the operator into the audit namespace for the
  // attested sidecar (the Session proxy) under the chart's admission policy; nothing in the agents' namespace.
  const sessions = await poll(
    'the three sessions as Closed Session objects in the audit namespace',
    async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: auditNamespace,
        plural: 'sessions',
      })) as { items: Session[] };
      const closed = list.items.filter((s) => s.status?.phase === 'Closed');
      return closed.length >= 3 ? closed : undefined;
    },
    POD_DEADLINE_MS,
  );
  const local = (await custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'sessions',
  })) as { items: Session[] };
  assert.equal(local.items.length, 0, "no Session is kept in the agents' namespace");
  const decisions = sessions
    .flatMap((s) => s.spec.records)
    .filter((r) => r.type === 'command.decision')
    // psql sends the \watch query with the blank before the backslash.
    .map((r) => [r.command?.text?.trim(), r.decision?.result, r.decision?.policy, r.decision?.rule]);
  const liveRead = "select 'live', pg_backend_pid(), count(*) from orders";
  assert.deepEqual(decisions.filter(([text]) => text !== liveRead).sort(), [
    ["insert into orders values (3, 'plum')", 'deny', `${ns}/orders-read-only`, 'default'],
    ['select item from orders order by id', 'allow', `${ns}/orders-read-only`, 'reads'],
  ]);
  const liveDecisions = decisions.filter(([text]) => text === liveRead).map(([, result]) => result);
  assert.deepEqual(liveDecisions, [...liveDecisions.slice(0, -1).map(() => 'allow'), 'deny']);
  assert.deepEqual(decisions.find(([text, result]) => text === liveRead && result === 'deny')?.slice(2), [
    `${ns}/no-orders`,
    'orders-closed',
  ]);
  const authorityJwks = JSON.parse(
    (await core.readNamespacedConfigMap({ namespace: system, name: AUDIT_AUTHORITY_NAME })).data?.[
      AUDIT_AUTHORITY_JWKS_KEY
    ] ?? '{"keys":[]}',
  ) as { keys: Parameters<typeof verifySignerCertificate>[1] };
  for (const session of sessions) {
    assert.deepEqual(session.spec.pod, { name: pod.metadata.name, namespace: ns, uid: pod.metadata.uid ?? '' });
    assert.equal(session.spec.identity.subject, `system:serviceaccount:${ns}:default`);
    // The operator pods certified the sidecar's key for exactly this pod, over the webhook Service.
    const certificate = await verifySignerCertificate(session.spec.signer?.certificate ?? '', authorityJwks.keys);
    assert.deepEqual(certificate.pod, { namespace: ns, name: pod.metadata.name, uid: pod.metadata.uid ?? '' });
  }
  // 9. The auditor's view with the release's kubectl-chaperone, installed as a user installs it: the single
  // executable unpacked into an empty directory, run through kubectl from a clean environment (no Node.js,
  // no repository file on PATH, the working directory outside the repository, a self-contained kubeconfig).
  const auditor = await unpackReleasedCli(root, made.cliArchive.amd64);
  const listed = await auditor(['kubectl', 'chaperone', 'sessions', '-n', auditNamespace]);
  assert.equal(listed.code, 0, listed.stdout + listed.stderr);
  const listedRows = listed.stdout.trim().split('\n').slice(1);
  assert.ok(listedRows.length >= 3, listed.stdout);
  const objectNames = new Set(sessions.map((x) => x.metadata.name));
  for (const row of listedRows) {
    const [name, subject, resource, podName] = row.split(/\s+/);
    assert.ok(objectNames.has(name), `${name ?? ''} is one of the Session objects`);
    assert.deepEqual(
      [subject, resource, podName],
      [`system:serviceaccount:${ns}:default`, 'orders-db', pod.metadata.name],
    );
    assert.match(row, /\sClosed\s/);
  }
  const verifyArgs = [
    'kubectl',
    'chaperone',
    'verify',
    '--all',
    '-n',
    auditNamespace,
    '--authority-namespace',
    system,
    '--require-certified',
    '-o',
    'json',
  ];
  const verify = await auditor(verifyArgs);
  assert.equal(verify.code, 0, `kubectl chaperone verify:\n${verify.stdout}${verify.stderr}`);
  assert.equal((JSON.parse(verify.stdout) as { keyTrust: string }).keyTrust, 'certified');

  // 10. helm uninstall removes what the chart installed: the operator pods, its webhooks (a pod in the
  // injection-enabled namespace is admitted untouched afterwards), its cluster-wide RBAC. It keeps what
  // docs/helm.md says it keeps: the CRDs and their objects, the audit and credential namespaces, and the
  // audit authority the operator made, so the evidence still verifies after the operator is gone.
  await uninstall();
  const instance = `app.kubernetes.io/instance=${release}`;
  await poll('the operator pods to be gone', async () =>
    (await core.listNamespacedPod({ namespace: system })).items.length === 0 ? true : undefined,
  );
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const leftovers = [
    ...(await admission.listMutatingWebhookConfiguration({ labelSelector: instance })).items,
    ...(await admission.listValidatingWebhookConfiguration({ labelSelector: instance })).items,
    ...(await rbac.listClusterRole({ labelSelector: instance })).items,
    ...(await rbac.listClusterRoleBinding({ labelSelector: instance })).items,
    ...(await apps.listNamespacedDeployment({ namespace: system })).items,
    ...(await core.listNamespacedService({ namespace: system })).items,
    ...(await core.listNamespacedServiceAccount({ namespace: system, labelSelector: instance })).items,
  ].map((o) => o.metadata?.name);
  assert.deepEqual(leftovers, [], 'helm uninstall left objects of the release');
  const admitted = await core.createNamespacedPod({
    namespace: ns,
    dryRun: 'All',
    body: {
      metadata: {
        name: 'after-uninstall',
        annotations: { [ANNOTATION_INJECT]: 'true', [ANNOTATION_RESOURCES]: 'orders-db' },
      },
      spec: {
        containers: [
          {
            name: 'agent',
            image: agentImage,
            securityContext: {
              runAsNonRoot: true,
              allowPrivilegeEscalation: false,
              capabilities: { drop: ['ALL'] },
              seccompProfile: { type: 'RuntimeDefault' },
            },
          },
        ],
      },
    },
  });
  assert.deepEqual(
    (admitted.spec?.initContainers ?? []).map((c) => c.name),
    [],
    'no webhook injects after uninstall',
  );
  for (const name of [auditNamespace, credentialNamespace]) {
    assert.equal((await core.readNamespace({ name })).status?.phase, 'Active', `${name} is kept`);
  }
  const afterUninstall = await auditor(verifyArgs);
  assert.equal(afterUninstall.code, 0, `verify after uninstall:\n${afterUninstall.stdout}${afterUninstall.stderr}`);
});

/**
 * kubectl-chaperone from a release archive, unpacked into an empty directory; returns a runner of
 * commands in a clean environment (env -i) whose PATH is that directory and kubectl's.
 */
async function unpackReleasedCli(root: string, archive: string) {
  const bin = join(root, 'bin');
  const home = join(root, 'home');
  const work = join(root, 'work');
  for (const d of [bin, join(home, '.kube'), work]) mkdirSync(d, { recursive: true });
  await run('tar', ['-xzf', archive, '-C', bin]);
  const kubectlDir = dirname(realpathSync(toolPath('kubectl')));
  for (const dir of [bin, kubectlDir]) assert.ok(!existsSync(join(dir, 'node')), `no node in ${dir}`);
  assert.ok(!work.startsWith(REPO_ROOT));
  writeFileSync(join(home, '.kube', 'config'), await kubectl(['config', 'view', '--flatten', '--minify', '--raw']));
  return (args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve, reject) => {
      execFile(
        '/usr/bin/env',
        ['-i', `PATH=${bin}:${kubectlDir}`, `HOME=${home}`, ...args],
        { cwd: work, encoding: 'utf8', maxBuffer: 64 << 20 },
        (err, stdout, stderr) => {
          if (err !== null && typeof err.code !== 'number')
            reject(new Error(`could not run ${args.join(' ')}: ${err.message}`));
          else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
        },
      );
    });
}
