// Durable audit trail benchmarks: spool throughput (group-committed appends), flush throughput into Session
// objects on a private control plane, and the latency the durable write adds to one statement (write of
// the decision record until it is on disk, which is what the engine waits for before forwarding).
// Run alone: node bench/audit.ts   (the bench runner imports runAuditBench).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import { silentLogger } from '@chaperone/api';
import {
  DurableAuditSink,
  KubernetesSessionStore,
  SessionWriter,
  Spool,
  loadOrCreateSigningKey,
  type RecordOrigin,
} from '@chaperone/sidecar/audit';
import { startControlPlane } from '../e2e/harness/control-plane.ts';
import { applyCrds, kubectl } from '../e2e/harness/kube.ts';

export interface AuditBenchResult {
  /** Records made durable per second by the spool alone (append + group commit). */
  readonly spoolRecordsPerSecond: number;
  /** Records written into Session objects per second (private control plane, 8 sessions). */
  readonly flushRecordsPerSecond: number;
  /**
   * CPU the writing process (this one: serialisation, TLS, signing) used during the flush, against the flush's
   * wall time: the rest is the API server's (validation, CEL rules, etcd) and the wait for the shared cores.
   */
  readonly flushWriterCpuMs: number;
  readonly flushWallMs: number;
  /** Latency the durable write adds to one statement (write until whenDurable resolves), µs. */
  readonly statementLatencyMicros: { readonly p50: number; readonly p99: number; readonly max: number };
  readonly targets: {
    readonly spoolRecordsPerSecond: { readonly target: number; readonly met: boolean };
    readonly flushRecordsPerSecond: { readonly target: number; readonly met: boolean };
    readonly statementLatencyP99Micros: { readonly target: number; readonly met: boolean };
  };
  readonly samples: { readonly spoolRecords: number; readonly flushRecords: number; readonly statements: number };
}

/** A realistic decision/outcome record pair stream for one session (texts and sizes like pgbench -S). */
export function pgbenchSessionRecords(count: number): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = GENESIS_HASH;
  for (let seq = 1; seq <= count; seq++) {
    const id = Math.ceil(seq / 2);
    const unhashed: UnhashedRecord =
      seq % 2 === 1
        ? {
            v: 1,
            seq,
            time: '2026-11-27T10:00:00.000001Z',
            type: 'command.decision',
            command: {
              id,
              kind: 'sql',
              text: `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(seq * 7919)};`,
              statementKinds: ['select'],
              relations: ['public.pgbench_accounts'],
            },
            decision: {
              result: 'allow',
              policy: 'bench/allow-all',
              rule: 'everything',
              bundleDigest: `sha256:${'ab'.repeat(32)}`,
            },
            prevHash: prev,
          }
        : {
            v: 1,
            seq,
            time: '2026-11-27T10:00:00.000002Z',
            type: 'command.outcome',
            command: { id, kind: 'sql' },
            outcome: { status: 'success', rows: 1, durationMicros: 250 },
            prevHash: prev,
          };
    const r = { ...unhashed, hash: hashRecord(unhashed) };
    prev = r.hash;
    out.push(r);
  }
  return out;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

async function spoolThroughput(dir: string, total: number): Promise<number> {
  const { spool } = Spool.open({ dir, maxBytes: 1024 * 1024 * 1024 });
  const payloads = pgbenchSessionRecords(1000).map((r) => JSON.stringify({ s: { sessionId: 'bench' }, r }));
  const started = process.hrtime.bigint();
  // 64 appends per batch in flight, as from many concurrent clients; each batch awaits its group commit.
  let pending: Promise<void> | undefined;
  for (let i = 0; i < total; i++) {
    spool.append(Buffer.from(payloads[i % payloads.length] ?? ''));
    if (i % 64 === 63) {
      await pending;
      pending = spool.whenDurable();
    }
  }
  await spool.whenDurable();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await spool.close();
  return total / seconds;
}

