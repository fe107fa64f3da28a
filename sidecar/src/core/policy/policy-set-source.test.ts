// What the sidecar accepts as its namespace's policies: only a set the operator signed, for this
// namespace, not older than the one in force, naming bundles whose bytes hash to the signed digests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import type { V1ConfigMap } from '@kubernetes/client-node';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_WASM_FILE,
  bundleDigest,
  signPolicySet,
  statementSigner,
  type BundleManifest,
  type PolicySet,
} from '@chaperone/api';
import { PolicySetRejected, verifiedBundles } from './policy-set-source.ts';

function key(kid: string) {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
  return { signer: statementSigner({ ...jwk, kid }), publicJwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '', kid } };
}
const operator = key('operator');

function bundle(policy: string, bytes: string): { cm: V1ConfigMap; digest: string } {
  const manifest: BundleManifest = { timeZones: [], policy, entrypoint: 'chaperone/result', rawRego: false };
  const wasm = Buffer.from(bytes);
  const digest = bundleDigest(wasm, manifest);
  return {
    digest,
    cm: {
      data: { [BUNDLE_MANIFEST_FILE]: JSON.stringify({ manifest, digest }) },
      binaryData: { [BUNDLE_WASM_FILE]: wasm.toString('base64') },
    },
  };
}

const reads = bundle('ci/reads', 'reads-v1');
const set = (overrides: Partial<Omit<PolicySet, 'typ'>> = {}, signer = operator.signer) =>
  signPolicySet(
    {
      namespace: 'ci',
      issuedAt: '2026-05-01T10:00:00.000Z',
      policies: [{ name: 'reads', configMap: 'chaperone-policy-reads', digest: reads.digest }],
      ...overrides,
    },
    signer,
  );

const verify = (jws: string, configMaps: Record<string, V1ConfigMap>, previous?: PolicySet) =>
  verifiedBundles(jws, {
    namespace: 'ci',
    trustedKeys: [operator.publicJwk],
    ...(previous === undefined ? {} : { previous }),
    cached: () => undefined,
    fetch: (name) => Promise.resolve(configMaps[name]),
  });

test('a set the operator signed for this namespace loads the bundles it names', async () => {
  const { set: verified, bundles } = await verify(set(), { 'chaperone-policy-reads': reads.cm });
  assert.equal(verified.issuedAt, '2026-05-01T10:00:00.000Z');
  assert.deepEqual(
    bundles.map((b) => [b.manifest.policy, b.digest]),
    [['ci/reads', reads.digest]],
  );
});

test('sets signed by anyone else, for another namespace, or older than the one in force are refused', async () => {
  const configMaps = { 'chaperone-policy-reads': reads.cm };
  const attacker = key('operator');
  await assert.rejects(
    verify(set({}, attacker.signer), configMaps),
    /not signed by the operator: signature verification failed/,
  );
  await assert.rejects(verify('{"policies":[]}', configMaps), PolicySetRejected);
  await assert.rejects(verify(set({ namespace: 'prod' }), configMaps), /signed for namespace prod, not ci/);
  const inForce = {
    typ: 'chaperone.dev/policy-set/v1' as const,
    namespace: 'ci',
    issuedAt: '2026-05-02T00:00:00.000Z',
    policies: [],
  };
  await assert.rejects(verify(set(), configMaps, inForce), /a rollback/);
});

test('a bundle whose bytes or manifest differ from what was signed is refused, and the whole set with it', async () => {
  const swapped = bundle('ci/reads', 'allow-everything');
  // The attacker's bytes with the signed digest written into the manifest: the bytes do not hash to it.
  const forged: V1ConfigMap = {
    data: {
      [BUNDLE_MANIFEST_FILE]: JSON.stringify({
        manifest: JSON.parse(swapped.cm.data?.[BUNDLE_MANIFEST_FILE] ?? '{}').manifest,
        digest: reads.digest,
      }),
    },
    binaryData: swapped.cm.binaryData ?? {},
  };
  await assert.rejects(
    verify(set(), { 'chaperone-policy-reads': forged }),
    /does not hold the bundle the operator signed/,
  );
  await assert.rejects(verify(set(), {}), /missing or empty/);
  const other = bundle('other/reads', 'reads-v1');
  await assert.rejects(
    verify(set({ policies: [{ name: 'reads', configMap: 'x', digest: other.digest }] }), { x: other.cm }),
    /holds policy other\/reads, not ci\/reads/,
  );
});
