// When a lazily started event loop starts and stops (lazy-event-loops.ts): pure decisions on one sample.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lazyLoopDecision, loginBurstStarts } from './lazy-event-loops.ts';

const settings = { max: 2, startAtConnections: 32, startOnLogins: 16, busyUtilisation: 0.5, stopAfterIdleSeconds: 60 };
const at = (over: Partial<Parameters<typeof lazyLoopDecision>[0]>) =>
  lazyLoopDecision({
    loops: 1,
    max: 2,
    openConnections: 0,
    utilisation: 0,
    lastLoopIdleMs: undefined,
    settings,
    ...over,
  });

test('a further loop starts only when the main loop is busy with enough connections, up to max', () => {
  assert.equal(at({ openConnections: 40, utilisation: 0.9 }), 'start');
  assert.equal(at({ openConnections: 32, utilisation: 0.5 }), 'start');
  // Busy with few connections (one heavy client cannot use two loops), or many idle connections (a pool).
  assert.equal(at({ openConnections: 8, utilisation: 1 }), 'none');
  assert.equal(at({ openConnections: 200, utilisation: 0.1 }), 'none');
  assert.equal(at({ loops: 2, openConnections: 200, utilisation: 1 }), 'none');
  assert.equal(at({ loops: 2, max: 3, openConnections: 200, utilisation: 1 }), 'start');
});

test('the last loop stops after it has been idle long enough, not while the main loop is busy, not with 0', () => {
  assert.equal(at({ loops: 2, lastLoopIdleMs: 60_000 }), 'stop');
  assert.equal(at({ loops: 2, lastLoopIdleMs: 59_999 }), 'none');
  assert.equal(at({ loops: 2, lastLoopIdleMs: undefined }), 'none');
  assert.equal(at({ loops: 2, lastLoopIdleMs: 600_000, utilisation: 0.9 }), 'none');
  assert.equal(at({ loops: 2, lastLoopIdleMs: 600_000, settings: { ...settings, stopAfterIdleSeconds: 0 } }), 'none');
  assert.equal(at({ loops: 1, lastLoopIdleMs: 600_000 }), 'none');
});

test('a burst of logins starts a loop at once with enough open, up to max; a short storm of few does not; 0 is off', () => {
  const burst = (over: Partial<Parameters<typeof loginBurstStarts>[0]>) =>
    loginBurstStarts({ loops: 1, max: 2, openConnections: 40, acceptedWithinWindow: true, settings, ...over });
  assert.equal(burst({}), true);
  assert.equal(burst({ openConnections: 32 }), true);
  // pgbench -C -c 8: many accepts, never 32 open at once.
  assert.equal(burst({ openConnections: 8 }), false);
  // The logins spread over more than the window: the sample decides.
  assert.equal(burst({ acceptedWithinWindow: false }), false);
  assert.equal(burst({ loops: 2 }), false);
  assert.equal(burst({ loops: 2, max: 3 }), true);
  assert.equal(burst({ settings: { ...settings, startOnLogins: 0 } }), false);
});
