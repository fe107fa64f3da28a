// The relay cuts of the fifteenth session (`relay20`), in process and against another checkout's modules
// (`--baseline ROOT`, e.g. a worktree of main): CPU per call (process.threadCpuUsage, this thread only) of
// the response tracker's row count of a CommandComplete, the analyzer's answer for pgbench's select with a
// new literal each time (the simple protocol at -c 150: the pinned search path of the session's gate, frozen
// here as the gate freezes it), and a held decision's merge with its outcome (spread against literal).
// Rounds alternate the two sides. A 150-client run cannot resolve a µs (bench/README.md, issue 20): this can.
//   node bench/relay-cuts.ts --baseline /work/ab-relay20 [--rounds 5]
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { REPO_ROOT } from '../e2e/harness/tools.ts';

const { values: args } = parseArgs({ options: { baseline: { type: 'string' }, rounds: { type: 'string' } } });
const rounds = Number(args.rounds ?? 5);

interface Side {
  readonly name: string;
  readonly rows: (frame: Buffer) => number | null;
  readonly analyze: (text: string, path: readonly string[]) => unknown;
}

async function side(name: string, root: string): Promise<Side> {
  const src = (p: string): string => pathToFileURL(join(root, 'sidecar', 'src', 'engines', 'postgres', p)).href;
  const scanner = (await import(src('protocol/backend-scanner.ts'))) as {
    commandCompleteRows: Side['rows'];
  };
  const analysis = (await import(src('analysis/analyze-sql.ts'))) as { loadSqlParser: () => Promise<void> };
  const analyzer = (await import(src('analysis/sql-analyzer.ts'))) as {
    createSqlAnalyzer: () => { analyze: Side['analyze'] };
  };
  await analysis.loadSqlParser();
  const a = analyzer.createSqlAnalyzer();
  return { name, rows: scanner.commandCompleteRows, analyze: (t, p) => a.analyze(t, p) };
}

/** µs of this thread's CPU per call of `fn`, over `n` calls after `warmup`. */
function cpuMicros(fn: (i: number) => unknown, warmup: number, n: number): number {
  for (let i = 0; i < warmup; i++) fn(i);
  const start = process.threadCpuUsage();
  for (let i = 0; i < n; i++) fn(i);
  const used = process.threadCpuUsage(start);
  return (used.user + used.system) / n;
}

const frame = (tag: string): Buffer => {
  const body = Buffer.from(`${tag}\0`, 'latin1');
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x43;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
};
const FRAMES = [frame('SELECT 1'), frame('INSERT 0 1'), frame('UPDATE 12'), frame('BEGIN')];

const sides = [await side('branch', REPO_ROOT)];
if (args.baseline !== undefined) sides.push(await side('baseline', args.baseline));
const path = Object.freeze(['public']);
let aid = 1;
const results = new Map<string, number[]>();
const note = (key: string, v: number): void => {
  results.set(key, [...(results.get(key) ?? []), v]);
};
for (let round = 1; round <= rounds; round++) {
  const order = round % 2 === 1 ? sides : [...sides].reverse();
  for (const s of order) {
    note(
      `${s.name} commandCompleteRows`,
      cpuMicros((i) => s.rows(FRAMES[i & 3] as Buffer), 200_000, 2_000_000),
    );
    note(
      `${s.name} analyze (new literal)`,
      cpuMicros(
        () => s.analyze(`SELECT abalance FROM pgbench_accounts WHERE aid = ${String(aid++)};`, path),
        20_000,
        200_000,
      ),
    );
  }
  // The held decision merged with its outcome: a spread (main) against one literal (this branch).
  const content = {
    command: { id: 1, kind: 'select', text: 'x' },
    decision: { allow: true },
    type: 'command.decision',
  };
  const outcome = { durationMicros: 5, rows: 1, status: 'success' };
  let sink: unknown;
  note(
    'spread {...content, outcome}',
    cpuMicros(() => (sink = { ...content, outcome }), 200_000, 2_000_000),
  );
  note(
    'literal {command, decision, outcome, type}',
    cpuMicros(
      () => (sink = { command: content.command, decision: content.decision, outcome, type: content.type }),
      200_000,
      2_000_000,
    ),
  );
  if (sink === undefined) throw new Error('unreachable');
}
const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] as number;
for (const [key, v] of results) {
  console.log(`${key.padEnd(44)} median ${median(v).toFixed(3)} µs  (${v.map((x) => x.toFixed(3)).join(' / ')})`);
}
