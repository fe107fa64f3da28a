// The Kubernetes API engine (core/engine.ts, docs/kubernetes-engine.md): a kube-apiserver-compatible endpoint
// on loopback for kubectl and client-go. Node's HTTP/1.1 parser frames requests (the server never listens;
// the core's ResourceListener hands it sockets); each request goes through kubernetes-exchange.ts. The
// endpoint (http-base/http-endpoint.ts) holds what every request shares: the upstream API server, the
// sidecar's own credential and the connection's agent sessions; this file adds the agent's kubeconfig.
import { writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { stringify } from 'yaml';
import type { KubernetesListenerConfig } from '../../config.ts';
import type { Engine, EngineServices } from '../../core/engine.ts';
import type { SidecarError } from '../../core/errors.ts';
import { HttpEndpoint, type RenderedError } from '../http-base/http-endpoint.ts';
import { CredentialFile } from '../http-base/upstream.ts';
import { KubernetesExchange, type ExchangeContext } from './kubernetes-exchange.ts';
import { statusFor } from './status.ts';

export function createKubernetesEngine(): Engine<KubernetesListenerConfig> {
  return {
    type: 'kubernetes',
    init: () => Promise.resolve(),
    bind: (config, services) => new KubernetesEndpoint(config, services),
  };
}

class KubernetesEndpoint extends HttpEndpoint implements ExchangeContext {
  readonly config: KubernetesListenerConfig;
  readonly credential: CredentialFile;

  constructor(config: KubernetesListenerConfig, services: EngineServices) {
    super('kubernetes', config, services);
    this.config = config;
    this.credential = new CredentialFile(config.upstream.tokenFile);
  }

  protected onRequest(req: IncomingMessage, res: ServerResponse): void {
    void new KubernetesExchange(this, req).serve(res);
  }

  protected onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    void new KubernetesExchange(this, req).serveUpgrade(socket, head);
  }

  protected renderError(error: SidecarError): RenderedError {
    return { contentType: 'application/json', ...statusFor(error) };
  }

  override async ready(address: { readonly host: string; readonly port: number }): Promise<void> {
    await super.ready(address);
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
}
