// The masking bypass corpus (issue 14): attempts at getting values of masked columns out through the
// sidecar, by class. Each runs as a simple Query against the MASKING_SCHEMA_SQL tables through a sidecar
// whose policy masks customers.email (hash), customers.ssn (redact) and *.card (partial); the test
// (bypass-corpus.test.ts) asserts on the bytes the client receives that no original value appears in any
// encoding, whether the attempt was masked or denied.
//
// `expect`: `masked` — the statement runs and its result is masked; `denied` — the sidecar refuses it
// (42501, MaskingRefused); `error` — the server's own error reaches the client, with its text withheld;
// `runs` — a step of a longer attempt (DDL that prepares the next one) that must succeed.
//
// Attempts run in order on one connection: the classes at the end change the schema (constraints, an
// inheritance parent, statistics) for the attempts after them and undo it in their last step.

import type { AccessPolicySpec } from '@chaperone/api';

export const MASKING_SCHEMA_SQL = `
create table customers (id int primary key, name text, email text, ssn text, card text, created date, score int);
insert into customers values
  (1, 'Alice Example', 'alice.secret@example.com', '123-45-6789', '4111111111111111', '2024-01-02', 7),
  (2, 'Bob Example', 'bob.hidden@example.org', '987-65-4320', '5500005555555559', '2024-02-03', 9);
create table products (id int primary key, name text, price numeric);
insert into products values (1, 'Widget', 9.50), (2, 'Gadget', 12.00);
create view customer_contacts as select id, lower(email) as contact, name from customers;
create view contacts_of_contacts as select * from customer_contacts;
create materialized view customer_emails_mv as select id, email from customers;
analyze customers;
`;

/** Values no attempt may get out, and fragments distinctive enough to count as a leak. */
export const SECRETS: readonly string[] = [
  'alice.secret@example.com',
  'bob.hidden@example.org',
  'alice.secret',
  'bob.hidden',
  '123-45-6789',
  '987-65-4320',
  '123456789',
  '987654320',
  '411111111111',
  '550000555555',
];

/** Unmasked values that must come through unchanged. */
export const CLEAR_VALUES: readonly string[] = ['Alice Example', 'Bob Example', 'Widget', 'Gadget'];

export type Expectation = 'masked' | 'denied' | 'error' | 'runs';

export interface Attempt {
  readonly class: string;
  readonly sql: string;
  readonly expect: Expectation;
  /** Texts that must not appear in the bytes either (a part of a value too short to count as a SECRET). */
  readonly absent?: readonly string[];
}

const a = (cls: string, expect: Expectation, ...sqls: string[]): Attempt[] =>
  sqls.map((sql) => ({ class: cls, sql, expect }));

const without = (cls: string, ...attempts: [sql: string, absent: string[]][]): Attempt[] =>
  attempts.map(([sql, absent]) => ({ class: cls, sql, expect: 'masked', absent }));

