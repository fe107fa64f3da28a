// The audit worker's share of the evidence path per statement, in process, at a fixed offered rate: what the
// worker thread does with the spool's entries in Kubernetes mode (LiveSpoolEntries reading each entry, the
// Session writer queueing it, flushing each session once per interval, COPY rows built for every batch, a
// signed head and status per session at most every headIntervalMs), without sockets: the evidence store
// builds the batch's COPY text (evidenceCopyRows, as PostgresEvidenceStore does) and the Session store
// answers at once. Entries are pgbench's select as the main thread spools them: per statement the decision
// (`{"s":…,"r":…}`) and the outcome entry merging into it (`{"i":…,"m":…}`; `--entries merged`: one entry of
// the merged record instead, as before the twelfth session), 8 sessions, handed over every 20 ms as the main
// thread posts them. CPU per statement of this thread (process.threadCpuUsage: the worker's, with its GC) and
// of the process (with V8's helper threads), per round; A/B against another tree (`--tree DIR`, an unchanged
// checkout of main with the same node_modules), alternating.
// Run: node bench/evidence-writer.ts [--rate 4400] [--seconds 20] [--rounds 3] [--entries pair|merged] [--tree DIR]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { evidenceCopyRows, evidenceRow, jcs, type AuditRecord, type Session } from '@chaperone/api';
import type * as SessionWriterModule from '../sidecar/src/core/audit/session-writer.ts';
import type * as SpoolEntriesModule from '../sidecar/src/core/audit/spool-entries.ts';
import type { EvidenceStore } from '../sidecar/src/core/audit/evidence-store.ts';
import type { SessionStore } from '../sidecar/src/core/audit/session-store.ts';
import type { RecordOrigin } from '../sidecar/src/core/audit/audit-sink.ts';
import { outcomeEntryText } from '../sidecar/src/core/audit/spool-entries.ts';
import { silentLogger } from '../sidecar/src/core/observability/logger.ts';
import { loadOrCreateSigningKey } from '../sidecar/src/core/audit/signing-key.ts';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '4400' },
    seconds: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '3' },
    tree: { type: 'string' },
    entries: { type: 'string', default: 'pair' },
  },
});
const RATE = Number(values.rate);
const SECONDS = Number(values.seconds);
const SESSIONS = 8;
const POST_MS = 20;
const PAIRS = values.entries !== 'merged';

interface Tree {
  readonly name: string;
  readonly SessionWriter: typeof SessionWriterModule.SessionWriter;
  readonly LiveSpoolEntries: typeof SpoolEntriesModule.LiveSpoolEntries;
}

async function loadTree(dir: string, name: string): Promise<Tree> {
  const audit = join(dir, 'sidecar', 'src', 'core', 'audit');
  const w = (await import(join(audit, 'session-writer.ts'))) as typeof SessionWriterModule;
  const e = (await import(join(audit, 'spool-entries.ts'))) as typeof SpoolEntriesModule;
  return { name, SessionWriter: w.SessionWriter, LiveSpoolEntries: e.LiveSpoolEntries };
}

const keyDir = mkdtempSync(join(tmpdir(), 'chaperone-evidence-writer-'));
const signingKey = await loadOrCreateSigningKey(join(keyDir, 'key.jwk'));
rmSync(keyDir, { recursive: true, force: true });

