// Accepts client connections for one protected resource on its configured address and hands each socket to
// the resource's engine endpoint. Protocol-neutral: it counts connections, refuses them past the listener's
// maxConnections (the engine words the refusal in its protocol: TooManyConnections) and closes them on
// shutdown.
import { createServer, type Server, type Socket } from 'node:net';
import { parseHostPort } from '../config.ts';
import type { ConnectionHandler, ResourceEndpoint, ResourceListenerConfig } from './engine.ts';
import type { SidecarError } from './errors.ts';
import type { Logger } from './observability/logger.ts';
import type { SidecarMetrics } from './observability/metrics.ts';

/** Refusals being delivered at once; past it a refused socket is closed without a word (a flood). */
const MAX_REFUSING = 64;
/** At most one log line per this many ms about refused connections. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** How a listener is one of several event loops' listeners on the same port (docs/sidecar-event-loops.md). */
export interface ListenerLoop {
  /** This loop's index (0: the main thread), the `loop` label of chaperone_event_loop_connections_total. */
  readonly index: number;
  /**
   * The listener's open connections on every loop, one Int32 in shared memory (new Int32Array(shared, i, 1)):
   * maxConnections holds for the listener, not per loop.
   */
  readonly openConnections: Int32Array;
  /** This loop's open connections on every listener, one Int32 in shared memory: whether it is idle. */
  readonly loopConnections: Int32Array;
  /** Called after each accepted connection is counted (the main loop's lazily started loops watch for bursts). */
  readonly onAccept?: () => void;
}

export class ResourceListener {
  private readonly config: ResourceListenerConfig;
  private readonly logger: Logger;
  private readonly server: Server;
  private readonly open = new Set<ConnectionHandler>();
  private readonly refusing = new Set<ConnectionHandler>();
  private readonly endpoint: ResourceEndpoint;
  private refusedSinceLog = 0;
  private lastRefusalLog = 0;
  private readonly loop: ListenerLoop | undefined;

  /** `loop`: when more than one event loop listens on this port (SO_REUSEPORT), which one this is. */
  constructor(
    config: ResourceListenerConfig,
    endpoint: ResourceEndpoint,
    services: { readonly metrics: SidecarMetrics; readonly logger: Logger },
    loop?: ListenerLoop,
  ) {
    this.config = config;
    this.endpoint = endpoint;
    this.loop = loop;
    this.logger = services.logger.child({ listener: config.name, engine: config.type });
    const metrics = services.metrics;
    const labels = { listener: config.name };
    const loopLabels = { listener: config.name, loop: String(loop?.index ?? 0) };
    const max = config.maxConnections ?? Infinity;
    const shared = loop?.openConnections;
    this.server = createServer({ noDelay: true }, (socket) => {
      const open = shared === undefined ? this.open.size : Atomics.add(shared, 0, 1);
      if (open >= max) {
        if (shared !== undefined) Atomics.sub(shared, 0, 1);
        metrics.refusedConnections.inc(labels);
        this.refuse(socket, max);
        return;
      }
      metrics.connections.inc(labels);
      metrics.loopConnections.inc(loopLabels);
      metrics.activeConnections.inc(labels);
      if (loop !== undefined) {
        Atomics.add(loop.loopConnections, 0, 1);
        loop.onAccept?.();
      }
      const connection = this.endpoint.accept(socket);
      this.open.add(connection);
      socket.once('close', () => {
        if (shared !== undefined) Atomics.sub(shared, 0, 1);
        if (loop !== undefined) Atomics.sub(loop.loopConnections, 0, 1);
        metrics.activeConnections.dec(labels);
        this.open.delete(connection);
      });
    });
  }

  /** Connections being served now (refused ones not counted). */
  get openConnections(): number {
    return this.open.size;
  }

  get name(): string {
    return this.config.name;
  }

  private refuse(socket: Socket, max: number): void {
    this.noteRefusal(max);
    if (this.endpoint.refuse === undefined || this.refusing.size >= MAX_REFUSING) {
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const refusal: SidecarError = {
      id: 'TooManyConnections',
      message: `chaperone: too many connections to ${this.config.name} (this sidecar serves at most ${String(max)} at once)`,
      hint: 'Retry once other connections have closed, or raise maxConnections of the listener.',
    };
    const handler = this.endpoint.refuse(socket, refusal);
    this.refusing.add(handler);
    socket.once('close', () => {
      this.refusing.delete(handler);
    });
  }

  private noteRefusal(max: number): void {
    this.refusedSinceLog += 1;
    const now = Date.now();
    if (now - this.lastRefusalLog < REFUSAL_LOG_INTERVAL_MS) return;
    this.logger.warn('connections refused: maxConnections reached', {
      maxConnections: max,
      refused: this.refusedSinceLog,
    });
    this.lastRefusalLog = now;
    this.refusedSinceLog = 0;
  }

  async listen(): Promise<{ host: string; port: number }> {
    const { host, port } = parseHostPort(this.config.listen);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      // Every loop's socket sets SO_REUSEPORT, the first one's too; the kernel spreads new connections.
      this.server.listen({ port, host, reusePort: this.loop !== undefined }, () => {
        this.server.removeListener('error', reject);
        resolve();
      });
    });
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('listener has no address');
    this.logger.info('listening', { address: address.address, port: address.port });
    return { host: address.address, port: address.port };
  }

  /**
   * Stops accepting (the other loops' sockets on the port get the new connections) and resolves once the
   * connections it serves have ended on their own; then the endpoint closes (a lazily started loop stopping).
   */
  async drain(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.endpoint.close?.();
  }

  async close(): Promise<void> {
    for (const c of this.open) c.close('sidecar shutting down');
    for (const c of this.refusing) c.close('sidecar shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.endpoint.close?.();
  }
}