export const BYPASS_CORPUS: readonly Attempt[] = [
  ...a(
    'alias',
    'masked',
    'select email from customers',
    'select email as e from customers',
    'select c.email as "name" from customers c',
    'select "email" from "customers"',
    'select email from public.customers',
    'select email from only customers',
    'select email collate "C" from customers',
    'select email from customers tablesample system (100)',
  ),
  ...a(
    'star and positional slide',
    'masked',
    'select * from customers',
    'select created, * from customers',
    'select c.* from customers c',
    'table customers',
    'select * from customers join products using (id)',
    'select * from customers natural join customers c2',
  ),
  ...a(
    'cast and expression',
    'masked',
    'select upper(email) from customers',
    "select email || '' from customers",
    'select email::text from customers',
    'select cast(email as varchar(200)) from customers',
    'select email::bytea from customers',
    "select encode(email::bytea, 'hex') from customers",
    "select encode(convert_to(email, 'UTF8'), 'base64') from customers",
    "select format('%s', email) from customers",
    "select concat('x', ssn) from customers",
    'select reverse(email) from customers',
    'select substr(email, 1, 6) || substr(email, 7) from customers',
    "select replace(email, '@', ' at ') from customers",
    "select translate(ssn, '-', '') from customers",
    'select left(ssn, 3), right(ssn, 4) from customers',
    "select split_part(email, '@', 1) from customers",
    'select case when id > 0 then ssn end from customers',
    'select coalesce(null, email) from customers',
    'select md5(email) from customers',
    'select pg_catalog.upper(email) from public.customers',
    "select regexp_replace(card, '(.)', '\\1 ', 'g') from customers",
    'select ascii(substr(email, 1, 1)), chr(ascii(substr(email, 1, 1))) from customers',
  ),
  // partial keeps the tail of whatever expression it is given, and a hash tells rows apart by any predicate
  // written into the expression: values computed from partial or hashed columns are redacted.
  ...without(
    'partial or hash of a derived value',
    ["select repeat('x', 8) || substr(card, 1, 4) from customers", ['4111', '5500']],
    ['select reverse(card) from customers', ['1114', '0055']],
    ["select substr(card, 1, 8) || 'abcdefgh' from customers", ['4111', '5500']],
    ["select case when email like 'alice%' then email else 'x' end from customers", ['hmac:']],
    ["select case when email like 'alice%' then 1 else 2 end from customers", ['hmac:']],
    ['select upper(email) from customers', ['hmac:']],
  ),
  ...a(
    'aggregate and window',
    'masked',
    'select array_agg(email) from customers',
    "select string_agg(email, ',') from customers",
    'select json_agg(ssn) from customers',
    'select min(ssn), max(email) from customers',
    'select distinct email from customers',
    "select string_agg(ssn, '') over () from customers",
    'select first_value(email) over (order by id) from customers',
  ),
  ...a(
    'whole row and json',
    'masked',
    'select row_to_json(c) from customers c',
    'select to_jsonb(c.*) from customers c',
    "select to_json(c) ->> 'email' from customers c",
    "select jsonb_build_object('e', email) from customers",
    'select json_build_array(ssn) from customers',
    'select row(email, ssn) from customers',
    'select c from customers c',
    'select c::text from customers c',
    'select (c).email from customers c',
    'select (c).* from customers c',
    "select jsonb_path_query(to_jsonb(c), '$.email') from customers c",
    'select xmlelement(name x, email) from customers',
  ),
  ...a(
    'subquery, lateral, CTE, set operation',
    'masked',
    'select (select email from customers limit 1)',
    'select array[email] from customers',
    'select x.e from customers, lateral (select email as e) x',
    'with x as (select email from customers) select * from x',
    'with recursive r(v) as (select ssn from customers union select v from r) select v from r',
    'select * from (select email e, ssn s from customers) sub',
    'select name from customers union select email from customers',
    'select ssn from customers intersect select ssn from customers',
    "select email from customers except select 'nobody'",
    'values ((select ssn from customers limit 1))',
  ),
  ...a(
    'set-returning function',
    'masked',
    'select t from customers c, unnest(array[c.email, c.ssn]) t',
    "select regexp_split_to_table(email, '@') from customers",
    'select jsonb_each_text(to_jsonb(c)) from customers c',
    'select * from jsonb_each_text((select to_jsonb(c) from customers c limit 1))',
    'select * from json_populate_record(null::customers, (select row_to_json(c) from customers c limit 1))',
    'select generate_series(1, 1), email from customers',
  ),
  ...a(
    'view',
    'masked',
    'select * from customer_contacts',
    'select contact from customer_contacts v',
    'select * from contacts_of_contacts',
    'select * from customer_emails_mv',
  ),
  ...a(
    'returning',
    'masked',
    'update customers set name = name where id = 1 returning email, ssn',
    'update customers set score = score returning *',
    'delete from products where id = 99 returning *',
  ),
  ...a(
    'error echo',
    'error',
    'select email::int from customers',
    'select ssn::date from customers',
    'select cast(card as uuid) from customers',
    'select (select ssn from customers order by id limit 1)::numeric',
    "select jsonb_path_query(to_jsonb(c), 'strict $.email.x') from customers c",
  ),
  ...a(
    'export path',
    'denied',
    'copy customers to stdout',
    'copy (select email from customers) to stdout',
    'copy (select upper(ssn) from customers) to stdout with (format csv)',
    'copy customers (ssn) to stdout with (format binary)',
    'explain verbose select email from customers',
    'explain (analyze, verbose) select email::int from customers',
  ),
  ...a(
    'statistics and catalog',
    'denied',
    "select most_common_vals::text from pg_stats where tablename = 'customers'",
    "select histogram_bounds::text from pg_catalog.pg_stats where attname = 'email'",
    'select * from pg_stats_ext',
    'select * from pg_stats_ext_exprs',
    'select query from pg_stat_activity',
  ),
  ...a(
    'server reads and writes elsewhere',
    'denied',
    "select pg_read_file('postgresql.conf')",
    'select lo_from_bytea(0, email::bytea) from customers',
    'select lo_get(1)',
    "select query_to_xml('select email from customers', true, false, '')",
    "select ts_stat('select to_tsvector(email) from customers')",
    'insert into products(id, name, price) select id + 100, email, 0 from customers',
    'update products set name = (select email from customers limit 1)',
    'create table leak as select email from customers',
    'select email into temp leak2 from customers',
    "select pg_notify('c', email) from customers",
    "select set_config('my.leak', ssn, false) from customers",
    "do $$ begin raise notice '%', (select email from customers limit 1); end $$",
  ),
  ...a(
    'cursor and prepared statement',
    'masked',
    'begin; declare c1 cursor for select email, ssn from customers; fetch all from c1; commit',
    'begin; declare c2 cursor for select row_to_json(x) from customers x; fetch 1 from c2; fetch next from c2; close c2; commit',
    'prepare p1 as select email from customers; execute p1; deallocate p1',
    'prepare p2(int) as select ssn from customers where id = $1; execute p2(1); deallocate p2',
  ),
  // The server evaluates expressions over existing rows for DDL and maintenance, and its errors echo the
  // values: a cast in a CHECK or an index expression ("invalid input syntax for type integer: "<email>""), a
  // foreign key validated ("Key (email)=(<email>) is not present"), extended statistics at ANALYZE. Found by
  // the ninth session's red team: every one of these passed the clear value before.
  ...a('server error of DDL and maintenance over masked rows', 'runs', 'create table fk_target (e text primary key)'),
  ...a(
    'server error of DDL and maintenance over masked rows',
    'error',
    'alter table customers add constraint leak_fk foreign key (email) references fk_target (e)',
    'alter table customers add constraint leak_check check (email::int > 0)',
    'create index leak_index on customers ((ssn::int))',
    'create index leak_partial on customers (id) where email::int > 0',
  ),
  ...a(
    'server error of DDL and maintenance over masked rows',
    'runs',
    'alter table customers add constraint leak_later check (ssn::int > 0) not valid',
    'create statistics leak_stats on (email::int) from customers',
  ),
  ...a(
    'server error of DDL and maintenance over masked rows',
    'error',
    'alter table customers validate constraint leak_later',
    'analyze customers',
  ),
  ...a(
    'server error of DDL and maintenance over masked rows',
    'runs',
    'alter table customers drop constraint leak_later',
    'drop statistics leak_stats',
  ),
  // A NOT NULL or CHECK violation's detail is "Failing row contains (…)": the whole row, masked columns
  // included, for a write that names none of them (no DDL needed where the table has any constraint).
  ...a(
    'failing row of a write',
    'error',
    'update customers set id = null where id = 1',
    'update customers set name = name, id = null',
    'insert into customers (id, name) select null, name from customers where id = 1',
  ),
  ...a('failing row of a write', 'runs', 'alter table customers add constraint never check (score < 0) not valid'),
  ...a(
    'failing row of a write',
    'error',
    'update customers set score = score where id = 1',
    'with u as (update customers set score = score returning id) select count(*) from u',
    "merge into customers c using (values (1)) v(id) on c.id = v.id when matched then update set name = 'x'",
  ),
  ...a('failing row of a write', 'runs', 'alter table customers drop constraint never'),
  // A deferred foreign key is checked at the commit, which may come after the write's own response.
  ...a(
    'failing row of a write',
    'runs',
    'create table fk_pairs (i int, e text, primary key (i, e))',
    'alter table customers add constraint later_fk foreign key (id, email) references fk_pairs (i, e) deferrable initially deferred not valid',
  ),
  ...a(
    'failing row of a write',
    'error',
    'begin; update customers set id = id + 100 where id = 1; commit',
    'update customers set id = id + 100 where id = 1; select 1',
  ),
  ...a('failing row of a write', 'runs', 'alter table customers drop constraint later_fk'),
  ...a('failing row of a write', 'denied', 'explain analyze update customers set id = null where id = 1'),
  // MERGE was not walked at all: the values its actions write went into other tables unmasked.
  ...a(
    'merge and on conflict write masked values elsewhere',
    'denied',
    'merge into products p using customers c on p.id = c.id when matched then update set name = c.email',
    'merge into products p using customers c on p.id = c.id + 10 when not matched then insert values (c.id + 10, c.ssn, 0)',
    "merge into products p using (select id, card from customers) c on p.id = c.id when matched then update set name = 'x' || c.card",
    "insert into products (id, name) values (1, 'x') on conflict (id) do update set name = (select email from customers limit 1)",
    'insert into products (id, name) select id, name from customers where id = 1 on conflict (id) do update set name = excluded.name || (select ssn from customers limit 1)',
  ),
  ...a(
    'merge and on conflict write masked values elsewhere',
    'runs',
    "merge into products p using customers c on p.id = c.id when matched and c.email like 'a%' then update set price = p.price",
    "insert into products (id, name) values (2, 'Gadget') on conflict (id) do update set name = excluded.name",
  ),
  // A table whose parent is made by the agent shows the table's rows under the parent's name.
  ...a(
    'inheritance parent of a masked table',
    'runs',
    'create table customers_parent (id int, name text, email text, ssn text, card text, created date, score int)',
    'alter table customers inherit customers_parent',
  ),
  ...a(
    'inheritance parent of a masked table',
    'masked',
    'select * from customers_parent',
    'select email, ssn from customers_parent p',
    'select row_to_json(p) from customers_parent p',
  ),
  // Taking the table out again would leave the parent's rule (or a materialized view over the parent) with
  // rows no lineage leads to any more (output-shape-corpus.test.ts): refused.
  ...a('inheritance parent of a masked table', 'denied', 'alter table customers no inherit customers_parent'),
];

