// The bookkeeping of parked upstream sessions (docs/postgres-engine.md, "Upstream session reuse"): which
// logged-in, reset upstream connections wait for the next agent connection with the same login key, and
// when they must go (too many per key or in all, idle too long, alive too long). No sockets here: an entry
// is anything that can be closed, so the bounds and timeouts are tested on their own (upstream-pool.test.ts);
// upstream-reuse.ts puts PostgreSQL connections in it.

/** Why a connection was closed instead of being parked or reused (the discards counter's `reason`). */
export type DiscardReason =
  /** The agent connection did not end cleanly (no Terminate, or the upstream was not idle). */
  | 'unclean'
  /** DISCARD ALL or the check after it failed, timed out, or left the session different from its login. */
  | 'reset-failed'
  /** The connection ran something no reset can undo or see (LOAD, a DO block; upstream-reuse.ts statementResidue). */
  | 'unresettable'
  /** The key already had maxParkedPerKey, or the pool maxParked. */
  | 'full'
  | 'idle-timeout'
  | 'lifetime'
  /** The server closed the connection, or sent something, while it was parked. */
  | 'closed'
  /** Reuse is switched off. */
  | 'disabled'
  /** The sidecar is stopping. */
  | 'shutdown'
  /** A new login found the server out of connection slots: parked sessions give theirs back. */
  | 'slots';

export interface UpstreamPoolBounds {
  /** Parked connections per login key. */
  readonly maxParkedPerKey: number;
  /** Parked connections in all. */
  readonly maxParked: number;
  /** A connection parked longer than this is closed (PgBouncer's server_idle_timeout), ms. */
  readonly idleTimeoutMs: number;
  /** A connection older than this (since its login) is closed rather than parked or reused (server_lifetime), ms. */
  readonly maxLifetimeMs: number;
}

export interface Parkable {
  /** When the connection logged in (the pool's clock). */
  readonly loggedInAt: number;
  /** Closes the connection for good. */
  discard(reason: DiscardReason): void;
}

interface Parked<T> {
  readonly key: string;
  readonly item: T;
  readonly parkedAt: number;
}

export interface UpstreamPoolOptions {
  readonly bounds: UpstreamPoolBounds;
  /** The clock (ms); default Date.now. */
  readonly now?: () => number;
  /** Told whenever the number of parked connections changes. */
  readonly onSizeChange?: (size: number) => void;
}

export class UpstreamPool<T extends Parkable> {
  private readonly bounds: UpstreamPoolBounds;
  private readonly now: () => number;
  private readonly onSizeChange: (size: number) => void;
  /** Per key, most recently parked last: take() reuses the warmest one. */
  private readonly byKey = new Map<string, Parked<T>[]>();
  private count = 0;

  constructor(options: UpstreamPoolOptions) {
    this.bounds = options.bounds;
    this.now = options.now ?? Date.now;
    this.onSizeChange = options.onSizeChange ?? (() => undefined);
  }

  get size(): number {
    return this.count;
  }

  /** Whether a connection that logged in at `loggedInAt` is past its lifetime now. */
  expired(loggedInAt: number): boolean {
    return this.now() - loggedInAt >= this.bounds.maxLifetimeMs;
  }

  /**
   * Parks `item` under `key`; when it cannot be parked (bounds, lifetime) it is discarded instead and false
   * is returned. The caller must not use `item` after this call either way: it belongs to the pool.
   */
  park(key: string, item: T): boolean {
    if (this.expired(item.loggedInAt)) {
      item.discard('lifetime');
      return false;
    }
    const list = this.byKey.get(key) ?? [];
    if (list.length >= this.bounds.maxParkedPerKey || this.count >= this.bounds.maxParked) {
      item.discard('full');
      return false;
    }
    list.push({ key, item, parkedAt: this.now() });
    this.byKey.set(key, list);
    this.resized(1);
    return true;
  }

  /** Takes the most recently parked connection of `key` that is within its lifetime; it leaves the pool. */
  take(key: string): T | undefined {
    const list = this.byKey.get(key);
    if (list === undefined) return undefined;
    let taken: T | undefined;
    while (taken === undefined && list.length > 0) {
      const entry = list.pop() as Parked<T>;
      this.resized(-1);
      if (this.expired(entry.item.loggedInAt)) entry.item.discard('lifetime');
      else taken = entry.item;
    }
    if (list.length === 0) this.byKey.delete(key);
    return taken;
  }

  /** Removes a parked connection that went away by itself (the server closed it), discarding it with `reason`. */
  remove(item: T, reason: DiscardReason): boolean {
    for (const [key, list] of this.byKey) {
      const at = list.findIndex((e) => e.item === item);
      if (at < 0) continue;
      list.splice(at, 1);
      if (list.length === 0) this.byKey.delete(key);
      this.resized(-1);
      item.discard(reason);
      return true;
    }
    return false;
  }

  /** Closes what has been parked past the idle timeout or lived past its lifetime; returns how many. */
  sweep(): number {
    const now = this.now();
    let closed = 0;
    for (const [key, list] of this.byKey) {
      const keep: Parked<T>[] = [];
      for (const entry of list) {
        if (now - entry.parkedAt >= this.bounds.idleTimeoutMs) entry.item.discard('idle-timeout');
        else if (now - entry.item.loggedInAt >= this.bounds.maxLifetimeMs) entry.item.discard('lifetime');
        else {
          keep.push(entry);
          continue;
        }
        closed += 1;
      }
      if (keep.length === 0) this.byKey.delete(key);
      else this.byKey.set(key, keep);
    }
    if (closed > 0) this.resized(-closed);
    return closed;
  }

  /** Closes every parked connection; returns them (closed). */
  clear(reason: DiscardReason): T[] {
    const items = [...this.byKey.values()].flatMap((list) => list.map((entry) => entry.item));
    this.byKey.clear();
    const closed = this.count;
    this.count = 0;
    for (const item of items) item.discard(reason);
    if (closed > 0) this.onSizeChange(0);
    return items;
  }

  private resized(delta: number): void {
    this.count += delta;
    this.onSizeChange(this.count);
  }
}
