import assert from 'node:assert/strict';

// Waiting in tests for the API server or a controller to catch up: polls until `fn` returns a value,
// failing with what was awaited (and the last error) after a deadline, never asserting on timing itself.

/** Generous default deadline: shared CI machines are not idle. */
export const POLL_DEADLINE_MS = 30_000;

export async function poll<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  deadlineMs = POLL_DEADLINE_MS,
): Promise<T> {
  const until = Date.now() + deadlineMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) {
      const why = last === undefined ? '' : `: ${last instanceof Error ? last.message : JSON.stringify(last)}`;
      assert.fail(`timed out waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
