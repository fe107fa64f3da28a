// Which DROP statements name tables the catalogue must be asked about, and which are refused outright.
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql } from '../analysis/analyze-sql.ts';
import { loadSqlGrammars } from '../analysis/sql-grammar.ts';
import { droppedTables, type Drops } from './dropped-relations.ts';

before(async () => {
  await loadSqlGrammars();
});

function drops(sql: string): Drops {
  const analysis = analyzeSql(sql);
  assert.ok(analysis.ok, sql);
  return droppedTables(analysis.statements);
}

test('DROP TABLE and DROP FOREIGN TABLE name their tables, qualified or not', () => {
  assert.deepEqual(drops('drop table if exists a, public.b cascade').tables, [
    { schema: undefined, name: 'a' },
    { schema: 'public', name: 'b' },
  ]);
  assert.deepEqual(drops('select 1; drop foreign table "Mixed Case"').tables, [
    { schema: undefined, name: 'Mixed Case' },
  ]);
  assert.equal(drops('drop table x').sweeping, undefined);
});

test('DDL that drops tables it does not name is refused without a lookup', () => {
  for (const sql of [
    'drop owned by current_user',
    'drop owned by someone restrict',
    'drop schema s cascade',
    'drop type t cascade',
    'drop function f(int) cascade',
    'drop extension e cascade',
    'drop server s cascade',
  ])
    assert.notEqual(drops(sql).sweeping, undefined, sql);
});

test('other statements drop no table', () => {
  for (const sql of [
    'drop schema s',
    'drop view v cascade',
    'drop materialized view m cascade',
    'drop index i cascade',
    'drop sequence q cascade',
    'create table t (id int)',
    'select * from t',
    'reassign owned by a to b',
  ])
    assert.deepEqual(drops(sql), { tables: [] }, sql);
});
