// The lineage cache's bookkeeping: an entry holds for its catalogue version and until the first catalogue
// entry its walk read expires; the oldest entries go first when it is full; the key tells search_paths apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { StatementLineage } from '../analysis/column-lineage.ts';
import { LineageCache, lineageKey } from './relation-catalog.ts';

const lineage = (id: string): StatementLineage => ({
  columns: [{ sources: [id], direct: true, opaque: false }],
  touched: [id],
  predicates: [],
  written: [],
  opaque: false,
  missing: [],
});

test('an entry holds for its version and time only', () => {
  const cache = new LineageCache();
  const l = lineage('public.t.a');
  cache.set('k', l, 3, 1_000);
  assert.equal(cache.get('k', 3, 999), l);
  assert.equal(cache.get('k', 4, 999), undefined, 'another catalogue version (DDL, a fetch)');
  cache.set('k', l, 3, 1_000);
  assert.equal(cache.get('k', 3, 1_000), undefined, 'expired with the oldest catalogue entry it read');
  assert.equal(cache.size, 0);
});

test('bounded: the oldest entries go first', () => {
  const cache = new LineageCache(2);
  cache.set('a', lineage('x.a'), 1, Infinity);
  cache.set('b', lineage('x.b'), 1, Infinity);
  cache.set('c', lineage('x.c'), 1, Infinity);
  assert.equal(cache.size, 2);
  assert.equal(cache.get('a', 1, 0), undefined);
  assert.ok(cache.get('c', 1, 0));
});

test('the key is the exact text under one search_path', () => {
  assert.notEqual(lineageKey('select * from t', ['a', 'public']), lineageKey('select * from t', ['public']));
  assert.notEqual(lineageKey('select * from t', ['a']), lineageKey('select * from  t', ['a']));
  assert.notEqual(lineageKey('x', ['a,b']), lineageKey('x', ['a', 'b']));
});
