import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthenticationFailed, JWKS_FILE_CHECK_MS, TokenVerifier, tokenHash } from './token-verifier.ts';
import type { TrustedIssuerConfig } from '../../config.ts';
import { CLAIMS, jcs, resourceUri } from '@chaperone/api';
import { createTestIssuer } from '../../../../e2e/harness/tokens.ts';

const dir = mkdtempSync(join(tmpdir(), 'chaperone-token-test-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** A verifier trusting one test issuer; `marks` say what it may assert (tokenExchange, serviceAccounts, agentKind). */
async function setup(marks: Pick<TrustedIssuerConfig, 'tokenExchange' | 'serviceAccounts' | 'agentKind'> = {}) {
  const issuer = await createTestIssuer(join(dir, `jwks-${Math.random()}.json`));
  const verifier = new TokenVerifier({
    issuers: [
      { issuer: issuer.issuer, jwksFile: issuer.jwksFile, audiences: ['chaperone'], algorithms: ['RS256'], ...marks },
    ],
    clockToleranceSeconds: 5,
  });
  return { issuer, verifier };
}

/** What every token of the exchange carries besides its chain. */
const EXCHANGE_CLAIMS = {
  [CLAIMS.subjectIssuer]: 'https://kubernetes.default.svc',
  [CLAIMS.exchange]: { id: 'jti-1', record: `sha256:${'a'.repeat(64)}` },
};

test('a valid token yields subject, issuer, groups, kind, an empty chain and a token hash', async () => {
  const { issuer, verifier } = await setup({ agentKind: true });
  const token = await issuer.sign({
    sub: 'chaperone:agent:report-writer',
    groups: ['ci'],
    'chaperone.dev/agent-kind': 'ai-agent',
  });
  const identity = await verifier.verify(token);
  assert.equal(identity.subject, 'chaperone:agent:report-writer');
  assert.equal(identity.issuer, issuer.issuer);
  assert.deepEqual(identity.groups, ['ci']);
  assert.equal(identity.kind, 'ai-agent');
  assert.deepEqual(identity.chain, []);
  assert.equal(identity.tokenHash, tokenHash(token));
  assert.ok(!JSON.stringify(identity).includes(token), 'the identity never carries the token');
});

test("service-account subjects of the cluster's issuer get the groups Kubernetes would add", async () => {
  const { issuer, verifier } = await setup({ serviceAccounts: true });
  const identity = await verifier.verify(await issuer.sign({ sub: 'system:serviceaccount:ci:runner' }));
  assert.deepEqual(identity.groups, ['system:serviceaccounts', 'system:serviceaccounts:ci']);
});

test('only the exchange asserts chains, only the cluster issuer system: subjects, and no token a system: group', async () => {
  const plain = await setup();
  const cluster = await setup({ serviceAccounts: true });
  const exchange = await setup({ tokenExchange: true });
  const chain = { act: { sub: 'agent:parent', iss: 'https://agents.test' } };
  for (const [name, { issuer, verifier }, claims] of [
    ['a chain from a directly trusted issuer', plain, { sub: 'user:bob', ...chain }],
    ["a chain from the cluster's issuer", cluster, { sub: 'system:serviceaccount:ci:runner', ...chain }],
    ['a service account named by another issuer', plain, { sub: 'system:serviceaccount:ci:runner' }],
    ['a node named by another issuer', plain, { sub: 'system:node:worker-1' }],
    ['system:masters claimed as a group', plain, { sub: 'user:bob', groups: ['system:masters'] }],
    ['a service-account group claimed', plain, { sub: 'user:bob', groups: ['system:serviceaccounts:ci'] }],
    ["a system: group claimed by the cluster's issuer", cluster, { sub: 'user:bob', groups: ['system:masters'] }],
  ] as const) {
    await refused(verifier, await issuer.sign(claims), 'untrusted-claim', name);
  }
  const exchanged = await exchange.verifier.verify(
    await exchange.issuer.sign({ sub: 'system:serviceaccount:ci:runner', ...chain, ...EXCHANGE_CLAIMS }),
  );
  assert.deepEqual(exchanged.chain, [{ issuer: 'https://agents.test', subject: 'agent:parent' }]);
  assert.deepEqual(exchanged.groups, ['system:serviceaccounts', 'system:serviceaccounts:ci']);
  assert.deepEqual((await plain.verifier.verify(await plain.issuer.sign({ sub: 'user:bob' }))).groups, []);
});

test('an agent kind is believed only from the exchange and issuers marked agentKind', async () => {
  const kind = { [CLAIMS.agentKind]: 'ci' };
  for (const [name, marks] of [
    ['a directly trusted issuer', {}],
    ["the cluster's issuer", { serviceAccounts: true }],
  ] as const) {
    const { issuer, verifier } = await setup(marks);
    await refused(verifier, await issuer.sign({ sub: 'user:mallory', ...kind }), 'untrusted-claim', name);
    assert.equal((await verifier.verify(await issuer.sign({ sub: 'user:bob' }))).kind, undefined, `${name}: no kind`);
  }
  const marked = await setup({ agentKind: true });
  assert.equal((await marked.verifier.verify(await marked.issuer.sign({ sub: 'agent:x', ...kind }))).kind, 'ci');
  const exchange = await setup({ tokenExchange: true });
  const exchanged = await exchange.issuer.sign({ sub: 'agent:x', ...kind, ...EXCHANGE_CLAIMS });
  assert.equal((await exchange.verifier.verify(exchanged)).kind, 'ci');
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
      sub: 'agent:admin',
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
  // The file is asked whether it changed at most once per JWKS_FILE_CHECK_MS (no stat on every token):
  // within that the verification is still reused; once it has passed, the old key is gone.
  assert.equal((await verifier.verify(other)).subject, 'agent:rotated', 'within the check interval');
  assert.equal(verifier.reusedVerifications, reusedBefore + 1);
  now += JWKS_FILE_CHECK_MS;
  await assert.rejects(
    verifier.verify(other),
    (err) => err instanceof AuthenticationFailed && err.reason === 'signature',
  );
  assert.equal(verifier.reusedVerifications, reusedBefore + 1);
});

/** Rejects with AuthenticationFailed of `reason`, never echoing the token. */
async function refused(verifier: TokenVerifier, token: string, reason: string, name: string): Promise<void> {
  await assert.rejects(verifier.verify(token), (err) => {
    assert.ok(err instanceof AuthenticationFailed, `${name}: ${String(err)}`);
    assert.equal(err.reason, reason, `${name}: ${err.message}`);
    assert.ok(!err.message.includes(token), `${name}: the message never echoes the token`);
    return true;
  });
}

test('header attacks: alg spellings, embedded or remote keys, crit, duplicate keys — refused', async () => {
  const { issuer, verifier } = await setup();
  const now = Math.floor(Date.now() / 1000);
  const payload = JSON.stringify({ sub: 'agent:x', iss: issuer.issuer, aud: 'chaperone', exp: now + 600 });
  const b64 = (v: string) => Buffer.from(v).toString('base64url');
  const unsigned = (header: object) => `${b64(JSON.stringify(header))}.${b64(payload)}.`;
  for (const alg of ['none', 'None', 'nOnE', 'NONE']) {
    await refused(verifier, unsigned({ alg, typ: 'JWT' }), 'algorithm', `alg ${alg} without a signature`);
    await refused(verifier, `${unsigned({ alg })}c2ln`, 'algorithm', `alg ${alg} with a signature`);
  }
  // A key the attacker holds, offered in the header: jwk, jku, x5u are never consulted.
  const { generateKeyPairSync, createSign } = await import('node:crypto');
  const { exportJWK } = await import('jose');
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const attackerJwk = await exportJWK(attacker.publicKey);
  const signedByAttacker = (header: object) => {
    const input = `${b64(JSON.stringify(header))}.${b64(payload)}`;
    return `${input}.${createSign('RSA-SHA256').update(input).sign(attacker.privateKey).toString('base64url')}`;
  };
  await refused(verifier, signedByAttacker({ alg: 'RS256', kid: issuer.kid, jwk: attackerJwk }), 'signature', 'jwk');
  await refused(verifier, signedByAttacker({ alg: 'RS256', jwk: attackerJwk }), 'signature', 'jwk without kid');
  await refused(
    verifier,
    signedByAttacker({ alg: 'RS256', kid: issuer.kid, jku: 'https://evil.example.com/jwks' }),
    'signature',
    'jku',
  );
  await refused(
    verifier,
    signedByAttacker({ alg: 'RS256', kid: issuer.kid, x5u: 'https://evil.example.com/cert' }),
    'signature',
    'x5u',
  );
  // Signed by the issuer's own key but with a header the verifier must not ignore.
  await refused(
    verifier,
    issuer.signRaw(JSON.stringify({ alg: 'RS256', kid: issuer.kid, crit: ['exp-claim'], 'exp-claim': 1 }), payload),
    'malformed',
    'crit naming an unknown extension',
  );
  await refused(
    verifier,
    issuer.signRaw(`{"alg":"RS256","kid":"${issuer.kid}","alg":"none"}`, payload),
    'malformed',
    'duplicate alg, the last none',
  );
  await refused(
    verifier,
    issuer.signRaw(`{"alg":"none","kid":"${issuer.kid}","alg":"RS256"}`, payload),
    'malformed',
    'duplicate alg, the last RS256 (before: accepted)',
  );
  // Duplicate claims: another reader may take the first value, so such a token names two parties.
  await refused(
    verifier,
    issuer.signRaw(
      JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
      `{"sub":"agent:x","iss":"${issuer.issuer}","iss":"https://evil.example.com","aud":"chaperone","exp":${String(now + 600)}}`,
    ),
    'malformed',
    'duplicate iss, the last foreign',
  );
});

test('claims attacks: exp/nbf types and bounds, audiences, issuer spellings — refused, the harmless accepted', async () => {
  const { issuer, verifier } = await setup();
  const now = Math.floor(Date.now() / 1000);
  const header = JSON.stringify({ alg: 'RS256', kid: issuer.kid });
  const base = { sub: 'agent:x', iss: issuer.issuer, aud: 'chaperone', exp: now + 600 };
  const raw = (claims: Record<string, unknown>) => issuer.signRaw(header, JSON.stringify({ ...base, ...claims }));
  const cases: [string, Record<string, unknown>, string][] = [
    ['exp as a string', { exp: String(now + 600) }, 'claims'],
    ['exp missing', { exp: undefined }, 'claims'],
    ['exp in the past beyond the tolerance', { exp: now - 60 }, 'expired'],
    ['nbf as a string', { nbf: String(now - 10) }, 'claims'],
    ['nbf in the future beyond the tolerance', { nbf: now + 60 }, 'not-yet-valid'],
    ['iat as a string', { iat: String(now) }, 'claims'],
    ['aud as a list without ours', { aud: ['kubernetes', 'chaperone-other'] }, 'audience'],
    ['aud as an empty list', { aud: [] }, 'audience'],
    ['aud missing', { aud: undefined }, 'claims'],
    ['issuer with a trailing slash', { iss: `${issuer.issuer}/` }, 'issuer'],
    ['issuer in upper case', { iss: issuer.issuer.toUpperCase() }, 'issuer'],
    ['sub missing', { sub: undefined }, 'claims'],
    ['sub empty', { sub: '' }, 'malformed'],
    ['sub a number', { sub: 42 }, 'malformed'],
    ['sub longer than 512', { sub: 'a'.repeat(513) }, 'malformed'],
  ];
  for (const [name, claims, reason] of cases) await refused(verifier, raw(claims), reason, name);
  // Harmless: within the clock tolerance, a float expiry, a huge expiry, aud as a list with ours.
  for (const [name, claims] of Object.entries({
    'expired within the tolerance': { exp: now - 2 },
    'not yet valid within the tolerance': { nbf: now + 2 },
    'a float exp': { exp: now + 600.5 },
    'an exp far away': { exp: 1e12 },
    'aud as a list with ours': { aud: ['kubernetes', 'chaperone'] },
  })) {
    assert.equal((await verifier.verify(raw(claims))).subject, 'agent:x', name);
  }
});

test('one signed token has one text: padding, whitespace and other spellings of the signature are refused', async () => {
  const { issuer, verifier } = await setup();
  const token = await issuer.sign({ sub: 'agent:x' });
  const [h, p, s] = token.split('.') as [string, string, string];
  // The last character's unused low bits: the same signature bytes under another spelling.
  const last = s.slice(-1);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const sibling = alphabet[alphabet.indexOf(last) + 1] ?? 'A';
  assert.deepEqual(
    Buffer.from(`${s.slice(0, -1)}${sibling}`, 'base64url'),
    Buffer.from(s, 'base64url'),
    'the sibling spelling decodes to the same bytes',
  );
  const variants: Record<string, string> = {
    'padding on the signature': `${token}==`,
    'padding on the payload': `${h}.${p}=.${s}`,
    'a trailing space': `${token} `,
    'a trailing newline': `${token}\n`,
    'a space inside the signature': `${h}.${p}.${s.slice(0, 10)} ${s.slice(10)}`,
    'standard base64 alphabet': `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}+/`,
    'the last character with other unused bits': `${h}.${p}.${s.slice(0, -1)}${sibling}`,
    'a fourth part': `${token}.AAAA`,
    'JWE-shaped (five parts)': `${h}..${p}.${s}.AAAA`,
  };
  for (const [name, variant] of Object.entries(variants)) await refused(verifier, variant, 'malformed', name);
  assert.equal((await verifier.verify(token)).subject, 'agent:x', 'the canonical text is accepted');
});

test('a delegation chain is taken whole or refused: deep, cyclic-looking, broken or oversized claims', async () => {
  // Chains are believed only from the exchange: its tokens, each actor naming its issuer.
  const exchange = await setup({ tokenExchange: true });
  const { verifier } = exchange;
  const issuer = {
    ...exchange.issuer,
    sign: (claims: Record<string, unknown> & { sub: string }) =>
      exchange.issuer.sign({ ...EXCHANGE_CLAIMS, ...claims }),
  };
  const nest = (depth: number): Record<string, unknown> | undefined => {
    let act: Record<string, unknown> | undefined;
    for (let i = depth; i > 0; i--) {
      act = act === undefined ? { sub: `a${String(i)}`, iss: 'x' } : { sub: `a${String(i)}`, iss: 'x', act };
    }
    return act;
  };
  // 16 actors is the limit; 17 or 1,000 (fits in 16 KiB) used to be cut to 16 silently.
  assert.equal((await verifier.verify(await issuer.sign({ sub: 's', act: nest(16) }))).chain?.length, 16);
  const deep = await issuer.sign({ sub: 's', act: nest(17) });
  await refused(verifier, deep, 'malformed', 'a chain of 17');
  const nested = (depth: number) =>
    issuer.signRaw(
      JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
      `{"sub":"s","iss":"${issuer.issuer}","aud":"chaperone","exp":${String(Math.floor(Date.now() / 1000) + 600)},${JSON.stringify(EXCHANGE_CLAIMS).slice(1, -1)},"act":${'{"sub":"a","iss":"x","act":'.repeat(depth)}{"sub":"z","iss":"x"}${'}'.repeat(depth)}}`,
    );
  const threeHundred = nested(300);
  assert.ok(threeHundred.length < 16 * 1024, 'fits under the size bound: refused for its depth');
  await refused(verifier, threeHundred, 'malformed', 'a chain 300 deep');
  const thousand = nested(1000);
  assert.ok(thousand.length > 16 * 1024, 'over the size bound: refused before any parsing');
  await refused(verifier, thousand, 'malformed', 'a chain 1,000 deep');
  await refused(verifier, `${'A'.repeat(10 * 1024 * 1024)}.e30.AAAA`, 'malformed', 'a token of 10 MB');
  // A chain that repeats an actor is what it says (the exchange refuses cycles when it issues); a repeated
  // link is kept as signed, not collapsed.
  const repeated = await verifier.verify(
    await issuer.sign({ sub: 's', act: { sub: 'a', iss: 'x', act: { sub: 'a', iss: 'x' } } }),
  );
  assert.deepEqual(
    repeated.chain?.map((a) => a.subject),
    ['a', 'a'],
  );
  const broken: Record<string, Record<string, unknown>> = {
    'an actor without sub (the rest of the chain used to be dropped)': { act: { iss: 'x', act: { sub: 'a' } } },
    'an inner actor without sub': { act: { sub: 'a', iss: 'x', act: { client_id: 'b', iss: 'x' } } },
    'act as a list': { act: [{ sub: 'a' }] },
    'act as a string': { act: 'agent:a' },
    'act null': { act: null },
    'an actor sub as a number': { act: { sub: 7, iss: 'x' } },
    'an actor kind longer than 63': { act: { sub: 'a', iss: 'x', [CLAIMS.agentKind]: 'k'.repeat(64) } },
    'a kind longer than 63': { [CLAIMS.agentKind]: 'k'.repeat(64) },
    'a kind as a list': { [CLAIMS.agentKind]: ['ci'] },
    'groups as a string': { groups: 'admins' },
    'groups with a number': { groups: ['a', 1] },
    'more than 64 groups (a deny on the 65th used to be cut away)': {
      groups: Array.from({ length: 65 }, (_, i) => `g${String(i)}`),
    },
    'a group longer than 256': { groups: ['g'.repeat(257)] },
    'more than 64 scopes': { scope: Array.from({ length: 65 }, (_, i) => `s${String(i)}`).join(' ') },
  };
  for (const [name, claims] of Object.entries(broken)) {
    await refused(verifier, await issuer.sign({ sub: 's', ...claims }), 'malformed', name);
  }
  // A service account with 63 groups in its token would end with 65 once Kubernetes' groups are added.
  await refused(
    verifier,
    await issuer.sign({
      sub: 'system:serviceaccount:ci:runner',
      groups: Array.from({ length: 63 }, (_, i) => `g${String(i)}`),
    }),
    'malformed',
    'service-account groups past 64',
  );
  const many = await verifier.verify(
    await issuer.sign({ sub: 's', groups: Array.from({ length: 64 }, (_, i) => `g${String(i)}`) }),
  );
  assert.equal(many.groups?.length, 64, '64 groups are kept whole');
});

/** The P-256 group order, written out here rather than taken from the module under test. */
const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

/** The same token with its ECDSA signature's other twin (r, n − s): a re-spelling that still verifies. */
function ecdsaTwin(token: string): string {
  const cut = token.lastIndexOf('.') + 1;
  const signature = Buffer.from(token.slice(cut), 'base64url');
  const s = BigInt(`0x${signature.subarray(32).toString('hex')}`);
  const twin = Buffer.from((P256_ORDER - s).toString(16).padStart(64, '0'), 'hex');
  return `${token.slice(0, cut)}${Buffer.concat([signature.subarray(0, 32), twin]).toString('base64url')}`;
}

/** A minimal DER encoding of an ECDSA signature given as r || s (what OpenSSL emits by default). */
function derSignature(raw: Buffer): Buffer {
  const integer = (bytes: Buffer) => {
    let b = bytes;
    while (b.length > 1 && b[0] === 0 && (b[1] ?? 0) < 0x80) b = b.subarray(1);
    if ((b[0] ?? 0) >= 0x80) b = Buffer.concat([Buffer.from([0]), b]);
    return Buffer.concat([Buffer.from([0x02, b.length]), b]);
  };
  const body = Buffer.concat([integer(raw.subarray(0, 32)), integer(raw.subarray(32))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

test('ECDSA tokens of the exchange have one text: the high-S twin, zero, DER and out-of-range signatures are refused', async () => {
  const { generateKeyPair, exportJWK, SignJWT } = await import('jose');
  const { writeFileSync } = await import('node:fs');
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const jwksFile = join(dir, `exchange-jwks-${Math.random()}.json`);
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'ex', alg: 'ES256' }] }));
  const issuer = 'https://exchange.test.chaperone.dev/identity/v1';
  const verifier = new TokenVerifier({
    issuers: [{ issuer, jwksFile, tokenExchange: true, audiences: ['chaperone'], algorithms: ['ES256'] }],
    clockToleranceSeconds: 5,
  });
  const sign = (sub: string) =>
    new SignJWT({
      [CLAIMS.subjectIssuer]: 'https://kubernetes.default.svc',
      [CLAIMS.exchange]: { id: 'x', record: `sha256:${'0'.repeat(64)}` },
      act: { sub: 'agent:a', iss: 'https://agents.example' },
    })
      .setProtectedHeader({ alg: 'ES256', kid: 'ex', typ: 'JWT' })
      .setIssuer(issuer)
      .setSubject(sub)
      .setAudience('chaperone')
      .setExpirationTime('10m')
      .sign(privateKey);
  const highS = (token: string) => {
    const s = BigInt(
      `0x${Buffer.from(token.slice(token.lastIndexOf('.') + 1), 'base64url')
        .subarray(32)
        .toString('hex')}`,
    );
    return s > P256_ORDER / 2n;
  };
  // Twenty signatures: about half come out of the signer with a high S; each is taken in its low twin.
  let sawHigh = 0;
  for (let i = 0; i < 20; i++) {
    const signed = await sign(`system:serviceaccount:ci:runner-${String(i)}`);
    if (highS(signed)) sawHigh++;
    const low = highS(signed) ? ecdsaTwin(signed) : signed;
    const high = ecdsaTwin(low);
    assert.equal((await verifier.verify(low)).subject, `system:serviceaccount:ci:runner-${String(i)}`);
    await refused(verifier, high, 'malformed', `the high-S twin of token ${String(i)}`);
  }
  assert.ok(sawHigh > 0, 'the signer does emit high-S signatures: the refusal is not vacuous');
  const token = await sign('system:serviceaccount:ci:runner');
  const [h, p, s] = token.split('.') as [string, string, string];
  const raw = Buffer.from(s, 'base64url');
  await refused(
    verifier,
    `${h}.${p}.${Buffer.alloc(64).toString('base64url')}`,
    'signature',
    'r = s = 0 (psychic signature)',
  );
  const order = Buffer.from(P256_ORDER.toString(16), 'hex');
  const one = Buffer.alloc(32);
  one[31] = 1;
  await refused(
    verifier,
    `${h}.${p}.${Buffer.concat([order, one]).toString('base64url')}`,
    'signature',
    'r = n, s = 1',
  );
  await refused(verifier, `${h}.${p}.${derSignature(raw).toString('base64url')}`, 'signature', 'the signature in DER');
  await refused(verifier, `${h}.${p}.${raw.subarray(0, 32).toString('base64url')}`, 'signature', 'r alone');
});

