// The evidence store in Kubernetes mode (issue 18, docs/evidence-store.md): pgbench -S -c 8 through a
// sidecar that spools every record durably, appends it to the evidence store (a database of its own on the
// bench's PostgreSQL, written by an INSERT-only role) and writes signed heads into Session objects on a
// private control plane, against the same pgbench through the JSON-lines sidecar (the yardstick), in the
// same run, alternating. Then 10 such sidecars at once against one API server and one store: aggregate
// records stored per second and the API server's share of the work.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { evidenceSchemaSql } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../e2e/harness/control-plane.ts';
import { applyCrds, kubectl } from '../e2e/harness/kube.ts';
import type { PostgresCluster } from '../e2e/harness/postgres.ts';
import { ALLOW_ALL, spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { SIDECAR_NODE_FLAGS } from '../sidecar/src/bin/node-flags.ts';
import { postgresBinDir } from '../e2e/harness/tools.ts';
import { cpus } from 'node:os';
import { formatStoreState, machineStealSeconds, rssMiB, storeState, type StoreState } from './evidence-state.ts';
import { machineIdleSeconds, ProcessCpuSampler } from './process-cpu.ts';

export interface EvidencePgbenchRun {
  /**
   * json-lines: the yardstick; evidence-store: Kubernetes mode with the store, spool durability `Written`
   * (a statement waits for its record to be in the spool file); evidence-store-synced: the same with
   * `Synced` (it waits for the fdatasync); session-objects: records in Session objects (no store, `Synced`),
   * for comparison; evidence-store-tmpfs-spool: a diagnostic, `Synced` with the spool on tmpfs (its
   * fdatasync does not reach a disk), to separate the disk's sync latency from the rest;
   * evidence-store-baseline: `evidence-store` with the sidecar of another checkout (`baselineDir`), for A/B.
   */
  readonly target: EvidenceTarget;
  /** The round it ran in, from 0. */
  readonly round: number;
  readonly seconds: number;
  readonly tps: number;
  readonly transactions: number;
  readonly failed: number;
  readonly latencyMs: number;
  /** pgbench's TPS of each 5 s of the run (`-P 5`), to see a decline within it. */
  readonly tpsSeries: readonly number[];
  /** What accumulates from run to run, read just after this one (StoreState). */
  readonly after?: StoreState;
  /** The highest RSS of the target's sidecar (all threads) during the run, sampled every 200 ms, MiB. */
  readonly rssPeakMiB: number;
  /**
   * CPU seconds over the run by process group (the target's sidecar, pgbench, pgbench's PostgreSQL
   * backends, the store's backends, the WAL writer, other PostgreSQL processes, the control plane), and the
   * machine's idle CPU seconds (both cores, idle + iowait) in the same window.
   */
  readonly cpu: Readonly<Record<string, number>>;
  readonly machineIdleSeconds: number;
  /** CPU seconds the hypervisor took (steal) in the window, summed over CPUs. */
  readonly stealSeconds: number;
  /**
   * CPU seconds of processes outside the groups above in the window (another engineer's, anything not the
   * bench's): the machine's busy time less steal less the groups' (the runner and kernel threads included).
   */
  readonly outsideCpuSeconds: number;
}

export const TARGETS = [
  'json-lines',
  'evidence-store',
  'evidence-store-synced',
  'session-objects',
  'evidence-store-tmpfs-spool',
  'evidence-store-baseline',
] as const;
export type EvidenceTarget = (typeof TARGETS)[number];
/** What rounds after the first run (EvidenceStoreBenchOptions.rounds). */
const LATER_ROUND_TARGETS: ReadonlySet<EvidenceTarget> = new Set([
  'json-lines',
  'evidence-store',
  'evidence-store-baseline',
]);

export interface EvidenceStoreBenchResult {
  readonly runs: readonly EvidencePgbenchRun[];
  /**
   * The median over the rounds of each round's evidence-store TPS (durability `Written`) over the JSON-lines
   * TPS of the same round (target ≥ 0.9); every round measures the two one after the other.
   */
  readonly ratio: number;
  /** Each round's evidence-store ÷ JSON-lines TPS, in round order (the first round's runs are the longest). */
  readonly roundRatios: readonly number[];
  /**
   * Each round's JSON-lines ÷ evidence-store CPU per statement, all of the bench's processes (the runner
   * aside): on a saturated machine the TPS ratio follows it, whatever else the two runs got of the cores.
   */
  readonly roundCpuRatios: readonly number[];
  /**
   * The same with the store's PostgreSQL (its backends, autovacuum, checkpointer, WAL writer and the
   * cluster's other processes: pgbench -S writes nothing) and the control plane costing nothing: an upper
   * bound of the ratio for any row format of the store on these cores.
   */
  readonly roundCpuBounds: readonly number[];
  /** The same with durability `Synced` (a statement waits for the spool's fdatasync). */
  readonly syncedRatio: number;
  /** The same for the diagnostic with the spool on tmpfs, and for records in Session objects. */
  readonly tmpfsSpoolRatio: number;
  readonly sessionObjectsRatio: number;
  /** Statements refused because the trail was unavailable (53100) during the evidence-store runs (target 0). */
  readonly failClosedRefusals: number;
  /** The same for the sidecar keeping records in Session objects (for comparison). */
  readonly sessionObjectsRefusals: number;
  /** Records in the store after the single-sidecar runs, and per second of evidence-store pgbench. */
  /** Records the evidence-store sidecar stored (and covered by a written head) during its runs. */
  readonly storedRecords: number;
  readonly storedRecordsPerSecond: number;
  /** Session object writes by operation during the single-sidecar runs. */
  readonly apiWrites: Record<string, number>;
  /**
   * Mean time of one group commit (fdatasync) of the spool and of one batch insert into the store during the
   * evidence-store runs, ms: the spool's fsync is what each statement waits for (docs/audit-durability.md).
   */
  readonly spoolFsyncMeanMs: number;
  readonly storeInsertMeanMs: number;
  /**
   * Each single sidecar's RSS once every round is over, its backlog written and it idle for `idleSeconds`
   * (what it keeps after a load), MiB, by target.
   */
  readonly rssAfterIdleMiB: Readonly<Partial<Record<EvidenceTarget, number>>>;
  readonly idleSeconds: number;
  readonly fleet: {
    readonly sidecars: number;
    readonly seconds: number;
    readonly tps: number;
    /** Records stored (and covered by a written head) per second, all sidecars together. */
    readonly recordsPerSecond: number;
    /** Session object writes (create, head, status) per second, all sidecars together. */
    readonly apiWritesPerSecond: number;
    readonly recordsPerApiWrite: number;
    /** CPU seconds of the control plane (kube-apiserver with etcd) and of the sidecars during the run. */
    readonly apiServerCpuSeconds: number;
    readonly sidecarsCpuSeconds: number;
    /** The control plane's share of the CPU the audit path used (control plane ÷ (control plane + sidecars)). */
    readonly apiServerCpuShare: number;
    readonly failClosedRefusals: number;
  };
  readonly target: { readonly ratio: 0.9; readonly met: boolean };
}

function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const fields =
      readFileSync(`/proc/${String(pid)}/stat`, 'utf8')
        .split(') ')[1]
        ?.split(' ') ?? [];
    // utime, stime, cutime, cstime (fields 14-17 of stat; 12-15 after the command name)
    const ticks = [11, 12, 13, 14].reduce((n, i) => n + Number(fields[i] ?? 0), 0);
    return ticks / 100;
  } catch {
    return 0;
  }
}

