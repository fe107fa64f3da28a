// The sidecar's Prometheus endpoint after known traffic: connection, statement (by decision), decision
// latency histogram, auth failure (by reason) and byte counters carry exactly the counts the traffic implies,
// and /healthz answers 200.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type AddressInfo } from 'node:net';
import pg from 'pg';
import { poll } from '../harness/poll.ts';
import { READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Parses the Prometheus text exposition format (enough of it for prom-client's output). */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type !== null) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `a valid exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { samples, types };
}

/** Sum of the samples named `name` whose labels include `match`. */
function sum(samples: readonly Sample[], name: string, match: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((acc, s) => acc + s.value, 0);
}

/** A loopback relay in front of the sidecar that counts the bytes clients send. */
async function countingTap(
  target: RunningTestSidecar,
): Promise<{ port: number; sent: () => number; close: () => Promise<void> }> {
  let sent = 0;
  const server = createServer((client) => {
    const upstream = connect({ host: target.host, port: target.port });
    client.on('data', (chunk: Buffer) => {
      sent += chunk.length;
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    sent: () => sent,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

test('metrics: counters, histogram and health after known allowed, denied and failed traffic', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const tap = await countingTap(sidecar);
  t.after(tap.close);
  const listener = { listener: 'test-db' };
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:metrics' });
  const expired = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:metrics' }, { expiresIn: -3600 });

  const c = new pg.Client({
    host: '127.0.0.1',
    port: tap.port,
    user: 'agent',
    database: 'agent-db',
    password: token,
    ssl: false,
  });
  await c.connect();
  await c.query('select 1');
  await c.query('select $1::int + 1', [41]);
  await c.query('show server_version');
  await assert.rejects(c.query('create table metrics_t (id int)'), { code: '42501' });
  await assert.rejects(c.query('delete from pg_class'), { code: '42501' });
  await c.end();
  const failed = new pg.Client({
    host: '127.0.0.1',
    port: tap.port,
    user: 'agent',
    database: 'agent-db',
    password: expired,
    ssl: false,
  });
  failed.on('error', () => undefined);
  await assert.rejects(failed.connect(), { code: '28P01' });

  // The sidecar counts bytes as it reads them; wait until it has seen the clients' closing bytes (Terminate).
  const text = await poll('the sidecar to count the bytes the clients sent', async () => {
    const res = await fetch(`http://127.0.0.1:${sidecar.metricsPort}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const body = await res.text();
    const counted = sum(parseExposition(body).samples, 'chaperone_bytes_total', {
      ...listener,
      direction: 'client_to_upstream',
    });
    return counted >= tap.sent() ? body : undefined;
  });
  const { samples, types } = parseExposition(text);

  assert.equal(types.get('chaperone_connections_total'), 'counter');
  assert.equal(sum(samples, 'chaperone_connections_total', listener), 2, 'one good and one failed connection');

  assert.equal(types.get('chaperone_statements_total'), 'counter');
  // Three reads (one through the extended protocol: Parse, Bind, Execute) and two denied writes.
  const allowed = 3;
  const denied = 2;
  assert.equal(sum(samples, 'chaperone_statements_total', { ...listener, decision: 'allow' }), allowed);
  assert.equal(sum(samples, 'chaperone_statements_total', { ...listener, decision: 'deny' }), denied);
  assert.equal(sum(samples, 'chaperone_statements_total', listener), allowed + denied, 'no other decisions');

  // Every policy evaluation is timed: each recorded decision, plus at most one extra evaluation at Parse for
  // the one extended-protocol statement (an allowed Parse is evaluated, and recorded only at Execute).
  assert.equal(types.get('chaperone_decision_duration_seconds'), 'histogram');
  const observations = sum(samples, 'chaperone_decision_duration_seconds_count', listener);
  assert.ok(
    observations >= allowed + denied && observations <= allowed + denied + 1,
    `one observation per evaluation, got ${observations}`,
  );
  assert.equal(sum(samples, 'chaperone_decision_duration_seconds_bucket', { ...listener, le: '+Inf' }), observations);
  const buckets = samples
    .filter((s) => s.name === 'chaperone_decision_duration_seconds_bucket' && s.labels.listener === 'test-db')
    .filter((s) => s.labels.le !== '+Inf')
    .sort((a, b) => Number(a.labels.le) - Number(b.labels.le));
  assert.ok(buckets.length >= 5, 'several finite buckets');
  for (let i = 1; i < buckets.length; i++) {
    assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, 'histogram buckets are cumulative');
  }
  assert.ok(sum(samples, 'chaperone_decision_duration_seconds_sum', listener) >= 0);

  assert.equal(types.get('chaperone_auth_failures_total'), 'counter');
  assert.equal(sum(samples, 'chaperone_auth_failures_total', { ...listener, reason: 'expired' }), 1);
  assert.equal(sum(samples, 'chaperone_auth_failures_total', listener), 1, 'no other failure reasons');

  assert.equal(types.get('chaperone_bytes_total'), 'counter');
  assert.equal(
    sum(samples, 'chaperone_bytes_total', { ...listener, direction: 'client_to_upstream' }),
    tap.sent(),
    'every byte the clients sent is counted once',
  );
  assert.ok(sum(samples, 'chaperone_bytes_total', { ...listener, direction: 'upstream_to_client' }) > 0);

  assert.equal(sum(samples, 'chaperone_protocol_errors_total', listener), 0, 'no protocol errors in this traffic');

  const health = await fetch(`http://127.0.0.1:${sidecar.metricsPort}/healthz`);
  assert.equal(health.status, 200);
  assert.equal(await health.text(), 'ok\n');
});
