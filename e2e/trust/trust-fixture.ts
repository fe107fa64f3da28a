// The installation the trust-boundary attacks run against: the operator in-process (controllers for one
// agent namespace, the webhooks, the audit authority) running as its own service account, the admission
// policies of config/admission bound to this fixture's namespaces only (the control plane is shared with
// other test files), and real identities to attack with: a user bound to the built-in `edit` ClusterRole,
// a user who may also add ephemeral containers, a kubelet (for the tokens a node projects into pods),
// and the agent and the sidecar as a materialised pod's tokens.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { CREDENTIAL_DELIVERY_PATH, GROUP, VERSION, type AccessPolicySpec } from '@chaperone/api';
import { LABEL_INJECTION, LABEL_INJECTION_ENABLED, LABEL_STRICT } from '../../operator/src/injection/constants.ts';
import { validateInjectionSettings } from '../../operator/src/injection/settings.ts';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { startOperator, type RunningOperator } from '../../operator/src/operator.ts';
import type { EvidenceStoreSettings } from '../../operator/src/injection/settings.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { clientIdentity, createTestNode, nodeIdentity, type TestIdentity } from '../harness/identities.ts';
import { kubectl, kubeConfig, statusOf } from '../harness/kube.ts';
import { materialiseSidecar, materialiseVolumes, type MaterialisedSidecar } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { INSTANCE_LABEL, createPostgresResource, waitForServiceAccount } from '../injection/injection-fixture.ts';
import { freePort } from '../harness/postgres.ts';

export const EDITOR = 'mallory@example.com';
export const DEBUGGER = 'dave-debugger@example.com';
export const OPERATOR_SA = 'chaperone-operator';
export const SIDECAR_IMAGE = 'ghcr.io/chaperone/chaperone-sidecar:test';
/** The operator's identity as config/admission names it (the chart substitutes the release's). */
const SHIPPED_OPERATOR = 'system:serviceaccount:chaperone-system:chaperone-operator';

export interface TrustFixture {
  readonly instance: string;
  readonly admin: k8s.KubeConfig;
  readonly core: k8s.CoreV1Api;
  readonly custom: k8s.CustomObjectsApi;
  /** The operator's own namespace (its key, the webhook certificate). */
  readonly operatorNamespace: string;
  /** The agents' namespace the controllers watch (injection on; strict unless asked otherwise). */
  readonly ns: string;
  /** With `auditNamespace`: where the operator keeps the Sessions. */
  readonly auditNamespace: string | undefined;
  /** With `credentialNamespace`: where delivered credentials live. */
  readonly credentialNamespace: string | undefined;
  readonly operator: RunningOperator;
  /** A user bound to the built-in `edit` ClusterRole in `ns` (and in every namespace from `namespace`). */
  readonly editor: TestIdentity;
  /** `edit` plus pods/ephemeralcontainers. */
  readonly debugger: TestIdentity;
  readonly node: TestIdentity;
  readonly nodeName: string;
  readonly operatorLogs: string[];
  /** Another namespace of this fixture (webhooks and policies apply; no controllers), editable by the editor. */
  namespace(t: TestContext, labels?: Record<string, string>): Promise<string>;
  /** Creates an injected agent pod (bound to the fixture's node) naming `resources` (default orders-db), as stored. */
  injectedPod(namespace: string, name: string, options?: PodOptions): Promise<k8s.V1Pod>;
  /** Runs the pod's sidecar from its stored spec, with the tokens the node's kubelet would project. */
  runSidecar(t: TestContext, pod: k8s.V1Pod): Promise<RunningPod>;
  createPolicy(namespace: string, name: string, spec: AccessPolicySpec): Promise<void>;
  stop(): Promise<void>;
}

export interface PodOptions {
  readonly generateName?: boolean;
  /** Value of chaperone.dev/resources. Default orders-db. */
  readonly resources?: string;
  readonly spec?: Partial<k8s.V1PodSpec>;
  readonly serviceAccountName?: string;
}

