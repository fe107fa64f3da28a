// Result masking cost: one query returning 1,000,000 rows × 10 columns, read by a raw client that only
// frames the bytes (so the client's own parsing does not hide the proxy), through the sidecar for an agent
// whose policy masks 2 of the columns (redact and partial; and, reported apart, keyed hash), through the same
// sidecar for an agent without masking, and straight from PostgreSQL; the three interleaved per round,
// median of the rounds. Plus the content detectors' throughput in MB/s on mixed text (in-process).
//
//   node bench/masking.ts            standalone: starts its own PostgreSQL (about 2 minutes)
//   run.ts calls runMaskingBench(pg, dir) with the PostgreSQL of `make bench`.
//   BENCH_MASKING_BASELINE=DIR       also runs DIR's sidecar (another checkout) beside this one, the same
//                                    queries interleaved, and prints its CPU per row too (an A/B on a busy machine).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AccessPolicySpec } from '@chaperone/api';
import { ALL_DETECTORS, replaceDetected } from '../sidecar/src/core/masking/detectors.ts';
import { connectUpstream } from '../sidecar/src/engines/postgres/protocol/upstream-connection.ts';
import { startPostgres, type PostgresCluster } from '../e2e/harness/postgres.ts';
import { createRunDirectory, recordServer } from '../e2e/harness/processes.ts';
import { spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { authenticatedClient, query } from '../e2e/postgres/raw-client.ts';
import type { Duplex } from 'node:stream';

const ROWS = Number(process.env.BENCH_MASKING_ROWS ?? 1_000_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const QUERY = 'select * from masking_bench';
const MASKED = 'system:serviceaccount:bench:masked';
const HASHED = 'system:serviceaccount:bench:hashed';
const CLEAR = 'system:serviceaccount:bench:clear';

const SETUP_SQL = (rows: number): string => `
drop table if exists masking_bench;
create table masking_bench as
  select i as id, 'user' || i || '@example.com' as email, lpad(i::text, 9, '0') as ssn,
         md5(i::text) as c4, md5((i + 1)::text) as c5, i * 7 as c6, 'name ' || i as c7,
         now()::date as c8, md5((i + 2)::text) as c9, i % 100 as c10
  from generate_series(1, ${rows}) i;
analyze masking_bench;`;

function policy(subject: string, masking: AccessPolicySpec['masking']): AccessPolicySpec {
  return {
    resources: { names: ['test-db'] },
    subjects: [{ subject }],
    rules: [{ name: 'everything', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
    ...(masking === undefined ? {} : { masking }),
  };
}

const POLICIES: Record<string, AccessPolicySpec> = {
  masked: policy(MASKED, [
    { name: 'email', columns: ['public.masking_bench.email'], strategy: 'redact' },
    { name: 'ssn', columns: ['public.masking_bench.ssn'], strategy: 'partial', keepLast: 4 },
  ]),
  hashed: policy(HASHED, [
    { name: 'email', columns: ['public.masking_bench.email'], strategy: 'hash' },
    { name: 'ssn', columns: ['public.masking_bench.ssn'], strategy: 'hash' },
  ]),
  clear: policy(CLEAR, undefined),
};

/** CPU time (user + system) of a process so far, µs, from proc_pid_stat(5) (fields 14 and 15; CLK_TCK 100). */
function cpuMicros(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

/** Sends one simple query and reads until ReadyForQuery, framing only; returns ms and bytes received. */
function timeQuery(socket: Duplex, sql: string): Promise<{ ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let bytes = 0;
    let pending = Buffer.alloc(0);
    let skip = 0; // bytes of the current frame still to pass over
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length;
      const buf = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
      let at = 0;
      if (skip > 0) {
        const take = Math.min(skip, buf.length);
        skip -= take;
        at = take;
      }
      while (skip === 0 && buf.length - at >= 5) {
        const type = buf[at];
        const len = buf.readInt32BE(at + 1);
        if (type === 0x45) {
          socket.off('data', onData);
          reject(new Error(`the query failed: ${buf.subarray(at, at + 1 + len).toString('latin1')}`));
          return;
        }
        if (type === 0x5a && buf.length - at >= 1 + len) {
          socket.off('data', onData);
          resolve({ ms: performance.now() - started, bytes });
          return;
        }
        const end = at + 1 + len;
        if (end > buf.length) {
          skip = end - buf.length;
          at = buf.length;
          break;
        }
        at = end;
      }
      pending = skip === 0 && at < buf.length ? Buffer.from(buf.subarray(at)) : Buffer.alloc(0);
    };
    socket.on('data', onData);
    socket.write(query(sql));
  });
}

export interface MaskingBenchResult {
  readonly rows: number;
  readonly columns: number;
  readonly maskedColumns: number;
  readonly medianMs: {
    readonly direct: number;
    readonly clear: number;
    readonly masked: number;
    readonly hashed: number;
  };
  /** The sidecar's CPU per row (median round): stable where wall time is not, on a shared machine. */
  readonly sidecarCpuNsPerRow: { readonly clear: number; readonly masked: number; readonly hashed: number };
  /** BENCH_MASKING_BASELINE: the other checkout's sidecar CPU per row, measured in the same rounds. */
  readonly baseline?: {
    readonly dir: string;
    readonly sidecarCpuNsPerRow: { readonly clear: number; readonly masked: number; readonly hashed: number };
  };
  readonly megabytes: number;
  /** masked ÷ unmasked through the sidecar, as throughput (target ≥ 0.6, goal 0.8). */
  readonly maskedOverClear: number;
  readonly hashedOverClear: number;
  readonly maskedOverDirect: number;
  readonly clearOverDirect: number;
  readonly detectorMegabytesPerSecond: number;
  readonly met: boolean;
}

const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

/** Content detectors (all of them) over mixed text with a few findings per KiB: MB/s of CPU time. */
export function detectorThroughput(): number {
  const line =
    'order 12345 shipped to ada@example.com from 10.1.2.3, card 4111 1111 1111 1111, note: nothing else here; ' +
    'customer asked about delivery times and the invoice number INV-2024-000123 for the last purchase.\n';
  const text = line.repeat(Math.ceil((8 * 1024 * 1024) / line.length));
  const values = text.match(/[^\n]+/g) ?? [];
  // CPU time of this process, not wall time: on a shared machine the wall clock measures the neighbours.
  const started = process.cpuUsage();
  let found = 0;
  for (const v of values) found += replaceDetected(v, ALL_DETECTORS, () => '[MASKED]').count;
  const used = process.cpuUsage(started);
  const seconds = (used.user + used.system) / 1e6;
  if (found === 0) throw new Error('the detectors found nothing in the bench text');
  return Buffer.byteLength(text) / (1024 * 1024) / seconds;
}

export async function runMaskingBench(
  pg: PostgresCluster,
  dir: string,
  runDir = dir,
  baselineDir = process.env.BENCH_MASKING_BASELINE,
): Promise<MaskingBenchResult> {
  pg.superuserSql(`set role ${pg.user}; ${SETUP_SQL(ROWS)}`, pg.database);
  const spawn = (sidecarDir: string, bin?: string): Promise<SidecarProcess> =>
    spawnSidecar({
      dir: sidecarDir,
      ...(bin === undefined ? {} : { bin }),
      upstream: {
        host: 'localhost',
        port: pg.port,
        database: pg.database,
        user: pg.user,
        password: pg.password,
        caFile: pg.caFile,
      },
      policies: POLICIES,
      logLevel: 'info',
      ...(process.env.BENCH_MASKING_PROFILE === undefined
        ? {}
        : { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_MASKING_PROFILE}`] }),
      onSpawn: (pid) => recordServer(runDir, `sidecar-masking-${pid}`, pid),
    });
  const sidecar = await spawn(dir);
  const baseline =
    baselineDir === undefined
      ? undefined
      : await spawn(`${dir}-baseline`, join(baselineDir, 'sidecar', 'src', 'bin', 'chaperone-sidecar.ts'));
  try {
    const through = async (subject: string, via = sidecar): Promise<Duplex> => {
      const token = await via.issuer.sign({ sub: subject }, { expiresIn: 3600 });
      return (await authenticatedClient(via.host, via.port, token, 30_000)).socket;
    };
    const direct = await connectUpstream({
      host: '127.0.0.1',
      port: pg.port,
      user: pg.user,
      password: pg.password,
      database: pg.database,
      tls: { mode: 'verify-full', ca: readFileSync(pg.caFile, 'utf8'), servername: 'localhost' },
    });
    direct.socket.resume();
    type Target = 'direct' | 'clear' | 'masked' | 'hashed' | 'baseClear' | 'baseMasked' | 'baseHashed';
    const targets: [Target, Duplex, number | undefined][] = [
      ['direct', direct.socket, undefined],
      ['clear', await through(CLEAR), sidecar.process.pid],
      ['masked', await through(MASKED), sidecar.process.pid],
      ['hashed', await through(HASHED), sidecar.process.pid],
    ];
    if (baseline !== undefined) {
      targets.push(
        ['baseClear', await through(CLEAR, baseline), baseline.process.pid],
        ['baseMasked', await through(MASKED, baseline), baseline.process.pid],
        ['baseHashed', await through(HASHED, baseline), baseline.process.pid],
      );
    }
    const times: Record<Target, number[]> = {
      direct: [],
      clear: [],
      masked: [],
      hashed: [],
      baseClear: [],
      baseMasked: [],
      baseHashed: [],
    };
    const cpu: Record<Target, number[]> = structuredClone(times);
    let megabytes = 0;
    for (const [, socket] of targets) await timeQuery(socket, `${QUERY} limit 1000`); // warm-up
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, socket, pid] of targets) {
        const cpuBefore = cpuMicros(pid);
        const r = await timeQuery(socket, QUERY);
        times[name].push(r.ms);
        cpu[name].push(((cpuMicros(pid) - cpuBefore) * 1000) / ROWS);
        if (name === 'clear') megabytes = r.bytes / (1024 * 1024);
      }
    }
    for (const [, socket] of targets) socket.destroy();
    const m = {
      direct: median(times.direct),
      clear: median(times.clear),
      masked: median(times.masked),
      hashed: median(times.hashed),
    };
    const maskedOverClear = m.clear / m.masked;
    return {
      rows: ROWS,
      columns: 10,
      maskedColumns: 2,
      medianMs: m,
      sidecarCpuNsPerRow: { clear: median(cpu.clear), masked: median(cpu.masked), hashed: median(cpu.hashed) },
      ...(baselineDir === undefined
        ? {}
        : {
            baseline: {
              dir: baselineDir,
              sidecarCpuNsPerRow: {
                clear: median(cpu.baseClear),
                masked: median(cpu.baseMasked),
                hashed: median(cpu.baseHashed),
              },
            },
          }),
      megabytes,
      maskedOverClear,
      hashedOverClear: m.clear / m.hashed,
      maskedOverDirect: m.direct / m.masked,
      clearOverDirect: m.direct / m.clear,
      detectorMegabytesPerSecond: detectorThroughput(),
      met: maskedOverClear >= 0.6,
    };
  } finally {
    await sidecar.stop();
    await baseline?.stop();
  }
}

export function formatMaskingBench(r: MaskingBenchResult): string {
  const f = (n: number, d = 0): string => n.toFixed(d);
  return [
    `  ${f(r.rows)} rows × ${f(r.columns)} columns (${f(r.megabytes, 1)} MiB), median of ${f(ROUNDS)} rounds:`,
    `    direct ${f(r.medianMs.direct)} ms; sidecar unmasked ${f(r.medianMs.clear)} ms; sidecar 2 masked (redact, partial) ${f(r.medianMs.masked)} ms; 2 masked (keyed hash) ${f(r.medianMs.hashed)} ms`,
    `    masked ÷ unmasked through the sidecar ${f(r.maskedOverClear, 2)}× (target ≥ 0.6×, goal 0.8×: ${r.met ? 'met' : 'not met'}); hashed ${f(r.hashedOverClear, 2)}×; masked ÷ direct ${f(r.maskedOverDirect, 2)}×; unmasked ÷ direct ${f(r.clearOverDirect, 2)}×`,
    `    sidecar CPU per row: unmasked ${f(r.sidecarCpuNsPerRow.clear)} ns, 2 masked ${f(r.sidecarCpuNsPerRow.masked)} ns, 2 hashed ${f(r.sidecarCpuNsPerRow.hashed)} ns (CPU ratio unmasked ÷ masked ${f(r.sidecarCpuNsPerRow.clear / r.sidecarCpuNsPerRow.masked, 2)}×)`,
    `    content detectors (all ${String(ALL_DETECTORS.length)}) ${f(r.detectorMegabytesPerSecond, 1)} MB/s on mixed text`,
    ...(r.baseline === undefined
      ? []
      : [
          `    baseline ${r.baseline.dir}, sidecar CPU per row: unmasked ${f(r.baseline.sidecarCpuNsPerRow.clear)} ns, 2 masked ${f(r.baseline.sidecarCpuNsPerRow.masked)} ns, 2 hashed ${f(r.baseline.sidecarCpuNsPerRow.hashed)} ns`,
        ]),
  ].join('\n');
}

if (import.meta.filename === process.argv[1]) {
  const runDir = createRunDirectory();
  const pg = await startPostgres(runDir);
  try {
    const result = await runMaskingBench(pg, join(runDir, 'sidecar-masking'), runDir);
    console.log('bench: result masking');
    console.log(formatMaskingBench(result));
    console.log(JSON.stringify(result));
  } finally {
    await pg.stop();
  }
}
