// POST /audit/v1/certify: a sidecar presents its pod-bound service-account token and its Ed25519 public
// key; the operator attests the pod (pod-attestation.ts: TokenReview, the pod exists with that uid, its
// sidecar is the one the operator sealed and nothing else in the pod reaches it) and returns a signer
// certificate binding the key to that pod (api/src/audit-signature.ts). Verifiers then trust a Session's
// key because the operator vouched for the pod it came from, not because the Session says so. Errors are
// Kubernetes Status bodies.
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
import type { Logger } from '../observability/logger.ts';
import type { AuditAuthority } from './audit-authority.ts';
import { bearerToken, PodAttestor, readBody, Refused, statusBody } from './pod-attestation.ts';

export interface SignerCertificationOptions {
  readonly authority: AuditAuthority;
  readonly authentication: AuthenticationV1Api;
  readonly core: CoreV1Api;
  readonly logger: Logger;
  readonly registry?: Registry;
  readonly now?: () => Date;
}

const MAX_BODY_BYTES = 4096;
const ED25519_X = /^[A-Za-z0-9_-]{43}$/;

function parsePublicKey(body: Buffer): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new Refused(400, 'BadRequest', 'body is not JSON');
  }
  const key = (parsed as { publicKey?: { kty?: unknown; crv?: unknown; x?: unknown; d?: unknown } } | null)?.publicKey;
  if (key?.kty !== 'OKP' || key.crv !== 'Ed25519' || typeof key.x !== 'string' || !ED25519_X.test(key.x)) {
    throw new Refused(400, 'BadRequest', 'publicKey must be an Ed25519 public JWK (kty OKP, crv Ed25519, x)');
  }
  if (key.d !== undefined) throw new Refused(400, 'BadRequest', 'send the public key only, never d');
  return key.x;
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

  const attestor = new PodAttestor({
    authentication: options.authentication,
    core: options.core,
    publicKeys: () => options.authority.publicKeys,
    // Certification is rare and must see the pod as it is now.
    tokenCacheMs: 0,
  });
  const certify = async (req: IncomingMessage): Promise<{ jws: string; certificate: SignerCertificate }> => {
    if (req.method !== 'POST') throw new Refused(400, 'BadRequest', 'use POST');
    const token = bearerToken(req);
    const x = parsePublicKey(await readBody(req, MAX_BODY_BYTES));
    const pod = await attestor.attest(token);
    const certificate: SignerCertificate = {
      typ: SIGNER_CERTIFICATE_TYPE,
      keyId: await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x }),
      x,
      pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid },
      serviceAccount: pod.serviceAccount,
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
          err instanceof Refused
            ? err
            : new Refused(500, 'InternalError', `certification failed: ${(err as Error).message}`);
        issued.inc({ result: refused.reason });
        const fields = { code: refused.code, reason: refused.message };
        if (refused.code === 500) options.logger.error('signer certificate refused', fields);
        else options.logger.info('signer certificate refused', fields);
        if (!res.headersSent) {
          res
            .writeHead(refused.code, { 'content-type': 'application/json' })
            .end(statusBody(refused.code, refused.reason, refused.message));
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
