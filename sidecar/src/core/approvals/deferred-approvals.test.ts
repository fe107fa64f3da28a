import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { HeldCommand } from './approval-desk.ts';
import { DeferredApprovals, MAX_DEFERRED_PER_SESSION, type DeferredOutcome } from './deferred-approvals.ts';

function held(hash: string): HeldCommand & { cancelled: string[] } {
  const cancelled: string[] = [];
  return {
    name: `req-${hash}`,
    namespace: 'ns',
    bindingHash: hash,
    expiresTime: '2030-01-01T00:00:00Z',
    requiredApprovals: 1,
    filed: Promise.resolve(true),
    result: new Promise(() => undefined),
    cancel: (why) => cancelled.push(why),
    cancelled,
  };
}

/** An outcome promise the test settles. */
function later(): {
  promise: Promise<DeferredOutcome | undefined>;
  settle(o: DeferredOutcome | undefined): Promise<void>;
} {
  let resolve!: (o: DeferredOutcome | undefined) => void;
  const promise = new Promise<DeferredOutcome | undefined>((r) => (resolve = r));
  return {
    promise,
    settle: async (o) => {
      resolve(o);
      await promise;
      await Promise.resolve();
    },
  };
}

const APPROVED: DeferredOutcome = { run: true, approval: { request: 'req-a', bindingHash: 'a' } };
const DENIED: DeferredOutcome = { run: false, error: { id: 'ApprovalDenied', message: 'denied' } };

describe('DeferredApprovals', () => {
  it('answers the identical command from its request: pending, then approved exactly once, then nothing', async () => {
    const d = new DeferredApprovals();
    assert.equal(d.claim('a').kind, 'none');
    const a = held('a');
    const outcome = later();
    d.remember(a, outcome.promise);
    assert.deepEqual(d.claim('a'), { kind: 'pending', held: a });
    assert.equal(d.claim('b').kind, 'none', 'another binding is not covered');
    await outcome.settle(APPROVED);
    assert.deepEqual(d.claim('a'), { kind: 'settled', outcome: APPROVED });
    assert.equal(d.claim('a').kind, 'none', 'an approval is used once');
  });

  it('gives a refusal once, and forgets a request that was never filed', async () => {
    const d = new DeferredApprovals();
    const denied = later();
    d.remember(held('a'), denied.promise);
    await denied.settle(DENIED);
    assert.deepEqual(d.claim('a'), { kind: 'settled', outcome: DENIED });
    assert.equal(d.claim('a').kind, 'none');
    const unfiled = later();
    d.remember(held('b'), unfiled.promise);
    await unfiled.settle(undefined);
    assert.equal(d.size, 0);
  });

  it('keeps at most MAX_DEFERRED_PER_SESSION: settled ones make room, pending ones do not', async () => {
    const d = new DeferredApprovals();
    const outcomes = [];
    for (let i = 0; i < MAX_DEFERRED_PER_SESSION; i++) {
      const o = later();
      outcomes.push(o);
      d.remember(held(`h${String(i)}`), o.promise);
    }
    assert.equal(d.claim('new').kind, 'full');
    await outcomes[3]?.settle(DENIED);
    assert.equal(d.claim('new').kind, 'none', 'the settled request made room');
    assert.equal(d.size, MAX_DEFERRED_PER_SESSION - 1);
    assert.equal(d.claim('h4').kind, 'pending', 'pending requests are kept');
  });

  it('withdraws pending requests when the session ends', async () => {
    const d = new DeferredApprovals();
    const pending = held('a');
    const settled = held('b');
    const o = later();
    d.remember(pending, new Promise(() => undefined));
    d.remember(settled, o.promise);
    await o.settle(APPROVED);
    d.withdrawAll('session ended');
    assert.deepEqual(pending.cancelled, ['session ended']);
    assert.deepEqual(settled.cancelled, []);
    assert.equal(d.claim('a').kind, 'none');
  });
});
