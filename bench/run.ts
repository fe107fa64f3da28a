// `make bench`: pgbench -S against direct PostgreSQL, PgBouncer (session mode), a bare Node.js byte pipe
// (bench/byte-pipe.ts, the runtime's floor) and the Chaperone sidecar (allow-all policy, audit on) in one
// run on one throwaway PostgreSQL, plus the policy decision, admission, durable audit and approval latency benchmarks. Prints
// a table, checks the targets (reported, never fatal) and writes bench/results.json.
//
//   node bench/run.ts              the full benchmark (about 5 minutes)
//   node bench/run.ts --quick      2 s per run, to check the plumbing
//   node bench/run.ts --profile    sidecar only, under `node --cpu-prof`, with a flat profile summary
//   node bench/run.ts --evidence   only the evidence store in Kubernetes mode against the JSON-lines sidecar
//
// BENCH_SECONDS overrides the duration of the measured simple/prepared runs. Exit status: 0 when every run
// completed (met or not), 1 when a run failed, 130/143 when interrupted. Every process started here is
// stopped by its PID, also on failure and on SIGINT/SIGTERM.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus, loadavg, totalmem, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runPolicyDecisionBench, type PolicyDecisionBenchResult } from './policy-decision.ts';
import { runSqlAnalysisBench } from './sql-analysis.ts';
import { runAdmissionBench } from './admission.ts';
import { runAuditBench } from './audit.ts';
import { runApprovalLatencyBench } from './approval-latency.ts';
import { runEvidenceStoreBench, type EvidenceStoreBenchResult, type EvidenceTarget } from './evidence-store.ts';
import { formatMaskingBench, runMaskingBench } from './masking.ts';
import { runTokenExchangeBench } from './token-exchange.ts';
import { runKubernetesApiBench } from './kubernetes-api.ts';
import { formatProfileSummary, summariseProfile, type ProfileSummary } from './cpu-profile.ts';
import {
  footprintTargets,
  runEventLoopsBench,
  runFootprintBench,
  type FootprintContext,
  type FootprintResult,
} from './footprint.ts';
import { freePort, startPostgres, type PostgresCluster } from '../e2e/harness/postgres.ts';
import { createRunDirectory, recordServer, stopProcess } from '../e2e/harness/processes.ts';
import {
  ALLOW_ALL,
  spawnSidecar,
  type SidecarProcess,
  type SidecarProcessOptions,
} from '../e2e/harness/sidecar-process.ts';
import { postgresBinDir, REPO_ROOT } from '../e2e/harness/tools.ts';
import { SIDECAR_NODE_FLAGS } from '../sidecar/src/bin/node-flags.ts';
import { bundleSidecar, SIDECAR_BUNDLE_ENTRY } from '../sidecar/scripts/build.ts';

type Target = 'direct' | 'pgbouncer' | 'pgbouncer-tls' | 'pipe' | 'sidecar';
type Mode = 'simple' | 'prepared' | 'extended';

interface RunResult {
  readonly target: Target;
  readonly mode: Mode;
  readonly clients: number;
  readonly threads: number;
  readonly seconds: number;
  readonly tps: number;
  readonly latencyMs: number;
  readonly transactions: number;
  readonly failed: number;
  /** CPU time the proxy process (PgBouncer or sidecar) used per transaction, µs; undefined for direct. */
  readonly proxyCpuUsPerTxn: number | undefined;
  /** The same split into user and kernel (system) time, µs per transaction. */
  readonly proxyUserUsPerTxn: number | undefined;
  readonly proxySysUsPerTxn: number | undefined;
  /**
   * Time the proxy's main thread spent runnable but waiting for a CPU (the 2nd field of
   * /proc/PID/task/PID/schedstat), µs per transaction: how long the serial stage queued behind others.
   */
  readonly proxyRunQueueWaitUsPerTxn: number | undefined;
  /** CPU time of the proxy's main thread alone (schedstat's 1st field), µs per transaction: the serial stage. */
  readonly proxyMainThreadUsPerTxn: number | undefined;
  readonly loadavgBefore: readonly number[];
  readonly loadavgAfter: readonly number[];
}

/** One (mode, clients) shape of one run; results.json keys them `<mode>-c<clients>` (e.g. `simple-c8`). */
interface Ratio {
  readonly mode: Mode;
  readonly clients: number;
  /** Median-round TPS of each target. */
  readonly tps: Readonly<Record<Target, number>>;
  /** Median-round average latency of each target, µs. */
  readonly latencyUs: Readonly<Record<Target, number>>;
  /** CPU time of the proxy process per transaction, µs (user + system). */
  readonly proxyCpuUsPerTxn: {
    readonly pgbouncer: number | undefined;
    readonly 'pgbouncer-tls': number | undefined;
    readonly pipe: number | undefined;
    readonly sidecar: number | undefined;
  };
  /** Sidecar TPS divided by each other target's (the targets are set against plain `pgbouncer`). */
  readonly sidecarTpsOver: Readonly<Record<Exclude<Target, 'sidecar'>, number>>;
  /** Average latency the sidecar adds over each other target, µs. */
  readonly sidecarAddedLatencyUsOver: Readonly<Record<Exclude<Target, 'sidecar'>, number>>;
  readonly pgbouncerTpsOverDirect: number;
  readonly pipeTpsOverPgbouncer: number;
}

interface TargetCheck {
  readonly name: string;
  readonly target: string;
  readonly measured: number;
  readonly met: boolean;
}

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    profile: { type: 'boolean' },
    /** With --profile: which VARIANTS entry the CPU profiles run (default the sidecar as shipped). */
    'profile-variant': { type: 'string' },
    /** With --profile: only the CPU profiles, not the variant table. */
    'profiles-only': { type: 'boolean' },
    /** With --profile: only the variant table, no CPU profiles. */
    'variants-only': { type: 'boolean' },
    /** With --profile: also measure the sidecar of another checkout (its root directory), interleaved. */
    baseline: { type: 'string' },
    /** With --profile: only these variants of the table, comma-separated (e.g. `as shipped,baseline`). */
    variants: { type: 'string' },
    /** With --profile: only these shapes, comma-separated `<mode>-c<clients>` (e.g. `prepared-c8`). */
    shapes: { type: 'string' },
    /** Only the evidence-store benchmark (and the JSON-lines yardstick it is measured against). */
    evidence: { type: 'boolean' },
    /** Only the footprint part (bench/footprint.ts): memory, connection storm, 150 clients, audit size. */
    'footprint-only': { type: 'boolean' },
    /**
     * A CPU profile of the sidecar under one footprint shape: `storm` (pgbench -C -c 8) or `clients150`
     * (pgbench -S -c 150), BENCH_SECONDS long (default 15); summary printed, profile in tmp/bench-profiles.
     */
    'footprint-profile': { type: 'string' },
    /**
     * Only the footprint's event-loop shape: pgbench -S -c 150 through a sidecar of one event loop and one
     * of two, PgBouncer beside them, BENCH_ROUNDS (default 3) interleaved rounds.
     */
    'event-loops-only': { type: 'boolean' },
  },
  strict: true,
});

const SCALE = 10;
/** Each (target, mode, clients) is measured in ROUNDS interleaved rounds; the median round is reported. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (args.quick === true ? 1 : 3));
const MEASURED_SECONDS = Number(process.env.BENCH_SECONDS ?? (args.quick === true ? 2 : 5));
const EXTENDED_SECONDS = Math.max(1, Math.round((MEASURED_SECONDS * 3) / 5));
const WARMUP_SECONDS = args.quick === true ? 2 : 3;
const CLIENTS = [1, 8] as const;
const MODES: readonly Mode[] = ['simple', 'prepared', 'extended'];
const TARGETS: readonly Target[] = ['direct', 'pgbouncer', 'pgbouncer-tls', 'pipe', 'sidecar'];
const RESULTS_FILE = join(REPO_ROOT, 'bench', 'results.json');
/** Seconds of each evidence-store pgbench run (the issue asks for at least 60), rounds, and the fleet run. */
const EVIDENCE_SECONDS = Number(process.env.BENCH_EVIDENCE_SECONDS ?? (args.quick === true ? 5 : 60));
// Three rounds of JSON lines and the store (the ratio is the median of the rounds' ratios): the first at
// EVIDENCE_SECONDS with every target (the 60 s sustained), the later two at EVIDENCE_LATER_SECONDS.
const EVIDENCE_ROUNDS = Number(process.env.BENCH_EVIDENCE_ROUNDS ?? 3);
const EVIDENCE_LATER_SECONDS = Number(
  process.env.BENCH_EVIDENCE_LATER_SECONDS ?? (args.quick === true ? 5 : Math.min(30, EVIDENCE_SECONDS)),
);
const FLEET_SIDECARS = Number(process.env.BENCH_FLEET_SIDECARS ?? 10);
const FLEET_SECONDS = Number(process.env.BENCH_FLEET_SECONDS ?? (args.quick === true ? 5 : 30));
const PROFILE_DIR = join(REPO_ROOT, 'tmp', 'bench-profiles');

