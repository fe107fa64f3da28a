// Masked values copied through column DEFAULT expressions, through the real sidecar against a real
// PostgreSQL. A DEFAULT runs a function the statement that fills the column does not name (`insert into t
// default values` runs `f()`), and the column it fills is clean to the lineage (`select x from t`,
// `insert … returning x`): an agent with column rules wiring a function that reads a masked column into a
// table, column or domain DEFAULT read the value in clear. Each attack runs step by step; the step that sets
// the DEFAULT (or creates the function) must be refused by the sidecar (42501), no step may carry a masked
// value in any encoding, and afterwards the database holds nothing the refused steps would have made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { authenticatedClient, simpleQueryRound } from '../postgres/raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

/** Owner code that reads masked columns (made outside the sidecar, by the database owner). */
const OWNER_CODE_SQL = `
create function owner_email_of_current_user() returns text language sql stable
  as $$ select email from customers order by id limit 1 $$;
create function owner_ssn_cat(text, text) returns text language sql stable
  as $$ select $1 || (select ssn from customers order by id limit 1) $$;
create operator === (leftarg = text, rightarg = text, function = owner_ssn_cat);
create function public.lower(int) returns text language sql stable
  as $$ select card from customers order by id limit 1 $$;
`;

/** One step of an attack: `refused` steps must get the sidecar's 42501; the others may run or fail. */
type Step = { readonly sql: string; readonly refused?: true };
const refused = (sql: string): Step => ({ sql, refused: true });
const step = (sql: string): Step => ({ sql });

const ATTACKS: readonly { readonly why: string; readonly steps: readonly Step[] }[] = [
  {
    why: 'an agent-made function in a CREATE TABLE default',
    steps: [
      refused('create function f() returns text language sql as $$ select email from customers order by id limit 1 $$'),
      refused('create table t_fn (id int, x text default f())'),
      step('insert into t_fn default values'),
      step('select x from t_fn'),
    ],
  },
  {
    why: 'an owner function in a CREATE TABLE default, read back by RETURNING and SELECT',
    steps: [
      refused('create table t_owner (id int, x text default owner_email_of_current_user())'),
      step('insert into t_owner (id) values (1) returning x'),
      step('select x from t_owner'),
    ],
  },
  {
    why: 'ALTER TABLE … ALTER COLUMN … SET DEFAULT on a table of the agent',
    steps: [
      step('create table t_alter (id int, x text)'),
      refused('alter table t_alter alter column x set default owner_email_of_current_user()'),
      step('insert into t_alter (id) values (1) returning x'),
      step('select x from t_alter'),
    ],
  },
  {
    why: 'ALTER TABLE … ADD COLUMN … DEFAULT fills the existing rows',
    steps: [
      step('insert into t_alter (id) values (2)'),
      refused('alter table t_alter add column y text default (pg_catalog.upper(owner_email_of_current_user()))'),
      step('select y from t_alter'),
    ],
  },
  {
    why: 'a user-defined operator in a default',
    steps: [
      refused("create table t_op (id int, x text default 'a' === 'b')"),
      step('insert into t_op default values returning x'),
    ],
  },
  {
    why: "an owner's function under a built-in name (the server resolves lower(1) to public.lower(int))",
    steps: [
      refused('create table t_shadow (id int, x text default lower(1))'),
      step('insert into t_shadow default values returning x'),
    ],
  },
  {
    why: 'a built-in that runs SQL given as text',
    steps: [
      refused(
        "create table t_xml (id int, x xml default query_to_xml('select email from customers', false, false, ''))",
      ),
      step('insert into t_xml default values returning x'),
    ],
  },
  {
    why: 'CREATE DOMAIN … DEFAULT, then a column of that type',
    steps: [
      refused('create domain d_owner as text default owner_email_of_current_user()'),
      step('create table t_domain (id int, x d_owner)'),
      step('insert into t_domain (id) values (1) returning x'),
    ],
  },
  {
    why: 'ALTER DOMAIN … SET DEFAULT on a domain of the agent',
    steps: [
      step('create domain d_alter as text'),
      step('create table t_domain2 (id int, x d_alter)'),
      refused('alter domain d_alter set default owner_email_of_current_user()'),
      step('insert into t_domain2 (id) values (1) returning x'),
      step('select x from t_domain2'),
    ],
  },
  {
    why: 'an agent-made function whose body copies a masked column into a table of the agent',
    steps: [
      step('create table t_copy (id int, x text)'),
      refused(
        'create function copy_out() returns void language sql as $$ insert into t_copy select id, email from customers $$',
      ),
      step('select copy_out()'),
      step('select x from t_copy'),
    ],
  },
  {
    why: 'CREATE OR REPLACE FUNCTION, CREATE PROCEDURE and CREATE AGGREGATE',
    steps: [
      refused('create or replace function g() returns text language sql as $$ select ssn from customers limit 1 $$'),
      refused('create procedure p() language sql as $$ insert into t_copy select id, ssn from customers $$'),
      refused('create aggregate agg_cat(text) (sfunc = textcat, stype = text)'),
      step('select g()'),
    ],
  },
];

