// The whole path from an annotation to a query and its audit trail: the webhook injects a generateName'd
// pod; its stored spec is materialised (sidecar volumes filled from the API server, config rewritten only
// under a temp root) and the sidecar runs locally with exactly that config and the container's env; psql,
// as the agent, uses only the agent container's env and its audience-bound token. It reaches PostgreSQL
// through the sidecar, and has no credential to go around it. The sidecar writes the session into a
// Session object with its own pod-bound token, under the admission policy that only a pod's own sidecar
// may, and `kubectl chaperone verify` accepts the trail.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import {
  GROUP,
  VERSION,
  verifySignerCertificate,
  type AccessPolicySpec,
  type ProtectedResource,
  type Session,
} from '@chaperone/api';
import {
  injectedServiceAccounts,
  sidecarRole,
  sidecarRoleBinding,
} from '../../operator/src/controllers/protected-resource-controller.ts';
import { ANNOTATION_SIDECAR_CONFIG, VOLUME_CREDENTIALS } from '../../operator/src/injection/constants.ts';
import { buildTrail, createSigner } from '../audit/trail-fixture.ts';
import { runCli } from '../audit/run-cli.ts';
import { controlPlaneEnv, postgresEnv, testDir } from '../harness/env.ts';
import { statusOf } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { writePolicyBundle } from '../harness/sidecar.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { agentPod, createPostgresResource, startWebhookFixture, type WebhookFixture } from './injection-fixture.ts';
import { materialiseSidecar, materialiseVolumes } from '../harness/materialise-pod.ts';

