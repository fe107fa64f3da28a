// The ProtectedResource controller against the real API server: a missing Secret is Ready=False
// SecretNotFound with an Event; creating it makes the resource Ready with a credentialVersion; rotating the
// password changes the version; re-reconciling writes nothing; a missing key and an invalid CA are
// reported; the sidecar Role and RoleBinding follow the attested pods of the namespace (sealed by the
// operator; an injector annotation anyone can write earns nothing).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { GROUP, VERSION, type ProtectedResource } from '@chaperone/api';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { startOperator } from '../../operator/src/operator.ts';
import { ANNOTATION_INJECTED } from '../../operator/src/injection/constants.ts';
import { applyJsonPatch } from '../../operator/src/injection/json-patch.ts';
import { renderPodPatch } from '../../operator/src/injection/render-pod-patch.ts';
import { validateInjectionSettings } from '../../operator/src/injection/settings.ts';
import { statementSigner } from '@chaperone/api';
import { poll } from '../harness/poll.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { EXPECTED_SIDECAR_RULES } from './expected-sidecar-rbac.ts';
import { createTestNamespace, kubeConfig, statusOf } from '../harness/kube.ts';

const PLURAL = 'protectedresources';

const kc = kubeConfig();
const custom = kc.makeApiClient(k8s.CustomObjectsApi);
const core = kc.makeApiClient(k8s.CoreV1Api);
const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);

function postgresResource(name: string, secret: string, extra: Partial<ProtectedResource['spec']> = {}): unknown {
  return {
    apiVersion: `${GROUP}/${VERSION}`,
    kind: 'ProtectedResource',
    metadata: { name },
    spec: {
      type: 'postgres',
      endpoint: { host: 'orders-db.example.svc', port: 5432, database: 'orders' },
      credentialSecretRef: { name: secret },
      ...extra,
    },
  };
}

async function getResource(namespace: string, name: string): Promise<ProtectedResource> {
  return (await custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: PLURAL,
    name,
  })) as ProtectedResource;
}

async function createResource(namespace: string, body: unknown): Promise<void> {
  await custom.createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, body });
}

const ready = (r: ProtectedResource) => r.status?.conditions?.find((c) => c.type === 'Ready');

function waitFor(
  namespace: string,
  name: string,
  what: string,
  accept: (r: ProtectedResource) => boolean,
): Promise<ProtectedResource> {
  return poll(`${namespace}/${name} ${what}`, async () => {
    const r = await getResource(namespace, name);
    return r.status?.observedGeneration === r.metadata.generation && accept(r) ? r : undefined;
  });
}

function secret(name: string, data: Record<string, string>): k8s.V1Secret {
  return { metadata: { name }, stringData: data };
}

async function readOrUndefined<T>(read: () => Promise<T>): Promise<T | undefined> {
  try {
    return await read();
  } catch (err) {
    if (statusOf(err)?.code === 404) return undefined;
    throw err;
  }
}

