// Why a transaction costs the sidecar more CPU at 150 clients than at 8 (issue 20): the same sidecar measured
// at `pgbench -S -c 8`, at `-c 8` beside 142 idle open connections (open connections alone, without their
// load) and at `-c 150`, pinned to one event loop and with the default lazily started loops, the runs
// interleaved in rounds with the order rotating. Per run, from /proc (no tracing, nothing added to the
// process): TPS; the whole run's CPU per transaction as the footprint bench reads it (logins and session ends
// of the run's clients included); the steady window's (the middle of the run, per statement counted by the
// sidecar's chaperone_statements_total), split by thread (main, other threads by name); read and write
// syscalls (/proc/PID/io syscr, syscw) and context switches per statement; the main thread's run-queue wait.
// `--baseline ROOT` adds another checkout's lazy sidecar (its own bundle) to every round, `--variant-flags
// 'FLAGS'` a lazy sidecar of this bundle with these node flags added (space-separated); `--strace` ends
// with `strace -c -f` of the lazy sidecar for 3 s of each shape (ptrace slows it: the counts per statement
// are read, not the rates); `--perf DIR` runs the lazy sidecar with --perf-basic-prof and ends with `perf record
// -g` of 5 s of each shape's steady part into DIR/lazy-<shape>.data, split by bench/perf-areas.ts.
// `node bench/clients-cost.ts [--rounds N] [--baseline ROOT] [--strace] [--perf DIR]`, under /work/cpu-lock measure.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startPostgres } from '../e2e/harness/postgres.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { ALLOW_ALL, spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { postgresBinDir, REPO_ROOT } from '../e2e/harness/tools.ts';
import { SIDECAR_NODE_FLAGS } from '../sidecar/src/bin/node-flags.ts';
import { SIDECAR_BUNDLE_ENTRY } from '../sidecar/scripts/build.ts';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string' },
    baseline: { type: 'string' },
    strace: { type: 'boolean' },
    perf: { type: 'string' },
    'variant-flags': { type: 'string' },
  },
});
const rounds = Number(args.rounds ?? 3);
const dir = createRunDirectory();
const pgbench = join(postgresBinDir(), 'pgbench');

function bundle(name: string, root: string): string {
  // 'sidecar-bundle' in the path: bench/perf-areas.ts counts frames of files under it as the sidecar's JavaScript.
  const out = join(REPO_ROOT, 'dist', `clients-cost-sidecar-bundle-${name}`);
  execFileSync(process.execPath, [join(root, 'sidecar', 'scripts', 'build.ts'), '--out', out], { stdio: 'ignore' });
  return join(out, SIDECAR_BUNDLE_ENTRY);
}

/** One reading of every thread of a process. */
interface Reading {
  readonly at: number;
  /** tid → [thread name, CPU µs] */
  readonly threads: Map<number, [string, number]>;
  readonly syscr: number;
  readonly syscw: number;
  readonly voluntary: number;
  readonly involuntary: number;
  readonly mainWaitNs: number;
  readonly statements: number;
}

function statFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

