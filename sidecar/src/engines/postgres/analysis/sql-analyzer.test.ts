import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql, loadSqlParser } from './analyze-sql.ts';
import { createSqlAnalyzer } from './sql-analyzer.ts';

before(async () => {
  await loadSqlParser();
});

const PGBENCH = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';

describe('createSqlAnalyzer', () => {
  it('returns the cached analysis for the same text and search_path', () => {
    const analyzer = createSqlAnalyzer({ cacheSize: 10 });
    const first = analyzer.analyze(PGBENCH);
    assert.equal(analyzer.analyze(PGBENCH), first);
    assert.equal(analyzer.size, 1);
    assert.deepEqual(first, analyzeSql(PGBENCH));
  });

  it('keys the cache by search_path as well as text', () => {
    const analyzer = createSqlAnalyzer();
    const a = analyzer.analyze('SELECT * FROM t', ['a']);
    const b = analyzer.analyze('SELECT * FROM t', ['b']);
    assert.ok(a.ok && b.ok);
    assert.deepEqual(a.statements[0]?.relations, ['a.t']);
    assert.deepEqual(b.statements[0]?.relations, ['b.t']);
    // A search path entry that contains the separator cannot collide with text.
    const c = analyzer.analyze('t', ['x\nSELECT * FROM']);
    assert.equal(c.ok, false);
    assert.equal(analyzer.size, 3);
  });

  it('evicts the least recently used entry', () => {
    const analyzer = createSqlAnalyzer({ cacheSize: 2 });
    const one = analyzer.analyze('SELECT 1');
    analyzer.analyze('SELECT 2');
    analyzer.analyze('SELECT 1');
    analyzer.analyze('SELECT 3');
    assert.equal(analyzer.size, 2);
    assert.equal(analyzer.analyze('SELECT 1'), one);
    assert.equal(analyzer.size, 2);
  });

  it('does not cache long text or when the cache is disabled', () => {
    const small = createSqlAnalyzer({ maxCachedTextLength: 5 });
    small.analyze('SELECT 1');
    assert.equal(small.size, 0);
    const off = createSqlAnalyzer({ cacheSize: 0 });
    off.analyze('SELECT 1');
    assert.equal(off.size, 0);
    assert.throws(() => createSqlAnalyzer({ cacheSize: -1 }), RangeError);
  });

  it('caches syntax errors too', () => {
    const analyzer = createSqlAnalyzer();
    const bad = analyzer.analyze('SELEC 1');
    assert.equal(bad.ok, false);
    assert.equal(analyzer.analyze('SELEC 1'), bad);
  });

  it('applies safeFunctions', () => {
    const analyzer = createSqlAnalyzer({ safeFunctions: ['app.f'] });
    const result = analyzer.analyze('SELECT app.f(1), app.g(2)');
    assert.ok(result.ok);
    assert.equal(result.statements[0]?.sideEffects, true);
    const safe = analyzer.analyze('SELECT app.f(1)');
    assert.ok(safe.ok);
    assert.equal(safe.statements[0]?.sideEffects, false);
  });

  it('measures the per-statement cost of the pgbench select', (t) => {
    const time = (fn: () => unknown, n: number): number => {
      for (let i = 0; i < 10000; i++) fn();
      const start = process.hrtime.bigint();
      for (let i = 0; i < n; i++) fn();
      return Number(process.hrtime.bigint() - start) / n / 1000;
    };
    const uncached = time(() => analyzeSql(PGBENCH), 20000);
    const analyzer = createSqlAnalyzer();
    const cached = time(() => analyzer.analyze(PGBENCH), 200000);
    t.diagnostic(`analyzeSql (parse + walk + fingerprint): ${uncached.toFixed(2)} µs/statement`);
    t.diagnostic(`createSqlAnalyzer cache hit: ${cached.toFixed(3)} µs/statement`);
    assert.ok(cached < uncached);
  });
});
