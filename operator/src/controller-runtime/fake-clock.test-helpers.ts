// A manual clock for tests: time moves only when the test calls advance(), which fires due timers in
// time order (ties in the order they were set) and lets promise callbacks run between them.
import type { Clock, TimerHandle } from './clock.ts';

interface Pending {
  readonly at: number;
  readonly seq: number;
  readonly fn: () => void;
  cancelled: boolean;
}

export class FakeClock implements Clock {
  private current: number;
  private seq = 0;
  private pending: Pending[] = [];

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimer(fn: () => void, delayMs: number): TimerHandle {
    const entry: Pending = { at: this.current + Math.max(0, delayMs), seq: this.seq++, fn, cancelled: false };
    this.pending.push(entry);
    return {
      cancel: () => {
        entry.cancelled = true;
      },
    };
  }

  /** Timers not yet fired or cancelled. */
  get pendingTimers(): number {
    return this.pending.filter((p) => !p.cancelled).length;
  }

  /** Moves time forward by ms, firing every timer that falls due, and settles promise callbacks after each. */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    for (;;) {
      this.pending = this.pending.filter((p) => !p.cancelled);
      const next = this.pending.filter((p) => p.at <= target).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (next === undefined) break;
      this.current = next.at;
      next.cancelled = true;
      next.fn();
      await settle();
    }
    this.current = target;
    await settle();
  }
}

/** Lets queued promise callbacks (and one macrotask turn) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