test('issuer key sets: short RSA keys, hostile kids, a half-written JWKS file', async () => {
  const { createSign, generateKeyPairSync } = await import('node:crypto');
  const { exportJWK } = await import('jose');
  const { writeFileSync } = await import('node:fs');
  let now = Date.now();
  const jwksFile = join(dir, `jwks-short-${Math.random()}.json`);
  const issuer = await createTestIssuer(jwksFile);
  const legitimate = readFileSync(jwksFile, 'utf8');
  const verifier = new TokenVerifier({
    issuers: [{ issuer: issuer.issuer, jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] }],
    clockToleranceSeconds: 5,
    now: () => now,
  });
  // A JWKS publishing a 1024-bit key (RFC 7518 §3.3 asks for 2048 at least): its tokens are refused.
  const short = generateKeyPairSync('rsa', { modulusLength: 1024 });
  writeFileSync(
    jwksFile,
    JSON.stringify({ keys: [{ ...(await exportJWK(short.publicKey)), kid: 'short', alg: 'RS256', use: 'sig' }] }),
  );
  // jose will not sign with such a key either: signed by hand.
  const shortInput = `${Buffer.from(JSON.stringify({ alg: 'RS256', kid: 'short' })).toString('base64url')}.${Buffer.from(
    JSON.stringify({ sub: 'agent:short', iss: issuer.issuer, aud: 'chaperone', exp: Math.floor(now / 1000) + 600 }),
  ).toString('base64url')}`;
  const shortToken = `${shortInput}.${createSign('RSA-SHA256').update(shortInput).sign(short.privateKey).toString('base64url')}`;
  await refused(verifier, shortToken, 'malformed', 'a token of a 1024-bit RSA key');
  writeFileSync(jwksFile, legitimate);
  now += JWKS_FILE_CHECK_MS;
  const header = (kid: string | undefined) => JSON.stringify({ alg: 'RS256', ...(kid === undefined ? {} : { kid }) });
  const claims = JSON.stringify({
    sub: 'agent:x',
    iss: issuer.issuer,
    aud: 'chaperone',
    exp: Math.floor(now / 1000) + 600,
  });
  for (const kid of ['../../../../etc/passwd', "test-key-1' OR '1'='1", 'test-key-1\u0000', 'TEST-KEY-1', '']) {
    await refused(verifier, issuer.signRaw(header(kid), claims), 'unknown-key', `kid ${JSON.stringify(kid)}`);
  }
  // Without a kid the one key of the set is tried: the issuer's own signature is what counts.
  assert.equal((await verifier.verify(issuer.signRaw(header(undefined), claims))).subject, 'agent:x');
  // A JWKS file caught half-written: no key is trusted until it is whole again.
  writeFileSync(jwksFile, legitimate.slice(0, 20));
  now += JWKS_FILE_CHECK_MS;
  await refused(verifier, await issuer.sign({ sub: 'agent:torn' }), 'jwks-unavailable', 'a torn JWKS file');
  writeFileSync(jwksFile, legitimate);
  now += JWKS_FILE_CHECK_MS;
  assert.equal((await verifier.verify(await issuer.sign({ sub: 'agent:whole' }))).subject, 'agent:whole');
});

