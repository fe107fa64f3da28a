import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../observability/logger.ts';
import { createOperatorMetrics, type OperatorMetrics } from '../observability/metrics.ts';
import { Controller } from './controller.ts';
import { FakeClock, settle } from './fake-clock.test-helpers.ts';
import { TerminalError, type ReconcileContext, type ReconcileRequest, type ReconcileResult } from './reconcile.ts';
import type { Source } from './source.ts';

class ManualSource implements Source {
  enqueue: ((key: string) => void) | undefined;
  stopped = false;
  readonly cached: string[] = [];
  start(enqueue: (key: string) => void): Promise<void> {
    this.enqueue = enqueue;
    return Promise.resolve();
  }
  stop(): Promise<void> {
    this.stopped = true;
    return Promise.resolve();
  }
  keys(): Iterable<string> {
    return this.cached;
  }
}

type Behaviour = (req: ReconcileRequest, ctx: ReconcileContext, call: number) => Promise<ReconcileResult | undefined>;

async function counter(metrics: OperatorMetrics, result: string): Promise<number> {
  const values = (await metrics.reconcileTotal.get()).values;
  return values.find((v) => v.labels.result === result && v.labels.controller === 'test')?.value ?? 0;
}

function setup(behaviour: Behaviour, options: { workers?: number; resyncPeriodMs?: number } = {}) {
  const clock = new FakeClock();
  const source = new ManualSource();
  const metrics = createOperatorMetrics({ defaultMetrics: false });
  const calls: string[] = [];
  const perKey = new Map<string, number>();
  const controller = new Controller({
    name: 'test',
    sources: [source],
    logger: silentLogger,
    metrics,
    clock,
    workers: options.workers ?? 2,
    reconcileTimeoutMs: 1000,
    resyncPeriodMs: options.resyncPeriodMs ?? 0,
    reconciler: {
      reconcile: (req, ctx) => {
        const key = `${req.namespace}/${req.name}`;
        calls.push(key);
        const n = (perKey.get(key) ?? 0) + 1;
        perKey.set(key, n);
        return behaviour(req, ctx, n);
      },
    },
  });
  return { clock, source, metrics, calls, controller };
}

