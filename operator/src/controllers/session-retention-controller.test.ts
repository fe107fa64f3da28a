import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_RETENTION_REQUEUE_MS, retentionRequeueMs } from './session-retention-controller.ts';

test('retention requeue: the interval, sooner for an earlier expiry, within 1 s .. 1 h', () => {
  const now = new Date('2026-11-27T10:00:00Z');
  const at = (ms: number) => new Date(now.getTime() + ms);
  assert.equal(retentionRequeueMs(300_000, now, undefined), 300_000);
  assert.equal(retentionRequeueMs(300_000, now, at(60_000)), 60_000);
  assert.equal(retentionRequeueMs(300_000, now, at(900_000)), 300_000);
  assert.equal(retentionRequeueMs(7_200_000, now, undefined), MAX_RETENTION_REQUEUE_MS);
  assert.equal(retentionRequeueMs(300_000, now, at(-5_000)), 1_000, 'an already expired session: soon, not at once');
  assert.equal(retentionRequeueMs(300_000, now, at(10)), 1_000);
});
