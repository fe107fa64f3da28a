// Prometheus metrics of the sidecar (prom-client), created once per process on their own registry and
// served on the metrics port. Names follow Prometheus conventions: chaperone_ prefix, _total counters,
// base units (seconds, bytes).
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';

export interface SidecarMetrics {
  readonly registry: Registry;
  readonly connections: Counter<'listener'>;
  readonly activeConnections: Gauge<'listener'>;
  readonly refusedConnections: Counter<'listener'>;
  /** Client connections accepted per event loop (docs/sidecar-event-loops.md). */
  readonly loopConnections: Counter<'listener' | 'loop'>;
  readonly statements: Counter<'listener' | 'decision'>;
  readonly decisionSeconds: LocalHistogram<'listener' | 'cached'>;
  readonly bytes: Counter<'listener' | 'direction'>;
  readonly protocolErrors: Counter<'listener'>;
  readonly authFailures: Counter<'listener' | 'reason'>;
  readonly bundleReloads: Counter<'result'>;
  readonly auditRecords: Counter<'listener'>;
  readonly upstreamParked: Gauge<'listener'>;
  readonly upstreamLogins: Counter<'listener'>;
  readonly upstreamReuses: Counter<'listener'>;
  readonly upstreamDiscards: Counter<'listener' | 'reason'>;
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

/** One label set's buckets (not cumulative; the last one counts values above every bound), sum and count. */
interface HistogramCell {
  readonly labels: Readonly<Record<string, string>>;
  readonly buckets: number[];
  sum: number;
  count: number;
}

/**
 * A histogram whose children, resolved once per label set, observe into plain numbers; the registry reads
 * them when scraped. prom-client's Histogram validates and hashes the label set on every `observe`, also
 * through a `labels()` child, which was a measurable share of each statement's CPU. The exposition is
 * prom-client's own for a histogram: the same `_bucket` (cumulative, with `le` first and `+Inf`), `_sum`
 * and `_count` lines, labels in the order of `labelNames`.
 */
export class LocalHistogram<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly labelNames: readonly L[];
  private readonly upperBounds: readonly number[];
  private readonly cells = new Map<string, HistogramCell>();

  constructor(config: {
    name: string;
    help: string;
    labelNames: readonly L[];
    buckets: readonly number[];
    registers: readonly Registry[];
  }) {
    this.name = config.name;
    this.help = config.help;
    this.labelNames = config.labelNames;
    this.upperBounds = [...config.buckets].sort((a, b) => a - b);
    // The registry only reads name, help, type, aggregator and get(); prom-client's Metric union names its
    // own classes, so this object is registered as one.
    for (const registry of config.registers) registry.registerMetric(this as unknown as Metric);
  }

  /** The child of these label values (in `labelNames` order): look it up once, observe many times. */
  labels(...values: string[]): { observe(value: number): void } {
    if (values.length !== this.labelNames.length) {
      throw new Error(
        `${this.name}: ${String(values.length)} label values for ${String(this.labelNames.length)} labels`,
      );
    }
    const key = values.join('\u0000');
    let cell = this.cells.get(key);
    if (cell === undefined) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((name, i) => (labels[name] = values[i] ?? ''));
      cell = { labels, buckets: new Array<number>(this.upperBounds.length + 1).fill(0), sum: 0, count: 0 };
      this.cells.set(key, cell);
    }
    const target = cell;
    const bounds = this.upperBounds;
    return {
      observe(value: number): void {
        if (!Number.isFinite(value)) throw new TypeError(`not a finite number: ${String(value)}`);
        let i = 0;
        while (i < bounds.length && value > (bounds[i] as number)) i++;
        (target.buckets[i] as number) += 1;
        target.sum += value;
        target.count += 1;
      },
    };
  }

  /** The samples in prom-client's shape for a histogram (what Registry.metrics() formats). */
  get(): Promise<{
    name: string;
    help: string;
    type: 'histogram';
    aggregator: 'sum';
    values: { labels: Record<string, string | number>; value: number; metricName: string }[];
  }> {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    const bucketName = `${this.name}_bucket`;
    for (const cell of this.cells.values()) {
      let cumulative = 0;
      this.upperBounds.forEach((le, i) => {
        cumulative += cell.buckets[i] as number;
        values.push({ labels: { le, ...cell.labels }, value: cumulative, metricName: bucketName });
      });
      values.push({ labels: { le: '+Inf', ...cell.labels }, value: cell.count, metricName: bucketName });
      values.push({ labels: { ...cell.labels }, value: cell.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...cell.labels }, value: cell.count, metricName: `${this.name}_count` });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }

  /** Registry.resetMetrics(): every child keeps its cell, counted from zero. */
  reset(): void {
    for (const cell of this.cells.values()) {
      cell.buckets.fill(0);
      cell.sum = 0;
      cell.count = 0;
    }
  }
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
    loopConnections: new Counter({
      name: 'chaperone_event_loop_connections_total',
      help: 'Client connections accepted, by the event loop that serves them (0: the main thread).',
      labelNames: ['listener', 'loop'],
      registers,
    }),
    statements: new Counter({
      name: 'chaperone_statements_total',
      collect: collectLocalCounts,
      help: 'Statements decided, by decision (allow, deny, approve, error).',
      labelNames: ['listener', 'decision'],
      registers,
    }),
    decisionSeconds: new LocalHistogram({
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
    upstreamParked: new Gauge({
      name: 'chaperone_upstream_connections_parked',
      help: 'Reset upstream sessions waiting to be reused.',
      labelNames: ['listener'],
      registers,
    }),
    upstreamLogins: new Counter({
      name: 'chaperone_upstream_logins_total',
      help: 'Upstream sessions opened with a new login.',
      labelNames: ['listener'],
      registers,
    }),
    upstreamReuses: new Counter({
      name: 'chaperone_upstream_reuses_total',
      help: 'Agent connections served by a parked upstream session instead of a new login.',
      labelNames: ['listener'],
      registers,
    }),
    upstreamDiscards: new Counter({
      name: 'chaperone_upstream_discards_total',
      help: 'Upstream sessions closed instead of parked or reused, by reason.',
      labelNames: ['listener', 'reason'],
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

/** What /metrics serves: a registry, or the sum of several event loops' registries (event-loops.ts). */
export type MetricsSource = Pick<Registry, 'contentType' | 'metrics'>;

/** Serves /metrics (and /healthz) on host:port; resolves once listening. */
export async function serveMetrics(registry: MetricsSource, host: string, port: number): Promise<Server> {
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
