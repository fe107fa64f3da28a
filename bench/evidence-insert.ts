// CPU per record of the evidence store's insert paths (issue 18): the idempotent `insert … select from
// unnest(arrays) on conflict do nothing` against COPY, interleaved, on a throwaway PostgreSQL. Counts CPU,
// not wall time, because the bench machines are shared: the writer's own CPU (process.cpuUsage) and the
// whole PostgreSQL cluster's (every process of the postmaster, from /proc: backend, WAL writer,
// checkpointer), each per record, median of the rounds. `node bench/evidence-insert.ts [--rounds N]
// [--batch N]`.
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { canonicalRecordText, evidenceSchemaSql, GENESIS_HASH, hashRecord, type AuditRecord } from '@chaperone/api';
import { startPostgres } from '../e2e/harness/postgres.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { PostgresEvidenceStore } from '../sidecar/src/core/audit/evidence-store.ts';

const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds (user + system) of the postmaster and every process it started. */
function clusterCpuSeconds(postmaster: number): number {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(fields[1]);
    if (Number(entry) !== postmaster && ppid !== postmaster) continue;
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks / CLOCK_TICKS_PER_SECOND;
}

/** Records shaped like a pgbench -S session's (a decision and an outcome per statement, ~650 B canonical). */
function sessionRecords(count: number, firstSeq: number): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = GENESIS_HASH;
  const time = new Date().toISOString().slice(0, 19);
  for (let seq = firstSeq; seq < firstSeq + count; seq++) {
    const id = Math.floor(seq / 2);
    const unhashed =
      seq % 2 === 0
        ? {
            v: 2,
            seq,
            time: `${time}.${String(seq % 1_000_000).padStart(6, '0')}Z`,
            type: 'command.decision' as const,
            command: {
              id,
              kind: 'sql',
              text: `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(1000 + (seq % 99_000))};`,
              relations: [{ name: 'public.pgbench_accounts', access: 'read' }],
            },
            decision: {
              result: 'allow' as const,
              policy: 'agents/read-only',
              rule: 'reads',
              bundleDigest: 'sha256:4f1c0e1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6',
              reasons: ['rule reads allows select on public.pgbench_accounts'],
            },
            prevHash: prev,
          }
        : {
            v: 2,
            seq,
            time: `${time}.${String(seq % 1_000_000).padStart(6, '0')}Z`,
            type: 'command.outcome' as const,
            command: { id, kind: 'sql' },
            outcome: { status: 'success' as const, rows: 1, tag: 'SELECT 1' },
            prevHash: prev,
          };
    const r = { ...unhashed, hash: hashRecord(unhashed as Parameters<typeof hashRecord>[0]) } as AuditRecord;
    prev = r.hash;
    out.push(r);
  }
  return out;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '9' },
      batch: { type: 'string', default: '4096' },
      batches: { type: 'string', default: '8' },
      // A variant of the schema, measured with COPY against the unchanged one: SQL run after the schema.
      'variant-sql': { type: 'string' },
    },
  });
  // Per measurement: `batches` batches of `batch` records each (the clock tick of /proc is 10 ms).
  const batches = Number(values.batches);
  const rounds = Number(values.rounds);
  const batch = Number(values.batch);
  const runDir = createRunDirectory();
  const pg = await startPostgres(runDir);
  try {
    const postmaster = pg.process.pid ?? 0;
    const password = 'bench-writer';
    pg.superuserSql(`create role ev_writer login password '${password}'; create role ev_auditor nologin;`);
    const variant = values['variant-sql'];
    for (const database of variant === undefined ? ['evidence'] : ['evidence', 'evidence_variant']) {
      pg.superuserSql(`create database ${database}`);
      pg.superuserSql(evidenceSchemaSql({ writer: 'ev_writer', auditor: 'ev_auditor' }), database);
    }
    if (variant !== undefined) pg.superuserSql(variant, 'evidence_variant');
    const passwordFile = join(runDir, 'password');
    writeFileSync(passwordFile, password, { mode: 0o600 });
    const open = (database: string) =>
      new PostgresEvidenceStore({
        host: 'localhost',
        port: pg.port,
        database,
        user: 'ev_writer',
        passwordFile,
        caFile: pg.caFile,
        maxConnections: 1,
      });
    const stores = { insert: open('evidence'), copy: open('evidence') } as Record<string, PostgresEvidenceStore>;
    if (variant !== undefined) stores.variant = open('evidence_variant');
    const paths: [string, PostgresEvidenceStore, boolean][] = Object.entries(stores).map(([name, store]) => [
      name,
      store,
      name === 'insert',
    ]);
    const perRecord: Record<string, { client: number[]; server: number[] }> = {};
    for (const [name] of paths) perRecord[name] = { client: [], server: [] };
    let session = 0;
    // The canonical texts are made before (the spool hands them over); the writer's part is the rest.
    const texts = sessionRecords(batch, 2).map((record) => ({ record, text: canonicalRecordText(record) }));
    for (let round = -1; round < rounds; round++) {
      for (const [name, store, mayExist] of paths) {
        const serverBefore = clusterCpuSeconds(postmaster);
        const clientBefore = process.cpuUsage();
        for (let b = 0; b < batches; b++) {
          session += 1;
          const ref = {
            sessionId: `bench-${String(session).padStart(6, '0')}-0000-0000-0000-000000000000`,
            namespace: 'agents',
            podNamespace: 'agents',
            pod: 'agent-7d9f8c6b5-x2k4p',
            resource: 'orders-db',
          };
          await store.append(ref, texts, canonicalRecordText, mayExist);
        }
        const client = process.cpuUsage(clientBefore);
        const server = clusterCpuSeconds(postmaster) - serverBefore;
        if (round < 0) continue; // warm-up
        const measured = perRecord[name] as { client: number[]; server: number[] };
        measured.client.push((client.user + client.system) / (batch * batches));
        measured.server.push((server * 1e6) / (batch * batches));
      }
    }
    for (const store of Object.values(stores)) await store.close();
    const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    console.log(
      `evidence insert, ${String(rounds)} rounds × ${String(batches)} batches × ${String(batch)} records, load ${load}`,
    );
    for (const [name, v] of Object.entries(perRecord)) {
      console.log(
        `  ${name.padEnd(6)} writer ${median(v.client).toFixed(2)} µs/record, PostgreSQL ${median(v.server).toFixed(2)} µs/record (one clock tick: ${(1e6 / CLOCK_TICKS_PER_SECOND / batch / batches).toFixed(2)})`,
      );
    }
  } finally {
    await pg.stop();
    rmSync(runDir, { recursive: true, force: true });
  }
}

await main();
