// The read-back corpus (eleventh session's masking red team): a masked value stored somewhere the masked
// identity can read it back as an ordinary value, and result paths the earlier corpora did not try. Each
// step runs as a simple Query over a raw socket through a real sidecar to a real PostgreSQL; the bytes the
// agent gets back from every step are searched for every masked value in every encoding (leakIn), and each
// step must end as expected: `masked` (runs, its result masked), `denied` (42501 from the sidecar), `runs`
// (a preparing or reading-back step; it must leak nothing either).
//
// Classes:
// - built-ins that keep their argument where a later statement reads it: advisory lock keys (all the lock
//   functions, read back from pg_locks), sequences (setval), the random seed (setseed, then random());
// - statistics and other sessions' texts through a view the owner made over pg_stats, a materialized view of
//   them, a view over a function that runs SQL given as text: the views' definitions read what a statement
//   naming pg_stats is refused;
// - a PREPAREd statement whose view was redefined (or whose table was replaced by a view) after the PREPARE:
//   the server plans EXECUTE against the current definitions, so the prepared text is walked again;
// - RETURNING of the FROM / USING items of UPDATE and DELETE, of ON CONFLICT DO UPDATE, DELETE … RETURNING *;
// - formats: text search (to_tsvector, ts_debug, ts_lexize), xml (xmlforest, xmlparse, ::xml, xpath, xmlagg),
//   composites, ranges, arrays, quoting and encoding functions, COPY of the new views, cursor_to_xml.
//
// The denyPredicates test tries what decides a result's rows, their number or their order from a masked
// value without a WHERE: LIMIT / OFFSET, set-returning functions in FROM and in the select list, an
// aggregate's ORDER BY. The policy-reload test prepares and declares under a policy without masking, then
// executes and fetches under one with it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { poll } from '../harness/poll.ts';
import {
  authenticatedClient,
  cstr,
  errorFields,
  i16,
  i32,
  msg,
  parseBackend,
  query,
  SYNC,
  type RawClient,
} from '../postgres/raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const AGENT = 'system:serviceaccount:ci:agent';

/** The owner's own objects, made straight at the database: monitoring views, a sequence. */
const OWNER_SQL = `
${MASKING_SCHEMA_SQL}
create sequence leak_seq;
create view stats_report as
  select tablename, attname, histogram_bounds::text as bounds, most_common_vals::text as common
  from pg_stats where schemaname = 'public';
create materialized view stats_snapshot as
  select attname, histogram_bounds::text as bounds from pg_stats where tablename = 'customers';
create view xml_report as select query_to_xml('select email, ssn from customers', true, false, '') as x;
create view activity_report as select pid, query from pg_stat_activity;
`;

type Expectation = 'masked' | 'denied' | 'runs';

interface Step {
  readonly class: string;
  readonly sql: string;
  readonly expect: Expectation;
}

const steps = (cls: string, expect: Expectation, ...sqls: string[]): Step[] =>
  sqls.map((sql) => ({ class: cls, sql, expect }));

const SSN_DIGITS = "replace(ssn, '-', '')::bigint";
const LOCKS = "select classid::text, objid::text from pg_locks where locktype = 'advisory' order by 1, 2";

