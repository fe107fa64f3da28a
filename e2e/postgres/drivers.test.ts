// Drivers of other languages through the sidecar, unchanged: psycopg 3 (Python, on libpq) and pgJDBC
// (Java, its own protocol implementation). Each runs a fixed script as a child process
// (e2e/postgres/drivers/) that prints one JSON line per step; the test asserts every step and the audit
// trail. The drivers come from scripts/drivers.sh (`make drivers`), linked under .tools/drivers; when
// they are missing the tests fail, never skip.
import { carriesCommandOutcome } from '@chaperone/api';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { AccessPolicySpec, AuditRecord } from '@chaperone/api';
import { ALLOW_ALL, READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { PGJDBC_JAR, passed, PYTHON, requireDriver, runClient, type ClientRun } from '../harness/driver-clients.ts';

const WRITER = 'system:serviceaccount:ci:writer';
const READER = 'system:serviceaccount:ci:reader';
const LOADER = 'system:serviceaccount:ci:loader';

/** Everything for the writer, reads only for the reader; a subject no policy covers is denied. */
const POLICIES: Record<string, AccessPolicySpec> = {
  'ci-writer': { ...ALLOW_ALL, subjects: [{ subject: WRITER }] },
  'ci-reader': { ...READ_ONLY, subjects: [{ subject: READER }] },
};

const CLIENTS = join(REPO_ROOT, 'e2e', 'postgres', 'drivers');

/** Asserts a denial step: 42501 from the sidecar, and the same connection answered a query afterwards. */
function assertDenied(run: ClientRun, name: string): void {
  const step = passed(run, name);
  assert.equal(step.denied, true, `${name}: the statement was not denied: ${JSON.stringify(step)}`);
  assert.equal(step.sqlstate, '42501', `${name}: ${JSON.stringify(step)}`);
  assert.match(String(step.message), /chaperone: permission denied by policy default\/ci-reader, rule default/);
  assert.equal(step.after, 42, `${name}: the connection was not usable after the denial`);
}

function assertCancelled(run: ClientRun): void {
  const cancel = passed(run, 'cancel');
  assert.equal(cancel.cancelled, true, `pg_sleep(30) was not cancelled: ${JSON.stringify(cancel)}`);
  assert.equal(cancel.sqlstate, '57014');
  assert.ok(Number(cancel.cancelRequests) >= 1, 'the driver sent a CancelRequest');
  assert.equal(cancel.after, 'usable after cancel');
}

/** A sidecar with the writer/reader policies in front of a fresh database of this test's own. */
async function driverSidecar(t: TestContext): Promise<RunningTestSidecar> {
  return startTestSidecar(t, { policies: POLICIES, database: await createTestDatabase(t) });
}

async function clientEnv(sidecar: RunningTestSidecar, applicationName: string): Promise<NodeJS.ProcessEnv> {
  const writer = await sidecar.issuer.sign({ sub: WRITER });
  const reader = await sidecar.issuer.sign({ sub: READER });
  return sidecar.libpqEnv(writer, { PGAPPNAME: applicationName, CHAPERONE_READER_TOKEN: reader });
}

type SessionRecord = ReturnType<RunningTestSidecar['records']>[number];

/** The outcome record of a decided command, from the same session's trail. */
function outcomeOf(records: readonly SessionRecord[], decision: AuditRecord): AuditRecord | undefined {
  const session = records.find((r) => r.record === decision)?.session.sessionId;
  return records.find(
    (r) =>
      r.session.sessionId === session &&
      carriesCommandOutcome(r.record) &&
      r.record.command?.id === decision.command?.id,
  )?.record;
}

test('psycopg 3: server-side binding, pipelines, savepoints, COPY, LISTEN/NOTIFY, cancel and denials', async (t) => {
  requireDriver(PYTHON, 'psycopg (the Python virtualenv)');
  const sidecar = await driverSidecar(t);
  const run = await runClient(
    PYTHON,
    [join(CLIENTS, 'psycopg_client.py')],
    await clientEnv(sidecar, 'drivers-psycopg'),
  );

  const connect = passed(run, 'connect');
  assert.equal(connect.applicationName, 'drivers-psycopg');
  passed(run, 'create');
  assert.deepEqual(passed(run, 'insert_params').rowcounts, [1, 1]);
  assert.equal(passed(run, 'executemany').rowcount, 5);
  const pipeline = passed(run, 'pipeline');
  assert.deepEqual(pipeline.returned, [30, 31]);
  assert.equal(pipeline.count, 2);
  assert.equal(pipeline.after, 'after-sync');
  const savepoint = passed(run, 'savepoint');
  assert.equal(savepoint.countInside, 2);
  assert.equal(savepoint.statusBeforeCommit, 'INTRANS');
  assert.deepEqual(savepoint.ids, [10, 12]);
  assert.deepEqual(passed(run, 'select').rows, [
    [1, 'alpha', '1.50'],
    [2, "o'brien ü", null],
    [3, 'gamma', '-3.25'],
  ]);
  const copyIn = passed(run, 'copy_in');
  assert.equal(copyIn.rowcount, 3);
  assert.equal(copyIn.count, 3);
  assert.equal(copyIn.sum, '75.75');
  const copyOut = passed(run, 'copy_out');
  assert.deepEqual(copyOut.rows, [
    ['100', 'copied\t100'],
    ['101', 'copied\t101'],
    ['102', 'copied\t102'],
  ]);
  const notify = passed(run, 'notify');
  const channel = 'drivers_psycopg_channel';
  assert.deepEqual(
    (notify.notifications as { channel: string; payload: string }[]).map((n) => [n.channel, n.payload]),
    [
      [channel, 'hello from psycopg'],
      [channel, 'second'],
    ],
  );
  assertCancelled(run);
  assert.equal(passed(run, 'reader_connect').count, 15);
  assertDenied(run, 'denied_params');
  assertDenied(run, 'denied_simple');
  const denied = passed(run, 'denied_pipeline');
  assert.equal(denied.sqlstate, '42501');
  assert.equal(denied.before, 'before');
  assert.equal(denied.after, 'after');
  assert.equal(denied.unchanged, 0);
  passed(run, 'close');

  // The audit trail: the cancelled sleep and the reader's denials, with the parameters as bound.
  const all = await sidecar.settledRecords();
  const records = all.map((r) => r.record);
  const sleep = records.find((r) => r.type === 'command.decision' && r.command?.text === 'select pg_sleep(30)');
  assert.ok(sleep, 'no decision for select pg_sleep(30)');
  assert.deepEqual(
    { status: outcomeOf(all, sleep)?.outcome?.status, code: outcomeOf(all, sleep)?.outcome?.code },
    { status: 'cancelled', code: '57014' },
  );
  // The reader's denied insert (extended protocol) is refused and recorded at Parse, and its Execute, which
  // the server skips to the Sync, is refused and recorded again with the Parse's reason (docs/postgres-engine.md,
  // "Commands skipped behind a refusal"); it never ran, so there are no parameters to record.
  const deniedInserts = records.filter(
    (r) =>
      r.type === 'command.decision' &&
      r.command?.text === 'insert into drivers_psycopg (id, name) values ($1, $2)' &&
      r.decision?.result === 'deny',
  );
  assert.equal(deniedInserts.length, 2, 'the reader insert is refused at Parse and at its Execute');
  for (const denied of deniedInserts) {
    assert.equal(denied.command?.parameters, undefined);
    assert.equal(outcomeOf(all, denied)?.outcome?.status, 'denied');
  }
  // The writer's prepared inserts were recorded at execution, each with its own bound parameters.
  const bound = records
    .filter(
      (r) =>
        r.type === 'command.decision' &&
        r.command?.text === 'insert into drivers_psycopg (id, name, amount) values ($1, $2, $3)' &&
        r.command.parameters !== undefined,
    )
    .map((r) => r.command?.parameters?.[1]);
  assert.deepEqual(bound.slice(0, 3), ['alpha', "o'brien ü", 'gamma']);
});

test('pgJDBC: prepared statements, batches, savepoints, CopyManager, notifications, cancel and denials', async (t) => {
  requireDriver(PGJDBC_JAR, 'the PostgreSQL JDBC driver');
  const sidecar = await driverSidecar(t);
  const run = await runClient(
    'java',
    ['-cp', PGJDBC_JAR, join(CLIENTS, 'JdbcClient.java')],
    await clientEnv(sidecar, 'drivers-jdbc'),
  );

  assert.equal(passed(run, 'connect').applicationName, 'drivers-jdbc');
  passed(run, 'create');
  assert.deepEqual(passed(run, 'insert_prepared').rowcounts, [1, 1, 1]);
  assert.deepEqual(passed(run, 'batch').rowcounts, [1, 1, 1, 1, 1]);
  assert.equal(passed(run, 'statement').rowcount, 1);
  const savepoint = passed(run, 'savepoint');
  assert.equal(savepoint.countInside, 2);
  assert.deepEqual(savepoint.ids, [10, 12]);
  const rows = passed(run, 'select').rows as unknown[][];
  assert.deepEqual(
    rows.slice(0, 3).map((r) => r.slice(0, 2)),
    [
      [1, 'alpha'],
      [2, "o'brien ü"],
      [3, 'gamma'],
    ],
  );
  const copyIn = passed(run, 'copy_in');
  assert.equal(copyIn.rowcount, 3);
  assert.equal(copyIn.count, 3);
  const copyOut = passed(run, 'copy_out');
  assert.equal(copyOut.rowcount, 3);
  assert.equal(copyOut.text, '100\tcopied\\t100\n101\tcopied\\t101\n102\tcopied\\t102\n');
  const notifications = passed(run, 'notify').notifications as unknown[];
  assert.ok(notifications.length >= 2, `expected two notifications, got ${JSON.stringify(notifications)}`);
  assertCancelled(run);
  passed(run, 'reader_connect');
  for (const step of ['denied_prepared', 'denied_statement', 'denied_batch']) {
    const denied = passed(run, step);
    assert.equal(denied.denied, true, `${step}: ${JSON.stringify(denied)}`);
    assert.equal(denied.sqlstate, '42501', `${step}: ${JSON.stringify(denied)}`);
    assert.match(String(denied.message), /chaperone: permission denied by policy default\/ci-reader/);
  }
  const inTransaction = passed(run, 'denied_in_transaction');
  assert.equal(inTransaction.sqlstate, '42501');
  assert.equal(inTransaction.afterDenial, '25P02');
  assert.equal(inTransaction.afterRollback, inTransaction.before);
  passed(run, 'close');

  // The audit trail: each prepared execution decided with its bound parameters, the batch too.
  const all = await sidecar.settledRecords();
  const records = all.map((r) => r.record);
  const bound = records
    .filter(
      (r) =>
        r.type === 'command.decision' &&
        r.command?.text === 'insert into drivers_jdbc (id, name, amount) values ($1, $2, $3)' &&
        r.command.parameters !== undefined,
    )
    .map((r) => r.command?.parameters);
  assert.equal(bound.length, 8, 'three single inserts and five batch rows');
  const first = records.find(
    (r) =>
      r.type === 'command.decision' &&
      r.command?.text === 'insert into drivers_jdbc (id, name, amount) values ($1, $2, $3)' &&
      r.command.parameters?.[1] === 'alpha',
  );
  assert.ok(first);
  assert.deepEqual(
    { status: outcomeOf(all, first)?.outcome?.status, rows: outcomeOf(all, first)?.outcome?.rows },
    { status: 'success', rows: 1 },
  );
  assert.deepEqual(
    bound.slice(3).map((p) => p?.[1]),
    ['batch-20', 'batch-21', 'batch-22', 'batch-23', 'batch-24'],
  );
  const deniedInsert = records.filter(
    (r) =>
      r.type === 'command.decision' &&
      r.command?.text === 'insert into drivers_jdbc (id, name) values ($1, $2)' &&
      r.decision?.result === 'deny',
  );
  assert.equal(deniedInsert.length, 2, 'the reader insert is refused at Parse and at its Execute');
  for (const denied of deniedInsert) assert.equal(outcomeOf(all, denied)?.outcome?.status, 'denied');
});

test('libpq extended-protocol COPY FROM STDIN keeps the sidecar in step: later denied statements stay denied', async (t) => {
  requireDriver(PYTHON, 'psycopg (the Python virtualenv)');
  const database = await createTestDatabase(t, 'create table copy_target (id int)');
  const sidecar = await startTestSidecar(t, {
    database,
    policies: {
      'ci-loader': {
        resources: { names: ['test-db'] },
        subjects: [{ subject: LOADER }],
        rules: [
          {
            name: 'load-and-read',
            decision: 'allow',
            match: { sql: { statementKinds: ['copy-from', 'select'], relations: ['public.copy_target'] } },
          },
        ],
        defaultDecision: 'deny',
      },
    },
  });
  const token = await sidecar.issuer.sign({ sub: LOADER });
  const run = await runClient(
    PYTHON,
    [join(CLIENTS, 'libpq_extended_copy.py')],
    sidecar.libpqEnv(token, { CHAPERONE_COPY_TABLE: 'copy_target' }),
  );
  assert.equal(passed(run, 'copy_in_extended').command, 'COPY 3');
  const outcome = (name: string) => {
    const step = passed(run, name);
    return { sqlstate: step.sqlstate, command: step.command };
  };
  // All at once, so a failure shows the whole exchange: today the first DELETE comes back as the
  // upstream's syntax error for the substituted statement (42601) and the second one runs (DELETE 3).
  assert.deepEqual(
    { first: outcome('denied_delete_1'), second: outcome('denied_delete_2'), rows: passed(run, 'count').count },
    { first: { sqlstate: '42501', command: '' }, second: { sqlstate: '42501', command: '' }, rows: 3 },
  );
  const deletes = (await sidecar.settledRecords())
    .map((r) => r.record)
    .filter((r) => r.type === 'command.decision' && r.command?.text === 'delete from copy_target');
  assert.deepEqual(
    deletes.map((r) => r.decision?.result),
    ['deny', 'deny'],
  );
});
