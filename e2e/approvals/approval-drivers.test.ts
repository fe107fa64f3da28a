// psycopg 3 and pgJDBC with a statement held at its Bind (docs/approvals.md, "The extended protocol: held
// at Bind"): each driver sends Parse, Bind, Describe, Execute and Sync for a parameterised insert; the test
// approves the first request with `kubectl chaperone approve` and denies the second, as people do. The
// driver sees the first insert run once (rowcount 1, its notice among the warnings), the second refused
// with 42501, and its session goes on; the table has exactly the approved row. (node-postgres: approvals.test.ts.)
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { runCli } from '../audit/run-cli.ts';
import { PGJDBC_JAR, passed, PYTHON, requireDriver, runClient, type ClientRun } from '../harness/driver-clients.ts';
import { poll } from '../harness/poll.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { createApprovalWorld, type ApprovalWorld } from './approval-fixture.ts';

const CLIENTS = join(REPO_ROOT, 'e2e', 'approvals', 'drivers');

/** Approves the first request the driver files and denies the second, while the driver waits on each. */
async function decideTwo(world: ApprovalWorld, note: string): Promise<string[]> {
  const decided: string[] = [];
  for (const verb of ['approve', 'deny'] as const) {
    const name = await poll(
      `a pending request of the ${note} insert`,
      async () => {
        return (await world.requests()).find(
          (r) =>
            r.status?.phase === 'Pending' &&
            r.spec.command.parameters?.includes(note) === true &&
            !decided.includes(r.metadata.name ?? ''),
        )?.metadata.name;
      },
      60_000,
    );
    const run = await runCli([verb, name, '-n', world.ns, '--kubeconfig', world.people.carol.kubeconfig]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    decided.push(name);
  }
  return decided;
}

async function heldRun(
  t: TestContext,
  world: ApprovalWorld,
  note: string,
  start: (env: NodeJS.ProcessEnv) => Promise<ClientRun>,
): Promise<ClientRun> {
  const sidecar = await world.startSidecar(t);
  const env = sidecar.libpqEnv(await world.requesterToken(sidecar));
  const before = await world.count(`payouts where note = '${note}'`);
  const running = start(env);
  const [approved, denied] = await decideTwo(world, note);
  const run = await running;
  assert.equal((await world.request(approved ?? '')).status?.phase, 'Approved');
  assert.equal((await world.request(denied ?? '')).status?.phase, 'Denied');
  assert.equal(await world.count(`payouts where note = '${note}'`), before + 1, 'only the approved insert ran');
  const refused = run.steps.get('denied');
  assert.equal(refused?.ok, false, JSON.stringify(refused));
  assert.equal(refused.sqlstate, '42501');
  assert.equal(passed(run, 'after').value, 7, 'the session goes on');
  return run;
}

test('drivers with a statement held at its Bind: psycopg 3 and pgJDBC', async (t) => {
  const world = await createApprovalWorld(t);

  await t.test('psycopg 3 (server-side binding)', async (t2) => {
    requireDriver(PYTHON, 'psycopg (the Python virtualenv)');
    const run = await heldRun(t2, world, 'psycopg', (env) =>
      runClient(PYTHON, [join(CLIENTS, 'held_psycopg.py')], env),
    );
    const approved = passed(run, 'approved');
    assert.equal(approved.rowcount, 1);
    assert.ok(Number(approved.notices) >= 1, 'the notice naming the request reached the notice handler');
  });

  await t.test('pgJDBC (PreparedStatement)', async (t2) => {
    requireDriver(PGJDBC_JAR, 'the PostgreSQL JDBC driver');
    const run = await heldRun(t2, world, 'jdbc', (env) =>
      runClient('java', ['-cp', PGJDBC_JAR, join(CLIENTS, 'HeldJdbc.java')], env),
    );
    const approved = passed(run, 'approved');
    assert.equal(approved.rowcount, 1);
    assert.ok(Number(approved.warnings) >= 1, 'the notice naming the request is among the warnings');
  });
});
