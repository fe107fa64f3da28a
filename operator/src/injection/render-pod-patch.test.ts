// The injector as a pure function: the patch applies, the rendered config passes the sidecar's own
// validator (with the env a kubelet would give the sidecar), a second call on the patched pod is empty,
// and the refusals say what is wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Pod } from '@kubernetes/client-node';
import { parse } from 'yaml';
import type { ProtectedResource } from '@chaperone/api';
import { validateConfig } from '@chaperone/sidecar/config';
import { ANNOTATION_SIDECAR_CONFIG, SIDECAR_CONTAINER, VOLUME_AUDIT, VOLUME_SIDECAR_API_ACCESS } from './constants.ts';
import type { JsonPatchOperation } from './json-patch.ts';
import { renderPodPatch, type InjectionInput } from './render-pod-patch.ts';
import { validateInjectionSettings } from './settings.ts';

/** A deliberately small RFC 6902 applier (add/replace/remove) for the patches the injector emits. */
function applyPatch<T>(doc: T, patch: readonly JsonPatchOperation[]): T {
  const root = structuredClone(doc) as unknown as Record<string, unknown>;
  for (const op of patch) {
    const tokens = op.path
      .split('/')
      .slice(1)
      .map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
    const last = tokens.pop() ?? '';
    let parent: unknown = root;
    for (const t of tokens) parent = (parent as Record<string, unknown>)[t];
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last);
      if (op.op === 'add') parent.splice(index, 0, op.value);
      else if (op.op === 'replace') parent[index] = op.value;
      else parent.splice(index, 1);
    } else {
      const obj = parent as Record<string, unknown>;
      if (op.op === 'remove') Reflect.deleteProperty(obj, last);
      else obj[last] = op.value;
    }
  }
  return root as unknown as T;
}

const settings = validateInjectionSettings({ image: 'sidecar:test', operatorNamespace: 'chaperone-system' });

