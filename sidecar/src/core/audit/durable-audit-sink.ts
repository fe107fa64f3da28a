// The durable audit sink: every record goes first into the local spool (group-committed with fdatasync,
// so `whenDurable()` tells an engine when it may forward a command) and then, in batches, into Session
// objects by the SessionWriter. Spool entries are acknowledged, and their segments deleted, only once
// their records are in Kubernetes; on start the spool is replayed, and the writer skips what is already
// there. With `worker` the Session writer runs in the audit worker thread (audit-worker.ts) and this sink,
// on the main thread, only spools: the worker reads the records from the frames the spool writes
// (docs/audit-durability.md "Threads").
import { canonicalRecordText, type AuditRecord, type AuditSpoolDurability } from '@chaperone/api';
import type { Registry } from 'prom-client';
import type { Logger } from '../observability/logger.ts';
import { auditMetrics, type AuditMetrics } from './audit-metrics.ts';
import { AuditUnavailable, type AuditSink, type RecordOrigin, type SealedText } from './audit-sink.ts';
import { AuditWorker } from './audit-worker-client.ts';
import type { AuditWorkerStores } from './audit-worker-protocol.ts';
// Types only: the writer (and through its Session store the Kubernetes client, ~40 MiB) is loaded by open()
// for the in-thread writer alone; with the worker only the worker thread loads it.
import type { SessionWriter, SessionWriterTuning } from './session-writer.ts';
import type { EvidenceStore } from './evidence-store.ts';
import type { SessionStore, StoreEvent } from './session-store.ts';
import type { SigningKey } from './signing-key.ts';
import { outcomeEntryText, recordEntryText, ReplayedSpoolEntries } from './spool-entries.ts';
import { Spool } from './spool.ts';

/** Records that may use the spool's reserve: they describe what already happened and cannot be refused. */
const PRIORITY_TYPES: ReadonlySet<AuditRecord['type']> = new Set(['command.outcome', 'session.end']);
const HIGH_WATER = 0.8;
const LOW_WATER = 0.7;

interface DurableAuditSinkCommon {
  readonly spoolDir: string;
  /** Bound of the spool, bytes (audit.spoolMaxBytes). */
  readonly spoolMaxBytes: number;
  /** What a statement waits for before it is forwarded (audit.spoolDurability). Default `Synced`. */
  readonly spoolDurability?: AuditSpoolDurability;
  /** Spool segment size; default min(16 MiB, spoolMaxBytes / 8). */
  readonly spoolSegmentBytes?: number;
  readonly flushIntervalMs: number;
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
  readonly writer?: SessionWriterTuning;
}

/** The Session writer in this thread, writing into these stores (tests, `bench/audit.ts`). */
interface InThreadWriter {
  readonly store: SessionStore;
  /** Keep records in this evidence store and only signed heads in Session objects (docs/evidence-store.md). */
  readonly evidence?: EvidenceStore;
  readonly worker?: undefined;
}

/** The Session writer in the audit worker thread, which builds these stores (the sidecar). */
interface WorkerWriter {
  readonly worker: AuditWorkerStores;
  /** Called once if the worker thread fails: records are refused from then on (the sidecar exits). */
  readonly onWorkerFailure?: (err: Error) => void;
  readonly store?: undefined;
  readonly evidence?: undefined;
}

export type DurableAuditSinkOptions = DurableAuditSinkCommon & (InThreadWriter | WorkerWriter);

export class DurableAuditSink implements AuditSink {
  /** Decision records must be on disk before their command runs. */
  readonly deferrable = false;
  readonly spool: Spool;
  /** The Session writer, when it runs in this thread; else `worker`. */
  private readonly writer: SessionWriter | undefined;
  private readonly worker: AuditWorker | undefined;
  /**
   * With the worker: per session, the seq of its last record when that is a decision the worker holds back
   * for its outcome (amend), and the sweep that saw it first (a decision left open for a whole sweep is
   * released: held, denied, or its outcome never came).
   */
  private readonly open = new Map<string, { seq: number; sweep: number }>();
  private sweeps = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private certificate: string | undefined;
  private workerFailure: Error | undefined;
  private readonly logger: Logger;
  private readonly metrics: AuditMetrics | undefined;
  private readonly also: AuditSink | undefined;
  private readonly closeTimeoutMs: number;
  private readonly onClose: (() => void) | undefined;
  private readonly evidence: EvidenceStore | undefined;
  private readonly signingKey: SigningKey;
  private readonly highBytes: number;
  private readonly lowBytes: number;
  private high = false;
  private full = false;
  private closed = false;