export interface RunningPod {
  readonly sidecar: MaterialisedSidecar;
  /** The agent container's env (PGHOST, PGPORT, ...) and its audience-bound token. */
  readonly agentEnv: Record<string, string>;
  readonly agentToken: string;
  /** The sidecar's pod-bound API token, as the kubelet projected it. */
  readonly sidecarToken: string;
  readonly root: string;
}

/** How the pod's agent connects to its sidecar: the env the agent container gets and its token as password. */
export function agentPgOptions(running: RunningPod): {
  host: string | undefined;
  port: number;
  user: string;
  database: string | undefined;
  password: string;
  ssl: false;
} {
  return {
    host: running.agentEnv.PGHOST,
    port: Number(running.agentEnv.PGPORT),
    user: 'agent',
    database: running.agentEnv.PGDATABASE,
    password: running.agentToken,
    ssl: false,
  };
}

export interface TrustFixtureOptions {
  /** Strict mode in the agent namespace. Default true. */
  readonly strict?: boolean;
  /** Keep Sessions in an audit namespace the editors have no rights in (the operator writes them). */
  readonly auditNamespace?: boolean;
  /** Deliver credentials from a credential namespace the editors have no rights in. */
  readonly credentialNamespace?: boolean;
  /** The installation's evidence store (needs credentialNamespace, where its Secrets are). */
  readonly evidenceStore?: EvidenceStoreSettings;
}

/** A client for `identity`. */
export function api<T extends k8s.ApiType>(identity: TestIdentity, type: new (config: k8s.Configuration) => T): T {
  return identity.kc.makeApiClient(type);
}

/** The status of a refused API call; fails when the call succeeded. */
export async function refusal(call: Promise<unknown>): Promise<k8s.V1Status> {
  try {
    await call;
  } catch (err) {
    const status = statusOf(err);
    if (status !== undefined) return status;
    // A 401 comes without a Status body.
    if (err instanceof k8s.ApiException) return { code: (err as k8s.ApiException<unknown>).code, message: err.message };
    throw err;
  }
  throw new Error('the call was expected to be refused, and it succeeded');
}

/** kubectl as `identity`; resolves with {code, stdout, stderr} instead of throwing. */
export async function kubectlAs(
  identity: TestIdentity | undefined,
  args: string[],
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const stdout = await kubectl(args, {
      ...(identity === undefined ? {} : { kubeconfig: identity.kubeconfig }),
      ...(input === undefined ? {} : { input }),
    });
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

/** The admission policies of config/admission, renamed for this fixture and bound to its namespaces. */
async function installPolicies(
  admin: k8s.KubeConfig,
  instance: string,
  operatorUser: string,
): Promise<() => Promise<void>> {
  const admission = admin.makeApiClient(k8s.AdmissionregistrationV1Api);
  const names: string[] = [];
  const dir = join(REPO_ROOT, 'config', 'admission');
  for (const file of ['sidecar-identity.yaml', 'session-protection.yaml', 'approval-decisions.yaml']) {
    const text = readFileSync(join(dir, file), 'utf8').replaceAll(SHIPPED_OPERATOR, operatorUser);
    for (const doc of parseAllDocuments(text)) {
      const object = doc.toJS() as { kind: string; metadata: { name: string } };
      if (object.kind !== 'ValidatingAdmissionPolicy') continue;
      const policy = object as k8s.V1ValidatingAdmissionPolicy;
      const name = `${object.metadata.name}-${instance}`;
      policy.metadata = { name, labels: { [INSTANCE_LABEL]: instance } };
      await admission.createValidatingAdmissionPolicy({ body: policy });
      await admission.createValidatingAdmissionPolicyBinding({
        body: {
          metadata: { name, labels: { [INSTANCE_LABEL]: instance } },
          spec: {
            policyName: name,
            validationActions: ['Deny'],
            matchResources: { namespaceSelector: { matchLabels: { [INSTANCE_LABEL]: instance } } },
          },
        },
      });
      names.push(name);
    }
  }
  return async () => {
    for (const name of names) {
      await admission.deleteValidatingAdmissionPolicyBinding({ name }).catch(() => undefined);
      await admission.deleteValidatingAdmissionPolicy({ name }).catch(() => undefined);
    }
  };
}

/** Waits until the pod-bound token policy refuses an administrator (the API server loads policies asynchronously). */
async function waitForPolicies(core: k8s.CoreV1Api, namespace: string): Promise<void> {
  await core.createNamespacedPod({
    namespace,
    body: { metadata: { name: 'policy-probe' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } },
  });
  const probe = await core.readNamespacedPod({ namespace, name: 'policy-probe' });
  await poll(
    'the admission policies to be enforced',
    async () => {
      try {
        await core.createNamespacedServiceAccountToken({
          namespace,
          name: 'default',
          body: {
            spec: {
              audiences: [],
              expirationSeconds: 600,
              boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: 'policy-probe', uid: probe.metadata?.uid ?? '' },
            },
          },
        });
        return undefined;
      } catch (err) {
        return statusOf(err)?.code === 403 ? true : undefined;
      }
    },
    60_000,
  );
  await core.deleteNamespacedPod({ namespace, name: 'policy-probe', gracePeriodSeconds: 0 });
}

