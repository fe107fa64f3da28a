// The tenth session's red team of the SQL analysis, each attack a case, judged by what the SERVER did:
//
// - read-only: writes and session changes a read-only policy must refuse, sent through the sidecar (owner
//   login, so nothing but the sidecar stands between the agent and the data; the sidecar still pins
//   default_transaction_read_only=on). Each is refused with 42501 before it reaches PostgreSQL (its text is
//   not in the server's statement log), and the server state the attack aims at is the same afterwards:
//   rows and their xmax (row locks), the sequence, advisory locks, large objects, prepared transactions,
//   per-role settings, objects, comments, relfilenodes (CLUSTER, REINDEX, VACUUM FULL), a materialized
//   view's population, statistics resets, the configuration load time, temporary tables, an owner session
//   that pg_terminate_backend would end, the owner's notifications, and the agent session's own role,
//   read-only guard, search_path, listened channels, cursors and prepared statements.
// - masking: reads that try to get masked values in clear. The owner's idle session last ran a statement
//   holding a masked value (other sessions' statement texts: pg_stat_get_activity), and an inner FROM item
//   whose columns the lineage does not list (a function's result, a recursive CTE's SEARCH and CYCLE
//   columns) takes a name the server resolves there and the lineage resolved to a clean column of an outer
//   query. Each is masked or refused, no masked value in any encoding is in the bytes the client receives,
//   and the masked table is unchanged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { CORPUS_SCHEMA_SQL } from '../../sidecar/src/engines/postgres/analysis/write-corpus.ts';
import { READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, postgresEnv, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { authenticatedClient, errorFields, parseBackend, query, type RawClient } from './raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from '../masking/bypass-corpus.ts';

/** Owner objects the read-only attacks aim at, on top of the write corpus's schema. */
const READ_ONLY_SCHEMA_SQL = `${CORPUS_SCHEMA_SQL}
CREATE FUNCTION public.definer_write() RETURNS int LANGUAGE sql SECURITY DEFINER
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('security definer'); SELECT 1 $$;
CREATE INDEX accounts_owner_brin ON public.accounts USING brin (id);
CREATE MATERIALIZED VIEW public.accounts_mv AS SELECT id, owner FROM public.accounts WITH NO DATA;
CREATE VIEW public.accounts_view AS SELECT id, owner FROM public.accounts;
ALTER TABLE public.accounts SET (autovacuum_enabled = false);
`;

interface ReadOnlyAttack {
  readonly sql: string;
  readonly why: string;
}

const READ_ONLY_ATTACKS: readonly ReadOnlyAttack[] = [
  // Row locks write xmax; the server refuses them in a read-only transaction, the sidecar before it.
  { sql: 'SELECT * FROM accounts FOR NO KEY UPDATE NOWAIT', why: 'row locks, NOWAIT' },
  { sql: 'SELECT * FROM accounts_view FOR UPDATE', why: 'row locks through a view' },
  { sql: 'BEGIN; SELECT * FROM accounts FOR UPDATE; COMMIT', why: 'row locks in an explicit transaction' },
  { sql: 'DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts FOR UPDATE', why: 'row locks in a held cursor' },
  { sql: 'PREPARE locker AS SELECT * FROM accounts FOR SHARE', why: 'row locks in a prepared statement' },
  // The fifteenth session: row and table locks in spellings the corpora did not use.
  { sql: 'WITH l AS (SELECT * FROM accounts FOR KEY SHARE) SELECT 1', why: 'KEY SHARE in an unused CTE' },
  { sql: 'SELECT * FROM accounts, LATERAL (SELECT 1 FOR SHARE) x', why: 'a lock clause in LATERAL' },
  { sql: 'SELECT (SELECT id FROM accounts LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)', why: 'in a scalar subquery' },
  { sql: 'TABLE accounts FOR UPDATE', why: 'TABLE with a lock clause' },
  { sql: 'BEGIN; LOCK accounts', why: 'LOCK without TABLE: ACCESS EXCLUSIVE, held' },
  { sql: 'BEGIN; LOCK TABLE ONLY accounts IN ACCESS SHARE MODE', why: 'the weakest mode, ONLY' },
  { sql: 'BEGIN; LOCK accounts, audit_log IN ROW SHARE MODE NOWAIT', why: 'two tables, NOWAIT' },
  { sql: 'CHECKPOINT', why: 'a checkpoint (a superuser’s or pg_checkpoint’s)' },
  // Sequences, transaction ids, advisory locks, spelled so that a name match could miss them.
  { sql: 'SELECT "pg_catalog"."nextval"(\'accounts_seq\')', why: 'quoted, qualified nextval' },
  { sql: 'SELECT U&"\\006Eextval"(\'accounts_seq\')', why: 'nextval with a Unicode-escaped name' },
  { sql: "SELECT nextval(('accounts' || '_seq')::regclass)", why: 'nextval of a computed name' },
  { sql: "VALUES (setval('accounts_seq', 42))", why: 'setval in VALUES' },
  { sql: 'SELECT * FROM accounts WHERE false AND pg_advisory_lock(7) IS NULL', why: 'advisory lock in WHERE' },
  { sql: 'WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock_shared(7)) SELECT 1', why: 'lock in an unused CTE' },
  { sql: 'SELECT pg_current_xact_id()::text', why: 'assigns a transaction id' },
  { sql: "SELECT txid_current() FROM accounts WHERE owner = 'nobody'", why: 'transaction id over no rows' },
  // Lexing: the lock the server would take hides in quoting or comments only to a reader that lexes differently.
  { sql: `SELECT U&"!0070g_advisory_lock" UESCAPE '!' (1)`, why: 'UESCAPE identifier naming a lock function' },
  { sql: 'SELECT $x$ $y$ ; $x$; SELECT pg_advisory_lock(1)', why: 'dollar quotes with a tag inside a tag' },
  { sql: "SELECT E'\\''; SELECT pg_advisory_lock(1); --'", why: 'escaped quote in an E string' },
  {
    sql: 'SELECT 1 /* /* */ ; SELECT 2; /* */ */ ; SELECT pg_try_advisory_lock(1)',
    why: 'nested comments before a lock',
  },
  { sql: 'SELECT pg_catalog . pg_advisory_lock /**/ (1)', why: 'whitespace and a comment inside the name' },
  { sql: `SELECT U&"set\\005Fconfig"('default_transaction_read_only', 'off', false)`, why: 'escaped set_config' },
  // Other sessions and the server.
  { sql: 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()', why: 'ends others' },
  { sql: 'SELECT pg_cancel_backend(pid) FROM pg_stat_activity', why: 'cancels sessions' },
  { sql: 'SELECT pg_reload_conf()', why: 'reloads the configuration' },
  { sql: "SELECT pg_stat_reset_single_table_counters('accounts'::regclass)", why: 'resets a table’s statistics' },
  { sql: 'SELECT pg_stat_reset()', why: 'resets the database’s statistics' },
  { sql: "SELECT brin_summarize_new_values('accounts_owner_brin')", why: 'writes a BRIN index' },
  { sql: "SELECT pg_import_system_collations('public'::regnamespace)", why: 'creates collations' },
  { sql: "SELECT lo_from_bytea(4242, '\\x00')", why: 'creates a large object' },
  { sql: "SELECT lo_put(4242, 0, '\\x01')", why: 'writes a large object' },
  // Owner code that writes, called from a read.
  { sql: 'SELECT definer_write()', why: 'SECURITY DEFINER function that inserts' },
  { sql: 'SELECT count(*) FROM accounts WHERE definer_write() > 0', why: 'the same in WHERE' },
  // Prepared statements and EXPLAIN: EXPLAIN EXECUTE evaluates its arguments without ANALYZE.
  { sql: "EXPLAIN EXECUTE late(nextval('accounts_seq')::int)", why: 'EXPLAIN EXECUTE runs its arguments' },
  { sql: 'EXPLAIN (ANALYZE) EXECUTE late(definer_write())', why: 'EXPLAIN ANALYZE EXECUTE' },
  { sql: 'CREATE TABLE public.late_copy AS EXECUTE late(1)', why: 'CREATE TABLE AS EXECUTE' },
  { sql: 'SELECT 1; COPY audit_log (msg) FROM STDIN; SELECT 2', why: 'COPY FROM between two reads' },
  // Turning the guard off, changing role.
  { sql: 'BEGIN TRANSACTION READ WRITE; DELETE FROM audit_log; COMMIT', why: 'BEGIN TRANSACTION READ WRITE' },
  { sql: 'BEGIN WORK READ WRITE', why: 'BEGIN WORK READ WRITE' },
  { sql: 'START TRANSACTION READ WRITE', why: 'START TRANSACTION READ WRITE' },
  { sql: 'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE', why: 'session default read-write' },
  { sql: 'BEGIN; SET TRANSACTION READ WRITE; COMMIT', why: 'SET TRANSACTION READ WRITE' },
  { sql: 'SET LOCAL default_transaction_read_only = off', why: 'guard off, LOCAL' },
  { sql: "SELECT set_config('transaction_read_only', 'off', true)", why: 'guard off through set_config' },
  { sql: "SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)", why: 'qualified' },
  { sql: 'ALTER ROLE CURRENT_USER SET default_transaction_read_only = off', why: 'guard off for later logins' },
  { sql: "SET role = 'postgres'", why: 'SET role as a plain setting' },
  { sql: "SET session_authorization = 'postgres'", why: 'session_authorization as a plain setting' },
  { sql: 'SET "role" TO DEFAULT', why: 'quoted role, DEFAULT' },
  { sql: 'RESET session_authorization', why: 'RESET of the session user' },
  // Session state, server state, objects.
  { sql: 'DISCARD TEMP', why: 'drops temporary objects' },
  { sql: 'DISCARD PLANS', why: 'drops cached plans (a utility the analysis does not model)' },
  { sql: "LOAD 'auto_explain'", why: 'loads a shared library' },
  { sql: 'CREATE TEMP TABLE scratch (id int) ON COMMIT DROP', why: 'temporary table' },
  { sql: 'UNLISTEN *', why: 'LISTEN state' },
  { sql: 'REFRESH MATERIALIZED VIEW accounts_mv', why: 'fills a materialized view' },
  { sql: 'CLUSTER accounts USING accounts_pkey', why: 'rewrites the table' },
  { sql: 'REINDEX TABLE accounts', why: 'rewrites the indexes' },
  { sql: 'VACUUM (FULL) accounts', why: 'rewrites the table' },
  { sql: 'ANALYZE (SKIP_LOCKED) accounts', why: 'writes statistics' },
  { sql: "COMMENT ON COLUMN accounts.owner IS 'x'", why: 'COMMENT' },
  { sql: "SECURITY LABEL ON TABLE accounts IS 'x'", why: 'SECURITY LABEL (no provider: the server errors)' },
  { sql: 'GRANT SELECT ON accounts TO PUBLIC', why: 'GRANT' },
  { sql: "NOTIFY chaperone_ro, 'x'", why: 'NOTIFY to the owner' },
  { sql: "SELECT 1 FROM accounts WHERE pg_notify('chaperone_ro', owner) IS NULL", why: 'pg_notify in WHERE' },
];

/**
 * What the attacks aim at, as the owner and the superuser see it. Cluster-wide catalogues are read for this
 * test's database only: `make test` runs two files at once on one server (session-pins.test.ts sets
 * per-database settings meanwhile).
 */
async function serverState(owner: pg.Client, database: string, listenerPid: number): Promise<unknown> {
  const q = async (sql: string): Promise<unknown[]> => (await owner.query(sql)).rows;
  return {
    accounts: await q('select id, owner, balance::text, xmax::text from accounts order by id'),
    auditLog: await q('select count(*)::int as n from audit_log'),
    sequence: await q('select last_value::text, is_called from accounts_seq'),
    advisoryLocks: await q(
      "select count(*)::int as n from pg_locks where locktype = 'advisory' and database = (select oid from pg_database where datname = current_database())",
    ),
    largeObjects: await q('select count(*)::int as n from pg_largeobject_metadata'),
    preparedTransactions: await q(
      'select count(*)::int as n from pg_prepared_xacts where database = current_database()',
    ),
    relations: await q(
      `select relname, relkind, relfilenode::text, relacl::text, relispopulated from pg_class
       where relnamespace in ('public'::regnamespace) order by relname`,
    ),
    temporaryRelations: await q("select count(*)::int as n from pg_class where relpersistence = 't'"),
    collations: await q("select count(*)::int as n from pg_collation where collnamespace = 'public'::regnamespace"),
    comments: await q('select count(*)::int as n from pg_description where objoid >= 16384'),
    statisticsReset: await q('select stats_reset::text from pg_stat_database where datname = current_database()'),
    tableStatistics: await q("select vacuum_count, analyze_count from pg_stat_user_tables where relname = 'accounts'"),
    configurationLoaded: await q('select pg_conf_load_time()::text'),
    ownerSessionAlive: await q(`select count(*)::int as n from pg_stat_activity where pid = ${String(listenerPid)}`),
    roleSettings: superuserSql(
      `select setrole, setconfig::text from pg_db_role_setting
       where setdatabase in (0, (select oid from pg_database where datname = current_database())) order by 1, 2`,
      database,
    ),
  };
}

/** The statements PostgreSQL logged for `database` (log_statement = all), one entry per statement. */
function statementsLogged(database: string): string[] {
  const entries: string[] = [];
  let current: string | undefined;
  for (const line of readFileSync(postgresEnv().logFile, 'utf8').split('\n')) {
    if (/^\d{4}-\d\d-\d\d /.test(line)) {
      if (current !== undefined) entries.push(current);
      const m = new RegExp(
        `^\\S+ \\S+ \\S+ \\[\\d+\\] [^@ ]*@${database} LOG:  (?:statement|execute [^:]*): (.*)$`,
      ).exec(line);
      current = m?.[1];
    } else if (current !== undefined && line.startsWith('\t')) {
      current += `\n${line.slice(1)}`;
    }
  }
  if (current !== undefined) entries.push(current);
  return entries;
}

const SESSION_STATE_SQL = `select current_user as role, current_setting('default_transaction_read_only') as guard,
  current_setting('search_path') as search_path, (select count(*)::int from pg_listening_channels()) as listening,
  (select count(*)::int from pg_cursors) as cursors, (select count(*)::int from pg_prepared_statements) as prepared`;

test('read-only policy, owner login: each attack is refused with 42501, never reaches the server, and changes nothing', async (t) => {
  const database = await createTestDatabase(t, READ_ONLY_SCHEMA_SQL);
  superuserSql(`alter database ${database} set log_statement = 'all'`);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  t.after(() => owner.end().catch(() => undefined));
  const notifications: string[] = [];
  owner.on('notification', (n) => notifications.push(n.channel));
  await owner.query('LISTEN chaperone_ro');
  const ownerPid = Number((await owner.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid);

  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:reader' }, { endAfter: t });
  await client.query('PREPARE late(int) AS SELECT $1');
  const session = (await client.query(SESSION_STATE_SQL)).rows[0] as Record<string, unknown>;
  assert.equal(session.guard, 'on', 'the sidecar pins the read-only guard for a read-only session');
  const before = await serverState(owner, database, ownerPid);

  for (const attack of READ_ONLY_ATTACKS) {
    await t.test(`${attack.why}: ${attack.sql}`, async () => {
      await assert.rejects(client.query(attack.sql), (err: Error & { code?: string }) => {
        assert.equal(err.code, '42501', err.message);
        assert.match(err.message, /^chaperone: /);
        return true;
      });
      assert.deepEqual((await client.query(SESSION_STATE_SQL)).rows[0], session, 'the agent session changed');
      assert.deepEqual(await serverState(owner, database, ownerPid), before, 'the server state changed');
    });
  }

  const marker = `select 'end of the server-state corpus ${database}' as marker`;
  await client.query(marker);
  const logged = await poll('the server log to show the last statement', () => {
    const entries = statementsLogged(database);
    return Promise.resolve(entries.includes(marker) ? entries : undefined);
  });
  assert.deepEqual(
    READ_ONLY_ATTACKS.filter((a) => logged.some((text) => text.includes(a.sql))).map((a) => a.sql),
    [],
    'refused statements that PostgreSQL was asked to run',
  );
  await owner.query('select 1');
  assert.deepEqual(notifications, [], 'no notification reached the owner');
  await client.end();
  await owner.end();
});

interface MaskingAttack {
  readonly sql: string;
  readonly why: string;
  readonly expect: 'masked' | 'denied';
}

/** A clean outer column named like a masked one: the lineage must not resolve inner names to it. */
const OUTER = 'from (values (1)) o(email)';
const SEARCH_CTE =
  'with recursive r(e) as (select email from customers union all select e from r where false) search depth first by e set name cycle e set is_cycle using path';

const MASKING_ATTACKS: readonly MaskingAttack[] = [
  // Other sessions' statement texts: the owner's idle session last ran a statement holding a masked value.
  {
    sql: 'select query from pg_stat_get_activity(null)',
    why: 'the function behind pg_stat_activity',
    expect: 'denied',
  },
  {
    sql: 'select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b',
    why: 'per backend',
    expect: 'denied',
  },
  { sql: 'select * from pg_catalog.pg_stat_get_activity(null)', why: 'qualified, in FROM', expect: 'denied' },
  { sql: 'select s.query from pg_stat_activity s', why: 'the view itself', expect: 'denied' },
  // An inner function result holds a column the lineage did not list; an outer clean column has its name.
  {
    sql: `select (select email from jsonb_to_record((select to_jsonb(c) from customers c where id = 1)) as t(email text)) ${OUTER}`,
    why: 'column definition list',
    expect: 'masked',
  },
  {
    sql: `select (select email from json_populate_record(null::customers, (select row_to_json(c) from customers c where id = 1))) ${OUTER}`,
    why: 'record of a table type',
    expect: 'masked',
  },
  {
    sql: `select (select email from unnest(array(select c from customers c)) limit 1) ${OUTER}`,
    why: 'unnest of an array of rows has the row type’s columns',
    expect: 'masked',
  },
  {
    sql: `select (select email from rows from (jsonb_to_record((select to_jsonb(c) from customers c where id = 1)) as (email text))) ${OUTER}`,
    why: 'ROWS FROM with a column definition list',
    expect: 'masked',
  },
  {
    sql: `select (select string_agg(email, ',') from jsonb_populate_recordset(null::customers, (select jsonb_agg(c) from customers c))) ${OUTER}`,
    why: 'aggregate over a recordset',
    expect: 'masked',
  },
  {
    sql: `select o.email, x.* from (values (1)) o(email), lateral (select email from jsonb_to_record((select to_jsonb(c) from customers c where id = 2)) as t(email text)) x`,
    why: 'lateral subquery',
    expect: 'masked',
  },
  // A recursive CTE's SEARCH and CYCLE columns hold the searched values.
  {
    sql: `${SEARCH_CTE} select (select name::text from r limit 1) from products`,
    why: 'SEARCH column named like a clean outer column',
    expect: 'masked',
  },
  { sql: `${SEARCH_CTE} select path::text, is_cycle from r`, why: 'CYCLE path column', expect: 'masked' },
  { sql: `${SEARCH_CTE} select name::text from r`, why: 'SEARCH column at the top level', expect: 'masked' },
  // WITH RECURSIVE lets a CTE read a later one: products here is the CTE of emails, not the table.
  {
    sql: 'with recursive a as (select name from products), products(name) as (select email from customers) select name from a',
    why: 'forward reference in WITH RECURSIVE',
    expect: 'masked',
  },
  // Ordered-set aggregates return a value of their ordering.
  { sql: 'select mode() within group (order by email) from customers', why: 'mode()', expect: 'masked' },
  {
    sql: 'select percentile_disc(0.5) within group (order by ssn) from customers',
    why: 'percentile_disc',
    expect: 'masked',
  },
  // ts_rewrite's two-argument form runs its SQL text.
  {
    sql: "select ts_rewrite('x'::tsquery, 'select ''x''::tsquery, plainto_tsquery(''simple'', email) from customers where id = 1')",
    why: 'ts_rewrite runs SQL text',
    expect: 'denied',
  },
  // Built-ins that re-shape values: each result is masked (derived), not passed.
  {
    sql: "select array_to_string(array(select email from customers), ',')",
    why: 'array of a subquery',
    expect: 'masked',
  },
  { sql: "select format('%s', c) from customers c", why: 'whole row through format', expect: 'masked' },
  { sql: 'select xmlforest(email, ssn) from customers', why: 'xmlforest', expect: 'masked' },
  { sql: 'select xmlagg(xmlelement(name e, email)) from customers', why: 'xmlagg', expect: 'masked' },
  { sql: "select to_tsvector('simple', email) from customers", why: 'tsvector lexemes', expect: 'masked' },
  { sql: 'select email from customers group by rollup (email)', why: 'ROLLUP', expect: 'masked' },
  {
    sql: 'select * from rows from (unnest(array(select email from customers)), generate_series(1, 2))',
    why: 'ROWS FROM',
    expect: 'masked',
  },
  {
    sql: 'select nth_value(ssn, 1) over (), lag(email) over (order by id) from customers',
    why: 'window',
    expect: 'masked',
  },
  { sql: "select convert_from(convert_to(email, 'UTF8'), 'LATIN1') from customers", why: 'convert', expect: 'masked' },
  {
    sql: 'select e from customers, lateral (values (email)) v(e)',
    why: 'VALUES with an outer reference',
    expect: 'masked',
  },
  {
    sql: 'select (x).email from (select c as x from customers c) s',
    why: 'field of a whole-row column',
    expect: 'masked',
  },
  {
    sql: 'select * from unnest(array(select c from customers c))',
    why: 'unnest of an array of rows, expanded',
    expect: 'masked',
  },
  {
    sql: "select * from xmltable('/r/e' passing (select xmlelement(name r, xmlagg(xmlelement(name e, email))) from customers) columns v text path '.')",
    why: 'XMLTABLE',
    expect: 'masked',
  },
];

async function run(
  client: RawClient,
  sql: string,
): Promise<{ bytes: Buffer; messages: { type: string; body: Buffer }[] }> {
  const before = client.receivedLength;
  const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(query(sql));
  const ok = await client.until(
    () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
    30_000,
  );
  assert.ok(ok, `no ReadyForQuery after ${sql}`);
  const bytes = client.received.subarray(before);
  return { bytes, messages: parseBackend(bytes).messages };
}

test('masking: other sessions’ statement texts and names resolved in an inner FROM item never carry a masked value', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  // The owner's session, idle after a statement that holds a masked value (as pg_stat_activity shows it).
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  t.after(() => owner.end().catch(() => undefined));
  const digest = async (): Promise<unknown> =>
    (await owner.query("select md5(string_agg(c::text, ',' order by id)) as d from customers c")).rows[0];
  const before = await digest();
  await owner.query("select id from customers where email = 'alice.secret@example.com' and ssn = '123-45-6789'");

  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  for (const attack of MASKING_ATTACKS) {
    await t.test(`${attack.why}: ${attack.sql}`, async () => {
      const { bytes, messages } = await run(client, attack.sql);
      assert.equal(leakIn(bytes), undefined, 'a masked value reached the client');
      const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
      if (attack.expect === 'denied') {
        assert.deepEqual(
          errors.map((e) => [e.code, e.message.startsWith('chaperone:')]),
          [['42501', true]],
          JSON.stringify(errors),
        );
      } else {
        assert.deepEqual(errors, [], 'expected it to run');
        assert.ok(
          messages.some((m) => m.type === 'D'),
          'rows came back',
        );
      }
    });
  }
  assert.deepEqual(await digest(), before, 'the masked table changed');
  await owner.end();
});
