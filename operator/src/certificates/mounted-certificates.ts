// Serving material from a mounted directory (tls.crt, tls.key, ca.crt), for installations where another
// issuer (cert-manager) owns the webhook certificate and its CA injector writes caBundle. The directory is
// polled: Secret volumes update by swapping a symlink, and a read of three small files is cheap. A change
// is adopted only when the new key and certificate load together, so a half-updated read is retried.
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { join } from 'node:path';
import type { Logger } from '../observability/logger.ts';
import { certificateValidity } from './certificate-authority.ts';
import { SECRET_KEYS, type ServingMaterial } from './webhook-certificates.ts';

export interface MountedCertificatesOptions {
  readonly dir: string;
  /** Default 10 s. */
  readonly pollIntervalMs?: number;
  readonly logger: Logger;
  readonly onChange?: (material: ServingMaterial) => void;
}

export class MountedCertificates {
  private readonly options: MountedCertificatesOptions;
  private material: ServingMaterial | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(options: MountedCertificatesOptions) {
    this.options = options;
  }

  /** Reads the directory (failing when it is not usable) and starts polling it. */
  start(): Promise<ServingMaterial> {
    let material: ServingMaterial;
    try {
      material = this.read();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.material = material;
    this.timer = setInterval(() => {
      this.poll();
    }, this.options.pollIntervalMs ?? 10_000);
    this.timer.unref();
    return Promise.resolve(material);
  }

  current(): ServingMaterial {
    if (this.material === undefined) throw new Error('webhook certificates not started');
    return this.material;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Adopts changed files; keeps the current material when the new files do not load (yet). */
  poll(): void {
    let next: ServingMaterial;
    try {
      next = this.read();
    } catch (err) {
      this.options.logger.warn('mounted webhook certificate unreadable; keeping the current one', { error: err });
      return;
    }
    if (next.fingerprint === this.material?.fingerprint && next.caBundlePem === this.material.caBundlePem) return;
    this.material = next;
    this.options.logger.info('mounted webhook certificate changed', { notAfter: next.notAfter.toISOString() });
    this.options.onChange?.(next);
  }

  private read(): ServingMaterial {
    const file = (name: string) => readFileSync(join(this.options.dir, name), 'utf8');
    const certPem = file(SECRET_KEYS.cert);
    const keyPem = file(SECRET_KEYS.key);
    // Throws when the key does not match the certificate (a read between two writes).
    createSecureContext({ cert: certPem, key: keyPem });
    const validity = certificateValidity(certPem);
    return {
      certPem,
      keyPem,
      caBundlePem: file(SECRET_KEYS.caBundle),
      notAfter: validity.notAfter,
      fingerprint: validity.fingerprint,
    };
  }
}