export const READBACK_CORPUS: readonly Step[] = [
  // pg_locks shows every session's advisory lock keys: 123456789 comes back as objid.
  ...steps(
    'advisory lock keys',
    'denied',
    `select pg_try_advisory_lock(${SSN_DIGITS}) from customers where id = 1`,
    `select pg_advisory_lock_shared(${SSN_DIGITS}) from customers where id = 1`,
    `select pg_try_advisory_lock_shared(${SSN_DIGITS}) from customers where id = 1`,
    `select pg_try_advisory_lock(0, replace(ssn, '-', '')::int) from customers where id = 1`,
    `select pg_catalog.pg_advisory_lock(${SSN_DIGITS}) from customers where id = 1`,
    `select 1 from customers where pg_try_advisory_lock(${SSN_DIGITS})`,
    `begin; select pg_advisory_xact_lock(${SSN_DIGITS}) from customers where id = 1; ${LOCKS}; commit`,
    `begin; select pg_try_advisory_xact_lock_shared(${SSN_DIGITS}) from customers where id = 1; ${LOCKS}; commit`,
  ),
  ...steps('advisory lock keys', 'runs', LOCKS, 'select pg_advisory_unlock_all()'),
  // A sequence keeps what setval gave it; the random seed decides every later random().
  ...steps(
    'sequence and seed',
    'denied',
    `select setval('leak_seq', ${SSN_DIGITS}) from customers where id = 1`,
    `select pg_catalog.setval('leak_seq', ${SSN_DIGITS}, true) from customers where id = 1`,
    `select 1 from customers where setval('leak_seq', ${SSN_DIGITS}) > 0`,
    `select setseed(${SSN_DIGITS} / 1e9) from customers where id = 1`,
    `select pg_catalog.setseed((select ${SSN_DIGITS} from customers where id = 1) / 1e9)`,
  ),
  ...steps('sequence and seed', 'runs', 'select last_value::text from leak_seq', 'select random()'),
  // The owner's views over pg_stats and functions that run SQL text: refused like the names themselves.
  ...steps(
    'statistics and SQL text through views',
    'denied',
    'select * from stats_report',
    "select bounds from stats_report where attname = 'ssn'",
    'select * from stats_snapshot',
    'table stats_snapshot',
    'select x from xml_report',
    'select * from activity_report',
    'select * from pg_stat_replication',
    'copy (select * from stats_report) to stdout',
    'create view my_report as select * from stats_report',
    'create view my_stats as select histogram_bounds::text from pg_stats',
  ),
  // The server plans EXECUTE against the current definitions (a view redefined, a table replaced by a view).
  ...steps(
    'prepared statement over a changed view',
    'runs',
    'create view clean_names as select id, name as label from customers',
    'prepare stale as select label from clean_names order by id',
    'prepare stale_star as select * from clean_names order by id',
    'create table plain (label text)',
    "insert into plain values ('x')",
    'prepare stale_table as select label from plain',
    'execute stale',
    'create or replace view clean_names as select id, email as label from customers',
  ),
  ...steps('prepared statement over a changed view', 'masked', 'execute stale', 'execute stale_star'),
  ...steps(
    'prepared statement over a changed view',
    'runs',
    'drop view clean_names',
    'create view clean_names as select id, ssn as label from customers',
  ),
  ...steps('prepared statement over a changed view', 'masked', 'execute stale', 'execute stale_star'),
  ...steps(
    'prepared statement over a changed view',
    'runs',
    'drop table plain',
    'create view plain as select ssn as label from customers',
  ),
  ...steps('prepared statement over a changed view', 'masked', 'execute stale_table'),
  // CREATE TABLE AS EXECUTE copies the prepared statement's rows into a table of the agent's.
  ...steps(
    'prepared statement over a changed view',
    'runs',
    'prepare copied as select email, ssn from customers',
    'create table copied_clean as select name from customers',
  ),
  ...steps('prepared statement over a changed view', 'denied', 'create table stolen as execute copied'),
  ...steps('prepared statement over a changed view', 'runs', 'deallocate all'),
  // RETURNING may name every FROM / USING item, not only the target.
  ...steps(
    'returning',
    'masked',
    'update products p set price = price from customers c where c.id = p.id returning c.email, c.ssn',
    'update products p set price = price from customers c where c.id = p.id returning c',
    'update products p set price = price from customers c where c.id = p.id returning row_to_json(c)',
    'begin; delete from products p using customers c where p.id = c.id returning c.*; rollback',
    "insert into customers (id, name) values (1, 'x') on conflict (id) do update set name = customers.name returning email, ssn",
    'begin; delete from customers where id = 2 returning *; rollback',
    'begin; with d as (delete from customers where id = 1 returning *) select d.ssn, d.email from d; rollback',
    'update customers set score = score where id = 1 returning (select ssn from customers c2 where c2.id = 2)',
  ),
  ...steps(
    'formats',
    'masked',
    "select to_tsvector('simple', email) from customers",
    "select token from ts_debug('simple', (select email from customers where id = 1))",
    "select * from ts_debug('simple', (select ssn from customers where id = 1))",
    "select ts_lexize('simple', ssn) from customers",
    "select to_tsvector('simple', ssn)::text from customers",
    'select (c.email, c.ssn)::text from customers c',
    'select (row(c.*)::customers).ssn from customers c',
    "select int4range(0, replace(ssn, '-', '')::int) from customers",
    "select numrange(0, replace(ssn, '-', '')::numeric)::text from customers",
    'select xmlforest(email, ssn) from customers',
    'select xmlparse(content ssn) from customers',
    'select ssn::xml from customers',
    "select xpath('/a/text()', xmlelement(name a, ssn)) from customers",
    'select xmlagg(xmlelement(name e, email)) from customers',
    "select string_to_array(ssn, '-') from customers",
    "select array_to_string(array_agg(ssn), ',') from customers",
    'select (array_agg(email))[1] from customers',
    "select format('%I %L', email, ssn) from customers",
    'select quote_literal(ssn), quote_ident(email) from customers',
    "select concat_ws(',', email, ssn) from customers",
    "select convert_to(ssn, 'LATIN1') from customers",
    'select ssn::bytea::text from customers',
    'select jsonb_object_agg(id, ssn) from customers',
    'select json_object(array[email, ssn]) from customers',
    "select * from json_to_record(json_build_object('e', (select email from customers where id = 1))) as r(e text)",
    'select * from customers c, lateral (select c.ssn) x',
    'select * from (values ((select email from customers where id = 1))) v(e)',
    "select * from xmltable('/r' passing (select xmlelement(name r, ssn) from customers where id = 1) columns v text path '.')",
    "select * from xmltable('/r/@e' passing (select xmlelement(name r, xmlattributes(email as e)) from customers where id = 1) columns v text path '.')",
  ),
  ...steps(
    'formats',
    'denied',
    "begin; declare x1 cursor for select email, ssn from customers; select cursor_to_xml('x1', 10, false, false, ''); commit",
    "select table_to_xml('customers', true, false, '')",
    'copy (table customers) to stdout (format binary)',
    'copy (values ((select ssn from customers where id = 1))) to stdout',
  ),
];

