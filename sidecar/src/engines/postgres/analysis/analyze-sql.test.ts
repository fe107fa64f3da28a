import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { StatementKind } from '@chaperone/api';
import { analyzeSql, loadSqlParser, parseQualifiedName, resolveSqlExecute } from './analyze-sql.ts';
import type { AnalyzedStatement, AnalyzeOptions } from './analyze-sql.ts';
import { READ_CORPUS, WRITE_CORPUS } from './write-corpus.ts';

before(async () => {
  await loadSqlParser();
});

function statementsOf(sql: string, options?: AnalyzeOptions): readonly AnalyzedStatement[] {
  const result = analyzeSql(sql, options);
  assert.ok(result.ok, `expected ${JSON.stringify(sql)} to parse: ${result.ok ? '' : result.error.message}`);
  return result.statements;
}

/** The read-only policy of the corpus, written independently of the production code. */
const READ_ONLY_KINDS: ReadonlySet<StatementKind> = new Set(['select', 'show', 'explain', 'set', 'transaction']);
function isReadOnly(statement: AnalyzedStatement): boolean {
  return READ_ONLY_KINDS.has(statement.kind) && !statement.sideEffects;
}

interface Case {
  readonly sql: string;
  readonly searchPath?: readonly string[];
  /** Expected fields per statement; only the fields given are compared. */
  readonly expect: readonly Partial<AnalyzedStatement>[];
}

