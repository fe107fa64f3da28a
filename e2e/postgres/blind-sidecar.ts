// The sidecar as the bin runs it, except that its statement analysis is blind to one statement kind: a
// DELETE is described to the policy as a SELECT without side effects. Only for the test that shows the
// database-enforced layer refusing a write the analysis missed (session-pins.test.ts); the same command
// line and `ready` line as sidecar/src/bin/chaperone-sidecar.ts.
import { parseArgs } from 'node:util';
import { startSidecar } from '@chaperone/sidecar';
import { loadConfig } from '@chaperone/sidecar/config';
import type { SqlAnalysis } from '../../sidecar/src/engines/postgres/analysis/analyze-sql.ts';
import { createSqlAnalyzers, type SqlAnalyzer } from '../../sidecar/src/engines/postgres/analysis/sql-analyzer.ts';
import { createPostgresEngine } from '../../sidecar/src/engines/postgres/postgres-engine.ts';
import { ENGINES } from '../../sidecar/src/engines/registry.ts';

function blindToDeletes(analyzer: SqlAnalyzer): SqlAnalyzer {
  return {
    analyze(text, searchPath): SqlAnalysis {
      const result = analyzer.analyze(text, searchPath);
      if (!result.ok) return result;
      return {
        ok: true,
        statements: result.statements.map((s) =>
          s.kind === 'delete' ? { ...s, kind: 'select' as const, sideEffects: false } : s,
        ),
      };
    },
    get size() {
      return analyzer.size;
    },
    serverMajor: analyzer.serverMajor,
    get stats() {
      return analyzer.stats;
    },
    clear() {
      analyzer.clear();
    },
  };
}

Object.assign(ENGINES, {
  postgres: () =>
    Promise.resolve(
      createPostgresEngine({
        analyzers: () => {
          const real = createSqlAnalyzers({ cacheSize: 0 });
          return { forServerVersion: (version: string) => blindToDeletes(real.forServerVersion(version)) };
        },
      }),
    ),
});

const { values } = parseArgs({ options: { config: { type: 'string', short: 'c' } }, strict: true });
if (values.config === undefined) throw new Error('--config FILE is required');
const sidecar = await startSidecar(loadConfig(values.config));
process.stderr.write(
  `${JSON.stringify({ msg: 'ready', listeners: sidecar.listeners, metrics: sidecar.metricsAddress })}\n`,
);
const stop = () => void sidecar.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
