// The PostgreSQL engine (core/engine.ts): loads the SQL parser once per process, on the first client
// connection rather than at start (an idle sidecar does not carry its ~25 MiB; one analyzer per upstream
// major version, shared by every resource), and for each configured resource binds an endpoint that keeps
// the resource's TLS context, upstream settings, the table of client-facing cancel keys (so a CancelRequest
// on a new connection reaches the right upstream session) and the count of unauthenticated connections per
// client address (shared with the other event loops when there may be any), and turns every accepted socket
// into a PostgresConnection.
import type { Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { timingSafeEqual } from 'node:crypto';
import type { PostgresListenerConfig } from '../../config.ts';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { Engine, EngineServices, ResourceEndpoint } from '../../core/engine.ts';
import type { SidecarError } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { localCounter, type LocalCounter } from '../../core/observability/metrics.ts';
import { loadSqlParser } from './analysis/analyze-sql.ts';
import { createSqlAnalyzers, type SqlAnalyzers } from './analysis/sql-analyzer.ts';
import type { CancelTarget, ConnectionContext } from './connection-context.ts';
import { PostgresConnection } from './postgres-connection.ts';
import { cachedLookup } from './upstream-address-cache.ts';
import { RelationCatalog } from './masking/relation-catalog.ts';
import { UpstreamReuse } from './upstream-reuse.ts';
import { PROCESS_HASH_KEY } from '../../core/masking/mask-value.ts';
import {
  connectUpstream,
  sendCancelRequest,
  type UpstreamConnectOptions,
  type UpstreamConnection,
  type UpstreamTlsOptions,
} from './protocol/upstream-connection.ts';

/** Analyses kept per process (shared by every PostgreSQL resource of the sidecar). */
const ANALYSIS_CACHE_SIZE = 4096;

export interface PostgresEngineOptions {
  /**
   * The analyzers to use instead of the engine's own (created at init). For tests that show what the
   * database-enforced layer does when the analysis misses a statement.
   */
  readonly analyzers?: () => SqlAnalyzers;
}

export function createPostgresEngine(options: PostgresEngineOptions = {}): Engine<PostgresListenerConfig> {
  let loading: Promise<SqlAnalyzers> | undefined;
  const analyzers = (): Promise<SqlAnalyzers> => {
    loading ??= loadSqlParser().then(
      () => options.analyzers?.() ?? createSqlAnalyzers({ cacheSize: ANALYSIS_CACHE_SIZE }),
      (err: unknown) => {
        loading = undefined; // the next connection tries again
        throw err;
      },
    );
    return loading;
  };
  return {
    type: 'postgres',
    // The parser is loaded by the first connection (analyzers()), not here.
    init: () => Promise.resolve(),
    bind(config, services) {
      return new PostgresEndpoint(config, services, analyzers);
    },
  };
}

/** A CancelRequest handed to the other event loops (LoopPeers.ask). */
interface PeerCancel {
  readonly cancel: { readonly processId: number; readonly secretKey: string };
}

class PostgresEndpoint implements ResourceEndpoint, ConnectionContext {
  readonly config: PostgresListenerConfig;
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly analyzers: () => Promise<SqlAnalyzers>;
  readonly tls: SecureContext | undefined;
  readonly sendCancel = sendCancelRequest;
  readonly bytesFromClients: LocalCounter;
  readonly bytesToClients: LocalCounter;
  private readonly byCancelKey = new Map<number, CancelTarget>();
  private readonly unauthenticated = new Map<string, number>();
  /** Built once: a connection storm would otherwise parse the CA and build a TLS context per connection. */
  private readonly upstreamTlsOptions: UpstreamTlsOptions;
  readonly catalog: RelationCatalog;
  readonly maskingHashKey: Buffer;
  readonly upstreamReuse: UpstreamReuse;
  /** The upstream host's addresses, reused for a few seconds (upstream-address-cache.ts). */
  private readonly lookup = cachedLookup();

  constructor(config: PostgresListenerConfig, services: EngineServices, analyzers: () => Promise<SqlAnalyzers>) {
    this.config = config;
    this.services = services;
    this.analyzers = analyzers;
    this.logger = services.logger.child({ listener: config.name, engine: 'postgres' });
    this.bytesFromClients = localCounter(services.metrics.bytes, {
      listener: config.name,
      direction: 'client_to_upstream',
    });
    this.bytesToClients = localCounter(services.metrics.bytes, {
      listener: config.name,
      direction: 'upstream_to_client',
    });
    this.resource = {
      name: config.name,
      namespace: config.resource.namespace,
      type: config.type,
      labels: config.resource.labels,
    };
    const tls = config.tls;
    this.tls =
      tls === undefined
        ? undefined
        : createSecureContext({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) });
    const t = config.upstream.tls;
    const ca = t.caFile === undefined ? undefined : readFileSync(t.caFile, 'utf8');
    this.upstreamTlsOptions = {
      mode: t.mode,
      ...(ca === undefined ? {} : { ca }),
      ...(t.serverName === undefined ? {} : { servername: t.serverName }),
      ...(t.mode === 'disable' ? {} : { secureContext: createSecureContext(ca === undefined ? {} : { ca }) }),
    };
    const keyFile = config.masking?.hashKeyFile;
    this.maskingHashKey = keyFile === undefined ? PROCESS_HASH_KEY : readFileSync(keyFile);
    this.catalog = new RelationCatalog(() => this.connectCatalog(), Date.now, services.catalogGeneration);
    this.upstreamReuse = new UpstreamReuse({
      config: config.upstreamReuse,
      listener: config.name,
      metrics: services.metrics,
      logger: this.logger,
    });
  }

  /** The catalogue connection: the resource's credential, nothing passed from a client. */
  private async connectCatalog(): Promise<UpstreamConnection> {
    const up = this.config.upstream;
    const connection = await this.connect({
      host: up.host,
      port: up.port,
      database: up.database,
      user: readFileSync(up.usernameFile, 'utf8').trim(),
      password: readFileSync(up.passwordFile, 'utf8').replace(/\r?\n$/, ''),
      tls: this.upstreamTls(),
      // A session holding a lock on a relation (an uncommitted CREATE OR REPLACE VIEW) must not stall the
      // catalogue queries of every session: they give up, and what stays unknown is masked or denied.
      parameters: [
        ['application_name', 'chaperone-masking-catalogue'],
        ['lock_timeout', '2s'],
        ['statement_timeout', '10s'],
      ],
    });
    // The catalogue connection never keeps the process alive.
    (connection.socket as Partial<Socket>).unref?.();
    return connection;
  }

  accept(socket: Socket): PostgresConnection {
    return new PostgresConnection(this, socket);
  }

  /** Answers the StartupMessage with `refusal` (a CancelRequest on such a connection is still forwarded). */
  refuse(socket: Socket, refusal: SidecarError): PostgresConnection {
    return new PostgresConnection(this, socket, refusal);
  }

  /** The listener closed: parked upstream sessions get Terminate (docs/postgres-engine.md, "Upstream session reuse"). */
  close(): Promise<void> {
    return this.upstreamReuse.close();
  }

  upstreamTls(): UpstreamTlsOptions {
    return this.upstreamTlsOptions;
  }

  connect(options: UpstreamConnectOptions): Promise<UpstreamConnection> {
    return connectUpstream({ lookup: this.lookup, ...options });
  }

  register(connection: CancelTarget): void {
    this.byCancelKey.set(connection.cancelKey.processId, connection);
  }

  unregister(connection: CancelTarget): void {
    if (this.byCancelKey.get(connection.cancelKey.processId) === connection) {
      this.byCancelKey.delete(connection.cancelKey.processId);
    }
  }

  // With more than one loop possible the count is every loop's (services.sourceCounts, chosen at bind: a
  // connection is released where it was admitted); with one loop for good, exact per address here.
  admitUnauthenticated(address: string): boolean {
    const shared = this.services.sourceCounts;
    if (shared !== undefined) return shared.admit(address, this.config.maxUnauthenticatedPerSource);
    const count = this.unauthenticated.get(address) ?? 0;
    if (count >= this.config.maxUnauthenticatedPerSource) return false;
    this.unauthenticated.set(address, count + 1);
    return true;
  }

  releaseUnauthenticated(address: string): void {
    const shared = this.services.sourceCounts;
    if (shared !== undefined) {
      shared.release(address);
      return;
    }
    const count = this.unauthenticated.get(address) ?? 0;
    if (count <= 1) this.unauthenticated.delete(address);
    else this.unauthenticated.set(address, count - 1);
  }

  findByCancelKey(processId: number, secretKey: Buffer): CancelTarget | undefined {
    const c = this.byCancelKey.get(processId);
    if (c === undefined || secretKey.length !== c.cancelKey.secretKey.length) return undefined;
    return timingSafeEqual(secretKey, c.cancelKey.secretKey) ? c : undefined;
  }

  async cancelOnOtherLoops(processId: number, secretKey: Buffer): Promise<boolean> {
    const peers = this.services.peers;
    if (peers === undefined) return false;
    const message: PeerCancel = { cancel: { processId, secretKey: secretKey.toString('base64') } };
    return (await peers.ask(this.config.name, message)).includes(true);
  }

  /** Another event loop's CancelRequest (cancelOnOtherLoops): true when a connection of this loop had its key. */
  async fromPeer(message: unknown): Promise<boolean> {
    const cancel = (message as Partial<PeerCancel>).cancel;
    if (cancel === undefined) return false;
    const target = this.findByCancelKey(cancel.processId, Buffer.from(cancel.secretKey, 'base64'));
    if (target === undefined) return false;
    this.logger.info('cancel request from another event loop', { processId: cancel.processId });
    await target.cancelUpstream();
    return true;
  }
}