describe('Controller', () => {
  it('reconciles enqueued keys once each and counts successes', async () => {
    const { controller, source, calls, metrics } = setup(() => Promise.resolve(undefined));
    controller.enqueue('ns/a');
    controller.enqueue('ns/b');
    controller.enqueue('ns/a');
    await controller.start();
    await settle();
    assert.deepEqual([...calls].sort(), ['ns/a', 'ns/b'], 'keys queued together run once');
    assert.equal(await counter(metrics, 'success'), 2);
    source.enqueue?.('ns/a');
    await settle();
    assert.equal(calls.length, 3, 'a later add runs again');
    assert.equal(await counter(metrics, 'terminal_error'), 0, 'every result label exists from the start');
    await controller.stop();
    assert.equal(source.stopped, true);
  });

  it('retries a throwing reconcile with per-key backoff and resets it after success', async () => {
    const { controller, source, calls, clock, metrics } = setup((_req, _ctx, call) =>
      call <= 3 ? Promise.reject(new Error(`boom ${call}`)) : Promise.resolve(undefined),
    );
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    assert.equal(calls.length, 1);
    await clock.advance(4);
    assert.equal(calls.length, 1, 'first retry after 5 ms');
    await clock.advance(1);
    assert.equal(calls.length, 2);
    await clock.advance(9);
    assert.equal(calls.length, 2, 'second retry after 10 ms');
    await clock.advance(1);
    assert.equal(calls.length, 3);
    await clock.advance(20);
    assert.equal(calls.length, 4);
    assert.equal(await counter(metrics, 'error'), 3);
    assert.equal(await counter(metrics, 'success'), 1);
    await clock.advance(10_000);
    assert.equal(calls.length, 4, 'no retry after success');
    await controller.stop();
  });

  it('turns synchronous throws and non-Error values into retried errors', async () => {
    let n = 0;
    const { controller, source, calls, clock, metrics } = setup(() => {
      n++;
      if (n === 1) throw new Error('sync throw');
      if (n === 2) return Promise.reject(new Error('x', { cause: 'string' }));
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
      if (n === 3) return Promise.reject('a string');
      return Promise.resolve(undefined);
    });
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    await clock.advance(5);
    await clock.advance(10);
    await clock.advance(20);
    assert.equal(calls.length, 4);
    assert.equal(await counter(metrics, 'error'), 3);
    await controller.stop();
  });

  it('does not retry a TerminalError until the key is enqueued again', async () => {
    const { controller, source, calls, clock, metrics } = setup(() => Promise.reject(new TerminalError('bad spec')));
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    await clock.advance(60_000);
    assert.equal(calls.length, 1);
    assert.equal(await counter(metrics, 'terminal_error'), 1);
    source.enqueue?.('ns/a');
    await settle();
    assert.equal(calls.length, 2);
    await controller.stop();
  });

  it('revisits after requeueAfter', async () => {
    const { controller, source, calls, clock, metrics } = setup((_r, _c, call) =>
      Promise.resolve(call === 1 ? { requeueAfterMs: 30_000 } : undefined),
    );
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    await clock.advance(29_999);
    assert.equal(calls.length, 1);
    await clock.advance(1);
    assert.equal(calls.length, 2);
    assert.equal(await counter(metrics, 'requeue_after'), 1);
    await controller.stop();
  });

  it('aborts a reconcile at its deadline, retries it, and never runs one key twice at once', async () => {
    let running = 0;
    let maxRunning = 0;
    const releases: (() => void)[] = [];
    const signals: AbortSignal[] = [];
    const { controller, source, calls, clock, metrics } = setup((_req, ctx, call) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      signals.push(ctx.signal);
      assert.match(ctx.reconcileId, /^[0-9a-f-]{36}$/);
      if (call > 1) {
        running--;
        return Promise.resolve(undefined);
      }
      // The first reconcile ignores its signal and hangs until the test releases it.
      return new Promise((resolve) => {
        releases.push(() => {
          running--;
          resolve(undefined);
        });
      });
    });
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    await clock.advance(1000);
    assert.equal(signals[0]?.aborted, true, 'the deadline aborts the signal');
    assert.equal(await counter(metrics, 'error'), 1, 'a timeout is an error');
    await clock.advance(1000);
    source.enqueue?.('ns/a');
    await settle();
    assert.equal(calls.length, 1, 'the retry waits until the hung reconcile has finished');
    releases[0]?.();
    await settle();
    await settle();
    assert.equal(calls.length, 2, 'then the key runs again');
    assert.equal(maxRunning, 1);
    await controller.stop();
  });

  it('enqueues every cached key at each resync period', async () => {
    const { controller, source, calls, clock } = setup(() => Promise.resolve(undefined), { resyncPeriodMs: 60_000 });
    source.cached.push('ns/a', 'ns/b');
    await controller.start();
    await clock.advance(60_000);
    assert.deepEqual([...calls].sort(), ['ns/a', 'ns/b']);
    await clock.advance(60_000);
    assert.equal(calls.length, 4);
    await controller.stop();
    await clock.advance(60_000);
    assert.equal(calls.length, 4, 'no resync after stop');
  });

  it('stop() waits for reconciles in progress and aborts their signals', async () => {
    let release: (() => void) | undefined;
    let signal: AbortSignal | undefined;
    const { controller, source } = setup((_r, ctx) => {
      signal = ctx.signal;
      return new Promise((resolve) => {
        release = () => {
          resolve(undefined);
        };
      });
    });
    await controller.start();
    source.enqueue?.('ns/a');
    await settle();
    let stopped = false;
    const stopping = controller.stop().then(() => (stopped = true));
    await settle();
    assert.equal(signal?.aborted, true);
    assert.equal(stopped, false);
    release?.();
    await stopping;
    assert.equal(stopped, true);
  });
});
