// The upstream of an HTTP-speaking engine: its base URL, a keep-alive agent with the configured TLS
// verification, and the credential the sidecar alone holds, read from its mounted file and re-read
// periodically so a rotated Secret reaches new requests.
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type RequestOptions } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';

export interface UpstreamConfig {
  readonly url: string;
  readonly tls: {
    readonly mode: string;
    readonly caFile?: string | undefined;
    readonly serverName?: string | undefined;
  };
}

export class CredentialFile {
  private readonly path: string;
  private readonly refreshMs: number;
  private readonly now: () => number;
  private value = '';
  private readAt = -Infinity;

  constructor(path: string, refreshMs = 10_000, now: () => number = Date.now) {
    this.path = path;
    this.refreshMs = refreshMs;
    this.now = now;
    this.current();
  }

  /** The credential, trimmed of a trailing newline; throws when the file cannot be read the first time. */
  current(): string {
    if (this.now() - this.readAt > this.refreshMs) {
      try {
        this.value = readFileSync(this.path, 'utf8').replace(/\r?\n$/, '');
        this.readAt = this.now();
      } catch (err) {
        if (this.value === '') throw err;
        // Keep the last good value; the next request tries again.
      }
    }
    return this.value;
  }
}

export class Upstream {
  readonly base: URL;
  private readonly agent: HttpAgent;
  private readonly https: boolean;
  private readonly servername: string | undefined;

  constructor(config: UpstreamConfig) {
    this.base = new URL(config.url);
    this.https = this.base.protocol === 'https:';
    const mode = config.tls.mode;
    const ca = config.tls.caFile === undefined ? undefined : readFileSync(config.tls.caFile, 'utf8');
    this.servername = config.tls.serverName;
    this.agent = this.https
      ? new HttpsAgent({
          keepAlive: true,
          ...(ca === undefined ? {} : { ca }),
          ...(this.servername === undefined ? {} : { servername: this.servername }),
          rejectUnauthorized: mode === 'verify-full' || mode === 'verify-ca',
          // verify-ca: the chain is checked, the name is not (libpq semantics).
          ...(mode === 'verify-ca'
            ? { checkServerIdentity: (_host: string, _cert: PeerCertificate) => undefined }
            : mode === 'verify-full' && this.servername !== undefined
              ? {
                  checkServerIdentity: (_host: string, cert: PeerCertificate) =>
                    checkServerIdentity(this.servername ?? '', cert),
                }
              : {}),
        })
      : new HttpAgent({ keepAlive: true });
  }

  /** Path prefix of the base URL without a trailing slash ('' for a bare origin). */
  get pathPrefix(): string {
    return this.base.pathname.replace(/\/+$/, '');
  }

  request(options: Omit<RequestOptions, 'agent' | 'host' | 'hostname' | 'port' | 'protocol'>): ClientRequest {
    const full: RequestOptions = {
      ...options,
      agent: this.agent,
      hostname: this.base.hostname.replace(/^\[|\]$/g, ''),
      port: this.base.port === '' ? (this.https ? 443 : 80) : Number(this.base.port),
      protocol: this.base.protocol,
    };
    return this.https ? httpsRequest(full) : httpRequest(full);
  }

  /** A request on a connection of its own (upgrades take the socket over, so it must not come from the pool). */
  requestOwnConnection(
    options: Omit<RequestOptions, 'agent' | 'host' | 'hostname' | 'port' | 'protocol'>,
  ): ClientRequest {
    const agentOptions = (this.agent as HttpsAgent).options;
    const full: RequestOptions & Record<string, unknown> = {
      ...(this.https ? agentOptions : {}),
      ...options,
      agent: false,
      hostname: this.base.hostname.replace(/^\[|\]$/g, ''),
      port: this.base.port === '' ? (this.https ? 443 : 80) : Number(this.base.port),
      protocol: this.base.protocol,
    };
    return this.https ? httpsRequest(full) : httpRequest(full);
  }

  close(): void {
    this.agent.destroy();
  }
}
