// The durable audit sink: every record goes first into the local spool (group-committed with fdatasync,
// so `whenDurable()` tells an engine when it may forward a command) and then, in batches, into Session
// objects by the SessionWriter. Spool entries are acknowledged, and their segments deleted, only once
// their records are in Kubernetes; on start the spool is replayed, and the writer skips what is already
// there. See docs/audit-durability.md.
import { canonicalRecordText, hashRecord, type AuditRecord, type AuditSpoolDurability } from '@chaperone/api';
import type { Registry } from 'prom-client';
import type { Logger } from '../observability/logger.ts';
import { auditMetrics, type AuditMetrics } from './audit-metrics.ts';
import {
  AuditUnavailable,
  recordOriginJson,
  type AuditSink,
  type RecordOrigin,
  type SealedText,
} from './audit-sink.ts';
import { SessionWriter, type SessionWriterOptions } from './session-writer.ts';
import type { EvidenceStore } from './evidence-store.ts';
import type { SessionStore } from './session-store.ts';
import type { SigningKey } from './signing-key.ts';
import { Spool } from './spool.ts';

/** Records that may use the spool's reserve: they describe what already happened and cannot be refused. */
const PRIORITY_TYPES: ReadonlySet<AuditRecord['type']> = new Set(['command.outcome', 'session.end']);
const HIGH_WATER = 0.8;
/** A session reference as read back from the spool. */
type SpooledOrigin = Omit<RecordOrigin, 'resourceType'> & Partial<Pick<RecordOrigin, 'resourceType'>>;
/**
 * A spool entry (`{"i": sessionId, "m": SpooledOutcome}`) that merges a command's outcome into its decision
 * record spooled before it (that session's `seq`): the merged record is that decision with `outcome` and
 * the new `hash`.
 */
interface SpooledOutcome {
  readonly seq: number;
  readonly hash: string;
  readonly outcome: NonNullable<AuditRecord['outcome']>;
}
const LOW_WATER = 0.7;

export interface DurableAuditSinkOptions {
  readonly spoolDir: string;
  /** Bound of the spool, bytes (audit.spoolMaxBytes). */
  readonly spoolMaxBytes: number;
  /** What a statement waits for before it is forwarded (audit.spoolDurability). Default `Synced`. */
  readonly spoolDurability?: AuditSpoolDurability;
  /** Spool segment size; default min(16 MiB, spoolMaxBytes / 8). */
  readonly spoolSegmentBytes?: number;
  readonly flushIntervalMs: number;
  readonly store: SessionStore;
  /** Keep records in this evidence store and only signed heads in Session objects (docs/evidence-store.md). */
  readonly evidence?: EvidenceStore;
  readonly signingKey: SigningKey;
  readonly pod: { readonly name: string; readonly namespace: string; readonly uid?: string };
  readonly logger: Logger;
  /** Registry the audit metrics are registered on (the sidecar's). */
  readonly registry?: Registry;
  /** A second sink every record is also written to (the JSON-lines export). */
  readonly also?: AuditSink;
  /** How long close() waits for the writer to empty the spool before leaving the rest for the next start, ms. Default 5000. */
  readonly closeTimeoutMs?: number;
  /** Called once when the sink closes (stops helpers that live as long as it, such as the certifier). */
  readonly onClose?: () => void;
  /** Tuning of the Session writer (tests and the bench). */
  readonly writer?: Partial<
    Pick<
      SessionWriterOptions,
      | 'maxRecordsPerPart'
      | 'maxBytesPerPart'
      | 'backoffInitialMs'
      | 'backoffMaxMs'
      | 'concurrency'
      | 'eventIntervalMs'
      | 'storeBatchRecords'
      | 'storeHeadIntervalMs'
    >
  >;
}

export class DurableAuditSink implements AuditSink {
  /** Decision records must be on disk before their command runs. */
  readonly deferrable = false;
  readonly spool: Spool;
  readonly writer: SessionWriter;
  private readonly logger: Logger;
  private readonly metrics: AuditMetrics | undefined;
  private readonly also: AuditSink | undefined;
  private readonly closeTimeoutMs: number;
  private readonly onClose: (() => void) | undefined;
  private readonly evidence: EvidenceStore | undefined;
  private readonly highBytes: number;
  private readonly lowBytes: number;
  private high = false;
  private full = false;
  private closed = false;

