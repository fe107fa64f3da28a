// Writes spooled audit records into Session objects (api/src/session.ts): one object per part of a
// session, created with its first records and then only appended to (the CRD's CEL rules reject anything
// else). A part holds at most SESSION_MAX_RECORDS records and stays under SESSION_MAX_BYTES; then the
// session continues in part N+1, which names part N in `previousPart`, and part N's phase becomes
// `Continued`. Every write carries a freshly signed chain head. Object names are deterministic, so after a
// restart the writer finds the parts already written and skips every record whose seq is already there.
//
// The writer never drops a record: when the API server is unavailable it backs off and retries while the
// records wait in the spool, and it acknowledges spool entries only once they are in Kubernetes.
//
// With an evidence store (docs/evidence-store.md) records go into the store instead, in large batches, and
// the session's one Session object keeps no records, only the signed head (and status): per batch the
// writer inserts the records, then signs and writes the head that covers them, and acknowledges spool
// entries only after both. A batch whose head could not be written is inserted again on retry (a no-op for
// rows already there), so neither an outage of the store nor of the API server loses a record.
import {
  API_VERSION,
  canonicalRecordText,
  SESSION_MAX_BYTES,
  SESSION_MAX_RECORDS,
  signChainHead,
  type AuditRecord,
  type Identity,
  type Session,
  type SessionSpec,
  type SessionStatus,
  countRecord,
} from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import type { RecordOrigin } from './audit-sink.ts';
import type { EvidenceStore } from './evidence-store.ts';
import type { RecordFields } from './record-fields.ts';
import type { SigningKey } from './signing-key.ts';
import { SESSION_ID_LABEL, SessionStoreError, type SessionStore, type StoreEvent } from './session-store.ts';

/**
 * The audit metrics the writer updates: prom-client's metrics on the sidecar's registry, or, in the audit
 * worker thread, their stand-ins that pass the updates to the main thread (audit-worker.ts).
 */
export interface WriterMetrics {
  readonly pendingRecords: { set(value: number): void };
  readonly flushedRecords: { inc(value?: number): void };
  readonly flushFailures: { inc(labels: { reason: string }): void };
  readonly sessionObjects: { inc(labels: { operation: string }): void };
  readonly storeSeconds?: { observe(value: number): void };
}

/** The Session writer's tuning that the sidecar's configuration, tests and the bench may set. */
export type SessionWriterTuning = Partial<
  Pick<
    SessionWriterOptions,
    | 'maxRecordsPerPart'
    | 'maxBytesPerPart'
    | 'backoffInitialMs'
    | 'backoffMaxMs'
    | 'concurrency'
    | 'writesPerRound'
    | 'eventIntervalMs'
    | 'storeBatchRecords'
    | 'storeHeadIntervalMs'
  >
>;

export interface SessionWriterOptions {
  readonly store: SessionStore;
  readonly signingKey: SigningKey;
  /** The pod whose sidecar writes; spec.pod of every Session. */
  readonly pod: { readonly name: string; readonly namespace: string; readonly uid?: string };
  readonly logger: Logger;
  readonly metrics?: WriterMetrics;
  /** Called with the highest spool entry id below which every record is in Kubernetes. */
  readonly onAcknowledge?: (entryId: number) => void;
  /** Time between flushes, ms. Default 1000. */
  readonly flushIntervalMs?: number;
  /** Records per part. Default SESSION_MAX_RECORDS (256). */
  readonly maxRecordsPerPart?: number;
  /** Serialized bytes per part the writer stays under. Default SESSION_MAX_BYTES less 64 KiB for metadata. */
  readonly maxBytesPerPart?: number;
  /** Backoff after a failed write: first and largest delay, ms. Default 250 and 5000. */
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
  /** Sessions written at once. Default 4. */
  readonly concurrency?: number;
  /**
   * Writes one session gets per flush round (Session object writes, or evidence-store batches with their
   * head) before the other sessions with work get their turn. Default WRITES_PER_ROUND.
   */
  readonly writesPerRound?: number;
  /** Shortest time between two flush-failure Events, ms. Default 60 s. */
  readonly eventIntervalMs?: number;
  readonly now?: () => Date;
  /** Keep records in this evidence store; Session objects then carry only heads and status. Default none. */
  readonly evidence?: EvidenceStore;
  /** With an evidence store: records inserted (and covered by one head) per batch. Default 4096. */
  readonly storeBatchRecords?: number;
  /**
   * With an evidence store: the shortest time between two head (and status) writes of one session, ms; records
   * are inserted every flush interval meanwhile. A full batch, the session's end, the sidecar stopping or
   * flush() write the head at once. Default 5000.
   */
  readonly storeHeadIntervalMs?: number;
}

interface Queued {
  /** Its spool entry (the decision's, for a decision merged with its outcome). */
  readonly id: number;
  /** What the writer reads of the record (the whole record, or only its fields: enqueueFields). */
  readonly record: RecordFields;
  /** The whole record when the caller had it; else it is parsed from `text` if Session objects need it. */
  readonly whole: AuditRecord | undefined;
  readonly bytes: number;
  /**
   * The canonical text, when the caller had it (the evidence store keeps exactly the text hashed); dropped
   * once the record is in the store, where it may wait for its head for seconds.
   */
  text: string | undefined;
}

interface Part {
  readonly name: string;
  readonly part: number;
  /** Its records are in the evidence store (spec.store), not in the object. */
  readonly stored: boolean;
  resourceVersion: string;
  records: number;
  bytes: number;
  lastSeq: number;
}

type Counters = SessionStatus['counters'];

