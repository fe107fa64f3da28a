// Agents authenticate with their identity token as the password. Every token attack fails with 28P01
// and a clear message (and an auth.failure record); a real audience-bound service-account token from the
// control plane, verified through the API server's JWKS endpoint, succeeds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import * as k8s from '@kubernetes/client-node';
import { startTestSidecar, ALLOW_ALL } from '../harness/sidecar.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';

const connect = (port: number, password: string) => {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'agent', password, database: 'agent' });
  return client.connect().then(
    async () => {
      await client.end();
    },
    (err: unknown) => {
      void client.end().catch(() => undefined);
      throw err;
    },
  );
};

test('token attacks fail authentication with 28P01 and a clear message, and are audited', async (t) => {
  const sidecar = await startTestSidecar(t);
  const attacks = await sidecar.issuer.attacks('system:serviceaccount:ci:runner');
  const expected: Record<string, RegExp> = {
    expired: /identity token has expired/,
    'not yet valid': /identity token is not valid yet/,
    'wrong audience': /unacceptable aud claim/,
    'wrong issuer': /issuer is not trusted/,
    'alg none': /algorithm none is not allowed/,
    'HMAC signed with the public key': /algorithm HS256 is not allowed/,
    'tampered payload': /signature is invalid/,
    'unknown key id': /key id is not among the issuer keys/,
    'not a JWT': /not a JWT/,
  };
  for (const [name, token] of Object.entries(attacks)) {
    await assert.rejects(
      connect(sidecar.port, token),
      (err: Error & { code?: string; severity?: string }) => {
        assert.equal(err.code, '28P01', `${name}: ${err.message}`);
        assert.equal(err.severity, 'FATAL');
        assert.match(err.message, /^chaperone: authentication failed: /);
        assert.match(err.message, expected[name] ?? /never/, name);
        return true;
      },
      `${name} was accepted`,
    );
  }
  const failures = (await sidecar.settledRecords()).filter((r) => r.record.type === 'auth.failure');
  assert.equal(failures.length, Object.keys(attacks).length);
  for (const f of failures) assert.equal(f.record.outcome?.code, '28P01');
  // The good path still works.
  await connect(sidecar.port, await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:runner' }));
});

test('a TokenRequest token from the control plane authenticates through the API server JWKS', async (t) => {
  const ns = await createTestNamespace(t);
  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
  await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'agent' } } });
  const tokenFor = async (audiences: string[]) =>
    (
      await core.createNamespacedServiceAccountToken({
        namespace: ns,
        name: 'agent',
        body: { spec: { audiences, expirationSeconds: 600 } },
      })
    ).status?.token ?? '';
  const cp = controlPlaneEnv();
  // The sidecar fetches the JWKS with a token of its own (the discovery endpoint needs authentication).
  const sidecarCredential = await tokenFor([cp.issuer]);
  mkdirSync(testDir(t), { recursive: true });
  const bearerFile = join(testDir(t), 'jwks-bearer.token');
  writeFileSync(bearerFile, sidecarCredential);
  const sidecar = await startTestSidecar(t, {
    policies: { 'allow-all': ALLOW_ALL },
    extraIssuers: [
      {
        issuer: cp.issuer,
        jwksUrl: `${cp.server}/openid/v1/jwks`,
        serviceAccounts: true,
        jwksCaFile: cp.caFile,
        jwksBearerTokenFile: bearerFile,
        audiences: ['chaperone'],
        algorithms: ['RS256'],
      },
    ],
  });
  const agentToken = await tokenFor(['chaperone']);
  const client = new pg.Client({
    host: '127.0.0.1',
    port: sidecar.port,
    user: 'agent',
    password: agentToken,
    database: 'x',
  });
  await client.connect();
  const r = await client.query<{ one: number }>('select 1 as one');
  assert.equal(r.rows[0]?.one, 1);
  await client.end();
  const start = (await sidecar.settledRecords()).find((x) => x.record.type === 'session.start');
  assert.equal(start?.record.identity?.subject, `system:serviceaccount:${ns}:agent`);
  assert.equal(start.record.identity.issuer, cp.issuer);

  // The same service account's token for the API server audience is not an agent identity.
  await assert.rejects(
    connect(sidecar.port, sidecarCredential),
    (err: Error & { code?: string }) => err.code === '28P01',
  );
});