  private constructor(options: DurableAuditSinkOptions, spool: Spool) {
    this.spool = spool;
    this.logger = options.logger;
    this.metrics = options.registry === undefined ? undefined : auditMetrics(options.registry);
    this.also = options.also;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.onClose = options.onClose;
    this.evidence = options.evidence;
    this.highBytes = spool.maxBytes * HIGH_WATER;
    this.lowBytes = spool.maxBytes * LOW_WATER;
    this.metrics?.spoolMaxBytes.set(spool.maxBytes);
    this.writer = new SessionWriter({
      ...options.writer,
      store: options.store,
      ...(options.evidence === undefined ? {} : { evidence: options.evidence }),
      signingKey: options.signingKey,
      pod: options.pod,
      logger: options.logger,
      ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
      flushIntervalMs: options.flushIntervalMs,
      onAcknowledge: (id) => {
        this.spool.acknowledge(id);
        this.metrics?.spoolBytes.set(this.spool.usedBytes);
        this.checkPressure();
      },
    });
  }

  /** Opens the spool, hands every unacknowledged record to the writer and starts flushing. */
  static open(options: DurableAuditSinkOptions): DurableAuditSink {
    // Memoized per registry: the same object the constructor gets.
    const metrics = options.registry === undefined ? undefined : auditMetrics(options.registry);
    const { spool, entries, repairs } = Spool.open({
      dir: options.spoolDir,
      maxBytes: options.spoolMaxBytes,
      ...(options.spoolDurability === undefined ? {} : { durability: options.spoolDurability }),
      ...(options.spoolSegmentBytes === undefined ? {} : { segmentBytes: options.spoolSegmentBytes }),
      onCommit: (_entries, _bytes, seconds) => {
        metrics?.fsyncSeconds.observe(seconds);
        metrics?.spoolBytes.set(spool.usedBytes);
      },
      onError: (err) => {
        options.logger.error('audit spool I/O error', { error: err, dir: options.spoolDir });
      },
    });
    const sink = new DurableAuditSink(options, spool);
    for (const r of repairs) options.logger.warn('audit spool repaired on replay', { repair: r });
    let replayed = 0;
    for (const e of entries) {
      let parsed: { s?: SpooledOrigin; r?: AuditRecord; i?: string; m?: SpooledOutcome };
      try {
        parsed = JSON.parse(e.payload.toString('utf8')) as typeof parsed;
      } catch (err) {
        options.logger.error('unreadable audit spool entry skipped', { id: e.id, error: err });
        continue;
      }
      if (parsed.m !== undefined) {
        sink.replayOutcome(e.id, parsed.i ?? '', parsed.m);
        continue;
      }
      if (parsed.s === undefined || parsed.r === undefined) {
        options.logger.error('unreadable audit spool entry skipped', { id: e.id });
        continue;
      }
      // Entries spooled before references carried the resource type were all PostgreSQL's (the only engine then).
      const ref: RecordOrigin = { ...parsed.s, resourceType: parsed.s.resourceType ?? 'postgres' };
      sink.writer.enqueue(e.id, ref, parsed.r, true);
      replayed += 1;
    }
    if (replayed > 0) {
      options.logger.info('audit spool replayed', { records: replayed, spoolBytes: spool.usedBytes });
    }
    sink.metrics?.spoolBytes.set(spool.usedBytes);
    sink.writer.start();
    return sink;
  }

  write(session: RecordOrigin, record: AuditRecord, sealed?: SealedText): void {
    let id: number;
    const text = sealed?.canonical ?? canonicalRecordText(record);
    try {
      // `{"s": session, "r": record}`, both in canonical form (the record's is the text it was hashed from).
      const payload = `{"s":${recordOriginJson(session)},"r":${text}}`;
      id = this.spool.append(Buffer.from(payload), PRIORITY_TYPES.has(record.type));
    } catch (err) {
      if (err instanceof AuditUnavailable) this.refused(err);
      throw err;
    }
    this.writer.enqueue(id, session, record, false, Buffer.byteLength(text), text);
    this.also?.write(session, record, sealed);
    if (!this.high && this.spool.usedBytes >= this.highBytes) this.checkPressure();
  }

