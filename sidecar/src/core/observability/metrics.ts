// Prometheus metrics of the sidecar (prom-client), created once per process on their own registry and
// served on the metrics port. Names follow Prometheus conventions: chaperone_ prefix, _total counters,
// base units (seconds, bytes).
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface SidecarMetrics {
  readonly registry: Registry;
  readonly connections: Counter<'listener'>;
  readonly activeConnections: Gauge<'listener'>;
  readonly statements: Counter<'listener' | 'decision'>;
  readonly decisionSeconds: Histogram<'listener' | 'cached'>;
  readonly bytes: Counter<'listener' | 'direction'>;
  readonly protocolErrors: Counter<'listener'>;
  readonly authFailures: Counter<'listener' | 'reason'>;
  readonly bundleReloads: Counter<'result'>;
  readonly auditRecords: Counter<'listener'>;
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
    statements: new Counter({
      name: 'chaperone_statements_total',
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
      help: 'Audit records written.',
      labelNames: ['listener'],
      registers,
    }),
  };
}

/** The per-command metric children of one listener, label values bound once (prom-client hashes labels per call otherwise). */
export interface ListenerCommandMetrics {
  readonly statements: Readonly<Record<'allow' | 'deny' | 'approve' | 'error', { inc(): void }>>;
  readonly decisionSeconds: { observe(seconds: number): void };
  readonly auditRecords: { inc(): void };
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
        allow: metrics.statements.labels(listener, 'allow'),
        deny: metrics.statements.labels(listener, 'deny'),
        approve: metrics.statements.labels(listener, 'approve'),
        error: metrics.statements.labels(listener, 'error'),
      },
      decisionSeconds: metrics.decisionSeconds.labels(listener, 'unknown'),
      auditRecords: metrics.auditRecords.labels(listener),
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
