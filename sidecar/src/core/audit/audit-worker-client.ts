// The main thread's side of the audit worker thread (audit-worker.ts): starts it, passes it the spool's
// frames of every 20 ms in one message (their bytes, transferred: no string per record to clone), applies
// its acknowledgements and metric updates, and asks it to flush and to stop. A worker that fails (an
// exception, an exit nobody asked for) is reported once to `onFailure`; what follows is the durable sink's
// decision (docs/audit-durability.md "Threads").
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../observability/logger.ts';
import type { AuditMetrics } from './audit-metrics.ts';
import { type AuditWorkerData, type FromWorker, type ToWorker, type WorkerMetrics } from './audit-worker-protocol.ts';
import type { StoreEvent } from './session-store.ts';

/**
 * How long entries wait on the main thread before they go to the worker in one message, ms. Each message
 * wakes the worker thread, and waking it costs the main thread a system call and a cross-CPU wake-up: once
 * per event-loop turn that cost more main-thread CPU per statement than the writer saved (bench/README.md).
 * The writer flushes once a second anyway; flush() and close() send at once.
 */
const POST_INTERVAL_MS = 20;
/** Frame bytes (or replayed entries) after which a message goes at once, so that no message grows large. */
const POST_MAX_BYTES = 4 * 1024 * 1024;
const POST_MAX_ITEMS = 2 * 4096;
/** The first frames buffer's size; later ones start at the size the last one grew to. */
const FRAMES_INITIAL_BYTES = 256 * 1024;

/**
 * The worker's old generation, MiB: at least WORKER_OLD_GENERATION_MIN_MB, and room for every record the spool
 * may hold (an outage of the store or the API server queues them all in the worker) at
 * WORKER_HEAP_PER_SPOOL_BYTE heap bytes per spool byte, above what the worker holds at rest
 * (WORKER_OLD_GENERATION_BASE_MB: its modules, the Kubernetes client's among them).
 *
 * Why a bound at all: V8 lets an old generation grow to up to 4× what survived its last full collection
 * before the next one when the heap's maximum is 2 GiB or more (the default here), and ~1.3–2× when it is
 * smaller (heap-controller.h, MaxGrowingFactor). The worker's records live for seconds (until their head is
 * written), so they are promoted and then wait as garbage: under load its heap grew to ~200 MiB around ~80
 * MiB live, and stayed there while idle (bench/README.md, issue 18, "The store sidecar's memory under load").
 */
const WORKER_OLD_GENERATION_MIN_MB = 512;
const WORKER_OLD_GENERATION_BASE_MB = 128;
const WORKER_HEAP_PER_SPOOL_BYTE = 2;

/** The worker's resourceLimits.maxOldGenerationSizeMb for a spool bounded at `spoolMaxBytes`. */
export function workerOldGenerationMb(spoolMaxBytes: number): number {
  const forSpool = Math.ceil((spoolMaxBytes * WORKER_HEAP_PER_SPOOL_BYTE) / (1024 * 1024));
  return Math.max(WORKER_OLD_GENERATION_MIN_MB, WORKER_OLD_GENERATION_BASE_MB + forSpool);
}

export interface AuditWorkerOptions {
  readonly data: AuditWorkerData;
  /** The spool's bound (audit.spoolMaxBytes; default its default, 256 MiB): sizes the worker's heap (workerOldGenerationMb). */
  readonly spoolMaxBytes?: number;
  readonly logger: Logger;
  readonly metrics?: AuditMetrics;
  /** Every spool entry up to this id is written (records and heads). */
  readonly onAcknowledge: (id: number) => void;
  /** Called once when the worker fails; it is not restarted. */
  readonly onFailure: (err: Error) => void;
}

/**
 * The worker's script: next to this module in the sources (and tsc's output); in the sidecar's bundle
 * (sidecar/scripts/build.ts) an entry of its own at the bundle's root, this module being in a chunk.
 */
function workerScript(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL('./audit-worker.ts', here);
  for (const candidate of ['./audit-worker.js', '../audit-worker.js']) {
    const url = new URL(candidate, here);
    if (existsSync(url)) return url;
  }
  throw new Error(`the audit worker's script is not next to ${here}`);
}

export class AuditWorker {
  private readonly worker: Worker;
  private readonly options: AuditWorkerOptions;
  private replayed: (string | number)[] = [];
  private releases: (string | number)[] = [];
  /**
   * The spool's frames since the last message: `framesBytes` bytes of `frames`, a buffer of its own (not
   * Node's pool) whose memory the message transfers to the worker.
   */
  private frames = Buffer.allocUnsafeSlow(FRAMES_INITIAL_BYTES);
  private framesBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushes = 0;
  private readonly flushWaiters = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  private closeWaiter: ((result: { emptied: boolean; pending: number }) => void) | undefined;
  private readonly started: Promise<void>;
  private failure: Error | undefined;
  private closing = false;
  private isReady = false;
  private pending = 0;