async function statements(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${String(port)}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('chaperone_statements_total{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function read(pid: number, metricsPort: number): Promise<Reading> {
  const stmts = await statements(metricsPort);
  const threads = new Map<number, [string, number]>();
  let voluntary = 0;
  let involuntary = 0;
  for (const tid of readdirSync(`/proc/${String(pid)}/task`).map(Number)) {
    try {
      const base = `/proc/${String(pid)}/task/${String(tid)}`;
      const f = statFields(`${base}/stat`);
      const name = readFileSync(`${base}/comm`, 'utf8').trim();
      threads.set(tid, [name, (Number(f[11]) + Number(f[12])) * 10_000]);
      const status = readFileSync(`${base}/status`, 'utf8');
      voluntary += Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? 0);
      involuntary += Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? 0);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  const io = readFileSync(`/proc/${String(pid)}/io`, 'utf8');
  const sched = readFileSync(`/proc/${String(pid)}/task/${String(pid)}/schedstat`, 'utf8')
    .trim()
    .split(' ');
  return {
    at: Date.now(),
    threads,
    syscr: Number(/syscr: (\d+)/.exec(io)?.[1]),
    syscw: Number(/syscw: (\d+)/.exec(io)?.[1]),
    voluntary,
    involuntary,
    mainWaitNs: Number(sched[1]),
    statements: stmts,
  };
}

/** CPU µs by thread group between two readings: `main`, and the others by name. */
function cpuByGroup(pid: number, a: Reading, b: Reading): Map<string, number> {
  const groups = new Map<string, number>();
  for (const [tid, [name, cpu]] of b.threads) {
    const group = tid === pid ? 'main' : name;
    groups.set(group, (groups.get(group) ?? 0) + cpu - (a.threads.get(tid)?.[1] ?? 0));
  }
  return groups;
}

const total = (m: Map<string, number>) => [...m.values()].reduce((s, v) => s + v, 0);

interface Side {
  readonly name: string;
  readonly sidecar: SidecarProcess;
  readonly env: NodeJS.ProcessEnv;
}

interface Shape {
  readonly name: string;
  readonly clients: number;
  readonly idle: number;
  readonly seconds: number;
  /** The steady window, seconds after pgbench started. */
  readonly window: readonly [number, number];
}

const SHAPES: readonly Shape[] = [
  { name: 'c8', clients: 8, idle: 0, seconds: 8, window: [2, 7] },
  { name: 'c8+142 idle', clients: 8, idle: 142, seconds: 8, window: [2, 7] },
  { name: 'c150', clients: 150, idle: 0, seconds: 10, window: [4, 9] },
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** pgbench clients that log in and then sleep: open, idle connections. */
function idleClients(env: NodeJS.ProcessEnv, n: number): ReturnType<typeof spawn> {
  const script = join(dir, 'idle.sql');
  writeFileSync(script, '\\sleep 60 s\n');
  return spawn(pgbench, ['-n', '-f', script, '-c', String(n), '-j', '2', '-T', '60'], { env, stdio: 'ignore' });
}

interface Row {
  side: string;
  shape: string;
  round: number;
  tps: number;
  wholeRunUsPerTxn: number;
  windowUsPerStmt: number;
  byGroup: Record<string, number>;
  syscrPerStmt: number;
  syscwPerStmt: number;
  voluntaryPerStmt: number;
  involuntaryPerStmt: number;
  mainWaitUsPerStmt: number;
  load: number;
}

async function measure(side: Side, shape: Shape, round: number): Promise<Row> {
  const pid = side.sidecar.process.pid as number;
  const port = side.sidecar.metricsPort;
  const idle = shape.idle > 0 ? idleClients(side.env, shape.idle) : undefined;
  try {
    if (idle !== undefined) await sleep(5_000); // the idle clients log in
    const start = await read(pid, port);
    const startedAt = Date.now();
    const run = new Promise<string>((resolve, reject) => {
      const child = spawn(pgbench, ['-n', '-S', '-c', String(shape.clients), '-j', '2', '-T', String(shape.seconds)], {
        env: side.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.on('exit', (code) =>
        code === 0 ? resolve(out) : reject(new Error(`pgbench exited ${String(code)}: ${out}`)),
      );
    });
    await sleep(startedAt + shape.window[0] * 1000 - Date.now());
    const w0 = await read(pid, port);
    await sleep(startedAt + shape.window[1] * 1000 - Date.now());
    const w1 = await read(pid, port);
    const out = await run;
    const end = await read(pid, port);
    const txns = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1]);
    const stmts = w1.statements - w0.statements;
    const groups = cpuByGroup(pid, w0, w1);
    return {
      side: side.name,
      shape: shape.name,
      round,
      tps: Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1]),
      wholeRunUsPerTxn: total(cpuByGroup(pid, start, end)) / txns,
      windowUsPerStmt: total(groups) / stmts,
      byGroup: Object.fromEntries([...groups].map(([k, v]) => [k, v / stmts])),
      syscrPerStmt: (w1.syscr - w0.syscr) / stmts,
      syscwPerStmt: (w1.syscw - w0.syscw) / stmts,
      voluntaryPerStmt: (w1.voluntary - w0.voluntary) / stmts,
      involuntaryPerStmt: (w1.involuntary - w0.involuntary) / stmts,
      mainWaitUsPerStmt: (w1.mainWaitNs - w0.mainWaitNs) / 1000 / stmts,
      load: loadavg()[0] ?? 0,
    };
  } finally {
    if (idle !== undefined && idle.exitCode === null) {
      idle.kill('SIGTERM');
      await new Promise((r) => idle.once('exit', r));
    }
  }
}

