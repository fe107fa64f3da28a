// Agent identity rests on this: the control plane issues an audience-bound service-account token
// (TokenRequest), serves its JWKS, and jose verifies the token for audience `chaperone` only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request, type RequestOptions } from 'node:https';
import * as k8s from '@kubernetes/client-node';
import { createLocalJWKSet, jwtVerify, decodeProtectedHeader, errors } from 'jose';
import { createTestNamespace, kubeConfig } from './harness/kube.ts';
import { controlPlaneEnv } from './harness/env.ts';

async function fetchJwks(kc: k8s.KubeConfig): Promise<unknown> {
  // The admin client certificate authenticates; the JWKS endpoint is also open to service accounts.
  const opts: RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  const url = new URL('/openid/v1/jwks', controlPlaneEnv().server);
  return new Promise((resolve, reject) => {
    const req = request(url, opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`jwks: HTTP ${String(res.statusCode)}`));
        else resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      });
    });
    req.on('error', reject);
    req.end();
  });
}

test('TokenRequest with audience chaperone verifies with jose against the served JWKS; another audience fails', async (t) => {
  const ns = await createTestNamespace(t);
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'agent' } } });
  const request = (audience: string) =>
    core.createNamespacedServiceAccountToken({
      namespace: ns,
      name: 'agent',
      body: { spec: { audiences: [audience], expirationSeconds: 600 } },
    });
  const token = (await request('chaperone')).status?.token;
  assert.ok(token);

  const jwks = (await fetchJwks(kc)) as { keys: { kid?: string }[] };
  assert.ok(jwks.keys.length > 0);
  const header = decodeProtectedHeader(token);
  assert.equal(header.alg, 'RS256');
  assert.ok(
    jwks.keys.some((k) => k.kid === header.kid),
    'token kid is in the JWKS',
  );

  const keySet = createLocalJWKSet(jwks);
  const { issuer } = controlPlaneEnv();
  const verified = await jwtVerify(token, keySet, { issuer, audience: 'chaperone', algorithms: ['RS256'] });
  assert.equal(verified.payload.sub, `system:serviceaccount:${ns}:agent`);

  const other = (await request('https://kubernetes.default.svc')).status?.token;
  assert.ok(other);
  await assert.rejects(
    jwtVerify(other, keySet, { issuer, audience: 'chaperone', algorithms: ['RS256'] }),
    (err) => err instanceof errors.JWTClaimValidationFailed && err.claim === 'aud',
  );
});
