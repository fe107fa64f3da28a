// Lazily started event loops (docs/sidecar-event-loops.md, "Lazily started loops"): with `eventLoops` unset the
// sidecar serves on the main thread alone, and starts a further loop (a worker thread, event-loops.ts) when the
// main loop is busy: its utilisation over the last half second at `busyUtilisation` or more with at least
// `startAtConnections` open. A lazily started loop that has had no connection for `stopAfterIdleSeconds` is
// drained (it stops accepting; nothing is cut) and its thread ends, which returns its memory.
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { SidecarConfig } from './config.ts';
import type { WorkerLoops } from './event-loops.ts';
import type { Logger } from './core/observability/logger.ts';
import { LOOP_CONNECTIONS_BYTES } from './loop.ts';

/** How often the main loop's utilisation and the connection counts are read. */
export const LAZY_LOOP_SAMPLE_MS = 500;

export interface LazyEventLoopsOptions {
  readonly loops: WorkerLoops;
  /** Loops at most, the main one included. */
  readonly max: number;
  readonly settings: SidecarConfig['lazyEventLoops'];
  /** Listeners configured: LoopShared.openConnections holds one count each. */
  readonly listeners: number;
  readonly openConnections: SharedArrayBuffer;
  readonly loopConnections: SharedArrayBuffer;
  /** The number of running loops changed (the main loop's shares of the bounds follow it). */
  readonly onCountChange: (loops: number) => void;
  readonly logger: Logger;
}

/** What one sample decides (pure: lazyLoopDecision). */
export type LazyLoopStep = 'start' | 'stop' | 'none';

/**
 * Start when the main loop is busy with enough connections for a second loop to take some; stop the last
 * worker once it has been idle long enough and the main loop is not busy (it gets the new connections).
 */
export function lazyLoopDecision(sample: {
  readonly loops: number;
  readonly max: number;
  readonly openConnections: number;
  readonly utilisation: number;
  readonly lastLoopIdleMs: number | undefined;
  readonly settings: SidecarConfig['lazyEventLoops'];
}): LazyLoopStep {
  const { settings } = sample;
  const busy = sample.utilisation >= settings.busyUtilisation;
  if (sample.loops < sample.max && busy && sample.openConnections >= settings.startAtConnections) return 'start';
  if (
    sample.loops > 1 &&
    settings.stopAfterIdleSeconds > 0 &&
    !busy &&
    sample.lastLoopIdleMs !== undefined &&
    sample.lastLoopIdleMs >= settings.stopAfterIdleSeconds * 1000
  ) {
    return 'stop';
  }
  return 'none';
}

export class LazyEventLoops {
  private readonly options: LazyEventLoopsOptions;
  private readonly open: Int32Array;
  private readonly perLoop: Int32Array;
  private timer: NodeJS.Timeout | undefined;
  private last: EventLoopUtilization = performance.eventLoopUtilization();
  /** A start or stop in progress: one at a time. */
  private changing: Promise<void> | undefined;
  /** Since when the last worker loop has had no connection (performance.now()). */
  private idleSince: number | undefined;

  constructor(options: LazyEventLoopsOptions) {
    this.options = options;
    this.open = new Int32Array(options.openConnections, 0, options.listeners);
    this.perLoop = new Int32Array(
      options.loopConnections,
      0,
      options.loopConnections.byteLength / LOOP_CONNECTIONS_BYTES,
    );
  }

  start(): void {
    this.last = performance.eventLoopUtilization();
    // A sample costs a few reads; the timer does not keep the process alive.
    this.timer = setInterval(() => this.sample(), LAZY_LOOP_SAMPLE_MS).unref();
  }

  private sample(): void {
    const now = performance.eventLoopUtilization();
    const utilisation = performance.eventLoopUtilization(now, this.last).utilization;
    this.last = now;
    if (this.changing !== undefined) return;
    const { loops, max, settings } = this.options;
    let openConnections = 0;
    for (let i = 0; i < this.open.length; i++) openConnections += Atomics.load(this.open, i);
    const lastLoop = loops.last;
    const lastIdle = lastLoop !== undefined && Atomics.load(this.perLoop, lastLoop) === 0;
    const at = performance.now();
    if (!lastIdle) this.idleSince = undefined;
    else this.idleSince ??= at;
    const step = lazyLoopDecision({
      loops: loops.count,
      max,
      openConnections,
      utilisation,
      lastLoopIdleMs: this.idleSince === undefined ? undefined : at - this.idleSince,
      settings,
    });
    if (step === 'start') {
      this.options.logger.info('main event loop busy: starting another', {
        utilisation: Number(utilisation.toFixed(2)),
        openConnections,
        loops: loops.count,
      });
      this.change(async () => {
        // The main loop's shares are lowered first: the loops never hold more than configured together.
        this.options.onCountChange(loops.count + 1);
        try {
          await loops.add();
        } finally {
          this.options.onCountChange(loops.count);
        }
      });
    } else if (step === 'stop' && lastLoop !== undefined) {
      this.change(async () => {
        await loops.drain(lastLoop);
        this.options.onCountChange(loops.count);
      });
    }
  }

  private change(work: () => Promise<void>): void {
    this.changing = work()
      .catch((err: unknown) => {
        // A loop that could not start: the sidecar serves on the loops it has (and tries again when busy).
        this.options.logger.warn('event loop start or stop failed', { error: err });
      })
      .finally(() => {
        this.changing = undefined;
        this.idleSince = undefined;
      });
  }

  /**
   * Stops sampling. A start or stop in progress is not waited for: the caller closes every loop next
   * (WorkerLoops.close), which also cuts the connections of a loop being drained instead of waiting for them.
   */
  stop(): void {
    clearInterval(this.timer);
  }
}