  private constructor(options: DurableAuditSinkOptions, spool: Spool, Writer: typeof SessionWriter | undefined) {
    this.spool = spool;
    this.logger = options.logger;
    this.metrics = options.registry === undefined ? undefined : auditMetrics(options.registry);
    this.also = options.also;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.onClose = options.onClose;
    this.evidence = options.evidence;
    this.signingKey = options.signingKey;
    this.highBytes = spool.maxBytes * HIGH_WATER;
    this.lowBytes = spool.maxBytes * LOW_WATER;
    this.metrics?.spoolMaxBytes.set(spool.maxBytes);
    const onAcknowledge = (id: number) => {
      this.spool.acknowledge(id);
      this.metrics?.spoolBytes.set(this.spool.usedBytes);
      this.checkPressure();
    };
    if (options.worker !== undefined) {
      const key = options.signingKey;
      this.certificate = key.certificate;
      const onWorkerFailure = options.onWorkerFailure;
      this.worker = new AuditWorker({
        data: {
          stores: options.worker,
          signingKey: {
            keyId: key.keyId,
            privateJwk: key.privateJwk,
            publicJwk: key.publicJwk,
            ...(key.certificate === undefined ? {} : { certificate: key.certificate }),
          },
          pod: options.pod,
          flushIntervalMs: options.flushIntervalMs,
          writer: options.writer ?? {},
          holdDecisions: options.also === undefined,
        },
        spoolMaxBytes: spool.maxBytes,
        logger: options.logger,
        ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
        onAcknowledge,
        onFailure: (err) => {
          // Fail closed: what is spooled from now on could not be written; the spool keeps what it has.
          this.workerFailure = err;
          onWorkerFailure?.(err);
        },
      });
      this.sweepTimer = setInterval(() => {
        this.sweep();
      }, options.flushIntervalMs);
      this.sweepTimer.unref();
      this.writer = undefined;
      return;
    }
    this.worker = undefined;
    if (Writer === undefined) throw new Error('the in-thread Session writer is not loaded');
    this.writer = new Writer({
      ...options.writer,
      store: options.store,
      ...(options.evidence === undefined ? {} : { evidence: options.evidence }),
      signingKey: options.signingKey,
      pod: options.pod,
      logger: options.logger,
      ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
      flushIntervalMs: options.flushIntervalMs,
      onAcknowledge,
    });
  }

