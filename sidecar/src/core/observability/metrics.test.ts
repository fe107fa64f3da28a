import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Histogram, Registry } from 'prom-client';
import { createSidecarMetrics, LocalHistogram, listenerCommandMetrics } from './metrics.ts';

const BUCKETS = [0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005, 0.02];
// On and around every bound, between bounds, zero, and above the last bound.
const VALUES = [0, 0.000001, 0.000002, 0.0000021, 0.000005, 0.00001, 0.00003, 0.0001, 0.00049, 0.001, 0.02, 0.5, 3];

test('LocalHistogram exposes exactly what a prom-client Histogram exposes for the same observations', async () => {
  const reference = new Registry();
  const local = new Registry();
  const config = { name: 'x_duration_seconds', help: 'Some help.', labelNames: ['listener', 'cached'] as const };
  const histogram = new Histogram({ ...config, buckets: BUCKETS, registers: [reference] });
  const localHistogram = new LocalHistogram({ ...config, buckets: BUCKETS, registers: [local] });
  const a = localHistogram.labels('db-a', 'unknown');
  const b = localHistogram.labels('db"b\\', 'true');
  VALUES.forEach((v, i) => {
    histogram.labels('db-a', 'unknown').observe(v);
    a.observe(v);
    if (i % 3 === 0) {
      histogram.labels('db"b\\', 'true').observe(v * 2);
      b.observe(v * 2);
    }
  });
  // A child looked up again counts into the same label set.
  localHistogram.labels('db-a', 'unknown').observe(0.0003);
  histogram.labels('db-a', 'unknown').observe(0.0003);
  assert.equal(await local.metrics(), await reference.metrics());
  // The same samples as JSON too (prom-client adds an empty exemplar member to each of its own).
  const withoutExemplars = (json: unknown) =>
    JSON.parse(JSON.stringify(json, (key, value: unknown) => (key === 'exemplar' ? undefined : value))) as unknown;
  assert.deepEqual(
    withoutExemplars(await local.getMetricsAsJSON()),
    withoutExemplars(await reference.getMetricsAsJSON()),
  );

  local.resetMetrics();
  reference.resetMetrics();
  a.observe(0.00001);
  histogram.labels('db-a', 'unknown').observe(0.00001);
  const text = await local.metrics();
  assert.match(text, /^x_duration_seconds_count\{listener="db-a",cached="unknown"\} 1$/m);
  assert.match(text, /^x_duration_seconds_bucket\{le="\+Inf",listener="db-a",cached="unknown"\} 1$/m);
});

test('LocalHistogram refuses a wrong number of label values and a value that is not a finite number', () => {
  const h = new LocalHistogram({ name: 'y_seconds', help: 'h', labelNames: ['a', 'b'], buckets: [1], registers: [] });
  assert.throws(() => h.labels('only-one'), /1 label values for 2 labels/);
  assert.throws(() => h.labels('1', '2').observe(Number.NaN), TypeError);
});

test('the decision histogram of the sidecar metrics is exposed as a histogram with its buckets', async () => {
  const metrics = createSidecarMetrics({ defaultMetrics: false });
  listenerCommandMetrics(metrics, 'db').decisionSeconds.observe(0.000004);
  const text = await metrics.registry.metrics();
  assert.match(text, /^# TYPE chaperone_decision_duration_seconds histogram$/m);
  assert.match(
    text,
    /^chaperone_decision_duration_seconds_bucket\{le="0\.000002",listener="db",cached="unknown"\} 0$/m,
  );
  assert.match(
    text,
    /^chaperone_decision_duration_seconds_bucket\{le="0\.000005",listener="db",cached="unknown"\} 1$/m,
  );
  assert.match(text, /^chaperone_decision_duration_seconds_sum\{listener="db",cached="unknown"\} 0\.000004$/m);
});
