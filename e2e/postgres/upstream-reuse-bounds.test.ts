// How many upstream sessions the sidecar keeps for reuse (docs/postgres-engine.md, "How many are kept"):
// by default as many as the agent connections a login had open at once, so many clients that reconnect
// find their backends instead of each logging in again (TLS handshake and SCRAM: the 150-client bench),
// and never more than that; configured bounds still cap it.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDatabase } from '../harness/databases.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { metric, parked } from './upstream-reuse-fixture.ts';

const AGENT = 'system:serviceaccount:ci:agent';

/** Opens `n` agent connections that stay open together; each reports its backend pid. */
async function connectAll(
  t: TestContext,
  sidecar: RunningTestSidecar,
  n: number,
  applicationName?: string,
): Promise<{ clients: pg.Client[]; pids: number[] }> {
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const clients = Array.from({ length: n }, () => {
    const client = new pg.Client({
      host: sidecar.host,
      port: sidecar.port,
      user: 'agent',
      password: token,
      database: 'agent',
      ...(applicationName === undefined ? {} : { application_name: applicationName }),
    });
    client.on('error', () => undefined);
    t.after(() => client.end().catch(() => undefined));
    return client;
  });
  // In groups: one client address may have maxUnauthenticatedPerSource (16) connections logging in at once.
  for (let i = 0; i < n; i += 8) await Promise.all(clients.slice(i, i + 8).map((c) => c.connect()));
  const pids = await Promise.all(
    clients.map(async (c) => Number((await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid)),
  );
  return { clients, pids };
}

const sorted = (pids: readonly number[]) => [...pids].sort((a, b) => a - b);

test('by default, 40 agent connections that reconnect at once find their 40 backends, and no more than 40 are kept', async (t) => {
  // One loop: 40 connections at once on a busy machine can start a lazy second loop, which lowers this loop's
  // share of the reuse bounds (docs/sidecar-event-loops.md, "Bounds"); the pool's own behaviour is under test.
  const sidecar = await startTestSidecar(t, { eventLoops: 1 });
  const first = await connectAll(t, sidecar, 40);
  assert.equal(new Set(first.pids).size, 40);
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 40);
  await Promise.all(first.clients.map((c) => c.end()));
  await parked(sidecar, 40);

  const again = await connectAll(t, sidecar, 40);
  assert.deepEqual(sorted(again.pids), sorted(first.pids), 'the same backends serve the reconnecting clients');
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 40, 'no new login');
  assert.equal(await metric(sidecar, 'chaperone_upstream_reuses_total'), 40);
  assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0);

  // Fewer connections take parked sessions and log in nobody; the pool never exceeds what was open at once.
  await Promise.all(again.clients.slice(0, 30).map((c) => c.end()));
  await parked(sidecar, 30);
  const few = await connectAll(t, sidecar, 20);
  assert.ok(few.pids.every((p) => first.pids.includes(p)));
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 40);
  await Promise.all([...few.clients, ...again.clients.slice(30)].map((c) => c.end()));
  await parked(sidecar, 40);
  assert.equal(await metric(sidecar, 'chaperone_upstream_discards_total'), 0);
  // Direct check on the server: the sidecar's login holds 40 backends, the ones it logged in.
  const holder = await connectAll(t, sidecar, 1);
  const held = await holder.clients[0]?.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY($1::int[])`,
    [first.pids],
  );
  assert.equal(Number(held?.rows[0]?.n), 40, 'the 39 parked and the one serving this query');
});

test('configured bounds still cap what is kept: past maxParked a released session is closed', async (t) => {
  const sidecar = await startTestSidecar(t, { listener: { upstreamReuse: { maxParked: 5 } } });
  const all = await connectAll(t, sidecar, 12);
  await Promise.all(all.clients.map((c) => c.end()));
  await parked(sidecar, 5);
  await poll('7 sessions closed as the pool was full', async () =>
    (await metric(sidecar, 'chaperone_upstream_discards_total', { reason: 'full' })) === 7 ? true : undefined,
  );
  const again = await connectAll(t, sidecar, 12);
  assert.equal(again.pids.filter((p) => all.pids.includes(p)).length, 5, 'the five parked backends are reused');
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 19);
});

test("parked sessions give their slots back when another login finds the server's connection slots taken", async (t) => {
  // The database admits 3 connections; 3 parked sessions of one login (application_name "first") fill it.
  const database = await createTestDatabase(t);
  superuserSql(`ALTER DATABASE ${database} CONNECTION LIMIT 3`);
  const sidecar = await startTestSidecar(t, { database });
  const first = await connectAll(t, sidecar, 3, 'first');
  await Promise.all(first.clients.map((c) => c.end()));
  await parked(sidecar, 3);

  // Another login (another key) gets 53300 from the server: the sidecar closes the parked sessions and
  // logs in again instead of passing the refusal on.
  const second = await connectAll(t, sidecar, 1, 'second');
  assert.ok(!first.pids.includes(second.pids[0] ?? -1), 'a new backend, not a parked one of the other login');
  assert.equal(await metric(sidecar, 'chaperone_upstream_discards_total', { reason: 'slots' }), 3);
  assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0);

  // With nothing parked, the limit is the server's again: the 4th connection gets its 53300.
  await connectAll(t, sidecar, 2, 'second');
  await assert.rejects(
    connectAgent(sidecar, { sub: AGENT }, { ignoreErrors: true }),
    (err: { code?: string }) => err.code === '53300',
  );
});