// ---- process bookkeeping: everything started here is stopped by PID ------------------------------------

const children = new Set<ChildProcess>();
let postgres: PostgresCluster | undefined;
let pgbouncer: ChildProcess | undefined;
/** PgBouncer with TLS verify-full to PostgreSQL, as the sidecar's upstream: a yardstick, never a target. */
let pgbouncerTls: ChildProcess | undefined;
let bytePipe: ChildProcess | undefined;
/** The byte pipe with its upstream leg TLS verify-full, as the sidecar's: the transport floor's yardstick. */
let bytePipeTls: ChildProcess | undefined;
let sidecar: SidecarProcess | undefined;
/** Sidecars of the --profile variant table, all running at once. */
const variantSidecars = new Set<SidecarProcess>();
let runDir: string | undefined;
let cleaning: Promise<void> | undefined;
/** Set by the signal handlers (an object, so control-flow narrowing does not assume it stays false). */
const signalled = { interrupted: false };

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    }
    const stops: Promise<unknown>[] = [];
    if (sidecar !== undefined) stops.push(sidecar.stop());
    for (const s of variantSidecars) stops.push(s.stop());
    if (pgbouncer !== undefined) stops.push(stopProcess(pgbouncer, 5_000));
    if (pgbouncerTls !== undefined) stops.push(stopProcess(pgbouncerTls, 5_000));
    if (bytePipe !== undefined) stops.push(stopProcess(bytePipe, 5_000));
    if (bytePipeTls !== undefined) stops.push(stopProcess(bytePipeTls, 5_000));
    await Promise.allSettled(stops);
    if (postgres !== undefined) await postgres.stop().catch(() => undefined);
    sidecar = undefined;
    pgbouncer = undefined;
    pgbouncerTls = undefined;
    bytePipe = undefined;
    bytePipeTls = undefined;
    postgres = undefined;
    if (runDir !== undefined && process.env.CHAPERONE_KEEP_RUN_DIR === undefined) {
      rmSync(runDir, { recursive: true, force: true });
    }
  })();
  return cleaning;
}

for (const [signal, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.once(signal, () => {
    signalled.interrupted = true;
    console.error(`\nbench: ${signal}, stopping everything`);
    void cleanup().finally(() => process.exit(code));
  });
}

/** Every pgbench transaction sent to each target, warm-ups included (to relate audit records to them). */
const transactionsByTarget = new Map<Target, number>();

/** Counts newline-terminated lines of a file of any size. */
function countLines(path: string): { lines: number; bytes: number } {
  let lines = 0;
  let bytes = 0;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return { lines, bytes };
  }
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) {
      bytes += n;
      for (let i = buf.indexOf(10); i >= 0 && i < n; i = buf.indexOf(10, i + 1)) lines++;
    }
  } finally {
    closeSync(fd);
  }
  return { lines, bytes };
}

// ---- helpers --------------------------------------------------------------------------------------------

function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  return {
    uid: Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  };
}

function pgTool(name: string): string {
  const path = join(postgresBinDir(), name);
  return existsSync(path) ? path : name;
}

/** Runs a command to completion, tracked for cleanup; rejects on a non-zero exit. */
function run(
  command: string,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', (err) => {
      children.delete(child);
      reject(err);
    });
    child.once('close', (code, signal) => {
      children.delete(child);
      if (code === 0) resolve({ stdout, stderr });
      else
        reject(
          new Error(`${command} ${argv.join(' ')} exited with ${String(code ?? signal)}:\n${stderr}${stdout}`.trim()),
        );
    });
  });
}

/**
 * Nanoseconds a process's main thread has run on a CPU and waited on a run queue (schedstat's 1st and 2nd
 * fields; needs schedstats).
 */
function mainThreadSchedNs(pid: number | undefined): { onCpu: number; waiting: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const fields = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').trim().split(' ');
    return { onCpu: Number(fields[0]), waiting: Number(fields[1]) };
  } catch {
    return undefined;
  }
}

/** User and system CPU time of a process in µs, from /proc (Linux). */
function cpuMicros(pid: number | undefined): { user: number; sys: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); the slice starts at field 3. CLK_TCK is 100.
    return { user: Number(fields[11]) * 10_000, sys: Number(fields[12]) * 10_000 };
  } catch {
    return undefined;
  }
}

function directEnv(pg: PostgresCluster): NodeJS.ProcessEnv {
  return {
    ...process.env,
    PGHOST: '127.0.0.1',
    PGPORT: String(pg.port),
    PGUSER: pg.user,
    PGPASSWORD: pg.password,
    PGDATABASE: pg.database,
    PGSSLMODE: 'disable',
    PGAPPNAME: 'chaperone-bench',
  };
}

// ---- PgBouncer --------------------------------------------------------------------------------------------

/**
 * Starts PgBouncer. `serverTls`: it logs in to PostgreSQL over TLS `verify-full` against the cluster's CA, as
 * the sidecar's upstream does (the cluster's certificate names 127.0.0.1); otherwise without TLS.
 */
