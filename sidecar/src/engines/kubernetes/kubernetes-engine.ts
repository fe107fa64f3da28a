// The Kubernetes API engine (core/engine.ts, docs/kubernetes-engine.md): a kube-apiserver-compatible endpoint
// on loopback for kubectl and client-go. Node's HTTP/1.1 parser frames requests (the server never listens;
// the core's ResourceListener hands it sockets); each request goes through kubernetes-exchange.ts. The
// endpoint holds what every request shares: the upstream API server with the sidecar's own credential, and
// the connection's agent sessions.
import { writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { stringify } from 'yaml';
import type { KubernetesListenerConfig } from '../../config.ts';
import type { ResourceContext } from '../../core/agent-session.ts';
import type { ConnectionHandler, Engine, EngineServices, ResourceEndpoint } from '../../core/engine.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { ClientSessions } from '../http-base/client-sessions.ts';
import { EngineServer } from '../http-base/engine-server.ts';
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
  private readonly server: EngineServer;

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
    this.server = new EngineServer({
      ...(config.tls === undefined ? {} : { tls: config.tls }),
      logger: this.logger,
      onRequest: (req, res) => void new KubernetesExchange(this, req).serve(res),
      onUpgrade: (req, socket, head) => void new KubernetesExchange(this, req).serveUpgrade(socket, head),
      malformed: (code) => ({
        contentType: 'application/json',
        body: statusFor({ id: 'AmbiguousRequest', message: `chaperone: malformed HTTP request (${code})` }).body,
      }),
    });
  }

  async ready(address: { host: string; port: number }): Promise<void> {
    await this.server.ready();
    const out = this.config.agentKubeconfig;
    const certFile = this.server.certFile;
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
    this.server.accept(socket);
    return {
      close: (reason: string) => {
        this.sessions.end(socket, reason);
        socket.destroy();
      },
    };
  }
}
