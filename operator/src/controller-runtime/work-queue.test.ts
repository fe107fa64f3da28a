import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock, settle } from './fake-clock.test-helpers.ts';
import { ExponentialBackoffRateLimiter } from './rate-limiter.ts';
import { WorkQueue } from './work-queue.ts';

function queue(clock = new FakeClock()): { q: WorkQueue; clock: FakeClock; depths: number[] } {
  const depths: number[] = [];
  const q = new WorkQueue({ clock, onDepth: (d) => depths.push(d) });
  return { q, clock, depths };
}

/** The keys get() hands out right now, without waiting (each is marked done unless keep). */
async function drain(q: WorkQueue, keep = false): Promise<string[]> {
  const out: string[] = [];
  while (q.len() > 0) {
    const key = await q.get();
    if (key === undefined) break;
    out.push(key);
    if (!keep) q.done(key);
  }
  return out;
}

describe('WorkQueue', () => {
  it('de-duplicates keys that wait in the queue and keeps FIFO order', async () => {
    const { q, depths } = queue();
    q.add('ns/a');
    q.add('ns/b');
    q.add('ns/a');
    q.add('ns/c');
    assert.equal(q.len(), 3);
    assert.deepEqual(await drain(q), ['ns/a', 'ns/b', 'ns/c']);
    assert.equal(depths.at(-1), 0);
  });

  it('never hands out a key that is being processed; an add meanwhile requeues it on done', async () => {
    const { q } = queue();
    q.add('ns/a');
    const first = await q.get();
    assert.equal(first, 'ns/a');
    q.add('ns/a');
    q.add('ns/a');
    assert.equal(q.len(), 0, 'a key in processing is only marked dirty');
    let second: string | undefined;
    void q.get().then((k) => (second = k));
    await settle();
    assert.equal(second, undefined, 'get() waits: the only key is in processing');
    q.done('ns/a');
    await settle();
    assert.equal(second, 'ns/a', 'done() puts the dirty key back exactly once');
    q.done('ns/a');
    assert.equal(q.len(), 0);
    assert.equal(q.processingCount(), 0);
  });

  it('hands a new key directly to a waiting get()', async () => {
    const { q } = queue();
    const pending = q.get();
    q.add('ns/x');
    assert.equal(await pending, 'ns/x');
    assert.equal(q.processingCount(), 1);
  });

  it('addAfter waits for the clock, and the earliest pending time for a key wins', async () => {
    const { q, clock } = queue();
    q.addAfter('ns/a', 1000);
    q.addAfter('ns/a', 5000);
    q.addAfter('ns/b', 300);
    q.addAfter('ns/b', 100);
    assert.equal(q.waitingCount(), 2);
    await clock.advance(99);
    assert.equal(q.len(), 0);
    await clock.advance(1);
    assert.deepEqual(await drain(q), ['ns/b']);
    await clock.advance(899);
    assert.equal(q.len(), 0);
    await clock.advance(1);
    assert.deepEqual(await drain(q), ['ns/a']);
    await clock.advance(10_000);
    assert.equal(q.len(), 0, 'the later addAfter for ns/a was folded into the earlier one');
    q.addAfter('ns/c', 0);
    assert.deepEqual(await drain(q), ['ns/c'], 'a zero delay adds at once');
  });

  it('addRateLimited backs off per key 5 ms, 10 ms, 20 ms ... and forget resets it', async () => {
    const { q, clock } = queue();
    const expected = [5, 10, 20, 40, 80];
    for (const delay of expected) {
      q.addRateLimited('ns/a');
      await clock.advance(delay - 1);
      assert.equal(q.len(), 0, `not before ${delay} ms`);
      await clock.advance(1);
      assert.deepEqual(await drain(q), ['ns/a'], `at ${delay} ms`);
    }
    assert.equal(q.numRequeues('ns/a'), 5);
    q.addRateLimited('ns/b');
    await clock.advance(5);
    assert.deepEqual(await drain(q), ['ns/b'], 'other keys have their own backoff');
    q.forget('ns/a');
    assert.equal(q.numRequeues('ns/a'), 0);
    q.addRateLimited('ns/a');
    await clock.advance(5);
    assert.deepEqual(await drain(q), ['ns/a']);
  });

  it('a rate-limited add of a key in processing lands after done', async () => {
    const { q, clock } = queue();
    q.add('ns/a');
    const key = await q.get();
    assert.equal(key, 'ns/a');
    q.addRateLimited('ns/a');
    await clock.advance(5);
    assert.equal(q.len(), 0);
    q.done('ns/a');
    assert.deepEqual(await drain(q), ['ns/a']);
  });

  it('shutDown releases waiting getters, drops queued and delayed keys and refuses new ones', async () => {
    const { q, clock } = queue();
    const waiting = q.get();
    q.shutDown();
    assert.equal(await waiting, undefined);
    const { q: q2 } = queue(clock);
    q2.add('ns/a');
    q2.addAfter('ns/b', 50);
    q2.shutDown();
    assert.equal(q2.len(), 0);
    assert.equal(q2.waitingCount(), 0);
    assert.equal(clock.pendingTimers, 0, 'delayed adds are cancelled');
    q2.add('ns/c');
    assert.equal(q2.len(), 0);
    assert.equal(await q2.get(), undefined);
  });

  it('shutDownWithDrain resolves only after the keys handed out are done', async () => {
    const { q } = queue();
    q.add('ns/a');
    q.add('ns/b');
    const a = await q.get();
    const b = await q.get();
    assert.ok(a !== undefined && b !== undefined);
    let drained = false;
    const draining = q.shutDownWithDrain().then(() => (drained = true));
    q.done(a);
    await settle();
    assert.equal(drained, false);
    q.done(b);
    await draining;
    assert.equal(drained, true);
    await q.shutDownWithDrain();
  });
});

describe('ExponentialBackoffRateLimiter', () => {
  it('doubles from 5 ms and caps at 1000 s like client-go', () => {
    const limiter = new ExponentialBackoffRateLimiter();
    const delays = Array.from({ length: 30 }, () => limiter.when('k'));
    assert.deepEqual(delays.slice(0, 4), [5, 10, 20, 40]);
    assert.equal(delays[17], 5 * 2 ** 17);
    assert.equal(delays[18], 1_000_000, '5 ms * 2^18 = 1310.72 s is capped');
    assert.equal(delays.at(-1), 1_000_000);
    for (let i = 0; i < 2000; i++) limiter.when('k');
    assert.equal(limiter.when('k'), 1_000_000, 'no overflow after many failures');
    assert.equal(limiter.retries('k'), 2031);
    limiter.forget('k');
    assert.equal(limiter.when('k'), 5);
  });

  it('rejects a cap below the base', () => {
    assert.throws(() => new ExponentialBackoffRateLimiter({ baseDelayMs: 10, maxDelayMs: 5 }), RangeError);
  });
});
