// Lazily started event loops (lazyEventLoops, docs/sidecar-event-loops.md "Lazily started loops") against a
// real PostgreSQL with pg clients: with `eventLoops` unset the sidecar serves on one loop, starts a second
// when the first is busy with enough connections, the second takes new connections (per-loop metrics) and
// audits them into the one JSON-lines file that `kubectl chaperone audit verify` finds verified as one pod
// chain; an idle lazily started loop is stopped again without cutting a connection and the counters stay
// summed; a burst of logins starts one at once, a storm of short connections does not; a pinned
// `eventLoops: 1` never starts one. Asserted on the sidecar's own metrics and logs; the
// deadlines only bound a failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import type pg from 'pg';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { connect, samples } from './event-loops-fixture.ts';

const CLI = join(REPO_ROOT, 'cli', 'src', 'bin', 'kubectl-chaperone.ts');
const WAIT = 30_000;

const loopsRunning = async (sidecar: RunningTestSidecar) => (await samples(sidecar, 'chaperone_event_loops')).get('');

/** Waits until `check` holds (polling), or fails with `what` once WAIT has passed. */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT;
  while (!(await check())) {
    assert.ok(Date.now() < deadline, what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Keeps every client busy with short statements until `stop.done` (the main loop's utilisation rises). */
function keepBusy(clients: pg.Client[], stop: { done: boolean }): Promise<void> {
  return Promise.all(
    clients.map(async (c) => {
      while (!stop.done) await c.query('select 1');
    }),
  ).then(() => undefined);
}

test('lazy event loops: a busy loop starts a second, which takes new connections into the same verified file; idle, it stops', async (t) => {
  // Low thresholds so that a handful of test clients are "busy" enough: any utilisation over 5 % with 4 open.
  const sidecar = await startTestSidecar(t, {
    lazyEventLoops: { startAtConnections: 4, busyUtilisation: 0.05, stopAfterIdleSeconds: 2 },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:lazy' });
  // At rest: one loop, no worker loop started.
  assert.equal(await loopsRunning(sidecar), 1);
  assert.equal((await samples(sidecar, 'chaperone_event_loop_starts_total')).size, 0);

  const first = await Promise.all(Array.from({ length: 4 }, () => connect(sidecar, token)));
  const stop = { done: false };
  const busy = keepBusy(first, stop);
  await until('no second loop started while the first was busy', async () => (await loopsRunning(sidecar)) === 2);
  stop.done = true;
  await busy;
  assert.match(sidecar.logs(), /main event loop busy: starting another/);
  assert.deepEqual([...(await samples(sidecar, 'chaperone_event_loop_starts_total'))], [['{trigger="busy"}', 1]]);
  // Open connections per loop, read from the shared counts: the main loop's 4 clients, none on loop 1 yet.
  assert.deepEqual(
    [...(await samples(sidecar, 'chaperone_event_loop_open_connections'))],
    [
      ['{loop="0"}', 4],
      ['{loop="1"}', 0],
    ],
  );

  // New connections: the kernel spreads them over both loops' sockets; bursts of 4 until loop 1 has some.
  const later: pg.Client[] = [];
  const onLoop = async (loop: number) =>
    (await samples(sidecar, 'chaperone_event_loop_connections_total')).get(
      `{listener="test-db",loop="${String(loop)}"}`,
    ) ?? 0;
  for (let burst = 0; burst < 10 && (await onLoop(1)) === 0; burst++) {
    later.push(...(await Promise.all(Array.from({ length: 4 }, () => connect(sidecar, token)))));
  }
  assert.ok((await onLoop(1)) > 0, 'no connection landed on the lazily started loop in 10 bursts of 4');
  const clients = [...first, ...later];
  for (const [i, c] of clients.entries()) {
    assert.equal((await c.query<{ n: number }>('select $1::int as n', [i])).rows[0]?.n, i);
  }
  const total = clients.length;
  assert.equal((await onLoop(0)) + (await onLoop(1)), total);
  assert.equal((await samples(sidecar, 'chaperone_connections_total')).get('{listener="test-db"}'), total);
  const open = await samples(sidecar, 'chaperone_event_loop_open_connections');
  assert.equal((open.get('{loop="0"}') ?? 0) + (open.get('{loop="1"}') ?? 0), total);
  assert.equal(open.get('{loop="1"}'), await onLoop(1));
  await Promise.all(clients.map((c) => c.end()));

  // Every session, on either loop, in the one file; verify finds one pod chain.
  await until('not every session ended in the audit file', async () =>
    Promise.resolve(sidecar.records().filter((r) => r.record.type === 'session.end').length >= total),
  );
  const records = await sidecar.settledRecords();
  assert.equal(new Set(records.map((r) => r.session.sessionId)).size, total);
  const run = spawnSync(process.execPath, [CLI, 'audit', 'verify', sidecar.auditFile, '-o', 'json'], {
    encoding: 'utf8',
  });
  assert.equal(run.status, 0, run.stdout + run.stderr);
  const report = JSON.parse(run.stdout) as { verified: boolean; notes: { kind: string }[] };
  assert.equal(report.verified, true);
  assert.deepEqual(
    report.notes.filter((n) => n.kind !== 'no-session-end'),
    [],
  );
  assert.equal(
    records.filter((r) => r.record.seq === 1 && r.record.prevHash.startsWith('sha256:0000')).length,
    1,
    'one session links to genesis',
  );

  // No connection on it for 2 s and the main loop idle: the lazily started loop is drained and stopped.
  await until('the idle lazily started loop was not stopped', async () => (await loopsRunning(sidecar)) === 1);
  assert.match(sidecar.logs(), /event loop stopped/);
  // Its counts stay in the sums (counters never go down), and the main loop serves alone again.
  assert.equal((await onLoop(0)) + (await onLoop(1)), total);
  const fresh = await connect(sidecar, token);
  assert.equal((await fresh.query<{ ok: string }>("select 'alone' as ok")).rows[0]?.ok, 'alone');
  await fresh.end();
  assert.equal((await onLoop(0)) + (await onLoop(1)), total + 1);
  assert.equal(sidecar.logs().includes('an event loop failed'), false);
});

test('lazy event loops: a pinned eventLoops: 1 never starts a second loop, however busy', async (t) => {
  const sidecar = await startTestSidecar(t, {
    eventLoops: 1,
    lazyEventLoops: { startAtConnections: 1, busyUtilisation: 0, stopAfterIdleSeconds: 2 },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:pinned' });
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(sidecar, token)));
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
  const stop = { done: false };
  const busy = keepBusy(clients, stop);
  // Busy for as many samples as the lazy test needed at most to start one (it samples every 500 ms).
  let statements = 0;
  while (statements < 2_000) {
    statements =
      (await samples(sidecar, 'chaperone_statements_total')).get('{listener="test-db",decision="allow"}') ?? 0;
    await new Promise((r) => setTimeout(r, 200));
  }
  stop.done = true;
  await busy;
  const perLoop = await samples(sidecar, 'chaperone_event_loop_connections_total');
  assert.deepEqual([...perLoop.keys()], ['{listener="test-db",loop="0"}']);
  // No worker loop exists to count (the gauges are the worker loops' manager's, made only with more loops).
  assert.equal((await samples(sidecar, 'chaperone_event_loop_starts_total')).size, 0);
  assert.equal(sidecar.logs().includes('starting another'), false);
  assert.equal(sidecar.logs().includes('event loop started'), false);
});

test('lazy event loops: a burst of logins starts a second loop at once; a storm of short connections does not', async (t) => {
  // busyUtilisation 1: the half-second sample never starts one here, so a start is the burst's.
  const sidecar = await startTestSidecar(t, {
    lazyEventLoops: { startAtConnections: 8, startOnLogins: 8, busyUtilisation: 1, stopAfterIdleSeconds: 0 },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:burst' });
  // A storm as pgbench -C makes it: 40 logins one after the other, never 8 open at once.
  for (let i = 0; i < 40; i++) {
    const c = await connect(sidecar, token);
    await c.query('select 1');
    await c.end();
  }
  assert.equal((await samples(sidecar, 'chaperone_connections_total')).get('{listener="test-db"}'), 40);
  assert.equal(await loopsRunning(sidecar), 1);
  assert.equal((await samples(sidecar, 'chaperone_event_loop_starts_total')).size, 0);
  assert.equal(sidecar.logs().includes('starting another'), false);

  // 12 logins at once (up to 5 such bursts, should one be spread over more than half a second), every one
  // served: maxUnauthenticatedPerSource (16) holds across the loops and stays whole while the second starts
  // (when it was split into per-loop shares, the main loop's fell to 8 mid-burst: 53300).
  const clients: pg.Client[] = [];
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
  for (let burst = 0; burst < 5 && !sidecar.logs().includes('burst of logins'); burst++) {
    clients.push(...(await Promise.all(Array.from({ length: 12 }, () => connect(sidecar, token)))));
  }
  await until('the burst of logins did not start a second loop', async () => (await loopsRunning(sidecar)) === 2);
  assert.deepEqual([...(await samples(sidecar, 'chaperone_event_loop_starts_total'))], [['{trigger="logins"}', 1]]);
  assert.match(sidecar.logs(), /burst of logins: starting another event loop/);
  assert.ok(((await samples(sidecar, 'chaperone_event_loop_start_seconds')).get('') ?? 0) > 0);
  const readyAt = (await samples(sidecar, 'chaperone_event_loop_last_ready_timestamp_seconds')).get('') ?? 0;
  assert.ok(readyAt > 0 && readyAt <= Date.now() / 1000);
  // The clients of the burst are served (on the main loop: they were accepted before the second listened).
  for (const [i, c] of clients.entries()) {
    assert.equal((await c.query<{ n: number }>('select $1::int as n', [i])).rows[0]?.n, i);
  }
  const open = await samples(sidecar, 'chaperone_event_loop_open_connections');
  assert.equal((open.get('{loop="0"}') ?? 0) + (open.get('{loop="1"}') ?? 0), clients.length);
});
