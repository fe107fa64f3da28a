// The injector as a pure function: the patch applies, the rendered config passes the sidecar's own
// validator (with the env a kubelet would give the sidecar), a second call on the patched pod is empty,
// and the refusals say what is wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import type { V1Pod } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { SEAL_ANNOTATION, statementSigner, type ProtectedResource } from '@chaperone/api';
import { validateConfig } from '@chaperone/sidecar/config';
import { ANNOTATION_SIDECAR_CONFIG, SIDECAR_CONTAINER, VOLUME_AUDIT, VOLUME_SIDECAR_API_ACCESS } from './constants.ts';
import { applyJsonPatch } from './json-patch.ts';
import { renderPodPatch, type InjectionInput } from './render-pod-patch.ts';
import { attestationProblems, sealProblems } from './sealed-pod.ts';
import { validateInjectionSettings } from './settings.ts';

const settings = validateInjectionSettings({ image: 'sidecar:test', operatorNamespace: 'chaperone-system' });

/** The operator's key, as the audit authority holds it. */
function operatorKey(kid: string) {
  const privateJwk = { ...generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }), kid };
  return {
    signer: statementSigner(privateJwk),
    publicJwk: { kty: 'OKP', crv: 'Ed25519', x: privateJwk.x ?? '', kid },
  };
}
const operator = operatorKey('operator-key');

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
  settings,
  signer: operator.signer,
  operatorKeys: [operator.publicJwk],
  ...overrides,
});

