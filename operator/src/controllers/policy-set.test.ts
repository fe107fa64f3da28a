// The policy-set publisher as a pure reconcile over caches: it writes a set only when the live one is
// missing, not the operator's, rolled back or naming other bundles; an unchanged namespace costs no write.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { ApiException, type CoreV1Api, type ObjectCache, type V1ConfigMap } from '@kubernetes/client-node';
import {
  POLICY_SET_KEY,
  signPolicySet,
  statementSigner,
  verifyPolicySet,
  type AccessPolicy,
  type PolicySetEntry,
} from '@chaperone/api';
import type { EventRecorder } from '../controller-runtime/event-recorder.ts';
import { silentLogger } from '../observability/logger.ts';
import { PolicySetPublisher } from './policy-set.ts';

const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
const signer = statementSigner({ ...jwk, kid: 'op' });
const publicKeys = [{ kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '', kid: 'op' }];

function cache<T>(items: () => T[], name: (t: T) => string): ObjectCache<T> {
  return { get: (n: string) => items().find((i) => name(i) === n), list: () => items() };
}

function harness(policies: AccessPolicy[]) {
  let live: V1ConfigMap | undefined;
  const writes: V1ConfigMap[] = [];
  const events: string[] = [];
  const core = {
    readNamespacedConfigMap: () =>
      live === undefined ? Promise.reject(new ApiException(404, 'not found', undefined, {})) : Promise.resolve(live),
    patchNamespacedConfigMap: (req: { body: V1ConfigMap }) => {
      live = structuredClone(req.body);
      writes.push(live);
      return Promise.resolve(live);
    },
  } as unknown as CoreV1Api;
  const recorder: EventRecorder = {
    record: (_t, _type, reason) => {
      events.push(reason);
      return Promise.resolve();
    },
  };
  const publisher = new PolicySetPublisher({
    core,
    policies: cache(
      () => policies,
      (p) => p.metadata.name ?? '',
    ),
    configMaps: cache(
      () => (live === undefined ? [] : [live]),
      () => 'chaperone-policies',
    ),
    signer,
    publicKeys,
    events: recorder,
    fieldManager: 'test',
    labels: {},
    published: (p): Promise<PolicySetEntry | undefined> =>
      Promise.resolve({
        name: p.metadata.name ?? '',
        configMap: `chaperone-policy-${p.metadata.name ?? ''}`,
        digest: p.status?.bundle?.digest ?? '',
      }),
    now: () => Date.parse('2026-05-01T10:00:00Z'),
  });
  const context = { logger: silentLogger, signal: new AbortController().signal, id: 'r' } as never;
  return {
    reconcile: () => publisher.reconcile('ci', context),
    writes,
    events,
    setLive: (cm: V1ConfigMap) => {
      live = cm;
    },
    live: () => live,
  };
}

const policy = (name: string, digest: string): AccessPolicy => ({
  apiVersion: 'chaperone.dev/v1alpha1',
  kind: 'AccessPolicy',
  metadata: { name, namespace: 'ci' },
  spec: {} as never,
  status: {
    bundle: { digest, configMapName: `chaperone-policy-${name}`, sizeBytes: 1, compiledTime: '2026-05-01T09:00:00Z' },
  },
});

test('publishes once, then an unchanged namespace costs no write', async () => {
  const h = harness([policy('reads', 'sha256:1'), policy('audit', 'sha256:2')]);
  await h.reconcile();
  await h.reconcile();
  await h.reconcile();
  assert.equal(h.writes.length, 1);
  const set = verifyPolicySet(h.live()?.data?.[POLICY_SET_KEY] ?? '', publicKeys);
  assert.deepEqual(
    set.policies.map((p) => p.name),
    ['audit', 'reads'],
  );
  assert.deepEqual(h.events, []);
});

test('a set someone else wrote, or an older one of ours, is restored with a Warning Event and a later issuedAt', async () => {
  const h = harness([policy('reads', 'sha256:1')]);
  await h.reconcile();
  const first = verifyPolicySet(h.live()?.data?.[POLICY_SET_KEY] ?? '', publicKeys);
  h.setLive({ metadata: { name: 'chaperone-policies' }, data: { [POLICY_SET_KEY]: 'not.a.set' } });
  await h.reconcile();
  assert.deepEqual(h.events, ['PolicySetRestored']);
  const restored = verifyPolicySet(h.live()?.data?.[POLICY_SET_KEY] ?? '', publicKeys);
  assert.ok(Date.parse(restored.issuedAt) > Date.parse(first.issuedAt), 'issuedAt only moves forward');
  // An older set of ours replayed: same policies, but older than what we wrote last.
  h.setLive({
    metadata: { name: 'chaperone-policies' },
    data: {
      [POLICY_SET_KEY]: signPolicySet({ namespace: 'ci', issuedAt: first.issuedAt, policies: first.policies }, signer),
    },
  });
  await h.reconcile();
  assert.deepEqual(h.events, ['PolicySetRestored', 'PolicySetRestored']);
  assert.equal(h.writes.length, 3);
});