async function startPgbouncer(
  dir: string,
  pg: PostgresCluster,
  serverTls = false,
): Promise<{ port: number; version: string }> {
  const bin = '/usr/sbin/pgbouncer';
  if (!existsSync(bin)) throw new Error(`${bin} not found; run \`make packages\``);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const ini = join(dir, 'pgbouncer.ini');
  const userlist = join(dir, 'userlist.txt');
  // A plain-text password lets PgBouncer answer SCRAM itself and log in to PostgreSQL with SCRAM.
  writeFileSync(userlist, `"${pg.user}" "${pg.password}"\n`, { mode: 0o600 });
  writeFileSync(
    ini,
    [
      '; Written by bench/run.ts',
      '[databases]',
      `${pg.database} = host=127.0.0.1 port=${pg.port} dbname=${pg.database}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${userlist}`,
      'pool_mode = session',
      // Room for the footprint part's 150 clients (session pooling: one server connection each).
      'max_client_conn = 200',
      'default_pool_size = 160',
      ...(serverTls
        ? ['server_tls_sslmode = verify-full', `server_tls_ca_file = ${pg.caFile}`]
        : ['server_tls_sslmode = disable']),
      'client_tls_sslmode = disable',
      'ignore_startup_parameters = extra_float_digits',
      'log_connections = 0',
      'log_disconnections = 0',
      'log_pooler_errors = 1',
      '',
    ].join('\n'),
  );
  // PgBouncer refuses to run as root; as root it runs as the `postgres` OS user, like the cluster.
  const owner = serverUser();
  if (owner !== undefined) {
    for (const path of [dir, ini, userlist]) chownSync(path, owner.uid, owner.gid);
  }
  chmodSync(dir, 0o700);
  const version = execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  const child = spawn(bin, [ini], { ...(owner ?? {}), stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error('could not start pgbouncer');
  if (serverTls) pgbouncerTls = child;
  else pgbouncer = child;
  recordServer(runDir ?? dir, serverTls ? 'pgbouncer-tls' : 'pgbouncer', child.pid);
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
  const env = { ...directEnv(pg), PGPORT: String(port) };
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`pgbouncer exited with ${child.exitCode}:\n${output}`);
    try {
      await run('psql', ['-X', '-A', '-t', '-c', 'select 1'], env);
      return { port, version };
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`pgbouncer not ready in 15s:\n${output}`, { cause: err });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// ---- the bare Node.js byte pipe -------------------------------------------------------------------------

/** Starts the byte pipe; `upstreamTls`: TLS verify-full to PostgreSQL for the name `localhost`, as the sidecar. */
async function startBytePipe(pg: PostgresCluster, upstreamTls = false): Promise<{ port: number }> {
  const tlsArgs = upstreamTls ? ['--upstream-tls-ca', pg.caFile, '--upstream-tls-servername', 'localhost'] : [];
  const child = spawn(
    process.execPath,
    [
      join(REPO_ROOT, 'bench', 'byte-pipe.ts'),
      '--listen',
      '127.0.0.1:0',
      '--upstream',
      `127.0.0.1:${pg.port}`,
      ...tlsArgs,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  if (child.pid === undefined) throw new Error('could not start the byte pipe');
  if (upstreamTls) bytePipeTls = child;
  else bytePipe = child;
  recordServer(runDir ?? '', upstreamTls ? 'byte-pipe-tls' : 'byte-pipe', child.pid);
  let output = '';
  return new Promise((resolve, reject) => {
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      output += d;
      const line = output.split('\n').find((l) => l.includes('"ready"'));
      if (line !== undefined) resolve({ port: (JSON.parse(line) as { port: number }).port });
    });
    child.once('exit', (code) => {
      reject(new Error(`the byte pipe exited with ${String(code)}:\n${output}`));
    });
  });
}

// ---- pgbench --------------------------------------------------------------------------------------------

function parseNumber(text: string, pattern: RegExp, what: string): number {
  const m = pattern.exec(text);
  if (m?.[1] === undefined) throw new Error(`pgbench output has no ${what}:\n${text}`);
  return Number(m[1]);
}

async function pgbench(
  target: Target,
  env: NodeJS.ProcessEnv,
  mode: Mode,
  clients: number,
  seconds: number,
  proxyPid: number | undefined,
): Promise<RunResult> {
  const threads = clients === 1 ? 1 : 2;
  const argv = ['-n', '-S', '-M', mode, '-c', String(clients), '-j', String(threads), '-T', String(seconds)];
  const loadavgBefore = loadavg();
  const cpuBefore = cpuMicros(proxyPid);
  const schedBefore = mainThreadSchedNs(proxyPid);
  const perf = perfRecord(target, clients, seconds, proxyPid);
  const { stdout, stderr } = await run(pgTool('pgbench'), argv, env);
  const cpuAfter = cpuMicros(proxyPid);
  const schedAfter = mainThreadSchedNs(proxyPid);
  await perf;
  const out = `${stdout}\n${stderr}`;
  const transactions = parseNumber(out, /number of transactions actually processed: (\d+)/, 'transaction count');
  transactionsByTarget.set(target, (transactionsByTarget.get(target) ?? 0) + transactions);
  const failedMatch = /number of failed transactions: (\d+)/.exec(out);
  const failed = failedMatch?.[1] === undefined ? 0 : Number(failedMatch[1]);
  if (failed > 0) throw new Error(`pgbench against ${target} (${mode}, -c ${clients}): ${failed} failed transactions`);
  return {
    target,
    mode,
    clients,
    threads,
    seconds,
    tps: parseNumber(out, /tps = ([\d.]+) \(without initial connection time\)/, 'tps'),
    latencyMs: parseNumber(out, /latency average = ([\d.]+) ms/, 'average latency'),
    transactions,
    failed,
    ...perTxn(cpuBefore, cpuAfter, transactions),
    proxyRunQueueWaitUsPerTxn:
      schedBefore === undefined || schedAfter === undefined || transactions === 0
        ? undefined
        : (schedAfter.waiting - schedBefore.waiting) / 1000 / transactions,
    proxyMainThreadUsPerTxn:
      schedBefore === undefined || schedAfter === undefined || transactions === 0
        ? undefined
        : (schedAfter.onCpu - schedBefore.onCpu) / 1000 / transactions,
    loadavgBefore,
    loadavgAfter: loadavg(),
  };
}

/**
 * With BENCH_PERF_DIR set, the --profile variant table records each sidecar (and PgBouncer and the pipe)
 * under `perf record -g` during its many-client runs, into BENCH_PERF_DIR/<label>-c<clients>-<n>.data
 * (`bench/perf-areas.ts` splits a recording by area). The sidecars then run with --perf-basic-prof.
 */
const PERF_DIR = process.env.BENCH_PERF_DIR;
/** The label of each process perf records (pid → variant name), set by the variant table. */
const perfLabels = new Map<number, string>();
let perfRuns = 0;

/** `perf record` of a process for the middle of a pgbench run (its first and last second left out). */
async function perfRecord(_target: Target, clients: number, seconds: number, pid: number | undefined): Promise<void> {
  if (PERF_DIR === undefined || pid === undefined || clients <= 8) return;
  const label = perfLabels.get(pid);
  if (label === undefined) return;
  perfRuns += 1;
  const out = join(PERF_DIR, `${label.replace(/\W+/g, '-')}-c${String(clients)}-${String(perfRuns)}.data`);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const window = Math.max(1, seconds - 2);
  await run(
    'perf',
    ['record', '-F', '999', '-g', '-p', String(pid), '-o', out, '--', 'sleep', String(window)],
    process.env,
  );
  console.log(`bench: perf ${out} (${String(window)} s of ${label}, pid ${String(pid)})`);
}

/** The round with the median TPS (rounds carry their own latency and CPU, so one whole round is picked). */
function median(results: readonly RunResult[]): RunResult {
  const sorted = [...results].sort((a, b) => a.tps - b.tps);
  const m = sorted[Math.floor((sorted.length - 1) / 2)];
  if (m === undefined) throw new Error('no rounds');
  return m;
}

function perTxn(
  before: { user: number; sys: number } | undefined,
  after: { user: number; sys: number } | undefined,
  transactions: number,
): Pick<RunResult, 'proxyCpuUsPerTxn' | 'proxyUserUsPerTxn' | 'proxySysUsPerTxn'> {
  if (before === undefined || after === undefined || transactions === 0) {
    return { proxyCpuUsPerTxn: undefined, proxyUserUsPerTxn: undefined, proxySysUsPerTxn: undefined };
  }
  const user = (after.user - before.user) / transactions;
  const sys = (after.sys - before.sys) / transactions;
  return { proxyCpuUsPerTxn: user + sys, proxyUserUsPerTxn: user, proxySysUsPerTxn: sys };
}

// ---- output ---------------------------------------------------------------------------------------------

const fmt = (n: number, digits = 0) => n.toFixed(digits);

function cpuText(r: RunResult): string {
  if (r.proxyCpuUsPerTxn === undefined) return '-';
  return `${fmt(r.proxyCpuUsPerTxn, 1)} (${fmt(r.proxyUserUsPerTxn ?? 0, 1)}+${fmt(r.proxySysUsPerTxn ?? 0, 1)})`;
}

function printRuns(runs: readonly RunResult[]): void {
  console.log(
    `\n${'target'.padEnd(10)} ${'mode'.padEnd(9)} ${'clients'.padStart(7)} ${'TPS'.padStart(9)} ${'avg lat ms'.padStart(10)} ${'proxy CPU µs/txn (user+sys)'.padStart(27)} ${'load1'.padStart(6)}`,
  );
  for (const r of runs) {
    console.log(
      `${r.target.padEnd(10)} ${r.mode.padEnd(9)} ${String(r.clients).padStart(7)} ${fmt(r.tps).padStart(9)} ${fmt(r.latencyMs, 3).padStart(10)} ${cpuText(r).padStart(27)} ${fmt(r.loadavgAfter[0] ?? 0, 2).padStart(6)}`,
    );
  }
}

function computeRatios(runs: readonly RunResult[]): Ratio[] {
  const ratios: Ratio[] = [];
  for (const mode of MODES) {
    for (const clients of CLIENTS) {
      const find = (target: Target) =>
        runs.find((r) => r.target === target && r.mode === mode && r.clients === clients);
      const direct = find('direct');
      const bouncer = find('pgbouncer');
      const bouncerTls = find('pgbouncer-tls');
      const pipe = find('pipe');
      const side = find('sidecar');
      if (
        direct === undefined ||
        bouncer === undefined ||
        bouncerTls === undefined ||
        pipe === undefined ||
        side === undefined
      ) {
        continue;
      }
      const us = (r: RunResult) => r.latencyMs * 1000;
      ratios.push({
        mode,
        clients,
        tps: {
          direct: direct.tps,
          pgbouncer: bouncer.tps,
          'pgbouncer-tls': bouncerTls.tps,
          pipe: pipe.tps,
          sidecar: side.tps,
        },
        latencyUs: {
          direct: us(direct),
          pgbouncer: us(bouncer),
          'pgbouncer-tls': us(bouncerTls),
          pipe: us(pipe),
          sidecar: us(side),
        },
        proxyCpuUsPerTxn: {
          pgbouncer: bouncer.proxyCpuUsPerTxn,
          'pgbouncer-tls': bouncerTls.proxyCpuUsPerTxn,
          pipe: pipe.proxyCpuUsPerTxn,
          sidecar: side.proxyCpuUsPerTxn,
        },
        sidecarTpsOver: {
          pgbouncer: side.tps / bouncer.tps,
          'pgbouncer-tls': side.tps / bouncerTls.tps,
          pipe: side.tps / pipe.tps,
          direct: side.tps / direct.tps,
        },
        sidecarAddedLatencyUsOver: {
          pgbouncer: us(side) - us(bouncer),
          'pgbouncer-tls': us(side) - us(bouncerTls),
          pipe: us(side) - us(pipe),
          direct: us(side) - us(direct),
        },
        pgbouncerTpsOverDirect: bouncer.tps / direct.tps,
        pipeTpsOverPgbouncer: pipe.tps / bouncer.tps,
      });
    }
  }
  return ratios;
}

/** The ratios under stable keys, `<mode>-c<clients>`, for results.json. */
function ratiosByShape(ratios: readonly Ratio[]): Record<string, Ratio> {
  return Object.fromEntries(ratios.map((r) => [`${r.mode}-c${String(r.clients)}`, r]));
}

function printRatios(ratios: readonly Ratio[]): void {
  const head = [
    'sidecar/pgbouncer',
    'sidecar/pgb-tls',
    'sidecar/pipe',
    'sidecar/direct',
    'pipe/pgbouncer',
    '+µs vs pgbouncer',
    '+µs vs pipe',
  ];
  console.log(`\n${'mode'.padEnd(9)} ${'clients'.padStart(7)} ${head.map((h) => h.padStart(17)).join(' ')}`);
  for (const r of ratios) {
    const cells = [
      fmt(r.sidecarTpsOver.pgbouncer, 3),
      fmt(r.sidecarTpsOver['pgbouncer-tls'], 3),
      fmt(r.sidecarTpsOver.pipe, 3),
      fmt(r.sidecarTpsOver.direct, 3),
      fmt(r.pipeTpsOverPgbouncer, 3),
      fmt(r.sidecarAddedLatencyUsOver.pgbouncer, 1),
      fmt(r.sidecarAddedLatencyUsOver.pipe, 1),
    ];
    console.log(`${r.mode.padEnd(9)} ${String(r.clients).padStart(7)} ${cells.map((c) => c.padStart(17)).join(' ')}`);
  }
}

function checkTargets(
  ratios: readonly Ratio[],
  policy: PolicyDecisionBenchResult | undefined,
  flushRecordsPerSecond: number | undefined,
  evidence?: EvidenceStoreBenchResult,
): TargetCheck[] {
  const checks: TargetCheck[] = [];
  if (evidence !== undefined) checks.push(...evidenceChecks(evidence));
  const ratio = (mode: Mode, clients: number) => ratios.find((r) => r.mode === mode && r.clients === clients);
  for (const [mode, target] of [
    ['simple', 0.5],
    ['prepared', 0.8],
  ] as const) {
    const r = ratio(mode, 8);
    if (r === undefined) continue;
    const v = r.sidecarTpsOver.pgbouncer;
    checks.push({ name: `sidecar/PgBouncer TPS, ${mode}, -c 8`, target: `≥ ${target}`, measured: v, met: v >= target });
  }
  for (const mode of ['simple', 'prepared'] as const) {
    const r = ratio(mode, 1);
    if (r === undefined) continue;
    const v = r.sidecarAddedLatencyUsOver.pgbouncer;
    checks.push({
      name: `added avg latency over PgBouncer, ${mode}, -c 1 (µs)`,
      target: '≤ 60',
      measured: v,
      met: v <= 60,
    });
  }
  for (const mode of ['simple', 'prepared'] as const) {
    const r = ratio(mode, 8);
    if (r === undefined) continue;
    const v = r.sidecarTpsOver.pipe;
    checks.push({ name: `sidecar/bare pipe TPS, ${mode}, -c 8`, target: '≥ 0.8', measured: v, met: v >= 0.8 });
  }
  if (flushRecordsPerSecond !== undefined) {
    checks.push({
      name: 'flush into Session objects (records/s)',
      target: '≥ 2000',
      measured: flushRecordsPerSecond,
      met: flushRecordsPerSecond >= 2000,
    });
  }
  if (policy !== undefined) {
    checks.push({
      name: 'policy decision p50, uncached (µs)',
      target: '≤ 20',
      measured: policy.uncached.p50,
      met: policy.uncached.p50 <= 20,
    });
    checks.push({
      name: 'policy decision p50, cached (µs)',
      target: '≤ 2',
      measured: policy.cached.p50,
      met: policy.cached.p50 <= 2,
    });
  }
  return checks;
}

function evidenceChecks(e: EvidenceStoreBenchResult): TargetCheck[] {
  return [
    {
      name: 'evidence store (Written) / JSON lines TPS, simple, -c 8',
      target: '≥ 0.9',
      measured: e.ratio,
      met: e.ratio >= 0.9,
    },
    {
      name: 'evidence store (Synced) / JSON lines TPS, simple, -c 8',
      target: '≥ 0.9',
      measured: e.syncedRatio,
      met: e.syncedRatio >= 0.9,
    },
    {
      name: 'evidence store: fail-closed refusals',
      target: '= 0',
      measured: e.failClosedRefusals,
      met: e.failClosedRefusals === 0,
    },
  ];
}

async function evidenceBench(pg: PostgresCluster): Promise<EvidenceStoreBenchResult> {
  console.log(
    `bench: evidence store (Kubernetes mode) against the JSON-lines sidecar, pgbench -S -c 8, ${String(EVIDENCE_ROUNDS)} round(s): the first ${String(EVIDENCE_SECONDS)} s a target, later ones ${String(EVIDENCE_LATER_SECONDS)} s (JSON lines and the store only); then ${String(FLEET_SIDECARS)} sidecars at once for ${String(FLEET_SECONDS)} s`,
  );
  const e = await runEvidenceStoreBench({
    pg,
    runDir: runDir ?? '',
    seconds: EVIDENCE_SECONDS,
    rounds: EVIDENCE_ROUNDS,
    laterSeconds: EVIDENCE_LATER_SECONDS,
    fleetSidecars: FLEET_SIDECARS,
    fleetSeconds: FLEET_SECONDS,
    ...(process.env.BENCH_EVIDENCE_CPU_PROF === undefined
      ? {}
      : { cpuProfileDir: process.env.BENCH_EVIDENCE_CPU_PROF, profileYardstick: true }),
    ...(process.env.BENCH_EVIDENCE_TARGETS === undefined
      ? {}
      : { targets: process.env.BENCH_EVIDENCE_TARGETS.split(',') as EvidenceTarget[] }),
    ...(process.env.BENCH_EVIDENCE_RATE === undefined ? {} : { rate: Number(process.env.BENCH_EVIDENCE_RATE) }),
    ...(args.baseline === undefined ? {} : { baselineDir: args.baseline }),
    // BENCH_EVIDENCE_NODE_ARGS: node options for its sidecars (space-separated) after the image's V8 flags.
    ...(process.env.BENCH_EVIDENCE_NODE_ARGS === undefined
      ? {}
      : { nodeArgs: process.env.BENCH_EVIDENCE_NODE_ARGS.split(' ').filter((a) => a !== '') }),
    ...(process.env.BENCH_EVIDENCE_IDLE_SECONDS === undefined
      ? {}
      : { idleSeconds: Number(process.env.BENCH_EVIDENCE_IDLE_SECONDS) }),
    onSidecar: (s) => {
      variantSidecars.add(s);
      if (s.process.pid !== undefined) recordServer(runDir ?? '', `sidecar-${String(s.process.pid)}`, s.process.pid);
    },
  });
  const f = e.fleet;
  console.log(
    `  evidence store ÷ JSON lines TPS ${fmt(e.ratio, 3)} with spool durability Written (median of the rounds' ${e.roundRatios.map((r) => fmt(r, 3)).join(', ')}), ${fmt(e.syncedRatio, 3)} with Synced (target ≥ 0.9), fail-closed refusals ${String(e.failClosedRefusals)} ` +
      `(records in Session objects, for comparison: ratio ${fmt(e.sessionObjectsRatio, 3)}, ${String(e.sessionObjectsRefusals)} refusals; ` +
      `diagnostic, evidence store with the spool on tmpfs: ratio ${fmt(e.tmpfsSpoolRatio, 3)}); ` +
      `${String(e.storedRecords)} records stored, ${fmt(e.storedRecordsPerSecond)} records/s; Session writes ${JSON.stringify(e.apiWrites)}; ` +
      `mean spool fsync ${fmt(e.spoolFsyncMeanMs, 2)} ms, mean store insert ${fmt(e.storeInsertMeanMs, 1)} ms`,
  );
  console.log(
    `  ${String(f.sidecars)} sidecars at once: ${fmt(f.tps)} tps together, ${fmt(f.recordsPerSecond)} records/s stored and signed, ` +
      `${fmt(f.apiWritesPerSecond, 1)} Session writes/s (${fmt(f.recordsPerApiWrite)} records per write); CPU: control plane ${fmt(f.apiServerCpuSeconds, 1)} s, ` +
      `sidecars ${fmt(f.sidecarsCpuSeconds, 1)} s (API server share ${fmt(f.apiServerCpuShare * 100, 1)} %); refusals ${String(f.failClosedRefusals)}`,
  );
  return e;
}

async function evidenceOnly(): Promise<void> {
  const loadBefore = uptime();
  const pg = await setUp();
  const e = await evidenceBench(pg);
  // At a fixed offered load (BENCH_EVIDENCE_RATE) every target keeps up or lags: the ratio judges nothing.
  if (process.env.BENCH_EVIDENCE_RATE === undefined) printTargets(evidenceChecks(e));
  else console.log('\ntargets not judged: BENCH_EVIDENCE_RATE fixes the offered load (compare CPU per statement)');
  const loadAfter = uptime();
  console.log(`
load: before ${loadBefore}
      after  ${loadAfter}`);
  const file = join(REPO_ROOT, 'bench', 'results-evidence.json');
  writeFileSync(
    file,
    `${JSON.stringify({ uptimeBefore: loadBefore, uptimeAfter: loadAfter, evidenceStore: e }, null, 2)}\n`,
  );
  console.log(`bench: results in ${file}`);
}

function printTargets(checks: readonly TargetCheck[]): void {
  console.log('\ntargets');
  for (const c of checks) {
    console.log(
      `  ${c.name.padEnd(52)} ${c.target.padStart(6)}  measured ${fmt(c.measured, c.measured < 10 ? 3 : 1).padStart(8)}  ${c.met ? 'met' : 'NOT MET'}`,
    );
  }
}

function uptime(): string {
  try {
    return execFileSync('uptime', { encoding: 'utf8' }).trim();
  } catch {
    return `load average: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(', ')}`;
  }
}

// ---- main -----------------------------------------------------------------------------------------------

let shippedBin: string | undefined;

/**
 * The sidecar as its image runs it: the bundle of sidecar/scripts/build.ts, built once per bench run from
 * this checkout's sources into dist/sidecar-bundle (it imports its external packages from node_modules).
 */
function shippedSidecar(): string {
  shippedBin ??= bundleSidecar();
  return shippedBin;
}

/**
 * The sidecar of another checkout (--baseline) as its image runs it, like `as shipped`: that checkout's
 * build script bundles its sources into this checkout's dist/ (nothing is written into the other
 * checkout; the bundle imports its external packages from this node_modules).
 */
function baselineBundle(root: string): string {
  const out = join(REPO_ROOT, 'dist', 'baseline-sidecar-bundle');
  execFileSync(process.execPath, [join(root, 'sidecar', 'scripts', 'build.ts'), '--out', out], { stdio: 'inherit' });
  return join(out, SIDECAR_BUNDLE_ENTRY);
}

async function startSidecar(
  pg: PostgresCluster,
  dir: string,
  extra: Partial<Pick<SidecarProcessOptions, 'bin' | 'env' | 'nodeArgs' | 'eventLoops'>> = {},
  tlsMode: 'verify-full' | 'disable' = 'verify-full',
): Promise<SidecarProcess> {
  return spawnSidecar({
    ...extra,
    bin: extra.bin ?? shippedSidecar(),
    // The flags the image runs the sidecar with (sidecar/src/bin/node-flags.ts), before any of the caller's.
    nodeArgs: [...SIDECAR_NODE_FLAGS, ...(extra.nodeArgs ?? [])],
    dir,
    upstream: {
      host: 'localhost',
      port: pg.port,
      database: pg.database,
      user: pg.user,
      password: pg.password,
      caFile: pg.caFile,
      tlsMode,
    },
    policies: { 'allow-all': ALLOW_ALL },
    logLevel: 'info',
    onSpawn: (pid) => recordServer(runDir ?? dir, `sidecar-${pid}`, pid),
  });
}

async function setUp(maxConnections = 700): Promise<PostgresCluster> {
  runDir = createRunDirectory();
  console.log(`bench: run directory ${runDir}`);
  // Room for 150 clients through PgBouncer and three sidecars at once (the footprint's event-loop shape keeps
  // PgBouncer's pool and the sidecars' parked upstream sessions, 150 each).
  const pg = await startPostgres(runDir, { settings: { max_connections: String(maxConnections) } });
  postgres = pg;
  const started = Date.now();
  await run(pgTool('pgbench'), ['-i', '-s', String(SCALE), '-q'], directEnv(pg));
  console.log(`bench: pgbench -i -s ${SCALE} in ${Date.now() - started} ms`);
  return pg;
}

async function sidecarToken(s: SidecarProcess, seconds: number): Promise<string> {
  return s.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: seconds });
}