function pgbench(
  env: NodeJS.ProcessEnv,
  clients: number,
  seconds: number,
  rate?: number,
): Promise<
  Omit<
    EvidencePgbenchRun,
    'target' | 'round' | 'cpu' | 'machineIdleSeconds' | 'after' | 'stealSeconds' | 'outsideCpuSeconds' | 'rssPeakMiB'
  >
> {
  const bin = join(postgresBinDir(), 'pgbench');
  const argv = [
    '-n',
    '-S',
    '-M',
    'simple',
    '-c',
    String(clients),
    '-j',
    String(Math.min(2, clients)),
    '-T',
    String(seconds),
    '-P',
    '5',
    ...(rate === undefined ? [] : ['-R', String(rate)]),
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(bin, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => {
      const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? NaN);
      const transactions = num(/number of transactions actually processed: (\d+)/);
      if (Number.isNaN(transactions)) {
        reject(new Error(`pgbench failed:\n${out}`));
        return;
      }
      resolve({
        seconds,
        tps: num(/tps = ([\d.]+) \(without initial connection time\)/),
        transactions,
        failed: Number(/number of failed transactions: (\d+)/.exec(out)?.[1] ?? 0),
        latencyMs: num(/latency average = ([\d.]+) ms/),
        tpsSeries: [...out.matchAll(/^progress: [\d.]+ s, ([\d.]+) tps/gm)].map((m) => Number(m[1])),
      });
    });
  });
}

