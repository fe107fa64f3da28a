// The Kubernetes API engine (core/engine.ts, docs/kubernetes-engine.md): a kube-apiserver-compatible endpoint
// on loopback for kubectl and client-go. Node's HTTP/1.1 parser frames requests (the server never listens;
// the core's ResourceListener hands it sockets); each request goes through kubernetes-exchange.ts. The
// endpoint holds what every request shares: the upstream API server with the sidecar's own credential, and
// the connection's agent sessions.
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { stringify } from 'yaml';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { KubernetesListenerConfig } from '../../config.ts';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { ConnectionHandler, Engine, EngineServices, ResourceEndpoint } from '../../core/engine.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { ClientSessions } from '../http-base/client-sessions.ts';
import { createLoopbackCertificate } from '../http-base/loopback-certificate.ts';
import { CredentialFile, Upstream } from '../http-base/upstream.ts';
import { KubernetesExchange, type ExchangeContext } from './kubernetes-exchange.ts';
import { statusFor } from './status.ts';

export function createKubernetesEngine(): Engine<KubernetesListenerConfig> {
  return {
    type: 'kubernetes',
    init: () => Promise.resolve(),
    bind: (config, services) => new KubernetesEndpoint(config, services),
  };
}

class KubernetesEndpoint implements ResourceEndpoint, ExchangeContext {
  readonly config: KubernetesListenerConfig;
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly upstream: Upstream;
  readonly credential: CredentialFile;
  readonly sessions: ClientSessions;
  private server: Server | undefined;
  private readonly prepared: Promise<Server>;

  constructor(config: KubernetesListenerConfig, services: EngineServices) {
    this.config = config;
    this.services = services;
    this.logger = services.logger.child({ listener: config.name, engine: 'kubernetes' });
    this.resource = {
      name: config.name,
      namespace: config.resource.namespace,
      type: 'kubernetes',
      labels: config.resource.labels,
    };
    this.upstream = new Upstream(config.upstream);
    this.credential = new CredentialFile(config.upstream.tokenFile);
    this.sessions = new ClientSessions({
      listener: config.name,
      services,
      resource: this.resource,
      logger: this.logger,
      auditFailureMode: config.auditFailureMode,
    });
    this.prepared = this.prepare().then(
      (server) => {
        this.server = server;
        return server;
      },
      (err: unknown) => {
        this.logger.error('cannot serve TLS', { error: err });
        throw err;
      },
    );
    // accept() and ready() report the failure; until then it must not be an unhandled rejection.
    this.prepared.catch(() => undefined);
  }

  /** The HTTP(S) server the accepted sockets are fed to; TLS from files, or a certificate made now. */
  private async prepare(): Promise<Server> {
    const tls = this.config.tls;
    const options = {
      // Strict parsing (no lenient flags); a Host header is required; duplicates are judged on rawHeaders.
      insecureHTTPParser: false,
      requireHostHeader: true,
      maxHeaderSize: 64 * 1024,
      // Watches and exec streams are long; the API server's own timeouts bound them.
      requestTimeout: 0,
      headersTimeout: 60_000,
      keepAliveTimeout: 65_000,
    };
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      void new KubernetesExchange(this, req).serve(res);
    };
    let server: Server;
    if (tls === undefined) {
      server = createServer(options, handler);
    } else {
      let cert: string;
      let key: string;
      if (tls.selfSignedCertFile !== undefined) {
        ({ certPem: cert, keyPem: key } = await createLoopbackCertificate());
        await writeFile(tls.selfSignedCertFile, cert, { mode: 0o644 });
      } else {
        cert = await readFile(tls.certFile ?? '', 'utf8');
        key = await readFile(tls.keyFile ?? '', 'utf8');
      }
      // HTTP/1.1 only: upgrades (exec, attach, port-forward) and this engine's framing checks are HTTP/1.1's.
      server = createHttpsServer(
        { ...options, cert, key, ALPNProtocols: ['http/1.1'], minVersion: 'TLSv1.2' },
        handler,
      );
      server.on('tlsClientError', (err: Error) => this.logger.debug('TLS handshake failed', { error: err.message }));
    }
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      void new KubernetesExchange(this, req).serveUpgrade(socket, head);
    });
    server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
      // Bytes Node's parser refuses (smuggling attempts among them): a 400 Status, then the connection ends.
      this.logger.warn('malformed HTTP request', { code: err.code, error: err.message });
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      const status = statusFor({
        id: 'AmbiguousRequest',
        message: `chaperone: malformed HTTP request (${err.code ?? 'parse error'})`,
      });
      socket.end(
        `HTTP/1.1 ${String(status.code)} Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${String(Buffer.byteLength(status.body))}\r\nConnection: close\r\n\r\n${status.body}`,
      );
    });
    return server;
  }

  async ready(address: { host: string; port: number }): Promise<void> {
    await this.prepared;
    const out = this.config.agentKubeconfig;
    const certFile = this.config.tls?.selfSignedCertFile ?? this.config.tls?.certFile;
    if (out === undefined || certFile === undefined) return;
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    await writeFile(
      out.path,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [
          {
            name: this.config.name,
            cluster: { server: `https://${host}:${String(address.port)}`, 'certificate-authority': certFile },
          },
        ],
        users: [{ name: 'agent', user: { tokenFile: out.tokenFile } }],
        contexts: [{ name: this.config.name, context: { cluster: this.config.name, user: 'agent' } }],
        'current-context': this.config.name,
      }),
      { mode: 0o644 },
    );
  }

  accept(socket: Socket): ConnectionHandler {
    socket.setNoDelay(true);
    if (this.server !== undefined) this.server.emit('connection', socket);
    else {
      this.prepared.then(
        (server) => server.emit('connection', socket),
        () => socket.destroy(),
      );
    }
    return {
      close: (reason: string) => {
        this.sessions.end(socket, reason);
        socket.destroy();
      },
    };
  }
}
