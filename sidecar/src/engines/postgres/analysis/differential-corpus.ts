// Attempts to make the sidecar's reading of a statement differ from what PostgreSQL 15 executes (issue 9):
// encodings, repeated options, expressions the analysis could drop, session state, the grammar version,
// quoting and lexing, side-effecting functions, procedural code, prepared statements, transactions and
// COPY. Each entry is sent, through a real sidecar, to a PostgreSQL 15 database whose upstream login is the
// database owner, under a read-only policy: statement kinds select, show, explain, set, transaction and
// prepare (DEALLOCATE), without side effects, on relations in public, pg_catalog and information_schema.
//
// - `deny`: refused with 42501 before any of it reaches the server;
// - `allow`: runs, is recorded with exactly the text sent, and changes nothing (a lookalike of an attack
//   that is harmless, or an option combination PostgreSQL does not execute).
//
// The e2e test (e2e/postgres/differential-corpus.test.ts) checks every entry and a checksum of all tables,
// sequences, large objects, settings, roles and objects on the owner connection before and after; the unit
// test (differential-corpus.test.ts) checks the analysis alone. Every entry parses in PostgreSQL 15: each
// was run as a non-superuser database owner against DIFFERENTIAL_SCHEMA_SQL in a scratch database, and
// none failed with a syntax error (some fail at run time: permissions, missing extension, no transaction).
//
// Entries run in order on one connection (EXECUTE p_ok(2) uses the PREPARE before it). Startup parameters
// (Client_Encoding=SJIS, Search_Path=secret, options=-c ..., options=-O) are attempts of their own, through
// a raw client: e2e/postgres/session-pins.test.ts.
import { CORPUS_SCHEMA_SQL } from './write-corpus.ts';

export const DIFFERENTIAL_CLASSES = [
  'encoding',
  'options',
  'expressions',
  'session-state',
  'parser-version',
  'lexing',
  'side-effects',
  'procedural',
  'prepared',
  'owner-objects',
  'transactions',
  'copy',
] as const;
export type DifferentialClass = (typeof DIFFERENTIAL_CLASSES)[number];

export interface DifferentialAttempt {
  readonly sql: string;
  readonly class: DifferentialClass;
  readonly why: string;
  readonly expect: 'deny' | 'allow';
  /** Calls a function of an extension (dblink, adminpack) the server may not have; denied before it. */
  readonly needsExtension?: boolean;
}

/**
 * The write corpus's schema plus: a secret schema, owner-defined functions named like PostgreSQL 16-18
 * syntax and built-ins (json_value, json_query, any_value, ...), a user operator, a domain whose CHECK
 * writes, an enum. Every owner-defined function writes a row into public.audit_log, so a call that slips
 * through shows up in the checksum.
 */
export const DIFFERENTIAL_SCHEMA_SQL = `${CORPUS_SCHEMA_SQL}
DROP SCHEMA IF EXISTS secret CASCADE;
CREATE SCHEMA secret;
CREATE TABLE secret.creds (id int, password text);
INSERT INTO secret.creds VALUES (1, 'hunter2');
CREATE TABLE secret.accounts (id int, owner text, balance numeric);
INSERT INTO secret.accounts VALUES (1, 'mallory', 1000000);
CREATE FUNCTION public.json_value(text, text) RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('json_value'); SELECT $2 $$;
CREATE FUNCTION public.json_query(text, text) RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('json_query'); SELECT $2 $$;
CREATE FUNCTION public.json_exists(text, text) RETURNS boolean LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('json_exists'); SELECT true $$;
CREATE FUNCTION public.json_serialize(text) RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('json_serialize'); SELECT $1 $$;
CREATE FUNCTION public.json_scalar(int) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('json_scalar'); SELECT $1 $$;
CREATE FUNCTION public.any_value(int) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('any_value'); SELECT $1 $$;
CREATE FUNCTION public.merge_action() RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('merge_action'); SELECT 'x' $$;
CREATE FUNCTION public.op_bump(int, int) RETURNS boolean LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('operator'); SELECT $1 = $2 $$;
CREATE OPERATOR public.=== (leftarg = int, rightarg = int, function = public.op_bump);
CREATE DOMAIN public.checked_int AS int CHECK (public.bump(VALUE) > 0);
CREATE TYPE public.mood AS ENUM ('ok', 'sad');
CREATE VIEW public.accounts_view AS SELECT id, owner FROM public.accounts;
`;

const deny = (c: DifferentialClass, sql: string, why: string): DifferentialAttempt => ({
  sql,
  class: c,
  why,
  expect: 'deny',
});
const allow = (c: DifferentialClass, sql: string, why: string): DifferentialAttempt => ({
  sql,
  class: c,
  why,
  expect: 'allow',
});

