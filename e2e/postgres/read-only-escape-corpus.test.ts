// The fourteenth session's red team of the read-only guard: statements that reach owner code through
// names the statement itself spells out (a user operator in `x op ANY (subquery)`, a user domain as a
// column type of a record-returning function, of XMLTABLE or XMLSERIALIZE, or as a PREPARE parameter
// type) and transaction modes in spellings the earlier corpora did not use. The owner code takes an
// advisory lock: PostgreSQL allows that in a read-only transaction, so default_transaction_read_only is
// no guard and the session keeps the lock, a writer's DoS. Every attack is sent in both configurations a
// resource can have: (a) a least-privilege read-only login, (b) only the owner login. Each must be refused
// by the sidecar with 42501, and the server must hold no advisory lock and keep every row and the
// sequence as they were.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { CORPUS_SCHEMA_SQL } from '../../sidecar/src/engines/postgres/analysis/write-corpus.ts';
import { READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createReaderLogin, createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';

/** Owner code an application could have: a check that locks, a domain and an operator that call it. */
const ESCAPE_SCHEMA_SQL = `${CORPUS_SCHEMA_SQL}
CREATE FUNCTION public.lock_it(int) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_try_advisory_lock($1) $$;
CREATE DOMAIN public.locking AS int CHECK (public.lock_it(VALUE));
CREATE DOMAIN public.locking_text AS text CHECK (public.lock_it(length(VALUE)));
CREATE FUNCTION public.lock_eq(int, int) RETURNS boolean LANGUAGE sql AS $$ SELECT public.lock_it($1) AND $1 = $2 $$;
CREATE OPERATOR public.=== (leftarg = int, rightarg = int, function = public.lock_eq);
`;

interface EscapeAttack {
  readonly sql: string;
  readonly why: string;
}

export const ESCAPE_ATTACKS: readonly EscapeAttack[] = [
  // Operators in sublinks: `x op ANY (subquery)` keeps its operator outside any expression node.
  {
    sql: 'SELECT 1 WHERE 7 OPERATOR(public.===) ANY (SELECT 1)',
    why: 'schema-qualified user operator, ANY (subquery)',
  },
  { sql: 'SELECT 1 WHERE 8 === ALL (SELECT 8)', why: 'unqualified user operator, ALL (subquery)' },
  { sql: 'SELECT 1 WHERE 9 === SOME (VALUES (1))', why: 'SOME over VALUES' },
  { sql: 'SELECT (SELECT 10 === ANY (SELECT id FROM accounts))', why: 'sublink inside a scalar subquery' },
  { sql: 'SELECT 1 WHERE (11, 11) OPERATOR(public.===) (SELECT 11, 11)', why: 'row comparison with a sublink' },
  // User types named where no cast is written: the value still goes through the domain's CHECK.
  { sql: `SELECT * FROM json_to_record('{"a": 21}') AS t(a public.locking)`, why: 'column definition list' },
  { sql: `SELECT * FROM jsonb_to_recordset('[{"a": 22}]') AS t(a locking)`, why: 'unqualified domain, recordset' },
  {
    sql: `SELECT * FROM ROWS FROM (jsonb_to_record('{"a": 23}') AS (a locking))`,
    why: 'column definition list inside ROWS FROM',
  },
  {
    sql: `SELECT * FROM XMLTABLE('/r' PASSING (XMLPARSE(DOCUMENT '<r><a>24</a></r>')) COLUMNS a public.locking PATH 'a')`,
    why: 'XMLTABLE column type',
  },
  {
    sql: `SELECT XMLSERIALIZE(CONTENT '<abcdefghijklmnopqrstuvwxy/>'::xml AS public.locking_text)`,
    why: 'XMLSERIALIZE target type',
  },
  // An EXECUTE in the PREPARE's own Query string is refused (the name is not prepared yet): sent apart.
  { sql: 'PREPARE typed(public.locking) AS SELECT $1', why: 'PREPARE parameter type' },
  { sql: 'EXECUTE typed(26)', why: 'EXECUTE of it: the argument goes through the CHECK' },
  { sql: 'EXPLAIN SELECT * FROM json_to_record($${"a": 27}$$) AS t(a locking)', why: 'EXPLAIN of the same' },
  {
    sql: `BEGIN; DECLARE typed_cursor CURSOR FOR SELECT * FROM json_to_record('{"a": 28}') AS t(a locking); FETCH ALL FROM typed_cursor`,
    why: 'a cursor over the same, fetched',
  },
  { sql: 'SELECT * FROM accounts TABLESAMPLE system_rows(1)', why: 'a sampling method from outside pg_catalog' },
  // Transaction modes: the last one wins, in every spelling.
  {
    sql: 'START TRANSACTION ISOLATION LEVEL READ COMMITTED /* , READ ONLY */ , READ WRITE',
    why: 'READ WRITE after a comment that looks like READ ONLY',
  },
  { sql: 'begin read only, read write', why: 'READ WRITE after READ ONLY, lower case' },
  { sql: 'BEGIN; SET TRANSACTION READ ONLY, READ WRITE', why: 'SET TRANSACTION, READ WRITE last' },
  { sql: 'SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, READ WRITE', why: 'session default, last wins' },
  { sql: "SET default_transaction_read_only = 'of'", why: 'a prefix of off, which the server accepts' },
  { sql: 'SET default_transaction_read_only = f', why: 'a prefix of false' },
  { sql: 'SET transaction_read_only TO DEFAULT', why: 'the transaction guard to its default' },
  { sql: 'SET SESSION default_transaction_read_only FROM CURRENT', why: 'FROM CURRENT' },
];

/** What the attacks aim at, as the owner sees it: advisory locks, rows, the sequence. */
async function serverState(owner: pg.Client): Promise<unknown> {
  const q = async (sql: string): Promise<unknown[]> => (await owner.query(sql)).rows;
  return {
    accounts: await q('select id, owner, balance::text from accounts order by id'),
    auditLog: await q('select count(*)::int as n from audit_log'),
    sequence: await q('select last_value::text, is_called from accounts_seq'),
  };
}

async function advisoryLocks(owner: pg.Client): Promise<string[]> {
  const r = await owner.query<{ objid: string }>(
    `select objid::text from pg_locks where locktype = 'advisory'
     and database = (select oid from pg_database where datname = current_database()) order by objid`,
  );
  return r.rows.map((row) => row.objid);
}

async function attackThroughSidecar(t: TestContext, readerLogin: boolean): Promise<void> {
  const database = await createTestDatabase(t, ESCAPE_SCHEMA_SQL);
  const reader = readerLogin ? createReaderLogin(t, database) : undefined;
  const sidecar = await startTestSidecar(t, {
    policies: { 'read-only': READ_ONLY },
    database,
    ...(reader === undefined ? {} : { readOnly: reader }),
  });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  const before = await serverState(owner);
  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:reader' });
  const login = await client.query<{ u: string; guard: string }>(
    "SELECT current_user AS u, current_setting('default_transaction_read_only') AS guard",
  );
  assert.deepEqual(login.rows, [{ u: reader?.user ?? directPgOptions().user, guard: 'on' }]);

  for (const attack of ESCAPE_ATTACKS) {
    await t.test(`${attack.why}: ${attack.sql}`, async () => {
      const locksBefore = await advisoryLocks(owner);
      const error = await client.query(attack.sql).then(
        () => undefined,
        (err: unknown) => err as Error & { code?: string },
      );
      // Whatever happened, leave no transaction open for the next attack.
      await client.query('ROLLBACK').catch(() => undefined);
      assert.deepEqual(await advisoryLocks(owner), locksBefore, 'the owner code ran: an advisory lock is held');
      assert.ok(error !== undefined, 'not refused');
      assert.equal(error.code, '42501', error.message);
      assert.match(error.message, /^chaperone: /);
    });
  }
  const alive = await client.query<{ ok: number }>('SELECT 1 AS ok');
  assert.equal(alive.rows[0]?.ok, 1, 'the session is usable after the corpus');
  await client.end();
  assert.deepEqual(await serverState(owner), before, 'rows and the sequence are unchanged');
  await owner.end();
}

test('read-only escapes, least-privilege login: each is refused with 42501 and no owner code runs', async (t) => {
  await attackThroughSidecar(t, true);
});

test('read-only escapes, owner login only: each is refused with 42501 and no owner code runs', async (t) => {
  await attackThroughSidecar(t, false);
});