  /**
   * One record per statement (docs/audit-durability.md): the decision is in the spool already; the outcome
   * goes in as a small entry naming the decision's seq, and the writer forwards the merged record in the
   * decision's place. Refused when the writer has taken the decision (then the outcome is its own record),
   * when a JSON-lines export also gets every record (it has the decision already), or when the spool cannot
   * take the entry.
   */
  amend(session: RecordOrigin, record: AuditRecord, sealed: SealedText): boolean {
    if (this.also !== undefined || record.outcome === undefined) return false;
    if (!this.writer.canAmend(session.sessionId, record.seq)) return false;
    const merge: SpooledOutcome = { seq: record.seq, hash: record.hash, outcome: record.outcome };
    let id: number;
    try {
      // The session id is enough: the decision entry it merges into states the session.
      id = this.spool.append(
        Buffer.from(`{"i":${JSON.stringify(session.sessionId)},"m":${JSON.stringify(merge)}}`),
        true,
      );
    } catch (err) {
      if (err instanceof AuditUnavailable) this.refused(err);
      return false;
    }
    this.writer.amend(id, session.sessionId, record, sealed.canonical);
    return true;
  }

  /** A replayed outcome entry: merged into its decision when that is replayed too (else it is stored already). */
  private replayOutcome(id: number, sessionId: string, merge: SpooledOutcome): void {
    const decision = this.writer.queuedRecord(sessionId, merge.seq);
    if (decision === undefined || decision.type !== 'command.decision' || decision.outcome !== undefined) {
      this.writer.acknowledgeLater(id);
      return;
    }
    const { hash: _, ...unhashed } = { ...decision, outcome: merge.outcome };
    const record: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
    if (record.hash !== merge.hash) {
      // Never so unless the spool was edited: keep the decision as spooled; verify shows the broken link.
      this.logger.error('audit spool outcome entry does not match its decision; decision kept alone', {
        id,
        sessionId,
        seq: merge.seq,
      });
      this.writer.acknowledgeLater(id);
      return;
    }
    this.writer.amend(id, sessionId, record, canonicalRecordText(record));
  }

  whenDurable(): Promise<void> | undefined {
    return this.spool.whenDurable();
  }

  async flush(): Promise<void> {
    await this.spool.whenSynced();
    await this.writer.flush();
    await this.also?.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onClose?.();
    await this.spool.whenSynced()?.catch(() => undefined);
    const emptied = await this.writer.flush(this.closeTimeoutMs);
    await this.writer.stop();
    await this.spool.close();
    await this.evidence?.close().catch(() => undefined);
    if (!emptied) {
      this.logger.warn('audit records left in the spool for the next start', {
        pendingRecords: this.writer.pendingRecords,
      });
    }
    await this.also?.close();
  }

  private refused(err: AuditUnavailable): void {
    this.metrics?.spoolRejected.inc({ reason: err.reason });
    if (err.reason !== 'spool-full' || this.full) return;
    this.full = true;
    this.logger.error('audit spool full: records are refused (fail-closed resources deny statements)', {
      spoolBytes: this.spool.usedBytes,
      spoolMaxBytes: this.spool.maxBytes,
      pendingRecords: this.writer.pendingRecords,
    });
    this.writer.podEvent({
      type: 'Warning',
      reason: 'AuditSpoolFull',
      message: `The audit spool is full (${String(this.spool.usedBytes)} of ${String(this.spool.maxBytes)} bytes): records cannot be accepted until Session objects can be written; fail-closed resources deny statements.`,
    });
  }

  private checkPressure(): void {
    const used = this.spool.usedBytes;
    if (!this.high && used >= this.highBytes) {
      this.high = true;
      this.logger.warn('audit spool above 80 %', { spoolBytes: used, spoolMaxBytes: this.spool.maxBytes });
      this.writer.podEvent({
        type: 'Warning',
        reason: 'AuditSpoolHigh',
        message: `The audit spool is ${String(Math.round((used / this.spool.maxBytes) * 100))} % full: Session objects are not being written fast enough.`,
      });
    } else if (this.high && used < this.lowBytes) {
      this.high = false;
      this.logger.info('audit spool below 70 % again', { spoolBytes: used });
    }
    if (this.full && used < this.highBytes) {
      this.full = false;
      this.logger.info('audit spool has room again', { spoolBytes: used });
    }
  }
}