interface SessionState {
  readonly ref: RecordOrigin;
  readonly queue: Queued[];
  head: number;
  /** Whether the parts in Kubernetes are known (always so for a session first seen live in this process). */
  synced: boolean;
  current: Part | undefined;
  counters: Counters;
  identity: Identity | undefined;
  startTime: string | undefined;
  endTime: string | undefined;
  lastTime: string | undefined;
  ended: boolean;
  /** Replayed from the spool of an earlier process: nobody will end it, so it is marked Abandoned. */
  abandoned: boolean;
  statusDirty: boolean;
  failures: number;
  retryAt: number;
  firstFailureAt: number;
  busy: boolean;
  /** Short object names collided with another session's objects: use the whole session id. */
  longNames: boolean;
  /**
   * Its last flush stopped at the round's budget of writes with records left: it is due in the next round,
   * which starts at once.
   */
  cut: boolean;
  /** Earlier parts whose `Continued` status is still to be written (the write failed). */
  continued: { name: string; status: SessionStatus }[];
  /** With an evidence store: the highest seq inserted whose head may still be unwritten. */
  storedThrough: number;
  /** When its last flush began (Date.now()); with an evidence store a session is flushed once per interval. */
  lastFlushAt: number;
  /** With an evidence store: when its head was last written (Date.now()). */
  lastHeadAt: number;
  /** The phase of its last status write (undefined before the first), and when (Date.now()). */
  statusPhase: SessionStatus['phase'] | undefined;
  lastStatusAt: number;
  /**
   * With an evidence store: the highest seq that may be in the store without this process knowing (sent in
   * an insert whose outcome is unknown, or by an earlier process). Batches reaching down to it skip what is
   * there; later ones take the cheaper COPY.
   */
  mayExistThrough: number;
  /**
   * The highest seq handed to a write (whose outcome may be unknown): a record up to it may be in Kubernetes
   * or the store as it was, so it is never replaced by a merged one (amend).
   */
  takenThrough: number;
  /**
   * The seq of the session's last queued record when it is a decision whose outcome may still be merged
   * into it (enqueue's `open`; audit worker mode), else 0: it is not taken until amended, followed by
   * another record, or released.
   */
  openSeq: number;
}

/**
 * With an evidence store: the shortest time between two status writes of a live session whose phase did not
 * change, ms (docs/evidence-store.md, "How records flow").
 */
const STORE_STATUS_INTERVAL_MS = 30_000;

/**
 * Writes per session per flush round. A round flushes every session with work (at most `concurrency` at
 * once) and ends when each has written its backlog or this many writes; a round that left work starts the
 * next at once. So under a load beyond the API server's write rate no busy session keeps a flush slot while
 * others wait: each session with work gets its turn every round (docs/audit-durability.md, "Fairness").
 */
export const WRITES_PER_ROUND = 4;

/**
 * Whether `err` is the evidence store's server refusing a statement (node-postgres's DatabaseError: a
 * SQLSTATE and a severity, e.g. the writer's INSERT revoked), rather than the store being unreachable: both
 * are retried alike, but they are counted apart (`chaperone_audit_flush_failures_total{reason}`).
 */
function storeRefusal(err: unknown): boolean {
  const e = err as { severity?: unknown; code?: unknown } | undefined;
  return typeof e?.severity === 'string' && typeof e.code === 'string';
}

const UNAUTHENTICATED: Identity = { subject: 'unauthenticated', issuer: '' };

/**
 * Deterministic name of part `part` of a session: `<resource>-<first 12 hex of sessionId>-<part>`, or with
 * the whole id when `long` (after a collision of the short name with another session's object).
 */
export function sessionObjectName(resource: string, sessionId: string, part: number, long = false): string {
  const id = sessionId
    .toLowerCase()
    .replace(/[^a-z0-9]/g, '')
    .slice(0, long ? 64 : 12);
  const suffix = `-${id}-${String(part)}`;
  const base =
    resource
      .toLowerCase()
      .replace(/[^a-z0-9.-]+/g, '-')
      .replace(/^[^a-z0-9]+/, '')
      .replace(/[^a-z0-9]+$/, '')
      .slice(0, 253 - suffix.length) || 'session';
  return `${base.replace(/[^a-z0-9]+$/, '')}${suffix}`;
}

export class SessionWriter {
  private readonly options: SessionWriterOptions;
  private readonly store: SessionStore;
  private readonly logger: Logger;
  private readonly sessions = new Map<string, SessionState>();
  private readonly intervalMs: number;
  private readonly maxRecords: number;
  private readonly maxBytes: number;
  private readonly evidence: EvidenceStore | undefined;
  /** Records that make a flush start at once rather than at the next tick. */
  private readonly kickRecords: number;
  private readonly headIntervalMs: number;
  private readonly writesPerRound: number;
  private readonly now: () => Date;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private rerun = false;
  /** flush() wants every session written, due or not. */
  private forced = false;
  private stopped = false;
  private pending = 0;
  private sinceKick = 0;
  private lastEnqueuedId = 0;
  private acknowledged = 0;
  private lastFailureEvent = 0;
  private failingSince = 0;
  private readonly waiters: { id: number; resolve: () => void }[] = [];

  constructor(options: SessionWriterOptions) {
    this.options = options;
    this.store = options.store;
    this.logger = options.logger;
    this.intervalMs = options.flushIntervalMs ?? 1000;
    this.maxRecords = options.maxRecordsPerPart ?? SESSION_MAX_RECORDS;
    this.maxBytes = options.maxBytesPerPart ?? SESSION_MAX_BYTES - 64 * 1024;
    this.evidence = options.evidence;
    // With a store, heads (API writes) follow batches: kick per batch, not per Session part.
    this.kickRecords = this.evidence === undefined ? this.maxRecords : (options.storeBatchRecords ?? 4096);
    this.now = options.now ?? (() => new Date());
    this.headIntervalMs = options.storeHeadIntervalMs ?? 5000;
    this.writesPerRound = Math.max(1, options.writesPerRound ?? WRITES_PER_ROUND);
  }

