import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UpstreamPool, type DiscardReason, type Parkable, type UpstreamPoolBounds } from './upstream-pool.ts';

class Item implements Parkable {
  readonly name: string;
  readonly loggedInAt: number;
  discarded: DiscardReason | undefined;
  constructor(name: string, loggedInAt: number) {
    this.name = name;
    this.loggedInAt = loggedInAt;
  }
  discard(reason: DiscardReason): void {
    assert.equal(this.discarded, undefined, `${this.name} discarded twice`);
    this.discarded = reason;
  }
}

const BOUNDS: UpstreamPoolBounds = { maxParkedPerKey: 2, maxParked: 3, idleTimeoutMs: 1000, maxLifetimeMs: 10_000 };

function pool(bounds: UpstreamPoolBounds = BOUNDS) {
  const clock = { now: 0 };
  const sizes: number[] = [];
  const p = new UpstreamPool<Item>({ bounds, now: () => clock.now, onSizeChange: (n) => sizes.push(n) });
  return { p, clock, sizes };
}

test('take returns what was parked under the same key only, most recently parked first, once', () => {
  const { p, sizes } = pool();
  const a = new Item('a', 0);
  const b = new Item('b', 0);
  const c = new Item('c', 0);
  assert.equal(p.park('k1', a), true);
  assert.equal(p.park('k1', b), true);
  assert.equal(p.park('k2', c), true);
  assert.equal(p.size, 3);
  assert.equal(p.take('k3'), undefined);
  assert.equal(p.take('k1'), b);
  assert.equal(p.take('k1'), a);
  assert.equal(p.take('k1'), undefined, 'a parked connection is handed out once');
  assert.equal(p.take('k2'), c);
  assert.equal(p.size, 0);
  assert.deepEqual(sizes, [1, 2, 3, 2, 1, 0]);
  assert.ok([a, b, c].every((i) => i.discarded === undefined));
});

test('the per-key and total bounds discard what does not fit, as full', () => {
  const { p } = pool();
  const items = ['a', 'b', 'c', 'd', 'e'].map((n) => new Item(n, 0));
  const [a, b, c, d, e] = items as [Item, Item, Item, Item, Item];
  assert.equal(p.park('k1', a), true);
  assert.equal(p.park('k1', b), true);
  assert.equal(p.park('k1', c), false, 'third on one key');
  assert.equal(c.discarded, 'full');
  assert.equal(p.park('k2', d), true);
  assert.equal(p.park('k3', e), false, 'fourth in all');
  assert.equal(e.discarded, 'full');
  assert.equal(p.size, 3);
  // A taken connection frees its place.
  assert.equal(p.take('k1'), b);
  const f = new Item('f', 0);
  assert.equal(p.park('k3', f), true);
});

test('sweep closes connections parked past the idle timeout, and nothing else', () => {
  const { p, clock } = pool();
  const old = new Item('old', 0);
  p.park('k', old);
  clock.now = 600;
  const recent = new Item('recent', 500);
  p.park('k', recent);
  clock.now = 999;
  assert.equal(p.sweep(), 0);
  clock.now = 1000;
  assert.equal(p.sweep(), 1);
  assert.equal(old.discarded, 'idle-timeout');
  assert.equal(recent.discarded, undefined);
  assert.equal(p.size, 1);
  clock.now = 1600;
  assert.equal(p.sweep(), 1);
  assert.equal(recent.discarded, 'idle-timeout');
  assert.equal(p.size, 0);
});

test('a connection past its lifetime is never parked, never handed out, and swept', () => {
  const { p, clock } = pool({ ...BOUNDS, idleTimeoutMs: 60_000 });
  clock.now = 10_000;
  const tooOld = new Item('too-old', 0);
  assert.equal(p.park('k', tooOld), false);
  assert.equal(tooOld.discarded, 'lifetime');
  const ageing = new Item('ageing', 5_000);
  const young = new Item('young', 9_000);
  p.park('k', young);
  p.park('k', ageing);
  clock.now = 15_000;
  // The most recent is past its lifetime: discarded on the way, the next one is handed out.
  assert.equal(p.take('k'), young);
  assert.equal(ageing.discarded, 'lifetime');
  assert.equal(p.size, 0);
  const late = new Item('late', 14_000);
  p.park('k', late);
  clock.now = 24_000;
  assert.equal(p.sweep(), 1);
  assert.equal(late.discarded, 'lifetime');
});

test('remove takes out a connection that went away while parked; clear closes every one', () => {
  const { p, sizes } = pool();
  const a = new Item('a', 0);
  const b = new Item('b', 0);
  p.park('k', a);
  p.park('j', b);
  assert.equal(p.remove(a, 'closed'), true);
  assert.equal(a.discarded, 'closed');
  assert.equal(p.remove(a, 'closed'), false, 'not parked any more');
  assert.equal(p.take('k'), undefined);
  assert.deepEqual(p.clear('shutdown'), [b], 'clear returns what it closed');
  assert.equal(b.discarded, 'shutdown');
  assert.equal(p.size, 0);
  assert.equal(sizes.at(-1), 0);
});
