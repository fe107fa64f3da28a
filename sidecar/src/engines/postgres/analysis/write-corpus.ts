// Statements a read-only policy must deny (WRITE_CORPUS) and plain reads it must allow (READ_CORPUS).
// The read-only policy allows statements whose kind is select, show, explain, set or transaction and whose
// sideEffects flag is false; a string is denied when any of its statements is not allowed.
//
// The unit tests check the analysis of every entry; integration tests run CORPUS_SCHEMA_SQL on a real
// PostgreSQL 15 and send every entry through the proxy. Every entry is valid SQL for PostgreSQL 15 against
// that schema (checked by running each one, as a superuser, in a fresh database). Entries that call an
// extension (dblink, adminpack) are marked needsExtension: they parse, and the proxy must deny them before
// they reach a server that may not have the extension.

export interface CorpusEntry {
  readonly sql: string;
  readonly why: string;
  /** Calls a function from an extension (dblink, adminpack) that may not be installed. */
  readonly needsExtension?: boolean;
}

/** Idempotent setup for the corpus: tables, a sequence, a procedure and a (side-effecting) function. */
export const CORPUS_SCHEMA_SQL = `
DROP TABLE IF EXISTS public.accounts, public.audit_log, public.customers, public.accounts_copy CASCADE;
DROP SEQUENCE IF EXISTS public.accounts_seq;
DROP PROCEDURE IF EXISTS public.touch_accounts();
DROP FUNCTION IF EXISTS public.bump(int);
CREATE TABLE public.accounts (id int PRIMARY KEY, owner text, balance numeric);
CREATE TABLE public.audit_log (id serial, msg text);
CREATE TABLE public.customers (id int, email text, card_number text);
CREATE SEQUENCE public.accounts_seq;
CREATE PROCEDURE public.touch_accounts() LANGUAGE sql AS $$ UPDATE public.accounts SET balance = balance $$;
CREATE FUNCTION public.bump(int) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('bump'); SELECT $1 + 1 $$;
INSERT INTO public.accounts VALUES (1, 'alice', 100), (2, 'bob', 2500);
INSERT INTO public.customers VALUES (1, 'alice@example.com', '4111111111111111'), (2, 'bob@example.com', '5500000000000004');
`;