export const DIFFERENTIAL_CORPUS: readonly DifferentialAttempt[] = [
  // --- Encoding: anything that would make the server lex in another encoding -------------------------
  deny('encoding', "SET client_encoding = 'SJIS'", 'SJIS has ASCII trail bytes: 0x81 0x5C swallows a backslash'),
  deny('encoding', "SET client_encoding TO 'sjis'", 'lower-case name'),
  deny('encoding', "SET CLIENT_ENCODING = 'Shift_JIS'", 'upper-case setting, alias name'),
  deny('encoding', "SET NAMES 'SJIS'", 'SET NAMES is client_encoding'),
  deny('encoding', "SET NAMES 'BIG5'", 'BIG5 has ASCII trail bytes'),
  deny('encoding', "SET client_encoding = 'GBK'", 'GBK has ASCII trail bytes'),
  deny('encoding', "SET client_encoding = 'SQL_ASCII'", 'no validation: identifiers differ'),
  deny('encoding', "SET client_encoding = 'LATIN1'", 'another encoding, however ASCII-safe'),
  deny('encoding', 'SET client_encoding TO DEFAULT', 'any change of the client encoding'),
  deny('encoding', 'RESET client_encoding', 'any change of the client encoding'),
  deny('encoding', "SET LOCAL client_encoding = 'UHC'", 'LOCAL lasts to the end of the transaction'),
  deny('encoding', "BEGIN; SET LOCAL client_encoding = 'JOHAB'; SELECT 1; COMMIT", 'inside a transaction'),
  deny('encoding', "SELECT set_config('client_encoding', 'SJIS', false)", 'set_config changes it too'),
  deny(
    'encoding',
    "SELECT 1; SET client_encoding = 'GB18030'; SELECT 'after'",
    'the SET between two reads in one string',
  ),
  deny('encoding', 'SET "client_encoding" = \'SJIS\'', 'quoted setting name'),
  deny('encoding', "SET client_encoding = 'UTF8'", 'every SET of client_encoding is refused, even to UTF8'),
  // --- Option semantics: PostgreSQL applies repeated options in order, the last wins -------------------
  deny('options', 'EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM audit_log', 'last ANALYZE wins: executes'),
  deny('options', 'EXPLAIN (ANALYZE off, ANALYZE on) UPDATE accounts SET balance = 0', 'off/on spelling'),
  deny('options', 'EXPLAIN (ANALYZE 0, ANALYZE 1) DELETE FROM accounts', 'numeric spelling'),
  deny(
    'options',
    'EXPLAIN (ANALYZE FALSE, COSTS OFF, ANALYZE) INSERT INTO audit_log (msg) VALUES (1)',
    'bare option last',
  ),
  deny('options', "EXPLAIN (ANALYZE 'false', ANALYZE 'true') DELETE FROM audit_log", 'string spelling'),
  deny('options', 'EXPLAIN (ANALYSE false, ANALYZE true) DELETE FROM audit_log', 'British spelling is the same option'),
  deny('options', 'EXPLAIN (ANALYZE false, ANALYZE true) SELECT bump(1)', 'executes a writing function'),
  deny('options', "EXPLAIN (ANALYZE false, ANALYZE true) SELECT nextval('accounts_seq')", 'executes nextval'),
  deny(
    'options',
    'EXPLAIN (ANALYZE false, ANALYZE true) WITH d AS (DELETE FROM audit_log RETURNING 1) SELECT * FROM d',
    'writing CTE executed',
  ),
  deny('options', 'BEGIN READ ONLY, READ WRITE; DELETE FROM audit_log; COMMIT', 'last mode wins: read-write'),
  deny('options', 'BEGIN READ ONLY, READ WRITE', 'read-write transaction switches off the guard'),
  deny('options', 'START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, READ WRITE', 'mode at the end'),
  deny('options', 'BEGIN; SET TRANSACTION READ ONLY, READ WRITE; COMMIT', 'SET TRANSACTION repeated modes'),
  deny('options', 'SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, READ WRITE', 'session default repeated'),
  deny('options', 'BEGIN READ WRITE', 'plain read-write'),
  allow('options', 'EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM audit_log', 'last ANALYZE false: only planned'),
  allow('options', 'EXPLAIN (ANALYZE on, ANALYZE off, COSTS off) UPDATE accounts SET balance = 0', 'planned only'),
  allow('options', 'BEGIN READ WRITE, READ ONLY; SELECT 1; COMMIT', 'last mode read-only'),
  allow(
    'options',
    'BEGIN ISOLATION LEVEL SERIALIZABLE, ISOLATION LEVEL READ COMMITTED; SELECT 1; COMMIT',
    'isolation only',
  ),
  allow('options', 'EXPLAIN (ANALYZE true, ANALYZE true) SELECT count(*) FROM accounts', 'executes a plain read'),
  // --- Dropped expressions: every expression a statement carries is analysed ---------------------------
  // A statement prepared by an earlier Query string: its EXECUTE's own arguments run too (resolveSqlExecute).
  allow('expressions', 'PREPARE late(int) AS SELECT $1', 'prepares a harmless statement'),
  allow('expressions', 'EXECUTE late(2)', 'a constant argument'),
  deny('expressions', 'EXECUTE late(bump(1))', 'EXECUTE arguments of a statement prepared earlier run'),
  deny('expressions', "EXECUTE late(setval('accounts_seq', 7)::int)", 'setval as a later EXECUTE argument'),
  deny(
    'expressions',
    'EXECUTE late((SELECT count(*)::int FROM secret.creds))',
    'a read of another schema in an argument',
  ),
  deny('expressions', "EXECUTE late(nextval('accounts_seq')::int)", 'nextval as a later EXECUTE argument'),
  deny('expressions', 'EXECUTE late((SELECT bump(1)))', 'a writing function in a sub-select argument'),
  deny('expressions', 'EXECUTE late(pg_try_advisory_lock(1)::int)', 'a session-state function as an argument'),
  deny('expressions', "EXECUTE late(length(pg_read_file('/etc/hostname')))", 'a server file read as an argument'),
  allow('expressions', 'DEALLOCATE late', 'housekeeping'),
  deny('expressions', 'PREPARE r(int) AS SELECT $1; EXECUTE r(bump(1))', 'EXECUTE arguments run'),
  deny(
    'expressions',
    "PREPARE r2(bigint) AS SELECT $1; EXECUTE r2(nextval('accounts_seq'))",
    'nextval as an EXECUTE argument',
  ),
  deny(
    'expressions',
    "PREPARE r3(bigint) AS SELECT $1; EXECUTE r3(setval('accounts_seq', 99))",
    'setval as an EXECUTE argument',
  ),
  deny('expressions', 'SELECT * FROM accounts ORDER BY bump(id)', 'ORDER BY expression'),
  deny('expressions', 'SELECT * FROM accounts LIMIT bump(1)', 'LIMIT expression'),
  deny('expressions', 'SELECT * FROM accounts OFFSET bump(0)', 'OFFSET expression'),
  deny('expressions', 'SELECT owner, sum(balance) OVER (PARTITION BY bump(id)) FROM accounts', 'window PARTITION BY'),
  deny(
    'expressions',
    'SELECT owner, rank() OVER w FROM accounts WINDOW w AS (ORDER BY bump(id))',
    'named WINDOW clause',
  ),
  deny('expressions', 'SELECT owner FROM accounts GROUP BY owner HAVING bump(count(*)::int) > 0', 'HAVING'),
  deny('expressions', 'SELECT owner FROM accounts GROUP BY bump(id), owner', 'GROUP BY expression'),
  deny('expressions', 'SELECT DISTINCT ON (bump(id)) owner FROM accounts', 'DISTINCT ON expression'),
  deny('expressions', 'SELECT * FROM generate_series(1, bump(1))', 'function argument in FROM'),
  deny('expressions', 'SELECT * FROM ROWS FROM (generate_series(1, 2), bump(3)) AS t(a, b)', 'ROWS FROM'),
  deny('expressions', 'SELECT * FROM accounts a, LATERAL (SELECT bump(a.id)) l', 'LATERAL subquery'),
  deny('expressions', 'VALUES (1), (bump(2))', 'VALUES rows'),
  deny('expressions', 'SELECT CASE WHEN false THEN bump(1) ELSE 0 END', 'CASE branch'),
  deny('expressions', 'SELECT COALESCE(NULL, bump(1))', 'COALESCE argument'),
  deny('expressions', 'SELECT GREATEST(1, bump(2))', 'GREATEST argument'),
  deny('expressions', 'SELECT ARRAY[bump(1)]', 'ARRAY constructor'),
  deny('expressions', 'SELECT ROW(bump(1), 2)', 'ROW constructor'),
  deny('expressions', 'SELECT (SELECT bump(1))', 'scalar subquery'),
  deny('expressions', 'SELECT 1 WHERE EXISTS (SELECT bump(1))', 'EXISTS subquery'),
  deny('expressions', 'SELECT 1 WHERE 2 IN (SELECT bump(1))', 'IN subquery'),
  deny('expressions', 'SELECT 1 WHERE 2 = ANY (ARRAY[bump(1)])', 'ANY array'),
  deny('expressions', 'SELECT count(*) FILTER (WHERE bump(id) > 0) FROM accounts', 'aggregate FILTER'),
  deny('expressions', 'SELECT string_agg(owner, bump(1)::text ORDER BY owner) FROM accounts', 'aggregate argument'),
  deny('expressions', 'SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY bump(id)) FROM accounts', 'WITHIN GROUP'),
  deny(
    'expressions',
    'SELECT * FROM accounts WHERE id = (SELECT max(id) FROM accounts WHERE bump(1) > 0)',
    'nested WHERE',
  ),
  deny('expressions', 'SELECT xmlelement(name x, bump(1))', 'XML expression'),
  deny('expressions', "SELECT jsonb_build_object('k', bump(1))", 'function argument of a built-in'),
  deny('expressions', 'SELECT * FROM accounts a JOIN customers c ON bump(a.id) = c.id', 'JOIN condition'),
  deny('expressions', 'SELECT * FROM accounts FETCH FIRST bump(1) ROWS ONLY', 'FETCH FIRST count'),
  deny('expressions', 'SELECT (bump(1)).x', 'field selection of a call'),
  deny('expressions', 'SELECT * FROM accounts TABLESAMPLE BERNOULLI (bump(1))', 'TABLESAMPLE argument'),
  deny('expressions', 'SELECT * FROM accounts TABLESAMPLE BERNOULLI (10) REPEATABLE (bump(1))', 'REPEATABLE seed'),
  deny(
    'expressions',
    "SELECT * FROM XMLTABLE('/x' PASSING (SELECT bump(1)::text::xml) COLUMNS a int)",
    'XMLTABLE document expression',
  ),
  deny('expressions', 'SELECT 1 FROM accounts GROUP BY GROUPING SETS ((bump(id)))', 'GROUPING SETS'),
  deny('expressions', 'SELECT array(SELECT bump(1))', 'ARRAY subquery'),
  deny('expressions', 'SELECT nullif(1, bump(1))', 'NULLIF argument'),
  deny('expressions', 'SELECT 1 = ALL (SELECT bump(1))', 'ALL subquery'),
  deny('expressions', 'SELECT * FROM (VALUES (1)) v(a) JOIN LATERAL bump(v.a) b ON true', 'LATERAL function in FROM'),
  deny('expressions', 'SELECT (1, bump(1))::record', 'row cast'),
  deny('expressions', 'SELECT id FROM accounts UNION SELECT bump(1)', 'second branch of a set operation'),
  deny('expressions', 'WITH q AS MATERIALIZED (SELECT bump(1)) SELECT 1', 'unreferenced CTE with a call'),
  deny('expressions', 'DECLARE cur CURSOR WITH HOLD FOR SELECT bump(1)', 'DECLARE CURSOR query'),
  deny('expressions', 'CREATE TABLE public.t_as AS SELECT bump(1)', 'CREATE TABLE AS'),
  deny('expressions', 'COPY (SELECT bump(1)) TO STDOUT', 'COPY (query)'),
  deny('expressions', 'CALL public.touch_accounts()', 'CALL'),
  deny('expressions', "INSERT INTO audit_log (msg) VALUES ('x') RETURNING bump(id)", 'RETURNING'),
  deny(
    'expressions',
    "INSERT INTO accounts VALUES (1, 'a', 0) ON CONFLICT (id) DO UPDATE SET balance = bump(1)",
    'ON CONFLICT',
  ),
  deny('expressions', "SELECT pg_catalog.nextval('accounts_seq')", 'schema-qualified nextval'),
  deny('expressions', 'SELECT "nextval"(\'accounts_seq\')', 'quoted function name'),
  deny('expressions', "SELECT NEXTVAL('public.accounts_seq'::regclass)", 'upper case, regclass'),
  deny('expressions', "SELECT currval('accounts_seq') + setval('accounts_seq', 1)", 'setval in arithmetic'),
  deny('expressions', "SELECT 1 FROM accounts WHERE id = 1 AND setval('accounts_seq', 5) > 0", 'setval in WHERE'),
  deny('expressions', 'SELECT public.bump(1) IS NULL', 'call in IS NULL'),
  deny('expressions', 'SELECT 1::checked_int', 'cast to a domain whose CHECK writes'),
  deny('expressions', 'SELECT CAST(2 AS public.checked_int)', 'CAST syntax, qualified domain'),
  deny('expressions', 'SELECT 1 === 1', 'user-defined operator'),
  deny('expressions', 'SELECT 1 OPERATOR(public.===) 1', 'OPERATOR() syntax'),
  deny('expressions', 'SELECT 1 OPERATOR(public.=) 1', 'operator in a user schema'),
  deny('expressions', 'SELECT * FROM accounts ORDER BY id USING ===', 'ORDER BY USING a user operator'),
  allow('expressions', 'SELECT * FROM accounts ORDER BY id USING <', 'ORDER BY USING a built-in operator'),
  deny('expressions', "SELECT 'ok'::mood", 'a type outside pg_catalog may be a domain whose CHECK runs code'),
  allow('expressions', 'SELECT 1 WHERE 2 BETWEEN 1 AND 3 AND 2 NOT BETWEEN SYMMETRIC 5 AND 4', 'BETWEEN is built in'),
  allow('expressions', "SELECT currval('accounts_seq') IS NULL FROM accounts WHERE false", 'currval is a read'),
  allow('expressions', 'PREPARE ok_r(int) AS SELECT $1 + 1', 'prepares a harmless statement'),
  allow('expressions', 'EXECUTE ok_r(1)', 'plain EXECUTE argument of a statement prepared before'),
  allow('expressions', 'DEALLOCATE ok_r', 'housekeeping'),
  // --- Session state: search_path is pinned; role and guards cannot change -----------------------------
  deny('session-state', 'SET search_path = secret; SELECT * FROM creds', 'same string as the read'),
  deny('session-state', 'SET search_path = secret', 'SET search_path'),
  deny('session-state', 'SET search_path TO secret, public', 'several schemas'),
  deny('session-state', 'SET SESSION search_path = "secret"', 'SESSION, quoted'),
  deny('session-state', 'SET LOCAL search_path = secret', 'SET LOCAL'),
  deny('session-state', 'BEGIN; SET LOCAL search_path = secret; SELECT * FROM creds; COMMIT', 'LOCAL in a transaction'),
  deny('session-state', 'BEGIN; SET search_path = secret; ROLLBACK', 'a SET that would be rolled back'),
  deny('session-state', 'SET "Search_Path" = secret', 'quoted mixed-case name'),
  deny('session-state', 'SET SEARCH_PATH = secret', 'upper-case name'),
  deny('session-state', 'RESET search_path', 'RESET'),
  deny('session-state', 'SET search_path TO DEFAULT', 'DEFAULT'),
  deny('session-state', "SELECT set_config('search_path', 'secret', false)", 'set_config'),
  deny('session-state', "SELECT set_config('search_path', 'secret', true)", 'set_config local'),
  deny(
    'session-state',
    "SELECT * FROM accounts WHERE set_config('search_path', 'secret', false) IS NOT NULL",
    'set_config in WHERE',
  ),
  deny('session-state', 'SELECT * FROM secret.creds', 'explicit schema the policy does not allow'),
  deny('session-state', 'SELECT * FROM "secret".creds', 'quoted schema'),
  deny('session-state', 'SELECT * FROM SECRET.CREDS', 'upper-case schema folds'),
  deny('session-state', 'SELECT * FROM U&"secr\\0065t".creds', 'unicode-escaped schema'),
  deny(
    'session-state',
    'SELECT * FROM accounts WHERE id = (SELECT id FROM secret.creds)',
    'subquery in another schema',
  ),
  deny('session-state', 'TABLE secret.creds', 'TABLE form'),
  deny(
    'session-state',
    "SELECT 'secret.creds'::regclass::oid, pg_relation_size('secret.creds')",
    'relation named in a literal',
  ),
  deny('session-state', "SELECT table_to_xml('secret.creds', true, false, '')", 'reads a whole table named by a value'),
  deny('session-state', "SELECT query_to_xml('SELECT * FROM secret.creds', true, false, '')", 'runs SQL text'),
  deny('session-state', 'SET LOCAL ROLE NONE', 'role change'),
  deny('session-state', 'RESET SESSION AUTHORIZATION', 'session user change'),
  deny('session-state', "SELECT set_config('role', 'none', false)", 'role through set_config'),
  deny('session-state', "SET default_transaction_read_only TO 'false'", 'guard off'),
  deny('session-state', "SET default_transaction_read_only = 'of'", 'prefix spelling of off'),
  deny('session-state', 'SET default_transaction_read_only TO DEFAULT', 'DEFAULT may be off'),
  deny('session-state', 'RESET default_transaction_read_only', 'RESET may be off'),
  deny('session-state', 'SET transaction_read_only = false', 'guard off for the transaction'),
  deny('session-state', 'SET transaction_read_only TO DEFAULT', 'DEFAULT of the transaction guard'),
  deny('session-state', 'RESET transaction_read_only', 'RESET of the transaction guard'),
  deny('session-state', 'SET default_transaction_read_only = 0', 'numeric spelling of off'),
  deny('session-state', "SET default_transaction_read_only = 'n'", 'prefix spelling of no'),
  deny('session-state', "SET session_replication_role = 'replica'", 'skips triggers and foreign keys'),
  deny('session-state', "SET standard_conforming_strings TO 'no'", 'backslashes would escape quotes'),
  deny(
    'session-state',
    "SET standard_conforming_strings = off; SELECT 'x\\'; DELETE FROM audit_log; --'",
    'the SET and the attack together',
  ),
  deny('session-state', 'SET backslash_quote = on', 'changes how quotes are read'),
  deny('session-state', 'discard all', 'resets role and session authorization'),
  deny('session-state', 'RESET ALL', 'resets role and every setting'),
  allow('session-state', 'SHOW search_path', 'reading the setting is harmless'),
  allow('session-state', "SELECT current_setting('search_path'), current_schemas(true)", 'reads settings'),
  allow('session-state', "SET TimeZone = 'UTC'; SELECT * FROM accounts", 'harmless setting before a read'),
  // Timeouts bound what an agent's read holds (locks, a snapshot): a read-only session cannot lift them.
  deny('session-state', 'SET statement_timeout = 0; SELECT * FROM accounts', 'statement_timeout off before a read'),
  deny('session-state', 'SET LOCAL lock_timeout = 0', 'lock_timeout off for the transaction'),
  deny('session-state', 'RESET idle_in_transaction_session_timeout', 'RESET returns to the login value'),
  deny('session-state', 'SET idle_in_transaction_session_timeout TO DEFAULT', 'DEFAULT is the login value'),
  allow('session-state', 'SELECT * FROM accounts_view', 'plain view in public'),
  // --- Parser version: PostgreSQL 15's grammar, not 18's ---------------------------------------------
  deny('parser-version', "SELECT json_value('{\"a\":1}', '$.a')", 'a call of public.json_value to PostgreSQL 15'),
  deny('parser-version', "SELECT JSON_VALUE('{\"a\":1}', '$.a')", 'upper case is the same call'),
  deny('parser-version', "SELECT json_query('{\"a\":1}', '$.a')", 'json_query is a user function in 15'),
  deny('parser-version', "SELECT json_exists('{\"a\":1}', '$.a')", 'json_exists is a user function in 15'),
  deny('parser-version', "SELECT json_serialize('{}')", 'json_serialize is a user function in 15'),
  deny('parser-version', 'SELECT json_scalar(1)', 'json_scalar is a user function in 15'),
  deny('parser-version', 'SELECT any_value(id) FROM accounts', 'any_value is a built-in only from 16'),
  deny('parser-version', 'SELECT merge_action()', 'merge_action is syntax only from 17'),
  deny('parser-version', "SELECT * FROM accounts WHERE owner = json_value('x', 'alice')", 'in WHERE'),
  deny('parser-version', "SELECT owner FROM accounts ORDER BY json_query('x', owner)", 'in ORDER BY'),
  // --- Lexing: comments, quotes, dollar quotes, escapes -------------------------------------------------
  deny('lexing', "SELECT U&'\\0027'; DELETE FROM audit_log", 'unicode-escaped quote stays inside the string'),
  deny('lexing', "SELECT U&'!0027' UESCAPE '!'; DELETE FROM audit_log", 'UESCAPE with another escape character'),
  deny('lexing', 'SELECT 1 /* /* nested */ still comment */; DELETE FROM audit_log', 'nested comment'),
  deny('lexing', 'SELECT $a$ $b$ ; $b$ $a$; DELETE FROM audit_log', 'dollar quotes inside dollar quotes'),
  deny('lexing', 'SELECT $_$;$_$; UPDATE accounts SET balance = 0', 'underscore tag'),
  deny('lexing', "SELECT E'\\\\'; DELETE FROM audit_log; --'", 'escaped backslash closes the string'),
  deny('lexing', "SELECT 'a' -- comment ' \n; DELETE FROM audit_log", 'quote inside a line comment'),
  deny('lexing', "SELECT 'a'\n'b'; DELETE FROM audit_log", 'string continued over a newline'),
  deny('lexing', 'SELECT 1;;;DELETE FROM audit_log;;', 'empty statements around a write'),
  deny('lexing', 'SELECT 1\f; DELETE FROM audit_log', 'form feed is whitespace'),
  deny('lexing', 'DELETE/**/FROM/**/audit_log', 'comments as whitespace'),
  deny('lexing', 'DELETE FROM"audit_log"', 'no space before a quoted name'),
  deny('lexing', "SELECT b'1'; DELETE FROM audit_log", 'bit string'),
  deny('lexing', "SELECT x'1F'; DELETE FROM audit_log", 'hex bit string'),
  deny('lexing', "SELECT N'x'; DELETE FROM audit_log", 'national character string'),
  deny('lexing', 'SELECT 1 AS "a;"; DELETE FROM audit_log', 'semicolon in a quoted alias'),
  deny('lexing', "SELECT '\\'; DELETE FROM audit_log; --'", 'backslash is literal with standard strings on'),
  allow('lexing', "SELECT E'\\'; DELETE FROM audit_log; --'", 'escaped quote keeps the DELETE inside the string'),
  allow('lexing', "SELECT U&'d\\0061t\\+000061' AS s", 'unicode escapes in a harmless string'),
  allow('lexing', 'SELECT $$ DELETE FROM audit_log $$, $x$ ; $x$', 'write text in dollar quotes'),
  allow('lexing', "SELECT 'DELETE FROM audit_log' -- ; DELETE FROM audit_log", 'write text in a comment'),
  // --- Side-effecting functions --------------------------------------------------------------------------
  deny('side-effects', 'SELECT pg_advisory_lock(42)', 'session lock'),
  deny('side-effects', 'SELECT pg_try_advisory_xact_lock(42)', 'transaction lock'),
  deny('side-effects', 'SELECT pg_advisory_unlock_all()', 'releases locks'),
  deny('side-effects', "SELECT lo_import('/etc/hostname')", 'server file into a large object'),
  deny('side-effects', "SELECT lo_from_bytea(0, '\\x00')", 'creates a large object'),
  deny('side-effects', 'SELECT lo_creat(-1)', 'creates a large object'),
  deny('side-effects', 'SELECT lo_unlink(1)', 'deletes a large object'),
  deny('side-effects', "SELECT lo_export(1, '/tmp/chaperone-differential-lo')", 'writes a server file'),
  deny('side-effects', "SELECT pg_read_file('postgresql.conf')", 'reads a server file'),
  deny('side-effects', "SELECT * FROM pg_ls_dir('.')", 'lists a server directory'),
  deny('side-effects', "SELECT pg_stat_file('postgresql.conf')", 'inspects a server file'),
  deny('side-effects', 'SELECT pg_terminate_backend(pg_backend_pid())', 'ends a session'),
  deny('side-effects', 'SELECT pg_cancel_backend(0)', 'cancels a session'),
  deny('side-effects', 'SELECT pg_reload_conf()', 'reloads the configuration'),
  deny('side-effects', 'SELECT pg_stat_reset()', 'resets statistics'),
  deny('side-effects', "SELECT pg_notify('chaperone', 'x')", 'notification'),
  deny('side-effects', 'SELECT txid_current_if_assigned(), txid_current()', 'assigns a transaction id'),
  deny('side-effects', 'SELECT pg_current_xact_id()', 'assigns a transaction id'),
  deny('side-effects', "SELECT pg_logical_emit_message(true, 'x', 'y')", 'writes WAL'),
  deny('side-effects', 'SELECT pg_switch_wal()', 'switches WAL'),
  deny('side-effects', "SELECT set_config('default_transaction_read_only', 'false', false)", 'guard off'),
  deny('side-effects', "SELECT set_config('statement_timeout', '0', false)", 'any set_config'),
  deny('side-effects', 'SELECT setseed(0.5)', "changes the session's random sequence"),
  {
    ...deny('side-effects', "SELECT public.dblink_exec('dbname=postgres', 'DELETE FROM public.audit_log')", 'dblink'),
    needsExtension: true,
  },
  deny('side-effects', 'SELECT bump(1) AS b', 'owner function that writes'),
  deny('side-effects', 'SELECT public.bump(1)', 'qualified owner function'),
  deny('side-effects', 'SELECT "bump"(1)', 'quoted owner function'),
  deny('side-effects', "SELECT * FROM accounts WHERE owner = 'x' OR bump(1) > 0", 'owner function in WHERE'),
  deny('side-effects', "SELECT ts_stat('SELECT to_tsvector(password) FROM secret.creds')", 'ts_stat runs SQL text'),
  deny('side-effects', "SELECT cursor_to_xml('c', 1, true, false, '')", 'reads an open cursor'),
  allow('side-effects', 'SELECT pg_sleep(0), random() >= 0, clock_timestamp() IS NOT NULL', 'volatile but harmless'),
  allow('side-effects', 'SELECT pg_backend_pid() > 0, pg_is_in_recovery()', 'harmless built-ins'),
  // --- Procedural code -------------------------------------------------------------------------------
  deny('procedural', 'DO $$ BEGIN PERFORM 1; END $$', 'DO block, however harmless it looks'),
  deny('procedural', "DO LANGUAGE plpgsql 'BEGIN DELETE FROM audit_log; END'", 'DO with a quoted body'),
  deny('procedural', 'DO $x$ BEGIN EXECUTE $$DELETE FROM audit_log$$; END $x$', 'dynamic SQL in DO'),
  deny('procedural', 'CREATE FUNCTION public.tmp_f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$', 'creates a function'),
  deny(
    'procedural',
    'CREATE OR REPLACE FUNCTION public.bump(int) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$',
    'replaces one',
  ),
  deny(
    'procedural',
    'CREATE TRIGGER t AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()',
    'trigger',
  ),
  deny('procedural', 'CREATE RULE r AS ON INSERT TO accounts DO INSTEAD NOTHING', 'rule'),
  deny('procedural', 'CREATE VIEW public.v2 AS SELECT bump(1)', 'view over a writing function'),
  deny('procedural', 'CREATE TEMP TABLE accounts (id int)', 'temporary table shadowing a table'),
  deny('procedural', 'CREATE TEMP VIEW accounts_view AS SELECT * FROM secret.creds', 'temporary view shadowing a view'),
  // --- Prepared statements ------------------------------------------------------------------------------
  deny('prepared', 'PREPARE w AS DELETE FROM audit_log', 'PREPARE of a write'),
  deny(
    'prepared',
    'PREPARE w2 AS WITH d AS (DELETE FROM audit_log RETURNING 1) SELECT * FROM d',
    'PREPARE of a writing CTE',
  ),
  deny('prepared', 'PREPARE w3 AS SELECT bump(1)', 'PREPARE of a writing function'),
  deny('prepared', 'PREPARE w4 AS SELECT * FROM secret.creds', 'PREPARE of a read the policy forbids'),
  deny('prepared', 'EXECUTE never_prepared', 'EXECUTE of a name the sidecar did not see'),
  deny(
    'prepared',
    'PREPARE w5(int) AS SELECT $1; DEALLOCATE w5; PREPARE w5 AS DELETE FROM audit_log; EXECUTE w5',
    'redefine a name',
  ),
  deny('prepared', "PREPARE TRANSACTION 'gid1'", 'two-phase commit survives the session'),
  deny('prepared', "COMMIT PREPARED 'gid1'", 'two-phase commit'),
  allow('prepared', 'PREPARE p_ok(int) AS SELECT owner FROM accounts WHERE id = $1', 'prepared read'),
  allow('prepared', 'EXECUTE p_ok(2)', 'runs the prepared read'),
  deny(
    'prepared',
    'PREPARE p_ok2(int) AS SELECT $1; EXECUTE p_ok2(1)',
    'EXECUTE in the string that PREPAREs it: not yet known, refused',
  ),
  allow('prepared', 'DEALLOCATE ALL', 'housekeeping'),
  // --- Transactions -----------------------------------------------------------------------------------
  deny('transactions', 'BEGIN; SELECT 1; COMMIT; DELETE FROM audit_log', 'write after a commit'),
  deny('transactions', 'COMMIT AND CHAIN; DELETE FROM audit_log', 'chained transaction'),
  deny('transactions', 'SAVEPOINT s; DELETE FROM audit_log; ROLLBACK TO s', 'savepoint around a write'),
  deny('transactions', 'BEGIN; LOCK TABLE accounts; COMMIT', 'lock'),
  deny('transactions', 'SELECT * FROM accounts FOR UPDATE SKIP LOCKED', 'row locks'),
  deny('transactions', 'SELECT * FROM accounts FOR KEY SHARE', 'row locks, weakest form'),
  deny('transactions', 'WITH x AS (SELECT * FROM accounts FOR UPDATE) SELECT 1', 'row locks in an unreferenced CTE'),
  deny('transactions', 'SELECT (SELECT 1 FROM accounts LIMIT 1 FOR SHARE)', 'row locks in a scalar subquery'),
  deny('transactions', 'VALUES ((SELECT 1 FROM accounts LIMIT 1 FOR NO KEY UPDATE))', 'row locks in VALUES'),
  deny('transactions', 'COPY (SELECT * FROM accounts FOR UPDATE) TO STDOUT', 'row locks in COPY'),
  allow(
    'transactions',
    'BEGIN READ ONLY; SELECT 1; ROLLBACK AND CHAIN; SELECT 1; ROLLBACK',
    'a chained transaction keeps its read-only mode',
  ),
  allow('transactions', 'BEGIN; SELECT count(*) FROM accounts; ROLLBACK', 'read in a transaction'),
  allow(
    'transactions',
    'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE; SELECT 1; COMMIT',
    'read-only modes',
  ),
  // --- COPY ---------------------------------------------------------------------------------------------
  deny('copy', "COPY accounts TO PROGRAM 'touch /tmp/chaperone-differential-program'", 'runs a shell command'),
  deny('copy', "COPY (SELECT 1) TO PROGRAM 'touch /tmp/chaperone-differential-program'", 'query to a program'),
  deny('copy', "COPY accounts FROM PROGRAM 'echo 9,x,0' (FORMAT csv)", 'loads from a program'),
  deny('copy', "COPY audit_log (msg) FROM '/etc/hostname'", 'loads a server file'),
  deny('copy', "COPY accounts TO '/tmp/chaperone-differential-copy'", 'writes a server file'),
  deny('copy', 'COPY accounts (id) FROM STDIN', 'loads rows'),
  deny('copy', 'COPY (DELETE FROM audit_log RETURNING *) TO STDOUT', 'write inside COPY'),
  deny('copy', 'COPY secret.creds TO STDOUT', 'bulk read of another schema'),
];

