// The webhook's serving certificate, self-managed like Vault's injector: a CA and a short-lived leaf in one
// Secret that every replica reads and any replica may renew. Writes carry the Secret's resourceVersion,
// so when two replicas renew at once one wins and the other adopts the winner's material.
//
// Rotation never breaks admission: before a Secret holding a new CA is written, that CA is added to the
// caBundle of the webhook configurations; caBundle only ever gains CAs and loses expired ones, so a replica
// still serving the previous leaf (signed by the previous CA) stays trusted until it reloads.
import { X509Certificate } from 'node:crypto';
import { ApiException, type AdmissionregistrationV1Api, type CoreV1Api, type V1Secret } from '@kubernetes/client-node';
import type { Logger } from '../observability/logger.ts';
import {
  certificateValidity,
  createCertificateAuthority,
  isIssuedBy,
  issueServingCertificate,
  splitPemBundle,
} from './certificate-authority.ts';

export const SECRET_KEYS = { caBundle: 'ca.crt', caKey: 'ca.key', cert: 'tls.crt', key: 'tls.key' } as const;

export interface ServingMaterial {
  readonly certPem: string;
  readonly keyPem: string;
  /** Every CA a client must trust: the current one first, then earlier ones not yet expired. */
  readonly caBundlePem: string;
  readonly notAfter: Date;
  /** SHA-256 fingerprint of the leaf. */
  readonly fingerprint: string;
}

export interface WebhookCertificatesOptions {
  readonly core: CoreV1Api;
  readonly admissionRegistration: AdmissionregistrationV1Api;
  /** Namespace and name of the Secret (type kubernetes.io/tls, plus ca.crt and ca.key). */
  readonly namespace: string;
  readonly secretName: string;
  /** SANs of the leaf: the Service's DNS names in a cluster, 127.0.0.1 in tests. */
  readonly dnsNames: readonly string[];
  readonly ipAddresses?: readonly string[];
  /** Webhook configurations whose caBundle is kept in step. */
  readonly mutatingWebhookConfigurations: readonly string[];
  readonly validatingWebhookConfigurations: readonly string[];
  /** Default 365 days. */
  readonly caLifetimeMs?: number;
  /** Default 7 days. */
  readonly leafLifetimeMs?: number;
  /** Renew when less than this fraction of the lifetime remains. Default 1/3. */
  readonly renewBeforeFraction?: number;
  /** How often the Secret is re-read (other replicas' renewals) and expiry checked. Default 60 s. */
  readonly checkIntervalMs?: number;
  readonly now?: () => Date;
  readonly logger: Logger;
  /** Called with new material whenever the leaf changes (also for another replica's renewal). */
  readonly onChange?: (material: ServingMaterial) => void;
}

export interface RotateOptions {
  readonly rotateLeaf?: boolean;
  readonly rotateCa?: boolean;
}

interface StoredState {
  readonly secret: V1Secret | undefined;
  readonly caBundle: string[];
  readonly caCert: string | undefined;
  readonly caKey: string | undefined;
  readonly cert: string | undefined;
  readonly key: string | undefined;
}

const DAY = 86_400_000;
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, 'base64').toString('utf8'));