test('DEFAULT expressions and functions of an identity with column rules do not copy masked values', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL + OWNER_CODE_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });

  const failures: string[] = [];
  for (const attack of ATTACKS) {
    for (const { sql, refused: mustRefuse } of attack.steps) {
      const r = await simpleQueryRound(client, sql);
      const leak = leakIn(r.bytes);
      if (leak !== undefined) failures.push(`${attack.why}: ${sql}: LEAKED ${leak}`);
      if (mustRefuse === true && !r.errors.includes('42501')) failures.push(`${attack.why}: ${sql}: not refused`);
    }
  }
  assert.deepEqual(failures, [], failures.join('\n'));

  // Nothing a refused step would have made exists: no function, procedure or aggregate of the agent, no
  // table or domain with such a default.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    const routines = await direct.query<{ proname: string }>(
      "select proname from pg_proc where proname in ('f', 'g', 'p', 'copy_out', 'agg_cat') order by 1",
    );
    assert.deepEqual(routines.rows, []);
    const defaults = await direct.query<{ c: string }>(
      `select table_name || '.' || column_name || ' ' || coalesce(column_default, '-') as c from information_schema.columns
       where table_schema = 'public' and table_name like 't\\_%' order by 1`,
    );
    assert.deepEqual(
      defaults.rows.map((r) => r.c),
      ['t_alter.id -', 't_alter.x -', 't_copy.id -', 't_copy.x -', 't_domain2.id -', 't_domain2.x -'],
    );
    const domains = await direct.query<{ d: string }>(
      "select typname || ' ' || coalesce(typdefault, '-') as d from pg_type where typname in ('d_owner', 'd_alter')",
    );
    assert.deepEqual(
      domains.rows.map((r) => r.d),
      ['d_alter -'],
    );
    const copied = await direct.query<{ n: string }>('select count(*)::text as n from t_copy');
    assert.equal(copied.rows[0]?.n, '0');
  } finally {
    await direct.end();
  }
});

test('defaults of pg_catalog built-ins and constants stay allowed to an identity with column rules', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  for (const sql of [
    "create table plain (id serial, at timestamptz default now(), who text default current_user, note text default 'n/a' || pg_catalog.lower('X'))",
    'alter table plain alter column note set default upper(md5(random()::text))',
    'alter table plain add column score int default 0',
    'create domain positive as int default 1 check (value > 0)',
    'alter domain positive set default 2',
    'alter table plain add column level positive',
    'insert into plain default values',
  ]) {
    const r = await simpleQueryRound(client, sql);
    assert.deepEqual(r.errors, [], sql);
  }
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    const row = await direct.query<{ r: string }>(
      "select concat_ws(' ', id, who is not null, score, level) as r from plain",
    );
    assert.deepEqual(
      row.rows.map((r) => r.r),
      ['1 t 0 2'],
    );
  } finally {
    await direct.end();
  }
});