const CASES: readonly Case[] = [
  // Reads
  {
    sql: 'SELECT abalance FROM pgbench_accounts WHERE aid = $1',
    expect: [{ kind: 'select', relations: ['public.pgbench_accounts'], functions: [], sideEffects: false }],
  },
  {
    sql: 'SELECT a.x FROM s1.a JOIN b ON a.id = b.id LEFT JOIN LATERAL (SELECT * FROM c WHERE c.id = a.id) l ON true',
    expect: [{ kind: 'select', relations: ['s1.a', 'public.b', 'public.c'], sideEffects: false }],
  },
  {
    sql: 'SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.id = a.id) AND id IN (SELECT id FROM c)',
    expect: [{ relations: ['public.a', 'public.b', 'public.c'] }],
  },
  {
    sql: 'SELECT id FROM a UNION SELECT id FROM b INTERSECT SELECT id FROM c',
    expect: [{ relations: ['public.a', 'public.b', 'public.c'] }],
  },
  {
    sql: 'WITH x AS (SELECT * FROM a), y AS (SELECT * FROM x JOIN b USING (id)) SELECT * FROM y',
    expect: [{ kind: 'select', relations: ['public.a', 'public.b'] }],
  },
  {
    sql: 'WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t',
    expect: [{ kind: 'select', relations: [], functions: [] }],
  },
  {
    sql: 'WITH y AS (SELECT * FROM x), x AS (SELECT 1) SELECT * FROM y',
    expect: [{ relations: ['public.x'] }],
  },
  {
    sql: 'SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s, secrets',
    expect: [{ relations: ['public.secrets'] }],
  },
  { sql: 'SELECT * FROM a', searchPath: ['app', 'public'], expect: [{ relations: ['app.a'] }] },
  { sql: 'SELECT * FROM a', searchPath: ['$user', 'app'], expect: [{ relations: ['app.a'] }] },
  {
    sql: 'SELECT * FROM pg_class, pg_catalog.pg_namespace, information_schema.tables, pg_stat_activity',
    expect: [
      {
        relations: [
          'pg_catalog.pg_class',
          'pg_catalog.pg_namespace',
          'information_schema.tables',
          'pg_catalog.pg_stat_activity',
        ],
      },
    ],
  },
  { sql: 'SELECT * FROM "Weird"."Mixed Case"', expect: [{ relations: ['Weird.Mixed Case'] }] },
  { sql: 'SELECT * FROM U&"acc\\006Funts"', expect: [{ relations: ['public.accounts'] }] },
  {
    sql: 'SELECT count(*), now(), lower(x) FROM a GROUP BY x',
    expect: [{ functions: ['pg_catalog.count', 'pg_catalog.now', 'pg_catalog.lower'], sideEffects: false }],
  },
  {
    sql: 'SELECT * FROM generate_series(1, 3) g, ROWS FROM (unnest(ARRAY[1])) u',
    expect: [{ functions: ['pg_catalog.generate_series', 'pg_catalog.unnest'], sideEffects: false }],
  },
  { sql: 'SELECT rank() OVER (ORDER BY x) FROM a', expect: [{ functions: ['pg_catalog.rank'], sideEffects: false }] },
  { sql: 'SELECT pg_sleep(0)', expect: [{ kind: 'select', sideEffects: false }] },
  { sql: 'SELECT random(), gen_random_uuid(), clock_timestamp()', expect: [{ sideEffects: false }] },
  { sql: "SELECT 'DELETE FROM a; DROP TABLE b'", expect: [{ kind: 'select', sideEffects: false, relations: [] }] },
  { sql: 'VALUES (1), (2)', expect: [{ kind: 'select' }] },
  { sql: 'TABLE a', expect: [{ kind: 'select', relations: ['public.a'] }] },
  { sql: "SELECT x::regclass, 'public.b'::regclass FROM a", expect: [{ relations: ['public.b', 'public.a'] }] },
  // Side-effecting functions
  {
    sql: "SELECT nextval('accounts_seq')",
    expect: [
      { kind: 'select', relations: ['public.accounts_seq'], functions: ['pg_catalog.nextval'], sideEffects: true },
    ],
  },
  { sql: 'SELECT nextval(\'"Odd"."Seq"\')', expect: [{ relations: ['Odd.Seq'], sideEffects: true }] },
  { sql: "SELECT setval('s', 1)", expect: [{ relations: ['public.s'], sideEffects: true }] },
  { sql: 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity', expect: [{ kind: 'select', sideEffects: true }] },
  { sql: "SELECT lo_import('/etc/passwd')", expect: [{ sideEffects: true }] },
  { sql: "SELECT set_config('role', 'postgres', false)", expect: [{ kind: 'select', sideEffects: true }] },
  { sql: "SELECT pg_notify('ch', 'x')", expect: [{ kind: 'select', sideEffects: true, notifies: 'ch' }] },
  { sql: "SELECT query_to_xml('delete from t', true, false, '')", expect: [{ sideEffects: true }] },
  {
    sql: "SELECT table_to_xml('customers', true, false, '')",
    expect: [{ relations: ['public.customers'], sideEffects: true }],
  },
  {
    sql: "SELECT ext.dblink_exec('x', 'DELETE FROM t')",
    expect: [{ functions: ['ext.dblink_exec'], sideEffects: true }],
  },
  { sql: 'SELECT pg_advisory_xact_lock(1)', expect: [{ sideEffects: true }] },
  { sql: 'SELECT txid_current()', expect: [{ sideEffects: true }] },
  { sql: 'SELECT bump(1)', expect: [{ kind: 'select', functions: ['public.bump'], sideEffects: true }] },
  { sql: 'SELECT bump(1)', searchPath: ['app'], expect: [{ functions: ['app.bump'], sideEffects: true }] },
  { sql: 'SELECT * FROM a WHERE app.f(a.id)', expect: [{ functions: ['app.f'], sideEffects: true }] },
  {
    sql: 'SELECT pg_catalog.brand_new_function()',
    expect: [{ functions: ['pg_catalog.brand_new_function'], sideEffects: true }],
  },
  {
    sql: 'SELECT now()',
    searchPath: ['public', 'pg_catalog'],
    expect: [{ functions: ['pg_catalog.now'], sideEffects: true }],
  },
  { sql: 'SELECT now()', searchPath: ['pg_catalog', 'public'], expect: [{ sideEffects: false }] },
  // Writes
  {
    sql: 'INSERT INTO s.t (a) SELECT b FROM u ON CONFLICT DO NOTHING RETURNING a',
    expect: [{ kind: 'insert', relations: ['s.t', 'public.u'], sideEffects: true }],
  },
  {
    sql: 'UPDATE a SET x = f(b.y) FROM b WHERE a.id = b.id',
    expect: [{ kind: 'update', relations: ['public.a', 'public.b'], functions: ['public.f'], sideEffects: true }],
  },
  { sql: 'DELETE FROM a USING b WHERE a.id = b.id', expect: [{ kind: 'delete', relations: ['public.a', 'public.b'] }] },
  {
    sql: 'MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN DELETE',
    expect: [{ kind: 'merge', relations: ['public.a', 'public.b'], sideEffects: true }],
  },
  {
    sql: 'WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d',
    expect: [{ kind: 'delete', relations: ['public.a'] }],
  },
  {
    sql: 'WITH i AS (INSERT INTO a VALUES (1) RETURNING *), u AS (UPDATE b SET x = 1 RETURNING *) SELECT * FROM i, u',
    expect: [{ kind: 'update', relations: ['public.a', 'public.b'] }],
  },
  { sql: 'WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d', expect: [{ kind: 'delete' }] },
  {
    sql: 'WITH a AS (SELECT 1) INSERT INTO a SELECT * FROM a',
    expect: [{ kind: 'insert', relations: ['public.a'] }],
  },
  { sql: 'SELECT * INTO b FROM a', expect: [{ kind: 'ddl', relations: ['public.b', 'public.a'], sideEffects: true }] },
  { sql: 'CREATE TABLE b AS SELECT * FROM a', expect: [{ kind: 'ddl', relations: ['public.a', 'public.b'] }] },
  { sql: 'CREATE MATERIALIZED VIEW m AS SELECT * FROM a', expect: [{ kind: 'ddl' }] },
  { sql: 'SELECT * FROM t', searchPath: ['pg_catalog', 'app'], expect: [{ relations: ['app.t'] }] },
  { sql: 'SELECT * FROM a x FOR UPDATE OF x', expect: [{ kind: 'lock', relations: ['public.a'] }] },
  { sql: 'EXPLAIN (ANALYSE) DELETE FROM a', expect: [{ kind: 'delete' }] },
  { sql: 'SET "ROLE" = x', expect: [{ kind: 'dcl' }] },
  // Locks
  { sql: 'SELECT * FROM a FOR UPDATE', expect: [{ kind: 'lock', sideEffects: true }] },
  { sql: 'SELECT * FROM (SELECT * FROM a FOR SHARE) s', expect: [{ kind: 'lock' }] },
  { sql: 'LOCK TABLE a, s.b IN EXCLUSIVE MODE', expect: [{ kind: 'lock', relations: ['public.a', 's.b'] }] },
  // COPY
  { sql: 'COPY a FROM STDIN', expect: [{ kind: 'copy-from', relations: ['public.a'], sideEffects: true }] },
  { sql: 'COPY a TO STDOUT', expect: [{ kind: 'copy-to', relations: ['public.a'], sideEffects: false }] },
  {
    sql: 'COPY (SELECT * FROM a JOIN b USING (id)) TO STDOUT',
    expect: [{ kind: 'copy-to', relations: ['public.a', 'public.b'] }],
  },
  { sql: "COPY a TO PROGRAM 'gzip > /tmp/a.gz'", expect: [{ kind: 'copy-to', sideEffects: true }] },
  { sql: "COPY a TO '/tmp/a.csv'", expect: [{ kind: 'copy-to', sideEffects: true }] },
  { sql: "COPY a FROM PROGRAM 'curl x'", expect: [{ kind: 'copy-from', sideEffects: true }] },
  { sql: 'COPY (DELETE FROM a RETURNING *) TO STDOUT', expect: [{ kind: 'delete', sideEffects: true }] },
  // EXPLAIN
  { sql: 'EXPLAIN SELECT * FROM a', expect: [{ kind: 'explain', relations: ['public.a'], sideEffects: false }] },
  { sql: 'EXPLAIN DELETE FROM a', expect: [{ kind: 'explain', relations: ['public.a'], sideEffects: false }] },
  { sql: 'EXPLAIN SELECT app.f(1)', expect: [{ kind: 'explain', sideEffects: true }] },
  { sql: 'EXPLAIN ANALYZE DELETE FROM a', expect: [{ kind: 'delete', relations: ['public.a'], sideEffects: true }] },
  { sql: 'EXPLAIN (ANALYZE true, BUFFERS) UPDATE a SET x = 1', expect: [{ kind: 'update' }] },
  { sql: 'EXPLAIN (ANALYZE off) DELETE FROM a', expect: [{ kind: 'explain', sideEffects: false }] },
  { sql: 'EXPLAIN ANALYZE SELECT * FROM a', expect: [{ kind: 'explain', sideEffects: false }] },
  { sql: "EXPLAIN ANALYZE SELECT nextval('s')", expect: [{ kind: 'explain', sideEffects: true }] },
  // Prepared statements and cursors
  {
    sql: 'PREPARE p(int) AS UPDATE a SET x = $1',
    expect: [{ kind: 'update', relations: ['public.a'], sideEffects: true, prepares: 'p' }],
  },
  {
    sql: 'PREPARE q AS SELECT * FROM a',
    expect: [{ kind: 'select', relations: ['public.a'], sideEffects: false, prepares: 'q' }],
  },
  { sql: 'EXECUTE p(1)', expect: [{ kind: 'execute', executes: 'p', sideEffects: true }] },
  {
    sql: "EXECUTE p(nextval('s'))",
    expect: [{ kind: 'execute', relations: ['public.s'], functions: ['pg_catalog.nextval'] }],
  },
  { sql: 'DEALLOCATE p', expect: [{ kind: 'prepare', deallocates: 'p', sideEffects: false }] },
  { sql: 'DEALLOCATE ALL', expect: [{ kind: 'prepare', deallocates: '*' }] },
  { sql: 'DECLARE c CURSOR FOR SELECT * FROM a', expect: [{ kind: 'select', relations: ['public.a'] }] },
  { sql: 'DECLARE c CURSOR FOR SELECT * FROM a FOR UPDATE', expect: [{ kind: 'lock' }] },
  {
    sql: 'FETCH 10 FROM c; CLOSE c',
    expect: [
      { kind: 'select', sideEffects: false },
      { kind: 'select', sideEffects: false },
    ],
  },
  // Transactions
  {
    sql: 'BEGIN; START TRANSACTION READ ONLY; COMMIT; ROLLBACK AND CHAIN',
    expect: [
      { kind: 'transaction', transaction: 'begin', sideEffects: false },
      { kind: 'transaction', transaction: 'begin', sideEffects: false },
      { kind: 'transaction', transaction: 'commit' },
      { kind: 'transaction', transaction: 'rollback', chain: true },
    ],
  },
  {
    sql: 'SAVEPOINT s1; RELEASE SAVEPOINT s1; ROLLBACK TO s1',
    expect: [
      { transaction: 'savepoint', transactionName: 's1' },
      { transaction: 'release', transactionName: 's1' },
      { transaction: 'rollback-to', transactionName: 's1' },
    ],
  },
  {
    sql: "PREPARE TRANSACTION 'g1'; COMMIT PREPARED 'g1'; ROLLBACK PREPARED 'g2'",
    expect: [
      { kind: 'transaction', transaction: 'prepare-transaction', transactionName: 'g1', sideEffects: true },
      { transaction: 'commit-prepared', sideEffects: true },
      { transaction: 'rollback-prepared', sideEffects: true },
    ],
  },
  { sql: 'BEGIN READ WRITE', expect: [{ kind: 'transaction', transaction: 'begin', sideEffects: true }] },
  { sql: 'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE', expect: [{ kind: 'transaction', sideEffects: false }] },
  {
    sql: 'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
    expect: [{ kind: 'transaction', sideEffects: true }],
  },
  // SET / SHOW
  {
    sql: 'SET statement_timeout = 0',
    expect: [
      {
        kind: 'set',
        sideEffects: false,
        setting: { name: 'statement_timeout', action: 'set', values: ['0'], local: false },
      },
    ],
  },
  {
    sql: 'SET LOCAL search_path TO app, "B", public',
    expect: [
      { kind: 'set', setting: { name: 'search_path', action: 'set', values: ['app', 'B', 'public'], local: true } },
    ],
  },
  {
    sql: 'RESET statement_timeout',
    expect: [{ kind: 'set', setting: { name: 'statement_timeout', action: 'reset', values: [], local: false } }],
  },
  { sql: "SET TIME ZONE 'UTC'", expect: [{ kind: 'set', sideEffects: false }] },
  { sql: 'SET ROLE admin', expect: [{ kind: 'dcl', sideEffects: true }] },
  { sql: 'RESET ROLE', expect: [{ kind: 'dcl' }] },
  { sql: "SET SESSION AUTHORIZATION 'postgres'", expect: [{ kind: 'dcl' }] },
  { sql: 'RESET SESSION AUTHORIZATION', expect: [{ kind: 'dcl' }] },
  { sql: 'RESET ALL', expect: [{ kind: 'dcl' }] },
  { sql: 'SET standard_conforming_strings = off', expect: [{ kind: 'set', sideEffects: true }] },
  { sql: "SET NAMES 'SJIS'", expect: [{ kind: 'set', sideEffects: true }] },
  { sql: 'SET default_transaction_read_only = on', expect: [{ kind: 'set', sideEffects: false }] },
  { sql: 'SET default_transaction_read_only = off', expect: [{ kind: 'set', sideEffects: true }] },
  { sql: 'SET session_replication_role = replica', expect: [{ kind: 'set', sideEffects: true }] },
  { sql: 'SET CONSTRAINTS ALL DEFERRED', expect: [{ kind: 'set', sideEffects: false }] },
  { sql: 'SHOW search_path', expect: [{ kind: 'show', sideEffects: false }] },
  // DCL
  { sql: 'GRANT SELECT ON a TO bob', expect: [{ kind: 'dcl', relations: ['public.a'], sideEffects: true }] },
  { sql: 'REVOKE ALL ON a FROM bob', expect: [{ kind: 'dcl' }] },
  { sql: 'GRANT admin TO bob', expect: [{ kind: 'dcl' }] },
  {
    sql: "CREATE ROLE r LOGIN PASSWORD 'x'; ALTER USER r NOSUPERUSER; DROP ROLE r",
    expect: [{ kind: 'dcl' }, { kind: 'dcl' }, { kind: 'dcl' }],
  },
  { sql: 'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob', expect: [{ kind: 'dcl' }] },
  { sql: 'ALTER TABLE a OWNER TO bob', expect: [{ kind: 'dcl', relations: ['public.a'] }] },
  { sql: 'ALTER TABLE a DISABLE ROW LEVEL SECURITY', expect: [{ kind: 'dcl' }] },
  { sql: 'CREATE POLICY p ON a USING (true); DROP POLICY p ON a', expect: [{ kind: 'dcl' }, { kind: 'dcl' }] },
  { sql: 'REASSIGN OWNED BY bob TO alice', expect: [{ kind: 'dcl' }] },
  { sql: 'DISCARD ALL', expect: [{ kind: 'dcl', sideEffects: true }] },
  // DDL
  {
    sql: "CREATE TABLE t (id int DEFAULT nextval('s'), c text REFERENCES u)",
    expect: [{ kind: 'ddl', relations: ['public.t', 'public.s', 'public.u'], functions: ['pg_catalog.nextval'] }],
  },
  { sql: 'ALTER TABLE a ADD COLUMN b int', expect: [{ kind: 'ddl', relations: ['public.a'] }] },
  { sql: 'DROP TABLE a, s.b CASCADE', expect: [{ kind: 'ddl', relations: ['public.a', 's.b'], sideEffects: true }] },
  { sql: 'DROP FUNCTION f(int)', expect: [{ kind: 'ddl', relations: [] }] },
  { sql: 'TRUNCATE a, b', expect: [{ kind: 'ddl', relations: ['public.a', 'public.b'] }] },
  { sql: "COMMENT ON TABLE a IS 'x'", expect: [{ kind: 'ddl', relations: ['public.a'] }] },
  { sql: "SECURITY LABEL FOR selinux ON TABLE a IS 'x'", expect: [{ kind: 'ddl', relations: ['public.a'] }] },
  { sql: 'CREATE INDEX i ON a (b)', expect: [{ kind: 'ddl', relations: ['public.a'] }] },
  { sql: 'CREATE VIEW v AS SELECT * FROM a', expect: [{ kind: 'ddl', relations: ['public.v', 'public.a'] }] },
  { sql: "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", expect: [{ kind: 'ddl' }] },
  { sql: "ALTER SYSTEM SET work_mem = '64MB'", expect: [{ kind: 'ddl', sideEffects: true }] },
  { sql: 'CREATE EXTENSION dblink', expect: [{ kind: 'ddl' }] },
  { sql: 'CREATE DATABASE d; DROP DATABASE d', expect: [{ kind: 'ddl' }, { kind: 'ddl' }] },
  // Maintenance, procedural, notifications, utility
  { sql: 'VACUUM (ANALYZE) a', expect: [{ kind: 'maintenance', relations: ['public.a'], sideEffects: true }] },
  { sql: 'ANALYZE a', expect: [{ kind: 'maintenance' }] },
  { sql: 'CLUSTER a USING i', expect: [{ kind: 'maintenance' }] },
  { sql: 'REINDEX TABLE a', expect: [{ kind: 'maintenance' }] },
  { sql: 'CHECKPOINT', expect: [{ kind: 'maintenance' }] },
  { sql: 'REFRESH MATERIALIZED VIEW m', expect: [{ kind: 'maintenance', relations: ['public.m'] }] },
  { sql: 'DO $$ BEGIN DELETE FROM a; END $$', expect: [{ kind: 'do', sideEffects: true }] },
  { sql: 'CALL app.p(1)', expect: [{ kind: 'call', functions: ['app.p'], sideEffects: true }] },
  { sql: 'LISTEN ch', expect: [{ kind: 'listen', listens: 'ch', sideEffects: true }] },
  { sql: 'UNLISTEN *', expect: [{ kind: 'listen', unlistens: '*' }] },
  { sql: "NOTIFY ch, 'x'", expect: [{ kind: 'notify', notifies: 'ch', sideEffects: true }] },
  { sql: 'DISCARD PLANS', expect: [{ kind: 'utility', sideEffects: true }] },
  { sql: "LOAD 'auto_explain'", expect: [{ kind: 'utility', sideEffects: true }] },
  // Multi-statement strings, comments and quoting
  {
    sql: 'SELECT 1; /* c */ DELETE FROM a -- tail',
    expect: [
      { kind: 'select', text: 'SELECT 1' },
      // PostgreSQL 15's grammar starts a statement right after the previous semicolon (18 skips comments).
      { kind: 'delete', text: '/* c */ DELETE FROM a -- tail' },
    ],
  },
  {
    sql: "SELECT 'é;' AS x; UPDATE a SET b = 'ü'",
    expect: [
      { kind: 'select', text: "SELECT 'é;' AS x" },
      { kind: 'update', text: "UPDATE a SET b = 'ü'" },
    ],
  },
  { sql: 'SELECT $q$ ; DELETE FROM a; $q$', expect: [{ kind: 'select', sideEffects: false }] },
  { sql: "SELECT E'\\'; DELETE FROM a; --'", expect: [{ kind: 'select', sideEffects: false }] },
  { sql: "SELECT E'\\\\'; DELETE FROM a; --'", expect: [{ kind: 'select' }, { kind: 'delete' }] },
  { sql: 'DELETE FROM U&"a\\0062"', expect: [{ kind: 'delete', relations: ['public.ab'] }] },
  // Operators of `x op ANY / ALL (subquery)` and types named outside a cast (e2e/postgres/read-only-escape-corpus)
  { sql: 'SELECT 1 WHERE 7 OPERATOR(public.===) ANY (SELECT 1)', expect: [{ kind: 'select', sideEffects: true }] },
  { sql: 'SELECT 1 WHERE 8 === ALL (SELECT 8)', expect: [{ kind: 'select', sideEffects: true }] },
  { sql: 'SELECT 1 WHERE 1 IN (SELECT 1) AND 1 < ALL (SELECT 2)', expect: [{ kind: 'select', sideEffects: false }] },
  {
    sql: `SELECT * FROM json_to_record('{"a": 1}') AS t(a public.locking)`,
    expect: [{ kind: 'select', sideEffects: true }],
  },
  {
    sql: `SELECT * FROM json_to_record('{"a": 1}') AS t(a int, b text, c varchar(3), d numeric(3, 1), e int[])`,
    expect: [{ kind: 'select', sideEffects: false }],
  },
  {
    sql: `SELECT * FROM XMLTABLE('/r' PASSING (x) COLUMNS a locking PATH 'a')`,
    expect: [{ kind: 'select', sideEffects: true }],
  },
  { sql: `SELECT XMLSERIALIZE(CONTENT x AS public.t)`, expect: [{ kind: 'select', sideEffects: true }] },
  { sql: `SELECT XMLSERIALIZE(CONTENT x AS text)`, expect: [{ kind: 'select', sideEffects: false }] },
  { sql: 'PREPARE p(public.locking) AS SELECT $1', expect: [{ kind: 'select', sideEffects: true, prepares: 'p' }] },
  { sql: 'PREPARE p(int, text) AS SELECT $1', expect: [{ kind: 'select', sideEffects: false, prepares: 'p' }] },
  { sql: 'SELECT * FROM a TABLESAMPLE system_rows(10)', expect: [{ kind: 'select', sideEffects: true }] },
  { sql: 'SELECT * FROM a TABLESAMPLE public.bernoulli(10)', expect: [{ kind: 'select', sideEffects: true }] },
  { sql: 'SELECT * FROM a TABLESAMPLE SYSTEM (10) REPEATABLE (1)', expect: [{ kind: 'select', sideEffects: false }] },
];

describe('analyzeSql', () => {
  for (const c of CASES) {
    it(c.sql.replaceAll('\n', ' '), () => {
      const statements = statementsOf(c.sql, c.searchPath === undefined ? undefined : { searchPath: c.searchPath });
      assert.equal(statements.length, c.expect.length, 'statement count');
      c.expect.forEach((expected, i) => {
        const actual = statements[i];
        assert.ok(actual);
        const picked = Object.fromEntries(Object.keys(expected).map((k) => [k, actual[k as keyof AnalyzedStatement]]));
        assert.deepEqual(picked, expected, `statement ${i + 1}`);
      });
    });
  }

  it('has at least 60 table cases', () => {
    assert.ok(CASES.length >= 60, `${CASES.length} cases`);
  });

  it('returns no statements for empty and comment-only text', () => {
    for (const sql of ['', '   ', '-- nothing', '/* nothing */', ';']) {
      assert.deepEqual(analyzeSql(sql), { ok: true, statements: [] });
    }
  });

  it('reports syntax errors with a 1-based character position', () => {
    assert.deepEqual(analyzeSql('SELECT 1; SELEC 2'), {
      ok: false,
      error: { message: 'syntax error at or near "SELEC"', position: 11 },
    });
    assert.deepEqual(analyzeSql("SELECT 'é' FRM x"), {
      ok: false,
      error: { message: 'syntax error at or near "x"', position: 16 },
    });
  });

  it('fails closed on a syntax error after a valid statement', () => {
    assert.equal(analyzeSql('SELECT 1; DELETE FROM a WHERE').ok, false);
  });

  it('refuses text with NUL, which the server would truncate', () => {
    assert.equal(analyzeSql('SELECT 1\0; DELETE FROM a').ok, false);
  });

  it('fails closed on absurdly deep nesting instead of throwing', () => {
    const result = analyzeSql(`SELECT ${'('.repeat(20000)}1${')'.repeat(20000)}`);
    assert.equal(result.ok, false);
  });

  it('gives statements that differ only in constants the same fingerprint', () => {
    const [a, b, c] = statementsOf(
      'SELECT * FROM a WHERE id = 1; select *  from a where id = 42; SELECT * FROM b WHERE id = 1',
    );
    assert.ok(a && b && c);
    assert.equal(a.fingerprint, b.fingerprint);
    assert.notEqual(a.fingerprint, c.fingerprint);
    assert.match(a.fingerprint, /^[0-9a-f]{16}$/);
  });

  it('treats functions listed in safeFunctions as side-effect free', () => {
    const [s] = statementsOf('SELECT app.f(1)', { safeFunctions: new Set(['app.f']) });
    assert.equal(s?.sideEffects, false);
  });
});

describe('resolveSqlExecute', () => {
  const prepared = (): AnalyzedStatement => {
    const [prepare] = statementsOf('PREPARE r(int) AS SELECT owner FROM accounts WHERE id = $1');
    assert.ok(prepare);
    return prepare;
  };

  it('decides EXECUTE as the prepared statement plus its own arguments', () => {
    const prepare = prepared();
    const [execute] = statementsOf('EXECUTE r(public.bump(1))');
    assert.ok(execute);
    assert.deepEqual(execute.executeArguments, {
      kind: 'execute',
      relations: [],
      functions: ['public.bump'],
      sideEffects: true,
    });
    const resolved = resolveSqlExecute(execute, prepare);
    assert.equal(resolved.kind, 'select');
    assert.equal(resolved.sideEffects, true, 'the argument calls a side-effecting function');
    assert.deepEqual(resolved.relations, ['public.accounts']);
    assert.deepEqual(resolved.functions, ['public.bump']);
    assert.equal(resolved.text, 'EXECUTE r(public.bump(1))');
    assert.equal(resolved.executes, 'r');
    assert.equal(resolved.prepares, undefined);
  });

  it('adds relations read by argument subqueries and keeps plain arguments harmless', () => {
    const prepare = prepared();
    const [plain] = statementsOf('EXECUTE r(1)');
    assert.ok(plain);
    const resolved = resolveSqlExecute(plain, prepare);
    assert.equal(resolved.sideEffects, false);
    assert.deepEqual(resolved.relations, ['public.accounts']);
    const [reads] = statementsOf('EXECUTE r((SELECT id FROM secret.creds LIMIT 1))');
    assert.ok(reads);
    assert.deepEqual(resolveSqlExecute(reads, prepare).relations, ['public.accounts', 'secret.creds']);
    const [seq] = statementsOf("EXECUTE r(nextval('s'))");
    assert.ok(seq);
    assert.equal(resolveSqlExecute(seq, prepare).sideEffects, true);
  });

  it('decides CREATE TABLE AS EXECUTE as DDL that also runs the prepared statement', () => {
    const prepare = prepared();
    const [ctas] = statementsOf('CREATE TEMP TABLE stolen AS EXECUTE r(1)');
    assert.ok(ctas);
    assert.equal(ctas.kind, 'ddl');
    assert.equal(ctas.executes, 'r', 'the gate resolves or refuses the name as for EXECUTE');
    const resolved = resolveSqlExecute(ctas, prepare);
    assert.equal(resolved.kind, 'ddl', 'not the prepared SELECT: it creates a table');
    assert.equal(resolved.sideEffects, true);
    assert.ok(resolved.relations.includes('public.accounts'), JSON.stringify(resolved.relations));
    assert.equal(resolved.text, 'CREATE TEMP TABLE stolen AS EXECUTE r(1)');
  });

  it('leaves an EXECUTE of an unknown name, and other statements, as they are', () => {
    const prepare = prepared();
    const [execute] = statementsOf('EXECUTE r(1)');
    assert.ok(execute);
    assert.equal(resolveSqlExecute(execute, undefined), execute);
    assert.equal(resolveSqlExecute(prepare, prepare), prepare);
  });
});

describe('parseQualifiedName', () => {
  it('folds unquoted parts and keeps quoted ones', () => {
    assert.deepEqual(parseQualifiedName('Public.Accounts'), ['public', 'accounts']);
    assert.deepEqual(parseQualifiedName('"My ""Schema"""."T.1"'), ['My "Schema"', 'T.1']);
    assert.equal(parseQualifiedName('a..b'), undefined);
    assert.equal(parseQualifiedName('"open'), undefined);
  });
});

describe('corpus under a read-only policy', () => {
  it('has the promised size', () => {
    assert.ok(WRITE_CORPUS.length >= 45, `${WRITE_CORPUS.length} writes`);
    assert.ok(READ_CORPUS.length >= 15, `${READ_CORPUS.length} reads`);
  });

  for (const entry of WRITE_CORPUS) {
    it(`denies: ${entry.why}`, () => {
      const statements = statementsOf(entry.sql);
      assert.ok(
        statements.some((s) => !isReadOnly(s)),
        `${entry.sql} => ${JSON.stringify(statements.map((s) => [s.kind, s.sideEffects]))}`,
      );
    });
  }

  for (const entry of READ_CORPUS) {
    it(`allows: ${entry.why}`, () => {
      const statements = statementsOf(entry.sql);
      assert.ok(statements.length > 0);
      for (const s of statements) assert.ok(isReadOnly(s), `${s.text} => ${s.kind} sideEffects=${s.sideEffects}`);
    });
  }
});

describe('names a statement gives to server objects', () => {
  it('DECLARE and CLOSE name cursors (portals); CLOSE ALL is *', () => {
    assert.equal(statementsOf('DECLARE c CURSOR WITH HOLD FOR SELECT 1')[0]?.declares, 'c');
    assert.equal(statementsOf('CLOSE c')[0]?.closes, 'c');
    assert.equal(statementsOf('CLOSE ALL')[0]?.closes, '*');
    assert.equal(statementsOf('FETCH ALL FROM c')[0]?.closes, undefined);
  });

  it('DDL that puts column values under another name is flagged; other DDL is not', () => {
    const flagged = [
      'ALTER TABLE t RENAME COLUMN a TO b',
      'ALTER TABLE t RENAME TO u',
      'ALTER SCHEMA public RENAME TO p2',
      'ALTER VIEW v RENAME COLUMN a TO b',
      'ALTER TABLE t SET SCHEMA other',
      'ALTER TABLE t ADD COLUMN c text GENERATED ALWAYS AS (a) STORED',
      'ALTER TABLE t ALTER COLUMN b TYPE text USING a',
      'CREATE TRIGGER tr BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()',
      'CREATE RULE r AS ON UPDATE TO t DO ALSO NOTIFY x',
      // Code a DEFAULT runs: not pinned to pg_catalog's built-ins.
      'CREATE TABLE t (x text DEFAULT f())',
      'CREATE TABLE t (x text DEFAULT pg_catalog.upper(s.f()))',
      "CREATE TABLE t (x text DEFAULT 'a' === 'b')",
      "CREATE TABLE t (x text DEFAULT '1'::mytype::text)",
      'CREATE TABLE t (x text DEFAULT public.now())',
      'CREATE FOREIGN TABLE ft (x text DEFAULT f()) SERVER s',
      'CREATE TABLE t PARTITION OF p (x DEFAULT f()) FOR VALUES IN (1)',
      'ALTER TABLE t ADD COLUMN c text DEFAULT f()',
      'ALTER TABLE t ALTER COLUMN c SET DEFAULT f()',
      'ALTER VIEW v ALTER COLUMN c SET DEFAULT f()',
      'ALTER TABLE t ALTER COLUMN c DROP NOT NULL, ALTER COLUMN c SET DEFAULT f()',
      'CREATE DOMAIN d AS text DEFAULT f()',
      'ALTER DOMAIN d SET DEFAULT f()',
      // Routines: their bodies are not traced.
      "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
      "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
      'CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END',
      'CREATE AGGREGATE a(text) (SFUNC = textcat, STYPE = text)',
    ];
    for (const sql of flagged) assert.ok(statementsOf(sql)[0]?.renamesColumns !== undefined, sql);
    for (const sql of [
      'ALTER TABLE t ADD COLUMN c text DEFAULT 1',
      'ALTER TABLE t ALTER COLUMN b TYPE text',
      'CREATE INDEX ON t (a)',
      "CREATE TABLE t (id serial, at timestamptz DEFAULT now(), who text DEFAULT current_user, n text DEFAULT 'a' || lower('B'))",
      "CREATE TABLE t (s bigint DEFAULT nextval('s'), c text DEFAULT pg_catalog.upper(md5(random()::text)))",
      'ALTER TABLE t ALTER COLUMN c SET DEFAULT 0, ALTER COLUMN d DROP DEFAULT',
      'CREATE DOMAIN d AS int DEFAULT 1 CHECK (VALUE > 0)',
      'ALTER DOMAIN d SET DEFAULT 2',
      'ALTER DOMAIN d DROP DEFAULT',
      'CREATE TABLE t (x d, LIKE u INCLUDING DEFAULTS)',
    ]) {
      assert.equal(statementsOf(sql)[0]?.renamesColumns, undefined, sql);
      assert.equal(statementsOf(sql)[0]?.kind, 'ddl', sql);
    }
  });
});