  /** Records accepted and not yet in Kubernetes. */
  get pendingRecords(): number {
    return this.pending;
  }

  /** Starts the periodic flush. */
  start(): void {
    this.schedule(this.intervalMs);
  }

  /**
   * Queues one record of `session` (spool entry `id`). `replayed` marks records read back from the spool
   * of an earlier process: their parts may already exist, and their sessions are over. `serializedLength`
   * is the record's JSON size in UTF-8 bytes when the caller has it (sizing parts; computed otherwise).
   * `open`: a decision whose outcome may still be merged into it (amend) by a caller that cannot ask
   * canAmend synchronously (the main thread, with the writer in the audit worker): held back until amended,
   * followed by another record of the session, or released.
   */
  enqueue(
    id: number,
    session: RecordOrigin,
    record: AuditRecord,
    replayed = false,
    serializedLength?: number,
    text?: string,
    open = false,
  ): void {
    const bytes = (serializedLength ?? Buffer.byteLength(JSON.stringify(record))) + 1;
    this.push(id, session, record, record, replayed, bytes, text, open);
  }

  /**
   * enqueue for a live record of which the caller read only the fields (the audit worker, record-fields.ts),
   * with its canonical text: what the store keeps; Session objects get the record parsed from the text.
   */
  enqueueFields(id: number, session: RecordOrigin, fields: RecordFields, text: string, open: boolean): void {
    this.push(id, session, fields, undefined, false, Buffer.byteLength(text) + 1, text, open);
  }

  private push(
    id: number,
    session: RecordOrigin,
    record: RecordFields,
    whole: AuditRecord | undefined,
    replayed: boolean,
    bytes: number,
    text: string | undefined,
    open: boolean,
  ): void {
    let s = this.sessions.get(session.sessionId);
    if (s === undefined) {
      s = {
        ref: session,
        queue: [],
        head: 0,
        // A session that starts here cannot have objects yet; anything else must be looked up first.
        synced: !replayed && record.seq === 1,
        current: undefined,
        counters: { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 },
        identity: undefined,
        startTime: undefined,
        endTime: undefined,
        lastTime: undefined,
        ended: false,
        abandoned: replayed,
        statusDirty: false,
        failures: 0,
        retryAt: 0,
        firstFailureAt: 0,
        busy: false,
        cut: false,
        longNames: false,
        continued: [],
        storedThrough: 0,
        lastFlushAt: 0,
        lastHeadAt: 0,
        statusPhase: undefined,
        lastStatusAt: 0,
        // A session that starts here has nothing in the store; a replayed or resumed one may have anything.
        mayExistThrough: !replayed && record.seq === 1 ? 0 : Number.MAX_SAFE_INTEGER,
        takenThrough: 0,
        openSeq: 0,
      };
      this.sessions.set(session.sessionId, s);
    }
    if (record.type === 'session.start') {
      s.identity ??= record.identity;
      s.startTime ??= record.time;
    }
    if (record.type === 'session.end') {
      s.ended = true;
      s.endTime = record.time;
    }
    s.lastTime = record.time;
    s.openSeq = open ? record.seq : 0;
    s.queue.push({ id, record, whole, bytes, text });
    this.pending += 1;
    this.lastEnqueuedId = Math.max(this.lastEnqueuedId, id);
    this.options.metrics?.pendingRecords.set(this.pending);
    this.sinceKick += 1;
    // With a store a batch is per session: its own queue decides (one busy session, not the sum of all).
    // (Once, as its queue reaches a batch: a session backing off would otherwise kick on every record.)
    const full =
      this.evidence === undefined ? this.sinceKick >= this.kickRecords : s.queue.length - s.head === this.kickRecords;
    if (full && this.running === undefined && !this.stopped) {
      // A full part (or batch) is waiting: write it now rather than at the next tick.
      this.sinceKick = 0;
      this.schedule(0);
    }
  }

  /**
   * Whether the record `seq` of the session is the last one queued and not yet handed to a write, so that
   * amend() may replace it.
   */
  canAmend(sessionId: string, seq: number): boolean {
    const s = this.sessions.get(sessionId);
    if (s === undefined || s.head >= s.queue.length || seq <= s.takenThrough) return false;
    return (s.queue[s.queue.length - 1] as Queued).record.seq === seq;
  }

  /**
   * Replaces the queued record `record.seq` of the session by `record` (its decision merged with its
   * outcome, which is spool entry `id`); the caller checked canAmend (or replays the spool). Keeps the
   * decision's entry id, so the spool is acknowledged past the outcome's entry only once the merged record
   * is written (every later record has a higher id).
   */
  amend(id: number, sessionId: string, record: AuditRecord, text: string): void {
    this.replace(id, sessionId, record, record, text);
  }

  /** amend with the merged record's fields only (the audit worker): as enqueueFields. */
  amendFields(id: number, sessionId: string, fields: RecordFields, text: string): void {
    this.replace(id, sessionId, fields, undefined, text);
  }