async function benchmark(): Promise<void> {
  const startedAt = new Date();
  const loadBefore = uptime();
  console.log(`bench: ${loadBefore}`);
  console.log('bench: policy decision latency (in-process, before any server starts)');
  const policy = await runPolicyDecisionBench();
  console.log(
    `  uncached p50 ${fmt(policy.uncached.p50, 2)} µs, p99 ${fmt(policy.uncached.p99, 2)} µs; cached p50 ${fmt(policy.cached.p50, 2)} µs, p99 ${fmt(policy.cached.p99, 2)} µs (${policy.iterations} decisions each)`,
  );

  console.log('bench: SQL analysis per statement (in-process)');
  const sqlAnalysis = await runSqlAnalysisBench();
  console.log(
    `  analyzeSql ${fmt(sqlAnalysis.uncachedMicros, 2)} µs; cache hit ${fmt(sqlAnalysis.cacheHitMicros, 3)} µs; new literal each time ${fmt(sqlAnalysis.newLiteralNormalisedMicros, 2)} µs (exact-text keys ${fmt(sqlAnalysis.newLiteralExactMicros, 2)} µs)`,
  );

  console.log('bench: admission latency, 50 pod creations per second for 10 s (own control plane)');
  const admission = await runAdmissionBench();
  console.log(
    `  webhook p50 ${fmt(admission.webhook.p50Ms, 2)} ms, p99 ${fmt(admission.webhook.p99Ms, 2)} ms; end-to-end p50 ${fmt(admission.endToEnd.p50Ms, 2)} ms, p99 ${fmt(admission.endToEnd.p99Ms, 2)} ms; ${admission.created} pods, ${admission.failed} failed (target webhook p99 ≤ ${admission.targetP99Ms} ms: ${admission.met ? 'met' : 'not met'})`,
  );

  console.log('bench: token exchange latency over HTTPS, evidence written before each answer (own control plane)');
  const tokenExchange = await runTokenExchangeBench();
  for (const [name, r] of Object.entries({
    'pod token -> AI agent': tokenExchange.saSubject,
    'child token -> script': tokenExchange.childSubject,
    'child token -> script, 8 in flight': tokenExchange.concurrent,
    'yardstick: one small API server write': tokenExchange.apiWrite,
  })) {
    console.log(
      `  ${name}: p50 ${fmt(r.p50Ms, 2)} ms, p99 ${fmt(r.p99Ms, 2)} ms, ${fmt(r.perSecond)} exchanges/s (${r.requests} requests)`,
    );
  }

  console.log(
    'bench: Kubernetes engine: added latency per GET against the same API server, watch events/s (own control plane)',
  );
  const kubernetesApi = await runKubernetesApiBench();
  console.log(
    `  GET direct p50 ${fmt(kubernetesApi.directMs.p50, 2)} ms, p99 ${fmt(kubernetesApi.directMs.p99, 2)} ms; through the sidecar p50 ${fmt(kubernetesApi.sidecarMs.p50, 2)} ms, p99 ${fmt(kubernetesApi.sidecarMs.p99, 2)} ms; added p50 ${fmt(kubernetesApi.addedMs.p50, 2)} ms, p99 ${fmt(kubernetesApi.addedMs.p99, 2)} ms (target added p50 ≤ ${String(kubernetesApi.targetAddedP50Ms)} ms: ${kubernetesApi.met ? 'met' : 'not met'}); watch ${String(kubernetesApi.watch.events)} events: direct ${fmt(kubernetesApi.watch.directPerSecond)}/s, sidecar ${fmt(kubernetesApi.watch.sidecarPerSecond)}/s`,
  );

  console.log('bench: durable audit: spool throughput, flush into Session objects, latency added per statement');
  const durableAudit = await runAuditBench();
  console.log(
    `  spool ${fmt(durableAudit.spoolRecordsPerSecond)} records/s (target ≥ 20000); flush ${fmt(durableAudit.flushRecordsPerSecond)} records/s (target ≥ 2000; writer CPU ${fmt(durableAudit.flushWriterCpuMs)} ms of ${fmt(durableAudit.flushWallMs)} ms); added per statement p50 ${fmt(durableAudit.statementLatencyMicros.p50)} µs, p99 ${fmt(durableAudit.statementLatencyMicros.p99)} µs (target p99 ≤ 2000 µs)`,
  );

  console.log('bench: approval latency, decision written → held statement running (own control plane)');
  const approvals = await runApprovalLatencyBench({ count: args.quick === true ? 10 : 40 });
  console.log(
    `  decision sent → running p50 ${fmt(approvals.sentToRunning.p50Ms, 2)} ms, p99 ${fmt(approvals.sentToRunning.p99Ms, 2)} ms; acknowledged → running p50 ${fmt(approvals.acknowledgedToRunning.p50Ms, 2)} ms, p99 ${fmt(approvals.acknowledgedToRunning.p99Ms, 2)} ms; decision write p50 ${fmt(approvals.decisionWrite.p50Ms, 2)} ms, p99 ${fmt(approvals.decisionWrite.p99Ms, 2)} ms (${approvals.approvals} approvals)`,
  );

  const pg = await setUp();
  const pgVersion = pg.superuserSql('select version()').trim();
  console.log('bench: result masking, 1,000,000 rows × 10 columns, 2 masked, against unmasked and direct');
  const masking = await runMaskingBench(pg, join(runDir ?? '', 'sidecar-masking'), runDir ?? '');
  console.log(formatMaskingBench(masking));
  const bouncer = await startPgbouncer(join(runDir ?? '', 'pgbouncer'), pg);
  const bouncerTls = await startPgbouncer(join(runDir ?? '', 'pgbouncer-tls'), pg, true);
  const pipe = await startBytePipe(pg);
  const side = await startSidecar(pg, join(runDir ?? '', 'sidecar'));
  sidecar = side;
  const totalSeconds = ((MEASURED_SECONDS * 4 + EXTENDED_SECONDS * 2) * ROUNDS + WARMUP_SECONDS * 2) * TARGETS.length;
  // The token is pgbench's password; it must outlive every connection the bench opens.
  const token = await sidecarToken(side, totalSeconds + 3600);
  const envs: Record<Target, NodeJS.ProcessEnv> = {
    direct: directEnv(pg),
    pgbouncer: { ...directEnv(pg), PGPORT: String(bouncer.port) },
    'pgbouncer-tls': { ...directEnv(pg), PGPORT: String(bouncerTls.port) },
    pipe: { ...directEnv(pg), PGPORT: String(pipe.port) },
    sidecar: side.libpqEnv(token, { PGAPPNAME: 'chaperone-bench' }),
  };
  const proxyPid: Record<Target, number | undefined> = {
    direct: undefined,
    pgbouncer: pgbouncer?.pid,
    'pgbouncer-tls': pgbouncerTls?.pid,
    pipe: bytePipe?.pid,
    sidecar: side.process.pid,
  };
  console.log(
    `bench: PostgreSQL 127.0.0.1:${pg.port}, PgBouncer 127.0.0.1:${bouncer.port} (TLS upstream: ${bouncerTls.port}), byte pipe 127.0.0.1:${pipe.port}, sidecar ${side.host}:${side.port}; ` +
      `about ${Math.round(totalSeconds / 60)} min of pgbench`,
  );

  // Warm up every path (JIT, caches, connection set-up) before measuring.
  for (const target of TARGETS) {
    await pgbench(target, envs[target], 'simple', 8, WARMUP_SECONDS, proxyPid[target]);
    await pgbench(target, envs[target], 'prepared', 8, WARMUP_SECONDS, proxyPid[target]);
  }

  // Targets interleaved per (mode, clients) and per round, so drifting background load (other engineers'
  // tests) hits all three alike; the median of the rounds is what the table and the ratios use.
  const rounds: RunResult[] = [];
  const runs: RunResult[] = [];
  for (const mode of MODES) {
    for (const clients of CLIENTS) {
      const seconds = mode === 'extended' ? EXTENDED_SECONDS : MEASURED_SECONDS;
      const byTarget = new Map<Target, RunResult[]>();
      for (let round = 0; round < ROUNDS; round++) {
        for (const target of TARGETS) {
          const r = await pgbench(target, envs[target], mode, clients, seconds, proxyPid[target]);
          rounds.push(r);
          byTarget.set(target, [...(byTarget.get(target) ?? []), r]);
          console.log(
            `  ${target.padEnd(10)} ${mode.padEnd(9)} -c ${clients} round ${round + 1}/${ROUNDS}: ${fmt(r.tps)} tps, ${fmt(r.latencyMs, 3)} ms (load ${fmt(r.loadavgAfter[0] ?? 0, 2)})`,
          );
        }
      }
      for (const target of TARGETS) runs.push(median(byTarget.get(target) ?? []));
    }
  }

  const audit = countLines(side.auditFile);
  const sidecarTxns = transactionsByTarget.get('sidecar') ?? 0;
  await side.stop();
  sidecar = undefined;
  if (pgbouncerTls !== undefined) await stopProcess(pgbouncerTls, 5_000);
  pgbouncerTls = undefined;
  const evidenceStore = await evidenceBench(pg);
  const footprint = await runFootprint(envs.direct, envs.pgbouncer);
  const ratios = computeRatios(runs);
  const checks = [
    ...checkTargets(ratios, policy, durableAudit.flushRecordsPerSecond, evidenceStore),
    ...footprintTargets(footprint),
  ];
  const loadAfter = uptime();

  printRuns(runs);
  printRatios(ratios);
  console.log(
    `\npolicy decision latency: uncached p50 ${fmt(policy.uncached.p50, 2)} µs / p99 ${fmt(policy.uncached.p99, 2)} µs, cached p50 ${fmt(policy.cached.p50, 2)} µs / p99 ${fmt(policy.cached.p99, 2)} µs`,
  );
  console.log(
    `sidecar audit: ${audit.lines} records, ${fmt(audit.bytes / 1e6)} MB for ${sidecarTxns} pgbench transactions (${fmt(audit.lines / Math.max(1, sidecarTxns), 2)} records, ${fmt(audit.bytes / Math.max(1, sidecarTxns))} bytes each)`,
  );
  printTargets(checks);
  console.log(`\nload: before ${loadBefore}\n      after  ${loadAfter}`);

  const results = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    environment: {
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? '',
      memoryBytes: totalmem(),
      kernel: release(),
      postgres: pgVersion,
      pgbench: execFileSync(pgTool('pgbench'), ['--version'], { encoding: 'utf8' }).trim(),
      pgbouncer: bouncer.version,
      uptimeBefore: loadBefore,
      uptimeAfter: loadAfter,
      loadavgAfter: loadavg(),
    },
    settings: {
      scale: SCALE,
      rounds: ROUNDS,
      measuredSeconds: MEASURED_SECONDS,
      extendedSeconds: EXTENDED_SECONDS,
      warmupSeconds: WARMUP_SECONDS,
      pgbench: 'pgbench -n -S -M <mode> -c <clients> -j <1|2> -T <seconds>; runs = median-TPS round of rounds',
      direct: 'TCP 127.0.0.1, sslmode=disable, scram-sha-256',
      pgbouncer: 'session pooling, auth_type scram-sha-256, TCP 127.0.0.1 both sides, no TLS',
      'pgbouncer-tls':
        'as pgbouncer, but server_tls_sslmode verify-full to PostgreSQL (as the sidecar upstream); a yardstick, not a target',
      pipe: 'bench/byte-pipe.ts: net.Socket pipe() both ways, TCP 127.0.0.1 both sides, no TLS; SCRAM passes through',
      sidecar: 'allow-all policy, audit JSON lines to a file, log level info, upstream TLS verify-full + SCRAM',
    },
    runs,
    rounds,
    ratios: ratiosByShape(ratios),
    policyDecision: policy,
    sqlAnalysis,
    admission,
    tokenExchange,
    durableAudit,
    evidenceStore,
    masking,
    kubernetesApi,
    approvals,
    sidecarAudit: { records: audit.lines, bytes: audit.bytes, pgbenchTransactions: sidecarTxns },
    footprint,
    targets: checks,
    allTargetsMet: checks.every((c) => c.met),
  };
  writeFileSync(RESULTS_FILE, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nbench: results in ${RESULTS_FILE}`);
}

/** bench/footprint.ts against PgBouncer and direct PostgreSQL, with a fresh sidecar of its own. */
async function runFootprint(direct: NodeJS.ProcessEnv, bouncer: NodeJS.ProcessEnv): Promise<FootprintResult> {
  const pg = postgres;
  if (pg === undefined) throw new Error('no PostgreSQL');
  console.log(
    'bench: footprint: memory at rest and after load, connection storm, 150 clients, audit bytes per statement',
  );
  return runFootprintBench(
    footprintContext(pg, direct, bouncer, (s) => {
      sidecar = s;
    }),
  );
}

/** What the footprint shapes need: the targets' environments, a sidecar starter, pgbench. */
function footprintContext(
  pg: PostgresCluster,
  direct: NodeJS.ProcessEnv,
  bouncer: NodeJS.ProcessEnv,
  onSidecar: (s: SidecarProcess) => void = () => undefined,
): FootprintContext {
  return {
    envs: { direct, pgbouncer: bouncer },
    pgbouncerPid: pgbouncer?.pid,
    startSidecar: async (dir, eventLoops) => {
      const s = await startSidecar(pg, dir, eventLoops === undefined ? {} : { eventLoops });
      onSidecar(s);
      return s;
    },
    token: sidecarToken,
    pgbench: async (argv, env) => {
      const { stdout, stderr } = await run(pgTool('pgbench'), argv, env);
      return `${stdout}\n${stderr}`;
    },
    dir: runDir ?? '',
    quick: args.quick === true,
  };
}

/** `--footprint-only`: PostgreSQL, PgBouncer and the footprint part; results.json gets `footprint` and its targets. */
async function footprintOnly(): Promise<void> {
  const startedAt = new Date();
  const loadBefore = uptime();
  console.log(`bench: ${loadBefore}`);
  const pg = await setUp();
  const bouncer = await startPgbouncer(join(runDir ?? '', 'pgbouncer'), pg);
  const footprint = await runFootprint(directEnv(pg), { ...directEnv(pg), PGPORT: String(bouncer.port) });
  const checks = footprintTargets(footprint);
  printTargets(checks);
  const loadAfter = uptime();
  console.log(`\nload: before ${loadBefore}\n      after  ${loadAfter}`);
  const results = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    environment: { node: process.version, cpus: cpus().length, uptimeBefore: loadBefore, uptimeAfter: loadAfter },
    footprint,
    targets: checks,
    allTargetsMet: checks.every((c) => c.met),
  };
  writeFileSync(RESULTS_FILE, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nbench: results in ${RESULTS_FILE}`);
}

