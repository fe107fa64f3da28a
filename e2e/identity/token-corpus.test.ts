// Forged, re-spelled and widened tokens against the real token exchange (the operator, on the shared API
// server) and the real sidecar's HTTP engine trusting it: each attack a case with the status and reason it
// must get. Among them the two that got through before: the other twin (r, n − s) of an ECDSA-signed exchange
// token, which verifies without any key and carries a tokenHash nothing issued, and an external issuer's
// token narrowed to one resource exchanged for a child valid on another. At the end: what the upstream
// received, the sidecar's auth.failure records, and no token text in the sidecar's log or records.
import assert from 'node:assert/strict';
import { createHash, createHmac, generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportJWK } from 'jose';
import type { AccessPolicySpec } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { raw } from '../http/raw-request.ts';
import { startExchangeFixture } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld } from './identity-fixture.ts';

/** The P-256 group order (SEC 2), written out here rather than taken from the code under test. */
const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

function signatureS(token: string): bigint {
  return BigInt(
    `0x${Buffer.from(token.slice(token.lastIndexOf('.') + 1), 'base64url')
      .subarray(32)
      .toString('hex')}`,
  );
}

/** The token with the other twin (r, n − s) of its ES256 signature: what any holder can compute. */
function ecdsaTwin(token: string): string {
  const cut = token.lastIndexOf('.') + 1;
  const signature = Buffer.from(token.slice(cut), 'base64url');
  const twin = Buffer.from((P256_ORDER - signatureS(token)).toString(16).padStart(64, '0'), 'hex');
  return `${token.slice(0, cut)}${Buffer.concat([signature.subarray(0, 32), twin]).toString('base64url')}`;
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

test('token corpus: the real exchange and the real sidecar refuse forged, re-spelled and widened tokens', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  const received: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    received.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), 'token-corpus-upstream-key');
  const policy: AccessPolicySpec = {
    resources: { names: ['api'] },
    rules: [{ name: 'all', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
  };
  const sidecar = await spawnSidecar({
    dir,
    policies: { all: policy },
    policyNamespace: world.namespace,
    listeners: [
      {
        name: 'api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String((upstream.address() as { port: number }).port)}`,
          tls: { mode: 'disable' },
          credential: { valueFile: join(dir, 'credential') },
        },
        resource: { namespace: world.namespace, labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
    extraIssuers: [ex.sidecarIssuer()],
  });
  t.after(() => sidecar.stop());
  const get = (path: string, token: string, extra = '') =>
    raw(
      sidecar.port,
      `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${extra}Connection: close\r\n\r\n`,
    );
  const status = (answer: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
  const presented: string[] = [];

  const agentToken = () => world.agents.sign({ sub: 'agent:report-writer' });
  const child = await ex.exchange(await world.ciToken(), {
    actor: await agentToken(),
    resources: [world.resource('api')],
    scope: 'db:read',
  });
  presented.push(child);

  await t.test('every token the exchange issues carries the low-S twin of its signature', async () => {
    // Before: about half of them came out of the signer with a high S (its twin then being the low one).
    const issued = [child];
    for (let i = 0; i < 11; i++) issued.push(await ex.exchange(child, { scope: 'db:read' }));
    presented.push(...issued);
    for (const token of issued) assert.ok(signatureS(token) <= P256_ORDER / 2n, 'a low S');
  });

  await t.test('the exchange refuses the high-S twin of its own token as a subject token', async () => {
    const twin = ecdsaTwin(child);
    presented.push(twin);
    const reply = await ex.post({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: twin,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      scope: 'db:read',
    });
    // Before: 200, a child whose record's parent.tokenHash named a token nobody had been given.
    assert.equal(reply.status, 400, JSON.stringify(reply.body));
    assert.deepEqual([reply.body.error, reply.body.chaperone_reason], ['invalid_grant', 'malformed']);
    assert.ok(!JSON.stringify(reply.body).includes(twin), 'the answer never echoes the token');
  });

  await t.test('an external token narrowed to a resource stays narrowed through the exchange', async () => {
    const narrowed = await world.agents.sign({
      sub: 'agent:narrowed',
      'chaperone.dev/resources': [world.resource('api')],
    });
    presented.push(narrowed);
    const script = await world.agents.sign({ sub: 'script:etl' });
    presented.push(script);
    // Before: 200 and a child valid on `other`, which the sidecar refuses the parent on.
    const widened = await ex.post({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: narrowed,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      actor_token: script,
      actor_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      resource: world.resource('other'),
    });
    assert.equal(widened.status, 400, JSON.stringify(widened.body));
    assert.deepEqual([widened.body.error, widened.body.chaperone_reason], ['invalid_target', 'resource-widened']);
    // Without a resource asked for, the child inherits the parent's (before: no resources claim at all).
    const inherited = await ex.exchange(narrowed, { actor: script });
    presented.push(inherited);
    assert.deepEqual(claimsOf(inherited)['chaperone.dev/resources'], [world.resource('api')]);
  });

  await t.test('an actor whose name only looks like an allowed one is no party of any rule', async () => {
    // "agent:" with a Cyrillic а: the TrustedIssuer's `agent:*` pattern gives it no kind, so no rule matches.
    const lookalike = await world.agents.sign({ sub: '\u0430gent:report-writer' });
    presented.push(lookalike);
    const reply = await ex.post({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: await world.ciToken(),
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      actor_token: lookalike,
      actor_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      resource: world.resource('api'),
    });
    assert.equal(reply.status, 400, JSON.stringify(reply.body));
    assert.equal(reply.body.chaperone_reason, 'no-delegation-rule');
  });

  // The sidecar, with the exchange's JWKS (fetched over HTTPS) and the harness's RS256 issuer (a JWKS file).
  const [h, p] = child.split('.') as [string, string, string];
  const rsa = sidecar.issuer;
  const claims = { sub: 'agent:x', iss: rsa.issuer, aud: 'chaperone', exp: Math.floor(Date.now() / 1000) + 600 };
  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const attackerJwk = await exportJWK(attacker.publicKey);
  const exchangeJwks = (await ex.get('/identity/v1/jwks')).body as { keys: Record<string, unknown>[] };
  const exchangePublic = JSON.stringify(exchangeJwks.keys[0]);
  const hmac = (header: object, payload: string, secret: string) => {
    const input = `${b64(header)}.${payload}`;
    return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
  };
  const sidecarCases: Record<string, { token: string; status: number; extra?: string }> = {
    'the exchange token itself': { token: child, status: 200 },
    'its high-S twin (before: 200, under a tokenHash nothing issued)': { token: ecdsaTwin(child), status: 401 },
    'r = s = 0 (psychic signature)': { token: `${h}.${p}.${Buffer.alloc(64).toString('base64url')}`, status: 401 },
    'the signature in DER': {
      token: `${h}.${p}.${Buffer.concat([Buffer.from([0x30, 0x44, 0x02, 0x20]), Buffer.alloc(32, 1), Buffer.from([0x02, 0x20]), Buffer.alloc(32, 1)]).toString('base64url')}`,
      status: 401,
    },
    'alg none': { token: `${b64({ alg: 'none' })}.${p}.`, status: 401 },
    'alg nOnE': { token: `${b64({ alg: 'nOnE' })}.${p}.`, status: 401 },
    'HS256 with the exchange public JWK as the secret': {
      token: hmac({ alg: 'HS256', kid: JSON.parse(exchangePublic).kid as string }, p, exchangePublic),
      status: 401,
    },
    'HS256 with the RSA issuer public key PEM as the secret': {
      token: hmac({ alg: 'HS256', kid: rsa.kid }, b64(claims), rsa.publicKeyPem),
      status: 401,
    },
    'an attacker key offered in the header (jwk)': {
      token: `${b64({ alg: 'ES256', jwk: attackerJwk })}.${p}.${Buffer.alloc(64, 7).toString('base64url')}`,
      status: 401,
    },
    'jku naming the attacker': {
      token: `${b64({ alg: 'ES256', kid: 'x', jku: 'https://127.0.0.1:1/jwks' })}.${p}.${Buffer.alloc(64, 7).toString('base64url')}`,
      status: 401,
    },
    'kid with path traversal': {
      token: rsa.signRaw(JSON.stringify({ alg: 'RS256', kid: '../../../../etc/passwd' }), JSON.stringify(claims)),
      status: 401,
    },
    'kid with SQL': {
      token: rsa.signRaw(JSON.stringify({ alg: 'RS256', kid: "' OR '1'='1" }), JSON.stringify(claims)),
      status: 401,
    },
    'crit naming an unknown extension': {
      token: rsa.signRaw(
        JSON.stringify({ alg: 'RS256', kid: rsa.kid, crit: ['x-exp'], 'x-exp': 1 }),
        JSON.stringify(claims),
      ),
      status: 401,
    },
    'b64 false': {
      token: rsa.signRaw(
        JSON.stringify({ alg: 'RS256', kid: rsa.kid, b64: false, crit: ['b64'] }),
        JSON.stringify(claims),
      ),
      status: 401,
    },
    'exp as a string': {
      token: rsa.signRaw(
        JSON.stringify({ alg: 'RS256', kid: rsa.kid }),
        JSON.stringify({ ...claims, exp: String(claims.exp) }),
      ),
      status: 401,
    },
    'exp negative': {
      token: rsa.signRaw(JSON.stringify({ alg: 'RS256', kid: rsa.kid }), JSON.stringify({ ...claims, exp: -1 })),
      status: 401,
    },
    'iss with a trailing slash': {
      token: rsa.signRaw(
        JSON.stringify({ alg: 'RS256', kid: rsa.kid }),
        JSON.stringify({ ...claims, iss: `${rsa.issuer}/` }),
      ),
      status: 401,
    },
    'aud as a list, ours second': {
      token: rsa.signRaw(
        JSON.stringify({ alg: 'RS256', kid: rsa.kid }),
        JSON.stringify({ ...claims, aud: ['kubernetes', 'chaperone'] }),
      ),
      status: 200,
    },
    'an exchange token narrowed to another resource, replayed here': {
      token: await ex.exchange(await world.ciToken(), {
        actor: await agentToken(),
        resources: [world.resource('other')],
        scope: 'db:read',
      }),
      status: 401,
    },
    'an offer (audience: the exchange) used at the sidecar': {
      token: await ex.exchange(child, {
        audiences: [ex.issuer],
        mayAct: { sub: 'script:etl', iss: world.agents.issuer },
      }),
      status: 401,
    },
    'a token of 20 KiB': { token: `${h}.${'A'.repeat(20 * 1024)}.${child.split('.')[2] ?? ''}`, status: 401 },
    'two Authorization headers, the second another token': {
      token: child,
      extra: `Authorization: Bearer ${await agentToken()}\r\n`,
      status: 400,
    },
  };
  for (const [name, c] of Object.entries(sidecarCases)) {
    if (c.token !== '') presented.push(c.token);
    await t.test(`sidecar: ${name}`, async () => {
      assert.notEqual(c.token, '', 'the case has a token');
      const answer = await get(`/corpus/${encodeURIComponent(name)}`, c.token, c.extra);
      assert.equal(status(answer), c.status, answer);
      if (c.status === 401) assert.match(answer, /www-authenticate: Bearer/i);
    });
  }

  await t.test('the upstream received exactly the accepted requests', () => {
    assert.deepEqual(
      received.toSorted(),
      Object.entries(sidecarCases)
        .filter(([, c]) => c.status === 200)
        .map(([name]) => `/corpus/${encodeURIComponent(name)}`)
        .toSorted(),
    );
  });

  await t.test('every refusal is an auth.failure record; no token text is logged or recorded', async () => {
    const records = await sidecar.settledRecords();
    const failures = records.filter((r) => r.record.type === 'auth.failure');
    const refusedByToken = Object.values(sidecarCases).filter((c) => c.status === 401).length;
    assert.ok(failures.length >= refusedByToken, `${String(failures.length)} auth.failure records`);
    const hashes = new Set(records.map((r) => r.record.identity?.tokenHash).filter((x) => x !== undefined));
    assert.ok(hashes.has(`sha256:${createHash('sha256').update(child).digest('hex')}`), 'the issued text, by its hash');
    assert.ok(
      !hashes.has(`sha256:${createHash('sha256').update(ecdsaTwin(child)).digest('hex')}`),
      'never the twin: no session names a token hash nothing issued',
    );
    const haystack = `${sidecar.logs()}\n${readFileSync(sidecar.auditFile, 'utf8')}`;
    for (const token of presented) {
      // The signature part is enough to identify a token; it never appears in a log line or record.
      const signature = token.slice(token.lastIndexOf('.') + 1);
      if (signature.length >= 40 && new Set(signature).size > 8)
        assert.ok(!haystack.includes(signature), 'a token signature in the log or records');
    }
  });
});
