// The angles corpus (fifteenth session's masking red team): ways to the masked values the earlier corpora
// (bypass, output-shape, read-back, name-reuse, async-leak, default-expressions) do not try — REFRESH of a
// stored copy whose refresh fails on a value, set operations pairing a masked column with another table's,
// WITH ORDINALITY, cube and grouping sets, more windows and aggregates (keys of json_object_agg, xmlagg,
// DISTINCT), hstore of a whole row, string functions (SIMILAR substring, concat_ws, regexp_substr,
// normalize), literals a CASE chooses by a masked value, an owner's IMMUTABLE function folded into a plan
// by EXPLAIN, cast and size errors in WHERE, ORDER BY, GROUP BY and joins, statistics by other names, writes
// through UPDATE … FROM, row assignment and VALUES subqueries, and the comparison oracles the product
// promises to allow by default and to refuse under `denyPredicates` — also inside views the agent makes,
// prepared statements, cursors, lateral subqueries and the WHERE of writes, whose row counts answer too.
// Each step is a simple Query through a real sidecar to a real PostgreSQL, judged on the bytes the agent gets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { superuserSql } from '../harness/env.ts';
import { authenticatedClient } from '../postgres/raw-client.ts';
import { MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';
import { runCorpus, steps, stepsWithout, type Step } from './corpus-steps.ts';

/**
 * The owner's objects: an IMMUTABLE function that reads a table (the planner folds a call with
 * constant arguments into the plan), a materialized view made empty whose REFRESH fails on a duplicate SSN,
 * and a scratch table of the agent's.
 */
const OWNER_SQL = `
${MASKING_SCHEMA_SQL}
create function ssn_of(i int) returns text language sql immutable as $$ select ssn from customers where id = i $$;
create materialized view ssn_twice as select c.ssn, g from customers c, generate_series(1, 2) g with no data;
create unique index ssn_twice_ssn on ssn_twice (ssn);
create table stash (id int, s text, n numeric);
`;

const ANGLES_CORPUS: readonly Step[] = [
  ...steps(
    'REFRESH of a stored copy',
    'runs',
    "update customers set name = 'Alice Changed' where id = 1",
    'refresh materialized view customer_emails_mv',
  ),
  ...steps('REFRESH of a stored copy', 'masked', 'select * from customer_emails_mv', 'table customer_emails_mv'),
  // The unique index fails on the first duplicate: "Key (ssn)=(123-45-6789) is duplicated."
  ...steps('REFRESH of a stored copy', 'error', 'refresh materialized view ssn_twice'),
  ...steps(
    'set operations pairing a masked column with another table’s',
    'masked',
    'select name from products union select ssn from customers',
    'select name from products union all select email from customers order by 1',
    'select ssn from customers intersect all select ssn from customers',
    'select name from products except select ssn from customers',
    'select * from (select id, name from products union all select id, ssn from customers) u(i, x) where i = 1',
    "select x from (values ('v')) v(x) union select card from customers",
    '(select ssn from customers limit 1) union (select name from products limit 1)',
  ),
  ...steps(
    'LATERAL and WITH ORDINALITY',
    'masked',
    'select * from customers c, unnest(array[c.ssn, c.email]) with ordinality u(v, n)',
    "select u.* from customers c cross join lateral string_to_table(c.ssn, '-') with ordinality u",
    'select * from unnest(array(select ssn from customers)) with ordinality as u(s, n)',
    'select * from json_array_elements_text((select json_agg(ssn) from customers)) with ordinality',
    'select * from rows from (unnest(array(select email from customers)), generate_series(1, 2)) with ordinality',
    "select * from regexp_matches((select string_agg(ssn, ',') from customers), '[0-9]+', 'g') with ordinality",
    'select t.x from customers c, lateral (select c.ssn union select c.card) t(x)',
  ),
  ...steps(
    'cube and grouping sets keys',
    'masked',
    'select ssn, name, count(*) from customers group by cube (ssn, name)',
    'select ssn, email from customers group by grouping sets ((ssn), (email), ())',
    'select grouping(ssn), ssn from customers group by rollup (ssn, id)',
    'select distinct ssn from customers group by distinct rollup (ssn), cube (ssn)',
  ),
  ...steps(
    'windows and aggregates',
    'masked',
    "select lead(ssn, 1, 'none') over (order by id), last_value(email) over w from customers window w as (order by id rows between unbounded preceding and unbounded following)",
    'select nth_value(ssn, 2) over (order by id rows between unbounded preceding and unbounded following) from customers',
    'select jsonb_agg(ssn), jsonb_agg(c order by id) from customers c',
    'select json_object_agg(ssn, id), jsonb_object_agg(email, name) from customers',
    'select xmlagg(xmlelement(name s, ssn)) from customers',
    "select array_agg(distinct ssn), string_agg(distinct email, ',') from customers",
    'select array_agg(row(ssn, email))::text, array_agg(c.*) from customers c',
    'select jsonb_object_agg(id, c) from customers c',
    'select max(ssn) over (partition by id), min(card) over () from customers',
    'select percentile_disc(0.5) within group (order by ssn) from customers',
  ),
  ...steps(
    'whole rows and json',
    'masked',
    'select json_strip_nulls(row_to_json(c)) from customers c',
    'select (select row_to_json(x) from (select c.ssn) x) from customers c',
    "select jsonb_path_query('{}', '$v', jsonb_build_object('v', ssn)) from customers",
    'select to_json(c.*)::text from customers c',
  ),
  ...steps(
    'string functions',
    'masked',
    "select substring(ssn similar '%#\"[0-9]+#\"%' escape '#') from customers",
    "select substring(ssn from '[0-9]+'), regexp_substr(email, '[a-z]+') from customers",
    "select concat_ws('-', ssn, name), format('%1$s|%1$s', email) from customers",
    'select normalize(ssn), initcap(email), ssn::char(20), ssn::name from customers',
    "select encode(ssn::bytea, 'escape'), convert_from(convert_to(ssn, 'LATIN1'), 'LATIN1') from customers",
    "select array_to_string(string_to_array(ssn, null), ' ') from customers",
    "select to_tsvector('simple', email), plainto_tsquery('simple', ssn) from customers",
    'select xmlforest(ssn, email), xmlcomment(ssn) from customers',
    "select ('{' || ssn || '}')::text[] from customers",
    "select to_number(ssn, '999-99-9999'), split_part(ssn, '-', 3)::int from customers",
  ),
  // A literal a CASE chooses by a masked value is a value computed from it: redacted, not the literal.
  ...stepsWithout(
    'literals chosen by a masked value',
    'masked',
    ['BIGSSN', 'SMALLSSN', 'LIKES-A'],
    "select case when ssn > '5' then 'BIGSSN' else 'SMALLSSN' end from customers",
    "select id, exists (select 1 where c.email like 'a%') as b, case when c.email like 'a%' then 'LIKES-A' end from customers c",
    "select coalesce(nullif(ssn, ssn), 'SMALLSSN') from customers",
  ),
  // The planner runs an IMMUTABLE function with constant arguments while planning: EXPLAIN would print its
  // result as a constant. EXPLAIN of anything not traced is refused, like EXPLAIN over a masked column.
  ...steps(
    'an owner’s function folded into a plan',
    'denied',
    'explain verbose select ssn_of(1)',
    'explain select * from products where name = ssn_of(1)',
    'explain (format json, verbose) select 1 where ssn_of(2) is not null',
    'explain select id from customers where ssn < $$2$$',
  ),
  ...steps(
    'an owner’s function folded into a plan',
    'masked',
    'select ssn_of(1)',
    'select ssn_of(2) || name from products',
  ),
  ...steps(
    'an owner’s function folded into a plan',
    'error',
    'select ssn_of(1)::int',
    'select 1 from products where name::int = ssn_of(1)::int',
  ),
  ...steps(
    'casts and sizes failing outside the select list',
    'error',
    'select id from customers where ssn::int > 0',
    'select id from customers order by ssn::int',
    'select count(*) from customers group by ssn::numeric',
    'select 1 from customers having max(ssn)::int > 0',
    'select 1 from customers c join products p on p.id = c.ssn::int',
    'with x as materialized (select ssn::int from customers) select 1 from x',
    'select pg_size_bytes(ssn) from customers',
    'select ssn::bool, ssn::bit(4) from customers',
    'select ssn::timestamptz from customers',
    'select ssn::macaddr from customers',
    'select ssn::int4range from customers',
    'select ssn::int[] from customers',
    'select ssn::point from customers',
    'select ssn::regclass from customers',
    'select ssn::regconfig from customers',
    'select ssn::regoperator from customers',
    'select parse_ident(email) from customers',
    'select to_regtype(ssn) from customers',
    'select array_agg(ssn::int) from customers',
    'select generate_series(1, ssn::int) from customers',
  ),
  ...steps(
    'statistics by other names',
    'denied',
    'select query from pg_stat_statements',
    'select * from pg_mcv_list_items((select stxdmcv from pg_statistic_ext_data limit 1))',
    'select * from "pg_catalog"."pg_stats" where false',
    "select stavalues1::text from pg_statistic where starelid = 'customers'::regclass",
  ),
  ...steps('a cursor read by a function', 'runs', 'declare cx cursor with hold for select ssn, email from customers'),
  ...steps(
    'a cursor read by a function',
    'denied',
    "select cursor_to_xml('cx', 10, false, false, '')",
    "select cursor_to_xmlschema('cx', false, false, '')",
  ),
  ...steps('a cursor read by a function', 'runs', 'close cx'),
  ...steps(
    'writes of masked values by other forms',
    'denied',
    'insert into stash (id, s) values (1, (select ssn from customers limit 1))',
    "insert into stash (id, s) values (2, (select string_agg(ssn, ',') from customers))",
    'insert into stash (id, s) select * from (select id, ssn from customers) x',
    'update stash set s = c.ssn from customers c where c.id = stash.id',
    'update stash set (s, n) = (select ssn, 0 from customers limit 1)',
    'with c as (select email from customers) update stash set s = (select email from c limit 1)',
    'insert into stash (id, n) select id, length(ssn) from customers',
    'insert into stash (id, s) select id, ssn from customers on conflict do nothing',
    'insert into stash table customers',
    'create temp table tmp_copy as table customers',
    'create temp table tmp_values as values ((select ssn from customers limit 1))',
    'select * into temp tmp_star from customers',
  ),
  // Moving a value into another column of its own table: a clear one, or one of a weaker rule (card keeps
  // its last four characters, email is a hash the agent can compare with the hash of a value it writes).
  ...steps(
    'a masked value moved into another column of its table',
    'denied',
    'update customers set name = ssn',
    'update customers set card = ssn where id = 1',
    'update customers set email = ssn where id = 2',
    'update customers set name = c2.email from customers c2 where c2.id = customers.id',
    "insert into customers (id, name) values (1, 'x') on conflict (id) do update set name = customers.ssn",
    'insert into customers (id, name, card) select id + 100, name, ssn from customers',
    'with m as (update customers set name = reverse(ssn) returning id) select count(*) from m',
    'create materialized view agent_mv as select id, ssn from customers with no data',
  ),
  ...steps(
    'a masked value moved into another column of its table',
    'masked',
    'select name, card, email from customers order by id',
  ),
  ...steps(
    'writes of masked values by other forms',
    'masked',
    "insert into stash (id, s) values (9, 'own') returning (select ssn from customers limit 1)",
    'update stash set n = 0 returning (select email from customers limit 1)',
    'select * from stash',
  ),
  // Inference is not hidden by default (docs/masking.md): the filter runs and the rows answer one bit each,
  // but no value computed from the masked column is returned.
  ...stepsWithout(
    'comparison oracles, allowed by default',
    'masked',
    ['123-45', '987-65'],
    "select id from customers where ssn like '1%'",
    'select id from customers order by ssn limit 1',
    "select count(*) filter (where ssn < '5') from customers",
    "select id from customers where ssn between '1' and '2'",
    "select id from (select id, ssn like '1%' as b from customers) s where b",
  ),
];

/** The same masked columns, with the predicate oracles refused. */
const DENY_PREDICATES_POLICY: AccessPolicySpec = {
  ...MASKED_POLICY,
  masking: MASKED_POLICY.masking?.map((m, i) => (i === 0 ? { ...m, denyPredicates: true } : m)),
};

/** Under denyPredicates: every form of a masked value deciding rows, their number or their order. */
const PREDICATE_CORPUS: readonly Step[] = [
  ...steps(
    'oracles in other clauses',
    'denied',
    "select count(*) filter (where ssn < '5') from customers",
    "select id from customers where (ssn, id) > ('5', 0)",
    "select id from customers where id in (select id from customers where ssn like '1%')",
    "select id from customers c where exists (select 1 from customers d where d.id = c.id and d.ssn like '1%')",
    "select id from customers c, lateral (select 1 where c.ssn like '1%') x",
    "select id from customers c join lateral (select 1 where c.ssn like '1%') x on true",
    "select id from (select id, ssn like '1%' as b from customers) s where b",
    "with x as (select id, ssn from customers) select id from x where ssn like '1%'",
    "select id from customers where ssn similar to '1%'",
    "select id from customers where ssn is distinct from '123-45-0000'",
    "select id from customers where ssn = any (array['1', '2'])",
    "select id from customers where coalesce(ssn, '') > '5'",
    'select id from customers order by ssn collate "C" desc nulls last limit 1',
    "select id from customers c where (select c.ssn) like '1%'",
    'select id, (select count(*) from customers d where d.ssn < c.ssn) from customers c',
    "select id from customers where ssn like '1%' for update",
  ),
  // A write's WHERE answers by its row count ("UPDATE 1").
  ...steps(
    'oracles in the WHERE of writes',
    'denied',
    "update customers set score = score where ssn like '1%'",
    "delete from products where exists (select 1 from customers where ssn like '1%')",
    'update products set price = price where name in (select ssn from customers)',
  ),
  ...steps(
    'oracles in prepared statements and cursors',
    'denied',
    "prepare pq as select id from customers where ssn like '1%'",
    "declare cq cursor with hold for select id from customers where ssn < '5'",
  ),
  // A view the agent makes holds the predicate in its definition, which every read of it runs: refused at
  // its creation. A predicate on a column of the owner's view that carries a masked one is the agent's.
  ...steps(
    'oracles in views',
    'denied',
    "create view ssn_ones as select id from customers where ssn like '1%'",
    'create view ssn_sorted as select id, ssn from customers order by ssn',
    'create view ssn_joined as select c.id from customers c join products p on c.ssn > p.name',
    "select id from customer_contacts where contact like 'a%'",
    'select id from customer_contacts order by contact limit 1',
    "select id from owner_plain where ssn like '1%'",
  ),
  ...steps(
    'the predicate-free reads stay allowed',
    'masked',
    'select id, ssn, email from customers',
    'select * from owner_plain',
    'create view ssn_plain as select id, ssn from customers where id > 0',
    'select * from ssn_plain order by id',
  ),
];

test('the angles corpus: no masked value reaches the agent by the paths the earlier corpora did not try', async (t) => {
  const database = await createTestDatabase(t, OWNER_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  const failures = await runCorpus(client, ANGLES_CORPUS);
  assert.deepEqual(failures, [], failures.join('\n'));
  // Nothing the refused writes would have stored is on the server.
  assert.equal(superuserSql('select count(*) from stash where s is distinct from $$own$$', database).trim(), '0');
  assert.equal(
    superuserSql(
      'select count(*) from customers where name like $$%-%$$ or card like $$%-%$$ or email not like $$%@%$$',
      database,
    ).trim(),
    '0',
  );
});

test('denyPredicates: a masked value decides no rows, row count or order, in any clause, view, cursor or write', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL} create view owner_plain as select id, ssn from customers;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { masked: DENY_PREDICATES_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  const failures = await runCorpus(client, PREDICATE_CORPUS);
  assert.deepEqual(failures, [], failures.join('\n'));
});

// hstore (a trusted extension the database owner may create) defines functions and operators outside
// pg_catalog, among them `||`, `=` and `->`: a call of such a name is opaque, and handing a masked value
// to an opaque call is refused like any other write of it elsewhere.
const HSTORE_CORPUS: readonly Step[] = [
  ...steps('hstore of a whole row', 'masked', 'select id from customers'),
  ...steps(
    'hstore of a whole row',
    'denied',
    'select hstore(c) from customers c',
    "select hstore(c) -> 'ssn' from customers c",
    "select hstore(array['k'], array[ssn]) from customers",
    'select each(hstore(c)) from customers c',
    'select populate_record(null::customers, hstore(c)) from customers c',
    'select hstore_to_json(hstore(c)) from customers c',
  ),
];

test('hstore of a masked row: opaque, masked whole or refused', async (t) => {
  const database = await createTestDatabase(t, `${MASKING_SCHEMA_SQL} create extension hstore;`);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  const failures = await runCorpus(client, HSTORE_CORPUS);
  assert.deepEqual(failures, [], failures.join('\n'));
});