export async function runAuditBench(
  options: { spoolRecords?: number; flushRecords?: number; statements?: number } = {},
): Promise<AuditBenchResult> {
  const spoolRecords = options.spoolRecords ?? 200_000;
  const flushRecords = options.flushRecords ?? 20_480;
  const statements = options.statements ?? 3000;
  const root = mkdtempSync(join(tmpdir(), 'chaperone-audit-bench-'));
  const cpDir = join(root, 'cp');
  mkdirSync(cpDir, { recursive: true });
  const cp = await startControlPlane(cpDir);
  try {
    const spoolRate = await spoolThroughput(join(root, 'spool'), spoolRecords);

    await applyCrds(cp.kubeconfig);
    const namespace = 'audit-bench';
    await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });
    const key = await loadOrCreateSigningKey(join(root, 'signing-key.jwk'));
    const store = new KubernetesSessionStore({ kubeconfig: cp.kubeconfig, namespace });

    // Statement latency: one client's statements in sequence through the durable sink (the writer runs
    // alongside, as in the sidecar), each timed from its decision record's write until it is durable.
    // Measured before the flush runs and after a sync, so neither the spool run's 100+ MB of dirty pages
    // nor the API server's work on the flush run's objects lands in this phase.
    spawnSync('sync');
    const sinkDir = join(root, 'sink');
    mkdirSync(sinkDir, { recursive: true });
    const sink = await DurableAuditSink.open({
      spoolDir: sinkDir,
      spoolMaxBytes: 256 * 1024 * 1024,
      flushIntervalMs: 1000,
      store,
      signingKey: key,
      pod: { name: 'bench-pod', namespace },
      logger: silentLogger,
    });
    const ref: RecordOrigin = {
      sessionId: `latency-${String(Date.now())}`,
      resource: 'bench-db',
      resourceType: 'postgres',
      namespace,
      pod: 'p',
    };
    const latency: number[] = [];
    const rs = pgbenchSessionRecords(statements * 2);
    for (let i = 0; i < rs.length; i += 2) {
      const started = process.hrtime.bigint();
      sink.write(ref, rs[i] as AuditRecord);
      await sink.whenDurable();
      latency.push(Number(process.hrtime.bigint() - started) / 1000);
      sink.write(ref, rs[i + 1] as AuditRecord); // the outcome: not waited for, as in the engine
    }
    await sink.close();
    latency.sort((a, b) => a - b);

    // Flush throughput: 8 sessions' records queued at once, timed until all are in Session objects.
    const flushRun = async (tag: string): Promise<{ rate: number; records: number }> => {
      const writer = new SessionWriter({
        store,
        signingKey: key,
        pod: { name: 'bench-pod', namespace },
        logger: silentLogger,
        flushIntervalMs: 100,
      });
      const sessions = 8;
      const stream = pgbenchSessionRecords(Math.ceil(flushRecords / sessions));
      let n = 0;
      const refs: RecordOrigin[] = Array.from({ length: sessions }, (_, i) => ({
        sessionId: `${tag}${String(i).padStart(7, '0')}-0000-4000-8000-${String(Date.now()).padStart(12, '0')}`,
        resource: 'bench-db',
        resourceType: 'postgres',
        namespace,
        pod: 'bench-pod',
      }));
      for (const r of stream) for (const ref of refs) writer.enqueue(++n, ref, r);
      const flushStarted = process.hrtime.bigint();
      writer.start();
      await writer.flush();
      const rate = n / (Number(process.hrtime.bigint() - flushStarted) / 1e9);
      await writer.stop();
      return { rate, records: n };
    };
    const flushCpu = process.cpuUsage();
    const flushWall = performance.now();
    const flush = await flushRun('a');
    const flushWallMs = performance.now() - flushWall;
    const flushCpuUsed = process.cpuUsage(flushCpu);
    const flushRate = flush.rate;
    const id = flush.records;

    const p99 = percentile(latency, 99);
    return {
      spoolRecordsPerSecond: Math.round(spoolRate),
      flushRecordsPerSecond: Math.round(flushRate),
      flushWriterCpuMs: Math.round((flushCpuUsed.user + flushCpuUsed.system) / 1000),
      flushWallMs: Math.round(flushWallMs),
      statementLatencyMicros: {
        p50: Math.round(percentile(latency, 50)),
        p99: Math.round(p99),
        max: Math.round(latency.at(-1) ?? 0),
      },
      targets: {
        spoolRecordsPerSecond: { target: 20_000, met: spoolRate >= 20_000 },
        flushRecordsPerSecond: { target: 2_000, met: flushRate >= 2_000 },
        statementLatencyP99Micros: { target: 2000, met: p99 <= 2000 },
      },
      samples: { spoolRecords, flushRecords: id, statements },
    };
  } finally {
    await cp.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const result = await runAuditBench();
  console.log(JSON.stringify(result, null, 2));
}
