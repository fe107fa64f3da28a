// What moving the durable path's sealing and spool write into a worker thread would cost and save, in process
// (issue 18; docs/audit-durability.md "Sealing stays on the main thread"). Per statement pgbench's decision
// and the outcome merged into it, in event-loop turns of `--per-turn` statements (a turn's decisions wait for
// their durability before the next turn, as the engine waits before forwarding), two ways, alternating:
//   main:   as the sidecar does: the main thread seals the decision (sealLinked), merges the outcome
//           (sealWithOutcome), appends both entries to the spool (`Written`: one writeSync per turn) and the
//           spool's frames go to a worker every 20 ms, which decodes them (as audit-worker.ts does);
//   worker: the cut: the main thread hands each turn's members and outcomes to a worker thread in one message
//           and waits for its answer; the worker seals, merges, appends to its spool, writes it and answers
//           once the turn's entries are written;
//   members: the alternative: the main thread spools each record's members unsealed (JSON.stringify) and a
//           small outcome entry (seq and outcome, no hash), the frames go to the worker every 20 ms as today,
//           and the worker parses and seals them (what a replay would have to do too).
// Reported per statement: the CPU of the whole process (process.cpuUsage: both threads and libuv's) and of the
// main thread (process.threadCpuUsage), median of the rounds.
// Run: node bench/seal-handoff.ts [--per-turn 2] [--statements 40000] [--rounds 5]
// (The process's CPU includes what the worker still does after the round with the frames posted last: each
// round ends by waiting for the worker to answer a message posted behind them.)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import {
  AUDIT_RECORD_VERSION,
  formatAuditTime,
  GENESIS_HASH,
  nowMicros,
  sealLinked,
  sealWithOutcome,
  type AuditRecord,
  type SealedRecord,
  type UnhashedRecord,
} from '@chaperone/api';
import type { RecordOrigin } from '../sidecar/src/core/audit/audit-sink.ts';
import { outcomeEntryText, recordEntryText } from '../sidecar/src/core/audit/spool-entries.ts';
import { decodeFrames, Spool } from '../sidecar/src/core/audit/spool.ts';

type Members = Omit<UnhashedRecord, 'prevHash'>;
type Outcome = NonNullable<AuditRecord['outcome']>;

const ORIGIN: RecordOrigin = {
  sessionId: 'b6f1c0de-5a1e-4c1b-9f00-2f4e8d7c6b5a',
  resource: 'bench-postgres',
  resourceType: 'postgres',
  namespace: 'bench',
  pod: 'bench-sidecar-7f9c',
};
const OUTCOME: Outcome = { status: 'success', rows: 1, durationMicros: 410 };

/** pgbench's select decision as RecordChain builds its members. */
function decisionMembers(seq: number): Members {
  return {
    v: AUDIT_RECORD_VERSION,
    seq,
    time: formatAuditTime(nowMicros()),
    type: 'command.decision',
    command: {
      id: seq,
      kind: 'sql',
      text: `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(1 + ((seq * 7919) % 100000))};`,
      relations: ['public.pgbench_accounts'],
      statementKinds: ['select'],
    },
    decision: {
      result: 'allow',
      policy: 'bench/allow-all',
      rule: 'everything',
      reasons: ['rule everything decided allow for statement 1 (select)'],
    },
  } as unknown as Members;
}

/** One session's chain and a spool: what either thread keeps to seal and spool records. */
class Sealer {
  private prevHash = GENESIS_HASH;
  private last: SealedRecord | undefined;
  readonly spool: Spool;

  constructor(dir: string, onFrames?: (frames: Buffer) => void) {
    this.spool = Spool.open({
      dir,
      maxBytes: 4 * 1024 * 1024 * 1024,
      durability: 'Written',
      ...(onFrames === undefined ? {} : { onFrames }),
    }).spool;
  }

  decision(members: Members): void {
    const sealed = sealLinked(members, this.prevHash, undefined, this.prevHash !== GENESIS_HASH);
    this.spool.appendText(recordEntryText(ORIGIN, sealed.canonical));
    this.last = sealed;
    this.prevHash = sealed.record.hash;
  }

  outcome(seq: number, outcome: Outcome): void {
    const last = this.last;
    if (last?.record.seq !== seq) throw new Error('seal-handoff: outcome of another decision');
    const merged = sealWithOutcome(last, outcome);
    if (merged === undefined) throw new Error('seal-handoff: not mergeable');
    this.spool.appendText(
      outcomeEntryText(ORIGIN.sessionId, { seq, hash: merged.record.hash, outcome: merged.record.outcome ?? OUTCOME }),
      true,
    );
    this.last = merged;
    this.prevHash = merged.record.hash;
  }
}

