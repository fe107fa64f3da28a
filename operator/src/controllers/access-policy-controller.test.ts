// The pure parts of the AccessPolicy controller; the reconcile loop itself is tested against the real
// API server in e2e/operator/access-policy-controller.test.ts.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicy, AccessPolicyStatus } from '@chaperone/api';
import {
  bundleConfigMap,
  bundleSize,
  compileFailureMessage,
  statusEqual,
  statusErrors,
} from './access-policy-controller.ts';
import { policyConfigMapName } from '../policy/bundle-configmap-name.ts';

const policy: AccessPolicy = {
  apiVersion: 'chaperone.dev/v1alpha1',
  kind: 'AccessPolicy',
  metadata: { name: 'orders', namespace: 'shop', uid: 'uid-1', generation: 3 },
  spec: { resources: { names: ['db'] }, rules: [], defaultDecision: 'deny' },
};

describe('AccessPolicy controller helpers', () => {
  it('names the ConfigMap chaperone-policy-<name>, hashing names that would be too long', () => {
    assert.equal(policyConfigMapName('orders'), 'chaperone-policy-orders');
    const long = 'a'.repeat(250);
    const name = policyConfigMapName(long);
    assert.ok(name.length <= 253);
    assert.match(name, /^chaperone-policy-a+-[0-9a-f]{10}$/);
    assert.notEqual(policyConfigMapName(long), policyConfigMapName(`${'a'.repeat(249)}b`));
  });

  it('builds the bundle ConfigMap with binaryData, manifest.json and a controller ownerReference', () => {
    const wasm = Buffer.from([0, 97, 115, 109, 1, 0, 0, 0]);
    const manifest = { timeZones: [], policy: 'shop/orders', entrypoint: 'chaperone/policy/result', rawRego: false };
    const cm = bundleConfigMap(policy, { wasm, digest: 'sha256:ab', manifest });
    const meta = cm.metadata;
    assert.ok(meta !== undefined);
    assert.equal(meta.name, 'chaperone-policy-orders');
    assert.equal(meta.namespace, 'shop');
    assert.deepEqual(meta.ownerReferences, [
      {
        apiVersion: 'chaperone.dev/v1alpha1',
        kind: 'AccessPolicy',
        name: 'orders',
        uid: 'uid-1',
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    assert.equal(meta.annotations?.['chaperone.dev/bundle-digest'], 'sha256:ab');
    assert.equal(meta.labels?.['chaperone.dev/policy'], 'orders');
    assert.deepEqual(Buffer.from(cm.binaryData?.['policy.wasm'] ?? '', 'base64'), wasm);
    assert.deepEqual(JSON.parse(cm.data?.['manifest.json'] ?? ''), { manifest, digest: 'sha256:ab' });
    assert.equal(bundleSize(cm), wasm.length + Buffer.byteLength(cm.data?.['manifest.json'] ?? ''));
  });

  it('puts the first error with line and column, the count of others and the fallback into the message', () => {
    const errors = [
      { message: 'unexpected } token', line: 6, column: 1, code: 'rego_parse_error' },
      { message: 'var x is unsafe', line: 9, code: 'rego_unsafe_var_error' },
    ];
    assert.equal(
      compileFailureMessage(errors, 'sha256:1'),
      'line 6, column 1: rego_parse_error: unexpected } token (and 1 more; see status.errors); ' +
        'sidecars keep the last good bundle sha256:1',
    );
    assert.equal(
      compileFailureMessage([{ message: 'duplicate rule name r' }], undefined),
      'duplicate rule name r; no bundle is published for this policy',
    );
  });

  it('bounds status.errors as the CRD schema does', () => {
    const many = Array.from({ length: 40 }, (_, i) => ({ message: 'x'.repeat(5000), line: i + 1 }));
    const out = statusErrors(many);
    assert.equal(out.length, 32);
    const [first] = out;
    assert.ok(first !== undefined);
    assert.equal(first.message.length, 4096);
    assert.equal(first.line, 1);
  });

  it('compares statuses including timestamps, so an unchanged policy needs no write', () => {
    const status: AccessPolicyStatus = {
      observedGeneration: 3,
      bundle: { digest: 'sha256:1', configMapName: 'c', sizeBytes: 10, compiledTime: '2026-01-01T00:00:00Z' },
      conditions: [
        {
          type: 'Ready',
          status: 'True',
          reason: 'Compiled',
          message: 'm',
          observedGeneration: 3,
          lastTransitionTime: '2026-01-01T00:00:00Z',
        },
      ],
    };
    assert.equal(statusEqual(status, structuredClone(status)), true);
    assert.equal(statusEqual(status, { ...status, observedGeneration: 4 }), false);
    assert.equal(statusEqual(undefined, status), false);
    assert.equal(statusEqual(status, { ...status, errors: [{ message: 'e' }] }), false);
    assert.equal(statusEqual({ ...status, errors: [] }, status), true, 'no errors and [] are the same');
  });
});
