import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql, loadSqlParser } from './analyze-sql.ts';
import { createSqlAnalyzer, factsSource } from './sql-analyzer.ts';
import { normalizeLiterals } from './literal-normalizer.ts';
import { READ_CORPUS, WRITE_CORPUS } from './write-corpus.ts';

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
    const one = analyzer.analyze('SELECT a');
    analyzer.analyze('SELECT b');
    analyzer.analyze('SELECT a');
    analyzer.analyze('SELECT c');
    assert.equal(analyzer.size, 2);
    assert.equal(analyzer.analyze('SELECT a'), one);
    assert.equal(analyzer.size, 2);
  });

  it('keeps the least-recently-used order when the newest entry is hit again and again (many clients, one statement)', () => {
    const analyzer = createSqlAnalyzer({ cacheSize: 2 });
    analyzer.analyze('SELECT a FROM t WHERE id = 1');
    analyzer.analyze('SELECT b FROM t WHERE id = 1');
    // The first statement again, with other literals: its shared entry becomes the newest, then is hit as such.
    for (let id = 2; id < 6; id++) analyzer.analyze(`SELECT a FROM t WHERE id = ${String(id)}`);
    analyzer.analyze('SELECT c FROM t WHERE id = 1'); // evicts b's entry, the least recently used
    const before = analyzer.stats;
    analyzer.analyze('SELECT a FROM t WHERE id = 9');
    assert.equal(analyzer.stats.sharedHits, before.sharedHits + 1, 'a is still cached');
    analyzer.analyze('SELECT b FROM t WHERE id = 9');
    assert.equal(analyzer.stats.misses, before.misses + 1, 'b was evicted');
    analyzer.clear();
    analyzer.analyze('SELECT a FROM t WHERE id = 1');
    assert.equal(analyzer.size, 1);
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

  it('answers a repeated statement from the cache without parsing it again', () => {
    const analyzer = createSqlAnalyzer();
    const first = analyzer.analyze(PGBENCH);
    assert.deepEqual(analyzer.stats, { hits: 0, sharedHits: 0, misses: 1 });
    for (let i = 0; i < 5; i++) assert.equal(analyzer.analyze(PGBENCH), first);
    assert.deepEqual(analyzer.stats, { hits: 5, sharedHits: 0, misses: 1 });
    // Another search_path is another entry: parsed once more.
    analyzer.analyze(PGBENCH, ['app']);
    assert.deepEqual(analyzer.stats, { hits: 5, sharedHits: 0, misses: 2 });
  });

  it('parses a simple-protocol select once for every literal value (pgbench -S)', () => {
    const analyzer = createSqlAnalyzer();
    const exact = createSqlAnalyzer({ normalizeLiterals: false });
    for (let aid = 1; aid <= 20; aid++) {
      const sql = `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(aid)};`;
      const shared = analyzer.analyze(sql);
      assert.deepEqual(shared, exact.analyze(sql));
    }
    assert.deepEqual(analyzer.stats, { hits: 0, sharedHits: 19, misses: 1 });
    assert.equal(analyzer.size, 1);
    assert.deepEqual(exact.stats, { hits: 0, sharedHits: 0, misses: 20 });
    assert.equal(exact.size, 20);
  });

  it('counts texts it does not cache as misses every time', () => {
    const off = createSqlAnalyzer({ cacheSize: 0 });
    off.analyze(PGBENCH);
    off.analyze(PGBENCH);
    assert.deepEqual(off.stats, { hits: 0, sharedHits: 0, misses: 2 });
  });
});

/** How many checkSame results were built from an analysis of another text. */
let sharedHits = 0;

/** Runs `sql` through the analyzer and checks the result is what analyzing it afresh gives. */
function checkSame(analyzer: ReturnType<typeof createSqlAnalyzer>, sql: string, searchPath?: readonly string[]): void {
  const got = analyzer.analyze(sql, searchPath);
  const fresh = analyzeSql(sql, searchPath === undefined ? {} : { searchPath });
  assert.deepEqual(got, fresh, `analysis of ${JSON.stringify(sql)} differs when cached`);
  if (got.ok && factsSource(got.statements) !== got.statements) sharedHits++;
}