/** `--event-loops-only`: PostgreSQL, PgBouncer and the footprint's event-loop shape (runEventLoopsBench). */
async function eventLoopsOnly(): Promise<void> {
  console.log(`bench: ${uptime()}`);
  const pg = await setUp();
  const bouncer = await startPgbouncer(join(runDir ?? '', 'pgbouncer'), pg);
  const result = await runEventLoopsBench(
    footprintContext(pg, directEnv(pg), { ...directEnv(pg), PGPORT: String(bouncer.port) }),
    Number(process.env.BENCH_ROUNDS ?? 3),
  );
  console.log(`bench: ${uptime()}`);
  const file = join(REPO_ROOT, 'bench', 'event-loops.json');
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`bench: results in ${file}`);
}

/** `--footprint-profile storm|clients150`: the sidecar under `node --cpu-prof` for one footprint shape. */
async function footprintProfile(shape: string): Promise<void> {
  const argvOf: Record<string, string[]> = {
    storm: ['-n', '-S', '-C', '-c', '8', '-j', '2'],
    clients150: ['-n', '-S', '-c', '150', '-j', '2'],
  };
  const argv = argvOf[shape];
  if (argv === undefined) throw new Error(`--footprint-profile: one of ${Object.keys(argvOf).join(', ')}`);
  const seconds = Number(process.env.BENCH_SECONDS ?? 15);
  const pg = await setUp();
  mkdirSync(PROFILE_DIR, { recursive: true });
  const profDir = join(runDir ?? '', `prof-footprint-${shape}`);
  mkdirSync(profDir, { recursive: true });
  const side = await startSidecar(pg, join(runDir ?? '', `sidecar-prof-${shape}`), {
    nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`, '--cpu-prof-interval=200'],
  });
  sidecar = side;
  const env = side.libpqEnv(await sidecarToken(side, 3600));
  const pid = side.process.pid;
  await run(pgTool('pgbench'), [...argv, '-T', '2'], env); // warm-up
  const cpuOf = (c: ReturnType<typeof cpuMicros>) => (c === undefined ? 0 : c.user + c.sys);
  const cpuBefore = cpuOf(cpuMicros(pid));
  const { stdout } = await run(pgTool('pgbench'), [...argv, '-T', String(seconds)], env);
  const cpu = cpuOf(cpuMicros(pid)) - cpuBefore;
  const txns = Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1] ?? NaN);
  await side.stop();
  sidecar = undefined;
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error(`the sidecar wrote no .cpuprofile into ${profDir}`);
  const kept = join(PROFILE_DIR, `sidecar-footprint-${shape}.cpuprofile`);
  copyFileSync(join(profDir, file), kept);
  const text = formatProfileSummary(summariseProfile(kept, 40));
  writeFileSync(join(PROFILE_DIR, `sidecar-footprint-${shape}.txt`), `${text}\n`);
  console.log(
    `\n== footprint ${shape}: ${String(txns)} transactions in ${String(seconds)} s, sidecar CPU ${(cpu / txns).toFixed(0)} µs each (profiler on; ${uptime()}) ==\n${text}`,
  );
}

/** One run of the --profile variant table: which variant, which round (from 1), when it ended. */
interface VariantRow {
  readonly variant: string;
  readonly round: number;
  readonly at: string;
  readonly run: RunResult;
}

interface Variant {
  readonly name: string;
  readonly description: string;
  readonly upstreamTls: boolean;
  readonly nullSink: boolean;
  /** Entry point of another checkout's sidecar (--baseline), run as shipped. */
  readonly bin?: string;
}

/** Sidecar configurations that each remove one cost, to see how much of the overhead it is. */
const VARIANTS: readonly Variant[] = [
  {
    name: 'as shipped',
    description: 'bin, upstream TLS verify-full, audit to file',
    upstreamTls: true,
    nullSink: false,
  },
  { name: 'no upstream TLS', description: 'upstream sslmode disable', upstreamTls: false, nullSink: false },
  { name: 'audit dropped', description: 'records hashed, then dropped', upstreamTls: true, nullSink: true },
  { name: 'both', description: 'no upstream TLS, records dropped', upstreamTls: false, nullSink: true },
];

async function profile(): Promise<void> {
  // The variant table's sidecars all run at once, and each keeps the upstream sessions of its 150 clients
  // parked for the next run (docs/postgres-engine.md, "How many are kept"), as PgBouncer keeps its pool.
  // With many clients: room for PgBouncer's and PgBouncer-with-TLS's pools, the pipes' sessions and every
  // variant's parked sessions (150 each) at once.
  const pg = await setUp(args.shapes?.includes('c150') === true ? 1600 : 500);
  mkdirSync(PROFILE_DIR, { recursive: true });
  const seconds = Number(process.env.BENCH_SECONDS ?? 8);
  const allShapes = [
    { mode: 'simple', clients: 1 },
    { mode: 'simple', clients: 8 },
    { mode: 'prepared', clients: 1 },
    { mode: 'prepared', clients: 8 },
  ] as const;
  // The footprint part's many-clients shape, only when asked for by name (`--shapes simple-c150`).
  const manyClientShapes = [
    { mode: 'simple', clients: 150 },
    { mode: 'prepared', clients: 150 },
  ] as const;
  const shapeNames = args.shapes?.split(',');
  const shapes = [
    ...allShapes.filter((s) => shapeNames?.includes(`${s.mode}-c${String(s.clients)}`) ?? true),
    ...manyClientShapes.filter((s) => shapeNames?.includes(`${s.mode}-c${String(s.clients)}`) ?? false),
  ];

  const profiled = VARIANTS.find((v) => v.name === (args['profile-variant'] ?? 'as shipped'));
  if (profiled === undefined) throw new Error(`unknown variant; one of: ${VARIANTS.map((v) => v.name).join(', ')}`);
  const variantRows: VariantRow[] = [];
  if (args['profiles-only'] !== true) await compareVariants(pg, shapes, seconds, variantRows);
  if (args['variants-only'] === true) {
    writeFileSync(
      join(PROFILE_DIR, 'variants.json'),
      `${JSON.stringify({ uptime: uptime(), variants: VARIANTS, runs: variantRows }, null, 2)}\n`,
    );
    return;
  }

  // CPU profiles of one variant (default: the sidecar as shipped).
  const summaries: Record<string, ProfileSummary> = {};
  const profiledShapes = shapeNames === undefined ? [allShapes[0], allShapes[1], allShapes[3]] : shapes;
  for (const shape of profiledShapes) {
    const label = `${profiled.name.replace(/\W+/g, '-')}-${shape.mode}-c${shape.clients}`;
    const profDir = join(runDir ?? '', `prof-${label}`);
    mkdirSync(profDir, { recursive: true });
    const side = await startSidecar(
      pg,
      join(runDir ?? '', `sidecar-prof-${label}`),
      {
        ...variantOptions(profiled),
        nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`, '--cpu-prof-interval=200'],
      },
      profiled.upstreamTls ? 'verify-full' : 'disable',
    );
    sidecar = side;
    const env = side.libpqEnv(await sidecarToken(side, 3600));
    await pgbench('sidecar', env, shape.mode, 8, WARMUP_SECONDS, side.process.pid);
    const r = await pgbench('sidecar', env, shape.mode, shape.clients, seconds, side.process.pid);
    await side.stop();
    sidecar = undefined;
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (file === undefined) throw new Error(`the sidecar wrote no .cpuprofile into ${profDir}`);
    const kept = join(PROFILE_DIR, `sidecar-${label}.cpuprofile`);
    copyFileSync(join(profDir, file), kept);
    const summary = summariseProfile(kept, 30);
    summaries[label] = summary;
    const text = formatProfileSummary(summary);
    writeFileSync(join(PROFILE_DIR, `sidecar-${label}.txt`), `${text}\n`);
    console.log(
      `\n== ${label}: ${fmt(r.tps)} tps, ${fmt(r.latencyMs, 3)} ms, sidecar CPU ${cpuText(r)} µs/txn (profiler on) ==\n${text}\n`,
    );
  }
  writeFileSync(
    join(PROFILE_DIR, `variants-${profiled.name.replace(/\W+/g, '-')}.json`),
    `${JSON.stringify({ uptime: uptime(), variants: VARIANTS, runs: variantRows, summaries }, null, 2)}\n`,
  );
  console.log(`bench: profiles, summaries and variants JSON in ${PROFILE_DIR} (open a .cpuprofile in Chrome DevTools)`);
}

