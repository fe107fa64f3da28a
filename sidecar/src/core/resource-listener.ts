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

export class ResourceListener {
  private readonly config: ResourceListenerConfig;
  private readonly logger: Logger;
  private readonly server: Server;
  private readonly open = new Set<ConnectionHandler>();
  private readonly refusing = new Set<ConnectionHandler>();
  private readonly endpoint: ResourceEndpoint;
  private refusedSinceLog = 0;
  private lastRefusalLog = 0;

  constructor(
    config: ResourceListenerConfig,
    endpoint: ResourceEndpoint,
    services: { readonly metrics: SidecarMetrics; readonly logger: Logger },
  ) {
    this.config = config;
    this.endpoint = endpoint;
    this.logger = services.logger.child({ listener: config.name, engine: config.type });
    const metrics = services.metrics;
    const labels = { listener: config.name };
    const max = config.maxConnections ?? Infinity;
    this.server = createServer({ noDelay: true }, (socket) => {
      if (this.open.size >= max) {
        metrics.refusedConnections.inc(labels);
        this.refuse(socket, max);
        return;
      }
      metrics.connections.inc(labels);
      metrics.activeConnections.inc(labels);
      const connection = this.endpoint.accept(socket);
      this.open.add(connection);
      socket.once('close', () => {
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
    for (const c of this.refusing) c.close('sidecar shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.endpoint.close?.();
  }
}
