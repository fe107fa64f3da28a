import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthenticationFailed, TokenVerifier, tokenHash } from './token-verifier.ts';
import { CLAIMS, jcs, resourceUri } from '@chaperone/api';
import { createTestIssuer } from '../../../../e2e/harness/tokens.ts';

const dir = mkdtempSync(join(tmpdir(), 'chaperone-token-test-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

async function setup() {
  const issuer = await createTestIssuer(join(dir, `jwks-${Math.random()}.json`));
  const verifier = new TokenVerifier({
    issuers: [{ issuer: issuer.issuer, jwksFile: issuer.jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] }],
    clockToleranceSeconds: 5,
  });
  return { issuer, verifier };
}

test('a valid token yields subject, issuer, groups, kind, delegation chain and a token hash', async () => {
  const { issuer, verifier } = await setup();
  const token = await issuer.sign({
    sub: 'chaperone:agent:report-writer',
    groups: ['ci'],
    'chaperone.dev/agent-kind': 'ai-agent',
    act: { sub: 'system:serviceaccount:ci:runner', 'chaperone.dev/agent-kind': 'ci', act: { sub: 'user:alice' } },
  });
  const identity = await verifier.verify(token);
  assert.equal(identity.subject, 'chaperone:agent:report-writer');
  assert.equal(identity.issuer, issuer.issuer);
  assert.deepEqual(identity.groups, ['ci']);
  assert.equal(identity.kind, 'ai-agent');
  assert.deepEqual(identity.chain, [
    { subject: 'system:serviceaccount:ci:runner', kind: 'ci' },
    { subject: 'user:alice' },
  ]);
  assert.equal(identity.tokenHash, tokenHash(token));
  assert.ok(!JSON.stringify(identity).includes(token), 'the identity never carries the token');
});

test('service-account subjects get the groups Kubernetes would add', async () => {
  const { issuer, verifier } = await setup();
  const identity = await verifier.verify(await issuer.sign({ sub: 'system:serviceaccount:ci:runner' }));
  assert.deepEqual(identity.groups, ['system:serviceaccounts', 'system:serviceaccounts:ci']);
});

test('every token attack is refused with its reason', async () => {
  const { issuer, verifier } = await setup();
  const expected: Record<string, string> = {
    expired: 'expired',
    'not yet valid': 'not-yet-valid',
    'wrong audience': 'audience',
    'wrong issuer': 'issuer',
    'alg none': 'algorithm',
    'HMAC signed with the public key': 'algorithm',
    'tampered payload': 'signature',
    'unknown key id': 'unknown-key',
    'not a JWT': 'malformed',
  };
  const attacks = await issuer.attacks('system:serviceaccount:ci:runner');
  assert.deepEqual(Object.keys(attacks).sort(), Object.keys(expected).sort());
  for (const [name, token] of Object.entries(attacks)) {
    await assert.rejects(verifier.verify(token), (err) => {
      assert.ok(err instanceof AuthenticationFailed, `${name}: ${String(err)}`);
      assert.equal(err.reason, expected[name], `${name}: ${err.message}`);
      assert.ok(!err.message.includes(token), 'messages never echo the token');
      return true;
    });
  }
});

test("tokens of Chaperone's exchange: the subject's original issuer, the exchange link, narrowing, strict chains", async () => {
  const issuer = await createTestIssuer(join(dir, `jwks-${Math.random()}.json`), 'https://exchange.test/identity/v1');
  const verifier = new TokenVerifier({
    issuers: [
      {
        issuer: issuer.issuer,
        jwksFile: issuer.jwksFile,
        audiences: ['chaperone'],
        algorithms: ['RS256'],
        tokenExchange: true,
      },
    ],
    clockToleranceSeconds: 5,
  });
  const ordersDb = resourceUri('shop', 'orders-db');
  const claims = {
    sub: 'system:serviceaccount:ci:runner',
    [CLAIMS.subjectIssuer]: 'https://kubernetes.default.svc',
    [CLAIMS.agentKind]: 'ci',
    act: {
      sub: 'script:etl',
      iss: 'https://agents.test',
      [CLAIMS.agentKind]: 'script',
      act: { sub: 'agent:writer', iss: 'https://agents.test', [CLAIMS.agentKind]: 'ai-agent' },
    },
    scope: 'db:read db:read',
    [CLAIMS.resources]: [ordersDb],
    [CLAIMS.exchange]: { id: 'jti-1', record: `sha256:${'a'.repeat(64)}` },
  };
  const token = await issuer.sign(claims);
  const identity = await verifier.forResource({ namespace: 'shop', name: 'orders-db' }).verify(token);
  assert.equal(identity.issuer, 'https://kubernetes.default.svc', 'the issuer that authenticated the subject');
  assert.equal(identity.kind, 'ci');
  assert.deepEqual(identity.chain, [
    { issuer: 'https://agents.test', kind: 'script', subject: 'script:etl' },
    { issuer: 'https://agents.test', kind: 'ai-agent', subject: 'agent:writer' },
  ]);
  assert.deepEqual(identity.exchange, { id: 'jti-1', record: `sha256:${'a'.repeat(64)}` });
  assert.deepEqual(identity.scopes, ['db:read']);
  assert.deepEqual(identity.resources, [ordersDb]);
  assert.equal(jcs(identity), JSON.stringify(identity), 'keys sorted: records carrying it canonicalise as they are');

  await assert.rejects(
    verifier.forResource({ namespace: 'shop', name: 'billing-db' }).verify(token),
    (err) => err instanceof AuthenticationFailed && err.reason === 'resource' && /billing-db/.test(err.message),
  );
  const unnarrowed = await issuer.sign({ ...claims, [CLAIMS.resources]: undefined });
  assert.equal(
    (await verifier.forResource({ namespace: 'shop', name: 'billing-db' }).verify(unnarrowed)).resources,
    undefined,
  );
  for (const [name, broken] of Object.entries({
    'an actor without iss': { ...claims, act: { sub: 'agent:writer' } },
    'no subject issuer': { ...claims, [CLAIMS.subjectIssuer]: undefined },
    'no exchange link': { ...claims, [CLAIMS.exchange]: undefined },
    'resources not a list': { ...claims, [CLAIMS.resources]: ordersDb },
  })) {
    await assert.rejects(verifier.verify(await issuer.sign(broken)), (err) => {
      assert.ok(err instanceof AuthenticationFailed, name);
      assert.equal(err.reason, 'malformed', name);
      return true;
    });
  }
});

test('another issuer cannot name the subject issuer: only the exchange is believed about it', async () => {
  const { issuer, verifier } = await setup();
  const identity = await verifier.verify(
    await issuer.sign({
      sub: 'system:serviceaccount:kube-system:admin',
      [CLAIMS.subjectIssuer]: 'https://kubernetes.default.svc',
    }),
  );
  assert.equal(identity.issuer, issuer.issuer);
  assert.equal(identity.exchange, undefined);
});

test('a verified token is reused only while it has not expired and its issuer still has the key it was signed with', async () => {
  const jwksFile = join(dir, `jwks-${Math.random()}.json`);
  const issuer = await createTestIssuer(jwksFile);
  let now = Date.now();
  const verifier = new TokenVerifier({
    issuers: [{ issuer: issuer.issuer, jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] }],
    clockToleranceSeconds: 5,
    now: () => now,
  });
  const token = await issuer.sign({ sub: 'agent:storm' }, { expiresIn: 30 });
  const first = await verifier.verify(token);
  const again = await verifier.verify(token);
  assert.equal(verifier.reusedVerifications, 1, 'the second connection reuses the verification');
  assert.deepEqual(again, first);
  assert.ok(Object.isFrozen(again) && Object.isFrozen(again.groups), 'a shared identity cannot be changed');
  // A tampered copy is a different token: verified in full, and refused.
  const [h, p, s] = token.split('.');
  const tampered = `${h ?? ''}.${Buffer.from(JSON.stringify({ sub: 'agent:admin' })).toString('base64url')}.${s ?? ''}`;
  assert.notEqual(tampered.split('.')[1], p);
  await assert.rejects(verifier.verify(tampered), (err) => err instanceof AuthenticationFailed);

  // Past exp (and the clock tolerance) the reuse ends and the full verification refuses it.
  now += 36_000;
  await assert.rejects(
    verifier.verify(token),
    (err) => err instanceof AuthenticationFailed && err.reason === 'expired',
  );

  // A rotated key set: a token verified with the old key is verified again, against the new keys.
  now = Date.now();
  const other = await issuer.sign({ sub: 'agent:rotated' });
  await verifier.verify(other);
  const reusedBefore = verifier.reusedVerifications;
  await createTestIssuer(jwksFile, issuer.issuer); // a new key pair (same kid) replaces the file
  await assert.rejects(
    verifier.verify(other),
    (err) => err instanceof AuthenticationFailed && err.reason === 'signature',
  );
  assert.equal(verifier.reusedVerifications, reusedBefore);
});