/**
 * Writes no text analysis can see, through objects the database owner defined: PostgreSQL runs owner code
 * for them. The database-enforced layer (the least-privilege credential, default_transaction_read_only)
 * must refuse them; DIFFERENTIAL_SCHEMA_SQL does not create these objects, OWNER_OBJECTS_SQL does.
 */
export const OWNER_OBJECTS_SQL = `
CREATE FUNCTION public.leak(public.accounts) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('functional notation'); SELECT 1 $$;
CREATE VIEW public.bump_view AS SELECT public.bump(1) AS b;
CREATE FUNCTION public.random(int, int) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('random(int, int)'); SELECT $1 $$;
CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('lower(int)'); SELECT $1 $$;
CREATE FUNCTION public.text_plus(text, text) RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.audit_log (msg) VALUES ('text + text'); SELECT $1 || $2 $$;
CREATE OPERATOR public.+ (leftarg = text, rightarg = text, function = public.text_plus);
`;

/** Reads, to the analysis, that run owner code writing a row (see OWNER_OBJECTS_SQL). */
export const OWNER_OBJECT_WRITES: readonly DifferentialAttempt[] = [
  allow('owner-objects', 'SELECT a.leak FROM accounts a', 'functional notation: a.leak is leak(a)'),
  allow('owner-objects', 'SELECT * FROM bump_view', 'a view over a writing function'),
  allow('owner-objects', 'SELECT random(1, 10)', 'random(int, int) is built in only from PostgreSQL 17'),
  allow('owner-objects', 'SELECT lower(1)', 'an overload of a built-in name for other argument types'),
  allow('owner-objects', "SELECT 'a'::text + 'b'::text", 'a user operator with a built-in name'),
];