async function run(
  client: RawClient,
  sql: string | Buffer,
): Promise<{ bytes: Buffer; messages: { type: string; body: Buffer }[] }> {
  const before = client.receivedLength;
  const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(typeof sql === 'string' ? query(sql) : sql);
  const ok = await client.until(
    () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
    30_000,
  );
  assert.ok(ok, `no ReadyForQuery after ${sql.toString()} (${client.end})`);
  const bytes = client.received.subarray(before);
  return { bytes, messages: parseBackend(bytes).messages };
}

/** Runs steps in order on one connection; returns what went other than expected. */
async function runSteps(client: RawClient, corpus: readonly Step[]): Promise<string[]> {
  const failures: string[] = [];
  for (const step of corpus) {
    const { bytes, messages } = await run(client, step.sql);
    const where = `[${step.class}] ${step.sql}`;
    const leak = leakIn(bytes);
    if (leak !== undefined) failures.push(`${where}: LEAKED ${leak}`);
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    if (step.expect !== 'denied' && errors.length > 0) {
      failures.push(`${where}: expected it to run, got ${errors.map((e) => `${e.code} ${e.message}`).join('; ')}`);
    }
    if (step.expect === 'masked' && !messages.some((m) => m.type === 'D')) failures.push(`${where}: no rows`);
    if (step.expect === 'denied' && !errors.some((e) => e.code === '42501' && e.message.startsWith('chaperone:'))) {
      failures.push(`${where}: expected a denial, got ${errors.map((e) => `${e.code} ${e.message}`).join('; ')}`);
    }
    const ready = messages.filter((m) => m.type === 'Z').at(-1);
    if (ready !== undefined && ready.body.toString() !== 'I') await run(client, 'rollback');
  }
  return failures;
}

test('the read-back corpus: no masked value comes back through what a statement stored, a view of statistics, a stale prepared statement, RETURNING or another format', async (t) => {
  const database = await createTestDatabase(t, OWNER_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  try {
    const failures = await runSteps(client, READBACK_CORPUS);
    assert.deepEqual(failures, [], failures.join('\n'));
    // Controls: the clean columns of the same statements come through, the owner's sequence is untouched.
    const clear = await run(client, 'select name from customers order by id; select last_value::text from leak_seq');
    const text = clear.bytes.toString('utf8');
    assert.ok(text.includes('Alice Example') && text.includes('Bob Example'), text);
    assert.match(text, /\b1\b/, 'leak_seq was never set');
    const made = await run(client, "select count(*)::text || ' stolen' from pg_class where relname = 'stolen'");
    assert.ok(made.bytes.toString('utf8').includes('0 stolen'), 'CREATE TABLE AS EXECUTE made no table');
  } finally {
    client.destroy();
  }
});

const STRICT_PREDICATES: AccessPolicySpec = {
  ...MASKED_POLICY,
  masking: [
    { name: 'ssn', columns: ['customers.ssn'], strategy: 'redact', denyPredicates: true },
    { name: 'emails', columns: ['customers.email'], strategy: 'hash' },
  ],
};

const FIRST_DIGIT = '(select ascii(substr(ssn, 1, 1)) - 48 from customers where id = 1)';

test('denyPredicates: a masked value may not decide the rows, their number or their order, whatever the clause', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { strict: STRICT_PREDICATES }, database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  try {
    const failures = await runSteps(client, [
      ...steps(
        'row count and order without WHERE',
        'denied',
        `select id from generate_series(1, 100) id limit ${FIRST_DIGIT}`,
        `select id from generate_series(1, 100) id offset ${FIRST_DIGIT}`,
        `select id from generate_series(1, 100) id fetch first ${FIRST_DIGIT} rows only`,
        `select count(*) from generate_series(1, ${FIRST_DIGIT})`,
        "select count(*) from customers c, regexp_split_to_table(c.ssn, '') x where c.id = 1",
        'select count(*) from (select generate_series(1, ascii(substr(ssn, 1, 1))) from customers where id = 1) s',
        "select count(*) from (select unnest(string_to_array(ssn, '5')) from customers) s",
        'select array_agg(id order by ssn) from customers',
        "select string_agg(name, ',' order by ssn desc) from customers",
        `select id from customers where id = ${FIRST_DIGIT}`,
        "select count(*) filter (where ssn like '1%') from customers",
        // The size of a window frame: count(*) over the last N rows is N + 1.
        `select max(c) from (select count(*) over (order by g rows between ${FIRST_DIGIT} preceding and current row) c from generate_series(1, 20) g) s`,
        `select max(c) from (select count(*) over w c from generate_series(1, 20) g window w as (order by g rows between current row and ${FIRST_DIGIT} following)) s`,
      ),
      // Controls: masked columns in the result; predicates, limits, set-returning functions and aggregate
      // orderings over clean values. (denyPredicates of any rule applies to every masked column.)
      ...steps(
        'controls',
        'masked',
        'select id, ssn, email from customers order by id',
        "select count(*) from customers where name like 'A%'",
        'select array_agg(id order by name) from customers',
        'select id from customers order by id limit 1 offset 1',
        'select count(*) from generate_series(1, 3)',
        "select ssn, x from customers, regexp_split_to_table(name, ' ') x",
      ),
    ]);
    assert.deepEqual(failures, [], failures.join('\n'));
  } finally {
    client.destroy();
  }
});

