// What one PostgreSQL client connection needs from the resource it was accepted for (postgres-engine.ts
// implements it). An interface of its own, so the connection and the engine do not import each other.
import type { SecureContext } from 'node:tls';
import type { PostgresListenerConfig } from '../../config.ts';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { EngineServices } from '../../core/engine.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { SqlAnalyzers } from './analysis/sql-analyzer.ts';
import type { RelationCatalog } from './masking/relation-catalog.ts';
import type { UpstreamReuse } from './upstream-reuse.ts';
import type {
  UpstreamConnectOptions,
  UpstreamConnection,
  UpstreamTlsOptions,
  sendCancelRequest,
} from './protocol/upstream-connection.ts';

/** A connection's client-facing cancel key (BackendKeyData), and how to cancel what it runs. */
export interface CancelTarget {
  readonly cancelKey: { readonly processId: number; readonly secretKey: Buffer };
  /** Withdraws a command waiting for approval, or else sends a CancelRequest upstream with the upstream's own key. */
  cancelUpstream(): Promise<void>;
}

export interface ConnectionContext {
  readonly config: PostgresListenerConfig;
  readonly services: EngineServices;
  /** The resource as policy input and records name it. */
  readonly resource: ResourceContext;
  /** The services' logger, labelled with this listener. */
  readonly logger: Logger;
  /**
   * The analyzers per upstream major version (one set per process, shared by every resource). The first
   * call loads the SQL parser (WebAssembly); later calls return the same set. Rejects when the parser
   * cannot be loaded (the next call tries again).
   */
  analyzers(): Promise<SqlAnalyzers>;
  /** The relations result masking looks up (one catalogue connection per resource). */
  readonly catalog: RelationCatalog;
  /** Key of the hash masking strategy (config masking.hashKeyFile, else one per process). */
  readonly maskingHashKey: Buffer;
  /** Client-facing TLS, when the listener has it. */
  readonly tls: SecureContext | undefined;
  /** chaperone_bytes_total children of this listener, counted locally (core/observability/metrics.ts). */
  readonly bytesFromClients: { inc(value: number): void };
  readonly bytesToClients: { inc(value: number): void };
  upstreamTls(): UpstreamTlsOptions;
  connect(options: UpstreamConnectOptions): Promise<UpstreamConnection>;
  /** The resource's parked upstream sessions (upstream-reuse.ts). */
  readonly upstreamReuse: UpstreamReuse;
  readonly sendCancel: typeof sendCancelRequest;
  /** The listener's table of client-facing cancel keys. */
  register(connection: CancelTarget): void;
  unregister(connection: CancelTarget): void;
  findByCancelKey(processId: number, secretKey: Buffer): CancelTarget | undefined;
  /** Hands a cancel key no connection of this loop has to the other event loops; true when one cancelled. */
  cancelOnOtherLoops(processId: number, secretKey: Buffer): Promise<boolean>;
  /**
   * Counts a connection from `address` that has not authenticated yet; false when that address already
   * has maxUnauthenticatedPerSource of them, on every event loop together (the connection is then refused,
   * and not counted).
   */
  admitUnauthenticated(address: string): boolean;
  /** Ends the count of an admitted connection: it authenticated, or closed. Call once per admission. */
  releaseUnauthenticated(address: string): void;
}
