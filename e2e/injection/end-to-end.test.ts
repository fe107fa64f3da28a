// The whole path from an annotation to a query and its audit trail, with the operator running as it is
// deployed: the chaperone-operator binary (controllers, admission webhooks, audit authority) against the
// shared control plane. Its AccessPolicy controller compiles the policy into a bundle ConfigMap, its
// ProtectedResource controller grants the sidecar Role to the injected pod's service account, its webhook
// injects a generateName'd pod. The stored pod spec is materialised (volumes filled from the API server)
// and the sidecar runs locally with exactly that config; psql, as the agent, uses only the agent
// container's env and mounts. Then, from the outside:
// - credential isolation: no env value and no mounted file of the agent holds any upstream credential,
//   none logs in as the upstream user (28P01 each), no secretKeyRef, no Secret volume;
// - least privilege: the Role is the one written out below, and the sidecar's own token is refused by the
//   real API server for everything it must not do;
// - secrets: no Session, Event, pod object, /metrics page or log holds a credential or a token;
// - the Session written by the sidecar verifies with `kubectl chaperone verify --require-certified`.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { parseAllDocuments } from 'yaml';
import {
  AUDIT_AUTHORITY_JWKS_KEY,
  AUDIT_AUTHORITY_NAME,
  GROUP,
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  VERSION,
  verifyPolicySet,
  verifySignerCertificate,
  type AccessPolicy,
  type AccessPolicySpec,
  type Session,
} from '@chaperone/api';
import {
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  SIDECAR_API_ACCESS_DIR,
  SIDECAR_CREDENTIALS_DIR,
  SIDECAR_CONTAINER,
} from '../../operator/src/injection/constants.ts';
import { parseJwks } from '../../operator/src/audit/audit-authority.ts';
import { buildTrail, createSigner } from '../audit/trail-fixture.ts';
import { runCli } from '../audit/run-cli.ts';
import { controlPlaneEnv, postgresEnv, superuserSql, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig, statusOf } from '../harness/kube.ts';
import { materialiseSidecar, materialiseVolumes, resolvedContainerEnv } from '../harness/materialise-pod.ts';
import { startOperatorProcess, type OperatorProcess } from '../harness/operator-process.ts';
import { poll } from '../harness/poll.ts';
import { freePort } from '../harness/postgres.ts';
import { credentialsOf, findSecrets, secretOf, type Secret } from '../harness/secret-scan.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { expectedSidecarRules } from '../operator/expected-sidecar-rbac.ts';
import { agentPod, createPostgresResource, CREDENTIAL_SECRET, waitForServiceAccount } from './injection-fixture.ts';

const ALLOW_ORDERS: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

function psql(env: NodeJS.ProcessEnv, sql: string) {
  return spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8', timeout: 30_000 });
}

/** Every regular file under `dir` (following the kubelet-style symlinks), once, with its content. */
function filesUnder(dir: string): { path: string; content: Buffer }[] {
  if (!statSync(dir).isDirectory()) return [{ path: dir, content: readFileSync(dir) }];
  const out: { path: string; content: Buffer }[] = [];
  for (const entry of readdirSync(dir)) {
    // `..data` and `..<timestamp>` hold what the visible entries link to.
    if (entry.startsWith('..')) continue;
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else out.push({ path, content: readFileSync(path) });
  }
  return out;
}

