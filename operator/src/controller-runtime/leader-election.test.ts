// Leader election against the real API server's Lease API, with short timings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { createTestNamespace, kubeConfig } from '../../../e2e/harness/kube.ts';
import { silentLogger } from '../observability/logger.ts';
import { FakeClock } from './fake-clock.test-helpers.ts';
import { LeaderElector, type LeaderElectionOptions } from './leader-election.ts';

const TIMINGS = { leaseDurationMs: 1500, renewDeadlineMs: 1000, retryPeriodMs: 200 };

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function candidate(namespace: string, identity: string, extra: Partial<LeaderElectionOptions> = {}) {
  const events: string[] = [];
  const elector = new LeaderElector({
    client: kubeConfig().makeApiClient(k8s.CoordinationV1Api),
    namespace,
    name: 'test-lease',
    identity,
    logger: silentLogger,
    ...TIMINGS,
    onStartedLeading: () => events.push('started'),
    onStoppedLeading: (reason) => events.push(`stopped:${reason}`),
    ...extra,
  });
  return { elector, events, done: elector.start() };
}

async function lease(namespace: string): Promise<k8s.V1Lease> {
  return kubeConfig().makeApiClient(k8s.CoordinationV1Api).readNamespacedLease({ namespace, name: 'test-lease' });
}

test('one candidate leads, renews, and hands over at once when it releases the Lease', async (t) => {
  const namespace = await createTestNamespace(t);
  const a = candidate(namespace, 'a');
  t.after(() => a.elector.stop());
  await until('a to lead', () => a.elector.isLeader);
  // b runs on a clock of its own that moves only when the test says: whatever b does, it did not wait
  // for the Lease to expire.
  const fakeClock = new FakeClock();
  const b = candidate(namespace, 'b', { clock: fakeClock });
  t.after(() => b.elector.stop());
  const first = (await lease(namespace)).spec;
  assert.ok(first !== undefined);
  assert.equal(first.holderIdentity, 'a');
  assert.equal(first.leaseDurationSeconds, 2);
  assert.equal(first.leaseTransitions, 0);
  // b is between attempts when its only timer is pending; each attempt reads the real Lease.
  const betweenAttempts = () => until('b to finish an attempt', () => fakeClock.pendingTimers === 1);
  // a keeps renewing: each time a has renewed, b's fake clock moves on a quarter second and b tries again. Ten
  // tries span more than the lease duration on b's fake clock, so only a's renewals keep b from taking over.
  await betweenAttempts();
  for (let i = 0; i < 10; i++) {
    const seen = (await lease(namespace)).metadata?.resourceVersion;
    await until('a to renew', async () => (await lease(namespace)).metadata?.resourceVersion !== seen);
    await fakeClock.advance(250);
    await betweenAttempts();
    assert.equal(b.elector.isLeader, false, `b took over a renewed Lease on try ${String(i + 1)}`);
  }
  assert.equal(b.elector.observedLeader, 'a');
  const renewed = (await lease(namespace)).spec;
  assert.equal(renewed?.holderIdentity, 'a');
  assert.notEqual(String(renewed.renewTime), String(first.renewTime), 'renewTime moves on');

  await a.elector.stop();
  assert.deepEqual(a.events, ['started', 'stopped:stopped']);
  assert.equal((await lease(namespace)).spec?.holderIdentity, '', 'a emptied the holder');
  // b's next attempt, a retry period later on its fake clock, takes the free Lease: long before it could expire.
  const before = fakeClock.now();
  await until('b to lead', async () => {
    if (fakeClock.pendingTimers === 1) await fakeClock.advance(250);
    return b.elector.isLeader;
  });
  assert.ok(fakeClock.now() - before < 2000, 'b took over within a lease duration of its own fake clock');
  const taken = (await lease(namespace)).spec;
  assert.ok(taken !== undefined);
  assert.equal(taken.holderIdentity, 'b');
  assert.equal(taken.leaseTransitions, 1);
  await b.elector.stop();
  assert.equal((await lease(namespace)).spec?.holderIdentity, '');
});

test('a candidate takes an abandoned Lease only after it expires on its own fake clock', async (t) => {
  const namespace = await createTestNamespace(t);
  const a = candidate(namespace, 'a', { releaseOnStop: false });
  await until('a to lead', () => a.elector.isLeader);
  await a.elector.stop(); // a "crashes": it stops renewing without releasing
  assert.equal((await lease(namespace)).spec?.holderIdentity, 'a');
  const fakeClock = new FakeClock();
  const seen = fakeClock.now();
  const b = candidate(namespace, 'b', { clock: fakeClock });
  t.after(() => b.elector.stop());
  // b is between attempts when its only timer is pending; each attempt reads the real Lease.
  const betweenAttempts = () => until('b to finish an attempt', () => fakeClock.pendingTimers === 1);
  await betweenAttempts();
  // Every attempt before the lease duration (2 s) has passed on b's fake clock leaves the Lease to a.
  while (fakeClock.now() - seen + 250 < 2000) {
    await fakeClock.advance(250);
    await betweenAttempts();
    assert.equal(
      b.elector.isLeader,
      false,
      `b took the Lease ${String(fakeClock.now() - seen)} ms after first seeing it`,
    );
  }
  assert.equal((await lease(namespace)).spec?.holderIdentity, 'a');
  await until('b to lead once the Lease has expired', async () => {
    if (fakeClock.pendingTimers === 1) await fakeClock.advance(250);
    return b.elector.isLeader;
  });
  assert.ok(fakeClock.now() - seen >= 2000, 'b took over only after the lease duration on its own fake clock');
  const taken = (await lease(namespace)).spec;
  assert.equal(taken?.holderIdentity, 'b');
  assert.equal(taken.leaseTransitions, 1);
});

test('a leader that finds the Lease taken over stops leading', async (t) => {
  const namespace = await createTestNamespace(t);
  const a = candidate(namespace, 'a');
  t.after(() => a.elector.stop());
  await until('a to lead', () => a.elector.isLeader);
  const coordination = kubeConfig().makeApiClient(k8s.CoordinationV1Api);
  const current = await lease(namespace);
  // The client's models are classes; the server only needs the fields, so plain objects are built.
  await coordination.replaceNamespacedLease({
    namespace,
    name: 'test-lease',
    body: {
      metadata: { name: 'test-lease', namespace, resourceVersion: current.metadata?.resourceVersion ?? '' },
      spec: {
        holderIdentity: 'intruder',
        leaseDurationSeconds: current.spec?.leaseDurationSeconds ?? 2,
        renewTime: new k8s.V1MicroTime(Date.now()),
      },
    },
  });
  await a.done;
  assert.equal(a.elector.isLeader, false);
  assert.deepEqual(a.events, ['started', 'stopped:lost']);
});