/** The store's side: the COPY text is built (the writer's share); nothing is sent. */
class CopyTextStore implements EvidenceStore {
  readonly location = { type: 'postgres' as const, location: 'bench:5432/evidence' };
  bytes = 0;
  append(
    session: Parameters<EvidenceStore['append']>[0],
    entries: Parameters<EvidenceStore['append']>[1],
    canonical: (r: AuditRecord) => string,
  ): Promise<void> {
    const text = evidenceCopyRows(
      session,
      entries.map((e) => ({
        row: evidenceRow(session.sessionId, e.record),
        text: e.text === undefined ? canonical(e.record) : e.text,
      })),
    );
    this.bytes += Buffer.from(text, 'utf8').length;
    return new Promise((r) => setImmediate(r));
  }
  counters(): Promise<never> {
    return Promise.reject(new Error('not in this bench'));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Session writes answered at once (their count is reported). */
class CountingSessionStore implements SessionStore {
  readonly namespace = 'bench';
  writes: Record<string, number> = {};
  private rv = 1;
  private count(op: string): string {
    this.writes[op] = (this.writes[op] ?? 0) + 1;
    this.rv += 1;
    return String(this.rv);
  }
  listParts(): Promise<Session[]> {
    return Promise.resolve([]);
  }
  create(session: Session): Promise<Session> {
    return Promise.resolve({ ...session, metadata: { ...session.metadata, resourceVersion: this.count('create') } });
  }
  append(name: string): Promise<Session> {
    return Promise.resolve({ metadata: { name, resourceVersion: this.count('head') } } as Session);
  }
  patchStatus(): Promise<string | undefined> {
    return Promise.resolve(this.count('status'));
  }
  event(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * pgbench's select as the main thread spools it: the decision's entry and then (PAIRS) the outcome entry
 * merging into it, or one entry of the merged record; made from a template (seq and hashes filled in,
 * cheaply: the writer does not check hashes), so that entries need not be made, and kept alive, in advance.
 */
function entryTemplate(sessionId: string, originJson: string): (seq: number) => string[] {
  const hex = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
  const outcome = { status: 'success' as const, rows: 1, durationMs: 0.41 };
  const record = {
    v: 3,
    seq: 999_999_999,
    time: new Date().toISOString().replace('Z', '000Z'),
    type: 'command.decision',
    command: {
      type: 'sql',
      text: 'SELECT abalance FROM pgbench_accounts WHERE aid = 424242;',
      fingerprint: 'f0e1d2c3b4a59687',
      statements: [{ kind: 'select', relations: ['public.pgbench_accounts'] }],
    },
    decision: {
      result: 'allow',
      policy: 'bench/allow-all',
      rule: 'everything',
      bundleDigest: `sha256:${'ab'.repeat(32)}`,
      reasons: ['rule everything decided allow for statement 1 (select)'],
    },
    ...(PAIRS ? {} : { outcome }),
    prevHash: hex(0xeeeeeeee),
    hash: hex(0xffffffff),
  };
  // JCS order: command (aid), hash, prevHash, seq.
  const parts = (jcs(record) ?? '{}').split(/424242|sha256:0{56}ffffffff|sha256:0{56}eeeeeeee|999999999/);
  if (parts.length !== 5) throw new Error('evidence-writer: unexpected template');
  const [p0, p1, p2, p3, p4] = parts as [string, string, string, string, string];
  // The decision's hash and the merged record's differ (the worker takes the merged one from the entry).
  const entry = (seq: number) =>
    `{"s":${originJson},"r":${p0}${String(1 + ((seq * 7919) % 100000))}${p1}${hex(seq * 2)}${p2}${hex(seq * 2 - 1)}${p3}${String(seq)}${p4}}`;
  if (!PAIRS) return (seq) => [entry(seq)];
  return (seq) => [entry(seq), outcomeEntryText(sessionId, { seq, hash: hex(seq * 2 + 1), outcome })];
}

async function round(tree: Tree): Promise<{ thread: number; process: number; statements: number; writes: string }> {
  const sessionStore = new CountingSessionStore();
  const evidence = new CopyTextStore();
  const writer = new tree.SessionWriter({
    store: sessionStore,
    evidence,
    signingKey,
    pod: { name: 'bench-sidecar-7f9c', namespace: 'bench' },
    logger: silentLogger,
    flushIntervalMs: 1000,
  });
  // Records in a store: only their fields are read (the fourth argument; trees before it take three).
  const live = new tree.LiveSpoolEntries(writer, silentLogger, true, true);
  const origins = Array.from({ length: SESSIONS }, (_, i) => {
    const origin: RecordOrigin = {
      sessionId: `0f0e0d0c-0b0a-0908-0706-05040302010${String(i)}`,
      resource: 'bench-postgres',
      resourceType: 'postgres',
      namespace: 'bench',
      pod: 'bench-sidecar-7f9c',
    };
    return { entries: entryTemplate(origin.sessionId, jcs(origin) ?? '{}'), seq: 0 };
  });
  const total = RATE * SECONDS;
  writer.start();
  const perPost = Math.round((RATE * POST_MS) / 1000);
  let next = 0;
  let id = 0;
  const t0 = process.threadCpuUsage();
  const p0 = process.cpuUsage();
  await new Promise<void>((done) => {
    const timer = setInterval(() => {
      const end = Math.min(total, next + perPost);
      for (; next < end; next++) {
        const o = origins[next % SESSIONS] as (typeof origins)[number];
        o.seq += 1;
        for (const e of o.entries(o.seq)) live.entry(++id, e);
      }
      if (next >= total) {
        clearInterval(timer);
        done();
      }
    }, POST_MS);
  });
  await writer.flush();
  const t = process.threadCpuUsage(t0);
  const p = process.cpuUsage(p0);
  await writer.stop();
  return {
    thread: (t.user + t.system) / total,
    process: (p.user + p.system) / total,
    statements: total,
    writes: JSON.stringify(sessionStore.writes),
  };
}

const trees = [await loadTree(resolve(join(import.meta.dirname, '..')), 'this tree')];
if (values.tree !== undefined) trees.push(await loadTree(resolve(values.tree), `tree ${values.tree}`));
console.log(
  `evidence writer: ${String(SESSIONS)} sessions, ${String(RATE)} statements/s for ${String(SECONDS)} s per round, CPU µs per statement`,
);
for (let r = 1; r <= Number(values.rounds); r++) {
  for (const tree of r % 2 === 1 ? trees : [...trees].reverse()) {
    const m = await round(tree);
    console.log(
      `  round ${String(r)} ${tree.name}: worker thread ${m.thread.toFixed(2)}, process ${m.process.toFixed(2)}; Session writes ${m.writes}`,
    );
  }
}