function variantOptions(v: Variant): Partial<Pick<SidecarProcessOptions, 'bin' | 'env'>> {
  if (v.bin !== undefined) return { bin: v.bin };
  return {
    ...(v.nullSink ? { bin: join(REPO_ROOT, 'bench', 'sidecar-variant.ts') } : {}),
    env: { ...process.env, CHAPERONE_BENCH_SINK: v.nullSink ? 'null' : '' },
  };
}

/**
 * PgBouncer (without and with server TLS), the bare pipe (without and with upstream TLS, the transport floor)
 * and every sidecar variant (plus --baseline), all running at once and measured
 * interleaved, shape by shape, so drifting load on a shared machine hits them alike.
 */
async function compareVariants(
  pg: PostgresCluster,
  shapes: readonly { mode: Mode; clients: number }[],
  seconds: number,
  variantRows: VariantRow[],
): Promise<void> {
  const bouncer = await startPgbouncer(join(runDir ?? '', 'pgbouncer'), pg);
  const bouncerTls = await startPgbouncer(join(runDir ?? '', 'pgbouncer-tls'), pg, true);
  const pipe = await startBytePipe(pg);
  const pipeTls = await startBytePipe(pg, true);
  const variantNames = args.variants?.split(',');
  const variants: Variant[] = VARIANTS.filter((v) => variantNames?.includes(v.name) ?? true);
  if (args.baseline !== undefined) {
    const bin = baselineBundle(args.baseline);
    variants.push({
      name: 'baseline',
      description: `as shipped in ${args.baseline}`,
      upstreamTls: true,
      nullSink: false,
      bin,
    });
  }
  const targets: { name: string; target: Target; env: NodeJS.ProcessEnv; pid: number | undefined }[] = [
    {
      name: 'pgbouncer',
      target: 'pgbouncer',
      env: { ...directEnv(pg), PGPORT: String(bouncer.port) },
      pid: pgbouncer?.pid,
    },
    {
      name: 'pgbouncer-tls',
      target: 'pgbouncer-tls',
      env: { ...directEnv(pg), PGPORT: String(bouncerTls.port) },
      pid: pgbouncerTls?.pid,
    },
    { name: 'pipe', target: 'pipe', env: { ...directEnv(pg), PGPORT: String(pipe.port) }, pid: bytePipe?.pid },
    // The transport floor: the pipe with the sidecar's upstream TLS verify-full (counted as a pipe).
    {
      name: 'pipe-tls',
      target: 'pipe',
      env: { ...directEnv(pg), PGPORT: String(pipeTls.port) },
      pid: bytePipeTls?.pid,
    },
  ];
  for (const v of variants) {
    const side = await startSidecar(
      pg,
      join(runDir ?? '', `sidecar-${v.name.replace(/\W+/g, '-')}`),
      { ...variantOptions(v), ...(PERF_DIR === undefined ? {} : { nodeArgs: ['--perf-basic-prof'] }) },
      v.upstreamTls ? 'verify-full' : 'disable',
    );
    variantSidecars.add(side);
    if (side.process.pid !== undefined) perfLabels.set(side.process.pid, v.name);
    targets.push({
      name: v.name,
      target: 'sidecar',
      env: side.libpqEnv(await sidecarToken(side, 3600)),
      pid: side.process.pid,
    });
  }
  if (PERF_DIR !== undefined) {
    mkdirSync(PERF_DIR, { recursive: true });
    for (const t of targets) if (t.target !== 'sidecar' && t.pid !== undefined) perfLabels.set(t.pid, t.name);
  }
  for (const t of targets) await pgbench(t.target, t.env, 'simple', 8, WARMUP_SECONDS, t.pid);
  // BENCH_ROUNDS rounds (default 1), the targets interleaved within each, every round printed.
  const rounds = Number(process.env.BENCH_ROUNDS ?? 1);
  for (const shape of shapes) {
    for (let round = 0; round < rounds; round++) {
      // The order rotates round by round, so that no target always runs right after the same other one.
      const shift = round % targets.length;
      for (const t of [...targets.slice(shift), ...targets.slice(0, shift)]) {
        // Many clients: an unmeasured run of the same shape first, as the footprint part does (PgBouncer
        // fills its server pool, the sidecar parks what it may keep).
        // (On a busy machine its logins can take all of it: its output is not read.)
        if (shape.clients > 8) {
          const argv = ['-n', '-S', '-M', shape.mode, '-c', String(shape.clients), '-j', '2'];
          await run(pgTool('pgbench'), [...argv, '-T', String(WARMUP_SECONDS)], t.env);
        }
        try {
          const r = await pgbench(t.target, t.env, shape.mode, shape.clients, seconds, t.pid);
          variantRows.push({ variant: t.name, round: round + 1, at: new Date().toISOString(), run: r });
        } catch (err) {
          // On a saturated machine 150 logins can take longer than the run (0 transactions): that round of
          // that target is left out, the others still count.
          if (shape.clients <= 8 || signalled.interrupted) throw err;
          console.log(
            `bench: ${t.name} ${shape.mode} -c ${String(shape.clients)} round ${String(round + 1)} left out: ${(err as Error).message.split('\n')[0] ?? ''}`,
          );
        }
      }
    }
  }
  for (const s of variantSidecars) await s.stop();
  variantSidecars.clear();
  if (pgbouncer !== undefined) await stopProcess(pgbouncer, 5_000);
  pgbouncer = undefined;
  if (pgbouncerTls !== undefined) await stopProcess(pgbouncerTls, 5_000);
  pgbouncerTls = undefined;
  if (bytePipe !== undefined) await stopProcess(bytePipe, 5_000);
  bytePipe = undefined;
  if (bytePipeTls !== undefined) await stopProcess(bytePipeTls, 5_000);
  bytePipeTls = undefined;
  console.log(
    `\n${'variant'.padEnd(16)} ${'mode'.padEnd(9)} ${'clients'.padStart(7)} ${'TPS'.padStart(8)} ${'÷ PgB'.padStart(6)} ${'avg lat ms'.padStart(10)} ${'proxy CPU µs/txn (user+sys)'.padStart(27)} ${'main thread'.padStart(11)} ${'run-queue µs/txn'.padStart(16)} ${'load1'.padStart(6)}`,
  );
  // Each row's ratio is to the PgBouncer run of its own shape and round (none when that one was left out).
  const bouncerTpsOf = new Map<string, number>();
  for (const row of variantRows) {
    if (row.variant === 'pgbouncer')
      bouncerTpsOf.set(`${row.run.mode}-${String(row.run.clients)}-${String(row.round)}`, row.run.tps);
  }
  for (const { variant, round, run: r } of variantRows) {
    const bouncerTps = bouncerTpsOf.get(`${r.mode}-${String(r.clients)}-${String(round)}`);
    const wait = r.proxyRunQueueWaitUsPerTxn === undefined ? '-' : fmt(r.proxyRunQueueWaitUsPerTxn, 1);
    const main = r.proxyMainThreadUsPerTxn === undefined ? '-' : fmt(r.proxyMainThreadUsPerTxn, 1);
    const ratio = bouncerTps === undefined || bouncerTps === 0 ? '-' : fmt(r.tps / bouncerTps, 3);
    console.log(
      `${variant.padEnd(16)} ${r.mode.padEnd(9)} ${String(r.clients).padStart(7)} ${fmt(r.tps).padStart(8)} ${ratio.padStart(6)} ${fmt(r.latencyMs, 3).padStart(10)} ${cpuText(r).padStart(27)} ${main.padStart(11)} ${wait.padStart(16)} ${fmt(r.loadavgAfter[0] ?? 0, 2).padStart(6)}`,
    );
  }
}

let status = 0;
try {
  if (args.profile === true) await profile();
  else if (args.evidence === true) await evidenceOnly();
  else if (args['footprint-only'] === true) await footprintOnly();
  else if (args['footprint-profile'] !== undefined) await footprintProfile(args['footprint-profile']);
  else if (args['event-loops-only'] === true) await eventLoopsOnly();
  else await benchmark();
} catch (err) {
  // An interrupt kills pgbench under a run; the signal handler reports that and sets the exit status.
  if (!signalled.interrupted)
    console.error(`bench: FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  status = 1;
} finally {
  await cleanup();
}
process.exit(status);
