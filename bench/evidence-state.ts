// What accumulates across the evidence bench's runs (bench/evidence-store.ts, issue 18): the store's table
// and the cluster's checkpoints and autovacuum, the sidecars' heaps, the spool's files, etcd's size and the
// Session objects. Read between runs (outside the measured windows), so a round slower than the one before
// can be set against what grew in between.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PostgresCluster } from '../e2e/harness/postgres.ts';

export interface StoreState {
  /** Rows inserted into the store's tables so far, their size on disk (tables, indexes, TOAST), MiB. */
  readonly storeRows: number;
  readonly storeMiB: number;
  /** Autovacuum and autoanalyze runs on the store's tables so far. */
  readonly storeAutovacuums: number;
  readonly storeAutoanalyzes: number;
  /** The whole cluster (the store shares it with pgbench's database): checkpoints, buffers they wrote, WAL MiB. */
  readonly checkpoints: number;
  readonly checkpointBuffers: number;
  readonly walMiB: number;
  /** The store sidecar's main-thread heap in use and its RSS (all threads), MiB. */
  readonly sidecarHeapMiB: number;
  readonly sidecarRssMiB: number;
  /** Lines of the store sidecar's /metrics (a label set per session would grow it). */
  readonly sidecarMetricLines: number;
  /** The store sidecar's spool directory: files and MiB. */
  readonly spoolFiles: number;
  readonly spoolMiB: number;
  /** The JSON-lines sidecar's heap, RSS and audit file, MiB. */
  readonly yardstickHeapMiB: number;
  readonly yardstickRssMiB: number;
  readonly yardstickFileMiB: number;
  /** etcd's database file, MiB, and the Session objects in the bench's namespace. */
  readonly etcdMiB: number;
  readonly sessions: number;
}

const MiB = 1024 * 1024;

/** Seconds the hypervisor ran something else while a CPU of this machine waited (steal, /proc/stat), summed over CPUs. */
export function machineStealSeconds(): number {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  return (f[7] ?? 0) / 100;
}

function filesUnder(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return { files, bytes };
  }
  for (const name of names) {
    const path = join(dir, name);
    try {
      const st = statSync(path);
      if (st.isDirectory()) {
        const sub = filesUnder(path);
        files += sub.files;
        bytes += sub.bytes;
      } else {
        files += 1;
        bytes += st.size;
      }
    } catch {
      // Deleted while listed (a spool segment dropped after its records were stored).
    }
  }
  return { files, bytes };
}

/** Size of the first file named `name` under `dir` (etcd's `member/snap/db`), bytes; 0 when there is none. */
function fileNamed(dir: string, name: string): number {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  for (const n of names) {
    const path = join(dir, n);
    try {
      const st = statSync(path);
      if (st.isDirectory()) {
        const found = fileNamed(path, name);
        if (found > 0) return found;
      } else if (n === name) return st.size;
    } catch {
      // Gone while listed.
    }
  }
  return 0;
}

/** VmRSS of `pid` (all its threads), MiB; 0 when it is gone. */
export function rssMiB(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${String(pid)}/status`, 'utf8'))?.[1];
    return Number(kb ?? 0) / 1024;
  } catch {
    return 0;
  }
}

export interface StoreStateSources {
  readonly pg: PostgresCluster;
  readonly database: string;
  readonly sidecar: {
    readonly pid: number | undefined;
    readonly metrics: () => Promise<string>;
    readonly spoolDir: string;
  };
  readonly yardstick?: {
    readonly pid: number | undefined;
    readonly metrics: () => Promise<string>;
    readonly auditFile: string;
  };
  readonly controlPlaneDir: string;
  readonly sessions: () => Promise<number>;
}

function metricValue(text: string, name: string): number {
  return Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? 0);
}

export async function storeState(src: StoreStateSources): Promise<StoreState> {
  const [rows, bytes, vacuums, analyzes] = src.pg
    .superuserSql(
      `select coalesce(sum(n_tup_ins), 0), coalesce(sum(pg_total_relation_size(relid)), 0),
              coalesce(sum(autovacuum_count), 0), coalesce(sum(autoanalyze_count), 0)
         from pg_stat_user_tables where schemaname = 'chaperone'`,
      src.database,
    )
    .trim()
    .split('|')
    .map(Number);
  const [checkpoints, checkpointBuffers, walBytes] = src.pg
    .superuserSql(
      `select checkpoints_timed + checkpoints_req, buffers_checkpoint, (select wal_bytes from pg_stat_wal)
         from pg_stat_bgwriter`,
    )
    .trim()
    .split('|')
    .map(Number);
  const sidecarMetrics = await src.sidecar.metrics();
  const spool = filesUnder(src.sidecar.spoolDir);
  const yardstickMetrics = src.yardstick === undefined ? '' : await src.yardstick.metrics();
  let yardstickFile = 0;
  try {
    if (src.yardstick !== undefined) yardstickFile = statSync(src.yardstick.auditFile).size;
  } catch {
    // No record written yet.
  }
  return {
    storeRows: rows ?? 0,
    storeMiB: (bytes ?? 0) / MiB,
    storeAutovacuums: vacuums ?? 0,
    storeAutoanalyzes: analyzes ?? 0,
    checkpoints: checkpoints ?? 0,
    checkpointBuffers: checkpointBuffers ?? 0,
    walMiB: (walBytes ?? 0) / MiB,
    sidecarHeapMiB: metricValue(sidecarMetrics, 'chaperone_sidecar_nodejs_heap_size_used_bytes') / MiB,
    sidecarRssMiB: rssMiB(src.sidecar.pid),
    sidecarMetricLines: sidecarMetrics.split('\n').length,
    spoolFiles: spool.files,
    spoolMiB: spool.bytes / MiB,
    yardstickHeapMiB: metricValue(yardstickMetrics, 'chaperone_sidecar_nodejs_heap_size_used_bytes') / MiB,
    yardstickRssMiB: rssMiB(src.yardstick?.pid),
    yardstickFileMiB: yardstickFile / MiB,
    etcdMiB: fileNamed(src.controlPlaneDir, 'db') / MiB,
    sessions: await src.sessions(),
  };
}

/** One line of a StoreState for the bench's log. */
export function formatStoreState(s: StoreState): string {
  const f = (n: number, d = 1) => n.toFixed(d);
  return (
    `store ${String(s.storeRows)} rows, ${f(s.storeMiB)} MiB, ${String(s.storeAutovacuums)} autovacuums, ${String(s.storeAutoanalyzes)} autoanalyzes; ` +
    `cluster ${String(s.checkpoints)} checkpoints (${String(s.checkpointBuffers)} buffers), WAL ${f(s.walMiB)} MiB; ` +
    `store sidecar heap ${f(s.sidecarHeapMiB)} MiB, RSS ${f(s.sidecarRssMiB)} MiB, ${String(s.sidecarMetricLines)} metric lines, spool ${String(s.spoolFiles)} files ${f(s.spoolMiB)} MiB; ` +
    `JSON-lines sidecar heap ${f(s.yardstickHeapMiB)} MiB, RSS ${f(s.yardstickRssMiB)} MiB, file ${f(s.yardstickFileMiB)} MiB; ` +
    `etcd ${f(s.etcdMiB)} MiB, ${String(s.sessions)} Session objects`
  );
}
