// Lazily started event loops (docs/sidecar-event-loops.md, "Lazily started loops"): with `eventLoops` unset the
// sidecar serves on the main thread alone, and starts a further loop (a worker thread, event-loops.ts) when the
// main loop is busy: its utilisation over the last half second at `busyUtilisation` or more with at least
// `startAtConnections` open, or at once on a burst of logins (`startOnLogins` accepted within half a second with
// at least `startAtConnections` open: the logins are the load). A lazily started loop that has had no connection for `stopAfterIdleSeconds` is
// drained (it stops accepting; nothing is cut) and its thread ends, which returns its memory.
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { SidecarConfig } from './config.ts';
import type { LoopStartTrigger, WorkerLoops } from './event-loops.ts';
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
 * On an accept of the main loop: whether a burst of logins starts a further loop now instead of at the next
 * sample. `acceptedWithinWindow`: whether the last `startOnLogins` accepts all fell within LAZY_LOOP_SAMPLE_MS.
 */
export function loginBurstStarts(sample: {
  readonly loops: number;
  readonly max: number;
  readonly openConnections: number;
  readonly acceptedWithinWindow: boolean;
  readonly settings: SidecarConfig['lazyEventLoops'];
}): boolean {
  return (
    sample.settings.startOnLogins > 0 &&
    sample.loops < sample.max &&
    sample.acceptedWithinWindow &&
    sample.openConnections >= sample.settings.startAtConnections
  );
}

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
  /** The main loop's last `startOnLogins` accept times (performance.now()), a ring; `next` is the oldest. */
  private readonly accepts: Float64Array;
  private next = 0;

  constructor(options: LazyEventLoopsOptions) {
    this.options = options;
    this.open = new Int32Array(options.openConnections, 0, options.listeners);
    this.perLoop = new Int32Array(
      options.loopConnections,
      0,
      options.loopConnections.byteLength / LOOP_CONNECTIONS_BYTES,
    );
    this.accepts = new Float64Array(options.settings.startOnLogins);
  }

  start(): void {
    this.last = performance.eventLoopUtilization();
    // A sample costs a few reads; the timer does not keep the process alive.
    this.timer = setInterval(() => this.sample(), LAZY_LOOP_SAMPLE_MS).unref();
  }

  /**
   * The main loop accepted a connection (ResourceListener, through LoopPlace.onAccept): a few reads and a
   * store, nothing else unless a burst of logins starts a loop now.
   */
  noteAccept(): void {
    const ring = this.accepts;
    if (ring.length === 0) return;
    const now = performance.now();
    const oldest = ring[this.next] ?? 0;
    ring[this.next] = now;
    this.next = (this.next + 1) % ring.length;
    if (this.changing !== undefined || oldest === 0 || now - oldest > LAZY_LOOP_SAMPLE_MS) return;
    const { loops, max, settings } = this.options;
    const openConnections = this.openConnections();
    if (!loginBurstStarts({ loops: loops.count, max, openConnections, acceptedWithinWindow: true, settings })) return;
    this.options.logger.info('burst of logins: starting another event loop', {
      logins: ring.length,
      withinMs: Math.round(now - oldest),
      openConnections,
      loops: loops.count,
    });
    this.startLoop('logins');
  }

  private openConnections(): number {
    let open = 0;
    for (let i = 0; i < this.open.length; i++) open += Atomics.load(this.open, i);
    return open;
  }

  private startLoop(trigger: LoopStartTrigger): void {
    const { loops } = this.options;
    this.change(async () => {
      // The main loop's shares are lowered first: the loops never hold more than configured together.
      this.options.onCountChange(loops.count + 1);
      try {
        await loops.add(trigger);
      } finally {
        this.options.onCountChange(loops.count);
      }
    });
  }

  private sample(): void {
    const now = performance.eventLoopUtilization();
    const utilisation = performance.eventLoopUtilization(now, this.last).utilization;
    this.last = now;
    if (this.changing !== undefined) return;
    const { loops, max, settings } = this.options;
    const openConnections = this.openConnections();
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
      this.startLoop('busy');
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
