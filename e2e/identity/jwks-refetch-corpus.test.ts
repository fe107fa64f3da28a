// Tokens that make the sidecar ask an issuer for its keys (a jwksUrl) again and again: a flood of unknown
// `kid`s, and any token of the issuer while its JWKS endpoint is down or rate-limits the sidecar (429). Each
// such request may cost the issuer a JWKS download and the agent's request a wait on it; a sidecar that
// refetched on every token would turn an outage or a rate limit into a self-sustaining storm against the
// issuer (every answer 429, so every next token asks again). Judged on the issuer's own request count, with a
// real sidecar's HTTP engine in front of a real HTTP server and the test OIDC issuer serving the JWKS over
// HTTPS. Bounds are per elapsed time, never on how fast the machine is.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignJWT } from 'jose';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { HTTP_ALLOW_ALL, spawnHttpEngineSidecar } from '../http/http-sidecar.ts';
import { raw } from '../http/raw-request.ts';
import { startOidcIssuer } from './oidc-issuer.ts';

/** The sidecar's bounds (token-verifier.ts): after a failed fetch, and between refetches for unknown kids. */
const FAILED_FETCH_RETRY_MS = 1000;
const UNKNOWN_KID_REFETCH_MS = 10_000;
const FLOOD = 25;

test('JWKS refetch corpus: unknown kids and an issuer that is down never make the sidecar hammer it', async (t) => {
  const agents = await startOidcIssuer();
  t.after(() => agents.close());
  let received = 0;
  const upstream = await startLoopbackHttpServer(t, (_req, res) => {
    received++;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 }).end('ok');
  });
  // Down before the sidecar ever fetched its keys.
  agents.setJwksStatus(503);
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort: (upstream.address() as { port: number }).port,
    policies: { corpus: HTTP_ALLOW_ALL },
    credential: 'jwks-corpus-upstream-key',
    extraIssuers: [
      {
        issuer: agents.issuer,
        jwksUrl: `${agents.issuer}/jwks`,
        jwksCa: agents.caPem,
        audiences: ['chaperone'],
        algorithms: ['ES256'],
      },
    ],
  });
  const fetches = () => agents.requests.get('/jwks') ?? 0;
  const status = async (token: string) => {
    const answer = await raw(
      sidecar.port,
      `GET /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    );
    return Number(/^HTTP\/1\.1 (\d{3}) /.exec(answer)?.[1]);
  };
  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const unknownKid = (i: number) =>
    new SignJWT({ sub: `agent:flood-${String(i)}` })
      .setProtectedHeader({ alg: 'ES256', kid: `unknown-${String(i)}-${Math.random().toString(36).slice(2)}` })
      .setIssuer(agents.issuer)
      .setAudience('chaperone')
      .setExpirationTime('10m')
      .sign(attacker.privateKey);
  /** Sends `tokens` one after another; returns their statuses and how many JWKS fetches they caused. */
  const flood = async (tokens: readonly string[]) => {
    const before = fetches();
    const started = Date.now();
    const statuses: number[] = [];
    for (const token of tokens) statuses.push(await status(token));
    return { statuses, fetched: fetches() - before, elapsedMs: Date.now() - started };
  };
  const good = await agents.sign({ sub: 'agent:good' });

  await t.test(
    'the issuer down from the start: the flood is refused, the issuer asked about once a second',
    async () => {
      const tokens = [good, ...(await Promise.all(Array.from({ length: FLOOD - 1 }, (_, i) => unknownKid(i))))];
      const { statuses, fetched, elapsedMs } = await flood(tokens);
      assert.deepEqual(new Set(statuses), new Set([401]), 'no keys: every token refused (fail closed)');
      // Before: one fetch per token (25), since a failed fetch left nothing that held the next one back.
      const bound = 1 + Math.ceil(elapsedMs / FAILED_FETCH_RETRY_MS);
      assert.ok(
        fetched <= bound,
        `${String(fetched)} JWKS fetches for ${String(FLOOD)} tokens in ${String(elapsedMs)} ms`,
      );
    },
  );

  await t.test('the issuer back: its tokens are accepted once the retry is due', async () => {
    agents.setJwksStatus(200);
    const deadline = Date.now() + 10 * FAILED_FETCH_RETRY_MS;
    let answer = await status(good);
    while (answer !== 200 && Date.now() < deadline) {
      await sleep(FAILED_FETCH_RETRY_MS / 4);
      answer = await status(good);
    }
    assert.equal(answer, 200);
  });

  await t.test('unknown kids while the issuer is up: at most one refetch per 10 s', async () => {
    const tokens = await Promise.all(Array.from({ length: FLOOD }, (_, i) => unknownKid(100 + i)));
    const { statuses, fetched, elapsedMs } = await flood(tokens);
    assert.deepEqual(new Set(statuses), new Set([401]));
    assert.ok(fetched <= 1 + Math.ceil(elapsedMs / UNKNOWN_KID_REFETCH_MS), `${String(fetched)} JWKS fetches`);
  });

  await t.test('unknown kids while the issuer rate-limits the sidecar (429): still one refetch per 10 s', async () => {
    agents.setJwksStatus(429);
    // Past the refetch interval since the last fetch, so the first unknown kid may ask once.
    await sleep(UNKNOWN_KID_REFETCH_MS + 500);
    const tokens = await Promise.all(Array.from({ length: FLOOD }, (_, i) => unknownKid(200 + i)));
    const { statuses, fetched, elapsedMs } = await flood(tokens);
    assert.deepEqual(new Set(statuses), new Set([401]));
    // Before: every unknown kid refetched (25 fetches, each answered 429), since only a successful fetch
    // started the 10 s interval.
    assert.ok(fetched <= 1 + Math.ceil(elapsedMs / UNKNOWN_KID_REFETCH_MS), `${String(fetched)} JWKS fetches`);
  });

  await t.test('the cached keys still serve their tokens while the issuer refuses (429)', async () => {
    assert.equal(await status(good), 200);
  });

  await t.test('the upstream received only the accepted requests; no token text is logged', async () => {
    assert.equal(received, 2);
    const records = await sidecar.settledRecords();
    const failures = records.filter((r) => r.record.type === 'auth.failure');
    assert.ok(failures.length >= 3 * FLOOD, `${String(failures.length)} auth.failure records`);
    const signature = good.slice(good.lastIndexOf('.') + 1);
    assert.ok(!sidecar.logs().includes(signature), 'a token signature in the sidecar log');
  });
});
