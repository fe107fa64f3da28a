// Accepts client connections for one protected resource on its configured address and hands each socket to
// the resource's engine endpoint. Protocol-neutral: it counts connections and closes them on shutdown.
import { createServer, type Server } from 'node:net';
import { parseHostPort } from '../config.ts';
import type { ConnectionHandler, ResourceEndpoint, ResourceListenerConfig } from './engine.ts';
import type { Logger } from './observability/logger.ts';
import type { SidecarMetrics } from './observability/metrics.ts';

export class ResourceListener {
  private readonly config: ResourceListenerConfig;
  private readonly logger: Logger;
  private readonly server: Server;
  private readonly open = new Set<ConnectionHandler>();

  constructor(
    config: ResourceListenerConfig,
    endpoint: ResourceEndpoint,
    services: { readonly metrics: SidecarMetrics; readonly logger: Logger },
  ) {
    this.config = config;
    this.logger = services.logger.child({ listener: config.name, engine: config.type });
    const metrics = services.metrics;
    const labels = { listener: config.name };
    this.server = createServer({ noDelay: true }, (socket) => {
      metrics.connections.inc(labels);
      metrics.activeConnections.inc(labels);
      const connection = endpoint.accept(socket);
      this.open.add(connection);
      socket.once('close', () => {
        metrics.activeConnections.dec(labels);
        this.open.delete(connection);
      });
    });
  }

  get name(): string {
    return this.config.name;
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
}
