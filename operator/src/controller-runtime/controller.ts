// The controller runner, after controller-runtime's pkg/internal/controller: sources enqueue keys into a
// rate-limited work queue; N workers take keys and reconcile them. The runner owns the cross-cutting
// concerns so reconcilers stay plain: every reconcile gets an id (in its logs) and a deadline; anything
// thrown becomes an error and a rate-limited retry; a TerminalError is logged and not retried; success
// resets the key's backoff; requeueAfter schedules a revisit; every key is revisited at each resync.
import { randomUUID } from 'node:crypto';
import type { Logger } from '../observability/logger.ts';
import type { OperatorMetrics, ReconcileResultLabel } from '../observability/metrics.ts';
import { RECONCILE_RESULTS } from '../observability/metrics.ts';
import { systemClock, type Clock, type TimerHandle } from './clock.ts';
import type { RateLimiter } from './rate-limiter.ts';
import {
  asError,
  parseKey,
  ReconcileTimeoutError,
  TerminalError,
  type Reconciler,
  type ReconcileResult,
} from './reconcile.ts';
import type { Source } from './source.ts';
import { WorkQueue } from './work-queue.ts';

export interface ControllerOptions {
  /** Controller name, for logs, metrics and the queue. */
  readonly name: string;
  readonly reconciler: Reconciler;
  /** Where keys come from; the controller starts them before its workers and stops them on stop(). */
  readonly sources: readonly Source[];
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  /** Concurrent reconciles (of different keys). Default 2. */
  readonly workers?: number;
  /** Deadline of one reconcile in milliseconds; its signal is aborted then. Default 60 000. */
  readonly reconcileTimeoutMs?: number;
  /** Every key of the primary sources is enqueued this often, in milliseconds; 0 disables. Default 600 000 (10 min). */
  readonly resyncPeriodMs?: number;
  /** Default: exponential per-key backoff, 5 ms to 1000 s. */
  readonly rateLimiter?: RateLimiter;
  readonly clock?: Clock;
}

export class Controller {
  readonly name: string;
  private readonly options: ControllerOptions;
  private readonly clock: Clock;
  private readonly queue: WorkQueue;
  private readonly logger: Logger;
  private readonly stopping = new AbortController();
  private readonly inFlight = new Set<AbortController>();
  private workers: Promise<void>[] = [];
  private resyncTimer: TimerHandle | undefined;
  private started = false;
  private stopped: Promise<void> | undefined;

  constructor(options: ControllerOptions) {
    this.options = options;
    this.name = options.name;
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger.child({ controller: options.name });
    const { metrics } = options;
    const label = { name: options.name };
    this.queue = new WorkQueue({
      clock: this.clock,
      ...(options.rateLimiter === undefined ? {} : { rateLimiter: options.rateLimiter }),
      onDepth: (depth) => metrics.queueDepth.set(label, depth),
      onAdd: () => metrics.queueAdds.inc(label),
    });
    // Created up front so dashboards see zeros rather than missing series.
    for (const result of RECONCILE_RESULTS) metrics.reconcileTotal.inc({ controller: options.name, result }, 0);
    metrics.queueDepth.set(label, 0);
    metrics.queueAdds.inc(label, 0);
    metrics.queueRetries.inc(label, 0);
    metrics.activeWorkers.set({ controller: options.name }, 0);
  }

  /** Enqueues a key by hand (tests, or other controllers' watches). */
  enqueue(key: string): void {
    this.queue.add(key);
  }

  /** Starts the sources, waits until they have synced, then starts the workers and the resync timer. */
  async start(): Promise<void> {
    if (this.started) throw new Error(`controller ${this.name} already started`);
    this.started = true;
    const enqueue = (key: string) => {
      this.queue.add(key);
    };
    await Promise.all(this.options.sources.map((s) => s.start(enqueue, this.stopping.signal)));
    if (this.stopping.signal.aborted) return;
    const workers = this.options.workers ?? 2;
    this.logger.info('caches synced; starting workers', { workers });
    for (let i = 0; i < workers; i++) this.workers.push(this.work());
    this.scheduleResync();
  }