async function metric(s: SidecarProcess, name: string, labels = ''): Promise<number> {
  let text: string;
  // A sidecar starved of CPU on a loaded machine can miss a connect deadline: ask again.
  for (let attempt = 1; ; attempt++) {
    try {
      text = await (await fetch(`http://127.0.0.1:${String(s.metricsPort)}/metrics`)).text();
      break;
    } catch (err) {
      if (attempt >= 5 || s.process.exitCode !== null)
        throw new Error(`metrics of ${s.dir}: ${String(err)}`, { cause: err });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  const escaped = `${name}${labels}`.replace(/[{}"=]/g, (c) => `\\${c}`);
  const m = new RegExp(`^${escaped} ([0-9.e+-]+)$`, 'm').exec(text);
  return Number(m?.[1] ?? 0);
}

async function apiWrites(s: SidecarProcess): Promise<Record<string, number>> {
  const result: Record<string, number> = {};
  for (const op of ['create', 'head', 'append', 'status']) {
    result[op] = await metric(s, 'chaperone_audit_session_object_writes_total', `{operation="${op}"}`);
  }
  return result;
}

/** Waits until the sidecar has nothing pending (every record stored and signed), up to `timeoutMs`. */
async function drained(s: SidecarProcess, timeoutMs = 300_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if ((await metric(s, 'chaperone_audit_pending_records')) === 0) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error('the sidecar did not drain its spool into the evidence store in time');
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
}

export interface EvidenceStoreBenchOptions {
  readonly pg: PostgresCluster;
  readonly runDir: string;
  /** Seconds of each measured pgbench run of the first round (≥ 60 for the issue's target). */
  readonly seconds: number;
  /**
   * Rounds of the targets, alternating. The first round runs every target for `seconds`; later rounds run
   * only JSON lines and the evidence store (`Written`), for `laterSeconds` each: the ratio is their median.
   */
  readonly rounds: number;
  /** Seconds of each pgbench run after the first round (default `seconds`). */
  readonly laterSeconds?: number;
  readonly fleetSidecars: number;
  readonly fleetSeconds: number;
  /** Called with each sidecar's PID (so the runner can stop it on interrupt). */
  readonly onSidecar?: (s: SidecarProcess) => void;
  /** Profile the evidence-store sidecar (`Written`) with `node --cpu-prof` into this directory. */
  readonly cpuProfileDir?: string;
  /** Only these targets (default all); `evidence-store` always runs (its metrics are reported). */
  readonly targets?: readonly EvidenceTarget[];
  /** pgbench `-R`: the same offered load (transactions/s) for every target instead of as fast as it goes. */
  readonly rate?: number;
  /** Root of another checkout whose sidecar runs the `evidence-store-baseline` target (only with it). */
  readonly baselineDir?: string;
  /** Profile the JSON-lines sidecar too (with `cpuProfileDir`), to set the two profiles side by side. */
  readonly profileYardstick?: boolean;
  /** Node options for every sidecar of this bench, after the image's V8 flags (node-flags.ts) and before the bin. */
  readonly nodeArgs?: readonly string[];
  /** Seconds every single sidecar stays idle after the rounds before its RSS is read (default 30). */
  readonly idleSeconds?: number;
}

export async function runEvidenceStoreBench(options: EvidenceStoreBenchOptions): Promise<EvidenceStoreBenchResult> {
  const { pg, runDir } = options;
  const id = randomBytes(3).toString('hex');
  const database = `evidence_${id}`;
  const writer = `evidence_${id}_writer`;
  const auditor = `evidence_${id}_auditor`;
  const password = randomBytes(12).toString('hex');
  pg.superuserSql(`create role ${writer} login password '${password}'`);
  pg.superuserSql(`create role ${auditor} nologin`);
  pg.superuserSql(`create database ${database}`);
  pg.superuserSql(evidenceSchemaSql({ writer, auditor }), database);
  const passwordFile = join(runDir, 'evidence-writer-password');
  writeFileSync(passwordFile, password, { mode: 0o600 });

  const cpDir = join(runDir, 'evidence-control-plane');
  mkdirSync(cpDir, { recursive: true });
  const cp: ControlPlane = await startControlPlane(cpDir);
  const sidecars: SidecarProcess[] = [];
  try {
    await applyCrds(cp.kubeconfig);
    const namespace = 'evidence-bench';
    await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });
    const upstream = {
      host: 'localhost',
      port: pg.port,
      database: pg.database,
      user: pg.user,
      password: pg.password,
      caFile: pg.caFile,
    };
    const start = async (
      name: string,
      mode: 'json-lines' | 'store' | 'sessions',
      spoolBase?: string,
      extra: { durability?: 'Synced' | 'Written'; nodeArgs?: readonly string[]; bin?: string } = {},
    ): Promise<SidecarProcess> => {
      // BENCH_EVIDENCE_HEAD_INTERVAL_MS: this checkout's audit.evidenceStore.headIntervalMs (0: a head per
      // flush, as before it existed); not passed to a baseline checkout, whose configuration may not know it.
      const headInterval = process.env.BENCH_EVIDENCE_HEAD_INTERVAL_MS;
      const headIntervalMs = headInterval === undefined || extra.bin !== undefined ? undefined : Number(headInterval);
      const dir = join(runDir, name);
      const s = await spawnSidecar({
        dir,
        upstream,
        // Ten sidecars starting sessions at once on a loaded machine can take longer than the default 10 s.
        listener: { authTimeoutMs: 60_000 },
        policies: { 'allow-all': ALLOW_ALL },
        logLevel: 'info',
        // The image's V8 flags (node-flags.ts), as every pod runs it: without --liftoff-only the SQL parser's
        // tier-up alone peaked at 1.2 GiB (bench/README.md, issue 18, fifteenth session).
        nodeArgs: [...SIDECAR_NODE_FLAGS, ...(options.nodeArgs ?? []), ...(extra.nodeArgs ?? [])],
        ...(extra.bin === undefined ? {} : { bin: extra.bin }),
        ...(mode === 'json-lines'
          ? {}
          : {
              audit: {
                spoolDir: join(spoolBase ?? dir, 'audit'),
                spoolDurability: extra.durability ?? 'Synced',
                kubernetes: { kubeconfig: cp.kubeconfig, namespace },
                ...(mode === 'store'
                  ? {
                      evidenceStore: {
                        postgres: {
                          host: 'localhost',
                          port: pg.port,
                          database,
                          user: writer,
                          passwordFile,
                          caFile: pg.caFile,
                        },
                        ...(headIntervalMs === undefined ? {} : { headIntervalMs }),
                      },
                    }
                  : {}),
              },
            }),
      });
      sidecars.push(s);
      options.onSidecar?.(s);
      return s;
    };
    const token = (s: SidecarProcess) =>
      s.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3 * 3600 });
    const baselineDir = options.baselineDir;
    const targets = TARGETS.filter(
      (t) =>
        t === 'evidence-store' ||
        (t === 'evidence-store-baseline'
          ? baselineDir !== undefined
          : options.targets === undefined || options.targets.includes(t)),
    );
    const profiled = (profile: boolean) =>
      profile && options.cpuProfileDir !== undefined
        ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', options.cpuProfileDir] }
        : {};
    const stored = await start('evidence-sidecar', 'store', undefined, { durability: 'Written', ...profiled(true) });
    const tmpfsSpool = mkdtempSync('/dev/shm/chaperone-bench-spool-');
    const sidecarOf: Record<EvidenceTarget, () => Promise<SidecarProcess>> = {
      'json-lines': () =>
        start('evidence-yardstick', 'json-lines', undefined, profiled(options.profileYardstick === true)),
      'evidence-store': () => Promise.resolve(stored),
      'evidence-store-synced': () => start('evidence-sidecar-synced', 'store', undefined, { durability: 'Synced' }),
      'session-objects': () => start('evidence-session-objects', 'sessions'),
      'evidence-store-tmpfs-spool': () => start('evidence-tmpfs-spool', 'store', tmpfsSpool),
      'evidence-store-baseline': () =>
        start('evidence-sidecar-baseline', 'store', undefined, {
          durability: 'Written',
          bin: join(baselineDir ?? '', 'sidecar', 'src', 'bin', 'chaperone-sidecar.ts'),
        }),
    };
    const running = new Map<EvidenceTarget, SidecarProcess>();
    const envs = new Map<EvidenceTarget, NodeJS.ProcessEnv>();
    for (const target of targets) {
      const s = await sidecarOf[target]();
      running.set(target, s);
      envs.set(target, s.libpqEnv(await token(s), { PGAPPNAME: 'chaperone-bench' }));
    }
    const envOf = (target: EvidenceTarget): NodeJS.ProcessEnv => envs.get(target) ?? {};
    const pgbenchBin = join(postgresBinDir(), 'pgbench');
    const samplerFor = (sidecar: SidecarProcess) =>
      new ProcessCpuSampler(
        (pid, ppid, cmd) => {
          if (pid === sidecar.process.pid) return 'sidecar';
          if (pid === cp.process.pid) return 'control plane';
          // This process: the sampler's own reads of /proc every 200 ms.
          if (pid === process.pid) return 'bench runner';
          if (cmd.startsWith(pgbenchBin)) return 'pgbench';
          // kthreadd's children: writeback of the spool's and the store's pages, the journal, softirqs.
          if (ppid === 2) return 'kernel threads';
          if (ppid !== pg.process.pid) return undefined;
          // A backend just forked still has the postmaster's command line until it sets its title after the
          // login: not classed yet (it would stay `postgres other`); the next sample classes it, whole.
          if (!cmd.startsWith('postgres:')) return undefined;
          // `postgres: USER DATABASE HOST(PORT) STATE` for a backend, `postgres: walwriter` and the like otherwise.
          const title = cmd.split(' ');
          if (title[2] === database) return 'store backends';
          if (title[2] === pg.database) return 'pgbench backends';
          if (title[1] === 'walwriter') return 'wal writer';
          if (title[1] === 'autovacuum') return 'autovacuum';
          if (title[1] === 'checkpointer') return 'checkpointer';
          return 'postgres other';
        },
        200,
        sidecar.process.pid === undefined ? [] : [sidecar.process.pid],
      );
    // Warm both paths up (JIT, caches, the writer's first Session objects).
    for (const target of targets) await pgbench(envOf(target), 8, 5);
    await drained(stored);
    // The tmpfs diagnostic writes into the same store: count this sidecar's records by its own metric.
    const flushedBefore = await metric(stored, 'chaperone_audit_flushed_records_total');
    const writesBefore = await apiWrites(stored);
    const refusedBefore = await metric(stored, 'chaperone_audit_spool_rejected_total', '{reason="spool-full"}');
    const mean = async (histogram: string) => ({
      sum: await metric(stored, `${histogram}_sum`),
      count: await metric(stored, `${histogram}_count`),
    });
    const fsyncBefore = await mean('chaperone_audit_spool_fsync_duration_seconds');
    const insertBefore = await mean('chaperone_audit_store_insert_duration_seconds');
    const metricsText = async (s: SidecarProcess) =>
      (await fetch(`http://127.0.0.1:${String(s.metricsPort)}/metrics`)).text();
    const yardstick = running.get('json-lines');
    const state = (): Promise<StoreState> =>
      storeState({
        pg,
        database,
        sidecar: { pid: stored.process.pid, metrics: () => metricsText(stored), spoolDir: join(stored.dir, 'audit') },
        ...(yardstick === undefined
          ? {}
          : {
              yardstick: {
                pid: yardstick.process.pid,
                metrics: () => metricsText(yardstick),
                auditFile: yardstick.auditFile,
              },
            }),
        controlPlaneDir: cpDir,
        sessions: async () =>
          (await kubectl(['get', 'sessions', '-n', namespace, '-o', 'name'], { kubeconfig: cp.kubeconfig }))
            .split('\n')
            .filter((l) => l.trim() !== '').length,
      });
    console.log(`  before the rounds: ${formatStoreState(await state())}`);
    const runs: EvidencePgbenchRun[] = [];
    for (let round = 0; round < options.rounds; round++) {
      const seconds = round === 0 ? options.seconds : (options.laterSeconds ?? options.seconds);
      for (const target of targets) {
        // Later rounds repeat the ratio's two targets (and an A/B's baseline) only: make bench's time; the
        // diagnostics run once.
        if (round > 0 && !LATER_ROUND_TARGETS.has(target)) continue;
        // Every sidecar's backlog written first: the Session-objects sidecar drains at the API server's pace
        // long after its run, and its writes would otherwise be measured in the next target's window.
        for (const [other, s] of running) if (other !== 'json-lines') await drained(s, 900_000);
        const sampler = samplerFor(running.get(target) ?? stored);
        const idleBefore = machineIdleSeconds();
        const stealBefore = machineStealSeconds();
        const sidecarPid = (running.get(target) ?? stored).process.pid;
        let rssPeakMiB = rssMiB(sidecarPid);
        const rssSampler = setInterval(() => {
          rssPeakMiB = Math.max(rssPeakMiB, rssMiB(sidecarPid));
        }, 200);
        sampler.begin();
        const measured = await pgbench(envOf(target), 8, seconds, options.rate).finally(() => {
          clearInterval(rssSampler);
        });
        const window = sampler.end();
        const idle = machineIdleSeconds() - idleBefore;
        const steal = machineStealSeconds() - stealBefore;
        const groups = Object.entries(window.cpu)
          .filter(([group]) => !group.includes('/'))
          .reduce((n, [, s]) => n + s, 0);
        const r: EvidencePgbenchRun = {
          target,
          round,
          ...measured,
          cpu: window.cpu,
          machineIdleSeconds: idle,
          stealSeconds: steal,
          outsideCpuSeconds: window.seconds * cpus().length - idle - steal - groups,
          rssPeakMiB,
          after: await state(),
        };
        runs.push(r);
        const perStatement = Object.entries(r.cpu)
          .map(([group, s]) => `${group} ${((s / Math.max(1, r.transactions)) * 1e6).toFixed(1)}`)
          .join(', ');
        console.log(
          `  ${target.padEnd(14)} -c 8 round ${String(round + 1)}/${String(options.rounds)}, ${String(seconds)} s: ${r.tps.toFixed(0)} tps, ${r.latencyMs.toFixed(3)} ms, ${String(r.failed)} failed; ` +
            `CPU µs/statement: ${perStatement}; machine idle ${r.machineIdleSeconds.toFixed(1)} CPU-s of ${(window.seconds * 2).toFixed(1)}, steal ${r.stealSeconds.toFixed(1)}, outside the bench ${r.outsideCpuSeconds.toFixed(1)}`,
        );
        console.log(
          `    tps every 5 s: ${r.tpsSeries.map((t) => t.toFixed(0)).join(' ')}; sidecar RSS peak ${rssPeakMiB.toFixed(1)} MiB`,
        );
        if (r.after !== undefined) console.log(`    after: ${formatStoreState(r.after)}`);
      }
    }
    const fsyncAfter = await mean('chaperone_audit_spool_fsync_duration_seconds');
    await drained(stored);
    const insertAfter = await mean('chaperone_audit_store_insert_duration_seconds');
    const meanMs = (a: { sum: number; count: number }, b: { sum: number; count: number }) =>
      ((b.sum - a.sum) / Math.max(1, b.count - a.count)) * 1000;
    const flushedAfter = await metric(stored, 'chaperone_audit_flushed_records_total');
    // What each sidecar keeps once the load is over: every backlog written, then idle.
    for (const [other, s] of running) if (other !== 'json-lines') await drained(s, 900_000);
    const idleSeconds = options.idleSeconds ?? 30;
    await new Promise((r) => setTimeout(r, idleSeconds * 1000));
    const rssAfterIdleMiB: Partial<Record<EvidenceTarget, number>> = {};
    for (const [target, s] of running) rssAfterIdleMiB[target] = rssMiB(s.process.pid);
    console.log(
      `  sidecar RSS after ${String(idleSeconds)} s idle, MiB: ${Object.entries(rssAfterIdleMiB)
        .map(([t, v]) => `${t} ${v.toFixed(1)}`)
        .join(', ')}`,
    );
    const writesAfter = await apiWrites(stored);
    const storeRuns = runs.filter((r) => r.target === 'evidence-store');
    // Per round, each target against the yardstick measured in the same minutes (the load of the machine
    // moves between rounds more than between the runs of one round); a target's ratio is their median.
    const ratiosOf = (target: EvidenceTarget): number[] => {
      const ratios: number[] = [];
      for (let round = 0; round < options.rounds; round++) {
        const inRound = runs.filter((r) => r.round === round);
        const json = inRound.find((r) => r.target === 'json-lines');
        const run = inRound.find((r) => r.target === target);
        if (json !== undefined && run !== undefined) ratios.push(run.tps / json.tps);
      }
      return ratios;
    };
    const ratioOf = (target: EvidenceTarget): number => median(ratiosOf(target));
    const roundRatios = ratiosOf('evidence-store');
    const ratio = median(roundRatios);
    const cpuPerStatement = (r: EvidencePgbenchRun, free: ReadonlySet<string>) =>
      Object.entries(r.cpu)
        .filter(
          ([group]) =>
            !group.includes('/') && group !== 'bench runner' && group !== 'kernel threads' && !free.has(group),
        )
        .reduce((n, [, s]) => n + s, 0) / Math.max(1, r.transactions);
    const storeSide = new Set([
      'store backends',
      'autovacuum',
      'checkpointer',
      'wal writer',
      'postgres other',
      'control plane',
    ]);
    const cpuRatios = (free: ReadonlySet<string>): number[] => {
      const ratios: number[] = [];
      for (let round = 0; round < options.rounds; round++) {
        const json = runs.find((r) => r.round === round && r.target === 'json-lines');
        const store = runs.find((r) => r.round === round && r.target === 'evidence-store');
        if (json !== undefined && store !== undefined)
          ratios.push(cpuPerStatement(json, new Set()) / cpuPerStatement(store, free));
      }
      return ratios;
    };
    const roundCpuRatios = cpuRatios(new Set());
    const roundCpuBounds = cpuRatios(storeSide);
    console.log(
      `  JSON lines ÷ evidence store CPU per statement by round: ${roundCpuRatios.map((r) => r.toFixed(3)).join(', ')}; ` +
        `with the store's PostgreSQL and the control plane at no cost (the bound of any row format): ${roundCpuBounds.map((r) => r.toFixed(3)).join(', ')}`,
    );
    const failClosedRefusals =
      (await metric(stored, 'chaperone_audit_spool_rejected_total', '{reason="spool-full"}')) -
      refusedBefore +
      storeRuns.reduce((n, r) => n + r.failed, 0);
    const storedRecords = flushedAfter - flushedBefore;
    const apiWritesDone = Object.fromEntries(
      Object.entries(writesAfter).map(([k, v]) => [k, v - (writesBefore[k] ?? 0)]),
    );
    const embedded = running.get('session-objects');
    const sessionObjectsRefusals =
      embedded === undefined
        ? 0
        : await metric(embedded, 'chaperone_audit_spool_rejected_total', '{reason="spool-full"}');
    for (const s of running.values()) await s.stop();
    rmSync(tmpfsSpool, { recursive: true, force: true });

    // The fleet: N sidecars at once, one pgbench -c 1 each, one API server, one store.
    const fleet: SidecarProcess[] = [];
    for (let i = 0; i < options.fleetSidecars; i++) {
      fleet.push(await start(`evidence-fleet-${String(i)}`, 'store', undefined, { durability: 'Written' }));
    }
    const fleetEnvs = await Promise.all(
      fleet.map(async (s) => s.libpqEnv(await token(s), { PGAPPNAME: 'chaperone-bench' })),
    );
    for (const env of fleetEnvs) await pgbench(env, 1, 2);
    await Promise.all(fleet.map((s) => drained(s)));
    const fleetRowsBefore = Number(pg.superuserSql('select count(*) from chaperone.audit_records', database).trim());
    const fleetWritesBefore = await Promise.all(fleet.map(apiWrites));
    const cpCpuBefore = cpuSeconds(cp.process.pid);
    const sidecarCpuBefore = fleet.reduce((n, s) => n + cpuSeconds(s.process.pid), 0);
    const started = Date.now();
    const fleetRuns = await Promise.all(fleetEnvs.map((env) => pgbench(env, 1, options.fleetSeconds)));
    await Promise.all(fleet.map((s) => drained(s)));
    const elapsed = (Date.now() - started) / 1000;
    const cpCpu = cpuSeconds(cp.process.pid) - cpCpuBefore;
    const sidecarCpu = fleet.reduce((n, s) => n + cpuSeconds(s.process.pid), 0) - sidecarCpuBefore;
    const fleetRows =
      Number(pg.superuserSql('select count(*) from chaperone.audit_records', database).trim()) - fleetRowsBefore;
    const fleetWritesAfter = await Promise.all(fleet.map(apiWrites));
    const fleetApiWrites = fleetWritesAfter.reduce(
      (n, w, i) => n + Object.entries(w).reduce((m, [k, v]) => m + v - (fleetWritesBefore[i]?.[k] ?? 0), 0),
      0,
    );
    let fleetRefusals = fleetRuns.reduce((n, r) => n + r.failed, 0);
    for (const s of fleet)
      fleetRefusals += await metric(s, 'chaperone_audit_spool_rejected_total', '{reason="spool-full"}');
    for (const s of fleet) await s.stop();

    const result: EvidenceStoreBenchResult = {
      runs,
      ratio,
      roundRatios,
      roundCpuRatios,
      roundCpuBounds,
      syncedRatio: ratioOf('evidence-store-synced'),
      tmpfsSpoolRatio: ratioOf('evidence-store-tmpfs-spool'),
      sessionObjectsRatio: ratioOf('session-objects'),
      failClosedRefusals,
      sessionObjectsRefusals,
      storedRecords,
      storedRecordsPerSecond:
        storedRecords /
        Math.max(
          1,
          storeRuns.reduce((n, r) => n + r.seconds, 0),
        ),
      apiWrites: apiWritesDone,
      spoolFsyncMeanMs: meanMs(fsyncBefore, fsyncAfter),
      storeInsertMeanMs: meanMs(insertBefore, insertAfter),
      rssAfterIdleMiB,
      idleSeconds,
      fleet: {
        sidecars: options.fleetSidecars,
        seconds: options.fleetSeconds,
        tps: fleetRuns.reduce((n, r) => n + r.tps, 0),
        // Until the last record is stored and signed (the drain is inside the window).
        recordsPerSecond: fleetRows / elapsed,
        apiWritesPerSecond: fleetApiWrites / elapsed,
        recordsPerApiWrite: fleetRows / Math.max(1, fleetApiWrites),
        apiServerCpuSeconds: cpCpu,
        sidecarsCpuSeconds: sidecarCpu,
        apiServerCpuShare: cpCpu / Math.max(1e-9, cpCpu + sidecarCpu),
        failClosedRefusals: fleetRefusals,
      },
      target: { ratio: 0.9, met: ratio >= 0.9 && failClosedRefusals === 0 },
    };
    return result;
  } finally {
    await Promise.allSettled(sidecars.map((s) => s.stop()));
    await cp.stop();
    try {
      pg.superuserSql(`drop database if exists ${database} with (force)`);
      pg.superuserSql(`drop role if exists ${writer}`);
      pg.superuserSql(`drop role if exists ${auditor}`);
    } catch {
      // The PostgreSQL of the bench is thrown away with its run directory anyway.
    }
  }
}