/** The env a kubelet gives the sidecar: its downward-API fields, resolved for `fields`, and the in-cluster API server. */
function kubeletEnv(patched: V1Pod, fields: Record<string, string>): Record<string, string> {
  const sidecar = patched.spec?.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  const env = (sidecar?.env ?? []).map((e) => [
    e.name,
    fields[e.valueFrom?.fieldRef?.fieldPath ?? ''] ?? e.value ?? '',
  ]);
  return { ...Object.fromEntries(env), KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
}
const podFields = { 'metadata.name': 'agent', 'metadata.namespace': 'ci', 'metadata.uid': '5e0b3c1a-uid' };

const resource = (name: string, extra: Partial<ProtectedResource['spec']> = {}): ProtectedResource => ({
  apiVersion: 'chaperone.dev/v1alpha1',
  kind: 'ProtectedResource',
  metadata: { name, namespace: 'ci', labels: { tier: 'gold' } },
  spec: {
    type: 'postgres',
    endpoint: { host: 'db.ci.svc', port: 5432, database: 'orders' },
    tls: { mode: 'verify-full', caSecretRef: { name: 'db-ca', key: 'ca.crt' } },
    credentialSecretRef: { name: 'db-creds', usernameKey: 'username', passwordKey: 'password' },
    audit: { failureMode: 'FailClosed', retention: '720h' },
    ...extra,
  },
});

function pod(spec: Partial<V1Pod['spec']> = {}): V1Pod {
  return {
    metadata: { name: 'agent', annotations: { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': 'orders' } },
    spec: {
      containers: [
        {
          name: 'agent',
          image: 'x',
          volumeMounts: [{ name: 'kube-api-access-abcde', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount' }],
        },
      ],
      volumes: [
        {
          name: 'kube-api-access-abcde',
          projected: { sources: [{ serviceAccountToken: { path: 'token', expirationSeconds: 3607 } }] },
        },
      ],
      ...spec,
    },
  };
}

const input = (p: V1Pod, overrides: Partial<InjectionInput> = {}): InjectionInput => ({
  pod: p,
  namespace: 'ci',
  namespaceLabels: {},
  resources: [resource('orders')],
  policies: ['orders-policy'],
  settings,
  ...overrides,
});

test('the patch applies, the config validates with the sidecar, and a second pass is empty', () => {
  const result = renderPodPatch(input(pod()));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(pod(), result.patch);
  assert.equal(patched.spec?.initContainers?.[0]?.name, SIDECAR_CONTAINER);
  assert.equal(patched.spec.automountServiceAccountToken, false);
  assert.ok(!patched.spec.volumes?.some((v) => v.name.startsWith('kube-api-access-')));
  assert.deepEqual(
    patched.spec.containers[0]?.volumeMounts?.map((m) => m.name),
    ['chaperone-agent-identity'],
  );
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  assert.equal(config.listeners[0]?.upstream.passwordFile, '/etc/chaperone/credentials/orders/password');
  assert.equal(config.listeners[0].upstream.tls.caFile, '/etc/chaperone/credentials/orders/ca.crt');
  assert.deepEqual(config.listeners[0].resource.labels, { tier: 'gold' });

  const again = renderPodPatch(input(patched));
  assert.deepEqual(again, { kind: 'patch', patch: [], warnings: [] });
});

test('kube-system, the operator namespace and pods without the annotation are skipped', () => {
  assert.equal(renderPodPatch(input(pod(), { namespace: 'kube-system' })).kind, 'skip');
  assert.equal(renderPodPatch(input(pod(), { namespace: 'chaperone-system' })).kind, 'skip');
  const plain = pod();
  plain.metadata = { name: 'plain' };
  assert.equal(renderPodPatch(input(plain)).kind, 'skip');
});

test('refusals: port clash, strict mode, no resources', () => {
  const clash = renderPodPatch(input(pod(), { resources: [resource('a'), resource('b')] }));
  assert.equal(clash.kind, 'deny');
  assert.match(clash.message, /listens on port 5432, already used by ProtectedResource a/);
  const strict = renderPodPatch(
    input(pod({ hostNetwork: true }), { namespaceLabels: { 'chaperone.dev/strict': 'true' } }),
  );
  assert.match(strict.kind === 'deny' ? strict.message : '', /hostNetwork is true/);
  const none = renderPodPatch(input(pod(), { resources: [] }));
  assert.match(none.kind === 'deny' ? none.message : '', /names no ProtectedResource/);
});

test('a generateName pod: the sidecar learns its pod from the downward API and writes Sessions with its own token', () => {
  const generated = pod();
  generated.metadata = { generateName: 'nightly-report-', annotations: pod().metadata?.annotations ?? {} };
  const result = renderPodPatch(input(generated));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(generated, result.patch);
  const sidecar = patched.spec?.initContainers?.[0];
  assert.equal(sidecar?.name, SIDECAR_CONTAINER);
  const rendered: unknown = parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '');

  // Without the kubelet's env the sidecar says what is missing, and where it would come from.
  assert.throws(
    () => validateConfig(rendered),
    (err: Error) =>
      err.message.includes('/pod/name: set it (or POD_NAME) when audit.spoolDir is set') &&
      err.message.includes('KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not in the environment'),
  );
  const fields = { ...podFields, 'metadata.name': 'nightly-report-x7k2p' };
  const config = validateConfig(rendered, kubeletEnv(patched, fields));
  assert.deepEqual(config.pod, { namespace: 'ci', name: 'nightly-report-x7k2p', uid: '5e0b3c1a-uid' });
  assert.equal(config.audit.exportJsonLines, false);
  assert.equal(config.audit.spoolMaxBytes, 256 * 1024 * 1024);
  assert.deepEqual(config.audit.kubernetes, {
    server: 'https://10.96.0.1:443',
    tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
    caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
  });

  // The spool is a writable emptyDir in the sidecar alone, a little larger than the spool bound.
  const mounts = sidecar.volumeMounts ?? [];
  const spoolMount = mounts.find((m) => m.mountPath === config.audit.spoolDir);
  assert.equal(spoolMount?.name, VOLUME_AUDIT);
  assert.notEqual(spoolMount.readOnly, true);
  const volumes = new Map((patched.spec?.volumes ?? []).map((v) => [v.name, v]));
  assert.deepEqual(volumes.get(VOLUME_AUDIT), { name: VOLUME_AUDIT, emptyDir: { sizeLimit: '320Mi' } });
  assert.ok(!patched.spec?.containers.some((c) => c.volumeMounts?.some((m) => m.name === VOLUME_AUDIT)));
  // Sessions are written with the sidecar's projected token: the API server's own audience, bound to the pod.
  const tokenMount = mounts.find((m) => config.audit.kubernetes?.tokenFile === `${m.mountPath}/token`);
  assert.equal(tokenMount?.name, VOLUME_SIDECAR_API_ACCESS);
  const token = volumes.get(VOLUME_SIDECAR_API_ACCESS)?.projected?.sources?.find((s) => s.serviceAccountToken);
  assert.equal(token?.serviceAccountToken?.audience, undefined);
});

test('settings: the spool bound sizes the emptyDir, and JSON lines on stdout are opt-in', () => {
  const exporting = validateInjectionSettings({
    image: 'sidecar:test',
    operatorNamespace: 'chaperone-system',
    auditSpoolMaxBytes: 64 * 1024 * 1024,
    auditExportJsonLines: true,
  });
  const result = renderPodPatch(input(pod(), { settings: exporting }));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(pod(), result.patch);
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  assert.equal(config.audit.exportJsonLines, true);
  assert.equal(config.audit.path, '-');
  assert.equal(config.audit.spoolMaxBytes, 64 * 1024 * 1024);
  const volume = patched.spec?.volumes?.find((v) => v.name === VOLUME_AUDIT);
  assert.equal(volume?.emptyDir?.sizeLimit, '80Mi');
  assert.throws(
    () => validateInjectionSettings({ image: 'x', operatorNamespace: 'y', auditSpoolMaxBytes: 1000 }),
    /auditSpoolMaxBytes: an integer >= 65536/,
  );
});

test("signer certification: the sidecar is pointed at the operator's endpoint with its CA and its own pod-bound token", () => {
  const endpoint = {
    url: 'https://chaperone-webhook.chaperone-system.svc:443/audit/v1/certify',
    caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  };
  const result = renderPodPatch(input(pod(), { signerCertification: endpoint }));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(pod(), result.patch);
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  assert.equal(config.audit.certification?.url, endpoint.url);
  assert.equal(config.audit.certification.ca, endpoint.caPem);
  assert.equal(config.audit.certification.tokenFile, config.audit.kubernetes?.tokenFile);
  assert.equal(config.audit.certification.waitSeconds, 10);

  const without = renderPodPatch(input(pod()));
  assert.equal(without.kind, 'patch');
  const plain = applyPatch(pod(), without.patch);
  const plainConfig = validateConfig(
    parse(plain.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(plain, podFields),
  );
  assert.equal(plainConfig.audit.certification, undefined);
});

test('a read-only credential is mounted into the sidecar only, beside the main one', () => {
  const withReader = resource('orders', {
    readOnlyCredentialSecretRef: { name: 'db-reader', usernameKey: 'user', passwordKey: 'pass' },
  });
  const result = renderPodPatch(input(pod(), { resources: [withReader] }));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(pod(), result.patch);
  const credentials = patched.spec?.volumes?.find((v) =>
    v.projected?.sources?.some((s) => s.secret?.name === 'db-reader'),
  );
  assert.ok(credentials, 'the read-only Secret is projected');
  const reader = credentials.projected?.sources?.find((s) => s.secret?.name === 'db-reader');
  assert.deepEqual(reader?.secret?.items, [
    { key: 'user', path: 'orders/read-only/username' },
    { key: 'pass', path: 'orders/read-only/password' },
  ]);
  const mountedBy = [...(patched.spec?.initContainers ?? []), ...(patched.spec?.containers ?? [])]
    .filter((c) => c.volumeMounts?.some((m) => m.name === credentials.name))
    .map((c) => c.name);
  assert.deepEqual(mountedBy, [SIDECAR_CONTAINER]);
});

test("token exchange: the sidecar trusts the operator's exchange, with its JWKS on the webhook server and its CA", () => {
  const endpoint = {
    issuer: 'https://chaperone-webhook.chaperone-system.svc/identity/v1',
    jwksUrl: 'https://chaperone-webhook.chaperone-system.svc:443/identity/v1/jwks',
    caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  };
  const result = renderPodPatch(input(pod(), { tokenExchange: endpoint }));
  assert.equal(result.kind, 'patch');
  const patched = applyPatch(pod(), result.patch);
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  const exchange = config.identity.issuers.find((i) => i.issuer === endpoint.issuer);
  assert.deepEqual(
    { ...exchange },
    {
      issuer: endpoint.issuer,
      jwksUrl: endpoint.jwksUrl,
      jwksCa: endpoint.caPem,
      tokenExchange: true,
      audiences: ['chaperone'],
      algorithms: ['ES256'],
    },
  );
  const without = renderPodPatch(input(pod()));
  assert.equal(without.kind, 'patch');
  const plain = validateConfig(
    parse(applyPatch(pod(), without.patch).metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(applyPatch(pod(), without.patch), podFields),
  );
  assert.equal(plain.identity.issuers.length, 1, 'only the service-account issuer without the exchange');
});