  /** Opens the spool, hands every unacknowledged record to the writer and starts flushing. */
  static async open(options: DurableAuditSinkOptions): Promise<DurableAuditSink> {
    const Writer = options.worker === undefined ? (await import('./session-writer.ts')).SessionWriter : undefined;
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
      // With the worker, the records reach it as the frames the spool writes (after the replay below).
      ...(options.worker === undefined
        ? {}
        : {
            onFrames: (frames: Buffer) => {
              sink.worker?.forward(frames);
            },
          }),
    });
    const sink = new DurableAuditSink(options, spool, Writer);
    for (const r of repairs) options.logger.warn('audit spool repaired on replay', { repair: r });
    if (sink.writer !== undefined) {
      let replayed = 0;
      const replay = new ReplayedSpoolEntries(sink.writer, options.logger);
      for (const e of entries) {
        if (replay.entry(e.id, e.payload.toString('utf8'))) replayed += 1;
      }
      replay.end();
      if (replayed > 0) {
        options.logger.info('audit spool replayed', { records: replayed, spoolBytes: spool.usedBytes });
      }
      sink.writer.start();
    } else if (sink.worker !== undefined) {
      // The worker parses them (and logs what it cannot read).
      for (const e of entries) sink.worker.replay(e.id, e.payload.toString('utf8'));
      sink.worker.endReplay();
      if (entries.length > 0) {
        options.logger.info('audit spool replayed', { entries: entries.length, spoolBytes: spool.usedBytes });
      }
    }
    sink.metrics?.spoolBytes.set(spool.usedBytes);
    return sink;
  }

  /** Resolves once the Session writer runs (at once in this thread); rejects if the worker could not start. */
  async ready(): Promise<void> {
    await this.worker?.ready();
  }

  write(session: RecordOrigin, record: AuditRecord, sealed?: SealedText): void {
    let id: number;
    const text = sealed?.canonical ?? canonicalRecordText(record);
    if (this.workerFailure !== undefined) {
      const err = this.workerFailed();
      this.metrics?.spoolRejected.inc({ reason: err.reason });
      throw err;
    }
    try {
      id = this.spool.appendText(recordEntryText(session, text), PRIORITY_TYPES.has(record.type));
    } catch (err) {
      if (err instanceof AuditUnavailable) this.refused(err);
      throw err;
    }
    if (this.worker === undefined) {
      this.writer?.enqueue(id, session, record, false, Buffer.byteLength(text), text);
    } else if (this.also === undefined && record.type === 'command.decision' && record.outcome === undefined) {
      // A decision the worker holds back until its outcome is merged, another record follows, or a sweep
      // (it reads the record from the spool's frames).
      const open = this.open.get(session.sessionId);
      if (open === undefined) this.open.set(session.sessionId, { seq: record.seq, sweep: this.sweeps });
      else {
        open.seq = record.seq;
        open.sweep = this.sweeps;
      }
    } else {
      this.open.delete(session.sessionId);
    }
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
    const outcome = record.outcome;
    if (this.also !== undefined || outcome === undefined) return false;
    if (this.worker !== undefined) {
      // The worker holds an open decision back until this thread says otherwise: no race with its writes.
      if (this.open.get(session.sessionId)?.seq !== record.seq || this.workerFailure !== undefined) return false;
    } else if (this.writer?.canAmend(session.sessionId, record.seq) !== true) {
      return false;
    }
    let id: number;
    try {
      const merge = { seq: record.seq, hash: record.hash, outcome };
      id = this.spool.appendText(outcomeEntryText(session.sessionId, merge), true);
    } catch (err) {
      if (err instanceof AuditUnavailable) this.refused(err);
      return false;
    }
    if (this.worker !== undefined) {
      // The worker merges the outcome entry into the decision it holds.
      this.open.delete(session.sessionId);
    } else {
      this.writer?.amend(id, session.sessionId, record, sealed.canonical);
    }
    return true;
  }

  /**
   * With the worker, once per flush interval: releases decisions left open since the last sweep (their
   * outcome did not come in time: a held or denied command, or a long one) and passes on the signing key's
   * certificate once the operator has issued it.
   */
  private sweep(): void {
    const worker = this.worker;
    if (worker === undefined) return;
    for (const [sessionId, o] of this.open) {
      if (o.sweep >= this.sweeps) continue;
      this.open.delete(sessionId);
      worker.release(sessionId, o.seq);
    }
    this.sweeps += 1;
    const certificate = this.signingKey.certificate;
    if (certificate !== undefined && certificate !== this.certificate) {
      this.certificate = certificate;
      worker.certificate(certificate);
    }
  }

  private workerFailed(): AuditUnavailable {
    return new AuditUnavailable('closed', 'the audit worker thread failed; the sidecar is stopping', {
      cause: this.workerFailure,
    });
  }

  /** Every open decision may be written now (flush, close). */
  private releaseAll(): void {
    for (const [sessionId, o] of this.open) this.worker?.release(sessionId, o.seq);
    this.open.clear();
  }

  /** Records accepted and not yet written (with the worker, as of its last report). */
  get pendingRecords(): number {
    return this.writer?.pendingRecords ?? this.worker?.pendingRecords ?? 0;
  }

  /** Posts an Event about the sidecar's audit trail on its pod. */
  podEvent(event: Omit<StoreEvent, 'involved'>): void {
    if (this.worker !== undefined) this.worker.podEvent(event);
    else this.writer?.podEvent(event);
  }

  whenDurable(): Promise<void> | undefined {
    return this.spool.whenDurable();
  }

  async flush(): Promise<void> {
    await this.spool.whenSynced();
    if (this.workerFailure !== undefined) throw this.workerFailed();
    if (this.worker !== undefined) {
      this.sweep();
      this.releaseAll();
      await this.worker.flush();
    } else {
      await this.writer?.flush();
    }
    await this.also?.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onClose?.();
    await this.spool.whenSynced()?.catch(() => undefined);
    let emptied: boolean;
    if (this.worker !== undefined) {
      clearInterval(this.sweepTimer);
      this.sweep();
      this.releaseAll();
      // The worker writes what it can, stops its writer and closes the evidence store's connections.
      ({ emptied } = await this.worker.close(this.closeTimeoutMs));
      await this.spool.close();
    } else {
      emptied = (await this.writer?.flush(this.closeTimeoutMs)) ?? true;
      await this.writer?.stop();
      await this.spool.close();
      await this.evidence?.close().catch(() => undefined);
    }
    if (!emptied) {
      this.logger.warn('audit records left in the spool for the next start', {
        pendingRecords: this.pendingRecords,
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
      pendingRecords: this.pendingRecords,
    });
    this.podEvent({
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
      this.podEvent({
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
