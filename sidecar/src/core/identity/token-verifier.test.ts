import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthenticationFailed, TokenVerifier, tokenHash } from './token-verifier.ts';
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
