// Asks the operator to certify this sidecar's signing key (operator/src/audit/signer-certification.ts):
// POST the public key with the pod-bound service-account token; the answer is a certificate the Session
// writer puts into every Session part it creates (spec.signer.certificate), so verifiers can trust the key
// through the operator's audit authority. Until it arrives, parts are written without one (verifiers warn:
// self-asserted key); the sidecar keeps asking with backoff.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { decodeJwt } from 'jose';
import { SIGNER_CERTIFICATE_TYPE } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import type { SigningKey } from './signing-key.ts';

export interface SignerCertificationOptions {
  /** https URL of the operator's certification endpoint. */
  readonly url: string;
  /** CA bundle (PEM) that signs the operator's serving certificate, as a file or inline; default the system roots. */
  readonly caFile?: string;
  readonly ca?: string;
  /** The pod-bound service-account token (re-read on every attempt: it rotates). */
  readonly tokenFile: string;
  readonly signingKey: SigningKey;
  readonly logger: Logger;
  /** Backoff between attempts: first and largest, ms. Default 1000 and 60 000. */
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
  /** Per-request timeout, ms. Default 10 000. */
  readonly timeoutMs?: number;
}

export class CertificationError extends Error {
  override name = 'CertificationError';
}

/** One certification request; resolves to the compact JWS certificate. */
export function requestSignerCertificate(options: SignerCertificationOptions): Promise<string> {
  const token = readFileSync(options.tokenFile, 'utf8').trim();
  const ca = options.ca ?? (options.caFile === undefined ? undefined : readFileSync(options.caFile, 'utf8'));
  const body = JSON.stringify({ publicKey: options.signingKey.publicJwk });
  return new Promise((resolve, reject) => {
    const req = request(
      options.url,
      {
        method: 'POST',
        ...(ca === undefined ? {} : { ca }),
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        },
        timeout: options.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size <= 64 * 1024) chunks.push(c);
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: { certificate?: unknown; message?: unknown } | null;
          try {
            parsed = JSON.parse(text) as { certificate?: unknown; message?: unknown } | null;
          } catch {
            reject(new CertificationError(`HTTP ${String(res.statusCode)}: not JSON`));
            return;
          }
          if (res.statusCode !== 200 || typeof parsed?.certificate !== 'string') {
            const message = typeof parsed?.message === 'string' ? parsed.message : 'no certificate';
            reject(new CertificationError(`HTTP ${String(res.statusCode)}: ${message}`));
            return;
          }
          try {
            checkCertificateNamesKey(parsed.certificate, options.signingKey);
          } catch (err) {
            reject(err instanceof Error ? err : new CertificationError(String(err)));
            return;
          }
          resolve(parsed.certificate);
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new CertificationError('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** The sidecar cannot verify the authority's signature (verifiers do), but it refuses a certificate for another key. */
function checkCertificateNamesKey(jws: string, key: SigningKey): void {
  let claims: Record<string, unknown>;
  try {
    claims = decodeJwt(jws);
  } catch (err) {
    throw new CertificationError(`the certificate is not a compact JWS: ${(err as Error).message}`);
  }
  if (claims.typ !== SIGNER_CERTIFICATE_TYPE || claims.keyId !== key.keyId || claims.x !== key.publicJwk.x) {
    throw new CertificationError('the certificate does not name this sidecar key');
  }
}

/**
 * Keeps asking until a certificate arrives, then sets it on the signing key. `start` resolves when the
 * certificate is there or after `waitMs`, whichever is first; asking goes on in the background.
 */
export class SignerCertifier {
  private readonly options: SignerCertificationOptions;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private attempts = 0;
  private done: Promise<void>;
  private resolveDone: () => void = () => undefined;

  constructor(options: SignerCertificationOptions) {
    this.options = options;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  async start(waitMs: number): Promise<void> {
    void this.attempt();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.done, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
    if (this.options.signingKey.certificate === undefined) {
      this.options.logger.warn(
        'no signer certificate yet; Sessions are written with a self-asserted key until it comes',
        {
          url: this.options.url,
          waitedMs: waitMs,
        },
      );
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async attempt(): Promise<void> {
    if (this.stopped) return;
    this.attempts += 1;
    try {
      this.options.signingKey.certificate = await requestSignerCertificate(this.options);
      this.options.logger.info('signer certificate received', {
        keyId: this.options.signingKey.keyId,
        attempts: this.attempts,
      });
      this.resolveDone();
    } catch (err) {
      const initial = this.options.backoffInitialMs ?? 1000;
      const delay = Math.min(this.options.backoffMaxMs ?? 60_000, initial * 2 ** Math.min(this.attempts - 1, 16));
      this.options.logger.warn('signer certification failed; retrying', {
        url: this.options.url,
        attempts: this.attempts,
        retryInMs: delay,
        error: err,
      });
      if (this.stopped as boolean) return;
      this.timer = setTimeout(() => void this.attempt(), delay);
      this.timer.unref();
    }
  }
}
