// The sidecar's footprint and load behaviour (issue 20), part of `make bench`: memory at rest and after
// load, connection storms (`pgbench -C`), many clients (`-c 150`) and audit bytes per statement, with
// PgBouncer (and direct PostgreSQL) beside it. A fresh sidecar is started for this part, so its memory
// history is only what is measured here. The numbers go into results.json under `footprint`; the keys are
// documented in bench/README.md.
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { loadavg } from 'node:os';
import type { SidecarProcess } from '../e2e/harness/sidecar-process.ts';

export type FootprintTarget = 'direct' | 'pgbouncer' | 'sidecar';

export interface FootprintContext {
  /** libpq environments of direct PostgreSQL and PgBouncer. */
  readonly envs: { readonly direct: NodeJS.ProcessEnv; readonly pgbouncer: NodeJS.ProcessEnv };
  readonly pgbouncerPid: number | undefined;
  /** Starts a fresh sidecar (allow-all, audit as JSON lines) in `dir`; `eventLoops` unset: the default (lazy loops). */
  startSidecar(dir: string, eventLoops?: number): Promise<SidecarProcess>;
  /** Issues a token for the sidecar valid for `seconds`. */
  token(sidecar: SidecarProcess, seconds: number): Promise<string>;
  /** Runs pgbench to completion (tracked for cleanup by the caller); rejects on a non-zero exit. */
  pgbench(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<string>;
  readonly dir: string;
  readonly quick: boolean;
}

/** Memory of a process: RSS from /proc, the V8 and external figures from the sidecar's /metrics. */
export interface MemorySample {
  readonly rssMiB: number;
  /** Anonymous memory (heap, wasm memories, malloc); the rest of RSS is file-backed (the node binary). */
  readonly rssAnonMiB: number;
  readonly rssFileMiB: number;
  readonly heapUsedMiB?: number;
  readonly heapTotalMiB?: number;
  readonly externalMiB?: number;
  /**
   * The sidecar's event-loop delay since the previous sample (prom-client resets it on every scrape), ms:
   * how long a ready socket could wait for the loop.
   */
  readonly eventLoopDelayP99Ms?: number;
  readonly eventLoopDelayMaxMs?: number;
  /** Event loops serving at the sample (chaperone_event_loops; 1 with a pinned eventLoops: 1). */
  readonly eventLoops?: number;
  readonly loadavg1: number;
}

export interface StormResult {
  readonly connectionsPerSecond: number;
  readonly connections: number;
  /** CPU of the proxy process per connection (user + sys), µs; undefined for direct. */
  readonly proxyCpuUsPerConnection: number | undefined;
}

export interface ManyClientsResult {
  readonly tps: number;
  readonly latencyMs: number;
  readonly proxyCpuUsPerTxn: number | undefined;
}

export interface FootprintResult {
  readonly idle: {
    /** 5 s after `ready`: no session yet, so the SQL parser is not loaded (it loads with the first one). */
    readonly sidecar: MemorySample;
    readonly pgbouncer: MemorySample | undefined;
    /** 5 s after one single-transaction session: at rest with the SQL parser loaded. */
    readonly sidecarAfterFirstSession: MemorySample;
  };
  readonly storm: {
    readonly argv: string;
    readonly rounds: number;
    readonly byTarget: Readonly<Record<FootprintTarget, StormResult>>;
    readonly sidecarOverPgbouncer: number;
    readonly sidecarOverDirect: number;
    readonly sidecarAfter: MemorySample;
  };
  readonly clients150: {
    readonly argv: string;
    readonly rounds: number;
    /** Per target, the median round's TPS and the proxy's CPU per transaction (µs). */
    readonly byTarget: Readonly<Record<FootprintTarget, ManyClientsResult>>;
    /**
     * Every round, in the order run (sidecar, PgBouncer, direct within a round); the sidecar's with the
     * connections each loop accepted in it (`loopSplit`, by loop index).
     */
    readonly runs: readonly (ManyClientsResult & {
      readonly target: FootprintTarget;
      readonly round: number;
      readonly loopSplit?: readonly number[];
    })[];
    /** The sidecar's lazily started loop, read after the warm-up that starts it (its first 150 logins). */
    readonly lazyLoop: LazyLoopStart;
    /** Sidecar TPS ÷ PgBouncer TPS per round. */
    readonly roundRatios: readonly number[];
    /** The median of roundRatios. */
    readonly sidecarOverPgbouncer: number;
    readonly sidecarAfter: MemorySample;
    readonly pgbouncerAfter: MemorySample | undefined;
  };
  readonly audit: {
    readonly simple: AuditBytes;
    readonly prepared: AuditBytes;
  };
  readonly eventLoops: EventLoopsResult;
  readonly load: {
    readonly argv: string;
    readonly seconds: number;
    readonly pauseSeconds: number;
    readonly before: MemorySample;
    readonly peakRssMiB: number;
    readonly endOfLoad: MemorySample;
    /** Samples during the pause after the load, every few seconds; the last one is `after`. */
    readonly pause: readonly (MemorySample & { readonly second: number })[];
    readonly after: MemorySample;
    /** after.rssMiB / before.rssMiB. */
    readonly afterOverBefore: number;
    readonly tps: number;
  };
}

/**
 * 150 clients through a sidecar pinned to one event loop, one of two from the start and one with the default
 * lazily started loops, PgBouncer beside them (runEventLoopsBench).
 */
export interface EventLoopsResult {
  readonly argv: string;
  readonly rounds: number;
  /** Per target, the median round's TPS and the proxy's CPU per transaction (µs). */
  readonly byTarget: Readonly<Record<EventLoopsTarget, ManyClientsResult>>;
  /** Every round, in the order run. */
  readonly runs: readonly (ManyClientsResult & {
    readonly target: EventLoopsTarget;
    readonly loadavg1: number;
    /** The sidecars' connections per loop in the round, by loop index. */
    readonly loopSplit?: readonly number[];
  })[];
  readonly twoLoopsOverOne: number;
  readonly oneLoopOverPgbouncer: number;
  readonly twoLoopsOverPgbouncer: number;
  readonly lazyOverPgbouncer: number;
  /** RSS of each sidecar after the rounds. */
  readonly oneLoopAfter: MemorySample;
  readonly twoLoopsAfter: MemorySample;
  readonly lazyAfter: MemorySample;
  /** The lazy sidecar's RSS 5 s after ready (no loop started yet) and how long its second loop took to start. */
  readonly lazyIdle: MemorySample;
  readonly lazyStartSeconds: number | undefined;
  /** The lazy sidecar's loop start, read after its warm-up (its first 150 logins). */
  readonly lazyLoop: LazyLoopStart;
}

export type EventLoopsTarget = 'pgbouncer' | 'sidecar-1-loop' | 'sidecar-2-loops' | 'sidecar-lazy';

export interface AuditBytes {
  readonly statements: number;
  readonly records: number;
  readonly bytes: number;
  readonly bytesPerStatement: number;
  readonly recordsPerStatement: number;
}

const MiB = 1024 * 1024;

function procStatus(pid: number): { rss: number; anon: number; file: number } | undefined {
  try {
    const text = readFileSync(`/proc/${String(pid)}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
  } catch {
    return undefined;
  }
}

/** User + system CPU time of a process, µs (CLK_TCK 100). */
function cpuMicros(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return undefined;
  }
}

async function sidecarMetrics(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${String(port)}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

/** Connections each loop accepted so far (chaperone_event_loop_connections_total, every listener), by loop index. */
async function loopConnections(port: number): Promise<number[]> {
  const per: number[] = [];
  for (const [key, value] of await sidecarMetrics(port)) {
    const m = /^chaperone_event_loop_connections_total\{.*loop="(\d+)"/.exec(key);
    if (m?.[1] !== undefined) per[Number(m[1])] = (per[Number(m[1])] ?? 0) + value;
  }
  return Array.from({ length: per.length }, (_, i) => per[i] ?? 0);
}

/** Connections per loop between two loopConnections readings: how the kernel split a run's clients. */
const splitOf = (before: readonly number[], after: readonly number[]) => after.map((n, i) => n - (before[i] ?? 0));

/** The lazily started loop: what started it and when it listened, from the sidecar's metrics. */
export interface LazyLoopStart {
  /** chaperone_event_loop_starts_total by trigger (busy, logins). */
  readonly starts: Readonly<Record<string, number>>;
  readonly startSeconds: number | undefined;
  /** The last loop's ready time minus the start of the pgbench run that logged in the first client, ms. */
  readonly readyAfterFirstLoginMs: number | undefined;
}

async function lazyLoopStart(port: number, firstLoginAt: number): Promise<LazyLoopStart> {
  const m = await sidecarMetrics(port);
  const starts: Record<string, number> = {};
  for (const [key, value] of m) {
    const t = /^chaperone_event_loop_starts_total\{trigger="(\w+)"\}$/.exec(key)?.[1];
    if (t !== undefined) starts[t] = value;
  }
  const readyAt = m.get('chaperone_event_loop_last_ready_timestamp_seconds');
  return {
    starts,
    startSeconds: m.get('chaperone_event_loop_start_seconds'),
    readyAfterFirstLoginMs: readyAt === undefined || readyAt === 0 ? undefined : readyAt * 1000 - firstLoginAt,
  };
}

const describeStart = (s: LazyLoopStart) =>
  `loop starts ${JSON.stringify(s.starts)}, start ${s.startSeconds === undefined ? '-' : `${(s.startSeconds * 1000).toFixed(0)} ms`}, ready ${s.readyAfterFirstLoginMs === undefined ? '-' : `${s.readyAfterFirstLoginMs.toFixed(0)} ms`} after the first login`;

export async function memorySample(pid: number | undefined, metricsPort?: number): Promise<MemorySample | undefined> {
  if (pid === undefined) return undefined;
  const status = procStatus(pid);
  if (status === undefined) return undefined;
  const sample = {
    rssMiB: status.rss / MiB,
    rssAnonMiB: status.anon / MiB,
    rssFileMiB: status.file / MiB,
    loadavg1: loadavg()[0] ?? 0,
  };
  if (metricsPort === undefined) return sample;
  const m = await sidecarMetrics(metricsPort);
  const mib = (name: string) => (m.get(name) ?? 0) / MiB;
  return {
    ...sample,
    heapUsedMiB: mib('chaperone_sidecar_nodejs_heap_size_used_bytes'),
    heapTotalMiB: mib('chaperone_sidecar_nodejs_heap_size_total_bytes'),
    externalMiB: mib('chaperone_sidecar_nodejs_external_memory_bytes'),
    eventLoopDelayP99Ms: (m.get('chaperone_sidecar_nodejs_eventloop_lag_p99_seconds') ?? 0) * 1000,
    eventLoopDelayMaxMs: (m.get('chaperone_sidecar_nodejs_eventloop_lag_max_seconds') ?? 0) * 1000,
    eventLoops: m.get('chaperone_event_loops') ?? 1,
  };
}

function numberIn(text: string, pattern: RegExp, what: string): number {
  const m = pattern.exec(text);
  if (m?.[1] === undefined) throw new Error(`pgbench output has no ${what}:\n${text}`);
  return Number(m[1]);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Newlines in the file from byte `from` on. */
function countLines(path: string, from: number): number {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let lines = 0;
    let position = from;
    for (let n = readSync(fd, buf, 0, buf.length, position); n > 0; n = readSync(fd, buf, 0, buf.length, position)) {
      position += n;
      for (let i = buf.indexOf(10); i >= 0 && i < n; i = buf.indexOf(10, i + 1)) lines++;
    }
    return lines;
  } finally {
    closeSync(fd);
  }
}

/** Waits until the audit file has stopped growing (the sink writes in batches). */
async function settledSize(path: string): Promise<number> {
  let size = fileSize(path);
  for (;;) {
    await sleep(300);
    const now = fileSize(path);
    if (now === size) return now;
    size = now;
  }
}

function median<T>(values: readonly T[], key: (v: T) => number): T {
  const sorted = [...values].sort((a, b) => key(a) - key(b));
  const m = sorted[Math.floor((sorted.length - 1) / 2)];
  if (m === undefined) throw new Error('no rounds');
  return m;
}

const mib = (s: MemorySample | undefined) => (s === undefined ? '-' : `${s.rssMiB.toFixed(1)} MiB`);

export async function runFootprintBench(ctx: FootprintContext): Promise<FootprintResult> {
  const stormSeconds = ctx.quick ? 3 : 8;
  const stormRounds = ctx.quick ? 1 : 2;
  const manySeconds = ctx.quick ? 6 : 8;
  const manyRounds = ctx.quick ? 1 : 3;
  const loadSeconds = ctx.quick ? 10 : 60;
  const pauseSeconds = ctx.quick ? 6 : 30;

  const side = await ctx.startSidecar(`${ctx.dir}/sidecar-footprint`);
  const pid = side.process.pid;
  try {
    const token = await ctx.token(side, 3600);
    const envs: Record<FootprintTarget, NodeJS.ProcessEnv> = {
      direct: ctx.envs.direct,
      pgbouncer: ctx.envs.pgbouncer,
      sidecar: side.libpqEnv(token, { PGAPPNAME: 'chaperone-bench' }),
    };
    const pids: Record<FootprintTarget, number | undefined> = {
      direct: undefined,
      pgbouncer: ctx.pgbouncerPid,
      sidecar: pid,
    };
    const sample = async () => {
      const s = await memorySample(pid, side.metricsPort);
      if (s === undefined) throw new Error('the footprint sidecar is gone');
      return s;
    };

    // ---- at rest: the sidecar as started, after a moment to settle ------------------------------------
    await sleep(5_000);
    const idleSidecar = await sample();
    const idlePgbouncer = await memorySample(ctx.pgbouncerPid);
    console.log(
      `  idle RSS: sidecar ${mib(idleSidecar)} (${idleSidecar.rssAnonMiB.toFixed(1)} anonymous; heap used ${(idleSidecar.heapUsedMiB ?? 0).toFixed(1)} MiB, total ${(idleSidecar.heapTotalMiB ?? 0).toFixed(1)} MiB, external ${(idleSidecar.externalMiB ?? 0).toFixed(1)} MiB); PgBouncer ${mib(idlePgbouncer)}`,
    );
    // One session of one transaction loads the SQL parser; then at rest again.
    await ctx.pgbench(['-n', '-S', '-c', '1', '-t', '1'], envs.sidecar);
    await sleep(5_000);
    const idle = { sidecar: idleSidecar, pgbouncer: idlePgbouncer, sidecarAfterFirstSession: await sample() };
    console.log(
      `  idle RSS after one session: sidecar ${mib(idle.sidecarAfterFirstSession)} (${idle.sidecarAfterFirstSession.rssAnonMiB.toFixed(1)} anonymous)`,
    );

    // A short warm-up, so that the storm measures connections rather than the first statements' compiling.
    await ctx.pgbench(['-n', '-S', '-c', '8', '-j', '2', '-T', '2'], envs.sidecar);

    // ---- connection storm: a new connection per transaction -------------------------------------------
    const stormArgv = ['-n', '-S', '-C', '-c', '8', '-j', '2', '-T', String(stormSeconds)];
    const stormRuns = new Map<FootprintTarget, StormResult[]>();
    for (let round = 0; round < stormRounds; round++) {
      for (const target of ['direct', 'pgbouncer', 'sidecar'] as const) {
        const cpuBefore = cpuMicros(pids[target]);
        const out = await ctx.pgbench(stormArgv, envs[target]);
        const cpuAfter = cpuMicros(pids[target]);
        const connections = numberIn(out, /number of transactions actually processed: (\d+)/, 'transactions');
        const r: StormResult = {
          connections,
          connectionsPerSecond: connections / stormSeconds,
          proxyCpuUsPerConnection:
            cpuBefore === undefined || cpuAfter === undefined ? undefined : (cpuAfter - cpuBefore) / connections,
        };
        stormRuns.set(target, [...(stormRuns.get(target) ?? []), r]);
        console.log(
          `  storm ${target.padEnd(9)} round ${String(round + 1)}: ${r.connectionsPerSecond.toFixed(1)} connections/s, proxy CPU ${r.proxyCpuUsPerConnection === undefined ? '-' : `${r.proxyCpuUsPerConnection.toFixed(0)} µs`}/connection (load ${(loadavg()[0] ?? 0).toFixed(2)})`,
        );
      }
    }
    const stormBy = Object.fromEntries(
      (['direct', 'pgbouncer', 'sidecar'] as const).map((t) => [
        t,
        median(stormRuns.get(t) ?? [], (r) => r.connectionsPerSecond),
      ]),
    ) as Record<FootprintTarget, StormResult>;
    const storm = {
      argv: `pgbench ${stormArgv.join(' ')}`,
      rounds: stormRounds,
      byTarget: stormBy,
      sidecarOverPgbouncer: stormBy.sidecar.connectionsPerSecond / stormBy.pgbouncer.connectionsPerSecond,
      sidecarOverDirect: stormBy.sidecar.connectionsPerSecond / stormBy.direct.connectionsPerSecond,
      sidecarAfter: await sample(),
    };

    // ---- 150 clients ----------------------------------------------------------------------------------
    // `manyRounds` interleaved rounds (sidecar, PgBouncer, direct, one after the other each round) and the
    // median of the per-round ratios: single rounds swung ±10 % between runs on a shared machine.
    const manyArgv = ['-n', '-S', '-c', '150', '-j', '2', '-T', String(manySeconds)];
    const manyTargets = ['sidecar', 'pgbouncer', 'direct'] as const;
    // pgbench's -T includes logging in its 150 clients, 75 per thread one after the other: on a busy
    // machine (load ~20) that took longer than 8 s for every target (0 transactions). So an unmeasured
    // warm-up first (PgBouncer's server pool fills; the sidecar's lazily started loop starts), and a run
    // that processed nothing is repeated once with twice the time.
    const firstLoginAt = Date.now();
    for (const target of manyTargets) {
      await ctx.pgbench(['-n', '-S', '-c', '150', '-j', '2', '-T', '3'], envs[target]);
    }
    const lazyLoop = await lazyLoopStart(side.metricsPort, firstLoginAt);
    console.log(`  150 clients warm-up: sidecar ${describeStart(lazyLoop)}`);
    const manyRuns: (ManyClientsResult & { target: FootprintTarget; round: number; loopSplit?: number[] })[] = [];
    for (let round = 1; round <= manyRounds; round++) {
      for (const target of manyTargets) {
        let argv = manyArgv;
        const acceptedBefore = target === 'sidecar' ? await loopConnections(side.metricsPort) : undefined;
        let cpuBefore = cpuMicros(pids[target]);
        let out = await ctx.pgbench(argv, envs[target]);
        if (/number of transactions actually processed: 0\b/.test(out)) {
          argv = [...manyArgv.slice(0, -1), String(2 * manySeconds)];
          console.log(
            `  150 clients ${target}: no transaction in ${String(manySeconds)} s (logging in took longer); again`,
          );
          cpuBefore = cpuMicros(pids[target]);
          out = await ctx.pgbench(argv, envs[target]);
        }
        const cpuAfter = cpuMicros(pids[target]);
        const loopSplit =
          acceptedBefore === undefined ? undefined : splitOf(acceptedBefore, await loopConnections(side.metricsPort));
        const txns = numberIn(out, /number of transactions actually processed: (\d+)/, `transactions (${target})`);
        const r = {
          target,
          round,
          ...(loopSplit === undefined ? {} : { loopSplit }),
          tps: numberIn(out, /tps = ([\d.]+) \(without initial connection time\)/, `tps (${target})`),
          latencyMs: numberIn(out, /latency average = ([\d.]+) ms/, 'latency'),
          proxyCpuUsPerTxn:
            cpuBefore === undefined || cpuAfter === undefined || txns === 0 ? undefined : (cpuAfter - cpuBefore) / txns,
        };
        manyRuns.push(r);
        console.log(
          `  150 clients round ${String(round)} ${target.padEnd(9)}: ${r.tps.toFixed(0)} tps, ${r.latencyMs.toFixed(2)} ms, proxy CPU ${r.proxyCpuUsPerTxn?.toFixed(1) ?? '-'} µs/txn${loopSplit === undefined ? '' : `, connections per loop ${loopSplit.join(' / ')}`} (load ${(loadavg()[0] ?? 0).toFixed(2)})`,
        );
      }
    }
    const tpsOf = (target: FootprintTarget, round: number) =>
      manyRuns.find((r) => r.target === target && r.round === round)?.tps ?? Number.NaN;
    const roundRatios = Array.from(
      { length: manyRounds },
      (_, i) => tpsOf('sidecar', i + 1) / tpsOf('pgbouncer', i + 1),
    );
    const manyBy = Object.fromEntries(
      manyTargets.map((t) => {
        const mine = manyRuns.filter((r) => r.target === t);
        const cpu = mine.flatMap((r) => (r.proxyCpuUsPerTxn === undefined ? [] : [r.proxyCpuUsPerTxn]));
        return [
          t,
          {
            tps: median(
              mine.map((r) => r.tps),
              Number,
            ),
            latencyMs: median(
              mine.map((r) => r.latencyMs),
              Number,
            ),
            proxyCpuUsPerTxn: cpu.length === 0 ? undefined : median(cpu, Number),
          },
        ];
      }),
    ) as Record<FootprintTarget, ManyClientsResult>;
    const clients150 = {
      argv: `pgbench ${manyArgv.join(' ')}`,
      rounds: manyRounds,
      byTarget: manyBy,
      runs: manyRuns,
      lazyLoop,
      roundRatios,
      sidecarOverPgbouncer: median(roundRatios, Number),
      sidecarAfter: await sample(),
      pgbouncerAfter: await memorySample(ctx.pgbouncerPid),
    };
    console.log(
      `  150 clients: sidecar ÷ PgBouncer per round ${roundRatios.map((r) => r.toFixed(3)).join(', ')}, median ${clients150.sidecarOverPgbouncer.toFixed(3)}; sidecar CPU ${manyBy.sidecar.proxyCpuUsPerTxn?.toFixed(1) ?? '-'} µs/txn, PgBouncer ${manyBy.pgbouncer.proxyCpuUsPerTxn?.toFixed(1) ?? '-'} µs/txn (medians); sidecar event loops ${String(clients150.sidecarAfter.eventLoops ?? 1)}, event-loop delay p99 ${(clients150.sidecarAfter.eventLoopDelayP99Ms ?? 0).toFixed(1)} ms, max ${(clients150.sidecarAfter.eventLoopDelayMaxMs ?? 0).toFixed(1)} ms; RSS sidecar ${mib(clients150.sidecarAfter)}, PgBouncer ${mib(clients150.pgbouncerAfter)}`,
    );

    // ---- audit bytes per statement: pgbench's select, simple protocol ---------------------------------
    const auditSimple = await auditBytes(ctx, side, envs.sidecar, [
      '-n',
      '-S',
      '-M',
      'simple',
      '-c',
      '8',
      '-j',
      '2',
      '-T',
      ctx.quick ? '2' : '5',
    ]);
    console.log(
      `  audit, simple select: ${auditSimple.bytesPerStatement.toFixed(0)} bytes and ${auditSimple.recordsPerStatement.toFixed(2)} records per statement`,
    );

    // ---- memory over a 60-second load and after a 30-second pause -------------------------------------
    await sleep(5_000);
    const before = await sample();
    const loadArgv = ['-n', '-S', '-M', 'prepared', '-c', '8', '-j', '2', '-T', String(loadSeconds)];
    const auditFrom = await settledSize(side.auditFile);
    let peak = before.rssMiB;
    const watch = { running: true };
    const watching = (async () => {
      while (watch.running) {
        await sleep(1_000);
        const s = procStatus(pid ?? 0);
        if (s !== undefined) peak = Math.max(peak, s.rss / MiB);
      }
    })();
    let out: string;
    try {
      out = await ctx.pgbench(loadArgv, envs.sidecar);
    } finally {
      watch.running = false;
      await watching;
    }
    const endOfLoad = await sample();
    const statements = numberIn(out, /number of transactions actually processed: (\d+)/, 'transactions');
    const auditTo = await settledSize(side.auditFile);
    const records = countLines(side.auditFile, auditFrom);
    const auditPrepared: AuditBytes = {
      statements,
      records,
      bytes: auditTo - auditFrom,
      bytesPerStatement: (auditTo - auditFrom) / statements,
      recordsPerStatement: records / statements,
    };
    const pause: (MemorySample & { second: number })[] = [];
    const step = pauseSeconds / 3;
    for (let i = 1; i <= 3; i++) {
      await sleep(step * 1000);
      pause.push({ ...(await sample()), second: step * i });
    }
    const after = pause[pause.length - 1] ?? endOfLoad;
    const load = {
      argv: `pgbench ${loadArgv.join(' ')}`,
      seconds: loadSeconds,
      pauseSeconds,
      before,
      peakRssMiB: peak,
      endOfLoad,
      pause,
      after,
      afterOverBefore: after.rssMiB / before.rssMiB,
      tps: numberIn(out, /tps = ([\d.]+) \(without initial connection time\)/, 'tps'),
    };
    console.log(
      `  load: RSS before ${mib(before)} (${String(before.eventLoops ?? 1)} loops), peak ${peak.toFixed(1)} MiB, end ${mib(endOfLoad)} (${String(endOfLoad.eventLoops ?? 1)}), ${String(pauseSeconds)} s later ${mib(after)} (${String(after.eventLoops ?? 1)}) (×${load.afterOverBefore.toFixed(3)}); audit, prepared select: ${auditPrepared.bytesPerStatement.toFixed(0)} bytes per statement`,
    );
    await side.stop();
    const eventLoops = await runEventLoopsBench(ctx, ctx.quick ? 1 : 3);
    return { idle, storm, clients150, audit: { simple: auditSimple, prepared: auditPrepared }, eventLoops, load };
  } finally {
    await side.stop();
  }
}

/**
 * `pgbench -S -c 150` through a fresh sidecar of one event loop and a fresh one of two (eventLoops: 2,
 * docs/sidecar-event-loops.md), PgBouncer beside them: `rounds` interleaved rounds (the order rotates), each
 * target warmed up first; the median round per target.
 */
export async function runEventLoopsBench(ctx: FootprintContext, rounds: number): Promise<EventLoopsResult> {
  const seconds = ctx.quick ? 5 : 8;
  const argv = ['-n', '-S', '-c', '150', '-j', '2', '-T', String(seconds)];
  const one = await ctx.startSidecar(`${ctx.dir}/sidecar-1-loop`, 1);
  try {
    const two = await ctx.startSidecar(`${ctx.dir}/sidecar-2-loops`, 2);
    const lazy = await ctx.startSidecar(`${ctx.dir}/sidecar-lazy-loops`);
    try {
      await sleep(5_000);
      const lazyIdle = (await memorySample(lazy.process.pid, lazy.metricsPort)) as MemorySample;
      const envs: Record<EventLoopsTarget, NodeJS.ProcessEnv> = {
        pgbouncer: ctx.envs.pgbouncer,
        'sidecar-1-loop': one.libpqEnv(await ctx.token(one, 3600), { PGAPPNAME: 'chaperone-bench' }),
        'sidecar-2-loops': two.libpqEnv(await ctx.token(two, 3600), { PGAPPNAME: 'chaperone-bench' }),
        'sidecar-lazy': lazy.libpqEnv(await ctx.token(lazy, 3600), { PGAPPNAME: 'chaperone-bench' }),
      };
      const pids: Record<EventLoopsTarget, number | undefined> = {
        pgbouncer: ctx.pgbouncerPid,
        'sidecar-1-loop': one.process.pid,
        'sidecar-2-loops': two.process.pid,
        'sidecar-lazy': lazy.process.pid,
      };
      const targets: EventLoopsTarget[] = ['pgbouncer', 'sidecar-1-loop', 'sidecar-2-loops', 'sidecar-lazy'];
      const ports: Partial<Record<EventLoopsTarget, number>> = {
        'sidecar-1-loop': one.metricsPort,
        'sidecar-2-loops': two.metricsPort,
        'sidecar-lazy': lazy.metricsPort,
      };
      // Warm-up: PgBouncer opens its 150 server connections one login at a time.
      let lazyFirstLoginAt = 0;
      for (const target of targets) {
        if (target === 'sidecar-lazy') lazyFirstLoginAt = Date.now();
        await ctx.pgbench(['-n', '-S', '-c', '150', '-j', '2', '-T', '10'], envs[target]);
      }
      const lazyLoop = await lazyLoopStart(lazy.metricsPort, lazyFirstLoginAt);
      console.log(`  event loops warm-up: lazy sidecar ${describeStart(lazyLoop)}`);
      const runs: (ManyClientsResult & { target: EventLoopsTarget; loadavg1: number; loopSplit?: number[] })[] = [];
      for (let r = 0; r < rounds; r++) {
        for (const target of [...targets.slice(r % targets.length), ...targets.slice(0, r % targets.length)]) {
          const port = ports[target];
          const acceptedBefore = port === undefined ? undefined : await loopConnections(port);
          let before = cpuMicros(pids[target]);
          let out = await ctx.pgbench(argv, envs[target]);
          if (/number of transactions actually processed: 0\b/.test(out)) {
            // Logging in 150 clients took longer than the run (a busy machine): once more, twice as long.
            console.log(`  event loops, ${target}: no transaction in ${String(seconds)} s; again`);
            before = cpuMicros(pids[target]);
            out = await ctx.pgbench([...argv.slice(0, -1), String(2 * seconds)], envs[target]);
          }
          const after = cpuMicros(pids[target]);
          const loopSplit =
            port === undefined || acceptedBefore === undefined
              ? undefined
              : splitOf(acceptedBefore, await loopConnections(port));
          const txns = numberIn(out, /number of transactions actually processed: (\d+)/, `transactions (${target})`);
          const result = {
            target,
            ...(loopSplit === undefined ? {} : { loopSplit }),
            // Still nothing (PgBouncer's logins on a machine at load 20): the round counts 0, not in the medians.
            tps:
              txns === 0 ? 0 : numberIn(out, /tps = ([\d.]+) \(without initial connection time\)/, `tps (${target})`),
            latencyMs: txns === 0 ? Number.NaN : numberIn(out, /latency average = ([\d.]+) ms/, 'latency'),
            proxyCpuUsPerTxn:
              before === undefined || after === undefined || txns === 0 ? undefined : (after - before) / txns,
            loadavg1: loadavg()[0] ?? 0,
          };
          runs.push(result);
          console.log(
            `  event loops, round ${String(r + 1)} ${target.padEnd(15)}: ${result.tps.toFixed(0)} tps, CPU ${result.proxyCpuUsPerTxn?.toFixed(1) ?? '-'} µs/txn${loopSplit === undefined ? '' : `, connections per loop ${loopSplit.join(' / ')}`} (load ${result.loadavg1.toFixed(2)})`,
          );
        }
      }
      const of = (target: EventLoopsTarget): ManyClientsResult => {
        const mine = runs.filter((x) => x.target === target && x.tps > 0);
        if (mine.length === 0) return { tps: Number.NaN, latencyMs: Number.NaN, proxyCpuUsPerTxn: undefined };
        const cpu = mine.flatMap((x) => (x.proxyCpuUsPerTxn === undefined ? [] : [x.proxyCpuUsPerTxn]));
        return {
          tps: median(
            mine.map((x) => x.tps),
            Number,
          ),
          latencyMs: median(
            mine.map((x) => x.latencyMs),
            Number,
          ),
          proxyCpuUsPerTxn: cpu.length === 0 ? undefined : median(cpu, Number),
        };
      };
      const byTarget = {
        pgbouncer: of('pgbouncer'),
        'sidecar-1-loop': of('sidecar-1-loop'),
        'sidecar-2-loops': of('sidecar-2-loops'),
        'sidecar-lazy': of('sidecar-lazy'),
      };
      const lazyMetrics = await sidecarMetrics(lazy.metricsPort);
      const result: EventLoopsResult = {
        argv: `pgbench ${argv.join(' ')}`,
        rounds,
        byTarget,
        runs,
        twoLoopsOverOne: byTarget['sidecar-2-loops'].tps / byTarget['sidecar-1-loop'].tps,
        oneLoopOverPgbouncer: byTarget['sidecar-1-loop'].tps / byTarget.pgbouncer.tps,
        twoLoopsOverPgbouncer: byTarget['sidecar-2-loops'].tps / byTarget.pgbouncer.tps,
        oneLoopAfter: (await memorySample(one.process.pid, one.metricsPort)) as MemorySample,
        twoLoopsAfter: (await memorySample(two.process.pid, two.metricsPort)) as MemorySample,
        lazyOverPgbouncer: byTarget['sidecar-lazy'].tps / byTarget.pgbouncer.tps,
        lazyAfter: (await memorySample(lazy.process.pid, lazy.metricsPort)) as MemorySample,
        lazyIdle,
        lazyStartSeconds: lazyMetrics.get('chaperone_event_loop_start_seconds'),
        lazyLoop,
      };
      console.log(
        `  event loops: 2 loops ÷ 1 loop ${result.twoLoopsOverOne.toFixed(3)}; ÷ PgBouncer: 1 loop ${result.oneLoopOverPgbouncer.toFixed(3)}, 2 loops ${result.twoLoopsOverPgbouncer.toFixed(3)}, lazy ${result.lazyOverPgbouncer.toFixed(3)}; RSS 1 loop ${mib(result.oneLoopAfter)}, 2 loops ${mib(result.twoLoopsAfter)}, lazy ${mib(result.lazyIdle)} at rest, ${mib(result.lazyAfter)} after (${String(result.lazyAfter.eventLoops ?? 1)} loops; the second started in ${result.lazyStartSeconds === undefined ? '-' : `${(result.lazyStartSeconds * 1000).toFixed(0)} ms`})`,
      );
      return result;
    } finally {
      await lazy.stop();
      await two.stop();
    }
  } finally {
    await one.stop();
  }
}

async function auditBytes(
  ctx: FootprintContext,
  side: SidecarProcess,
  env: NodeJS.ProcessEnv,
  argv: readonly string[],
): Promise<AuditBytes> {
  const from = await settledSize(side.auditFile);
  const out = await ctx.pgbench(argv, env);
  const statements = numberIn(out, /number of transactions actually processed: (\d+)/, 'transactions');
  const to = await settledSize(side.auditFile);
  const records = countLines(side.auditFile, from);
  return {
    statements,
    records,
    bytes: to - from,
    bytesPerStatement: (to - from) / statements,
    recordsPerStatement: records / statements,
  };
}

/** The issue-20 targets, checked on one run's result. */
export function footprintTargets(
  f: FootprintResult,
): { name: string; target: string; measured: number; met: boolean }[] {
  return [
    {
      name: 'idle sidecar RSS (MiB)',
      target: '≤ 96',
      measured: f.idle.sidecar.rssMiB,
      met: f.idle.sidecar.rssMiB <= 96,
    },
    {
      name: `RSS ${String(f.load.pauseSeconds)} s after a ${String(f.load.seconds)} s load ÷ before it`,
      target: '≤ 1.2',
      measured: f.load.afterOverBefore,
      // The target is memory kept after load (issue 20): returning more than the load took (RSS below its
      // value before, e.g. memory the earlier 150-client shape left) is not a miss, as the label says.
      met: f.load.afterOverBefore <= 1.2,
    },
    {
      name: 'connection storm, sidecar/PgBouncer connections/s',
      target: '≥ 0.9',
      measured: f.storm.sidecarOverPgbouncer,
      met: f.storm.sidecarOverPgbouncer >= 0.9,
    },
    {
      name: '150 clients, sidecar/PgBouncer TPS',
      target: '≥ 0.6',
      measured: f.clients150.sidecarOverPgbouncer,
      met: f.clients150.sidecarOverPgbouncer >= 0.6,
    },
    {
      name: 'audit bytes per statement, pgbench select',
      target: '≤ 600',
      measured: f.audit.simple.bytesPerStatement,
      met: f.audit.simple.bytesPerStatement <= 600,
    },
  ];
}
