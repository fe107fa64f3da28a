import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, verify } from 'node:crypto';
import { calculateJwkThumbprint, compactVerify, importJWK, type JWK } from 'jose';
import { signSignerCertificate, SIGNER_CERTIFICATE_TYPE } from './audit-signature.ts';
import {
  podSealDigest,
  signPodSeal,
  signPolicySet,
  statementSigner,
  verifyPodSeal,
  verifyPolicySet,
} from './operator-statements.ts';

async function keyPair(): Promise<{ privateJwk: JWK & { kid: string }; publicJwk: JWK & { kid: string } }> {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '' });
  return { privateJwk: { ...jwk, kid }, publicJwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '', kid } };
}

const parts = {
  container: { name: 'chaperone-sidecar', image: 'registry/sidecar@sha256:1' },
  volumes: [{ name: 'chaperone-audit', emptyDir: {} }],
  annotations: { 'chaperone.dev/sidecar-config': 'pod: {}\n' },
};

test('a pod seal signed synchronously is a standard EdDSA JWS that jose verifies', async () => {
  const { privateJwk, publicJwk } = await keyPair();
  const jws = signPodSeal({ namespace: 'ci', digest: podSealDigest(parts) }, statementSigner(privateJwk));
  const { protectedHeader, payload } = await compactVerify(jws, await importJWK(publicJwk, 'EdDSA'));
  assert.deepEqual(protectedHeader, { alg: 'EdDSA', kid: publicJwk.kid, typ: 'chaperone-seal+jws' });
  // The payload is the JCS text: keys sorted, no whitespace.
  assert.equal(
    new TextDecoder().decode(payload),
    `{"digest":"${podSealDigest(parts)}","namespace":"ci","typ":"chaperone.dev/pod-seal/v1"}`,
  );
  const seal = verifyPodSeal(jws, [publicJwk]);
  assert.equal(seal.namespace, 'ci');
  // Deterministic (Ed25519 and JCS): re-injecting the same pod yields the same annotation.
  assert.equal(signPodSeal({ namespace: 'ci', digest: podSealDigest(parts) }, statementSigner(privateJwk)), jws);
  const [header, body, signature] = jws.split('.') as [string, string, string];
  assert.ok(
    verify(
      null,
      Buffer.from(`${header}.${body}`),
      { key: publicJwk as never, format: 'jwk' },
      Buffer.from(signature, 'base64url'),
    ),
  );
});

test('the seal digest changes with every sealed field and not with key order', () => {
  const base = podSealDigest(parts);
  assert.notEqual(podSealDigest({ ...parts, container: { ...parts.container, image: 'attacker/image:1' } }), base);
  assert.notEqual(podSealDigest({ ...parts, volumes: [{ name: 'chaperone-audit', hostPath: { path: '/' } }] }), base);
  assert.notEqual(podSealDigest({ ...parts, annotations: { 'chaperone.dev/sidecar-config': 'pod: {x: 1}\n' } }), base);
  assert.equal(
    podSealDigest({ annotations: parts.annotations, volumes: parts.volumes, container: parts.container }),
    base,
  );
});

test('a seal does not verify under another key, altered, or as another kind of statement', async () => {
  const operator = await keyPair();
  const attacker = await keyPair();
  const forged = signPodSeal({ namespace: 'ci', digest: podSealDigest(parts) }, statementSigner(attacker.privateJwk));
  assert.throws(() => verifyPodSeal(forged, [operator.publicJwk]), /unknown authority key/);
  // The attacker names the operator's kid: the signature still fails.
  const renamed = signPodSeal(
    { namespace: 'ci', digest: podSealDigest(parts) },
    { ...statementSigner(attacker.privateJwk), keyId: operator.publicJwk.kid },
  );
  assert.throws(() => verifyPodSeal(renamed, [operator.publicJwk]), /signature verification failed/);
  const genuine = signPodSeal({ namespace: 'ci', digest: podSealDigest(parts) }, statementSigner(operator.privateJwk));
  const [h, , s] = genuine.split('.') as [string, string, string];
  const otherNamespace = Buffer.from('{"digest":"x","namespace":"prod","typ":"chaperone.dev/pod-seal/v1"}').toString(
    'base64url',
  );
  assert.throws(
    () => verifyPodSeal(`${h}.${otherNamespace}.${s}`, [operator.publicJwk]),
    /signature verification failed/,
  );
  // A signer certificate of the same authority is no seal, and a seal no policy set.
  const certificate = await signSignerCertificate(
    {
      typ: SIGNER_CERTIFICATE_TYPE,
      keyId: 'k',
      x: 'x',
      pod: { namespace: 'ci', name: 'p', uid: 'u' },
      serviceAccount: 's',
      issuedAt: '2026-01-01T00:00:00.000Z',
    },
    operator.privateJwk,
  );
  assert.throws(() => verifyPodSeal(certificate, [operator.publicJwk]), /not a pod seal/);
  assert.throws(() => verifyPolicySet(genuine, [operator.publicJwk]), /not a policy set/);
  // alg none, or a header naming another algorithm, is refused before any key is looked at.
  const none = `${Buffer.from('{"alg":"none","kid":"k"}').toString('base64url')}.${genuine.split('.')[1] ?? ''}.`;
  assert.throws(() => verifyPodSeal(none, [operator.publicJwk]), /unexpected algorithm none/);
});

test('a policy set round-trips and is refused when malformed', async () => {
  const { privateJwk, publicJwk } = await keyPair();
  const signer = statementSigner(privateJwk);
  const set = {
    namespace: 'ci',
    issuedAt: '2026-01-01T00:00:00.000Z',
    policies: [{ name: 'reads', configMap: 'chaperone-policy-reads', digest: 'sha256:ab' }],
  };
  const verified = verifyPolicySet(signPolicySet(set, signer), [publicJwk]);
  assert.deepEqual(verified, { ...set, typ: 'chaperone.dev/policy-set/v1' });
  const malformed = signPolicySet({ ...set, policies: [{ name: 'reads' }] as never }, signer);
  assert.throws(() => verifyPolicySet(malformed, [publicJwk]), /not a policy set/);
});