  constructor(options: AuditWorkerOptions) {
    this.options = options;
    this.worker = new Worker(workerScript(), {
      workerData: options.data,
      resourceLimits: { maxOldGenerationSizeMb: workerOldGenerationMb(options.spoolMaxBytes ?? 256 * 1024 * 1024) },
    });
    let ready: () => void = () => undefined;
    let failed: (err: Error) => void = () => undefined;
    this.started = new Promise<void>((res, rej) => {
      ready = res;
      failed = rej;
    });
    // Rejected only before `ready`; whoever awaits ready() sees it, and later failures go to onFailure.
    this.started.catch(() => undefined);
    this.worker.on('message', (message: FromWorker) => {
      switch (message.t) {
        case 'ready':
          this.isReady = true;
          ready();
          break;
        case 'ack':
          options.onAcknowledge(message.id);
          break;
        case 'metrics':
          this.applyMetrics(message.metrics);
          break;
        case 'flushed': {
          const waiter = this.flushWaiters.get(message.n);
          this.flushWaiters.delete(message.n);
          waiter?.resolve();
          break;
        }
        case 'closed':
          this.pending = message.pending;
          this.closeWaiter?.({ emptied: message.emptied, pending: message.pending });
          break;
      }
    });
    this.worker.on('error', (err: Error) => {
      failed(err);
      this.failed(err);
    });
    this.worker.on('exit', (code) => {
      const err = new Error(`the audit worker thread exited (code ${String(code)})`);
      failed(err);
      if (!this.closing) this.failed(err);
      this.closeWaiter?.({ emptied: false, pending: this.pending });
    });
  }

  /** Resolves once the worker has built its stores and started flushing; rejects if it could not. */
  ready(): Promise<void> {
    return this.started;
  }

  /** Records accepted and not yet written, as of the worker's last report. */
  get pendingRecords(): number {
    return this.pending;
  }

  /** Frames the spool writes (Spool's onFrames): copied, they go to the worker with the next message. */
  forward(data: Buffer): void {
    const need = this.framesBytes + data.length;
    if (need > this.frames.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(need, this.frames.length * 2));
      this.frames.copy(grown, 0, 0, this.framesBytes);
      this.frames = grown;
    }
    data.copy(this.frames, this.framesBytes);
    this.framesBytes = need;
    this.schedule();
  }

  /** The open decision `seq` of `sessionId` will not be amended. */
  release(sessionId: string, seq: number): void {
    this.releases.push(sessionId, seq);
    this.schedule();
  }

  /** An entry read back from the spool of an earlier process. */
  replay(id: number, payload: string): void {
    this.replayed.push(id, payload);
    this.schedule();
  }

  /** Every entry read back from the spool was passed to replay(). */
  endReplay(): void {
    this.post();
    this.send({ t: 'replayed' });
  }

  podEvent(event: Omit<StoreEvent, 'involved'>): void {
    this.send({ t: 'event', event });
  }

  certificate(certificate: string): void {
    this.send({ t: 'certificate', certificate });
  }

  /** Resolves once every entry passed so far is written (records and heads). */
  flush(): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    this.post();
    const n = ++this.flushes;
    return new Promise<void>((resolve, reject) => {
      this.flushWaiters.set(n, { resolve, reject });
      this.send({ t: 'flush', n });
    });
  }

  /**
   * Writes what it can within `timeoutMs`, stops the worker and ends the thread. `emptied`: everything passed
   * was written; else `pending` records stay in the spool for the next start.
   */
  async close(timeoutMs: number): Promise<{ emptied: boolean; pending: number }> {
    this.post();
    this.closing = true;
    let result = { emptied: false, pending: this.pending };
    if (this.failure === undefined) {
      result = await new Promise<{ emptied: boolean; pending: number }>((resolve) => {
        this.closeWaiter = resolve;
        this.send({ t: 'close', timeoutMs });
      });
    }
    await this.worker.terminate();
    return result;
  }

  private send(message: ToWorker): void {
    if (this.failure !== undefined) return;
    this.worker.postMessage(message);
  }

  private schedule(): void {
    // A large batch (a busy interval, a replayed spool) goes at once, in parts rather than one huge message.
    if (this.framesBytes >= POST_MAX_BYTES || this.replayed.length >= POST_MAX_ITEMS) {
      this.post();
      return;
    }
    if (this.timer !== undefined) return;
    this.timer = setTimeout(this.post, POST_INTERVAL_MS);
  }

  /** One message with every frame, replayed entry and release since the last. */
  private readonly post = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.framesBytes === 0 && this.replayed.length === 0 && this.releases.length === 0) return;
    const { replayed, releases, framesBytes } = this;
    this.replayed = [];
    this.releases = [];
    if (this.failure !== undefined) return;
    if (framesBytes === 0) {
      this.worker.postMessage({ t: 'entries', replay: replayed, releases } satisfies ToWorker);
      return;
    }
    const frames = new Uint8Array(this.frames.buffer, this.frames.byteOffset, framesBytes);
    // The next buffer as large as this one became (a burst's stays no larger than a message's bound).
    this.frames = Buffer.allocUnsafeSlow(Math.min(this.frames.length, POST_MAX_BYTES));
    this.framesBytes = 0;
    this.worker.postMessage({ t: 'entries', replay: replayed, frames, releases } satisfies ToWorker, [frames.buffer]);
  };

  private applyMetrics(m: WorkerMetrics): void {
    this.pending = m.pending;
    const metrics = this.options.metrics;
    if (metrics === undefined) return;
    metrics.pendingRecords.set(m.pending);
    if (m.flushed > 0) metrics.flushedRecords.inc(m.flushed);
    for (const [reason, n] of Object.entries(m.failures)) metrics.flushFailures.inc({ reason }, n);
    for (const [operation, n] of Object.entries(m.objects)) metrics.sessionObjects.inc({ operation }, n);
    for (const s of m.storeSeconds) metrics.storeSeconds?.observe(s);
  }

  private failed(err: Error): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const w of this.flushWaiters.values()) w.reject(err);
    this.flushWaiters.clear();
    // Before `ready` the failure is ready()'s rejection: the sidecar does not start (its stores' configuration).
    if (!this.isReady) return;
    this.options.logger.error('audit worker thread failed', { error: err });
    this.options.onFailure(err);
  }
}