function print(r: Row): void {
  const groups = Object.entries(r.byGroup)
    .filter(([, v]) => v >= 0.5)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
    .join(', ');
  console.log(
    `round ${String(r.round)} ${r.side.padEnd(9)} ${r.shape.padEnd(12)} ${r.tps.toFixed(0).padStart(6)} tps; ` +
      `run ${r.wholeRunUsPerTxn.toFixed(1)} µs/txn; window ${r.windowUsPerStmt.toFixed(1)} µs/stmt (${groups}); ` +
      `per stmt: read ${r.syscrPerStmt.toFixed(2)}, write ${r.syscwPerStmt.toFixed(2)}, ` +
      `vol ${r.voluntaryPerStmt.toFixed(2)}, invol ${r.involuntaryPerStmt.toFixed(2)} ctxsw, ` +
      `main waited ${r.mainWaitUsPerStmt.toFixed(1)} µs (load ${r.load.toFixed(2)})`,
  );
}

/** `strace -c -f` of the process for 3 s of the shape's steady part; the syscalls per statement. */
async function straceRun(side: Side, shape: Shape): Promise<void> {
  const pid = side.sidecar.process.pid as number;
  const child = spawn(pgbench, ['-n', '-S', '-c', String(shape.clients), '-j', '2', '-T', '9'], {
    env: side.env,
    stdio: 'ignore',
  });
  const exited = new Promise((r) => child.once('exit', r));
  await sleep(4_000);
  const out = join(dir, `strace-${side.name}-${shape.name}.txt`);
  const before = await statements(side.sidecar.metricsPort);
  // timeout's status is 124 when it stopped strace, as meant: not an error.
  spawnSync('timeout', ['-s', 'INT', '3', 'strace', '-c', '-f', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  const stmts = (await statements(side.sidecar.metricsPort)) - before;
  await exited;
  console.log(
    `\nstrace -c -f, ${side.name} ${shape.name}: ${String(stmts)} statements in 3 s under strace; calls per statement:`,
  );
  for (const line of readFileSync(out, 'utf8').split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$/.exec(line);
    if (m !== null && Number(m[1]) / stmts >= 0.01)
      console.log(`  ${(m[2] ?? '').padEnd(16)} ${(Number(m[1]) / stmts).toFixed(2)}`);
  }
}

/** `perf record -g` of the process for 5 s of the shape's steady part, split by area (µs per statement). */
async function perfRun(side: Side, shape: Shape, perfDir: string): Promise<void> {
  const pid = side.sidecar.process.pid as number;
  const child = spawn(pgbench, ['-n', '-S', '-c', String(shape.clients), '-j', '2', '-T', '10'], {
    env: side.env,
    stdio: 'ignore',
  });
  const exited = new Promise((r) => child.once('exit', r));
  await sleep(4_000);
  const out = join(perfDir, `${side.name}-${shape.name}.data`);
  const before = await statements(side.sidecar.metricsPort);
  execFileSync('perf', ['record', '-F', '999', '-g', '-p', String(pid), '-o', out, '--', 'sleep', '5'], {
    stdio: 'ignore',
  });
  const stmts = (await statements(side.sidecar.metricsPort)) - before;
  await exited;
  console.log(`\nperf ${out}: ${String(stmts)} statements in 5 s`);
  const areas = execFileSync(
    process.execPath,
    [join(REPO_ROOT, 'bench', 'perf-areas.ts'), out, '--tps', String(stmts / 5), '--seconds', '5'],
    { encoding: 'utf8' },
  );
  console.log(areas);
}

const pg = await startPostgres(dir, { settings: { max_connections: '700' } });
const upstream = {
  host: 'localhost',
  port: pg.port,
  database: pg.database,
  user: pg.user,
  password: pg.password,
  caFile: pg.caFile,
};
const sides: Side[] = [];
try {
  const thisBin = bundle('this', REPO_ROOT);
  const configs: { name: string; bin: string; eventLoops?: number; flags?: string[] }[] = [
    { name: 'one-loop', bin: thisBin, eventLoops: 1 },
    { name: 'lazy', bin: thisBin },
  ];
  if (args.baseline !== undefined) configs.push({ name: 'baseline', bin: bundle('baseline', args.baseline) });
  const variantFlags = args['variant-flags']?.split(' ').filter((f) => f !== '') ?? [];
  if (variantFlags.length > 0) configs.push({ name: 'flags', bin: thisBin, flags: variantFlags });
  for (const c of configs) {
    const sidecar = await spawnSidecar({
      bin: c.bin,
      nodeArgs: [
        ...SIDECAR_NODE_FLAGS,
        ...(c.flags ?? []),
        ...(args.perf !== undefined && c.name === 'lazy' ? ['--perf-basic-prof'] : []),
      ],
      dir: join(dir, c.name),
      upstream,
      policies: { 'allow-all': ALLOW_ALL },
      logLevel: 'info',
      ...(c.eventLoops === undefined ? {} : { eventLoops: c.eventLoops }),
    });
    const env = sidecar.libpqEnv(
      await sidecar.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }),
    );
    sides.push({ name: c.name, sidecar, env });
  }
  execFileSync(pgbench, ['-i', '-s', '1', '-q'], { env: sides[0]?.env, stdio: 'ignore' });
  // Warm-up: every sidecar's code hot, its parked upstream sessions filled, the lazy loop started.
  for (const s of sides)
    execFileSync(pgbench, ['-n', '-S', '-c', '150', '-j', '2', '-T', '4'], { env: s.env, stdio: 'ignore' });
  const rows: Row[] = [];
  for (let round = 1; round <= rounds; round++) {
    const shift = (round - 1) % sides.length;
    const order = [...sides.slice(shift), ...sides.slice(0, shift)];
    for (const shape of SHAPES) {
      for (const side of order) {
        if (shape.idle > 0 && side.name !== 'one-loop') continue; // open connections alone: one loop
        const r = await measure(side, shape, round);
        rows.push(r);
        print(r);
      }
    }
  }
  writeFileSync(join(dir, 'clients-cost.json'), `${JSON.stringify(rows, null, 2)}\n`);
  console.log(`\nrows in ${join(dir, 'clients-cost.json')}`);
  if (args.strace === true) {
    const lazy = sides.find((s) => s.name === 'lazy') as Side;
    for (const shape of SHAPES.filter((s) => s.idle === 0)) await straceRun(lazy, shape);
  }
  if (args.perf !== undefined) {
    mkdirSync(args.perf, { recursive: true });
    const lazy = sides.find((s) => s.name === 'lazy') as Side;
    for (const shape of SHAPES.filter((s) => s.idle === 0)) await perfRun(lazy, shape, args.perf);
  }
} finally {
  for (const s of sides) await s.sidecar.stop();
  await pg.stop();
}