function apiCode(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

export class WebhookCertificates {
  private readonly options: WebhookCertificatesOptions;
  private readonly now: () => Date;
  private material: ServingMaterial | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<ServingMaterial> | undefined;
  private stopped = false;

  constructor(options: WebhookCertificatesOptions) {
    this.options = options;
    this.now = options.now ?? (() => new Date());
  }

  /** Ensures valid material exists (creating or renewing it), keeps caBundle in step, and starts the timer. */
  async start(): Promise<ServingMaterial> {
    const material = await this.reconcile();
    this.schedule();
    return material;
  }

  current(): ServingMaterial {
    if (this.material === undefined) throw new Error('webhook certificates not started');
    return this.material;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
  }

  /** One pass: read, renew if due (or forced), publish caBundle, adopt. Serialised: concurrent calls share one pass. */
  async reconcile(force: RotateOptions = {}): Promise<ServingMaterial> {
    while (this.running !== undefined) await this.running.catch(() => undefined);
    this.running = this.pass(force);
    try {
      return await this.running;
    } finally {
      this.running = undefined;
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    const interval = this.options.checkIntervalMs ?? 60_000;
    const renewAt = this.material === undefined ? 0 : this.renewTime(this.material.notAfter, this.leafLifetime());
    const delay = Math.max(100, Math.min(interval, renewAt - this.now().getTime()));
    this.timer = setTimeout(() => {
      this.reconcile()
        .catch((err: unknown) => this.options.logger.error('webhook certificate check failed', { error: err }))
        .finally(() => this.schedule());
    }, delay);
    this.timer.unref();
  }

  private leafLifetime(): number {
    return this.options.leafLifetimeMs ?? 7 * DAY;
  }

  private caLifetime(): number {
    return this.options.caLifetimeMs ?? 365 * DAY;
  }

  private renewTime(notAfter: Date, lifetime: number): number {
    return notAfter.getTime() - lifetime * (this.options.renewBeforeFraction ?? 1 / 3);
  }

  private async read(): Promise<StoredState> {
    let secret: V1Secret | undefined;
    try {
      secret = await this.options.core.readNamespacedSecret({
        namespace: this.options.namespace,
        name: this.options.secretName,
      });
    } catch (err) {
      if (apiCode(err) !== 404) throw err;
    }
    const data = secret?.data ?? {};
    const caBundle = splitPemBundle(unb64(data[SECRET_KEYS.caBundle]) ?? '');
    return {
      secret,
      caBundle,
      caCert: caBundle[0],
      caKey: unb64(data[SECRET_KEYS.caKey]),
      cert: unb64(data[SECRET_KEYS.cert]),
      key: unb64(data[SECRET_KEYS.key]),
    };
  }

  private async pass(force: RotateOptions): Promise<ServingMaterial> {
    for (let attempt = 0; ; attempt++) {
      const state = await this.read();
      const now = this.now();
      const needCa =
        force.rotateCa === true ||
        state.caCert === undefined ||
        state.caKey === undefined ||
        now.getTime() >= this.renewTime(certificateValidity(state.caCert).notAfter, this.caLifetime());
      const needLeaf =
        needCa ||
        force.rotateLeaf === true ||
        state.cert === undefined ||
        state.key === undefined ||
        !isIssuedBy(state.cert, state.caCert) ||
        !this.coversNames(state.cert) ||
        now.getTime() >= this.renewTime(certificateValidity(state.cert).notAfter, this.leafLifetime());
      if (!needLeaf) {
        const stillValid = this.unexpired(state.caBundle, now);
        await this.publishCaBundle(stillValid);
        return this.adopt({ certPem: state.cert, keyPem: state.key, caBundlePem: stillValid.join('') });
      }

      const ca = needCa
        ? await createCertificateAuthority({
            commonName: `chaperone-webhook-ca-${String(now.getTime())}`,
            lifetimeMs: this.caLifetime(),
            now,
          })
        : { certPem: state.caCert, keyPem: state.caKey };
      const leaf = await issueServingCertificate({
        ca,
        commonName: this.options.dnsNames[0] ?? 'chaperone-webhook',
        dnsNames: this.options.dnsNames,
        ipAddresses: this.options.ipAddresses ?? [],
        lifetimeMs: this.leafLifetime(),
        now,
      });
      const bundle = this.unexpired([ca.certPem, ...state.caBundle.filter((c) => c.trim() !== ca.certPem.trim())], now);
      // Trust first, then publish: no client ever sees a leaf whose CA it does not know.
      await this.publishCaBundle(bundle);
      try {
        await this.write(state.secret, {
          [SECRET_KEYS.caBundle]: bundle.join(''),
          [SECRET_KEYS.caKey]: ca.keyPem,
          [SECRET_KEYS.cert]: leaf.certPem,
          [SECRET_KEYS.key]: leaf.keyPem,
        });
      } catch (err) {
        const code = apiCode(err);
        // Another replica renewed first: adopt its material on the next read.
        if ((code === 409 || code === 404) && attempt < 5) {
          this.options.logger.info('webhook certificate renewed concurrently; re-reading', { code });
          force = {};
          continue;
        }
        throw err;
      }
      this.options.logger.info('webhook certificate issued', {
        secret: `${this.options.namespace}/${this.options.secretName}`,
        newCa: needCa,
        notAfter: leaf.notAfter.toISOString(),
      });
      return this.adopt({ certPem: leaf.certPem, keyPem: leaf.keyPem, caBundlePem: bundle.join('') });
    }
  }

  private coversNames(certPem: string): boolean {
    const san = certificateValidityNames(certPem);
    return (
      this.options.dnsNames.every((n) => san.includes(`DNS:${n}`)) &&
      (this.options.ipAddresses ?? []).every((ip) => san.includes(`IP Address:${ip}`))
    );
  }

  private unexpired(bundle: readonly string[], now: Date): string[] {
    return bundle.filter((pem) => certificateValidity(pem).notAfter.getTime() > now.getTime());
  }

  private adopt(next: Omit<ServingMaterial, 'notAfter' | 'fingerprint'>): ServingMaterial {
    const validity = certificateValidity(next.certPem);
    const material: ServingMaterial = { ...next, notAfter: validity.notAfter, fingerprint: validity.fingerprint };
    const changed =
      this.material?.fingerprint !== material.fingerprint || this.material.caBundlePem !== material.caBundlePem;
    this.material = material;
    if (changed) this.options.onChange?.(material);
    return material;
  }

  private async write(existing: V1Secret | undefined, data: Record<string, string>): Promise<void> {
    const body: V1Secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'kubernetes.io/tls',
      metadata: {
        name: this.options.secretName,
        namespace: this.options.namespace,
        labels: {
          'app.kubernetes.io/managed-by': 'chaperone-operator',
          'app.kubernetes.io/component': 'webhook-certificate',
        },
        ...(existing?.metadata?.resourceVersion === undefined
          ? {}
          : { resourceVersion: existing.metadata.resourceVersion }),
      },
      data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
    };
    if (existing === undefined) {
      await this.options.core.createNamespacedSecret({ namespace: this.options.namespace, body });
    } else {
      await this.options.core.replaceNamespacedSecret({
        namespace: this.options.namespace,
        name: this.options.secretName,
        body,
      });
    }
  }

  /** Makes every webhook's caBundle the union of its unexpired CAs and `bundle`. Missing configurations are skipped. */
  async publishCaBundle(bundle: readonly string[]): Promise<void> {
    const api = this.options.admissionRegistration;
    const now = this.now();
    const merge = (current: string | undefined): string | undefined => {
      const have = this.unexpired(splitPemBundle(unb64(current) ?? ''), now);
      const union = [...bundle];
      for (const c of have) if (!union.some((u) => u.trim() === c.trim())) union.push(c);
      const next = b64(union.join(''));
      return next === current ? undefined : next;
    };
    // Mutating and validating configurations differ in type only; their webhooks' caBundle is merged alike.
    const refresh = <C extends { webhooks?: { clientConfig: { caBundle?: string } }[] }>(
      read: () => Promise<C | undefined>,
      replace: (config: C) => Promise<unknown>,
    ) =>
      retryConflicts(async () => {
        const config = await read();
        if (config === undefined) return;
        let changed = false;
        for (const w of config.webhooks ?? []) {
          const next = merge(w.clientConfig.caBundle);
          if (next !== undefined) {
            w.clientConfig.caBundle = next;
            changed = true;
          }
        }
        if (changed) await replace(config);
      });
    for (const name of this.options.mutatingWebhookConfigurations) {
      await refresh(
        () => api.readMutatingWebhookConfiguration({ name }).catch(ignore404),
        (body) => api.replaceMutatingWebhookConfiguration({ name, body }),
      );
    }
    for (const name of this.options.validatingWebhookConfigurations) {
      await refresh(
        () => api.readValidatingWebhookConfiguration({ name }).catch(ignore404),
        (body) => api.replaceValidatingWebhookConfiguration({ name, body }),
      );
    }
  }
}

function ignore404(err: unknown): undefined {
  if (apiCode(err) === 404) return undefined;
  throw err;
}

async function retryConflicts(fn: () => Promise<void>): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await fn();
      return;
    } catch (err) {
      if (apiCode(err) !== 409 || attempt >= 5) throw err;
    }
  }
}

function certificateValidityNames(pem: string): string {
  return new X509Certificate(pem).subjectAltName ?? '';
}
