// POST /audit/v1/certify: a sidecar presents its pod-bound service-account token and its Ed25519 public
// key; the operator authenticates the token with a TokenReview, checks that the pod the token is bound to
// exists with that uid and runs the Chaperone sidecar, and returns a signer certificate binding the key to
// that pod (api/src/audit-signature.ts). Verifiers then trust a Session's key because the operator vouched
// for the pod it came from, not because the Session says so. Errors are Kubernetes Status bodies.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { calculateJwkThumbprint } from 'jose';
import { Counter, type Registry } from 'prom-client';
import {
  SIGNER_CERTIFICATE_TYPE,
  SIGNER_CERTIFICATION_PATH,
  signSignerCertificate,
  type SignerCertificate,
} from '@chaperone/api';
import { SIDECAR_CONTAINER } from '../injection/constants.ts';
import type { Logger } from '../observability/logger.ts';
import type { AuditAuthority } from './audit-authority.ts';

export interface SignerCertificationOptions {
  readonly authority: AuditAuthority;
  readonly authentication: AuthenticationV1Api;
  readonly core: CoreV1Api;
  readonly logger: Logger;
  readonly registry?: Registry;
  readonly now?: () => Date;
}

const MAX_BODY_BYTES = 4096;
const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
const SERVICE_ACCOUNT_USER = /^system:serviceaccount:([a-z0-9.-]+):([a-z0-9.-]+)$/;
const ED25519_X = /^[A-Za-z0-9_-]{43}$/;

type Reason = 'Unauthorized' | 'Forbidden' | 'BadRequest' | 'RequestEntityTooLarge' | 'InternalError';

class CertificationRefused extends Error {
  readonly code: number;
  readonly reason: Reason;
  constructor(code: number, reason: Reason, message: string) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

function status(code: number, reason: Reason, message: string): string {
  return JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(
          new CertificationRefused(413, 'RequestEntityTooLarge', `request body over ${String(MAX_BODY_BYTES)} bytes`),
        );
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parsePublicKey(body: Buffer): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new CertificationRefused(400, 'BadRequest', 'body is not JSON');
  }
  const key = (parsed as { publicKey?: { kty?: unknown; crv?: unknown; x?: unknown; d?: unknown } } | null)?.publicKey;
  if (key?.kty !== 'OKP' || key.crv !== 'Ed25519' || typeof key.x !== 'string' || !ED25519_X.test(key.x)) {
    throw new CertificationRefused(
      400,
      'BadRequest',
      'publicKey must be an Ed25519 public JWK (kty OKP, crv Ed25519, x)',
    );
  }
  if (key.d !== undefined) throw new CertificationRefused(400, 'BadRequest', 'send the public key only, never d');
  return key.x;
}

function one(extra: Record<string, string[]> | undefined, key: string): string | undefined {
  const values = extra?.[key];
  return values?.length === 1 ? values[0] : undefined;
}

/** The handler for SIGNER_CERTIFICATION_PATH on the operator's HTTPS server. */
export function createSignerCertificationHandler(
  options: SignerCertificationOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  const now = options.now ?? (() => new Date());
  const issued = new Counter({
    name: 'chaperone_signer_certifications_total',
    help: 'Signer certificate requests answered, by result (issued, or the refusal reason).',
    labelNames: ['result'],
    registers: options.registry === undefined ? [] : [options.registry],
  });

  const certify = async (req: IncomingMessage): Promise<{ jws: string; certificate: SignerCertificate }> => {
    if (req.method !== 'POST') throw new CertificationRefused(400, 'BadRequest', 'use POST');
    const auth = req.headers.authorization ?? '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
    if (token === '')
      throw new CertificationRefused(401, 'Unauthorized', 'a pod-bound service-account bearer token is required');
    const x = parsePublicKey(await readBody(req));

    // No audiences: the token must be valid for the API server itself, as the sidecar's projected token is.
    const review = await options.authentication.createTokenReview({ body: { spec: { token } } });
    if (review.status?.authenticated !== true) {
      throw new CertificationRefused(
        401,
        'Unauthorized',
        `token not authenticated: ${review.status?.error ?? 'rejected'}`,
      );
    }
    const user = review.status.user;
    const match = SERVICE_ACCOUNT_USER.exec(user?.username ?? '');
    const podName = one(user?.extra, POD_NAME_EXTRA);
    const podUid = one(user?.extra, POD_UID_EXTRA);
    if (match === null || podName === undefined || podUid === undefined) {
      throw new CertificationRefused(403, 'Forbidden', 'the token is not a service-account token bound to a pod');
    }
    const namespace = match[1] ?? '';
    const pod = await options.core.readNamespacedPod({ namespace, name: podName }).catch(() => undefined);
    if (pod?.metadata?.uid !== podUid) {
      throw new CertificationRefused(403, 'Forbidden', `pod ${namespace}/${podName} with uid ${podUid} does not exist`);
    }
    if (!(pod.spec?.initContainers ?? []).some((c) => c.name === SIDECAR_CONTAINER)) {
      throw new CertificationRefused(
        403,
        'Forbidden',
        `pod ${namespace}/${podName} does not run the Chaperone sidecar`,
      );
    }
    const certificate: SignerCertificate = {
      typ: SIGNER_CERTIFICATE_TYPE,
      keyId: await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x }),
      x,
      pod: { namespace, name: podName, uid: podUid },
      serviceAccount: user?.username ?? '',
      issuedAt: now().toISOString(),
    };
    return { jws: await signSignerCertificate(certificate, options.authority.privateJwk), certificate };
  };

  return (req, res) => {
    certify(req).then(
      ({ jws, certificate }) => {
        issued.inc({ result: 'issued' });
        options.logger.info('signer certificate issued', {
          pod: `${certificate.pod.namespace}/${certificate.pod.name}`,
          podUid: certificate.pod.uid,
          keyId: certificate.keyId,
        });
        const body = JSON.stringify({ certificate: jws, authorityKeyId: options.authority.keyId });
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      },
      (err: unknown) => {
        const refused =
          err instanceof CertificationRefused
            ? err
            : new CertificationRefused(500, 'InternalError', `certification failed: ${(err as Error).message}`);
        issued.inc({ result: refused.reason });
        const fields = { code: refused.code, reason: refused.message };
        if (refused.code === 500) options.logger.error('signer certificate refused', fields);
        else options.logger.info('signer certificate refused', fields);
        if (!res.headersSent) {
          res
            .writeHead(refused.code, { 'content-type': 'application/json' })
            .end(status(refused.code, refused.reason, refused.message));
        }
      },
    );
  };
}

/** The webhook-server options that serve the certification endpoint and point injected sidecars at it. */
export function signerCertificationWebhookOptions(
  options: Omit<SignerCertificationOptions, 'authentication' | 'core'> & { readonly kubeConfig: KubeConfig },
): { signerCertificationPath: string; routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> } {
  const { kubeConfig, ...rest } = options;
  return {
    signerCertificationPath: SIGNER_CERTIFICATION_PATH,
    routes: {
      [SIGNER_CERTIFICATION_PATH]: createSignerCertificationHandler({
        ...rest,
        authentication: kubeConfig.makeApiClient(AuthenticationV1Api),
        core: kubeConfig.makeApiClient(CoreV1Api),
      }),
    },
  };
}