type ToWorker =
  | { readonly t: 'frames'; readonly frames: Uint8Array; readonly seal?: boolean }
  | { readonly t: 'turn'; readonly n: number; readonly entries: unknown[] }
  | { readonly t: 'start'; readonly dir: string };

if (!isMainThread) {
  const port = parentPort;
  if (port === null) throw new Error('seal-handoff: no parent port');
  let sealer: Sealer | undefined;
  let decoded = 0;
  // The members variant's chain here: sealed from the parsed entries, nothing spooled again.
  let prevHash = GENESIS_HASH;
  let last: SealedRecord | undefined;
  const sealEntry = (payload: string) => {
    const parsed = JSON.parse(payload) as { u?: Members; o?: { seq: number; outcome: Outcome } };
    if (parsed.u !== undefined) {
      last = sealLinked(parsed.u, prevHash, undefined, prevHash !== GENESIS_HASH);
    } else if (parsed.o !== undefined && last !== undefined) {
      last = sealWithOutcome(last, parsed.o.outcome);
    }
    if (last === undefined) throw new Error('seal-handoff: entry not sealable');
    prevHash = last.record.hash;
  };
  port.on('message', (m: ToWorker) => {
    if (m.t === 'start') {
      sealer = new Sealer(m.dir);
      return;
    }
    if (m.t === 'frames') {
      const entries = decodeFrames(
        Buffer.from(m.frames.buffer, m.frames.byteOffset, m.frames.byteLength),
        false,
      ).entries;
      decoded += entries.length;
      if (m.seal === true) for (const e of entries) sealEntry(e.payload.toString('utf8'));
      return;
    }
    const s = sealer;
    if (s === undefined) throw new Error('seal-handoff: no spool');
    // Flat: outcome seq, members, …
    const entries = m.entries;
    for (let i = 0; i < entries.length; i += 2) {
      const seq = entries[i] as number;
      if (seq > 0) s.outcome(seq, OUTCOME);
      s.decision(entries[i + 1] as Members);
    }
    const written = s.spool.whenDurable();
    const answer = () => {
      port.postMessage(m.n + decoded * 0);
    };
    if (written === undefined) answer();
    else void written.then(answer);
  });
} else {
  const { values } = parseArgs({
    options: {
      'per-turn': { type: 'string', default: '2' },
      statements: { type: 'string', default: '40000' },
      rounds: { type: 'string', default: '5' },
    },
  });
  const PER_TURN = Number(values['per-turn']);
  const STATEMENTS = Number(values.statements);
  const ROUNDS = Number(values.rounds);
  const base = mkdtempSync(join(tmpdir(), 'seal-handoff-'));
  const worker = new Worker(new URL(import.meta.url));
  worker.unref();

  /** Today: sealed and spooled here; the frames to the worker every 20 ms. */
  let frames = Buffer.allocUnsafe(4 * 1024 * 1024);
  let framesBytes = 0;
  let framesTimer: NodeJS.Timeout | undefined;
  let sealInWorker = false;
  const postFrames = () => {
    framesTimer = undefined;
    if (framesBytes === 0) return;
    const out = new Uint8Array(frames.buffer, frames.byteOffset, framesBytes);
    worker.postMessage({ t: 'frames', frames: out, seal: sealInWorker } satisfies ToWorker, [out.buffer]);
    frames = Buffer.allocUnsafeSlow(4 * 1024 * 1024);
    framesBytes = 0;
  };
  const forward = (f: Buffer) => {
    if (framesBytes + f.length > frames.length) postFrames();
    f.copy(frames, framesBytes);
    framesBytes += f.length;
    framesTimer ??= setTimeout(postFrames, 20);
  };
  const onMain = new Sealer(join(base, 'main'), forward);
  const unsealed = Spool.open({
    dir: join(base, 'members'),
    maxBytes: 4 * 1024 * 1024 * 1024,
    durability: 'Written',
    onFrames: forward,
  }).spool;
  const originJson = JSON.stringify(ORIGIN);
  let seqMembers = 0;
  async function roundMembers(): Promise<void> {
    sealInWorker = true;
    for (let done = 0; done < STATEMENTS; done += PER_TURN) {
      for (let i = 0; i < PER_TURN; i++) {
        if (seqMembers > 0) {
          unsealed.appendText(
            `{"i":${JSON.stringify(ORIGIN.sessionId)},"o":${JSON.stringify({ seq: seqMembers, outcome: OUTCOME })}}`,
            true,
          );
        }
        seqMembers += 1;
        unsealed.appendText(`{"s":${originJson},"u":${JSON.stringify(decisionMembers(seqMembers))}}`);
      }
      await unsealed.whenDurable();
    }
    postFrames();
    sealInWorker = false;
  }
  let seqMain = 0;
  async function roundMain(): Promise<void> {
    for (let done = 0; done < STATEMENTS; done += PER_TURN) {
      for (let i = 0; i < PER_TURN; i++) {
        // The outcome of the statement before (its response came in this turn), then the next decision.
        if (seqMain > 0) onMain.outcome(seqMain, OUTCOME);
        seqMain += 1;
        onMain.decision(decisionMembers(seqMain));
      }
      await onMain.spool.whenDurable();
    }
  }

  /** The cut: members to the worker once a turn; the turn waits for its answer. */
  worker.postMessage({ t: 'start', dir: join(base, 'worker') } satisfies ToWorker);
  const waiting = new Map<number, () => void>();
  worker.on('message', (n: number) => {
    waiting.get(n)?.();
    waiting.delete(n);
  });
  let seqWorker = 0;
  let turn = 0;
  async function roundWorker(): Promise<void> {
    for (let done = 0; done < STATEMENTS; done += PER_TURN) {
      const entries: unknown[] = [];
      for (let i = 0; i < PER_TURN; i++) {
        entries.push(seqWorker);
        seqWorker += 1;
        entries.push(decisionMembers(seqWorker));
      }
      const n = ++turn;
      const answered = new Promise<void>((resolve) => waiting.set(n, resolve));
      // Posted at the end of the turn, as a sink would (setImmediate), not at each record.
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          worker.postMessage({ t: 'turn', n, entries } satisfies ToWorker);
          resolve();
        }),
      );
      await answered;
    }
  }

  const micros = (u: NodeJS.CpuUsage) => u.user + u.system;
  type Variant = 'main' | 'worker' | 'members';
  const results: Record<Variant, { process: number[]; main: number[]; wallUs: number[] }> = {
    main: { process: [], main: [], wallUs: [] },
    worker: { process: [], main: [], wallUs: [] },
    members: { process: [], main: [], wallUs: [] },
  };
  const runs: Record<Variant, () => Promise<void>> = { main: roundMain, worker: roundWorker, members: roundMembers };
  // The worker's sealing of posted frames finishes after the round: a turn on the worker's own queue is waited
  // for (an empty turn message answers after every message before it).
  const workerIdle = async () => {
    const n = ++turn;
    const answered = new Promise<void>((resolve) => waiting.set(n, resolve));
    worker.postMessage({ t: 'turn', n, entries: [] } satisfies ToWorker);
    await answered;
  };
  const measure = async (name: Variant, run: () => Promise<void>) => {
    const cpu = process.cpuUsage();
    const thread = process.threadCpuUsage();
    const started = performance.now();
    await run();
    postFrames();
    await workerIdle();
    const wall = performance.now() - started;
    results[name].process.push(micros(process.cpuUsage(cpu)) / STATEMENTS);
    results[name].main.push(micros(process.threadCpuUsage(thread)) / STATEMENTS);
    results[name].wallUs.push((wall * 1000) / (STATEMENTS / PER_TURN));
  };
  // Warm-up of both, then rounds alternating.
  for (const name of Object.keys(runs) as Variant[]) await measure(name, runs[name]);
  for (const r of Object.values(results)) {
    r.process.length = 0;
    r.main.length = 0;
    r.wallUs.length = 0;
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order: Variant[] = ['main', 'worker', 'members'];
    if (round % 2 === 1) order.reverse();
    for (const name of order) await measure(name, runs[name]);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? 0;
  const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(' ');
  for (const [name, r] of Object.entries(results)) {
    console.log(
      `${name.padEnd(6)} ${String(PER_TURN)} statements a turn: process ${median(r.process).toFixed(1)} µs per statement (${list(r.process)}), ` +
        `main thread ${median(r.main).toFixed(1)} (${list(r.main)}), turn ${median(r.wallUs).toFixed(1)} µs wall`,
    );
  }
  if (framesTimer !== undefined) clearTimeout(framesTimer);
  await onMain.spool.close();
  await unsealed.close();
  await worker.terminate();
  rmSync(base, { recursive: true, force: true });
}