test('nested and unencoded payloads are refused; so is a token naming a claim twice', async () => {
  const { issuer, verifier } = await setup();
  const exp = Math.floor(Date.now() / 1000) + 600;
  // cty: JWT — the payload is another token (say, one the attacker signed naming an admin): never unwrapped.
  const inner = issuer.signRaw(
    JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
    JSON.stringify({ sub: 'system:admin', iss: issuer.issuer, aud: 'chaperone', exp }),
  );
  await refused(
    verifier,
    issuer.signRaw(JSON.stringify({ alg: 'RS256', kid: issuer.kid, cty: 'JWT' }), JSON.stringify(inner)),
    'issuer',
    'a nested JWT (cty JWT): its payload is no claims set, so names no trusted issuer',
  );
  await refused(
    verifier,
    issuer.signRaw(
      JSON.stringify({ alg: 'RS256', kid: issuer.kid, b64: false, crit: ['b64'] }),
      JSON.stringify({ sub: 'agent:x', iss: issuer.issuer, aud: 'chaperone', exp }),
    ),
    'malformed',
    'an unencoded payload (b64 false, crit)',
  );
  // RFC 7519 §4 lets a parser take the last of two names; an auditor's tool may take the first, so the token
  // would name two parties (before: accepted as agent:last with the chain [b]).
  const duplicated = issuer.signRaw(
    JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
    `{"sub":"agent:first","iss":"${issuer.issuer}","aud":"chaperone","exp":${String(exp)},"sub":"agent:last","act":{"sub":"a"},"act":{"sub":"b"}}`,
  );
  await refused(verifier, duplicated, 'malformed', 'sub and act given twice');
  await refused(
    verifier,
    issuer.signRaw(
      JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
      `{"sub":"agent:x","iss":"${issuer.issuer}","aud":"chaperone","exp":${String(exp)},"act":{"sub":"a","s\\u0075b":"b"}}`,
    ),
    'malformed',
    'an actor sub given twice, once escaped',
  );
  // exp 1e309 is Infinity to JSON.parse, which jose compares without complaint: a token that never expired.
  for (const dates of ['"exp":1e309', `"exp":${String(exp)},"nbf":-1e309`, '"exp":9.4e12']) {
    await refused(
      verifier,
      issuer.signRaw(
        JSON.stringify({ alg: 'RS256', kid: issuer.kid }),
        `{"sub":"agent:x","iss":"${issuer.issuer}","aud":"chaperone",${dates}}`,
      ),
      'claims',
      dates,
    );
  }
});