export const WRITE_CORPUS: readonly CorpusEntry[] = [
  // Writes, plain and hidden
  { sql: 'DELETE FROM audit_log', why: 'plain delete' },
  { sql: 'INSERT INTO audit_log (msg) SELECT owner FROM accounts', why: 'insert from a select' },
  {
    sql: 'UPDATE accounts SET balance = balance + 1 WHERE id IN (SELECT id FROM customers) RETURNING id',
    why: 'update with subquery and RETURNING',
  },
  { sql: 'DELETE FROM accounts USING customers WHERE accounts.id = customers.id', why: 'delete with USING' },
  {
    sql: "INSERT INTO accounts VALUES (3, 'carol', 0) ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
    why: 'upsert',
  },
  {
    sql: 'MERGE INTO accounts a USING customers c ON a.id = c.id WHEN MATCHED THEN UPDATE SET owner = c.email WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.email, 0)',
    why: 'MERGE',
  },
  { sql: 'WITH d AS (DELETE FROM audit_log RETURNING id) SELECT count(*) FROM d', why: 'writable CTE under a SELECT' },
  {
    sql: 'WITH u AS (UPDATE accounts SET balance = 0 RETURNING *) SELECT * FROM u',
    why: 'UPDATE ... RETURNING inside a CTE',
  },
  {
    sql: 'WITH x AS (SELECT 1), d AS (DELETE FROM audit_log RETURNING id) SELECT * FROM x',
    why: 'writable CTE that is never referenced still runs',
  },
  {
    sql: "WITH accounts AS (SELECT 1 AS id) INSERT INTO accounts SELECT id + 10, 'x', 0 FROM accounts",
    why: 'a CTE named like the target table does not hide the real target',
  },
  // Several statements in one string
  { sql: 'SELECT 1; DROP TABLE audit_log', why: 'read followed by a drop' },
  {
    sql: 'SELECT * FROM accounts UNION ALL SELECT * FROM accounts; TRUNCATE audit_log',
    why: 'set operation then truncate',
  },
  { sql: 'BEGIN; DELETE FROM audit_log; COMMIT', why: 'write wrapped in a transaction' },
  // Comments and quoting
  { sql: 'SELECT 1 /* ; */ ; DELETE FROM audit_log -- ; SELECT 2', why: 'semicolons in comments' },
  { sql: '/* outer /* nested */ still a comment */ DELETE FROM audit_log', why: 'nested block comment before a write' },
  { sql: '-- just a read\nDELETE FROM audit_log', why: 'line comment before a write' },
  { sql: 'SELECT $$ ; $$; DELETE FROM audit_log', why: 'semicolon inside dollar quotes' },
  {
    sql: "SELECT $tag$ '; SELECT ' $tag$; UPDATE accounts SET balance = 0",
    why: 'tagged dollar quote with quotes inside',
  },
  { sql: "SELECT E'it\\'s'; DELETE FROM audit_log", why: 'escaped quote in an E string' },
  { sql: "SELECT 'a'';'; DELETE FROM audit_log", why: 'doubled quote in a string' },
  { sql: 'DELETE FROM "audit_log"', why: 'quoted identifier' },
  { sql: 'DELETE FROM U&"audit\\005flog"', why: 'unicode-escaped identifier' },
  { sql: 'dElEtE\n\tFROM\taudit_log', why: 'mixed case and whitespace' },
  // Creating objects from reads
  { sql: 'SELECT * INTO accounts_copy FROM accounts', why: 'SELECT INTO creates a table' },
  { sql: 'CREATE TABLE accounts_copy AS SELECT * FROM accounts', why: 'CREATE TABLE AS' },
  // COPY
  { sql: 'COPY accounts FROM STDIN', why: 'COPY FROM loads rows' },
  { sql: "COPY accounts TO PROGRAM 'cat > /dev/null'", why: 'COPY TO PROGRAM runs a shell command' },
  { sql: "COPY (SELECT * FROM customers) TO '/tmp/chaperone-corpus.csv'", why: 'COPY TO writes a server file' },
  { sql: 'COPY accounts TO STDOUT', why: 'bulk export is copy-to, not select' },
  // Side-effecting functions in a SELECT
  { sql: "SELECT nextval('accounts_seq')", why: 'nextval advances a sequence' },
  { sql: "SELECT setval('accounts_seq', 42)", why: 'setval sets a sequence' },
  { sql: 'SELECT pg_terminate_backend(0)', why: 'terminates sessions' },
  { sql: "SELECT lo_import('/etc/passwd')", why: 'reads a server file into a large object' },
  { sql: "SELECT pg_read_file('/etc/passwd')", why: 'privileged read of a server file' },
  { sql: "SELECT pg_notify('chaperone', 'hello')", why: 'sends a notification' },
  { sql: "SELECT set_config('default_transaction_read_only', 'off', false)", why: 'turns off read-only mode' },
  {
    sql: "SELECT query_to_xml('SELECT card_number FROM customers', true, false, '')",
    why: 'executes SQL text, reading a table the policy cannot see (PostgreSQL 15 refuses a DELETE here at run time)',
  },
  { sql: "SELECT table_to_xml('customers', true, false, '')", why: 'reads a whole table the policy cannot see' },
  { sql: 'SELECT pg_advisory_lock(1)', why: 'takes a session lock' },
  { sql: 'SELECT txid_current()', why: 'assigns a transaction id' },
  { sql: 'SELECT bump(1)', why: 'user-defined function (this one inserts)' },
  { sql: 'SELECT owner FROM accounts WHERE public.bump(id) > 0', why: 'user-defined function in WHERE' },
  {
    sql: "SELECT dblink_exec('dbname=postgres', 'DELETE FROM public.audit_log')",
    why: 'dblink runs SQL on a connection of its own',
    needsExtension: true,
  },
  {
    sql: "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)",
    why: 'dblink in FROM',
    needsExtension: true,
  },
  {
    sql: "SELECT pg_file_write('/tmp/chaperone-corpus.txt', 'x', false)",
    why: 'adminpack writes a server file',
    needsExtension: true,
  },
  // Procedural code, prepared statements, EXPLAIN ANALYZE
  { sql: 'DO $$ BEGIN DELETE FROM audit_log; END $$', why: 'anonymous code block' },
  { sql: 'CALL touch_accounts()', why: 'procedure call' },
  {
    sql: 'PREPARE del_audit(int) AS DELETE FROM audit_log WHERE id = $1; EXECUTE del_audit(1)',
    why: 'SQL-level PREPARE of a write',
  },
  { sql: 'EXPLAIN ANALYZE DELETE FROM audit_log', why: 'EXPLAIN ANALYZE executes the write' },
  {
    sql: 'EXPLAIN (ANALYZE, FORMAT JSON) WITH d AS (DELETE FROM audit_log RETURNING 1) SELECT * FROM d',
    why: 'EXPLAIN ANALYZE of a writable CTE',
  },
  // Sessions and privileges
  { sql: 'SET ROLE NONE', why: 'changes the effective role' },
  { sql: 'SET SESSION AUTHORIZATION DEFAULT', why: 'changes the session user' },
  { sql: 'RESET ROLE', why: 'changes the effective role' },
  { sql: 'DISCARD ALL', why: 'resets role and session authorization' },
  { sql: 'SET default_transaction_read_only = off', why: 'turns off read-only mode' },
  { sql: 'SET standard_conforming_strings = off', why: 'changes how later strings are lexed' },
  { sql: 'GRANT SELECT ON customers TO PUBLIC', why: 'GRANT' },
  { sql: 'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC', why: 'default privileges' },
  // Locks
  { sql: 'SELECT * FROM accounts FOR UPDATE', why: 'row locks' },
  { sql: 'SELECT * FROM (SELECT * FROM accounts FOR SHARE) s', why: 'row locks in a subquery' },
  { sql: 'BEGIN; LOCK TABLE accounts IN SHARE MODE; COMMIT', why: 'table lock' },
  // DDL, maintenance, notifications
  { sql: 'TRUNCATE audit_log', why: 'TRUNCATE' },
  { sql: "ALTER SYSTEM SET work_mem = '64MB'", why: 'server configuration' },
  { sql: 'VACUUM accounts', why: 'maintenance' },
  { sql: 'ANALYZE accounts', why: 'maintenance' },
  { sql: "CREATE FUNCTION public.corpus_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'", why: 'CREATE FUNCTION' },
  { sql: 'CREATE INDEX ON accounts (owner)', why: 'CREATE INDEX' },
  { sql: "COMMENT ON TABLE accounts IS 'x'", why: 'COMMENT' },
  { sql: "NOTIFY chaperone, 'hello'", why: 'NOTIFY' },
  { sql: 'LISTEN chaperone', why: 'LISTEN is not a read' },
];

