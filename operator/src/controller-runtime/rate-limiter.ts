// Per-key exponential backoff for failed reconciles, as client-go's ItemExponentialFailureRateLimiter:
// the nth consecutive failure of a key waits base * 2^(n-1), capped. forget() resets a key after success.
// client-go's default controller limiter also has an overall token bucket (10 qps, burst 100); it is left
// out here because reconciles are bounded by the worker count and each key is retried on its own schedule.

export interface RateLimiter {
  /** Delay before the key may be retried; counts one more failure. */
  when(key: string): number;
  /** Forgets the key's failures (call after a success or a terminal error). */
  forget(key: string): void;
  /** Consecutive failures counted for the key. */
  retries(key: string): number;
}

export interface ExponentialBackoffOptions {
  /** Delay after the first failure, in milliseconds. Default 5 (client-go). */
  readonly baseDelayMs?: number;
  /** Upper bound of the delay, in milliseconds. Default 1 000 000 (1000 s, client-go). */
  readonly maxDelayMs?: number;
}

export const DEFAULT_BASE_DELAY_MS = 5;
export const DEFAULT_MAX_DELAY_MS = 1_000_000;

export class ExponentialBackoffRateLimiter implements RateLimiter {
  private readonly failures = new Map<string, number>();
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(options: ExponentialBackoffOptions = {}) {
    this.baseDelayMs = options.baseDelayMs ?? DEFAULT_BASE_DELAY_MS;
    this.maxDelayMs = options.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
    if (!(this.baseDelayMs > 0) || !(this.maxDelayMs >= this.baseDelayMs)) {
      throw new RangeError('backoff needs 0 < baseDelayMs <= maxDelayMs');
    }
  }

  when(key: string): number {
    const exp = this.failures.get(key) ?? 0;
    this.failures.set(key, exp + 1);
    // 2^exp overflows to Infinity long after the cap is reached; Math.min keeps the result finite.
    return Math.min(this.baseDelayMs * 2 ** exp, this.maxDelayMs);
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }
}
