// The signing keys of an external OpenID Connect issuer (a CI provider's job tokens, SPIRE's OIDC discovery
// provider): discovery document, then its JWKS, cached for `cacheSeconds` and fetched again early when a
// token names a key id the cache lacks (at most once per cooldown, so unknown kids cannot hammer the
// issuer). Fetches go over HTTPS only, follow no redirects, and are bounded in size and time.
import { request } from 'node:https';
import { createLocalJWKSet, type JSONWebKeySet } from 'jose';

const MAX_DOCUMENT_BYTES = 1024 * 1024;

export class IssuerUnavailable extends Error {
  override name = 'IssuerUnavailable';
}

export interface OidcKeySourceOptions {
  readonly issuer: string;
  /** Default <issuer>/.well-known/openid-configuration. */
  readonly discoveryUrl?: string;
  /** When set, discovery is skipped. */
  readonly jwksUri?: string;
  /** PEM CA bundle; default the system roots. */
  readonly caBundle?: string;
  readonly cacheSeconds: number;
  /** Least time between two fetches caused by unknown key ids, ms. Default 10 s. */
  readonly cooldownMs?: number;
  readonly timeoutMs?: number;
  readonly now?: () => number;
}

export interface FetchReport {
  readonly keys: number;
  readonly fetchedAt: number;
  readonly error?: string;
}

export class OidcKeySource {
  private readonly options: OidcKeySourceOptions;
  private readonly now: () => number;
  private set: ReturnType<typeof createLocalJWKSet> | undefined;
  private fetchedAt = Number.NEGATIVE_INFINITY;
  private inflight: Promise<void> | undefined;
  private lastReport: FetchReport | undefined;
  /** Called after every fetch attempt (TrustedIssuer status). */
  onFetch: ((report: FetchReport) => void) | undefined;

  constructor(options: OidcKeySourceOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
  }

  get report(): FetchReport | undefined {
    return this.lastReport;
  }

  /** The cached key set, fetched first when absent or older than cacheSeconds. */
  async keys(): Promise<ReturnType<typeof createLocalJWKSet>> {
    if (this.set === undefined || this.now() - this.fetchedAt > this.options.cacheSeconds * 1000) {
      try {
        await this.fetch();
      } catch (err) {
        // Keep serving the last keys while the issuer is down; fail only when there are none.
        if (this.set === undefined) throw err;
      }
    }
    if (this.set === undefined) throw new IssuerUnavailable(`keys of ${this.options.issuer} are unavailable`);
    return this.set;
  }

  /** Fetches again for an unknown key id, unless the last fetch is younger than the cooldown. */
  async refresh(): Promise<boolean> {
    if (this.now() - this.fetchedAt < (this.options.cooldownMs ?? 10_000)) return false;
    await this.fetch();
    return true;
  }

  private fetch(): Promise<void> {
    this.inflight ??= this.download()
      .then(
        (jwks) => {
          this.set = createLocalJWKSet(jwks);
          this.fetchedAt = this.now();
          this.lastReport = { keys: jwks.keys.length, fetchedAt: this.fetchedAt };
          this.onFetch?.(this.lastReport);
        },
        (err: unknown) => {
          this.lastReport = {
            keys: 0,
            fetchedAt: this.now(),
            error: err instanceof Error ? err.message : String(err),
          };
          this.onFetch?.(this.lastReport);
          throw err;
        },
      )
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  private async download(): Promise<JSONWebKeySet> {
    let jwksUri = this.options.jwksUri;
    if (jwksUri === undefined) {
      const discoveryUrl =
        this.options.discoveryUrl ?? `${this.options.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
      const discovery = (await this.getJson(discoveryUrl)) as { issuer?: unknown; jwks_uri?: unknown };
      // OpenID Connect Discovery §4.3: the document must name exactly the issuer it was fetched for.
      if (discovery.issuer !== this.options.issuer) {
        throw new IssuerUnavailable(
          `discovery document of ${this.options.issuer} names issuer ${JSON.stringify(discovery.issuer)}`,
        );
      }
      if (typeof discovery.jwks_uri !== 'string' || !discovery.jwks_uri.startsWith('https://')) {
        throw new IssuerUnavailable(`discovery document of ${this.options.issuer} has no https jwks_uri`);
      }
      jwksUri = discovery.jwks_uri;
    }
    const jwks = (await this.getJson(jwksUri)) as { keys?: unknown };
    if (!Array.isArray(jwks.keys)) throw new IssuerUnavailable(`JWKS of ${this.options.issuer} has no keys array`);
    // Only public signing keys: a JWKS that carries private parts or symmetric keys is a misconfiguration.
    const keys: JSONWebKeySet['keys'] = (jwks.keys as JSONWebKeySet['keys']).filter(
      (k) => k.kty !== 'oct' && k.d === undefined && (k.use === undefined || k.use === 'sig'),
    );
    return { keys };
  }

  private getJson(url: string): Promise<unknown> {
    if (!url.startsWith('https://')) return Promise.reject(new IssuerUnavailable(`${url} is not https`));
    const timeout = this.options.timeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          headers: { accept: 'application/json, application/jwk-set+json' },
          ...(this.options.caBundle === undefined ? {} : { ca: this.options.caBundle }),
          timeout,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_DOCUMENT_BYTES) req.destroy(new IssuerUnavailable(`${url}: document larger than 1 MiB`));
            else chunks.push(c);
          });
          res.on('end', () => {
            if (res.statusCode !== 200) {
              reject(new IssuerUnavailable(`${url} answered HTTP ${String(res.statusCode)}`));
              return;
            }
            try {
              resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
            } catch {
              reject(new IssuerUnavailable(`${url} did not answer JSON`));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new IssuerUnavailable(`${url}: no answer in ${String(timeout)} ms`)));
      req.on('error', (err) => {
        reject(err instanceof IssuerUnavailable ? err : new IssuerUnavailable(`${url}: ${err.message}`));
      });
      req.end();
    });
  }
}