async function bindRole(
  rbac: k8s.RbacAuthorizationV1Api,
  namespace: string,
  name: string,
  roleRef: k8s.V1RoleRef,
  user: string,
): Promise<void> {
  await rbac.createNamespacedRoleBinding({
    namespace,
    body: {
      metadata: { name },
      roleRef,
      subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: user }],
    },
  });
}

/** POSTs `body` as JSON to an operator endpoint with `token`; the answer's status, text and JSON (or {}). */
export function postToOperator(
  url: string,
  ca: string,
  token: string,
  body: unknown,
): Promise<{ status: number; text: string; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'POST', ca, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: Record<string, unknown> = {};
          try {
            parsed = JSON.parse(text) as Record<string, unknown>;
          } catch {
            // Not JSON: the text says what came.
          }
          resolve({ status: res.statusCode ?? 0, text, body: parsed });
        });
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/**
 * Withdraws the fixture's namespace from a credential-namespace Secret's allow-list, waits until the
 * ProtectedResource reports SecretNotAllowed naming that Secret, then asks the operator for the resource's
 * delivery as the pod's sidecar would: the answer, for the caller to check that nothing was delivered.
 */
export async function withdrawDelivery(
  fx: TrustFixture,
  options: { secret: string; resource: string; sidecarToken: string },
): Promise<{ status: number; text: string }> {
  const credentials = fx.credentialNamespace;
  if (credentials === undefined) throw new Error('withdrawDelivery needs a fixture with a credential namespace');
  await fx.core.patchNamespacedSecret(
    {
      namespace: credentials,
      name: options.secret,
      body: { metadata: { annotations: { 'chaperone.dev/allowed-namespaces': 'someone-else' } } },
    },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
  await poll('the ProtectedResource to report SecretNotAllowed', async () => {
    const r = (await fx.custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: fx.ns,
      plural: 'protectedresources',
      name: options.resource,
    })) as { status?: { conditions?: { reason: string; message: string }[] } };
    const c = r.status?.conditions?.find((x) => x.reason === 'SecretNotAllowed');
    return c?.message.includes(options.secret) === true ? true : undefined;
  });
  const webhooks = fx.operator.webhooks;
  if (webhooks === undefined) throw new Error('withdrawDelivery needs the operator webhooks');
  return postToOperator(
    webhooks.server.url(CREDENTIAL_DELIVERY_PATH),
    webhooks.certificates.current().caBundlePem,
    options.sidecarToken,
    { resource: options.resource },
  );
}

/** Asks the operator's signer certification endpoint to certify a made-up Ed25519 key, as a raw client. */
export async function certify(url: string, ca: string, token: string): Promise<{ status: number; message: string }> {
  const answer = await postToOperator(url, ca, token, {
    publicKey: { kty: 'OKP', crv: 'Ed25519', x: 'A'.repeat(43) },
  });
  return { status: answer.status, message: typeof answer.body.message === 'string' ? answer.body.message : '' };
}