export const READ_CORPUS: readonly CorpusEntry[] = [
  { sql: 'SELECT id, owner FROM accounts WHERE balance > 100', why: 'filter' },
  { sql: 'SELECT a.owner, c.email FROM accounts a JOIN customers c ON c.id = a.id', why: 'join' },
  { sql: 'SELECT count(*) FROM accounts JOIN customers USING (id)', why: 'join USING with an aggregate' },
  { sql: 'WITH rich AS (SELECT * FROM accounts WHERE balance > 1000) SELECT owner FROM rich', why: 'CTE' },
  {
    sql: 'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT sum(i) FROM n',
    why: 'recursive CTE',
  },
  {
    sql: "SELECT owner FROM accounts WHERE id IN (SELECT id FROM customers WHERE email LIKE '%@example.com')",
    why: 'subquery',
  },
  {
    sql: 'SELECT owner FROM accounts a WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = a.id)',
    why: 'EXISTS',
  },
  { sql: 'SELECT id FROM accounts UNION SELECT id FROM customers EXCEPT SELECT 0', why: 'set operations' },
  { sql: 'SELECT owner, rank() OVER (ORDER BY balance DESC) FROM accounts', why: 'window function' },
  {
    sql: 'SELECT * FROM generate_series(1, 3) AS g(i), LATERAL (SELECT i * 2 AS d) x',
    why: 'function in FROM, LATERAL',
  },
  { sql: 'SELECT pg_sleep(0)', why: 'pg_sleep is volatile but changes nothing' },
  { sql: "SELECT now(), current_user, current_setting('search_path')", why: 'built-ins' },
  { sql: "SELECT jsonb_build_object('id', id, 'owner', owner) FROM accounts", why: 'JSON built-ins' },
  { sql: "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", why: 'information_schema' },
  { sql: 'SELECT relname FROM pg_class LIMIT 1', why: 'system catalog' },
  { sql: 'VALUES (1), (2)', why: 'VALUES' },
  { sql: 'TABLE accounts', why: 'TABLE' },
  { sql: 'SHOW search_path', why: 'SHOW' },
  { sql: 'EXPLAIN SELECT * FROM accounts', why: 'plain EXPLAIN' },
  { sql: 'EXPLAIN ANALYZE SELECT count(*) FROM accounts', why: 'EXPLAIN ANALYZE of a read' },
  { sql: 'BEGIN', why: 'transaction start alone' },
  { sql: 'COMMIT', why: 'transaction end alone (a warning outside a transaction)' },
  { sql: 'BEGIN READ ONLY; SELECT 1; COMMIT', why: 'read-only transaction' },
  { sql: 'START TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1; ROLLBACK', why: 'isolation level' },
  // Not the timeouts: a read-only session cannot change those (session-state.ts, BOUNDED_TIMEOUTS).
  { sql: "SET TimeZone = 'UTC'", why: 'harmless setting' },
  { sql: "SET application_name = 'agent'; RESET TimeZone", why: 'harmless settings' },
  { sql: "SELECT 'DELETE FROM audit_log; DROP TABLE accounts'", why: 'write keywords inside a string' },
  { sql: "SELECT 'a'';DELETE FROM audit_log;--'", why: 'doubled quote keeps the write inside the string' },
  { sql: 'SELECT $$ DELETE FROM audit_log $$ AS not_a_write', why: 'write inside dollar quotes' },
  { sql: '/* DELETE FROM audit_log */ SELECT 1 -- ; DROP TABLE accounts', why: 'writes inside comments' },
  { sql: 'SELECT count(*) FROM U&"acc\\006Funts"', why: 'unicode-escaped identifier' },
];
