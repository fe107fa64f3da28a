// A sidecar with two event loops (eventLoops: 2, docs/sidecar-event-loops.md) against real clients: pg
// connections land on both loops (per-loop metrics, summed on /metrics), every session's records reach the
// one JSON-lines file and `kubectl chaperone audit verify` finds one pod chain, a CancelRequest that lands on
// the loop that does not serve its connection still cancels pg_sleep, maxConnections and
// maxUnauthenticatedPerSource hold for the listener across loops, and a new policy bundle reaches the
// connections of both loops.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import type pg from 'pg';
import { startTestSidecar, writePolicyBundle, type RunningTestSidecar } from '../harness/sidecar.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { connect, samples } from './event-loops-fixture.ts';
import { errorFields, parseBackend, RawClient, startupMessage } from './raw-client.ts';

const CLI = join(REPO_ROOT, 'cli', 'src', 'bin', 'kubectl-chaperone.ts');

type PgError = Error & { code?: string };

/** A CancelRequest for `client`'s key, on a new connection (as libpq sends it). */
function sendCancel(sidecar: RunningTestSidecar, client: pg.Client): Promise<void> {
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processID, 8);
  packet.writeInt32BE(secretKey, 12);
  return new Promise((resolve, reject) => {
    const socket = connectTcp(sidecar.port, sidecar.host, () => socket.end(packet));
    socket.on('error', reject);
    socket.on('close', () => resolve());
  });
}

