// Leader election against the real API server's Lease API, with short timings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { createTestNamespace, kubeConfig } from '../../../e2e/harness/kube.ts';
import { silentLogger } from '../observability/logger.ts';
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
  const b = candidate(namespace, 'b');
  t.after(() => b.elector.stop());
  const first = (await lease(namespace)).spec;
  assert.ok(first !== undefined);
  assert.equal(first.holderIdentity, 'a');
  assert.equal(first.leaseDurationSeconds, 2);
  assert.equal(first.leaseTransitions, 0);
  // Several lease durations pass: a keeps renewing, so b never takes over.
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(b.elector.isLeader, false);
  assert.equal(b.elector.observedLeader, 'a');
  const renewed = (await lease(namespace)).spec;
  assert.ok(renewed !== undefined);
  assert.equal(renewed.holderIdentity, 'a');
  assert.notEqual(String(renewed.renewTime), String(first.renewTime), 'renewTime moves on');

  const released = Date.now();
  await a.elector.stop();
  assert.deepEqual(a.events, ['started', 'stopped:stopped']);
  await until('b to lead', () => b.elector.isLeader);
  // Well within the 2 s lease duration: b took over because a emptied the holder, not by expiry.
  t.diagnostic(`handover took ${Date.now() - released} ms`);
  const taken = (await lease(namespace)).spec;
  assert.ok(taken !== undefined);
  assert.equal(taken.holderIdentity, 'b');
  assert.equal(taken.leaseTransitions, 1);
  await b.elector.stop();
  assert.equal((await lease(namespace)).spec?.holderIdentity, '');
});

test('a candidate takes an abandoned Lease only after it expires', async (t) => {
  const namespace = await createTestNamespace(t);
  const a = candidate(namespace, 'a', { releaseOnStop: false });
  await until('a to lead', () => a.elector.isLeader);
  await a.elector.stop(); // a "crashes": it stops renewing without releasing
  assert.equal((await lease(namespace)).spec?.holderIdentity, 'a');
  const abandoned = Date.now();
  const b = candidate(namespace, 'b');
  t.after(() => b.elector.stop());
  await until('b to lead', () => b.elector.isLeader);
  const waited = Date.now() - abandoned;
  // b measures expiry from when it first saw the Lease, on its own clock: at least the lease duration.
  assert.ok(waited >= 1900, `b waited ${waited} ms`);
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
