// Per-request identity on one kept-alive connection to the HTTP engine (docs/identity.md, "Kept-alive
// connections"): every request is decided and recorded under the identity its own Authorization header
// proves — another agent's token, an expired, malformed or missing one, a token whose signing key the issuer
// rotated away, a token that expired while the connection stayed open, pipelined requests of two agents —
// and the upstream receives only what those identities were allowed.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { KeptAliveConnection } from '../harness/kept-alive-connection.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { createTestIssuer } from '../harness/tokens.ts';
import { JWKS_FILE_CHECK_MS } from '../../sidecar/src/core/identity/token-verifier.ts';

const AGENT_A = 'system:serviceaccount:agents:alpha';
const AGENT_B = 'system:serviceaccount:agents:bravo';

const only = (subject: string, path: string): AccessPolicySpec => ({
  resources: { names: ['api'] },
  subjects: [{ subject }],
  rules: [{ name: `only-${path}`, decision: 'allow', match: { http: { methods: ['GET'], paths: [`/${path}/**`] } } }],
  defaultDecision: 'deny',
});

test('each request on a kept-alive connection is decided under its own verified token', async (t) => {
  const received: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    received.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
  });
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), 'identity-upstream-key');
  const sidecar = await spawnSidecar({
    dir,
    policies: { alpha: only(AGENT_A, 'a'), bravo: only(AGENT_B, 'b') },
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
        auditFailureMode: 'FailClosed',
      },
    ],
  });
  t.after(() => sidecar.stop());
  const tokenA = await sidecar.issuer.sign({ sub: AGENT_A });
  const tokenB = await sidecar.issuer.sign({ sub: AGENT_B });
  const expiredA = await sidecar.issuer.sign({ sub: AGENT_A }, { expiresIn: -3600 });
  const get = (path: string, token?: string) =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\n${token === undefined ? '' : `Authorization: Bearer ${token}\r\n`}\r\n`;

  const socket = connect(sidecar.port, '127.0.0.1');
  const conn = new KeptAliveConnection(socket);
  t.after(() => conn.end());
  const one = async (path: string, token?: string) => (await conn.send(get(path, token)))[0]?.status;

  assert.equal(await one('/a/1', tokenA), 200, 'A reads its own path');
  assert.equal(await one('/a/2', tokenB), 403, "B on A's connection is decided as B");
  assert.equal(await one('/b/3', tokenB), 200, 'B reads its own path');
  assert.equal(await one('/b/4', tokenA), 403, "A again is decided as A, not as B's session");
  assert.equal(await one('/a/5'), 401, 'no token');
  assert.equal(await one('/a/6', 'not.a.jwt'), 401, 'a malformed token');
  assert.equal(await one('/a/7', `${tokenA.slice(0, -4)}AAAA`), 401, "A's token with a forged signature");
  assert.equal(await one('/a/8', expiredA), 401, 'an expired token of A');
  assert.equal(await one('/a/9', tokenA), 200, 'A once more');
  // Pipelined: both requests are in the server before either is answered.
  const pipelined = await conn.send(get('/b/10', tokenA) + get('/b/11', tokenB) + get('/a/12', tokenA), 3);
  assert.deepEqual(
    pipelined.map((r) => r.status),
    [403, 200, 200],
  );
  assert.equal(conn.closed, false, 'refusals leave the connection open');

  assert.equal(await one('/a/13', tokenA), 200, 'A after the pipelined requests');
  // The issuer rotates its key away: A's token, verified on this connection before, is refused on it once
  // the sidecar has next checked the file (at most JWKS_FILE_CHECK_MS later, docs/identity.md).
  const other = await createTestIssuer(join(dir, 'rotated-jwks.json'), sidecar.issuer.issuer);
  copyFileSync(other.jwksFile, sidecar.issuer.jwksFile);
  await new Promise((resolve) => setTimeout(resolve, JWKS_FILE_CHECK_MS + 100));
  assert.equal(await one('/a/14', tokenA), 401, 'a token whose key was rotated away');
  assert.equal(await one('/a/15', await other.sign({ sub: AGENT_A })), 200, 'a token of the new key');

  // Pipelined requests may reach the upstream in either order; what reached it is what was allowed.
  assert.deepEqual(received.toSorted(), ['/a/1', '/a/12', '/a/13', '/a/15', '/a/9', '/b/11', '/b/3']);

  // Records: every decision under the session of the identity its request carried.
  const entries = await sidecar.settledRecords();
  const subjectOf = new Map<string, string>();
  for (const e of entries) {
    if (e.record.type === 'session.start') subjectOf.set(e.session.sessionId, e.record.identity?.subject ?? '');
  }
  const decided = entries
    .filter((e) => e.record.type === 'command.decision')
    .map(
      (e) =>
        `${e.record.command?.text ?? ''} ${e.record.decision?.result ?? ''} ${subjectOf.get(e.session.sessionId) ?? ''}`,
    );
  assert.deepEqual(decided.toSorted(), [
    `GET /a/1 allow ${AGENT_A}`,
    `GET /a/12 allow ${AGENT_A}`,
    `GET /a/13 allow ${AGENT_A}`,
    `GET /a/15 allow ${AGENT_A}`,
    `GET /a/2 deny ${AGENT_B}`,
    `GET /a/9 allow ${AGENT_A}`,
    `GET /b/10 deny ${AGENT_A}`,
    `GET /b/11 allow ${AGENT_B}`,
    `GET /b/3 allow ${AGENT_B}`,
    `GET /b/4 deny ${AGENT_A}`,
  ]);
  const failures = entries.filter((e) => e.record.type === 'auth.failure').map((e) => e.record.outcome?.message ?? '');
  assert.equal(failures.length, 5);
  assert.match(failures[0] ?? '', /^missing:/);
  assert.match(failures[3] ?? '', /^expired:/);
  // The new key has the old one's kid: the signature no longer verifies.
  assert.match(failures[4] ?? '', /^signature:/);
  // Every session opened on the connection is ended (a token change ends the one before).
  const started = entries.filter((e) => e.record.type === 'session.start').length;
  conn.end();
  await sidecar.settledRecords();
  const ended = (await sidecar.settledRecords()).filter((e) => e.record.type === 'session.end').length;
  assert.equal(ended, started);
});

test('a token that expires while the connection stays open stops working at its exp', async (t) => {
  const upstream = await startLoopbackHttpServer(t, (_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('{}');
  });
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), 'identity-upstream-key');
  const sidecar = await spawnSidecar({
    dir,
    policies: { alpha: only(AGENT_A, 'a') },
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
        auditFailureMode: 'FailClosed',
      },
    ],
  });
  t.after(() => sidecar.stop());
  const token = await sidecar.issuer.sign({ sub: AGENT_A }, { expiresIn: 2 });
  const exp = (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { exp: number }).exp;
  const conn = new KeptAliveConnection(connect(sidecar.port, '127.0.0.1'));
  t.after(() => conn.end());
  const request = `GET /a/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`;
  assert.equal((await conn.send(request))[0]?.status, 200);
  // Past exp and the sidecar's clock tolerance (identity.clockToleranceSeconds, 5 s by default).
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, (exp + 5) * 1000 - Date.now()) + 1000));
  const after = (await conn.send(request))[0];
  assert.equal(after?.status, 401);
  assert.match(after.body, /expired/);
  const failures = (await sidecar.settledRecords()).filter((e) => e.record.type === 'auth.failure');
  assert.match(failures[0]?.record.outcome?.message ?? '', /^expired:/);
});