  private replace(
    id: number,
    sessionId: string,
    record: RecordFields,
    whole: AuditRecord | undefined,
    text: string,
  ): void {
    const s = this.sessions.get(sessionId);
    if (s === undefined) return;
    for (let i = s.queue.length - 1; i >= s.head; i--) {
      const q = s.queue[i] as Queued;
      if (q.record.seq !== record.seq) continue;
      s.queue[i] = { id: q.id, record, whole, bytes: Buffer.byteLength(text) + 1, text };
      break;
    }
    if (s.openSeq === record.seq) s.openSeq = 0;
    this.lastEnqueuedId = Math.max(this.lastEnqueuedId, id);
  }

  /** The open decision `seq` of the session will not be amended: it may be written (see enqueue's `open`). */
  release(sessionId: string, seq: number): void {
    const s = this.sessions.get(sessionId);
    if (s !== undefined && s.openSeq === seq) s.openSeq = 0;
  }

  /** Holds the session's last queued record `seq` back again after amend (spool replay): as enqueue's `open`. */
  hold(sessionId: string, seq: number): void {
    const s = this.sessions.get(sessionId);
    if (s === undefined || seq <= s.takenThrough || s.queue[s.queue.length - 1]?.record.seq !== seq) return;
    s.openSeq = seq;
  }

  /** End of the records of the session that may be taken now: all queued but an open decision. */
  private takeable(s: SessionState): number {
    if (s.openSeq === 0) return s.queue.length;
    const last = s.queue[s.queue.length - 1];
    return last !== undefined && last.record.seq === s.openSeq ? s.queue.length - 1 : s.queue.length;
  }

  /**
   * The queued record `seq` of the session not yet handed to a write (spool replay): one handed to a write
   * may be stored as it was, so it is never replaced.
   */
  queuedRecord(sessionId: string, seq: number): AuditRecord | undefined {
    const s = this.sessions.get(sessionId);
    if (s === undefined || seq <= s.takenThrough) return undefined;
    for (let i = s.queue.length - 1; i >= s.head; i--) {
      const q = s.queue[i] as Queued;
      if (q.record.seq === seq) return this.whole(q);
    }
    return undefined;
  }

  /** The whole record of a queued one: given, or parsed from its canonical text. */
  private whole(q: Queued): AuditRecord {
    if (q.whole !== undefined) return q.whole;
    // Dropped only once the record is in the evidence store, whose sessions never need it whole.
    if (q.text === undefined) throw new Error(`audit record ${String(q.record.seq)} is neither whole nor has its text`);
    return JSON.parse(q.text) as AuditRecord;
  }

  /** A spool entry with nothing left to write (a replayed outcome whose decision was written): acknowledged with what precedes it. */
  acknowledgeLater(id: number): void {
    this.lastEnqueuedId = Math.max(this.lastEnqueuedId, id);
  }