  /**
   * Stops the sources and the queue; reconciles in progress are told to stop (their signal aborts) and
   * are waited for, at most graceMs (default 30 000).
   */
  stop(graceMs = 30_000): Promise<void> {
    this.stopped ??= this.shutdown(graceMs);
    return this.stopped;
  }

  private async shutdown(graceMs: number): Promise<void> {
    this.stopping.abort();
    this.resyncTimer?.cancel();
    await Promise.allSettled(this.options.sources.map((s) => s.stop()));
    for (const c of this.inFlight) c.abort(new Error('controller stopping'));
    let timer: TimerHandle | undefined;
    const grace = new Promise<'timeout'>((resolve) => {
      timer = this.clock.setTimer(() => resolve('timeout'), graceMs);
    });
    const drained = this.queue.shutDownWithDrain().then(() => Promise.all(this.workers));
    const outcome = await Promise.race([drained, grace]);
    timer?.cancel();
    if (outcome === 'timeout') {
      this.logger.warn('stopped with reconciles still running', { inFlight: this.queue.processingCount() });
    } else {
      this.logger.info('stopped');
    }
  }

  private scheduleResync(): void {
    const period = this.options.resyncPeriodMs ?? 600_000;
    if (period <= 0 || this.stopping.signal.aborted) return;
    this.resyncTimer = this.clock.setTimer(() => {
      for (const source of this.options.sources) for (const key of source.keys?.() ?? []) this.queue.add(key);
      this.scheduleResync();
    }, period);
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      await this.process(key);
    }
  }

  /**
   * One reconcile of one key. The key is marked done only when the reconcile has really finished, even if
   * the worker moved on after the deadline, so one key never runs twice at once.
   */
  private async process(key: string): Promise<void> {
    const { metrics, reconciler } = this.options;
    const timeoutMs = this.options.reconcileTimeoutMs ?? 60_000;
    const reconcileId = randomUUID();
    const logger = this.logger.child({ key, reconcileID: reconcileId });
    const abort = new AbortController();
    this.inFlight.add(abort);
    const started = performance.now();
    metrics.activeWorkers.inc({ controller: this.name });
    // Promise.resolve().then() turns a synchronous throw into a rejection like any other.
    const run = Promise.resolve().then(() =>
      reconciler.reconcile(parseKey(key), { reconcileId, signal: abort.signal, logger }),
    );
    let timer: TimerHandle | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = this.clock.setTimer(() => {
        const err = new ReconcileTimeoutError(timeoutMs);
        abort.abort(err);
        reject(err);
      }, timeoutMs);
    });
    const finished = run.then(
      () => undefined,
      () => undefined,
    );
    void finished.then(() => {
      this.inFlight.delete(abort);
      this.queue.done(key);
    });
    let label: ReconcileResultLabel;
    try {
      const result: ReconcileResult | undefined = await Promise.race([run, deadline]);
      this.queue.forget(key);
      const after = result?.requeueAfterMs;
      if (after !== undefined && after > 0) {
        label = 'requeue_after';
        this.queue.addAfter(key, after);
        logger.debug('reconciled; requeue scheduled', { requeueAfterMs: after });
      } else {
        label = 'success';
        logger.debug('reconciled');
      }
    } catch (thrown) {
      const err = asError(thrown);
      if (err instanceof TerminalError) {
        label = 'terminal_error';
        this.queue.forget(key);
        logger.error('reconcile failed; not retrying', { error: err });
      } else {
        label = 'error';
        this.queue.addRateLimited(key);
        metrics.queueRetries.inc({ name: this.name });
        logger.error('reconcile failed; retrying with backoff', { error: err, retries: this.queue.numRequeues(key) });
      }
    } finally {
      timer?.cancel();
      metrics.activeWorkers.dec({ controller: this.name });
    }
    metrics.reconcileTotal.inc({ controller: this.name, result: label });
    metrics.reconcileSeconds.observe({ controller: this.name }, (performance.now() - started) / 1000);
  }
}
