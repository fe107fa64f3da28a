// Prometheus metrics of the operator (prom-client), created once per process on their own registry, with
// names after controller-runtime's (controller_runtime_reconcile_total, workqueue_depth, ...) under the
// chaperone_ prefix. Served with /healthz and /readyz on --metrics-bind-address.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const RECONCILE_RESULTS = ['success', 'requeue_after', 'error', 'terminal_error'] as const;
export type ReconcileResultLabel = (typeof RECONCILE_RESULTS)[number];

export interface OperatorMetrics {
  readonly registry: Registry;
  readonly reconcileTotal: Counter<'controller' | 'result'>;
  readonly reconcileSeconds: Histogram<'controller'>;
  readonly activeWorkers: Gauge<'controller'>;
  readonly queueDepth: Gauge<'name'>;
  readonly queueAdds: Counter<'name'>;
  readonly queueRetries: Counter<'name'>;
  readonly isLeader: Gauge<'lease'>;
  readonly policyCompiles: Counter<'result'>;
  readonly policyCompileSeconds: Histogram;
  readonly sessionsPruned: Counter<'namespace'>;
  readonly checkpoints: Counter<'result'>;
  readonly checkpointSessions: Gauge;
  readonly tamperedConfigMaps: Counter<'kind'>;
}

export function createOperatorMetrics(options: { defaultMetrics?: boolean } = {}): OperatorMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'chaperone_operator_' });
  const registers = [registry];
  return {
    registry,
    reconcileTotal: new Counter({
      name: 'chaperone_controller_reconcile_total',
      help: 'Reconciles, by controller and result (success, requeue_after, error, terminal_error).',
      labelNames: ['controller', 'result'],
      registers,
    }),
    reconcileSeconds: new Histogram({
      name: 'chaperone_controller_reconcile_duration_seconds',
      help: 'Time per reconcile, by controller.',
      labelNames: ['controller'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
    activeWorkers: new Gauge({
      name: 'chaperone_controller_active_workers',
      help: 'Workers reconciling right now, by controller.',
      labelNames: ['controller'],
      registers,
    }),
    queueDepth: new Gauge({
      name: 'chaperone_workqueue_depth',
      help: 'Keys waiting in the work queue.',
      labelNames: ['name'],
      registers,
    }),
    queueAdds: new Counter({
      name: 'chaperone_workqueue_adds_total',
      help: 'Keys added to the work queue (after de-duplication).',
      labelNames: ['name'],
      registers,
    }),
    queueRetries: new Counter({
      name: 'chaperone_workqueue_retries_total',
      help: 'Rate-limited re-adds after a failed reconcile.',
      labelNames: ['name'],
      registers,
    }),
    isLeader: new Gauge({
      name: 'chaperone_leader_election_is_leader',
      help: '1 while this replica holds the leader Lease.',
      labelNames: ['lease'],
      registers,
    }),
    policyCompiles: new Counter({
      name: 'chaperone_policy_compiles_total',
      help: 'AccessPolicy compilations with opa, by result (success, failure); cache hits are not counted.',
      labelNames: ['result'],
      registers,
    }),
    policyCompileSeconds: new Histogram({
      name: 'chaperone_policy_compile_duration_seconds',
      help: 'Time to render and compile one AccessPolicy.',
      buckets: [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    sessionsPruned: new Counter({
      name: 'chaperone_sessions_pruned_total',
      help: 'Session objects deleted by the retention controller because their retention expired, by namespace.',
      labelNames: ['namespace'],
      registers,
    }),
    checkpoints: new Counter({
      name: 'chaperone_audit_checkpoints_total',
      help: 'Audit checkpoints, by result (written, unchanged, error).',
      labelNames: ['result'],
      registers,
    }),
    checkpointSessions: new Gauge({
      name: 'chaperone_audit_checkpoint_objects',
      help: 'Session objects whose signed heads the newest audit checkpoint states.',
      registers,
    }),
    tamperedConfigMaps: new Counter({
      name: 'chaperone_policy_configmaps_restored_total',
      help: 'Policy ConfigMaps found altered by someone else and restored, by kind (policy-bundle, policy-set).',
      labelNames: ['kind'],
      registers,
    }),
  };
}

export interface MetricsServer {
  /** host:port actually bound. */
  readonly address: string;
  close(): Promise<void>;
}

/**
 * Serves /metrics, /healthz (process up) and /readyz (ready() true) on `bindAddress` ("host:port",
 * ":port" for every interface; port 0 picks a free one).
 */
export async function serveMetrics(
  registry: Registry,
  bindAddress: string,
  ready: () => boolean = () => true,
): Promise<MetricsServer> {
  const colon = bindAddress.lastIndexOf(':');
  const host = colon <= 0 ? undefined : bindAddress.slice(0, colon).replace(/^\[|\]$/g, '');
  const port = Number(bindAddress.slice(colon + 1));
  if (colon === -1 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`metrics bind address ${JSON.stringify(bindAddress)} is not host:port or :port`);
  }
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        },
        (err: unknown) => {
          res.writeHead(500).end(String(err));
        },
      );
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
      return;
    }
    if (path === '/readyz') {
      const ok = ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok' : 'not ready');
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  return {
    address: `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        server.closeAllConnections();
      }),
  };
}
