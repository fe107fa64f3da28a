// What every HTTP-speaking endpoint (Kubernetes API, HTTP) holds for the requests it serves: the resource it
// records, the upstream and its keep-alive pool, the connection's agent sessions and the strict HTTP/1.1
// server the core's listener feeds sockets to. An engine extends it with how one request is served and how
// its errors read in its protocol (a Kubernetes Status, an RFC 9457 problem).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ResourceType } from '@chaperone/api';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { ConnectionHandler, EngineServices, ResourceEndpoint } from '../../core/engine.ts';
import type { SidecarError } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { ClientSessions } from './client-sessions.ts';
import { EngineServer, type EngineServerOptions } from './engine-server.ts';
import { Upstream, type UpstreamConfig } from './upstream.ts';

/** The part of an HTTP-speaking listener's configuration the shared endpoint reads. */
export interface HttpEndpointConfig {
  readonly name: string;
  readonly tls?: EngineServerOptions['tls'] | undefined;
  readonly upstream: UpstreamConfig;
  readonly resource: { readonly namespace: string; readonly labels: Readonly<Record<string, string>> };
  readonly auditFailureMode: 'FailClosed' | 'FailOpen';
  readonly requestHeadersTimeoutMs: number;
  readonly requestTimeoutMs: number;
}

/** An error as the engine's protocol writes it: status code, content type and body. */
export interface RenderedError {
  readonly code: number;
  readonly contentType: string;
  readonly body: string;
}

export abstract class HttpEndpoint implements ResourceEndpoint {
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly upstream: Upstream;
  readonly sessions: ClientSessions;
  protected readonly server: EngineServer;

  constructor(type: ResourceType, config: HttpEndpointConfig, services: EngineServices) {
    this.services = services;
    this.logger = services.logger.child({ listener: config.name, engine: type });
    this.resource = { name: config.name, namespace: config.resource.namespace, type, labels: config.resource.labels };
    this.upstream = new Upstream(config.upstream);
    this.sessions = new ClientSessions({
      listener: config.name,
      services,
      resource: this.resource,
      logger: this.logger,
      auditFailureMode: config.auditFailureMode,
    });
    this.server = new EngineServer({
      ...(config.tls === undefined ? {} : { tls: config.tls }),
      logger: this.logger,
      timeouts: { headersMs: config.requestHeadersTimeoutMs, requestMs: config.requestTimeoutMs },
      onRequest: (req, res) => this.onRequest(req, res),
      onUpgrade: (req, socket, head) => this.onUpgrade(req, socket, head),
      malformed: (code) =>
        this.renderError(
          code === 'HPE_HEADER_OVERFLOW'
            ? { id: 'RequestHeadersTooLarge', message: 'chaperone: the request headers are larger than 64 KiB' }
            : code === 'ERR_HTTP_REQUEST_TIMEOUT'
              ? {
                  id: 'RequestTimeout',
                  message: `chaperone: the request did not arrive in time (headers within ${String(config.requestHeadersTimeoutMs)} ms, the whole request within ${String(config.requestTimeoutMs)} ms)`,
                }
              : { id: 'AmbiguousRequest', message: `chaperone: malformed HTTP request (${code})` },
        ),
    });
  }

  /** Serves one request (called by the HTTP server; errors are the engine's to answer). */
  protected abstract onRequest(req: IncomingMessage, res: ServerResponse): void;
  /** Serves one upgrade request. */
  protected abstract onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** The engine's protocol for an error of the catalogue. */
  protected abstract renderError(error: SidecarError): RenderedError;

  /**
   * The refusal of a request whose connection Node's parser has refused since (a malformed request after
   * it, bytes after `Connection: close`, a chunk-size error inside its body): it is not forwarded, and its
   * record says why. Undefined while the connection is sound.
   */
  connectionRefusal(req: IncomingMessage): SidecarError | undefined {
    const code = this.server.refusal(req.socket);
    return code === undefined
      ? undefined
      : {
          id: 'AmbiguousRequest',
          message: `chaperone: not forwarded: bytes Node's HTTP parser refused (${code}) followed it on its connection, which was answered 400 and closed`,
        };
  }

  async ready(_address: { readonly host: string; readonly port: number }): Promise<void> {
    await this.server.ready();
  }

  accept(socket: Socket): ConnectionHandler {
    this.server.accept(socket);
    return {
      close: (reason: string) => {
        this.sessions.end(socket, reason);
        socket.destroy();
      },
    };
  }
}