/** The Session writers policy of config/admission, bound to one namespace only; removed when the test ends. */
async function protectSessionsOf(t: TestContext, kc: k8s.KubeConfig, namespace: string): Promise<void> {
  const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
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

/** A request to the API server as a raw client sends it; rejects with its status unless 2xx. */
function rawRequest(method: string, path: string, token: string): Promise<void> {
  const { server, caFile } = controlPlaneEnv();
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(path, server),
      { method, ca: readFileSync(caFile), headers: { authorization: `Bearer ${token}` } },
      (res) => {
        res.resume();
        const code = res.statusCode ?? 0;
        if (code >= 200 && code < 300) resolve();
        else reject(new k8s.ApiException(code, 'raw request', '', {}));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The HTTP status the API server answers `call` with (200 when it succeeds). */
async function statusCodeOf(call: () => Promise<unknown>): Promise<number> {
  try {
    await call();
    return 200;
  } catch (err) {
    const code = statusOf(err)?.code ?? (err instanceof k8s.ApiException ? err.code : undefined);
    if (code === undefined) throw err;
    return code;
  }
}

test('an injected agent reaches PostgreSQL only through its sidecar, under the running operator', async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const ns = await createTestNamespace(t, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
  await waitForServiceAccount(core, ns, 'default');
  const listenPort = await freePort();
  await createPostgresResource({ core, custom }, ns, { listenPort });
  // A second, least-privilege login of the same server (readOnlyCredentialSecretRef): mounted into the
  // sidecar beside the first, and just as absent from the agent.
  const readOnly = { user: `ro_${randomBytes(5).toString('hex')}`, password: randomBytes(18).toString('base64url') };
  superuserSql(`create role ${readOnly.user} login password '${readOnly.password}'`);
  t.after(() => {
    superuserSql(`drop role if exists ${readOnly.user}`);
  });
  await core.createNamespacedSecret({
    namespace: ns,
    body: {
      metadata: { name: 'orders-db-read-only' },
      stringData: { username: readOnly.user, password: readOnly.password },
    },
  });
  await custom.patchNamespacedCustomObject(
    {
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      name: 'orders-db',
      body: {
        spec: {
          readOnlyCredentialSecretRef: {
            name: 'orders-db-read-only',
            usernameKey: 'username',
            passwordKey: 'password',
          },
        },
      },
    },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
  const upstreamUsers = [{ user: postgresEnv().user, password: postgresEnv().password }, readOnly];
  await custom.createNamespacedCustomObject({
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

  const operator: OperatorProcess = await startOperatorProcess(t, {
    namespace: ns,
    extraArgs: ['--enable-audit-authority'],
  });
  const failWithLogs = (err: unknown): never => {
    throw new Error(`${String(err)}\noperator logs (last 20):\n${operator.logs().slice(-20).join('\n')}`, {
      cause: err,
    });
  };

  // The AccessPolicy controller compiles the policy; the webhook mounts the bundle of every policy it knows.
  const policy = await poll('the policy to be Ready', async () => {
    const p = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'accesspolicies',
      name: 'allow-orders',
    })) as AccessPolicy;
    return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true ? p : undefined;
  }).catch(failWithLogs);
  assert.match(policy.status?.bundle?.digest ?? '', /^sha256:/);
  await poll('the signed policy set to name the policy', async () => {
    const set = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
    const keys = parseJwks(
      (await core.readNamespacedConfigMap({ namespace: operator.operatorNamespace, name: AUDIT_AUTHORITY_NAME }))
        .data?.[AUDIT_AUTHORITY_JWKS_KEY] ?? '',
    );
    return verifyPolicySet(set.data?.[POLICY_SET_KEY] ?? '', keys).policies.some((p) => p.name === 'allow-orders')
      ? true
      : undefined;
  }).catch(failWithLogs);

  // generateName, as Deployments and Jobs do: the injector cannot know the name, the sidecar learns it.
  const body = agentPod('agent', 'orders-db');
  body.metadata = { generateName: 'agent-', annotations: body.metadata?.annotations ?? {} };
  const created = await core.createNamespacedPod({ namespace: ns, body });
  const podName = created.metadata?.name ?? '';
  const pod = await core.readNamespacedPod({ namespace: ns, name: podName });
  assert.match(pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '', /^ {2}name: ""$/m);

  // The ProtectedResource controller binds the sidecar Role to the injected pod's service account.
  await poll('the sidecar RoleBinding to name the pod service account', async () => {
    const binding = await rbac.readNamespacedRoleBinding({ namespace: ns, name: 'chaperone-sidecar' });
    return binding.subjects?.some((s) => s.kind === 'ServiceAccount' && s.name === 'default') === true
      ? true
      : undefined;
  }).catch(failWithLogs);

  const root = join(testDir(t), 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  // The bundles come from the ConfigMaps the controller wrote, through the API: the signed policy set.
  const materialised = await materialiseSidecar(core, pod, root);
  await protectSessionsOf(t, kc, ns);
  const sidecar = await materialised.start();
  t.after(() => sidecar.stop());

  const pgEnv = postgresEnv();
  const baseEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };
  const agentRoot = join(root, 'agents');
  const agents = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].filter(
    (c) => c.name !== SIDECAR_CONTAINER,
  );
  assert.deepEqual(
    agents.map((c) => c.name),
    ['agent'],
  );

  // What each agent container would hold, as the kubelet would give it: every env value and every file of
  // every mount (projected token contents included), resolved from the API server.
  const held: { where: string; value: string }[] = [];
  for (const container of agents) {
    const env = await resolvedContainerEnv(core, pod, container);
    for (const [name, value] of Object.entries(env)) held.push({ where: `${container.name} env ${name}`, value });
    const containerRoot = join(agentRoot, container.name);
    await materialiseVolumes(core, pod, container.name, containerRoot);
    for (const mount of container.volumeMounts ?? []) {
      for (const file of filesUnder(join(containerRoot, mount.mountPath))) {
        held.push({
          where: `${container.name} file ${file.path.slice(containerRoot.length)}`,
          value: file.content.toString('utf8'),
        });
      }
    }
  }
  const agentEnv = await resolvedContainerEnv(core, pod, agents[0] as k8s.V1Container);
  const tokenFile = agentEnv.CHAPERONE_TOKEN_FILE;
  assert.ok(tokenFile);
  const agentToken = readFileSync(join(agentRoot, 'agent', tokenFile), 'utf8');
  assert.ok(
    held.some((h) => h.value === agentToken),
    'the agent identity token is among what the agent holds',
  );

  await t.test('the agent reaches PostgreSQL through its sidecar with its own env and token', () => {
    const through = psql({ ...baseEnv, ...agentEnv, PGPASSWORD: agentToken }, 'select current_user, 40 + 2');
    assert.equal(
      through.status,
      0,
      `psql through the sidecar failed: ${through.stderr}\n${readFileSync(sidecar.logFile, 'utf8')}`,
    );
    assert.equal(through.stdout.trim(), `${pgEnv.user}|42`, 'the sidecar logged in with the Secret credential');
  });

  await t.test('credential isolation: nothing the agent holds is an upstream credential', async () => {
    // Both upstream logins are in the pod: in the sidecar's credentials volume.
    assert.equal(
      readFileSync(join(root, SIDECAR_CREDENTIALS_DIR, 'orders-db', 'read-only', 'password'), 'utf8'),
      readOnly.password,
    );
    const credentials = upstreamUsers.flatMap((u) => credentialsOf(u.user, u.password));
    const leaks = held.flatMap((h) => findSecrets(h.value, credentials).map((f) => `${h.where}: ${f}`));
    assert.deepEqual(leaks, [], 'an agent env value or file holds an upstream credential');

    // From the outside: each value (and each line of it) tried as each upstream user's password, straight
    // at PostgreSQL. Every attempt must fail authentication (28P01), whatever the value is.
    const candidates = new Set<string>();
    for (const h of held) {
      candidates.add(h.value);
      for (const line of h.value.split(/\r?\n/)) candidates.add(line.trim());
    }
    candidates.delete('');
    assert.ok(candidates.size >= 5, `only ${String(candidates.size)} values to try`);
    const logins: string[] = [];
    for (const [user, password] of upstreamUsers.flatMap((u) => [...candidates].map((c) => [u.user, c] as const))) {
      const direct = new pg.Client({
        host: pgEnv.host,
        port: pgEnv.port,
        user,
        password,
        database: pgEnv.database,
        ssl: { ca: readFileSync(pgEnv.caFile, 'utf8'), servername: 'localhost' },
        connectionTimeoutMillis: 30_000,
      });
      direct.on('error', () => undefined);
      try {
        await direct.connect();
        logins.push(`${user} with ${password.slice(0, 12)}…: logged in`);
        await direct.end();
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== '28P01')
          logins.push(`${user} with ${password.slice(0, 12)}…: ${String(code)} ${(err as Error).message}`);
      }
    }
    assert.deepEqual(logins, [], "every value is refused as each upstream user's password with 28P01");

    // And by construction: no Secret reaches an agent container, by env or by volume.
    const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
    for (const container of agents) {
      for (const e of container.env ?? []) {
        assert.equal(e.valueFrom?.secretKeyRef, undefined, `${container.name} env ${e.name} reads a Secret`);
      }
      for (const from of container.envFrom ?? []) {
        assert.equal(from.secretRef, undefined, `${container.name} envFrom reads a Secret`);
      }
      for (const mount of container.volumeMounts ?? []) {
        const volume = volumes.get(mount.name);
        assert.equal(volume?.secret, undefined, `${container.name} mounts Secret volume ${mount.name}`);
        assert.ok(
          !(volume?.projected?.sources ?? []).some((s) => s.secret !== undefined),
          `${container.name} mounts ${mount.name}, which projects a Secret`,
        );
      }
    }
    assert.equal(pod.spec?.automountServiceAccountToken, false, 'no default service-account token for the agent');
  });

  // The sidecar's own credentials: its pod-bound API token (also its JWKS bearer token) and signing key.
  const sidecarConfig = materialised.config as {
    identity: { issuers: { jwksBearerTokenFile?: string }[] };
    audit: { spoolDir: string; kubernetes: { tokenFile: string } };
  };
  const sidecarToken = readFileSync(sidecarConfig.audit.kubernetes.tokenFile, 'utf8');
  const jwksBearerFile = sidecarConfig.identity.issuers[0]?.jwksBearerTokenFile;
  assert.ok(jwksBearerFile !== undefined);
  assert.equal(jwksBearerFile, join(root, SIDECAR_API_ACCESS_DIR, 'token'));
  const jwksBearerToken = readFileSync(jwksBearerFile, 'utf8');

  await t.test('least privilege: the sidecar Role as written out, and its token refused the rest', async () => {
    const role = await rbac.readNamespacedRole({ namespace: ns, name: 'chaperone-sidecar' });
    assert.deepEqual(
      role.rules?.map((r) => ({
        apiGroups: r.apiGroups,
        resources: r.resources,
        ...(r.resourceNames === undefined ? {} : { resourceNames: r.resourceNames }),
        verbs: r.verbs,
      })),
      expectedSidecarRules(['allow-orders']),
    );
    assert.ok(!(role.rules ?? []).some((r) => r.nonResourceURLs !== undefined));

    // The real API server, with the sidecar's own pod-bound token.
    const asSidecar = new k8s.KubeConfig();
    asSidecar.loadFromOptions({
      clusters: [{ name: 'c', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
      users: [{ name: 'sidecar', token: sidecarToken }],
      contexts: [{ name: 'c', cluster: 'c', user: 'sidecar', namespace: ns }],
      currentContext: 'c',
    });
    const sCore = asSidecar.makeApiClient(k8s.CoreV1Api);
    const sCustom = asSidecar.makeApiClient(k8s.CustomObjectsApi);
    const sRbac = asSidecar.makeApiClient(k8s.RbacAuthorizationV1Api);
    const sessionsIn = (namespace: string) => () =>
      sCustom.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'sessions' });
    // What it needs works (so the refusals below are refusals, not a broken token).
    assert.equal(await statusCodeOf(sessionsIn(ns)), 200);
    const attempts: Record<string, () => Promise<unknown>> = {
      'list Secrets': () => sCore.listNamespacedSecret({ namespace: ns }),
      'read the credential Secret': () => sCore.readNamespacedSecret({ namespace: ns, name: CREDENTIAL_SECRET }),
      'create a Pod': () => sCore.createNamespacedPod({ namespace: ns, body: agentPod('intruder', 'orders-db') }),
      'exec into a Pod': () =>
        rawRequest('POST', `/api/v1/namespaces/${ns}/pods/${podName}/exec?command=id&stdout=true`, sidecarToken),
      'patch an AccessPolicy': () =>
        sCustom.patchNamespacedCustomObject(
          {
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: 'accesspolicies',
            name: 'allow-orders',
            body: { spec: { defaultDecision: 'allow' } },
          },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        ),
      'delete a Session': () =>
        sCustom.deleteNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: 'sessions',
          name: 'anything',
        }),
      'update a ConfigMap (a policy bundle)': () =>
        sCore.patchNamespacedConfigMap(
          { namespace: ns, name: 'chaperone-policy-allow-orders', body: { data: { x: 'y' } } },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        ),
      'bind itself another Role': () =>
        sRbac.createNamespacedRoleBinding({
          namespace: ns,
          body: {
            metadata: { name: 'escalate' },
            roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
            subjects: [{ kind: 'ServiceAccount', name: 'default', namespace: ns }],
          },
        }),
      'read Sessions of another namespace': sessionsIn(operator.operatorNamespace),
      'read ConfigMaps of another namespace': () =>
        sCore.listNamespacedConfigMap({ namespace: operator.operatorNamespace }),
      'list the ConfigMaps of its namespace (it reads its policy set by name only)': () =>
        sCore.listNamespacedConfigMap({ namespace: ns }),
      'read the audit authority Secret': () =>
        sCore.readNamespacedSecret({ namespace: operator.operatorNamespace, name: AUDIT_AUTHORITY_NAME }),
      'list Namespaces': () => sCore.listNamespace(),
    };
    const allowed: string[] = [];
    for (const [what, call] of Object.entries(attempts)) {
      const code = await statusCodeOf(call);
      if (code !== 403) allowed.push(`${what}: ${String(code)}`);
    }
    assert.deepEqual(allowed, [], 'each of these is refused with 403 Forbidden');
  });

  // The session reaches a Session object of the pod's namespace, written by the sidecar with its own
  // pod-bound token (the admission policy refuses any other writer).
  const sessions = await poll('the sidecar to close its session in a Session', async () => {
    const list = (await custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'sessions',
    })) as { items: Session[] };
    return list.items.some((s) => s.status?.phase === 'Closed') ? list.items : undefined;
  }).catch((err: unknown) => {
    const problems = readFileSync(sidecar.logFile, 'utf8')
      .split('\n')
      .filter((l) => /"level":"(warn|error)"/.test(l));
    throw new Error(`${String(err)}\nsidecar warnings:\n${problems.slice(-5).join('\n')}`, { cause: err });
  });

  await t.test('the Session: one statement, the pod identity, a key certified for this pod', async () => {
    assert.equal(sessions.length, 1, 'one client session, one Session object');
    const [session] = sessions;
    assert.ok(session);
    assert.deepEqual(session.spec.pod, { name: podName, uid: pod.metadata?.uid ?? '' });
    assert.equal(session.spec.resource.name, 'orders-db');
    // The outcome is merged into its decision record when it came before the writer took the decision
    // (docs/audit-durability.md, "One record per statement"), else it follows as its own record.
    const shapes = session.spec.records.map((r) =>
      r.type === 'command.decision' && r.outcome !== undefined ? 'command.decision+outcome' : r.type,
    );
    assert.ok(
      [
        'session.start command.decision command.outcome session.end',
        'session.start command.decision+outcome session.end',
      ].includes(shapes.join(' ')),
      `a decision and an outcome for the one statement: ${shapes.join(' ')}`,
    );
    const decision = session.spec.records.find((r) => r.type === 'command.decision');
    assert.equal(decision?.command?.text, 'select current_user, 40 + 2');
    assert.equal(decision.decision?.result, 'allow');
    assert.equal(decision.decision.bundleDigest, policy.status?.bundle?.digest, 'the bundle the controller compiled');
    // The agent is the pod's service account, from its pod-bound token.
    assert.equal(session.spec.identity.subject, `system:serviceaccount:${ns}:default`);
    assert.deepEqual(session.status?.counters, { commands: 1, allowed: 1, denied: 0, held: 0, errors: 0 });

    const jwks = await core.readNamespacedConfigMap({
      namespace: operator.operatorNamespace,
      name: AUDIT_AUTHORITY_NAME,
    });
    const authorityKeys = (JSON.parse(jwks.data?.[AUDIT_AUTHORITY_JWKS_KEY] ?? '{}') as { keys: { kid: string }[] })
      .keys;
    const certificate = await verifySignerCertificate(session.spec.signer?.certificate ?? '', authorityKeys);
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
      operator.operatorNamespace,
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

  await t.test('secrets: no object, Event, /metrics page or log holds a credential or a token', async () => {
    const authoritySecret = await core.readNamespacedSecret({
      namespace: operator.operatorNamespace,
      name: AUDIT_AUTHORITY_NAME,
    });
    const authorityJwk = JSON.parse(
      Buffer.from(authoritySecret.data?.['authority.jwk'] ?? '', 'base64').toString('utf8'),
    ) as { d?: string };
    const webhookTls = await core.readNamespacedSecret({
      namespace: operator.operatorNamespace,
      name: 'chaperone-webhook-tls',
    });
    const webhookKey = Buffer.from(webhookTls.data?.['tls.key'] ?? '', 'base64').toString('utf8');
    const signingKey = JSON.parse(readFileSync(join(sidecarConfig.audit.spoolDir, 'signing-key.jwk'), 'utf8')) as {
      d?: string;
    };
    assert.ok(authorityJwk.d !== undefined && signingKey.d !== undefined && webhookKey.includes('PRIVATE KEY'));
    const webhookKeyBody = webhookKey.split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
    const secrets: Secret[] = [
      ...upstreamUsers.flatMap((u) => credentialsOf(u.user, u.password)),
      secretOf("the agent's identity token", agentToken),
      secretOf("the sidecar's service-account token", sidecarToken),
      secretOf("the sidecar's JWKS bearer token", jwksBearerToken),
      secretOf("the sidecar's signing key", signingKey.d),
      secretOf("the operator's audit authority key", authorityJwk.d),
      { label: "the webhook's TLS key", forms: webhookKeyBody },
    ];
    // A token's payload alone (its signature cut off) is no secret, but its signature part is.
    for (const [label, token] of [
      ['agent token signature', agentToken],
      ['sidecar token signature', sidecarToken],
    ] as const) {
      secrets.push({ label, forms: [token.split('.')[2] ?? token] });
    }

    const sidecarMetrics = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
    assert.match(sidecarMetrics, /^chaperone_/m);
    await sidecar.stop(); // the sidecar log is complete
    const eventsOf = async (namespace: string) => JSON.stringify((await core.listNamespacedEvent({ namespace })).items);
    const list = (plural: string, namespace: string) =>
      custom
        .listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural })
        .then((l) => JSON.stringify(l));
    const haystacks: Record<string, string> = {
      'Session objects': await list('sessions', ns),
      'AccessPolicy objects': await list('accesspolicies', ns),
      'ProtectedResource objects': await list('protectedresources', ns),
      'Events of the namespace': await eventsOf(ns),
      'Events of the operator namespace': await eventsOf(operator.operatorNamespace),
      'the injected Pod': JSON.stringify(await core.readNamespacedPod({ namespace: ns, name: podName })),
      'ConfigMaps of the namespace': JSON.stringify((await core.listNamespacedConfigMap({ namespace: ns })).items),
      "the sidecar's /metrics": sidecarMetrics,
      "the operator's /metrics": await (await fetch(`${operator.metricsUrl}/metrics`)).text(),
      "the operator's log": operator.logs().join('\n'),
      "the sidecar's log": readFileSync(sidecar.logFile, 'utf8'),
    };
    assert.ok(haystacks["the sidecar's log"]?.includes('"msg":"ready"'));
    assert.ok(haystacks['Session objects']?.includes('select current_user, 40 + 2'));
    const found = Object.entries(haystacks).flatMap(([where, text]) =>
      findSecrets(text, secrets).map((f) => `${where}: ${f}`),
    );
    assert.deepEqual(found, []);
  });

  // The operator stops cleanly: SIGTERM, exit 0.
  assert.equal(await operator.terminate(), 0, operator.logs().slice(-10).join('\n'));
});