test('ProtectedResource controller resolves references, tracks the credential and manages sidecar RBAC', async (t) => {
  const namespace = await createTestNamespace(t);
  const lines: string[] = [];
  const logger = createLogger({ level: 'debug', write: (l) => lines.push(l) });
  const operator = await startOperator({
    kubeConfig: kc,
    namespace,
    logger,
    metricsBindAddress: '127.0.0.1:0',
    identity: 'e2e-protected-resource',
    // The operator's key: pods are attested against its seals.
    audit: { namespace },
  });
  t.after(async () => {
    await operator.stop();
  });
  let completed = false;
  t.after(() => {
    if (!completed || process.env.CHAPERONE_TEST_VERBOSE !== undefined)
      console.log(`operator logs:\n${lines.join('')}`);
  });

  await t.test('a missing Secret is Ready=False SecretNotFound with an Event', async () => {
    await createResource(namespace, postgresResource('orders-db', 'orders-cred'));
    const r = await waitFor(namespace, 'orders-db', 'Ready=False', (x) => ready(x)?.status === 'False');
    const c = ready(r);
    assert.equal(c?.reason, 'SecretNotFound');
    assert.match(c.message, /Secret "orders-cred" \(spec\.credentialSecretRef\) not found/);
    assert.equal(r.status?.credentialVersion, undefined);
    assert.ok(r.status?.lastCheckedTime !== undefined);
    const event = await poll('a SecretNotFound event', async () => {
      const list = await core.listNamespacedEvent({
        namespace,
        fieldSelector: 'involvedObject.kind=ProtectedResource,involvedObject.name=orders-db',
      });
      return list.items.find((e) => e.reason === 'SecretNotFound');
    });
    assert.equal(event.type, 'Warning');
    assert.match(event.message ?? '', /orders-cred/);
  });

  let firstVersion = '';
  await t.test('creating the Secret makes it Ready with a credentialVersion', async () => {
    await core.createNamespacedSecret({
      namespace,
      body: secret('orders-cred', { username: 'app', password: 's3cret' }),
    });
    const started = Date.now();
    const r = await waitFor(namespace, 'orders-db', 'Ready=True', (x) => ready(x)?.status === 'True');
    t.diagnostic(`Ready=True ${Date.now() - started} ms after the Secret was created`);
    assert.equal(ready(r)?.reason, 'Resolved');
    firstVersion = r.status?.credentialVersion ?? '';
    assert.match(firstVersion, /^sha256:[0-9a-f]{64}$/);
    assert.ok(!lines.join('').includes('s3cret'), 'the password never reaches the logs');
  });

  await t.test('rotating the password changes credentialVersion', async () => {
    await core.patchNamespacedSecret(
      { namespace, name: 'orders-cred', body: { stringData: { password: 'rotated' } } },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    const r = await waitFor(
      namespace,
      'orders-db',
      'a new credentialVersion',
      (x) => x.status?.credentialVersion !== undefined && x.status.credentialVersion !== firstVersion,
    );
    assert.equal(ready(r)?.status, 'True');
  });

  await t.test('re-reconciling an unchanged resource writes nothing', async () => {
    // The controller logs each finished reconcile of a key: wait for the one the annotation causes.
    const reconciles = () =>
      lines.filter((l) => l.includes('"msg":"reconciled') && l.includes(`"key":"${namespace}/orders-db"`)).length;
    const before = reconciles();
    const annotated = (await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace,
        plural: PLURAL,
        name: 'orders-db',
        body: { metadata: { annotations: { touched: 'yes' } } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    )) as ProtectedResource;
    await poll('a reconcile of orders-db after the annotation', () =>
      Promise.resolve(reconciles() > before ? true : undefined),
    );
    const after = await getResource(namespace, 'orders-db');
    assert.equal(after.metadata.resourceVersion, annotated.metadata.resourceVersion);
  });

  await t.test('a missing key is SecretKeyMissing naming the key', async () => {
    await createResource(
      namespace,
      postgresResource('no-key', 'orders-cred', {
        credentialSecretRef: { name: 'orders-cred', usernameKey: 'username', passwordKey: 'token' },
      }),
    );
    const r = await waitFor(namespace, 'no-key', 'Ready=False', (x) => ready(x)?.status === 'False');
    assert.equal(ready(r)?.reason, 'SecretKeyMissing');
    assert.match(ready(r)?.message ?? '', /Secret "orders-cred" has no key "token"/);
  });

  await t.test('a CA that is not a PEM certificate is InvalidCA', async () => {
    await core.createNamespacedSecret({ namespace, body: secret('bad-ca', { 'ca.crt': 'not a certificate' }) });
    await createResource(
      namespace,
      postgresResource('bad-ca', 'orders-cred', {
        tls: { mode: 'verify-full', caSecretRef: { name: 'bad-ca', key: 'ca.crt' } },
      }),
    );
    const r = await waitFor(namespace, 'bad-ca', 'Ready=False', (x) => ready(x)?.status === 'False');
    assert.equal(ready(r)?.reason, 'InvalidCA');
    assert.match(ready(r)?.message ?? '', /Secret "bad-ca".*holds no PEM certificate/);
  });

  await t.test('the sidecar Role and RoleBinding follow the injected pods', async () => {
    const role = await poll('the Role', () =>
      readOrUndefined(() => rbac.readNamespacedRole({ namespace, name: 'chaperone-sidecar' })),
    );
    assert.deepEqual(
      role.rules?.map((r) => ({
        apiGroups: r.apiGroups,
        resources: r.resources,
        ...(r.resourceNames === undefined ? {} : { resourceNames: r.resourceNames }),
        verbs: r.verbs,
      })),
      EXPECTED_SIDECAR_RULES,
    );
    const documented = parseAllDocuments(readFileSync(join(REPO_ROOT, 'config', 'rbac', 'sidecar-role.yaml'), 'utf8'))
      .map((d) => d.toJS() as k8s.V1Role & { kind: string })
      .find((d) => d.kind === 'Role');
    assert.deepEqual(documented?.rules, EXPECTED_SIDECAR_RULES, 'config/rbac/sidecar-role.yaml says the same');
    assert.equal(role.metadata?.labels?.['app.kubernetes.io/managed-by'], 'chaperone-operator');
    assert.equal(role.metadata.ownerReferences?.length, 3, 'owned by every ProtectedResource of the namespace');

    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'agent' } } });
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'pretender' } } });
    // Annotated as injected by whoever created it, with no sidecar the operator sealed: not bound.
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: 'pretender-0', annotations: { [ANNOTATION_INJECTED]: 'abc123' } },
        spec: { serviceAccountName: 'pretender', containers: [{ name: 'agent', image: 'busybox' }] },
      },
    });
    // Injected and sealed with the operator's key (the webhook's rendering, without a webhook here).
    const authority = operator.authority;
    assert.ok(authority !== undefined);
    const agent: k8s.V1Pod = {
      metadata: { name: 'agent-0', annotations: { 'chaperone.dev/inject': 'true' } },
      spec: { serviceAccountName: 'agent', containers: [{ name: 'agent', image: 'busybox' }] },
    };
    const injected = renderPodPatch({
      pod: agent,
      namespace,
      namespaceLabels: {},
      resources: [await getResource(namespace, 'orders-db')],
      settings: validateInjectionSettings({ image: 'sidecar:test', operatorNamespace: 'chaperone-system' }),
      signer: statementSigner(authority.privateJwk),
      operatorKeys: authority.publicKeys,
    });
    assert.ok(injected.kind === 'patch');
    await core.createNamespacedPod({ namespace, body: applyJsonPatch(agent, injected.patch) });
    // Not injected: its account is not bound.
    await core.createNamespacedPod({
      namespace,
      body: { metadata: { name: 'plain' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } },
    });
    const binding = await poll('the RoleBinding with the agent account', async () => {
      const b = await readOrUndefined(() => rbac.readNamespacedRoleBinding({ namespace, name: 'chaperone-sidecar' }));
      return b?.subjects?.some((s) => s.name === 'agent') === true ? b : undefined;
    });
    assert.deepEqual(
      binding.subjects?.map((s) => ({ kind: s.kind, name: s.name, namespace: s.namespace })),
      [{ kind: 'ServiceAccount', name: 'agent', namespace }],
    );
    assert.deepEqual(
      { apiGroup: binding.roleRef.apiGroup, kind: binding.roleRef.kind, name: binding.roleRef.name },
      {
        apiGroup: 'rbac.authorization.k8s.io',
        kind: 'Role',
        name: 'chaperone-sidecar',
      },
    );

    await core.deleteNamespacedPod({ namespace, name: 'agent-0', gracePeriodSeconds: 0 });
    await poll('the RoleBinding without subjects', async () => {
      const b = await rbac.readNamespacedRoleBinding({ namespace, name: 'chaperone-sidecar' });
      return (b.subjects ?? []).length === 0 ? true : undefined;
    });

    for (const name of ['orders-db', 'no-key', 'bad-ca'])
      await custom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name });
    await poll('the Role and RoleBinding to be removed', async () => {
      const r = await readOrUndefined(() => rbac.readNamespacedRole({ namespace, name: 'chaperone-sidecar' }));
      const b = await readOrUndefined(() => rbac.readNamespacedRoleBinding({ namespace, name: 'chaperone-sidecar' }));
      return r === undefined && b === undefined ? true : undefined;
    });
  });

  await t.test('a read-only credential is resolved too, and rotating it changes credentialVersion', async () => {
    await core.createNamespacedSecret({ namespace, body: secret('main-cred', { username: 'owner', password: 'a' }) });
    await createResource(
      namespace,
      postgresResource('with-reader', 'main-cred', {
        readOnlyCredentialSecretRef: { name: 'reader-cred', usernameKey: 'username', passwordKey: 'password' },
      }),
    );
    const missing = await waitFor(namespace, 'with-reader', 'Ready=False', (x) => ready(x)?.status === 'False');
    assert.equal(ready(missing)?.reason, 'SecretNotFound');
    assert.match(ready(missing)?.message ?? '', /Secret "reader-cred" \(spec\.readOnlyCredentialSecretRef\) not found/);

    await core.createNamespacedSecret({
      namespace,
      body: secret('reader-cred', { username: 'reader', password: 'b' }),
    });
    const resolved = await waitFor(namespace, 'with-reader', 'Ready=True', (x) => ready(x)?.status === 'True');
    assert.match(ready(resolved)?.message ?? '', /Secret main-cred, Secret reader-cred/);
    const version = resolved.status?.credentialVersion ?? '';
    await core.patchNamespacedSecret(
      { namespace, name: 'reader-cred', body: { stringData: { password: 'rotated' } } },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    await waitFor(namespace, 'with-reader', 'a new credentialVersion', (x) => {
      const v = x.status?.credentialVersion;
      return v !== undefined && v !== version;
    });
    await custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name: 'with-reader',
    });
  });
  completed = true;
});