test('the patch applies, the config validates with the sidecar, and a second pass is empty', () => {
  const result = renderPodPatch(input(pod()));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
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
  const listener = config.listeners[0];
  assert.ok(listener?.type === 'postgres');
  assert.equal(listener.upstream.passwordFile, '/etc/chaperone/credentials/orders/password');
  assert.equal(listener.upstream.tls.caFile, '/etc/chaperone/credentials/orders/ca.crt');
  assert.deepEqual(listener.resource.labels, { tier: 'gold' });

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
  const patched = applyJsonPatch(generated, result.patch);
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
  const patched = applyJsonPatch(pod(), result.patch);
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

test('settings: the sidecar runs hardened, with the pull policy, resources and probes a platform team sets', () => {
  const sidecarOf = (p: V1Pod) => p.spec?.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  // Defaults: IfNotPresent, requests 50m/96Mi, a 256Mi memory limit and no CPU limit.
  const defaults = renderPodPatch(input(pod()));
  assert.equal(defaults.kind, 'patch');
  const plain = sidecarOf(applyJsonPatch(pod(), defaults.patch));
  assert.equal(plain?.imagePullPolicy, 'IfNotPresent');
  assert.deepEqual(plain.resources, { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: '256Mi' } });
  // The restricted Pod Security Standard and more: non-root, read-only root, no capabilities, RuntimeDefault.
  assert.deepEqual(plain.securityContext, {
    runAsNonRoot: true,
    runAsUser: 65532,
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
  });
  // Started, ready and alive on /healthz of its metrics port; liveness only after a minute without an answer.
  for (const probe of [plain.startupProbe, plain.readinessProbe, plain.livenessProbe]) {
    assert.deepEqual(probe?.httpGet, { path: '/healthz', port: 9091, scheme: 'HTTP' });
  }
  assert.deepEqual(
    [plain.livenessProbe?.periodSeconds, plain.livenessProbe?.failureThreshold, plain.livenessProbe?.timeoutSeconds],
    [10, 6, 5],
  );
  assert.equal(plain.livenessProbe?.successThreshold, 1, 'written out as the API server defaults it (the seal)');

  const tuned = validateInjectionSettings({
    image: 'registry.example/chaperone-sidecar@sha256:' + 'a'.repeat(64),
    operatorNamespace: 'chaperone-system',
    imagePullPolicy: 'Always',
    resources: { requests: { cpu: '0.2', memory: '128Mi' }, limits: { cpu: '1', memory: '1Gi' } },
  });
  const result = renderPodPatch(input(pod(), { settings: tuned }));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
  const sidecar = sidecarOf(patched);
  assert.equal(sidecar?.imagePullPolicy, 'Always');
  assert.deepEqual(sidecar.resources, {
    requests: { cpu: '0.2', memory: '128Mi' },
    limits: { cpu: '1', memory: '1Gi' },
  });
  assert.deepEqual(attestationProblems(patched, 'ci', [operator.publicJwk]), [], 'sealed as rendered');

  const refused = (overrides: Record<string, unknown>) => () =>
    validateInjectionSettings({ image: 'x', operatorNamespace: 'y', ...overrides });
  assert.throws(refused({ imagePullPolicy: 'Sometimes' }), /imagePullPolicy: one of Always, IfNotPresent, Never/);
  assert.throws(refused({ resources: { limits: { memory: 'lots' } } }), /resources.limits.memory: a quantity/);
  assert.throws(refused({ resources: { limits: { gpu: '1' } } }), /resources.limits.gpu: one of cpu, memory/);
  assert.throws(refused({ resources: { claims: [] } }), /resources.claims: only requests and limits/);
  assert.throws(
    refused({ resources: { requests: { memory: '512Mi' }, limits: { memory: '256Mi' } } }),
    /resources.requests.memory: must not exceed resources.limits.memory/,
  );
  assert.throws(refused({ resources: { limits: { memory: '64Mi' } } }), /at least 128Mi/);
  assert.throws(refused({ resources: { limits: { memory: '100M' } } }), /at least 128Mi/, '100 MB < 128 MiB');
});

test("signer certification: the sidecar is pointed at the operator's endpoint with its CA and its own pod-bound token", () => {
  const endpoint = {
    url: 'https://chaperone-webhook.chaperone-system.svc:443/audit/v1/certify',
    caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  };
  const result = renderPodPatch(input(pod(), { signerCertification: endpoint }));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
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
  const plain = applyJsonPatch(pod(), without.patch);
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
  const patched = applyJsonPatch(pod(), result.patch);
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
  // The sidecar config names the mounted files, and the pinned schema.
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  const mountPath = [...(patched.spec?.initContainers ?? []), ...(patched.spec?.containers ?? [])]
    .find((c) => c.name === SIDECAR_CONTAINER)
    ?.volumeMounts?.find((m) => m.name === credentials.name)?.mountPath;
  assert.ok(mountPath !== undefined);
  const readOnlyListener = config.listeners[0];
  assert.ok(readOnlyListener?.type === 'postgres');
  assert.equal(readOnlyListener.upstream.readOnlyUsernameFile, `${mountPath}/orders/read-only/username`);
  assert.equal(readOnlyListener.upstream.readOnlyPasswordFile, `${mountPath}/orders/read-only/password`);
  assert.equal(readOnlyListener.searchPath, 'public', 'the default pinned schema');

  const pinned = renderPodPatch(input(pod(), { resources: [resource('orders', { searchPath: 'reporting' })] }));
  assert.equal(pinned.kind, 'patch');
  const pinnedPod = applyJsonPatch(pod(), pinned.patch);
  const pinnedConfig = validateConfig(
    parse(pinnedPod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(pinnedPod, podFields),
  );
  const pinnedListener = pinnedConfig.listeners[0];
  assert.ok(pinnedListener?.type === 'postgres');
  assert.equal(pinnedListener.searchPath, 'reporting');
  assert.equal(pinnedListener.upstream.readOnlyUsernameFile, undefined);
});

test('a masking key is mounted into the sidecar only and named as its hash key file; an agent may not mount it', () => {
  const keyed = resource('orders', { maskingKeySecretRef: { name: 'orders-masking', key: 'hmac' } });
  const result = renderPodPatch(input(pod(), { resources: [keyed] }));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
  const credentials = patched.spec?.volumes?.find((v) =>
    v.projected?.sources?.some((s) => s.secret?.name === 'orders-masking'),
  );
  assert.ok(credentials, 'the masking key Secret is projected');
  assert.deepEqual(credentials.projected?.sources?.find((s) => s.secret?.name === 'orders-masking')?.secret?.items, [
    { key: 'hmac', path: 'orders/masking-key' },
  ]);
  const containers = [...(patched.spec?.initContainers ?? []), ...(patched.spec?.containers ?? [])];
  assert.deepEqual(
    containers.filter((c) => c.volumeMounts?.some((m) => m.name === credentials.name)).map((c) => c.name),
    [SIDECAR_CONTAINER],
  );
  const mountPath = containers
    .find((c) => c.name === SIDECAR_CONTAINER)
    ?.volumeMounts?.find((m) => m.name === credentials.name)?.mountPath;
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  const listener = config.listeners[0];
  assert.ok(listener?.type === 'postgres');
  assert.equal(listener.masking?.hashKeyFile, `${String(mountPath)}/orders/masking-key`);

  const plain = renderPodPatch(input(pod(), { resources: [resource('orders')] }));
  assert.equal(plain.kind, 'patch');
  const plainPod = applyJsonPatch(pod(), plain.patch);
  const plainListener = validateConfig(
    parse(plainPod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(plainPod, podFields),
  ).listeners[0];
  assert.ok(plainListener?.type === 'postgres');
  assert.equal(plainListener.masking, undefined, 'no key configured: the sidecar keeps a random one');

  // An agent container that mounts the masking key Secret itself is treated as one mounting a credential:
  // refused in strict mode, warned about otherwise.
  const greedy = (): V1Pod => {
    const p = pod();
    p.spec?.volumes?.push({ name: 'key', secret: { secretName: 'orders-masking' } });
    p.spec?.containers[0]?.volumeMounts?.push({ name: 'key', mountPath: '/key' });
    return p;
  };
  const refused = renderPodPatch(
    input(greedy(), { resources: [keyed], namespaceLabels: { 'chaperone.dev/strict': 'true' } }),
  );
  assert.match(refused.kind === 'deny' ? refused.message : '', /credential Secret orders-masking/);
  const warned = renderPodPatch(input(greedy(), { resources: [keyed] }));
  assert.ok(warned.kind === 'patch' && warned.warnings.some((w) => w.includes('credential Secret orders-masking')));
});

test('a masking key with a delivered credential: no Secret projected, the key file in the memory volume the delivery fills', () => {
  const settings = validateInjectionSettings({
    image: 'sidecar:test',
    operatorNamespace: 'chaperone-system',
    credentialNamespace: 'chaperone-credentials',
  });
  const keyed = resource('orders', {
    credentialSecretRef: {
      name: 'orders-db',
      namespace: 'chaperone-credentials',
      usernameKey: 'username',
      passwordKey: 'password',
    },
    maskingKeySecretRef: { name: 'orders-masking', key: 'hmac' },
  });
  const result = renderPodPatch(
    input(pod(), {
      settings,
      resources: [keyed],
      namespaceLabels: { 'chaperone.dev/strict': 'true' },
      operatorEndpoint: { baseUrl: 'https://chaperone-webhook.chaperone-system.svc', caPem: 'CA' },
    }),
  );
  assert.equal(result.kind, 'patch', JSON.stringify(result));
  const patched = applyJsonPatch(pod(), result.patch);
  assert.ok(
    !JSON.stringify(patched.spec?.volumes ?? []).includes('orders-masking'),
    'no volume names the masking key Secret',
  );
  const credentials = patched.spec?.volumes?.find((v) => v.name === 'chaperone-credentials');
  assert.deepEqual(credentials?.emptyDir, { medium: 'Memory', sizeLimit: '1Mi' });
  const containers = [...(patched.spec?.initContainers ?? []), ...(patched.spec?.containers ?? [])];
  const mounting = containers.filter((c) => c.volumeMounts?.some((m) => m.name === 'chaperone-credentials'));
  assert.deepEqual(
    mounting.map((c) => c.name),
    [SIDECAR_CONTAINER],
  );
  const mountPath = mounting[0]?.volumeMounts?.find((m) => m.name === 'chaperone-credentials')?.mountPath;
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  const listener = config.listeners[0];
  assert.ok(listener?.type === 'postgres');
  // The fetcher writes <credentials.dir>/<resource>/masking-key (sidecar/src/core/credentials/credential-fetcher.ts).
  assert.equal(config.credentials?.dir, mountPath);
  assert.deepEqual(config.credentials?.resources, ['orders']);
  assert.equal(listener.masking?.hashKeyFile, `${String(mountPath)}/orders/masking-key`);
});

test("token exchange: the sidecar trusts the operator's exchange, with its JWKS on the webhook server and its CA", () => {
  const endpoint = {
    issuer: 'https://chaperone-webhook.chaperone-system.svc/identity/v1',
    jwksUrl: 'https://chaperone-webhook.chaperone-system.svc:443/identity/v1/jwks',
    caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  };
  const result = renderPodPatch(input(pod(), { tokenExchange: endpoint }));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
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
    parse(applyJsonPatch(pod(), without.patch).metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(applyJsonPatch(pod(), without.patch), podFields),
  );
  assert.equal(plain.identity.issuers.length, 1, 'only the service-account issuer without the exchange');
});

test("the injector seals what it renders, with the API server's defaults written out", () => {
  const result = renderPodPatch(input(pod()));
  assert.equal(result.kind, 'patch');
  const patched = applyJsonPatch(pod(), result.patch);
  assert.ok(patched.metadata?.annotations?.[SEAL_ANNOTATION]);
  assert.deepEqual(attestationProblems(patched, 'ci', [operator.publicJwk]), []);
  const sidecar = patched.spec?.initContainers?.[0];
  // What kube-apiserver 1.37 defaults, so that the stored container hashes like the rendered one.
  assert.equal(sidecar?.terminationMessagePath, '/dev/termination-log');
  assert.equal(sidecar.terminationMessagePolicy, 'File');
  assert.deepEqual(sidecar.startupProbe?.httpGet?.scheme, 'HTTP');
  assert.equal(sidecar.readinessProbe?.timeoutSeconds, 1);
  assert.ok(sidecar.env?.every((e) => e.valueFrom?.fieldRef?.apiVersion === 'v1'));
  // Another namespace, another key, a changed image: the seal no longer holds.
  assert.match(sealProblems(patched, 'prod', [operator.publicJwk]).join(), /issued for namespace ci, not prod/);
  assert.match(
    sealProblems(patched, 'ci', [operatorKey('operator-key').publicJwk]).join(),
    /does not verify with the operator's key/,
  );
  const swapped = structuredClone(patched);
  const container = swapped.spec?.initContainers?.[0];
  assert.ok(container);
  container.image = 'attacker/sidecar:latest';
  assert.match(sealProblems(swapped, 'ci', [operator.publicJwk]).join(), /differ from what the operator rendered/);
  // Resources are not sealed: in-place resize does not break the seal.
  container.image = sidecar.image ?? '';
  container.resources = { limits: { memory: '1Gi' } };
  assert.deepEqual(sealProblems(swapped, 'ci', [operator.publicJwk]), []);
});

test("a pod that brings the injector's names without the operator's seal is refused", () => {
  const own = pod({
    initContainers: [
      {
        name: SIDECAR_CONTAINER,
        image: 'attacker/image',
        volumeMounts: [{ name: 'creds', mountPath: '/creds' }],
      },
    ],
    volumes: [{ name: 'creds', secret: { secretName: 'db-creds' } }],
  });
  const refused = renderPodPatch(input(own));
  assert.ok(refused.kind === 'deny');
  assert.match(refused.message, /sets container chaperone-sidecar, which only the injector may set/);
  for (const volume of ['chaperone-audit', 'chaperone-credentials', 'chaperone-agent-identity']) {
    const preset = pod({ volumes: [{ name: volume, emptyDir: {} }] });
    const result = renderPodPatch(input(preset));
    assert.match(result.kind === 'deny' ? result.message : '', new RegExp(`volume ${volume}`));
  }
  const annotated = pod();
  Object.assign(annotated.metadata?.annotations ?? {}, { [SEAL_ANNOTATION]: 'x.y.z' });
  assert.equal(renderPodPatch(input(annotated)).kind, 'deny');
  // A genuine injected pod copied under the same namespace is recognised; altered, it is refused.
  const genuine = renderPodPatch(input(pod()));
  assert.equal(genuine.kind, 'patch');
  const copy = applyJsonPatch(pod(), genuine.patch);
  assert.deepEqual(renderPodPatch(input(copy)), { kind: 'patch', patch: [], warnings: [] });
  const altered = structuredClone(copy);
  const sidecar = altered.spec?.initContainers?.[0];
  assert.ok(sidecar);
  sidecar.args = ['--config', '/tmp/mine.yaml'];
  assert.equal(renderPodPatch(input(altered)).kind, 'deny');
});

test('attestation: allow-lists for volumes, capabilities and token audiences; strict mode refuses, otherwise a warning', () => {
  const strict = { namespaceLabels: { 'chaperone.dev/strict': 'true' } };
  const cases: [string, Partial<V1Pod['spec']>, RegExp][] = [
    ['hostPath', { volumes: [{ name: 'node', hostPath: { path: '/' } }] }, /volume node is a hostPath/],
    ['gitRepo', { volumes: [{ name: 'src', gitRepo: { repository: 'x' } }] }, /volume src uses gitRepo/],
    ['shareProcessNamespace', { shareProcessNamespace: true }, /shareProcessNamespace is true/],
  ];
  for (const [what, spec, pattern] of cases) {
    const refused = renderPodPatch(input(pod(spec), strict));
    assert.match(refused.kind === 'deny' ? refused.message : '', pattern, what);
  }
  const withAgent = (
    agent: Partial<NonNullable<V1Pod['spec']>['containers'][number]>,
    volumes: NonNullable<V1Pod['spec']>['volumes'] = [],
  ) => pod({ containers: [{ name: 'agent', image: 'x', ...agent }], volumes });
  for (const [agent, pattern] of [
    [{ securityContext: { privileged: true } }, /container agent is privileged/],
    [{ securityContext: { capabilities: { add: ['SYS_PTRACE'] } } }, /adds capability SYS_PTRACE/],
    [{ securityContext: { capabilities: { add: ['CAP_NET_ADMIN'] } } }, /adds capability CAP_NET_ADMIN/],
    [{ securityContext: { procMount: 'Unmasked' } }, /procMount Unmasked/],
  ] as [Partial<NonNullable<V1Pod['spec']>['containers'][number]>, RegExp][]) {
    const refused = renderPodPatch(input(withAgent(agent), strict));
    assert.match(refused.kind === 'deny' ? refused.message : '', pattern);
  }
  // A default capability is fine.
  assert.equal(
    renderPodPatch(input(withAgent({ securityContext: { capabilities: { add: ['NET_BIND_SERVICE'] } } }), strict)).kind,
    'patch',
  );
  // Agents may carry only the "chaperone" audience: the issuer URL is as good as the API server's own.
  for (const audience of ['https://kubernetes.default.svc.cluster.local', 'vault', '']) {
    const tokened = withAgent({ volumeMounts: [{ name: 'tok', mountPath: '/tok' }] }, [
      { name: 'tok', projected: { sources: [{ serviceAccountToken: { path: 't', audience } }] } },
    ]);
    const refused = renderPodPatch(input(tokened, strict));
    assert.match(
      refused.kind === 'deny' ? refused.message : '',
      /agents (may hold|get) only the (audience )?"chaperone" token/,
      audience,
    );
    const warned = renderPodPatch(input(tokened));
    assert.ok(warned.kind === 'patch');
    assert.match(warned.warnings.join(), /cannot be attested/);
  }
  const chaperoneAudience = withAgent({ volumeMounts: [{ name: 'tok', mountPath: '/tok' }] }, [
    { name: 'tok', projected: { sources: [{ serviceAccountToken: { path: 't', audience: 'chaperone' } }] } },
  ]);
  assert.equal(renderPodPatch(input(chaperoneAudience, strict)).kind, 'patch');
});

test('records in the evidence store: rendered (no password) and validated by the sidecar; mixed or unavailable stores refused', () => {
  const withStore = validateInjectionSettings({
    image: 'sidecar:test',
    operatorNamespace: 'chaperone-system',
    credentialNamespace: 'chaperone-credentials',
    evidenceStore: {
      host: 'evidence.db',
      port: 5432,
      database: 'evidence',
      writerUser: 'chaperone_writer',
      passwordSecret: 'evidence-writer',
      caSecret: 'evidence-ca',
      batchRecords: 4096,
      headIntervalMs: 2000,
    },
  });
  const strict = { 'chaperone.dev/strict': 'true' };
  const operatorEndpoint = { baseUrl: 'https://chaperone-webhook.chaperone-system.svc', caPem: 'CA' };
  const stored = renderPodPatch(input(pod(), { settings: withStore, namespaceLabels: strict, operatorEndpoint }));
  assert.equal(stored.kind, 'patch');
  const patched = applyJsonPatch(pod(), stored.patch);
  const config = validateConfig(
    parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''),
    kubeletEnv(patched, podFields),
  );
  assert.deepEqual(config.audit.evidenceStore?.postgres, {
    host: 'evidence.db',
    port: 5432,
    database: 'evidence',
    user: 'chaperone_writer',
    passwordFile: '/etc/chaperone/evidence/password',
    caFile: '/etc/chaperone/evidence/ca.crt',
  });
  assert.equal(config.audit.evidenceStore.headIntervalMs, 2000, 'the chart value reaches the sidecar');
  assert.deepEqual(config.credentials?.evidenceStore, { dir: '/etc/chaperone/evidence' });
  assert.deepEqual(config.credentials.resources, []);
  const sidecar = patched.spec?.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  assert.ok(sidecar?.volumeMounts?.some((m) => m.name === 'chaperone-evidence-credentials' && m.readOnly !== true));
  assert.ok(
    !patched.spec?.containers.some((c) => c.volumeMounts?.some((m) => m.name === 'chaperone-evidence-credentials')),
  );
  assert.deepEqual(attestationProblems(patched, 'ci', [operator.publicJwk]), []);

  // Not strict: the default falls back to Session objects; asking for the store explicitly is refused.
  const relaxed = renderPodPatch(input(pod(), { settings: withStore, operatorEndpoint }));
  assert.equal(relaxed.kind, 'patch');
  const relaxedConfig = parse(
    applyJsonPatch(pod(), relaxed.patch).metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '',
  ) as {
    audit: Record<string, unknown>;
  };
  assert.equal(relaxedConfig.audit.evidenceStore, undefined);
  const explicit = resource('orders', {
    audit: { failureMode: 'FailClosed', retention: '720h', records: 'EvidenceStore' },
  });
  const refused = renderPodPatch(input(pod(), { settings: withStore, operatorEndpoint, resources: [explicit] }));
  assert.equal(refused.kind, 'deny');
  assert.match(JSON.stringify(refused), /delivered only into strict namespaces/);
  // No store configured, asked for: refused, never downgraded to Session objects.
  const none = renderPodPatch(input(pod(), { namespaceLabels: strict, operatorEndpoint, resources: [explicit] }));
  assert.equal(none.kind, 'deny');
  assert.match(JSON.stringify(none), /the operator has none configured/);
  // Two resources of one pod that disagree.
  const two = pod();
  two.metadata = {
    name: 'agent',
    annotations: { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': 'orders,billing' },
  };
  const objects = resource('billing', {
    listenPort: 15433,
    audit: { failureMode: 'FailClosed', retention: '720h', records: 'SessionObjects' },
  });
  const mixed = renderPodPatch(
    input(two, {
      settings: withStore,
      namespaceLabels: strict,
      operatorEndpoint,
      resources: [resource('orders'), objects],
    }),
  );
  assert.equal(mixed.kind, 'deny');
  assert.match(
    JSON.stringify(mixed),
    /keep their records in different places \(orders: EvidenceStore; billing: SessionObjects\)/,
  );
});