test('eventLoops 2: connections land on both loops, every session is recorded in one file, verify finds one pod chain', async (t) => {
  const sidecar = await startTestSidecar(t, { eventLoops: 2 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:loops' });
  // 16 logins at once from one address: maxUnauthenticatedPerSource (16) holds across both loops together.
  const clients = await Promise.all(Array.from({ length: 16 }, () => connect(sidecar, token)));
  for (const [i, c] of clients.entries()) {
    assert.equal((await c.query<{ n: number }>('select $1::int as n', [i])).rows[0]?.n, i);
    await c.query('select 1');
  }
  const perLoop = await samples(sidecar, 'chaperone_event_loop_connections_total');
  assert.equal(perLoop.get('{listener="test-db",loop="0"}') !== undefined, true, [...perLoop].join());
  const loop0 = perLoop.get('{listener="test-db",loop="0"}') ?? 0;
  const loop1 = perLoop.get('{listener="test-db",loop="1"}') ?? 0;
  assert.ok(loop0 > 0 && loop1 > 0, `connections per loop: ${String(loop0)}, ${String(loop1)}`);
  assert.equal(loop0 + loop1, 16);
  // Summed over the loops on the one endpoint.
  assert.equal((await samples(sidecar, 'chaperone_connections_total')).get('{listener="test-db"}'), 16);
  assert.equal((await samples(sidecar, 'chaperone_connections_active')).get('{listener="test-db"}'), 16);
  await Promise.all(clients.map((c) => c.end()));
  const deadline = Date.now() + 15_000;
  while (sidecar.records().filter((r) => r.record.type === 'session.end').length < 16 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const records = await sidecar.settledRecords();
  assert.equal(new Set(records.map((r) => r.session.sessionId)).size, 16);
  assert.equal(records.filter((r) => r.record.type === 'command.decision').length, 32);

  const run = spawnSync(process.execPath, [CLI, 'audit', 'verify', sidecar.auditFile, '-o', 'json'], {
    encoding: 'utf8',
  });
  assert.equal(run.status, 0, run.stdout + run.stderr);
  const report = JSON.parse(run.stdout) as { verified: boolean; notes: { kind: string }[] };
  assert.equal(report.verified, true);
  // One chain: every session but the first links to another session's first record in the file, no two to the same.
  assert.deepEqual(
    report.notes.filter((n) => n.kind !== 'no-session-end'),
    [],
  );
  const firsts = records.filter((r) => r.record.seq === 1);
  assert.equal(
    firsts.filter((r) => r.record.prevHash.startsWith('sha256:0000')).length,
    1,
    'one session links to genesis',
  );
});

test('eventLoops 2: a CancelRequest cancels pg_sleep whichever loop it lands on', async (t) => {
  const sidecar = await startTestSidecar(t, { eventLoops: 2 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:loops' });
  const handedOver = () =>
    sidecar
      .logs()
      .split('\n')
      .filter((l) => l.includes('cancel request from another event loop')).length;
  // A cancel lands on either loop (the kernel hashes its connection): rounds until one crossed loops.
  let rounds = 0;
  while (handedOver() === 0 && rounds < 5) {
    rounds += 1;
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect(sidecar, token)));
    const sleeps = clients.map((c) =>
      c.query('select pg_sleep(30)').then(
        () => undefined,
        (err: unknown) => err as PgError,
      ),
    );
    // Cancel once PostgreSQL runs the statements (a cancel before that would cancel nothing).
    const observer = await connect(sidecar, token);
    for (;;) {
      const r = await observer.query<{ n: string }>(
        "select count(*) as n from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
      );
      if (Number(r.rows[0]?.n) >= 8) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await Promise.all(clients.map((c) => sendCancel(sidecar, c)));
    for (const outcome of await Promise.all(sleeps)) {
      assert.equal(outcome?.code, '57014', `not cancelled: ${String(outcome)}`);
    }
    await Promise.all([...clients, observer].map((c) => c.end()));
  }
  assert.ok(handedOver() > 0, 'no cancel request crossed loops in 5 rounds of 8');
  assert.equal(sidecar.logs().includes('cancel request matches no session'), false);
});

test('eventLoops 2: maxConnections holds for the listener across loops; a fresh connection works after a close', async (t) => {
  const sidecar = await startTestSidecar(t, { eventLoops: 2, listener: { maxConnections: 4 } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:loops' });
  const settled = await Promise.allSettled(Array.from({ length: 12 }, () => connect(sidecar, token)));
  const clients = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
  const errors = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as PgError] : []));
  assert.equal(clients.length, 4, errors.map((e) => e.message).join('; '));
  for (const err of errors) assert.equal(err.code, '53300', err.message);
  const perLoop = await samples(sidecar, 'chaperone_event_loop_connections_total');
  assert.equal(
    [...perLoop.values()].reduce((a, b) => a + b, 0),
    4,
  );
  assert.equal((await samples(sidecar, 'chaperone_connections_refused_total')).get('{listener="test-db"}'), 8);

  await clients.pop()?.end();
  const deadline = Date.now() + 10_000;
  let fresh: pg.Client | undefined;
  while (fresh === undefined && Date.now() < deadline) {
    fresh = await connect(sidecar, token).catch(() => undefined);
  }
  assert.ok(fresh !== undefined, 'no fresh connection after a close');
  clients.push(fresh);
  assert.equal((await fresh.query<{ ok: string }>("select 'fresh' as ok")).rows[0]?.ok, 'fresh');
  await assert.rejects(connect(sidecar, token), (err: PgError) => err.code === '53300');
});

test('eventLoops 2: maxUnauthenticatedPerSource holds for one address across loops; after those close, new logins work', async (t) => {
  const bound = 4;
  const sidecar = await startTestSidecar(t, { eventLoops: 2, listener: { maxUnauthenticatedPerSource: bound } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:loops' });
  const accepted = async () => {
    const perLoop = await samples(sidecar, 'chaperone_event_loop_connections_total');
    return [0, 1].map((loop) => perLoop.get(`{listener="test-db",loop="${String(loop)}"}`) ?? 0);
  };
  const answers = (c: RawClient) => parseBackend(c.received, 0, true).messages;
  // Rounds of six connections from 127.0.0.1 that send their StartupMessage and never a password, until one
  // round landed on both loops (the kernel hashes each connection to one loop's socket).
  let spread = false;
  for (let round = 0; round < 5 && !spread; round++) {
    const before = await accepted();
    const clients = await Promise.all(Array.from({ length: 6 }, () => RawClient.connect(sidecar.host, sidecar.port)));
    try {
      for (const c of clients) c.write(startupMessage());
      // Each is asked for its token (admitted) or refused with a FATAL ErrorResponse.
      for (const c of clients) {
        assert.ok(await c.until(() => answers(c).some((m) => m.type === 'R' || m.type === 'E'), 30_000));
      }
      const asked = clients.filter((c) => answers(c).some((m) => m.type === 'R'));
      const refused = clients.flatMap((c) =>
        answers(c)
          .filter((m) => m.type === 'E')
          .map((m) => errorFields(m.body)),
      );
      assert.equal(asked.length, bound, `round ${String(round)}: admitted on both loops together`);
      assert.equal(refused.length, 6 - bound);
      for (const error of refused) {
        assert.equal(error.severity, 'FATAL');
        assert.equal(error.code, '53300', error.message);
        assert.match(error.message, /too many connections from 127\.0\.0\.1 are still authenticating \(at most 4\)/);
      }
      const after = await accepted();
      spread = after.every((n, loop) => n > (before[loop] ?? 0));
    } finally {
      for (const c of clients) c.destroy();
    }
    // Closed on the sidecar's side too (their places are given back before the active count drops).
    const deadline = Date.now() + 30_000;
    while ((await samples(sidecar, 'chaperone_connections_active')).get('{listener="test-db"}') !== 0) {
      assert.ok(Date.now() < deadline, 'the closed connections are still active');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  assert.ok(spread, 'no round of six connections landed on both loops in 5 rounds');
  // Every place is free again: `bound` logins at once, wherever they land, are served.
  const clients = await Promise.all(Array.from({ length: bound }, () => connect(sidecar, token)));
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
  for (const [i, c] of clients.entries()) {
    assert.equal((await c.query<{ n: number }>('select $1::int as n', [i])).rows[0]?.n, i);
  }
});

test('eventLoops 2: a new policy bundle reaches the connections of both loops', async (t) => {
  const sidecar = await startTestSidecar(t, { eventLoops: 2 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:loops' });
  const clients: pg.Client[] = [];
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
  // Connections on both loops (the kernel picks): bursts of 4 until each loop has some.
  for (let burst = 0; burst < 10; burst++) {
    clients.push(...(await Promise.all(Array.from({ length: 4 }, () => connect(sidecar, token)))));
    if ((await samples(sidecar, 'chaperone_event_loop_connections_total')).size === 2) break;
  }
  const perLoop = await samples(sidecar, 'chaperone_event_loop_connections_total');
  assert.equal(perLoop.size, 2, [...perLoop].join());
  for (const c of clients) await c.query('select 1');
  await writePolicyBundle(sidecar.bundleDir, 'allow-all', {
    resources: { names: ['test-db'] },
    rules: [],
    defaultDecision: 'deny',
  });
  const deadline = Date.now() + 20_000;
  for (const c of clients) {
    for (;;) {
      const denied = await c.query('select 1').then(
        () => false,
        (err: unknown) => (err as PgError).code === '42501',
      );
      if (denied) break;
      assert.ok(Date.now() < deadline, 'the new bundle did not reach every connection');
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});
