// Timeouts an agent must not lift (docs/postgres-engine.md, "Timeouts a read-only session cannot lift"). An
// agent's idle read transaction holds ACCESS SHARE on what it read: ALTER TABLE, TRUNCATE, VACUUM FULL and
// DROP wait for it, and every later reader and writer of the table queues behind them. In a read-only
// session the sidecar sets statement_timeout, lock_timeout and idle_in_transaction_session_timeout to the
// smaller of the database's own value and its bound (readOnlyTimeouts), and refuses every statement that
// changes them (42501, the sidecar's own deny record) and every startup value that is not stricter. Judged on
// the server: the settings the backend reports through SHOW and pg_settings, pg_db_role_setting, the idle
// transaction ended by the server (25P03, its backend gone from pg_stat_activity) and a writer's ALTER TABLE
// completing. Both configurations a resource can have: a least-privilege login, and the owner login only.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { CORPUS_SCHEMA_SQL } from '../../sidecar/src/engines/postgres/analysis/write-corpus.ts';
import { READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createReaderLogin, createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';

/** The sidecar's bound of idle_in_transaction_session_timeout in this test, ms: short, so the server acts soon. */
const IDLE_BOUND_MS = 1500;

/** Every statement form that would lift a timeout: each must be refused with 42501 and change nothing. */
export const TIMEOUT_LIFTS: readonly { sql: string; why: string }[] = [
  { sql: 'SET statement_timeout = 0', why: 'SET to none' },
  { sql: "SET idle_in_transaction_session_timeout = '1h'", why: 'SET above the bound' },
  { sql: 'SET lock_timeout = 0', why: 'lock_timeout to none' },
  { sql: 'SET idle_session_timeout = 0', why: 'the database’s idle_session_timeout (no bound of the sidecar’s)' },
  { sql: 'SET SESSION "Idle_In_Transaction_Session_Timeout" TO 0', why: 'quoted mixed-case name' },
  { sql: 'set statement_timeout to 100', why: 'even a stricter SET: the pin is the value' },
  { sql: 'SET LOCAL statement_timeout = 0', why: 'SET LOCAL' },
  { sql: 'BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; SELECT 1', why: 'SET LOCAL in a block' },
  { sql: 'RESET idle_in_transaction_session_timeout', why: 'RESET returns to the login value (none)' },
  { sql: 'SET statement_timeout TO DEFAULT', why: 'DEFAULT is the login value' },
  { sql: 'SET lock_timeout FROM CURRENT', why: 'FROM CURRENT' },
  { sql: 'RESET ALL', why: 'RESET ALL' },
  { sql: 'DISCARD ALL', why: 'DISCARD ALL resets every setting' },
  { sql: "SELECT set_config('idle_in_transaction_session_timeout', '0', false)", why: 'set_config in a SELECT' },
  { sql: "SELECT pg_catalog.set_config('statement_timeout', '0', true)", why: 'qualified set_config, local' },
  { sql: "SELECT 1 WHERE set_config('lock_timeout', '0', false) IS NOT NULL", why: 'set_config in WHERE' },
  { sql: "SELECT set_config(name, '0', false) FROM pg_settings WHERE name LIKE '%timeout'", why: 'computed name' },
  { sql: "PREPARE lift AS SELECT set_config('statement_timeout', '0', false)", why: 'set_config in PREPARE' },
  { sql: "DO $$ BEGIN PERFORM set_config('statement_timeout', '0', false); END $$", why: 'DO block' },
  {
    sql: 'ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = 0',
    why: 'role default for later logins',
  },
  { sql: 'ALTER DATABASE postgres SET statement_timeout = 0', why: 'database default for later logins' },
  { sql: 'SET SESSION AUTHORIZATION DEFAULT', why: 'another session user' },
  // A held cursor's query runs at COMMIT, after PostgreSQL switched statement_timeout off: before the fix this
  // ran for the whole hour holding its ACCESS SHARE locks.
  {
    sql: 'BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT pg_sleep(3600); COMMIT',
    why: 'a WITH HOLD cursor: its query runs at COMMIT, outside statement_timeout',
  },
  { sql: 'DECLARE held CURSOR WITH HOLD FOR SELECT count(*) FROM accounts', why: 'any WITH HOLD cursor' },
];

/** Startup parameters that would lift a timeout in a read-only session: each is a FATAL 42501. */
const STARTUP_LIFTS: readonly Record<string, string>[] = [
  { options: '-c statement_timeout=0' },
  { options: '--idle-in-transaction-session-timeout=0' },
  { options: '-c idle_in_transaction_session_timeout=1h' },
  { options: '-c lock_timeout=0' },
  { options: '-cStatement_Timeout=-1' },
  { options: '-c statement_timeout=forever' },
];

/** The three timeouts, in ms, as the agent's own backend has them (pg_settings of that session). */
async function timeouts(client: pg.Client): Promise<Record<string, string>> {
  const r = await client.query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout') ORDER BY name`,
  );
  return Object.fromEntries(r.rows.map((row) => [row.name, row.setting]));
}

