// The injector as a pure function: the patch applies, the rendered config passes the sidecar's own
// validator, a second call on the patched pod is empty, and the refusals say what is wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Pod } from '@kubernetes/client-node';
import { parse } from 'yaml';
import type { ProtectedResource } from '@chaperone/api';
import { validateConfig } from '../../../sidecar/src/config.ts';
import { ANNOTATION_SIDECAR_CONFIG, SIDECAR_CONTAINER } from './constants.ts';
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
  const config = validateConfig(parse(patched.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? ''));
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
