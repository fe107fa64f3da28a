// A rate-limited work queue with client-go's semantics (k8s.io/client-go/util/workqueue):
// - a key waiting in the queue is held once, however often it is added (dirty set);
// - a key being processed is never handed out again until done(); adding it meanwhile marks it dirty,
//   and done() puts it back (processing set), so one key is never reconciled twice at once;
// - addAfter() delays an add (the earliest pending time for a key wins), addRateLimited() delays it by
//   the key's backoff, forget() resets that backoff.
// Shutdown differs on one point: once shut down, get() hands out nothing more, even keys still queued,
// because reconciles are level-based and the next start lists every object again. shutDownWithDrain()
// waits for the keys already handed out to be done.
import { systemClock, type Clock, type TimerHandle } from './clock.ts';
import { ExponentialBackoffRateLimiter, type RateLimiter } from './rate-limiter.ts';

export interface WorkQueueOptions {
  /** Backoff for addRateLimited. Default: exponential, 5 ms doubling to 1000 s per key. */
  readonly rateLimiter?: RateLimiter;
  /** Default: the system clock. */
  readonly clock?: Clock;
  /** Called after every change of the queue length (for a depth gauge). */
  readonly onDepth?: (depth: number) => void;
  /** Called for every add that reached the queue (after de-duplication). */
  readonly onAdd?: () => void;
}

interface Waiting {
  readonly at: number;
  readonly timer: TimerHandle;
}

export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly waiting = new Map<string, Waiting>();
  private readonly getters: ((key: string | undefined) => void)[] = [];
  private readonly drainers: (() => void)[] = [];
  private readonly rateLimiter: RateLimiter;
  private readonly clock: Clock;
  private readonly options: WorkQueueOptions;
  private shuttingDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.options = options;
    this.rateLimiter = options.rateLimiter ?? new ExponentialBackoffRateLimiter();
    this.clock = options.clock ?? systemClock;
  }

  /** Queues the key unless it is already queued; a key in processing is queued again when done. */
  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    this.options.onAdd?.();
    const getter = this.getters.shift();
    if (getter !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      getter(key);
      return;
    }
    this.queue.push(key);
    this.options.onDepth?.(this.queue.length);
  }

  /** Adds the key after delayMs; if the key already waits for an earlier time, that time stays. */
  addAfter(key: string, delayMs: number): void {
    if (this.shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = this.clock.now() + delayMs;
    const existing = this.waiting.get(key);
    if (existing !== undefined) {
      if (existing.at <= at) return;
      existing.timer.cancel();
    }
    const timer = this.clock.setTimer(() => {
      this.waiting.delete(key);
      this.add(key);
    }, delayMs);
    this.waiting.set(key, { at, timer });
  }

  /** Adds the key after its backoff (which grows with every call until forget). */
  addRateLimited(key: string): void {
    this.addAfter(key, this.rateLimiter.when(key));
  }

  /** Resets the key's backoff. It does not remove the key from the queue. */
  forget(key: string): void {
    this.rateLimiter.forget(key);
  }

  /** Consecutive rate-limited adds of the key since the last forget. */
  numRequeues(key: string): number {
    return this.rateLimiter.retries(key);
  }

  /** Waits for the next key; undefined once the queue is shut down. The caller must call done(key). */
  get(): Promise<string | undefined> {
    if (this.shuttingDown) return Promise.resolve(undefined);
    const key = this.queue.shift();
    if (key !== undefined) {
      this.options.onDepth?.(this.queue.length);
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.getters.push(resolve));
  }

  /** Marks the key finished; if it was added while processing, it is queued again. */
  done(key: string): void {
    if (!this.processing.delete(key)) return;
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
    if (this.processing.size === 0) {
      for (const drained of this.drainers.splice(0)) drained();
    }
  }

  /** Keys waiting to be handed out. */
  len(): number {
    return this.queue.length;
  }

  /** Keys handed out and not yet done. */
  processingCount(): number {
    return this.processing.size;
  }

  /** Keys waiting for a delayed add. */
  waitingCount(): number {
    return this.waiting.size;
  }

  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  /** Stops accepting keys, drops queued and delayed ones and releases every waiting get() with undefined. */
  shutDown(): void {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    for (const w of this.waiting.values()) w.timer.cancel();
    this.waiting.clear();
    this.queue.length = 0;
    this.dirty.clear();
    this.options.onDepth?.(0);
    for (const getter of this.getters.splice(0)) getter(undefined);
  }

  /** shutDown(), then waits until every key handed out has been marked done. */
  shutDownWithDrain(): Promise<void> {
    this.shutDown();
    if (this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainers.push(resolve));
  }
}
