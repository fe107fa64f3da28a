// SQL analysis cost per statement, in process: the pgbench select parsed afresh, answered from the
// analyzer's cache, and with a new literal each time (the simple query protocol). The tests check what the
// cache does (sql-analyzer.test.ts counts hits); this file measures how long it takes.
// Run: node bench/sql-analysis.ts
import { analyzeSql, loadSqlParser } from '../sidecar/src/engines/postgres/analysis/analyze-sql.ts';
import { createSqlAnalyzer } from '../sidecar/src/engines/postgres/analysis/sql-analyzer.ts';

export interface SqlAnalysisBenchResult {
  /** analyzeSql: parse, walk and fingerprint, µs per statement. */
  readonly uncachedMicros: number;
  /** createSqlAnalyzer().analyze on the same text, µs per statement. */
  readonly cacheHitMicros: number;
  /** The same select with a new literal each time: exact-text keys vs literal-normalised keys, µs. */
  readonly newLiteralExactMicros: number;
  readonly newLiteralNormalisedMicros: number;
}

const PGBENCH = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';

function microsPerCall(fn: () => unknown, warmup: number, n: number): number {
  for (let i = 0; i < warmup; i++) fn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - start) / n / 1000;
}

export async function runSqlAnalysisBench(): Promise<SqlAnalysisBenchResult> {
  await loadSqlParser();
  const uncachedMicros = microsPerCall(() => analyzeSql(PGBENCH), 10_000, 20_000);
  const analyzer = createSqlAnalyzer();
  const cacheHitMicros = microsPerCall(() => analyzer.analyze(PGBENCH), 10_000, 200_000);
  let aid = 1;
  const next = () => `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(aid++)};`;
  const exact = createSqlAnalyzer({ normalizeLiterals: false });
  const newLiteralExactMicros = microsPerCall(() => exact.analyze(next()), 2_000, 5_000);
  const normalised = createSqlAnalyzer();
  const newLiteralNormalisedMicros = microsPerCall(() => normalised.analyze(next()), 2_000, 50_000);
  return { uncachedMicros, cacheHitMicros, newLiteralExactMicros, newLiteralNormalisedMicros };
}

if (import.meta.main) {
  const r = await runSqlAnalysisBench();
  console.log(`analyzeSql (parse + walk + fingerprint): ${r.uncachedMicros.toFixed(2)} µs/statement`);
  console.log(`createSqlAnalyzer cache hit: ${r.cacheHitMicros.toFixed(3)} µs/statement`);
  console.log(
    `new literal each time: exact-text keys ${r.newLiteralExactMicros.toFixed(2)} µs, literal-normalised ${r.newLiteralNormalisedMicros.toFixed(2)} µs`,
  );
}