const UNMASKED_POLICY: AccessPolicySpec = { ...MASKED_POLICY, masking: [] };

test('a statement prepared and a cursor declared before masking applied: EXECUTE and FETCH after the reload are masked', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { team: UNMASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  try {
    const before = await runSteps(
      client,
      steps(
        'before the reload',
        'runs',
        'prepare early as select email, ssn from customers order by id',
        'declare early_cursor cursor with hold for select email, ssn, card from customers order by id',
      ),
    );
    assert.deepEqual(before, []);
    const digest = await writePolicyBundle(sidecar.bundleDir, 'team', MASKED_POLICY);
    await poll('the sidecar to load the masking policy', () =>
      Promise.resolve(
        sidecar
          .logs()
          .split('\n')
          .some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(digest))
          ? true
          : undefined,
      ),
    );
    const failures = await runSteps(client, [
      ...steps(
        'after the reload',
        'masked',
        'execute early',
        'fetch 1 from early_cursor',
        'fetch all from early_cursor',
      ),
      ...steps('after the reload', 'runs', 'close early_cursor', 'deallocate early'),
    ]);
    assert.deepEqual(failures, [], failures.join('\n'));
  } finally {
    client.destroy();
  }
});

test('a protocol-level named statement over a view redefined after its Parse: each Execute is masked as the server plans it now', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  const bind = (formats: number[]): Buffer =>
    msg('B', cstr(''), cstr('sv'), i16(0), i16(0), i16(formats.length), ...formats.map((f) => i16(f)));
  const execute = msg('E', cstr(''), i32(0));
  const describe = msg('D', Buffer.from('P'), cstr(''));
  try {
    const ddl = async (sql: string): Promise<void> => {
      const { messages } = await run(client, sql);
      assert.equal(messages.filter((m) => m.type === 'E').length, 0, sql);
    };
    await ddl('create view proto_names as select id, name as label from customers');
    const parsed = await run(
      client,
      Buffer.concat([msg('P', cstr('sv'), cstr('select label from proto_names order by id'), i16(0)), SYNC]),
    );
    assert.equal(parsed.messages.filter((m) => m.type === 'E').length, 0);
    const before = await run(client, Buffer.concat([bind([]), describe, execute, SYNC]));
    assert.ok(
      before.bytes.toString('utf8').includes('Alice Example'),
      `the clean view reads clear names: ${JSON.stringify(before.messages.map((m) => [m.type, m.body.toString('latin1')]))}`,
    );
    for (const [label, definition] of [
      ['email', 'select id, email as label from customers'],
      ['ssn', 'select id, ssn as label from customers'],
    ] as const) {
      await ddl(`create or replace view proto_names as ${definition}`);
      for (const [how, frames] of [
        ['text, described', [bind([]), describe, execute, SYNC]],
        ['binary, described', [bind([1]), describe, execute, SYNC]],
        ['text, not described', [bind([]), execute, SYNC]],
      ] as const) {
        const { bytes, messages } = await run(client, Buffer.concat(frames));
        assert.equal(leakIn(bytes), undefined, `${label}, ${how}: a masked value leaked`);
        assert.equal(messages.filter((m) => m.type === 'D').length, 2, `${label}, ${how}: two rows`);
      }
    }
  } finally {
    client.destroy();
  }
});
