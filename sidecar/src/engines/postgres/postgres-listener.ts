// The PostgreSQL engine's listener: accepts agent connections on the configured (loopback or TLS)
// address and keeps the table of client-facing cancel keys, so a CancelRequest on a new connection
// reaches the right upstream session.
import { createServer, type Server, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { timingSafeEqual } from 'node:crypto';
import type { PostgresListenerConfig } from '../../config.ts';
import { parseHostPort } from '../../config.ts';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { AuditSink } from '../../core/audit/audit-sink.ts';
import type { PodChain } from '../../core/audit/pod-chain.ts';
import type { TokenVerifier } from '../../core/identity/token-verifier.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { SidecarMetrics } from '../../core/observability/metrics.ts';
import type { PolicyEngine } from '../../core/policy/policy-engine.ts';
import type { SqlAnalyzer } from './analysis/sql-analyzer.ts';
import { PostgresConnection } from './postgres-connection.ts';
import {
  connectUpstream,
  sendCancelRequest,
  type UpstreamConnectOptions,
  type UpstreamConnection,
  type UpstreamTlsOptions,
} from './protocol/upstream-connection.ts';

export interface PostgresListenerOptions {
  readonly config: PostgresListenerConfig;
  readonly pod: { readonly name: string; readonly namespace: string };
  readonly verifier: TokenVerifier;
  readonly policy: PolicyEngine;
  readonly sink: AuditSink;
  readonly podChain: PodChain;
  readonly metrics: SidecarMetrics;
  readonly logger: Logger;
  readonly analyzer: SqlAnalyzer;
}

/** What a connection needs from its listener; an interface so connections never reach into the server. */
export interface PostgresListenerContext extends PostgresListenerOptions {
  readonly resource: ResourceContext;
  readonly tls: SecureContext | undefined;
  /** chaperone_bytes_total children bound to this listener once: the hot path skips label hashing. */
  readonly bytesFromClients: { inc(value: number): void };
  readonly bytesToClients: { inc(value: number): void };
  upstreamTls(): UpstreamTlsOptions;
  connect(options: UpstreamConnectOptions): Promise<UpstreamConnection>;
  sendCancel: typeof sendCancelRequest;
  register(connection: PostgresConnection): void;
  unregister(connection: PostgresConnection): void;
  findByCancelKey(processId: number, secretKey: Buffer): PostgresConnection | undefined;
}

export class PostgresListener implements PostgresListenerContext {
  readonly config: PostgresListenerConfig;
  readonly pod: { readonly name: string; readonly namespace: string };
  readonly verifier: TokenVerifier;
  readonly policy: PolicyEngine;
  readonly sink: AuditSink;
  readonly podChain: PodChain;
  readonly metrics: SidecarMetrics;
  readonly logger: Logger;
  readonly analyzer: SqlAnalyzer;
  readonly resource: ResourceContext;
  readonly tls: SecureContext | undefined;
  readonly sendCancel = sendCancelRequest;
  readonly bytesFromClients: { inc(value: number): void };
  readonly bytesToClients: { inc(value: number): void };
  private readonly server: Server;
  private readonly open = new Set<PostgresConnection>();
  private readonly byCancelKey = new Map<number, PostgresConnection>();
  private readonly upstreamCa: string | undefined;

  constructor(options: PostgresListenerOptions) {
    this.config = options.config;
    this.pod = options.pod;
    this.verifier = options.verifier;
    this.policy = options.policy;
    this.sink = options.sink;
    this.podChain = options.podChain;
    this.metrics = options.metrics;
    this.logger = options.logger.child({ listener: options.config.name, engine: 'postgres' });
    this.analyzer = options.analyzer;
    this.bytesFromClients = options.metrics.bytes.labels(options.config.name, 'client_to_upstream');
    this.bytesToClients = options.metrics.bytes.labels(options.config.name, 'upstream_to_client');
    this.resource = {
      name: options.config.name,
      namespace: options.config.resource.namespace,
      type: 'postgres',
      labels: options.config.resource.labels,
    };
    const tls = options.config.tls;
    this.tls =
      tls === undefined
        ? undefined
        : createSecureContext({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) });
    const caFile = options.config.upstream.tls.caFile;
    this.upstreamCa = caFile === undefined ? undefined : readFileSync(caFile, 'utf8');
    this.server = createServer({ noDelay: true }, (socket) => {
      this.accept(socket);
    });
  }

  private accept(socket: Socket): void {
    const listener = this.config.name;
    this.metrics.connections.inc({ listener });
    this.metrics.activeConnections.inc({ listener });
    socket.once('close', () => this.metrics.activeConnections.dec({ listener }));
    const connection = new PostgresConnection(this, socket);
    this.open.add(connection);
    socket.once('close', () => this.open.delete(connection));
  }

  async listen(): Promise<{ host: string; port: number }> {
    const { host, port } = parseHostPort(this.config.listen);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', reject);
        resolve();
      });
    });
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('listener has no address');
    this.logger.info('listening', { address: address.address, port: address.port });
    return { host: address.address, port: address.port };
  }

  async close(): Promise<void> {
    for (const c of this.open) c.close('sidecar shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  upstreamTls(): UpstreamTlsOptions {
    const t = this.config.upstream.tls;
    return {
      mode: t.mode,
      ...(this.upstreamCa === undefined ? {} : { ca: this.upstreamCa }),
      ...(t.serverName === undefined ? {} : { servername: t.serverName }),
    };
  }

  connect(options: UpstreamConnectOptions): Promise<UpstreamConnection> {
    return connectUpstream(options);
  }

  register(connection: PostgresConnection): void {
    this.byCancelKey.set(connection.cancelKey.processId, connection);
  }

  unregister(connection: PostgresConnection): void {
    if (this.byCancelKey.get(connection.cancelKey.processId) === connection) {
      this.byCancelKey.delete(connection.cancelKey.processId);
    }
  }

  findByCancelKey(processId: number, secretKey: Buffer): PostgresConnection | undefined {
    const c = this.byCancelKey.get(processId);
    if (c === undefined || secretKey.length !== c.cancelKey.secretKey.length) return undefined;
    return timingSafeEqual(secretKey, c.cancelKey.secretKey) ? c : undefined;
  }
}