describe('literal-normalised cache keys', () => {
  const pgbench = (aid: number | string) => `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(aid)};`;

  it('parses statements that differ only in literal values once, with each text its own', () => {
    const analyzer = createSqlAnalyzer();
    const a = analyzer.analyze(pgbench(12345));
    const b = analyzer.analyze(pgbench(678));
    assert.ok(a.ok && b.ok);
    assert.equal(analyzer.size, 1);
    assert.equal(factsSource(b.statements), a.statements, 'one parse, shared facts');
    assert.equal(a.statements[0]?.text, 'SELECT abalance FROM pgbench_accounts WHERE aid = 12345');
    assert.equal(b.statements[0]?.text, 'SELECT abalance FROM pgbench_accounts WHERE aid = 678');
    assert.deepEqual(b, analyzeSql(pgbench(678)));
    // The text first analysed gets its own result back; so does a negative literal, a string and a float.
    assert.equal(analyzer.analyze(pgbench(12345)), a);
    checkSame(analyzer, pgbench(-5));
    checkSame(analyzer, pgbench('- 6'));
    checkSame(analyzer, pgbench("'7'"));
    checkSame(analyzer, pgbench(2.5));
    checkSame(analyzer, pgbench(99999999999));
  });

  it('keeps the per-statement text of multi-statement strings', () => {
    const analyzer = createSqlAnalyzer();
    const first = "SELECT 1; /* c */ SELECT 'x' FROM t WHERE a = 2 -- tail";
    const second = "SELECT 100000; /* c */ SELECT 'a much longer ''string''' FROM t WHERE a = 3 -- tail";
    checkSame(analyzer, first);
    checkSame(analyzer, second);
    assert.equal(analyzer.size, 1);
    checkSame(analyzer, "SELECT 'é'; /* c */ SELECT 'ü😀' FROM t WHERE a = 4 -- tail");
  });

  it('does not share analyses whose facts come from literal values', () => {
    const analyzer = createSqlAnalyzer();
    const pairs: [string, string][] = [
      ["select nextval('a')", "select nextval('b')"],
      ["select setval('a', 1)", "select setval('b', 1)"],
      ["select currval('public.a')", "select currval('other.a')"],
      ["select pg_total_relation_size('accounts')", "select pg_total_relation_size('customers')"],
      ["select 'accounts'::regclass", "select 'customers'::regclass"],
      ["select regclass 'accounts'", "select regclass 'customers'"],
      ["select pg_notify('a', 'x')", "select pg_notify('b', 'x')"],
      ["SET search_path = 'a'", "SET search_path = 'b'"],
      ["SET default_transaction_read_only = 'on'", "SET default_transaction_read_only = 'off'"],
      ["SET session_replication_role = 'origin'", "SET session_replication_role = 'replica'"],
      ["SET ROLE 'a'", "SET ROLE 'b'"],
      ['EXPLAIN (ANALYZE 0) DELETE FROM t', 'EXPLAIN (ANALYZE 1) DELETE FROM t'],
      ["PREPARE TRANSACTION 'a'", "PREPARE TRANSACTION 'b'"],
      ["COMMIT PREPARED 'a'", "COMMIT PREPARED 'b'"],
      ["NOTIFY ch, 'a'", "NOTIFY ch, 'b'"],
      ["COPY t FROM '/tmp/a'", "COPY t FROM '/tmp/b'"],
      ["COPY t TO PROGRAM 'a'", "COPY t TO PROGRAM 'b'"],
      ['FETCH 5 FROM c', 'FETCH 6 FROM c'],
      ["select 'a'\n'b'", "select 'c'\n'd'"],
    ];
    for (const [a, b] of pairs) {
      checkSame(analyzer, a);
      checkSame(analyzer, b);
      const ra = analyzer.analyze(a);
      const rb = analyzer.analyze(b);
      if (ra.ok && rb.ok) {
        assert.notEqual(factsSource(rb.statements), factsSource(ra.statements), `${a} / ${b} share an analysis`);
      }
    }
    // The relations really come from the literal.
    const seqA = analyzer.analyze("select nextval('a')");
    const seqB = analyzer.analyze("select nextval('b')");
    assert.ok(seqA.ok && seqB.ok);
    assert.deepEqual(seqA.statements[0]?.relations, ['public.a']);
    assert.deepEqual(seqB.statements[0]?.relations, ['public.b']);
  });

  it('keeps names apart: they are not literals', () => {
    const analyzer = createSqlAnalyzer();
    for (const sql of [
      'PREPARE a AS SELECT 1',
      'PREPARE b AS SELECT 1',
      'EXECUTE a(1)',
      'EXECUTE b(1)',
      'EXECUTE a(2)',
      'DEALLOCATE a',
      'SELECT 1 FROM a',
      'SELECT 1 FROM b',
      'SELECT 1 FROM "b"',
      'SELECT 1 FROM "a b"',
    ]) {
      checkSame(analyzer, sql);
    }
  });

  it('shares analyses of side-effecting calls whose facts do not depend on their arguments', () => {
    const analyzer = createSqlAnalyzer();
    for (const sql of [
      "select set_config('search_path', 'a', false)",
      "select set_config('role', 'postgres', false)",
      "select lo_import('/etc/passwd')",
      "select lo_import('/tmp/x')",
      "select * from dblink('host=a', 'delete from t') as x(a int)",
      "select * from dblink('host=b', 'select 1') as x(a int)",
      "select pg_read_file('/etc/passwd')",
      "select pg_read_file('x')",
    ]) {
      checkSame(analyzer, sql);
      const r = analyzer.analyze(sql);
      assert.ok(r.ok);
      assert.equal(r.statements[0]?.sideEffects, true, sql);
    }
  });

  it('keeps search paths apart', () => {
    const analyzer = createSqlAnalyzer();
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 1', ['a']);
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 2', ['b']);
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 3', ['a']);
  });

  it('keys a frozen search path once per array, and an array that can change every time', () => {
    const analyzer = createSqlAnalyzer();
    const pinned = Object.freeze(['a']);
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 1', pinned);
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 2', pinned);
    // The same array changed between statements: the analysis follows it, never the path it had before.
    const changing = ['a'];
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 3', changing);
    changing[0] = 'b';
    checkSame(analyzer, 'SELECT * FROM t WHERE a = 4', changing);
    const got = analyzer.analyze('SELECT * FROM t WHERE a = 5', changing);
    assert.deepEqual(got.ok ? got.statements[0]?.relations : undefined, ['b.t'], 'resolved on the changed path');
  });

  it('falls back to exact keys for unusual text, and analyses it correctly', () => {
    const analyzer = createSqlAnalyzer();
    for (const sql of [
      "select E'\\x41'",
      "select E'\\x42'",
      'select 0x1F',
      'select 1_000',
      "select U&'\\0041'",
      "select 'unterminated",
      'select 1 /* unterminated',
      'select 1e',
      "select 'a\u0000'",
      'select \u0001',
    ]) {
      checkSame(analyzer, sql);
      checkSame(analyzer, sql);
    }
  });

  it('gives the same analysis as analyzeSql for the corpus and literal variants of it, in any order', () => {
    let seed = 7;
    const rand = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const strings = [
      "''",
      "'x'",
      "'it''s'",
      "'-- no'",
      "'/* no'",
      "'é😀'",
      "'accounts'",
      "'public.customers'",
      "'a;b'",
      "'$$'",
      "'0'",
    ];
    const replacement: Record<string, () => string> = {
      i: () => pick(['0', '1', '7', '2147483647', '00042', String(Math.floor(rand() * 1e6))]),
      n: () => pick(['1.5', '.5', '1e5', '2147483648', '3.14159', '1.e-3']),
      s: () => pick(strings),
      e: () => pick(["E'x'", "E'\\n'", "E'a\\'b'", "e''", "E'it''s'"]),
      d: () => pick(['$$$$', '$$x$$', "$$ '; $$", '$q$ $ $q$']),
      b: () => pick(["B'0'", "B'0101'"]),
      x: () => pick(["X'ff'", "X''"]),
    };
    /** `sql` with some of its literals replaced by others of the same class (so the key stays the same). */
    const variant = (sql: string): string => {
      const n = normalizeLiterals(sql);
      if (n === undefined || n.literals.length === 0) return sql;
      let out = '';
      let at = 0;
      for (let k = 0; k < n.literals.length; k += 2) {
        const start = n.literals[k] as number;
        const end = n.literals[k + 1] as number;
        const cls = classAt(n.key, k / 2);
        out +=
          sql.slice(at, start) +
          (rand() < 0.7 ? (replacement[cls]?.() ?? sql.slice(start, end)) : sql.slice(start, end));
        at = end;
      }
      return out + sql.slice(at);
    };
    const extra = [
      "SELECT * FROM accounts WHERE id IN (1, 2, 3) AND owner LIKE 'a%' ESCAPE '!'",
      "SELECT date '2020-01-01', interval '1 day', '1'::int, CAST('2' AS text), 'x' COLLATE \"C\"",
      "SELECT varchar(10) 'abc', float(5) '1', numeric(10, 2) '3.5', interval '1' second(3)",
      'SELECT -1, - 2, 3 - 4, -(5), +6, -7.5, - -8',
      'SELECT * FROM accounts ORDER BY 1 LIMIT 5 OFFSET 10',
      'SELECT * FROM accounts FETCH FIRST 3 ROWS ONLY',
      "SELECT B'0101', X'ff', N'nat', E'a\\tb', $$dollar$$, $t$tagged$t$",
      "INSERT INTO accounts VALUES (3, 'carol', 0.5), (4, 'dave', -1)",
      "UPDATE accounts SET owner = 'x', balance = balance * 1.1 WHERE id = 1 RETURNING id",
      "DELETE FROM audit_log WHERE msg = 'x' AND id > 10",
      "SELECT 1; SELECT 'two'; SELECT $$three$$",
      "BEGIN; INSERT INTO audit_log (msg) VALUES ('x'); COMMIT",
      "PREPARE p(int) AS SELECT * FROM accounts WHERE id = $1 AND owner <> 'x'",
      "EXECUTE p(1, 'x')",
      'EXPLAIN SELECT * FROM accounts WHERE id = 1',
      'EXPLAIN ANALYZE SELECT * FROM accounts WHERE id = 1',
      'EXPLAIN (ANALYZE true, COSTS false) SELECT 1',
      'DECLARE c CURSOR FOR SELECT * FROM accounts WHERE id > 1',
      "SELECT pg_sleep(0.1), now() - interval '5 minutes', lower('ABC'), coalesce(null, 1)",
      "SELECT nextval('accounts_seq'), 'accounts'::regclass, 1",
      "SELECT set_config('x.y', '1', true)",
      "SELECT * FROM accounts WHERE owner = 'a' -- 'b'\n AND id = 2 /* 3 */",
      "SELECT 'a'\n'b' FROM accounts",
      "SELECT 'a' 'b'",
      "SELECT 1 AS x FROM accounts WHERE owner = 'é' AND id = 2",
      "CREATE TABLE t2 (a int DEFAULT 5, b text DEFAULT 'x', c varchar(20))",
      'ALTER TABLE accounts ALTER COLUMN balance SET DEFAULT 0',
      "COMMENT ON TABLE accounts IS 'x'",
      'DO $$ BEGIN PERFORM 1; END $$',
      "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
      'SELECT * FROM generate_series(1, 10) g WHERE g % 2 = 0',
      "SELECT ARRAY[1, 2, 3], '{1,2}'::int[], ROW(1, 'a')",
      "SELECT json_build_object('a', 1), '{\"a\": 1}'::jsonb -> 'a'",
      "SELECT * FROM accounts WHERE id = ANY('{1,2}') AND balance BETWEEN 1 AND 100",
      "VALUES (1, 'a'), (2, 'b')",
      'SET statement_timeout = 1000',
      "SET LOCAL work_mem = '64MB'",
      'SELECT 1 FROM accounts WHERE id = 1 FOR UPDATE',
      'LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE',
      "SELECT 'x' FROM accounts a, LATERAL (SELECT 1 WHERE a.id = 2) l",
      'WITH d AS (DELETE FROM audit_log WHERE id = 1 RETURNING id) SELECT count(*) FROM d',
    ];
    const base = [...WRITE_CORPUS, ...READ_CORPUS].map((e) => e.sql).concat(extra);
    const texts: string[] = [];
    for (const sql of base) {
      texts.push(sql);
      for (let i = 0; i < 4; i++) texts.push(variant(sql));
    }
    // Forwards, backwards and shuffled, each through a fresh cache, so every text gets to be the one parsed.
    const orders = [texts, [...texts].reverse(), [...texts].sort(() => rand() - 0.5)];
    const hitsBefore = sharedHits;
    for (const order of orders) {
      const analyzer = createSqlAnalyzer();
      for (const sql of order) checkSame(analyzer, sql);
    }
    // Most variants are answered from another text's analysis (the rest are literal-dependent or repeats).
    assert.ok(sharedHits - hitsBefore > texts.length, `only ${String(sharedHits - hitsBefore)} shared hits`);
  });
});

/** The class letter of the k-th marker in a key. */
function classAt(key: string, k: number): string {
  let seen = -1;
  for (let p = 0; p < key.length; p++) {
    if (key[p] === '\u0001') {
      seen++;
      if (seen === k) return key[p + 1] ?? 's';
      p++;
    }
  }
  return 's';
}
