// Prometheus metrics of the sidecar (prom-client), created once per process on their own registry and
// served on the metrics port. Names follow Prometheus conventions: chaperone_ prefix, _total counters,
// base units (seconds, bytes).
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface SidecarMetrics {
  readonly registry: Registry;
  readonly connections: Counter<'listener'>;
  readonly activeConnections: Gauge<'listener'>;
  readonly refusedConnections: Counter<'listener'>;
  readonly statements: Counter<'listener' | 'decision'>;
  readonly decisionSeconds: Histogram<'listener' | 'cached'>;
  readonly bytes: Counter<'listener' | 'direction'>;
  readonly protocolErrors: Counter<'listener'>;
  readonly authFailures: Counter<'listener' | 'reason'>;
  readonly bundleReloads: Counter<'result'>;
  readonly auditRecords: Counter<'listener'>;
}

/**
 * A counter child whose increments are summed in a plain number and handed to prom-client when the registry
 * is scraped (the counter's `collect`). prom-client hashes the label set on every `inc`, even through a
 * `labels()` child; on the per-statement and per-chunk paths that was a measurable share of the sidecar's CPU.
 */
export interface LocalCounter {
  inc(value?: number): void;
}

interface CounterCell {
  readonly labels: Partial<Record<string, string>>;
  value: number;
}

const cellsOf = new WeakMap<object, CounterCell[]>();

/** `collect` of the counters with local children: adds what the children counted since the last scrape. */
function collectLocalCounts(this: Counter): void {
  for (const cell of cellsOf.get(this) ?? []) {
    if (cell.value === 0) continue;
    this.inc(cell.labels, cell.value);
    cell.value = 0;
  }
}

/** A child of `counter` with these label values that counts locally (see LocalCounter). */
export function localCounter<L extends string>(counter: Counter<L>, labels: Partial<Record<L, string>>): LocalCounter {
  let cells = cellsOf.get(counter);
  if (cells === undefined) {
    cells = [];
    cellsOf.set(counter, cells);
  }
  const cell: CounterCell = { labels, value: 0 };
  cells.push(cell);
  return {
    inc(value = 1) {
      cell.value += value;
    },
  };
}

export function createSidecarMetrics(options: { defaultMetrics?: boolean } = {}): SidecarMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'chaperone_sidecar_' });
  const registers = [registry];
  return {
    registry,
    connections: new Counter({
      name: 'chaperone_connections_total',
      help: 'Client connections accepted.',
      labelNames: ['listener'],
      registers,
    }),
    activeConnections: new Gauge({
      name: 'chaperone_connections_active',
      help: 'Client connections open now.',
      labelNames: ['listener'],
      registers,
    }),
    refusedConnections: new Counter({
      name: 'chaperone_connections_refused_total',
      help: "Client connections refused because the listener's maxConnections was reached.",
      labelNames: ['listener'],
      registers,
    }),
    statements: new Counter({
      name: 'chaperone_statements_total',
      collect: collectLocalCounts,
      help: 'Statements decided, by decision (allow, deny, approve, error).',
      labelNames: ['listener', 'decision'],
      registers,
    }),
    decisionSeconds: new Histogram({
      name: 'chaperone_decision_duration_seconds',
      help: 'Time to analyse and decide one command.',
      labelNames: ['listener', 'cached'],
      buckets: [0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005, 0.02],
      registers,
    }),
    bytes: new Counter({
      name: 'chaperone_bytes_total',
      collect: collectLocalCounts,
      help: 'Bytes relayed, by direction (client_to_upstream, upstream_to_client).',
      labelNames: ['listener', 'direction'],
      registers,
    }),
    protocolErrors: new Counter({
      name: 'chaperone_protocol_errors_total',
      help: 'Connections ended by a protocol violation.',
      labelNames: ['listener'],
      registers,
    }),
    authFailures: new Counter({
      name: 'chaperone_auth_failures_total',
      help: 'Failed client authentications, by reason.',
      labelNames: ['listener', 'reason'],
      registers,
    }),
    bundleReloads: new Counter({
      name: 'chaperone_policy_bundle_reloads_total',
      help: 'Policy bundle set reloads, by result.',
      labelNames: ['result'],
      registers,
    }),
    auditRecords: new Counter({
      name: 'chaperone_audit_records_total',
      collect: collectLocalCounts,
      help: 'Audit records written.',
      labelNames: ['listener'],
      registers,
    }),
  };
}

/** The per-command metric children of one listener: counters counted locally, the histogram's labels bound once. */
export interface ListenerCommandMetrics {
  readonly statements: Readonly<Record<'allow' | 'deny' | 'approve' | 'error', LocalCounter>>;
  readonly decisionSeconds: { observe(seconds: number): void };
  readonly auditRecords: LocalCounter;
}

const bound = new WeakMap<SidecarMetrics, Map<string, ListenerCommandMetrics>>();

/** The command metrics of `listener`, created once per metrics registry and listener. */
export function listenerCommandMetrics(metrics: SidecarMetrics, listener: string): ListenerCommandMetrics {
  let byListener = bound.get(metrics);
  if (byListener === undefined) {
    byListener = new Map();
    bound.set(metrics, byListener);
  }
  let m = byListener.get(listener);
  if (m === undefined) {
    m = {
      statements: {
        allow: localCounter(metrics.statements, { listener, decision: 'allow' }),
        deny: localCounter(metrics.statements, { listener, decision: 'deny' }),
        approve: localCounter(metrics.statements, { listener, decision: 'approve' }),
        error: localCounter(metrics.statements, { listener, decision: 'error' }),
      },
      decisionSeconds: metrics.decisionSeconds.labels(listener, 'unknown'),
      auditRecords: localCounter(metrics.auditRecords, { listener }),
    };
    byListener.set(listener, m);
  }
  return m;
}

/** Serves /metrics (and /healthz) on host:port; resolves once listening. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url === '/metrics') {
      registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(body);
        },
        () => {
          res.writeHead(500);
          res.end();
        },
      );
    } else if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      resolve();
    });
  });
  return server;
}
