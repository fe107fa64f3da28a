// Functions, operators and casts with built-in names outside pg_catalog, through the real sidecar against a
// real PostgreSQL: the server resolves `now(1)` to `public.now(int)`, `'a' + 'b'` to an operator in
// public, `x::text` to a cast function in public, so their results are not the built-ins' and must not
// pass as clean. Made by the database owner and by the agent itself (its policy allows DDL); the bytes the
// client receives hold no masked value in any encoding, whether the attempt was masked or refused.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { authenticatedClient, simpleQueryRound as run, type RawClient } from '../postgres/raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

/** Owner code under built-in names that returns masked values. */
const OWNER_SHADOWS_SQL = `
create function public.now(int) returns text language sql as $$ select email from customers order by id limit 1 $$;
create function public.lower(int) returns text language sql as $$ select ssn from customers order by id limit 1 $$;
create function public.cat_secret(text, text) returns text language sql
  as $$ select $1 || (select email from customers where id = 2) $$;
create operator public.+ (leftarg = text, rightarg = text, function = public.cat_secret);
create type public.tag as (v int);
create function public.tag_text(public.tag) returns text language sql as $$ select card from customers order by id limit 1 $$;
create cast (public.tag as text) with function public.tag_text(public.tag);
`;

async function agentOn(t: TestContext, schema: string): Promise<RawClient> {
  const database = await createTestDatabase(t, schema);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  return client;
}

test('functions, operators and casts under built-in names outside pg_catalog do not pass masked values', async (t) => {
  const client = await agentOn(t, MASKING_SCHEMA_SQL + OWNER_SHADOWS_SQL);
  const attempts = [
    'select now(1)',
    'select lower(1) as l, id from customers',
    'select public.now(1)',
    "select 'a' + 'b'",
    "select 'a' operator(public.+) 'b'",
    'select row(1)::tag::text',
    'select text(row(1)::tag)',
    'select cast(row(1)::tag as pg_catalog.text)',
    // Whole rows stay masked with a cast to text in public.
    'select c::text from customers c',
    // Made by the agent, outside a transaction (refused: an identity with column rules creates no functions).
    `create function public.abs(text) returns text language sql as $$ select email from customers order by id limit 1 $$`,
    "select abs('x')",
    'create function public.concat_secret(int, int) returns text language sql as $$ select ssn from customers limit 1 $$',
    'create operator public.|| (leftarg = int, rightarg = int, function = public.concat_secret)',
    'select 1 || 2',
    // Made in the same transaction (not visible to the catalogue connection yet): refused as well.
    `begin; create function public.upper(int) returns text language sql as $$ select email from customers order by id limit 1 $$; select upper(1)`,
    'rollback',
    'begin',
    `create function public.initcap(int) returns text language sql as $$ select email from customers order by id limit 1 $$`,
    'select initcap(1)',
    'rollback',
  ];
  const failures: string[] = [];
  for (const sql of attempts) {
    const r = await run(client, sql);
    const leak = leakIn(r.bytes);
    if (leak !== undefined) failures.push(`${sql}: LEAKED ${leak}`);
    // An identity with column rules may not create functions (docs/masking.md), in a transaction or not.
    if (/^(begin; )?create function/.test(sql) && !r.errors.includes('42501')) failures.push(`${sql}: not refused`);
    if (r.status === 'E') await run(client, 'rollback');
  }
  assert.deepEqual(failures, [], failures.join('\n'));
  // The pinned built-ins still run as themselves.
  const pinned = await run(client, "select pg_catalog.lower(name), 'a' operator(pg_catalog.||) 'b' from customers");
  assert.deepEqual(pinned.errors, []);
  assert.ok(pinned.bytes.toString('utf8').includes('alice example'));
});

test('an implicit cast outside pg_catalog makes every value of a masked identity opaque', async (t) => {
  const client = await agentOn(
    t,
    `${MASKING_SCHEMA_SQL}
     create type public.tag as (v int);
     create function public.tag_text(public.tag) returns text language sql as $$ select ssn from customers order by id limit 1 $$;
     create cast (public.tag as text) with function public.tag_text(public.tag) as implicit;`,
  );
  for (const sql of ['select pg_catalog.lower(row(1)::tag)', "select pg_catalog.concat_ws(',', row(1)::tag::text)"]) {
    const r = await run(client, sql);
    assert.equal(leakIn(r.bytes), undefined, sql);
  }
});
