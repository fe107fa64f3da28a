// The verifier's choice of key and time, with an injected clock and an injected JWKS download: which key a
// token without `kid` is checked with when the issuer publishes several, keys of another use or algorithm,
// header parameters that change what the payload is, the refetch intervals of a jwksUrl issuer (10 s between
// refetches for unknown kids, 1 s after a failed fetch, whatever the outcome), and the clock-skew edges of
// `nbf` and `exp` (clockToleranceSeconds ± 1 s). No timing: every instant is set by the test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSign, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, type JSONWebKeySet } from 'jose';
import { AuthenticationFailed, JWKS_FAILED_FETCH_RETRY_MS, JWKS_REFRESH_MS, TokenVerifier } from './token-verifier.ts';

const dir = mkdtempSync(join(tmpdir(), 'chaperone-token-keys-test-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

const ISSUER = 'https://keys.test.chaperone.dev';
const TOLERANCE_S = 5;
const b64 = (text: string) => Buffer.from(text).toString('base64url');
const rsa = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
const keys = { sigA: rsa(), sigB: rsa(), enc: rsa(), psOnly: rsa(), encryptOps: rsa() };

/** RS256 over header and claims exactly as given. */
function signed(header: Record<string, unknown>, claims: Record<string, unknown>, key: KeyObject): string {
  const input = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(claims))}`;
  return `${input}.${createSign('RSA-SHA256').update(input).sign(key).toString('base64url')}`;
}

async function refused(verifier: TokenVerifier, token: string, reason: string, what: string): Promise<void> {
  await assert.rejects(
    verifier.verify(token),
    (err: unknown) => err instanceof AuthenticationFailed && err.reason === reason,
    what,
  );
}

const jwk = async (key: KeyObject, extra: Record<string, unknown>) => ({ ...(await exportJWK(key)), ...extra });

test('a token without kid while the issuer publishes several keys: only a key of its alg and use, and only one', async () => {
  const nowMs = Date.now();
  const claims = (sub: string) => ({ sub, iss: ISSUER, aud: 'chaperone', exp: Math.floor(nowMs / 1000) + 600 });
  const verifierOf = (published: Record<string, unknown>[]) => {
    const jwksFile = join(dir, `jwks-${Math.random()}.json`);
    writeFileSync(jwksFile, JSON.stringify({ keys: published }));
    return new TokenVerifier({
      issuers: [{ issuer: ISSUER, jwksFile, audiences: ['chaperone'], algorithms: ['RS256', 'PS256'] }],
      clockToleranceSeconds: TOLERANCE_S,
      now: () => nowMs,
    });
  };
  const sigA = await jwk(keys.sigA.publicKey, { kid: 'sig-a', alg: 'RS256', use: 'sig' });
  const sigB = await jwk(keys.sigB.publicKey, { kid: 'sig-b', alg: 'RS256', use: 'sig' });
  const enc = await jwk(keys.enc.publicKey, { kid: 'enc-1', alg: 'RSA-OAEP-256', use: 'enc' });
  const psOnly = await jwk(keys.psOnly.publicKey, { kid: 'ps-only', alg: 'PS256', use: 'sig' });
  const encryptOps = await jwk(keys.encryptOps.publicKey, { kid: 'ops', key_ops: ['encrypt'] });

  // Two signing keys (a rotation) and a kid-less token: no key is guessed, whichever signed it.
  const rotation = verifierOf([sigA, sigB, enc, psOnly, encryptOps]);
  for (const [name, key] of [
    ['sig-a', keys.sigA.privateKey],
    ['sig-b', keys.sigB.privateKey],
  ] as const) {
    await refused(
      rotation,
      signed({ alg: 'RS256' }, claims('agent:x'), key),
      'unknown-key',
      `no kid, signed by ${name}`,
    );
  }
  assert.equal(
    (await rotation.verify(signed({ alg: 'RS256', kid: 'sig-b' }, claims('agent:b'), keys.sigB.privateKey))).subject,
    'agent:b',
  );
  // Keys of another use, another algorithm or without the verify operation never verify, named or not.
  for (const [what, header, key] of [
    ['the encryption key by kid', { alg: 'RS256', kid: 'enc-1' }, keys.enc.privateKey],
    ['the PS256 key used for RS256', { alg: 'RS256', kid: 'ps-only' }, keys.psOnly.privateKey],
    ['a key whose key_ops lack verify', { alg: 'RS256', kid: 'ops' }, keys.encryptOps.privateKey],
  ] as const) {
    await refused(rotation, signed(header, claims('agent:x'), key), 'unknown-key', what);
  }

  // One signing key beside keys of other uses and algorithms: a kid-less token is checked with that one alone.
  const single = verifierOf([sigA, enc, psOnly, encryptOps]);
  assert.equal(
    (await single.verify(signed({ alg: 'RS256' }, claims('agent:a'), keys.sigA.privateKey))).subject,
    'agent:a',
  );
  for (const [what, key] of [
    ['the encryption key', keys.enc.privateKey],
    ['the PS256-only key', keys.psOnly.privateKey],
    ['the encrypt-only key', keys.encryptOps.privateKey],
  ] as const) {
    await refused(single, signed({ alg: 'RS256' }, claims('agent:x'), key), 'signature', `no kid, signed by ${what}`);
  }
});

test('header parameters that make the payload something else are refused, signed by the issuer or not', async () => {
  const nowMs = Date.now();
  const jwksFile = join(dir, `jwks-headers-${Math.random()}.json`);
  writeFileSync(
    jwksFile,
    JSON.stringify({ keys: [await jwk(keys.sigA.publicKey, { kid: 'sig-a', alg: 'RS256', use: 'sig' })] }),
  );
  const verifier = new TokenVerifier({
    issuers: [{ issuer: ISSUER, jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] }],
    clockToleranceSeconds: TOLERANCE_S,
    now: () => nowMs,
  });
  const claims = { sub: 'agent:x', iss: ISSUER, aud: 'chaperone', exp: Math.floor(nowMs / 1000) + 600 };
  const header = { alg: 'RS256', kid: 'sig-a' };
  assert.equal(
    (await verifier.verify(signed({ ...header, typ: 'JWT', x5t: 'ignored' }, claims, keys.sigA.privateKey))).subject,
    'agent:x',
  );
  for (const extra of [
    { cty: 'JWT' },
    { cty: 'jwt' },
    { cty: 'application/json' },
    { cty: '' },
    { b64: false },
    { b64: true },
    { zip: 'DEF' },
    { crit: ['b64'], b64: true },
  ]) {
    await refused(
      verifier,
      signed({ ...header, ...extra }, claims, keys.sigA.privateKey),
      'malformed',
      JSON.stringify(extra),
    );
  }
});

test('a jwksUrl issuer refetches for unknown kids at most every 10 s and after a failure not for 1 s, with an injected clock', async () => {
  let nowMs = 1_800_000_000_000;
  let served: JSONWebKeySet = { keys: [await jwk(keys.sigA.publicKey, { kid: 'sig-a', alg: 'RS256', use: 'sig' })] };
  let failing = false;
  const fetched: number[] = [];
  const verifier = new TokenVerifier({
    issuers: [
      { issuer: ISSUER, jwksUrl: 'https://keys.invalid/jwks', audiences: ['chaperone'], algorithms: ['RS256'] },
    ],
    clockToleranceSeconds: TOLERANCE_S,
    now: () => nowMs,
    fetchJwks: (url) => {
      assert.equal(url, 'https://keys.invalid/jwks');
      fetched.push(nowMs);
      return failing ? Promise.reject(new Error('issuer down')) : Promise.resolve(structuredClone(served));
    },
  });
  const start = nowMs;
  const at = (ms: number) => {
    nowMs = start + ms;
  };
  const token = (kid: string, key: KeyObject, sub = `agent:${kid}`) =>
    signed({ alg: 'RS256', kid }, { sub, iss: ISSUER, aud: 'chaperone', exp: Math.floor(nowMs / 1000) + 3600 }, key);

  // The first token fetches; concurrent ones wait for that one fetch.
  await Promise.all(
    [0, 1, 2, 3].map(async (i) => verifier.verify(token('sig-a', keys.sigA.privateKey, `agent:${String(i)}`))),
  );
  assert.equal(fetched.length, 1);
  // Unknown kids: the fetch just made counts, so no refetch before 10 s since it started.
  for (const ms of [1, JWKS_REFRESH_MS / 2, JWKS_REFRESH_MS - 1]) {
    at(ms);
    await refused(verifier, token('sig-b', keys.sigB.privateKey), 'unknown-key', `unknown kid at ${String(ms)} ms`);
  }
  assert.equal(fetched.length, 1, 'no refetch within 10 s');
  // The issuer rotates: at 10 s exactly one refetch, which finds the new key.
  served = { keys: [...served.keys, await jwk(keys.sigB.publicKey, { kid: 'sig-b', alg: 'RS256', use: 'sig' })] };
  at(JWKS_REFRESH_MS);
  assert.equal((await verifier.verify(token('sig-b', keys.sigB.privateKey))).subject, 'agent:sig-b');
  assert.equal(fetched.length, 2);
  // A refetch that fails counts too: no other one for 10 s, the cached keys still serve known kids.
  failing = true;
  at(2 * JWKS_REFRESH_MS);
  await refused(verifier, token('sig-c', keys.psOnly.privateKey), 'jwks-unavailable', 'a refetch that failed');
  assert.equal(fetched.length, 3);
  at(3 * JWKS_REFRESH_MS - 1);
  await refused(
    verifier,
    token('sig-c', keys.psOnly.privateKey),
    'unknown-key',
    'unknown kid 10 s − 1 ms after a failed refetch',
  );
  assert.equal((await verifier.verify(token('sig-a', keys.sigA.privateKey, 'agent:cached'))).subject, 'agent:cached');
  assert.equal(fetched.length, 3);
  // The cache expires (5 min) while the issuer is down: one fetch, then none for 1 s, refused meanwhile.
  const expired = 2 * JWKS_REFRESH_MS + 300_001;
  at(expired);
  await refused(
    verifier,
    token('sig-a', keys.sigA.privateKey, 'agent:late'),
    'jwks-unavailable',
    'cache expired, issuer down',
  );
  assert.equal(fetched.length, 4);
  for (const ms of [1, JWKS_FAILED_FETCH_RETRY_MS - 1]) {
    at(expired + ms);
    await refused(
      verifier,
      token('sig-a', keys.sigA.privateKey, 'agent:late'),
      'jwks-unavailable',
      `${String(ms)} ms after the failure`,
    );
  }
  assert.equal(fetched.length, 4, 'no fetch within 1 s of a failed one');
  at(expired + JWKS_FAILED_FETCH_RETRY_MS);
  await refused(verifier, token('sig-a', keys.sigA.privateKey, 'agent:late'), 'jwks-unavailable', 'still down at 1 s');
  assert.equal(fetched.length, 5);
  // Back up: the next fetch 1 s later succeeds and the token is accepted.
  failing = false;
  at(expired + 2 * JWKS_FAILED_FETCH_RETRY_MS);
  assert.equal((await verifier.verify(token('sig-a', keys.sigA.privateKey, 'agent:back'))).subject, 'agent:back');
  assert.equal(fetched.length, 6);
  // A clock that went back counts as due: an unknown kid refetches at once rather than in 10 s + the jump.
  at(expired);
  await refused(
    verifier,
    token('sig-c', keys.psOnly.privateKey),
    'unknown-key',
    'unknown kid after the clock went back',
  );
  assert.equal(fetched.length, 7);
});

test('clock skew: nbf and exp at clockToleranceSeconds ± 1 s, first use and reuse', async () => {
  const nowS = 1_800_000_000;
  let nowMs = nowS * 1000;
  const jwksFile = join(dir, `jwks-skew-${Math.random()}.json`);
  writeFileSync(
    jwksFile,
    JSON.stringify({ keys: [await jwk(keys.sigA.publicKey, { kid: 'sig-a', alg: 'RS256', use: 'sig' })] }),
  );
  const verifier = new TokenVerifier({
    issuers: [{ issuer: ISSUER, jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] }],
    clockToleranceSeconds: TOLERANCE_S,
    now: () => nowMs,
  });
  const token = (sub: string, times: Record<string, number>) =>
    signed(
      { alg: 'RS256', kid: 'sig-a' },
      { sub, iss: ISSUER, aud: 'chaperone', exp: nowS + 600, ...times },
      keys.sigA.privateKey,
    );
  await refused(
    verifier,
    token('agent:early', { nbf: nowS + TOLERANCE_S + 1 }),
    'not-yet-valid',
    'nbf tolerance + 1 s ahead',
  );
  assert.equal((await verifier.verify(token('agent:edge', { nbf: nowS + TOLERANCE_S }))).subject, 'agent:edge');
  assert.equal((await verifier.verify(token('agent:skewed', { nbf: nowS + TOLERANCE_S - 1 }))).subject, 'agent:skewed');
  await refused(verifier, token('agent:late', { exp: nowS - TOLERANCE_S }), 'expired', 'exp tolerance ago');
  await refused(verifier, token('agent:later', { exp: nowS - TOLERANCE_S - 1 }), 'expired', 'exp tolerance + 1 s ago');
  assert.equal((await verifier.verify(token('agent:grace', { exp: nowS - TOLERANCE_S + 1 }))).subject, 'agent:grace');
  // A token verified once is reused while unexpired, then refused at exp + tolerance, as on first use.
  const reused = token('agent:reused', { exp: nowS + 10 });
  assert.equal((await verifier.verify(reused)).subject, 'agent:reused');
  nowMs = (nowS + 10 + TOLERANCE_S - 1) * 1000;
  assert.equal((await verifier.verify(reused)).subject, 'agent:reused');
  assert.equal(verifier.reusedVerifications, 1);
  nowMs = (nowS + 10 + TOLERANCE_S) * 1000;
  await refused(verifier, reused, 'expired', 'a reused verification at exp + tolerance');
});