async function agent(
  sidecar: RunningTestSidecar,
  extra: Record<string, string> = {},
): Promise<{ client: pg.Client; ended: Promise<Error & { code?: string }> }> {
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const client = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    password: token,
    database: 'agent',
    ...extra,
  });
  // The server ending the session arrives as an error event of the idle client.
  const ended = new Promise<Error & { code?: string }>((resolve) => client.on('error', resolve));
  await client.connect();
  return { client, ended };
}

async function connectError(
  sidecar: RunningTestSidecar,
  extra: Record<string, string>,
): Promise<Error & { code?: string }> {
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const client = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    password: token,
    database: 'agent',
    ...extra,
  });
  client.on('error', () => undefined);
  const error = await client.connect().then(
    () => undefined,
    (err: unknown) => err as Error & { code?: string },
  );
  await client.end().catch(() => undefined);
  assert.ok(error !== undefined, `${JSON.stringify(extra)} was not refused`);
  return error;
}

async function roleSettings(owner: pg.Client): Promise<unknown[]> {
  return (await owner.query('SELECT setrole::text, setdatabase::text, setconfig FROM pg_db_role_setting ORDER BY 1, 2'))
    .rows;
}

async function boundedSession(t: TestContext, readerLogin: boolean): Promise<void> {
  const database = await createTestDatabase(t, CORPUS_SCHEMA_SQL);
  // The database's own limits: a statement_timeout stricter than the sidecar's bound (kept), an
  // idle_in_transaction_session_timeout looser than it (bounded).
  superuserSql(
    [
      `ALTER DATABASE ${database} SET statement_timeout = '6s'`,
      `ALTER DATABASE ${database} SET idle_in_transaction_session_timeout = '1h'`,
      `ALTER DATABASE ${database} SET idle_session_timeout = '1h'`,
    ].join('; '),
  );
  const reader = readerLogin ? createReaderLogin(t, database) : undefined;
  const sidecar = await startTestSidecar(t, {
    policies: { 'read-only': READ_ONLY },
    database,
    ...(reader === undefined ? {} : { readOnly: reader }),
    listener: { readOnlyTimeouts: { idleInTransactionSessionTimeoutMs: IDLE_BOUND_MS } },
  });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  // Ended before the database is dropped (which forces its sessions off).
  t.after(() => owner.end().catch(() => undefined));
  owner.on('error', () => undefined);
  await owner.query('SET statement_timeout = 0'); // the writer waits as long as the agent holds its lock
  const bounded = {
    idle_in_transaction_session_timeout: String(IDLE_BOUND_MS),
    lock_timeout: '0',
    statement_timeout: '6000',
    idle_session_timeout: '3600000',
  };

  await t.test('the session starts with the smaller of the database value and the bound', async () => {
    const { client } = await agent(sidecar);
    assert.deepEqual(await timeouts(client), bounded);
    const guard = await client.query<{ u: string }>('SELECT current_user AS u');
    assert.equal(guard.rows[0]?.u, reader?.user ?? directPgOptions().user);
    await client.end();
  });

  await t.test('each way of lifting a timeout is refused with 42501 and the sidecar’s own deny record', async (tt) => {
    const settingsBefore = await roleSettings(owner);
    const { client } = await agent(sidecar);
    for (const lift of TIMEOUT_LIFTS) {
      await tt.test(`${lift.why}: ${lift.sql}`, async () => {
        const error = await client.query(lift.sql).then(
          () => undefined,
          (err: unknown) => err as Error & { code?: string },
        );
        await client.query('ROLLBACK').catch(() => undefined);
        assert.ok(error !== undefined, 'not refused');
        assert.equal(error.code, '42501', error.message);
        assert.match(error.message, /^chaperone: /);
        assert.deepEqual(await timeouts(client), bounded, 'the server’s values changed');
      });
    }
    // A bound parameter names no setting the sidecar can check: refused too.
    const bound = await client
      .query({ text: 'SELECT set_config($1, $2, false)', values: ['statement_timeout', '0'] })
      .then(
        () => undefined,
        (err: unknown) => err as Error & { code?: string },
      );
    assert.equal(bound?.code, '42501', bound?.message);
    assert.deepEqual(await timeouts(client), bounded);
    await client.end();
    assert.deepEqual(await roleSettings(owner), settingsBefore, 'role and database defaults unchanged');
    const records = sidecar.records().map((r) => r.record);
    const refused = records.filter(
      (r) => r.type === 'command.decision' && r.command?.text === 'RESET idle_in_transaction_session_timeout',
    );
    assert.deepEqual(
      refused.map((r) => ({ result: r.decision?.result, rule: r.decision?.rule, policy: r.decision?.policy ?? '' })),
      [{ result: 'deny', rule: 'setting-refused', policy: '' }],
    );
  });

  await t.test('a startup value may only make a timeout stricter', async () => {
    for (const extra of STARTUP_LIFTS) {
      const error = await connectError(sidecar, extra);
      assert.equal(error.code, '42501', `${JSON.stringify(extra)}: ${error.message}`);
      assert.match(error.message, /read-only; \w+ can only be made stricter/);
    }
    // Stricter values hold, a reused upstream session included (the first one was parked at its Terminate).
    for (let i = 0; i < 2; i++) {
      const { client } = await agent(sidecar, { options: '-c statement_timeout=4s -c lock_timeout=250ms' });
      assert.deepEqual(await timeouts(client), { ...bounded, lock_timeout: '250', statement_timeout: '4000' });
      await client.end();
    }
  });

  await t.test('a long statement is ended by the server (57014), whatever it hides behind', async () => {
    const { client } = await agent(sidecar);
    for (const sql of ['EXPLAIN (ANALYZE) SELECT pg_sleep(3600)', "SELECT pg_sleep_for('1 day')"]) {
      const error = await client.query(sql).then(
        () => undefined,
        (err: unknown) => err as Error & { code?: string },
      );
      assert.equal(error?.code, '57014', `${sql}: ${error?.message ?? 'ran to the end'}`);
      assert.doesNotMatch(error.message, /^chaperone: /, 'the server’s own cancel, not a refusal');
      await client.query('ROLLBACK').catch(() => undefined);
    }
    await client.end();
  });

  await t.test(
    'an idle read transaction is ended by the server; a writer’s ALTER TABLE then gets its lock',
    async () => {
      const { client, ended } = await agent(sidecar);
      const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
      await client.query('BEGIN');
      await client.query('SELECT count(*) FROM accounts');
      // The writer asks for ACCESS EXCLUSIVE while the agent's transaction holds ACCESS SHARE: it waits for it.
      const altered = owner.query('ALTER TABLE accounts ADD COLUMN note text');
      // A statement of the transaction that would run for an hour is cancelled at the statement bound; the
      // failed transaction, idle, then ends at the idle bound.
      const slept = await client.query('SELECT pg_sleep(3600)').then(
        () => undefined,
        (err: unknown) => err as Error & { code?: string },
      );
      assert.equal(slept?.code, '57014', slept?.message);
      const error = await ended;
      assert.equal(error.code, '25P03', error.message); // idle_in_transaction_session_timeout
      await altered;
      const column = await owner.query(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'",
      );
      assert.equal(column.rowCount, 1, 'the ALTER TABLE ran');
      await poll('the agent’s backend gone', async () => {
        const r = await owner.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid]);
        return r.rowCount === 0 ? true : undefined;
      });
      await client.end().catch(() => undefined);
    },
  );
}

test('read-only timeouts, least-privilege login: bounded, not liftable, an idle transaction ends', async (t) => {
  await boundedSession(t, true);
});

test('read-only timeouts, owner login only: bounded, not liftable, an idle transaction ends', async (t) => {
  await boundedSession(t, false);
});