let fx: WebhookFixture;
before(async () => {
  fx = await startWebhookFixture({ audit: true });
});
after(async () => {
  await fx.stop();
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function psql(env: NodeJS.ProcessEnv, sql: string) {
  return spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8', timeout: 30_000 });
}

/**
 * The Session writers policy of config/admission, bound to one namespace only (the control plane is shared
 * with other test files, whose Sessions are written by test clients). Removed when the test ends.
 */
async function protectSessionsOf(t: TestContext, namespace: string): Promise<void> {
  const admission = fx.kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const documents = parseAllDocuments(
    readFileSync(join(REPO_ROOT, 'config', 'admission', 'session-protection.yaml'), 'utf8'),
  ).map((d) => d.toJS() as { kind: string; metadata: { name: string } });
  const policy = documents.find(
    (d) => d.kind === 'ValidatingAdmissionPolicy' && d.metadata.name === 'chaperone-session-writers',
  ) as k8s.V1ValidatingAdmissionPolicy | undefined;
  assert.ok(policy?.metadata);
  const name = `chaperone-session-writers-${namespace}`;
  policy.metadata.name = name;
  await admission.createValidatingAdmissionPolicy({ body: policy });
  t.after(() => admission.deleteValidatingAdmissionPolicy({ name }).then(() => undefined));
  await admission.createValidatingAdmissionPolicyBinding({
    body: {
      metadata: { name },
      spec: {
        policyName: name,
        validationActions: ['Deny'],
        matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } },
      },
    },
  });
  t.after(() => admission.deleteValidatingAdmissionPolicyBinding({ name }).then(() => undefined));
  // Enforced once the API server has loaded and type-checked it: until then an administrator may write.
  const [probe] = await buildTrail({ name: 'probe', namespace, signer: await createSigner() });
  assert.ok(probe);
  const { status: _status, ...body } = probe;
  await poll('the Session writers policy to be enforced', () =>
    fx.custom
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

const ALLOW_ORDERS: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

test('an injected agent reaches PostgreSQL only through its sidecar, which records it in Session objects', async (t) => {
  const ns = await fx.namespace(t);
  const listenPort = await freePort();
  await createPostgresResource(fx, ns, { listenPort });
  await fx.custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'allow-orders' },
      spec: ALLOW_ORDERS,
    },
  });
  // The injector mounts the bundles of the policies it knows; wait until its cache has this one.
  const resource = (await fx.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    name: 'orders-db',
  })) as ProtectedResource;
  for (let i = 0; i < 100 && fx.webhooks.cache.policiesCovering(ns, [resource]).length === 0; i++) await sleep(100);

  // generateName, as Deployments and Jobs do: the injector cannot know the name, the sidecar learns it.
  const body = agentPod('agent', 'orders-db');
  body.metadata = { generateName: 'agent-', annotations: body.metadata?.annotations ?? {} };
  const created = await fx.core.createNamespacedPod({ namespace: ns, body });
  const podName = created.metadata?.name ?? '';
  const pod = await fx.core.readNamespacedPod({ namespace: ns, name: podName });
  assert.match(pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '', /^ {2}name: ""$/m);
  const policiesVolume = pod.spec?.volumes?.find((v) => v.name === 'chaperone-policies');
  assert.equal(policiesVolume?.projected?.sources?.[0]?.configMap?.name, 'chaperone-policy-allow-orders');

  const root = join(testDir(t), 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  const sidecar = await materialiseSidecar(fx.core, pod, root);
  // No operator controller runs here: compile the bundle into the mounted bundle directory ourselves.
  const bundleDir = (sidecar.config.policy as { bundleDir: string }).bundleDir;
  await writePolicyBundle(bundleDir, 'allow-orders', ALLOW_ORDERS, ns);
  // Nor does the ProtectedResource controller: grant the Role it would, to the service account it would.
  const rbac = fx.kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  await rbac.createNamespacedRole({ namespace: ns, body: sidecarRole(ns, [resource]) });
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: sidecarRoleBinding(ns, [resource], injectedServiceAccounts([pod])),
  });
  await protectSessionsOf(t, ns);
  const running = await sidecar.start();
  t.after(() => running.stop());

  // The agent: its own container's env and mounts (the identity token, bound to this pod), nothing else.
  const agentRoot = join(root, 'agent');
  const agent = await materialiseVolumes(fx.core, pod, 'agent', agentRoot);
  assert.ok(!(agent.volumeMounts ?? []).some((m) => m.name === VOLUME_CREDENTIALS));
  const agentEnv = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value ?? '']));
  const tokenFile = agentEnv.CHAPERONE_TOKEN_FILE;
  assert.ok(tokenFile);
  const token = readFileSync(join(agentRoot, tokenFile), 'utf8');
  const baseEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };

  const through = psql({ ...baseEnv, ...agentEnv, PGPASSWORD: token }, 'select current_user, 40 + 2');
  assert.equal(
    through.status,
    0,
    `psql through the sidecar failed: ${through.stderr}\n${readFileSync(running.logFile, 'utf8')}`,
  );
  assert.equal(through.stdout.trim(), `${postgresEnv().user}|42`, 'the sidecar logged in with the Secret credential');

  // Around the sidecar: same agent, straight at PostgreSQL. Its only secret is the token, which is no
  // PostgreSQL password.
  const pg = postgresEnv();
  const around = psql(
    { ...baseEnv, ...agentEnv, PGHOST: pg.host, PGPORT: String(pg.port), PGSSLMODE: 'require', PGPASSWORD: token },
    'select 1',
  );
  assert.notEqual(around.status, 0);
  assert.match(around.stderr, /authentication failed|role "agent" does not exist|no pg_hba\.conf entry/);
  const withoutPassword = psql(
    { ...baseEnv, ...agentEnv, PGHOST: pg.host, PGPORT: String(pg.port), PGSSLMODE: 'require', PGCONNECT_TIMEOUT: '5' },
    'select 1',
  );
  assert.notEqual(withoutPassword.status, 0);

  // The session reaches a Session object of the pod's namespace within a flush interval or so, written by
  // the sidecar with its own pod-bound token (the admission policy refuses any other writer).
  const sessions = await poll('the sidecar to close its session in a Session', async () => {
    const list = (await fx.custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'sessions',
    })) as { items: Session[] };
    return list.items.some((s) => s.status?.phase === 'Closed') ? list.items : undefined;
  }).catch((err: unknown) => {
    const problems = readFileSync(running.logFile, 'utf8')
      .split('\n')
      .filter((l) => /"level":"(warn|error)"/.test(l));
    throw new Error(`${String(err)}\nsidecar warnings:\n${problems.slice(-5).join('\n')}`, { cause: err });
  });
  assert.equal(sessions.length, 1, 'one client session, one Session object');
  const [session] = sessions;
  assert.ok(session);
  assert.deepEqual(session.spec.pod, { name: podName, uid: pod.metadata?.uid ?? '' });
  assert.equal(session.spec.resource.name, 'orders-db');
  assert.deepEqual(
    session.spec.records.map((r) => r.type),
    ['session.start', 'command.decision', 'command.outcome', 'session.end'],
    'a decision and an outcome for the one statement',
  );
  const decision = session.spec.records.find((r) => r.type === 'command.decision');
  assert.equal(decision?.command?.text, 'select current_user, 40 + 2');
  assert.equal(decision.decision?.result, 'allow');
  // The agent is the pod's service account, from its pod-bound token.
  assert.equal(session.spec.identity.subject, `system:serviceaccount:${ns}:default`);
  assert.deepEqual(session.status?.counters, { commands: 1, allowed: 1, denied: 0, held: 0, errors: 0 });

  // The sidecar had its key certified by the operator for exactly this pod before writing.
  const authority = fx.authority;
  assert.ok(authority !== undefined);
  const certificate = await verifySignerCertificate(session.spec.signer?.certificate ?? '', [authority.publicJwk]);
  assert.deepEqual(certificate.pod, { namespace: ns, name: podName, uid: pod.metadata?.uid ?? '' });
  assert.equal(certificate.keyId, session.spec.signer?.keyId);

  const verify = await runCli([
    'verify',
    '--all',
    '-n',
    ns,
    '--kubeconfig',
    controlPlaneEnv().kubeconfig,
    '--authority-namespace',
    fx.operatorNamespace,
    '--require-certified',
    '-o',
    'json',
  ]);
  assert.equal(verify.code, 0, `kubectl chaperone verify:\n${verify.stdout}${verify.stderr}`);
  assert.equal((JSON.parse(verify.stdout) as { keyTrust: string }).keyTrust, 'certified');
  const shown = await runCli([
    'show',
    session.metadata.name ?? '',
    '-n',
    ns,
    '--kubeconfig',
    controlPlaneEnv().kubeconfig,
  ]);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /Signed by:\s+\S+ \(key certified by the operator\)/);
});
