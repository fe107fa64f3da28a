// Token shapes a trusted issuer's key set and the JOSE specs allow but the sidecar must not read two ways,
// against two real sidecars (the PostgreSQL engine in front of the harness database, the HTTP engine in front
// of a loopback upstream) that trust one directly trusted issuer publishing several keys: two signing keys (a
// rotation), a key for encryption and a key for PS256 only. The attacks: tokens without a `kid` (which key?),
// signed by the encryption key or by the PS256 key under RS256, the JWS JSON serialisations (flattened, and
// general with the valid signature beside a forged one), a nested token (`cty: JWT`), an unencoded payload
// declared without `crit` (`b64: false`), a compressed one (`zip: DEF`), keys offered by reference (`jku`,
// `x5u`, naming a loopback server that records every fetch) or inline (`jwk`, `x5c`), and `act` as null, a
// string or a list. What counts is the server: a row in the database, a request at the upstream, the
// identity of each record, and no fetch at the key server. Before the fix (fifteenth session), 4 of the 26
// attacks got through at each engine: `cty: JWT`, `b64: false` and `zip: DEF` over a claims set, each
// authenticated as the subject it named (a reader honouring the header reads another payload or none), and
// `cty` in lower case.
import assert from 'node:assert/strict';
import { createSign, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import pg from 'pg';
import { exportJWK } from 'jose';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, testDir } from '../harness/env.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { HTTP_ALLOW_ALL, spawnHttpEngineSidecar } from '../http/http-sidecar.ts';
import { raw } from '../http/raw-request.ts';

const ISSUER = 'https://shapes.test.chaperone.dev';
const b64 = (text: string | Buffer) => Buffer.from(text).toString('base64url');

/** RS256 (RSASSA-PKCS1-v1_5 with SHA-256) over exactly `input`, with `key`. */
const rs256 = (input: string, key: KeyObject) => createSign('RSA-SHA256').update(input).sign(key).toString('base64url');

