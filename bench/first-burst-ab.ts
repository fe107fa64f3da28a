// A/B of the first 150-client run on a fresh sidecar (the run whose logins start the lazily started event
// loop, docs/sidecar-event-loops.md) between this checkout's sidecar and another checkout's (its root as the
// first argument). Each round starts a fresh sidecar of each (the bundle of its own build script, the image's
// node flags, allow-all, JSON lines, upstream TLS verify-full + SCRAM), interleaved with the order alternating,
// and runs `pgbench -n -S -c 150 -j 2 -T <seconds>` once on it: TPS, the process's CPU per transaction
// (/proc, every thread), the connections each loop accepted in the run (how many the second loop got), what
// started the loop and how long it took to start (the sidecar's /metrics).
// `node bench/first-burst-ab.ts /work/main [rounds] [seconds]`, under /work/cpu-lock measure.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { startPostgres } from '../e2e/harness/postgres.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { ALLOW_ALL, spawnSidecar } from '../e2e/harness/sidecar-process.ts';
import { postgresBinDir, REPO_ROOT } from '../e2e/harness/tools.ts';
import { SIDECAR_NODE_FLAGS } from '../sidecar/src/bin/node-flags.ts';
import { SIDECAR_BUNDLE_ENTRY } from '../sidecar/scripts/build.ts';

const [baselineRoot, roundsArg, secondsArg] = process.argv.slice(2);
if (baselineRoot === undefined) throw new Error('usage: node bench/first-burst-ab.ts BASELINE_ROOT [rounds] [seconds]');
const rounds = Number(roundsArg ?? 4);
const seconds = Number(secondsArg ?? 8);
const dir = createRunDirectory();
const pg = await startPostgres(dir, { settings: { max_connections: '400' } });

/** Each checkout's build script bundles its sources into this checkout's dist/ (as bench/run.ts --baseline). */
function bundle(name: string, root: string): string {
  const out = join(REPO_ROOT, 'dist', `first-burst-${name}`);
  execFileSync(process.execPath, [join(root, 'sidecar', 'scripts', 'build.ts'), '--out', out], { stdio: 'ignore' });
  return join(out, SIDECAR_BUNDLE_ENTRY);
}

function cpuMicros(pid: number): number {
  const fields =
    readFileSync(`/proc/${String(pid)}/stat`, 'utf8')
      .split(') ')[1]
      ?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

async function metrics(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${String(port)}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

const sides = [
  ['this', bundle('this', REPO_ROOT)],
  ['baseline', bundle('baseline', baselineRoot)],
] as const;
const upstream = {
  host: 'localhost',
  port: pg.port,
  database: pg.database,
  user: pg.user,
  password: pg.password,
  caFile: pg.caFile,
};
const pgbench = join(postgresBinDir(), 'pgbench');
const start = (name: string, bin: string) =>
  spawnSidecar({
    bin,
    nodeArgs: SIDECAR_NODE_FLAGS,
    dir: join(dir, name),
    upstream,
    policies: { 'allow-all': ALLOW_ALL },
    logLevel: 'info',
  });
try {
  // pgbench's tables, through a throwaway sidecar of this checkout.
  const init = await start('init', sides[0][1]);
  try {
    const env = init.libpqEnv(
      await init.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }),
    );
    execFileSync(pgbench, ['-i', '-s', '1', '-q'], { env, stdio: 'ignore' });
  } finally {
    await init.stop();
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, bin] of r % 2 === 0 ? sides : [...sides].reverse()) {
      const s = await start(`${name}-${String(r)}`, bin);
      try {
        const env = s.libpqEnv(
          await s.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }),
        );
        await new Promise((resolve) => setTimeout(resolve, 2_000));
        const pid = s.process.pid as number;
        const before = cpuMicros(pid);
        const firstLoginAt = Date.now();
        const out = execFileSync(pgbench, ['-n', '-S', '-c', '150', '-j', '2', '-T', String(seconds)], {
          env,
          encoding: 'utf8',
        });
        const cpu = cpuMicros(pid) - before;
        const n = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1]);
        const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1]);
        const m = await metrics(s.metricsPort);
        const perLoop = [0, 1].map((i) =>
          [...m].reduce(
            (sum, [k, v]) =>
              k.startsWith('chaperone_event_loop_connections_total{') && k.includes(`loop="${String(i)}"`)
                ? sum + v
                : sum,
            0,
          ),
        );
        const starts = [...m]
          .filter(([k]) => k.startsWith('chaperone_event_loop_starts_total'))
          .map(([k, v]) => {
            const trigger = /trigger="(\w+)"/.exec(k)?.[1] ?? 'busy';
            return `${trigger} ${String(v)}`;
          });
        const startMs = (m.get('chaperone_event_loop_start_seconds') ?? 0) * 1000;
        const readyAt = m.get('chaperone_event_loop_last_ready_timestamp_seconds');
        // This checkout's worker logs its phases: modules loaded, serving (ms since the thread started).
        const phases = /"event loop started".*?"modulesLoadedMs":(\d+),"servingMs":(\d+)/.exec(s.logs());
        console.log(
          `round ${String(r + 1)} ${name.padEnd(8)} ${tps.toFixed(0)} tps, CPU ${(cpu / n).toFixed(1)} µs/txn, ` +
            `connections per loop ${perLoop.join(' / ')}, starts ${starts.join(', ') || '-'}, start ${startMs.toFixed(0)} ms` +
            (readyAt === undefined
              ? ''
              : `, ready ${(readyAt * 1000 - firstLoginAt).toFixed(0)} ms after the first login`) +
            (phases === null ? '' : ` (worker: modules ${phases[1] ?? ''} ms, serving ${phases[2] ?? ''} ms)`) +
            ` (load ${(loadavg()[0] ?? 0).toFixed(2)})`,
        );
      } finally {
        await s.stop();
      }
    }
  }
} finally {
  await pg.stop();
}