export async function startTrustFixture(t: TestContext, options: TrustFixtureOptions = {}): Promise<TrustFixture> {
  const admin = kubeConfig();
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const custom = admin.makeApiClient(k8s.CustomObjectsApi);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  const instance = randomBytes(4).toString('hex');
  const nodeName = `trust-node-${instance}`;
  const cleanups: (() => Promise<void>)[] = [];
  const namespaces: string[] = [];

  const createNamespace = async (name: string, labels: Record<string, string>): Promise<string> => {
    await core.createNamespace({
      body: { metadata: { name, labels: { 'chaperone.dev/test': 'true', [INSTANCE_LABEL]: instance, ...labels } } },
    });
    namespaces.push(name);
    return name;
  };
  const operatorNamespace = await createNamespace(`chaperone-system-${instance}`, {});
  const ns = await createNamespace(`agents-${instance}`, {
    [LABEL_INJECTION]: LABEL_INJECTION_ENABLED,
    ...(options.strict === false ? {} : { [LABEL_STRICT]: 'true' }),
  });
  await waitForServiceAccount(core, ns, 'default');
  const auditNamespace =
    options.auditNamespace === true
      ? await createNamespace(`audit-${instance}`, { 'chaperone.dev/audit-namespace': 'true' })
      : undefined;
  const credentialNamespace =
    options.credentialNamespace === true ? await createNamespace(`credentials-${instance}`, {}) : undefined;

  // The operator runs as its own service account (cluster-admin here: these tests are about what others can do).
  await core.createNamespacedServiceAccount({
    namespace: operatorNamespace,
    body: { metadata: { name: OPERATOR_SA } },
  });
  const operatorUser = `system:serviceaccount:${operatorNamespace}:${OPERATOR_SA}`;
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: `chaperone-operator-${instance}`, labels: { [INSTANCE_LABEL]: instance } },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
      subjects: [{ kind: 'ServiceAccount', name: OPERATOR_SA, namespace: operatorNamespace }],
    },
  });
  cleanups.push(() => rbac.deleteClusterRoleBinding({ name: `chaperone-operator-${instance}` }).then(() => undefined));
  const operatorToken = await core.createNamespacedServiceAccountToken({
    namespace: operatorNamespace,
    name: OPERATOR_SA,
    body: { spec: { audiences: [], expirationSeconds: 7200 } },
  });
  const operatorKc = new k8s.KubeConfig();
  operatorKc.loadFromOptions({
    clusters: [{ name: 'test', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
    users: [{ name: 'operator', token: operatorToken.status?.token ?? '' }],
    contexts: [{ name: 'test', cluster: 'test', user: 'operator' }],
    currentContext: 'test',
  });

  cleanups.push(await installPolicies(admin, instance, operatorUser));
  await waitForPolicies(core, ns);

  const editor = await clientIdentity(EDITOR, ['developers']);
  const debuggerUser = await clientIdentity(DEBUGGER, ['developers']);
  // The pods of these tests are bound to it: it must exist (createTestNode says why).
  await createTestNode(core, t, nodeName, { [INSTANCE_LABEL]: instance });
  const node = await nodeIdentity(nodeName);
  const grantEditor = async (namespace: string) => {
    const edit = { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'edit' };
    await bindRole(rbac, namespace, 'mallory-edit', edit, EDITOR);
    await bindRole(rbac, namespace, 'debugger-edit', edit, DEBUGGER);
    await rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: 'ephemeral-containers' },
        rules: [{ apiGroups: [''], resources: ['pods/ephemeralcontainers'], verbs: ['get', 'update', 'patch'] }],
      },
    });
    await bindRole(
      rbac,
      namespace,
      'debugger-ephemeral',
      { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'ephemeral-containers' },
      DEBUGGER,
    );
  };
  await grantEditor(ns);

  const operatorLogs: string[] = [];
  const operator = await startOperator({
    kubeConfig: operatorKc,
    namespace: ns,
    logger: createLogger({ level: 'debug', write: (l) => operatorLogs.push(l) }),
    metricsBindAddress: '0',
    identity: `trust-${instance}`,
    audit: { namespace: operatorNamespace, checkpointIntervalMs: 3_600_000 },
    webhooks: {
      settings: validateInjectionSettings({
        image: SIDECAR_IMAGE,
        operatorNamespace,
        issuer: controlPlaneEnv().issuer,
      }),
      host: '127.0.0.1',
      port: 0,
      certificates: { dnsNames: ['chaperone-webhook.test'], ipAddresses: ['127.0.0.1'] },
      registration: {
        endpoint: 'self',
        mutatingName: `chaperone-pod-injector-${instance}`,
        validatingName: `chaperone-pod-validator-${instance}`,
        extraNamespaceSelector: [{ key: INSTANCE_LABEL, operator: 'In', values: [instance] }],
        deleteOnStop: true,
      },
    },
    ...(auditNamespace === undefined ? {} : { sessions: { auditNamespace } }),
    ...(credentialNamespace === undefined ? {} : { credentials: { namespace: credentialNamespace } }),
    ...(options.evidenceStore === undefined ? {} : { evidenceStore: options.evidenceStore }),
  });
  cleanups.unshift(() => operator.stop());
  let done = false;
  t.after(() => {
    if (!done || process.env.CHAPERONE_TEST_VERBOSE !== undefined) {
      console.log(`operator logs (last 80):\n${operatorLogs.slice(-80).join('')}`);
    }
  });
  // A port nobody else on this host listens on: materialised pods share the host's network.
  await createPostgresResource({ core, custom }, ns, { listenPort: await freePort() });

  const fixture: TrustFixture = {
    instance,
    admin,
    core,
    custom,
    operatorNamespace,
    ns,
    auditNamespace,
    credentialNamespace,
    operator,
    editor,
    debugger: debuggerUser,
    node,
    nodeName,
    operatorLogs,
    async namespace(t2, labels = {}) {
      const base = t2.name
        .toLowerCase()
        .replace(/[^a-z0-9]+/g, '-')
        .slice(0, 30)
        .replace(/-+$/, '');
      const name = await createNamespace(`${base}-${randomBytes(3).toString('hex')}`, labels);
      await waitForServiceAccount(core, name, 'default');
      await grantEditor(name);
      return name;
    },
    async injectedPod(namespace, name, podOptions = {}) {
      const body: k8s.V1Pod = {
        metadata: {
          ...(podOptions.generateName === true ? { generateName: `${name}-` } : { name }),
          annotations: {
            'chaperone.dev/inject': 'true',
            'chaperone.dev/resources': podOptions.resources ?? 'orders-db',
          },
        },
        spec: {
          nodeName,
          // The node never reports Ready: tolerate its taints rather than be evicted after 300 s.
          tolerations: [{ operator: 'Exists' }],
          ...(podOptions.serviceAccountName === undefined ? {} : { serviceAccountName: podOptions.serviceAccountName }),
          containers: [{ name: 'agent', image: 'postgres:17', command: ['sleep', 'infinity'] }],
          ...podOptions.spec,
        },
      };
      const created = await core.createNamespacedPod({ namespace, body });
      return core.readNamespacedPod({ namespace, name: created.metadata?.name ?? '' });
    },
    async runSidecar(t2, pod) {
      const root = join(testDir(t2), `pod-${pod.metadata?.name ?? ''}`);
      rmSync(root, { recursive: true, force: true });
      mkdirSync(root, { recursive: true });
      const materialised = await materialiseSidecar(core, pod, root);
      const sidecar = await materialised.start();
      t2.after(() => sidecar.stop());
      const agentRoot = join(root, 'agent');
      const agent = await materialiseVolumes(core, pod, 'agent', agentRoot);
      const agentEnv = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value ?? '']));
      const agentToken = readFileSync(join(agentRoot, agentEnv.CHAPERONE_TOKEN_FILE ?? ''), 'utf8');
      const sidecarToken = readFileSync(join(root, '/var/run/secrets/kubernetes.io/serviceaccount/token'), 'utf8');
      return { sidecar, agentEnv, agentToken, sidecarToken, root };
    },
    async createPolicy(namespace, name, spec) {
      await custom.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural: 'accesspolicies',
        body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'AccessPolicy', metadata: { name }, spec },
      });
    },
    async stop() {
      done = true;
      for (const c of cleanups) await c().catch(() => undefined);
      for (const name of namespaces) await core.deleteNamespace({ name }).catch(() => undefined);
    },
  };
  t.after(() => fixture.stop());
  return fixture;
}
