// Column lineage when functions, operators or casts with built-in names exist outside pg_catalog: the server
// resolves `now(1)` to `public.now(int)` and `'a' + 'b'` to `public.+(text, text)`, so such calls are opaque.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadSqlParser } from './analyze-sql.ts';
import { sqlLineage, type RelationLookup, type RoutineNames } from './column-lineage.ts';
import { routineNamesFromRows } from '../masking/routine-catalog.ts';

const NONE: RoutineNames = { functions: new Set(), operators: new Set(), castTargets: new Set(), implicitCasts: false };

function lookupWith(routines: RoutineNames | undefined): RelationLookup {
  return {
    relation(schema, name) {
      return name === 'users' && (schema ?? 'public') === 'public'
        ? { id: 'public.users', columns: ['id', 'email'] }
        : undefined;
    },
    routines: () => routines,
  };
}

/** Each result column: 'opaque' or its sources. */
function shape(sql: string, routines: RoutineNames | undefined): (string | string[])[] | undefined {
  const [l] = sqlLineage(sql, lookupWith(routines));
  assert.ok(l !== undefined);
  return l.columns?.map((c) => (c.opaque ? 'opaque' : [...c.sources].sort()));
}

const with_ = (over: Partial<RoutineNames>): RoutineNames => ({ ...NONE, ...over });

describe('routine shadowing in column lineage', () => {
  before(async () => {
    await loadSqlParser();
  });

  it('a built-in function name is the built-in while nothing outside pg_catalog has it', () => {
    assert.deepEqual(shape('select now(1), lower(email) from users', NONE), [[], ['public.users.email']]);
  });

  it('a call of a name defined outside pg_catalog is opaque, qualified or not, unless pinned to pg_catalog', () => {
    const r = with_({ functions: new Set(['now', 'lower']) });
    assert.deepEqual(shape('select now(1)', r), ['opaque']);
    assert.deepEqual(shape('select public.now(1)', r), ['opaque']);
    assert.deepEqual(shape('select lower(email) from users', r), ['opaque']);
    assert.deepEqual(shape('select pg_catalog.now(), pg_catalog.lower(email) from users', r), [
      [],
      ['public.users.email'],
    ]);
    assert.deepEqual(shape('select upper(email) from users', r), [['public.users.email']]);
  });

  it('a bare operator with a name defined outside pg_catalog is opaque; OPERATOR(pg_catalog.+) is not', () => {
    const r = with_({ operators: new Set(['+', '=']) });
    assert.deepEqual(shape("select 'a' + 'b', id - 1 from users", r), ['opaque', ['public.users.id']]);
    assert.deepEqual(shape('select 1 operator(public.+) 2', r), ['opaque']);
    assert.deepEqual(shape('select id operator(pg_catalog.+) 1 from users', r), [['public.users.id']]);
    // NULLIF runs `=` by name, IN and BETWEEN and IS DISTINCT FROM too.
    assert.deepEqual(shape("select nullif(email, 'x') from users", r), ['opaque']);
    assert.deepEqual(shape('select id in (1, 2), id between 1 and 2 from users', r), ['opaque', 'opaque']);
  });

  it('a cast to a type with a cast function outside pg_catalog is opaque, as is the type called as a function', () => {
    const r = with_({ castTargets: new Set(['text']) });
    assert.deepEqual(shape('select u::text, id::int8 from users u', r), ['opaque', ['public.users.id']]);
    assert.deepEqual(shape('select text(u) from users u', r), ['opaque']);
    // The type's schema does not pin the cast's function.
    assert.deepEqual(shape('select cast(u as pg_catalog.text), pg_catalog.text(u) from users u', r), [
      'opaque',
      'opaque',
    ]);
  });

  it('an implicit or assignment cast outside pg_catalog makes every value opaque', () => {
    const r = routineNamesFromRows([[Buffer.from('i'), Buffer.from('text')]]);
    assert.equal(r.implicitCasts, true);
    assert.deepEqual(shape('select id, email from users', r), ['opaque', 'opaque']);
  });

  it('routine names not known (the catalogue unreadable): every name not pinned to pg_catalog is opaque', () => {
    assert.deepEqual(shape('select pg_catalog.lower(email) from users', undefined), ['opaque']);
    const [l] = sqlLineage('select now()', lookupWith(undefined));
    assert.equal(l?.opaque, true);
  });

  it('reads the catalogue rows by kind', () => {
    const rows = [
      ['f', 'now'],
      ['o', '+'],
      ['c', 'text'],
    ].map((r) => r.map((v) => Buffer.from(v)));
    const r = routineNamesFromRows(rows);
    assert.deepEqual(
      [[...r.functions], [...r.operators], [...r.castTargets], r.implicitCasts],
      [['now'], ['+'], ['text'], false],
    );
  });

  it('a DEFAULT whose names resolve outside pg_catalog, or that reads data around the masking, is refused', () => {
    const refusal = (sql: string, routines: RoutineNames | undefined): string | undefined =>
      sqlLineage(sql, lookupWith(routines))[0]?.refusal;
    const r = with_({ functions: new Set(['now']), operators: new Set(['+']) });
    for (const sql of [
      'create table t (x text default now(1))',
      "alter table users alter column email set default 'a' + 'b'",
      'alter domain d set default now(1)',
    ]) {
      assert.ok(refusal(sql, r) !== undefined, sql);
      assert.equal(refusal(sql, NONE), undefined, sql);
    }
    assert.ok(refusal("create table t (x xml default query_to_xml('select 1', false, false, ''))", NONE));
    // Names unknown until the catalogue is read: every unpinned name counts as defined elsewhere.
    assert.ok(refusal('create table t (x timestamptz default now())', undefined) !== undefined);
    assert.equal(refusal("create table t (y int default 1, z text default 'n/a')", undefined), undefined);
  });
});