test('token shapes: key selection, JSON serialisations, nested, unencoded and compressed payloads, keys by reference', async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const rsa = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keys = { sigA: rsa(), sigB: rsa(), enc: rsa(), psOnly: rsa(), attacker: rsa() };
  const jwk = async (key: KeyObject, extra: Record<string, unknown>) => ({ ...(await exportJWK(key)), ...extra });
  const jwksFile = join(dir, 'shapes-jwks.json');
  writeFileSync(
    jwksFile,
    JSON.stringify({
      keys: [
        await jwk(keys.sigA.publicKey, { kid: 'sig-a', alg: 'RS256', use: 'sig' }),
        await jwk(keys.sigB.publicKey, { kid: 'sig-b', alg: 'RS256', use: 'sig' }),
        await jwk(keys.enc.publicKey, { kid: 'enc-1', alg: 'RSA-OAEP-256', use: 'enc' }),
        await jwk(keys.psOnly.publicKey, { kid: 'ps-only', alg: 'PS256', use: 'sig' }),
      ],
    }),
  );
  const issuerEntry = { issuer: ISSUER, jwksFile, audiences: ['chaperone'], algorithms: ['RS256', 'PS256'] };

  // The key server: any request at it is a fetch the sidecar must never make.
  const fetches: string[] = [];
  const keyServer = await startLoopbackHttpServer(t, (req, res) => {
    fetches.push(`${req.method ?? ''} ${req.url ?? ''}`);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [] }));
  });
  const keyServerUrl = `http://127.0.0.1:${String((keyServer.address() as { port: number }).port)}`;

  const database = await createTestDatabase(t, 'create table ledger (said text not null)');
  const pgSidecar = await startTestSidecar(t, { database, policies: { all: ALLOW_ALL }, extraIssuers: [issuerEntry] });

  const reached: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    reached.push(decodeURIComponent((req.url ?? '').replace(/^\/\?who=/, '')));
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  const httpDir = join(dir, 'http');
  mkdirSync(httpDir, { recursive: true });
  const httpSidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort: (upstream.address() as { port: number }).port,
    policies: { all: HTTP_ALLOW_ALL },
    credential: 'token-shape-upstream-key',
    dir: httpDir,
    resource: { namespace: 'default', labels: {} },
    extraIssuers: [issuerEntry],
  });

  const exp = () => Math.floor(Date.now() / 1000) + 600;
  const claims = (sub: string, extra: Record<string, unknown> = {}) =>
    JSON.stringify({ sub, iss: ISSUER, aud: 'chaperone', exp: exp(), ...extra });
  /** A compact token: `header` and `payload` as written, signed RS256 by `key` over their base64url. */
  const compact = (header: Record<string, unknown>, payload: string | Buffer, key = keys.sigA.privateKey) => {
    const input = `${b64(JSON.stringify(header))}.${b64(payload)}`;
    return `${input}.${rs256(input, key)}`;
  };

  /** Connects with `token` and writes one row saying `said`: what the server did. */
  const atDatabase = async (token: string, said: string): Promise<'refused' | 'written'> => {
    const client = new pg.Client({
      host: pgSidecar.host,
      port: pgSidecar.port,
      user: 'agent',
      database,
      password: token,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (err) {
      assert.equal((err as { code?: string }).code, '28P01', `${said}: ${(err as Error).message}`);
      return 'refused';
    }
    try {
      await client.query('insert into ledger values ($1)', [said]);
      return 'written';
    } finally {
      await client.end().catch(() => undefined);
    }
  };
  /** One request with `token` as the bearer token: what the upstream saw. */
  const atUpstream = async (token: string, said: string): Promise<'refused' | 'reached'> => {
    const answer = await raw(
      httpSidecar.port,
      `GET /?who=${encodeURIComponent(said)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    );
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
    if (status === 401) {
      assert.match(answer, /www-authenticate: Bearer/i, `${said}: a Bearer challenge`);
      return 'refused';
    }
    assert.equal(status, 200, `${said}: ${answer.slice(0, 300)}`);
    return 'reached';
  };

  // The controls: each signing key's own token works at both engines, under the subject it names.
  for (const kid of ['sig-a', 'sig-b'] as const) {
    const key = kid === 'sig-a' ? keys.sigA.privateKey : keys.sigB.privateKey;
    const token = compact({ alg: 'RS256', kid, typ: 'JWT' }, claims(`agent:control-${kid}`), key);
    assert.equal(await atDatabase(token, `control ${kid}`), 'written', kid);
    assert.equal(await atUpstream(token, `control ${kid}`), 'reached', kid);
  }

  const valid = compact({ alg: 'RS256', kid: 'sig-a', typ: 'JWT' }, claims('agent:json'));
  const [vh, vp, vs] = valid.split('.') as [string, string, string];
  const forgedHeader = b64(JSON.stringify({ alg: 'RS256', kid: 'sig-a' }));
  const forgedPayload = b64(claims('system:serviceaccount:kube-system:admin'));
  const forged = `${forgedHeader}.${forgedPayload}`;
  const attackerSigned = (header: Record<string, unknown>) =>
    compact(header, claims('agent:admin'), keys.attacker.privateKey);

  const attacks: Record<string, string> = {
    // Key selection: no kid while the set holds several keys; keys of another use or algorithm.
    'no kid, signed by one of the two signing keys': compact(
      { alg: 'RS256', typ: 'JWT' },
      claims('agent:nokid'),
      keys.sigB.privateKey,
    ),
    'no kid, signed by the encryption key': compact({ alg: 'RS256' }, claims('agent:enc'), keys.enc.privateKey),
    'the encryption key named by its kid': compact(
      { alg: 'RS256', kid: 'enc-1' },
      claims('agent:enc'),
      keys.enc.privateKey,
    ),
    'the PS256-only key used for RS256': compact(
      { alg: 'RS256', kid: 'ps-only' },
      claims('agent:ps'),
      keys.psOnly.privateKey,
    ),
    'no kid, RS256 by the PS256-only key': compact({ alg: 'RS256' }, claims('agent:ps'), keys.psOnly.privateKey),
    // The JWS JSON serialisations (RFC 7515 §7.2) of a valid token: one text only, the compact one.
    'flattened JSON serialisation': JSON.stringify({ protected: vh, payload: vp, signature: vs }),
    'flattened, the kid unprotected': JSON.stringify({
      protected: b64(JSON.stringify({ alg: 'RS256' })),
      header: { kid: 'sig-a' },
      payload: vp,
      signature: rs256(`${b64(JSON.stringify({ alg: 'RS256' }))}.${vp}`, keys.sigA.privateKey),
    }),
    'general JSON serialisation, a forged signature beside the valid one': JSON.stringify({
      payload: vp,
      signatures: [
        { protected: forgedHeader, signature: rs256(forged, keys.attacker.privateKey) },
        { protected: vh, signature: vs },
      ],
    }),
    'general JSON serialisation, one valid signature': JSON.stringify({
      payload: vp,
      signatures: [{ protected: vh, signature: vs }],
    }),
    'the JSON serialisation, base64url-encoded': b64(JSON.stringify({ protected: vh, payload: vp, signature: vs })),
    // Headers that change what the payload is.
    'cty JWT over a claims set': compact({ alg: 'RS256', kid: 'sig-a', cty: 'JWT' }, claims('agent:cty')),
    'cty jwt (lower case) over a claims set': compact(
      { alg: 'RS256', kid: 'sig-a', cty: 'jwt' },
      claims('agent:cty-lower'),
    ),
    'cty JWT over a nested token naming an admin': compact(
      { alg: 'RS256', kid: 'sig-a', cty: 'JWT' },
      attackerSigned({ alg: 'RS256', kid: 'sig-a' }),
    ),
    'b64 false without crit, over a claims set': compact(
      { alg: 'RS256', kid: 'sig-a', b64: false },
      claims('agent:b64'),
    ),
    'b64 false with crit': compact({ alg: 'RS256', kid: 'sig-a', b64: false, crit: ['b64'] }, claims('agent:b64crit')),
    'zip DEF over a plain claims set': compact({ alg: 'RS256', kid: 'sig-a', zip: 'DEF' }, claims('agent:zip')),
    'zip DEF over a deflated claims set': compact(
      { alg: 'RS256', kid: 'sig-a', zip: 'DEF' },
      deflateRawSync(claims('agent:zip-deflated')),
    ),
    // Keys offered by the token: never fetched, never used.
    'jku naming the key server, known kid': attackerSigned({ alg: 'RS256', kid: 'sig-a', jku: `${keyServerUrl}/jwks` }),
    'jku naming the key server, unknown kid': attackerSigned({
      alg: 'RS256',
      kid: 'attacker',
      jku: `${keyServerUrl}/jwks`,
    }),
    'x5u naming the key server': attackerSigned({ alg: 'RS256', kid: 'attacker', x5u: `${keyServerUrl}/cert.pem` }),
    'jwk of the attacker, no kid': attackerSigned({ alg: 'RS256', jwk: { kty: 'RSA', n: 'AQAB', e: 'AQAB' } }),
    'x5c of the attacker, no kid': attackerSigned({ alg: 'RS256', x5c: ['MIIB'] }),
    // A chain from an issuer that may not assert one, in each shape that is not an object.
    'act null': compact({ alg: 'RS256', kid: 'sig-a' }, claims('agent:act-null', { act: null })),
    'act a string': compact({ alg: 'RS256', kid: 'sig-a' }, claims('agent:act-string', { act: 'agent:boss' })),
    'act a list': compact({ alg: 'RS256', kid: 'sig-a' }, claims('agent:act-list', { act: [{ sub: 'agent:boss' }] })),
    'act an empty object': compact({ alg: 'RS256', kid: 'sig-a' }, claims('agent:act-empty', { act: {} })),
  };

  const through: string[] = [];
  for (const [name, token] of Object.entries(attacks)) {
    if ((await atDatabase(token, name)) !== 'refused') through.push(`postgres: ${name}`);
    if ((await atUpstream(token, name)) !== 'refused') through.push(`http: ${name}`);
  }
  assert.deepEqual(through, [], `${String(through.length / 2)} attacks got through`);

  // The servers' own state: only the controls' rows and requests.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  const rows = (await direct.query<{ said: string }>('select said from ledger order by said')).rows;
  await direct.end();
  assert.deepEqual(
    rows.map((r) => r.said),
    ['control sig-a', 'control sig-b'],
  );
  assert.deepEqual(reached.sort(), ['control sig-a', 'control sig-b']);
  assert.deepEqual(fetches, [], 'no key was fetched from where a token said');

  // The records: the controls under the subjects their tokens name; every attack an auth.failure; no token text.
  for (const sidecar of [pgSidecar, httpSidecar]) {
    const records = await sidecar.settledRecords();
    const subjects = new Set(records.map((r) => r.record.identity?.subject).filter((s) => s !== undefined));
    assert.deepEqual([...subjects].sort(), ['agent:control-sig-a', 'agent:control-sig-b']);
    const failures = records.filter((r) => r.record.type === 'auth.failure');
    assert.equal(failures.length, Object.keys(attacks).length, 'one auth.failure record per attack');
    const haystack = `${sidecar.logs()}\n${readFileSync(sidecar.auditFile, 'utf8')}`;
    for (const token of Object.values(attacks)) {
      const signature = token.length > 80 ? token.slice(-60) : token;
      assert.ok(!haystack.includes(signature), 'a token in the log or records');
    }
  }
});