export const MASKED_POLICY: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
  masking: [
    { name: 'emails', columns: ['public.customers.email'], strategy: 'hash' },
    { name: 'ssn', columns: ['customers.ssn'], strategy: 'redact' },
    { name: 'cards', columns: ['*.card'], strategy: 'partial', keepLast: 4 },
  ],
};

/** Every form in which a value could be found in the bytes: as is, reversed, hex, base64 at each alignment. */
function encodings(secret: string): string[] {
  const forms = [secret, Array.from(secret).reverse().join(''), Buffer.from(secret).toString('hex')];
  for (let shift = 0; shift < 3; shift++) {
    const b64 = Buffer.from(`${'x'.repeat(shift)}${secret}`).toString('base64');
    const inner = b64.slice(4 + Math.ceil((shift * 4) / 3), -4);
    if (inner.length >= 8) forms.push(inner);
  }
  return forms.map((f) => f.toLowerCase());
}

const LEAK_FORMS = SECRETS.map((s) => ({ secret: s, forms: encodings(s) }));

/** The masked value found in `bytes`, if any (case-insensitive). */
export function leakIn(bytes: Buffer): string | undefined {
  const text = bytes.toString('latin1').toLowerCase();
  for (const { secret, forms } of LEAK_FORMS) {
    for (const f of forms) if (text.includes(f)) return `${secret} (as ${f})`;
  }
  return undefined;
}