  /** Resolves once every record queued so far is in Kubernetes, or after `timeoutMs` (then false). */
  async flush(timeoutMs = Infinity): Promise<boolean> {
    const target = this.lastEnqueuedId;
    if (this.acknowledged >= target) return true;
    let resolve: () => void = () => undefined;
    const promise = new Promise<void>((res) => {
      resolve = res;
    });
    this.waiters.push({ id: target, resolve });
    this.forced = true;
    this.schedule(0);
    if (timeoutMs === Infinity) {
      await promise;
      return true;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      promise.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    return !timedOut;
  }

  /** Stops flushing (after the flush in progress). Records still queued stay in the spool. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.running !== undefined) {
      if (ms === 0) this.rerun = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      void this.run();
    }, ms);
  }

  private async run(): Promise<void> {
    if (this.running !== undefined) return;
    this.rerun = false;
    this.sinceKick = 0;
    const forced = this.forced;
    this.forced = false;
    this.running = this.flushOnce(forced).catch((err: unknown) => {
      this.logger.error('audit flush failed unexpectedly', { error: err });
    });
    await this.running;
    this.running = undefined;
    // A forced round cut short by the budget: the next round still writes everything for flush()'s waiters.
    if (forced && this.waiters.length > 0 && this.anyCut()) this.forced = true;
    const more = this.wantsRerun();
    this.schedule(more ? 0 : this.intervalMs);
  }

  /** A session's last flush stopped at the round's budget (and it is not backing off). */
  private anyCut(): boolean {
    const now = Date.now();
    for (const s of this.sessions.values()) if (s.cut && s.retryAt <= now) return true;
    return false;
  }

  /**
   * A flush was asked for while one ran, a round left work (the budget), or a full part's (or a session's
   * batch's) worth of records arrived meanwhile.
   */
  private wantsRerun(): boolean {
    // Work left by the budget: no wait between rounds, so one busy session writes as fast as it did unbudgeted.
    if (this.rerun || this.anyCut()) return true;
    if (this.evidence === undefined) return this.sinceKick >= this.kickRecords;
    // Not a session backing off after a failure: that would spin until its retry time.
    const now = Date.now();
    for (const s of this.sessions.values()) if (this.batchWaiting(s) && s.retryAt <= now) return true;
    return false;
  }

  /** With a store: a whole batch of the session's records is queued. */
  private batchWaiting(s: SessionState): boolean {
    return s.queue.length - s.head >= this.kickRecords;
  }

  /**
   * Whether a session with work is flushed in this run. With an evidence store each flush costs a head and a
   * status write on the API server whatever the batch's size, so a session is flushed once per interval,
   * or at once when a whole batch is queued, its last round left work, it ended, or a flush() asked for
   * everything. Without a store (Session objects, one write per part anyway) every session with work is.
   */
  private due(s: SessionState, now: number, forced: boolean): boolean {
    if (this.evidence === undefined || forced || s.cut || s.ended || s.abandoned || !s.synced) return true;
    return this.batchWaiting(s) || now - s.lastFlushAt >= this.intervalMs || s.head >= s.queue.length;
  }

  private async flushOnce(forced: boolean): Promise<void> {
    const now = Date.now();
    const ready: SessionState[] = [];
    for (const s of this.sessions.values()) {
      const work = s.head < s.queue.length || s.statusDirty;
      if (!s.busy && work && s.retryAt <= now && this.due(s, now, forced)) ready.push(s);
    }
    let next = 0;
    const worker = async () => {
      while (next < ready.length) {
        const s = ready[next] as SessionState;
        next += 1;
        await this.flushSession(s, forced);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.concurrency ?? 4, ready.length) }, worker));
    this.acknowledge();
    for (const [id, s] of this.sessions) {
      if (s.head >= s.queue.length && !s.statusDirty && !s.busy && (s.ended || s.abandoned)) this.sessions.delete(id);
    }
  }

  private acknowledge(): void {
    let ack = this.lastEnqueuedId;
    for (const s of this.sessions.values()) {
      const first = s.queue[s.head];
      if (first !== undefined) ack = Math.min(ack, first.id - 1);
    }
    if (ack > this.acknowledged) {
      this.acknowledged = ack;
      this.options.onAcknowledge?.(ack);
    }
    // flush() promises "in Kubernetes": records and the status that describes them.
    for (const s of this.sessions.values()) if (s.statusDirty || s.continued.length > 0) return;
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (w !== undefined && w.id <= ack) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  private async flushSession(s: SessionState, forced: boolean): Promise<void> {
    s.busy = true;
    s.cut = false;
    s.lastFlushAt = Date.now();
    try {
      if (!s.synced) await this.sync(s);
      await this.markContinued(s);
      let written = 0;
      // A session begun in Session objects before a store was configured stays in them.
      const evidence = s.current?.stored === false ? undefined : this.evidence;
      const inStore = evidence !== undefined;
      if (evidence !== undefined) written = await this.flushToStore(s, evidence, forced);
      while (!inStore && s.head < this.takeable(s)) {
        if (written >= this.writesPerRound) {
          // The round's budget: the other sessions with work get their turn before this one writes on.
          s.cut = true;
          break;
        }
        const cur = s.current;
        const first = s.queue[s.head] as Queued;
        if (cur !== undefined && first.record.seq <= cur.lastSeq) {
          // Already written (a replayed duplicate): never append a seq twice.
          s.head += 1;
          this.pending -= 1;
          continue;
        }
        if (cur === undefined) {
          await this.createPart(s, 0, undefined);
        } else if (first.record.seq !== cur.lastSeq + 1 || !this.fits(cur, first)) {
          // Full (or the next record does not follow on: a part must hold a contiguous run of seq).
          await this.continuePart(s, cur);
        } else {
          await this.appendRecords(s, cur);
        }
        written += 1;
        // Give the spool its space back after every write.
        this.acknowledge();
      }
      // Give the spool its space back as soon as this session's records are in.
      if (written > 0) this.acknowledge();
      // A session cut short by the budget in Session objects writes its status once it catches up: a status
      // per round would cost the API server a write per `writesPerRound` while it is the bottleneck.
      const status = s.statusDirty && s.current !== undefined && (inStore || !s.cut) ? this.status(s) : undefined;
      if (status !== undefined && s.current !== undefined && this.statusDue(s, status, inStore, forced)) {
        const cur = s.current;
        // The status write moves the object's resourceVersion: keep it, or the next guarded append is refused.
        const resourceVersion = await this.store.patchStatus(cur.name, status);
        if (resourceVersion !== undefined) cur.resourceVersion = resourceVersion;
        this.options.metrics?.sessionObjects.inc({ operation: 'status' });
        s.statusDirty = false;
        s.statusPhase = status.phase;
        s.lastStatusAt = Date.now();
      }
      if (s.failures > 0) this.recovered(s);
    } catch (err) {
      this.failed(s, err);
    } finally {
      s.busy = false;
    }
  }

  /**
   * Whether a changed status is written now. With an evidence store, a live session's counters are written
   * at most every STORE_STATUS_INTERVAL_MS (each status write costs the API server as much as a head); a
   * phase change (the first status, Closed, Abandoned), flush(), a waiter and stop write it at once. Only a
   * finished session's counters are checked against its records (verify's `status-mismatch`), and its last
   * status is always written. In Session objects every change is written, as before.
   */
  private statusDue(s: SessionState, status: SessionStatus, inStore: boolean, forced: boolean): boolean {
    if (!inStore || forced || this.stopped || this.waiters.length > 0) return true;
    return status.phase !== s.statusPhase || Date.now() - s.lastStatusAt >= STORE_STATUS_INTERVAL_MS;
  }

  private fits(part: Part, q: Queued): boolean {
    return part.records < this.maxRecords && part.bytes + q.bytes <= this.maxBytes;
  }

  /** Takes queued records that fit into `part` (a fresh part when `part` is undefined). */
  private take(s: SessionState, part: Part | undefined, baseBytes: number): Queued[] {
    const batch: Queued[] = [];
    let records = part?.records ?? 0;
    let bytes = part?.bytes ?? baseBytes;
    let seq = part?.lastSeq;
    const end = this.takeable(s);
    for (let i = s.head; i < end; i++) {
      const q = s.queue[i] as Queued;
      if (records >= this.maxRecords || bytes + q.bytes > this.maxBytes) break;
      if (seq !== undefined && q.record.seq !== seq + 1) break;
      batch.push(q);
      records += 1;
      bytes += q.bytes;
      seq = q.record.seq;
    }
    if (seq !== undefined) s.takenThrough = Math.max(s.takenThrough, seq);
    return batch;
  }

  private consume(s: SessionState, batch: readonly Queued[]): void {
    for (const q of batch) countRecord(s.counters, q.record);
    s.head += batch.length;
    if (s.head > 1024 && s.head * 2 > s.queue.length) {
      s.queue.splice(0, s.head);
      s.head = 0;
    }
    this.pending -= batch.length;
    s.statusDirty = true;
    this.options.metrics?.flushedRecords.inc(batch.length);
    this.options.metrics?.pendingRecords.set(this.pending);
  }

  private async head(name: string, s: SessionState, last: RecordFields): Promise<NonNullable<SessionSpec['head']>> {
    const key = this.options.signingKey;
    const signature = await signChainHead(
      {
        typ: 'chaperone.dev/chain-head/v1',
        sessionId: s.ref.sessionId,
        object: `${this.store.namespace}/${name}`,
        seq: last.seq,
        hash: last.hash,
        signedAt: this.now().toISOString(),
      },
      key.privateJwk,
    );
    return { seq: last.seq, hash: last.hash, signature, keyId: key.keyId };
  }

  /**
   * Creates part `part` with the queued records that fit, or, with `stored` (records already in the evidence
   * store), the session's one object: no records, the store's location and the head covering `stored`.
   */
  private async createPart(
    s: SessionState,
    part: number,
    previousPart: string | undefined,
    stored?: readonly Queued[],
  ): Promise<void> {
    const name = sessionObjectName(s.ref.resource, s.ref.sessionId, part, s.longNames);
    const podName = this.options.pod.name === '' ? 'unknown' : this.options.pod.name;
    const key = this.options.signingKey;
    const spec: Omit<SessionSpec, 'records' | 'head'> = {
      sessionId: s.ref.sessionId,
      part,
      ...(previousPart === undefined ? {} : { previousPart }),
      pod: {
        name: podName,
        // Named only when the Sessions live elsewhere (an audit namespace): otherwise it is the object's own.
        ...(this.options.pod.namespace === '' || this.options.pod.namespace === this.store.namespace
          ? {}
          : { namespace: this.options.pod.namespace }),
        ...(this.options.pod.uid === undefined || this.options.pod.uid === '' ? {} : { uid: this.options.pod.uid }),
      },
      resource: { name: s.ref.resource, type: s.ref.resourceType },
      identity: s.identity ?? UNAUTHENTICATED,
      startTime: s.startTime ?? (s.queue[s.head] as Queued).record.time,
      // The operator's binding of this key to the pod, in every part created once it has been issued.
      signer: {
        keyId: key.keyId,
        publicKey: JSON.stringify(key.publicJwk),
        ...(key.certificate === undefined ? {} : { certificate: key.certificate }),
      },
    };
    const baseBytes = Buffer.byteLength(JSON.stringify(spec)) + 2048;
    const batch = stored ?? this.take(s, undefined, baseBytes);
    const last = (batch[batch.length - 1] as Queued).record;
    const store = stored === undefined ? undefined : this.evidence?.location;
    const created = await this.createOrDetectCollision(s, {
      apiVersion: API_VERSION,
      kind: 'Session',
      metadata: {
        name,
        namespace: this.store.namespace,
        labels: {
          [SESSION_ID_LABEL]: s.ref.sessionId,
          'chaperone.dev/resource': s.ref.resource.slice(0, 63),
          'chaperone.dev/part': String(part),
        },
      },
      spec: {
        ...spec,
        ...(store === undefined ? {} : { store }),
        records: store === undefined ? batch.map((q) => this.whole(q)) : [],
        head: await this.head(name, s, last),
      },
    } satisfies Session);
    this.options.metrics?.sessionObjects.inc({ operation: 'create' });
    s.current = {
      name,
      part,
      stored: store !== undefined,
      resourceVersion: created.metadata.resourceVersion ?? '',
      records: batch.length,
      bytes: baseBytes + batch.reduce((n, q) => n + q.bytes, 0),
      lastSeq: last.seq,
    };
    this.consume(s, batch);
  }

  private async createOrDetectCollision(s: SessionState, session: Session): Promise<Session> {
    try {
      return await this.store.create(session);
    } catch (err) {
      if (err instanceof SessionStoreError && err.kind === 'exists' && !s.longNames) {
        const mine = await this.store.listParts(s.ref.sessionId);
        if (!mine.some((p) => p.metadata.name === session.metadata.name)) {
          // Another session's object has this name (same first 12 hex digits): switch to full-id names.
          this.logger.warn('session object name taken by another session; using the full session id', {
            sessionId: s.ref.sessionId,
            name: session.metadata.name,
          });
          s.longNames = true;
        }
      }
      throw err;
    }
  }

  private async appendRecords(s: SessionState, cur: Part): Promise<void> {
    const batch = this.take(s, cur, 0);
    const last = (batch[batch.length - 1] as Queued).record;
    const updated = await this.store.append(
      cur.name,
      cur.resourceVersion,
      batch.map((q) => this.whole(q)),
      await this.head(cur.name, s, last),
    );
    this.options.metrics?.sessionObjects.inc({ operation: 'append' });
    cur.resourceVersion = updated.metadata.resourceVersion ?? '';
    cur.records += batch.length;
    cur.bytes += batch.reduce((n, q) => n + q.bytes, 0);
    cur.lastSeq = last.seq;
    this.consume(s, batch);
  }

  /**
   * Evidence-store mode: inserts the queued records in batches and after each writes the signed head that
   * covers it into the session's Session object (created with the first batch), at most `writesPerRound`
   * batches (then `cut`). Returns batches written.
   */
  private async flushToStore(s: SessionState, evidence: EvidenceStore, forced: boolean): Promise<number> {
    const ref = s.ref;
    const session = {
      sessionId: ref.sessionId,
      namespace: this.store.namespace,
      podNamespace: this.options.pod.namespace === '' ? ref.namespace : this.options.pod.namespace,
      pod: this.options.pod.name === '' ? ref.pod : this.options.pod.name,
      resource: ref.resource,
    };
    let written = 0;
    // What is queued now, not what arrives meanwhile: the flush ends, the status is written, and the next
    // flush (at once, when a batch's worth arrived) takes the rest.
    const end = this.takeable(s);
    let remaining = end - s.head;
    // Every record queued now may be sent (its outcome unknown until it answers): none is replaced after this.
    const lastQueued = s.queue[end - 1];
    if (lastQueued !== undefined) s.takenThrough = Math.max(s.takenThrough, lastQueued.record.seq);
    while (s.head < s.queue.length && remaining > 0) {
      if (written >= this.writesPerRound) {
        // The round's budget, as in Session objects: the rest waits for this session's turn in the next round.
        s.cut = true;
        break;
      }
      const cur = s.current;
      const first = s.queue[s.head] as Queued;
      if (cur !== undefined && first.record.seq <= cur.lastSeq) {
        // Signed already (a replayed duplicate).
        remaining -= 1;
        s.head += 1;
        this.pending -= 1;
        continue;
      }
      const batch = s.queue.slice(s.head, s.head + Math.min(this.kickRecords, remaining));
      remaining -= batch.length;
      const last = (batch[batch.length - 1] as Queued).record;
      const unstored = batch.filter((q) => q.record.seq > s.storedThrough);
      if (unstored.length > 0) {
        const started = process.hrtime.bigint();
        const mayExist = (unstored[0] as Queued).record.seq <= s.mayExistThrough;
        // Until it answers, the outcome is unknown: a failure leaves these seq possibly stored.
        s.mayExistThrough = Math.max(s.mayExistThrough, last.seq);
        const entries = unstored.map((q) => ({ record: q.record, text: q.text ?? canonicalRecordText(this.whole(q)) }));
        await evidence.append(session, entries, canonicalRecordText, mayExist);
        this.options.metrics?.storeSeconds?.observe(Number(process.hrtime.bigint() - started) / 1e9);
        s.storedThrough = Math.max(s.storedThrough, last.seq);
        for (const q of unstored) q.text = undefined;
      }
      // A head (and the status after it) costs the API server the same whatever it covers: between heads
      // records are only inserted, and stay in the spool until a head covers them (docs/evidence-store.md).
      const headDue =
        cur === undefined ||
        forced ||
        s.ended ||
        s.abandoned ||
        this.stopped ||
        batch.length >= this.kickRecords ||
        Date.now() - s.lastHeadAt >= this.headIntervalMs;
      if (!headDue) break;
      s.lastHeadAt = Date.now();
      if (cur === undefined) {
        await this.createPart(s, 0, undefined, batch);
      } else {
        const updated = await this.store.append(cur.name, cur.resourceVersion, [], await this.head(cur.name, s, last));
        this.options.metrics?.sessionObjects.inc({ operation: 'head' });
        cur.resourceVersion = updated.metadata.resourceVersion ?? '';
        cur.records += batch.length;
        cur.lastSeq = last.seq;
        this.consume(s, batch);
      }
      written += 1;
      this.acknowledge();
    }
    return written;
  }

  private async continuePart(s: SessionState, cur: Part): Promise<void> {
    // Create the next part first: if the process dies in between, the next sync finds the newest part
    // and marks the older one Continued then.
    const status: SessionStatus = {
      phase: 'Continued',
      ...(s.lastTime === undefined ? {} : { endTime: s.lastTime }),
      counters: { ...s.counters },
    };
    await this.createPart(s, cur.part + 1, cur.name);
    s.continued.push({ name: cur.name, status });
    await this.markContinued(s);
  }

  /** Writes the `Continued` status of earlier parts (kept until it succeeds, so an outage cannot lose it). */
  private async markContinued(s: SessionState): Promise<void> {
    while (s.continued.length > 0) {
      const next = s.continued[0] as { name: string; status: SessionStatus };
      await this.store.patchStatus(next.name, next.status);
      this.options.metrics?.sessionObjects.inc({ operation: 'status' });
      s.continued.shift();
    }
  }

  /** Reads the parts already in Kubernetes and drops queued records they hold. */
  private async sync(s: SessionState): Promise<void> {
    const parts = await this.store.listParts(s.ref.sessionId);
    const counters: Counters = { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 };
    let lastSeq = 0;
    // A part's status counts the session up to and including that part (verify's `status-mismatch`).
    const countedThrough = new Map<Session, Counters>();
    for (const p of parts) {
      for (const r of p.spec.records) {
        countRecord(counters, r);
        lastSeq = Math.max(lastSeq, r.seq);
      }
      countedThrough.set(p, { ...counters });
    }
    const latest = parts[parts.length - 1];
    if (latest?.spec.store !== undefined) {
      // Records are in the evidence store: what the head signs is written; count it there.
      lastSeq = latest.spec.head?.seq ?? 0;
      const evidence = this.evidence;
      if (evidence === undefined)
        throw new Error(`${latest.metadata.name ?? ''} keeps its records in an evidence store, and none is configured`);
      const stored = await evidence.counters(s.ref.sessionId, lastSeq);
      Object.assign(counters, stored);
    }
    s.counters = counters;
    if (latest === undefined) {
      s.current = undefined;
    } else {
      s.identity ??= latest.spec.identity;
      s.startTime ??= latest.spec.startTime;
      const records = latest.spec.records;
      s.current = {
        name: latest.metadata.name ?? sessionObjectName(s.ref.resource, s.ref.sessionId, latest.spec.part, s.longNames),
        part: latest.spec.part,
        stored: latest.spec.store !== undefined,
        resourceVersion: latest.metadata.resourceVersion ?? '',
        records: records.length,
        bytes: Buffer.byteLength(JSON.stringify(latest.spec)) + 2048,
        lastSeq: latest.spec.store === undefined ? (records[records.length - 1]?.seq ?? 0) : lastSeq,
      };
      // A part left Active by a process that died between creating its successor and updating it.
      for (const p of parts.slice(0, -1)) {
        if (p.status?.phase !== 'Continued' && p.metadata.name !== undefined) {
          await this.store.patchStatus(p.metadata.name, {
            phase: 'Continued',
            // From its records, not its status: a process killed after creating the successor, before the
            // `Continued` status, may never have written this part's status at all (then it has none).
            counters: countedThrough.get(p) ?? { ...counters },
          });
        }
      }
    }
    let dropped = 0;
    while (s.head < s.queue.length && (s.queue[s.head] as Queued).record.seq <= lastSeq) {
      s.head += 1;
      dropped += 1;
    }
    if (dropped > 0) {
      this.pending -= dropped;
      this.options.metrics?.pendingRecords.set(this.pending);
      this.logger.info('audit records already in Kubernetes skipped', { sessionId: s.ref.sessionId, dropped, lastSeq });
    }
    s.statusDirty = true;
    s.synced = true;
  }

  private status(s: SessionState): SessionStatus {
    const done = s.head >= s.queue.length;
    const phase = s.ended && done ? 'Closed' : s.abandoned && done ? 'Abandoned' : 'Active';
    const endTime = phase === 'Closed' ? s.endTime : phase === 'Abandoned' ? s.lastTime : undefined;
    return { phase, ...(endTime === undefined ? {} : { endTime }), counters: { ...s.counters } };
  }

  private failed(s: SessionState, err: unknown): void {
    const kind = err instanceof SessionStoreError ? err.kind : 'unavailable';
    // Anything but "unreachable" means our view of the objects may be wrong: read them again first.
    if (kind !== 'unavailable') s.synced = false;
    s.failures += 1;
    if (s.failures === 1) s.firstFailureAt = Date.now();
    const initial = this.options.backoffInitialMs ?? 250;
    const max = this.options.backoffMaxMs ?? 5000;
    const delay = Math.min(max, initial * 2 ** Math.min(s.failures - 1, 16));
    s.retryAt = Date.now() + delay * (0.75 + Math.random() * 0.5);
    const reason =
      kind !== 'unavailable'
        ? kind === 'rejected'
          ? 'rejected'
          : 'conflict'
        : storeRefusal(err)
          ? 'store-refused'
          : 'unavailable';
    this.options.metrics?.flushFailures.inc({ reason });
    const fields = {
      sessionId: s.ref.sessionId,
      object: s.current?.name,
      failures: s.failures,
      retryInMs: Math.round(s.retryAt - Date.now()),
      pendingRecords: this.pending,
      error: err,
    };
    // A conflict after a lost response is routine and resolved by the re-read; say so quietly once.
    if (kind === 'conflict' && s.failures === 1) this.logger.info('audit flush conflict; re-reading session', fields);
    else this.logger.warn('audit flush failed; records stay in the spool', fields);
    if (this.failingSince === 0) this.failingSince = Date.now();
    if (Date.now() - this.lastFailureEvent >= (this.options.eventIntervalMs ?? 60_000) && kind !== 'conflict') {
      this.lastFailureEvent = Date.now();
      this.emit(s, {
        type: 'Warning',
        reason: 'AuditFlushFailed',
        message: `Audit records could not be written to ${this.evidence === undefined ? 'Session objects' : 'the evidence store and Session heads'} (${(err as Error).message}); ${String(this.pending)} records wait in the sidecar's spool and are retried.`,
      });
    }
  }

  private recovered(s: SessionState): void {
    const seconds = Math.round((Date.now() - s.firstFailureAt) / 1000);
    this.logger.info('audit flush recovered', { sessionId: s.ref.sessionId, failures: s.failures, seconds });
    if (this.failingSince !== 0 && this.lastFailureEvent !== 0) {
      this.emit(s, {
        type: 'Normal',
        reason: 'AuditFlushRecovered',
        message: `Audit records are written to Session objects again after ${String(seconds)} s.`,
      });
    }
    this.failingSince = 0;
    s.failures = 0;
    s.retryAt = 0;
  }

  /** Posts an Event about the sidecar's audit trail on its pod. */
  podEvent(event: Omit<StoreEvent, 'involved'>): void {
    this.emit(undefined, event);
  }

  /** Posts an Event on the session's current part, or on the pod when no part exists yet. */
  private emit(s: SessionState | undefined, event: Omit<StoreEvent, 'involved'>): void {
    const involved =
      s?.current === undefined
        ? {
            kind: 'Pod',
            apiVersion: 'v1',
            namespace: this.options.pod.namespace,
            name: this.options.pod.name,
            ...(this.options.pod.uid === undefined || this.options.pod.uid === '' ? {} : { uid: this.options.pod.uid }),
          }
        : { kind: 'Session', apiVersion: API_VERSION, namespace: this.store.namespace, name: s.current.name };
    if (involved.name === '' || involved.namespace === '') return;
    this.store.event({ ...event, involved }).catch((err: unknown) => {
      this.logger.debug('could not post event', { reason: event.reason, error: err });
    });
  }
}
