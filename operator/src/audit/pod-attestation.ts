// Who is calling the operator on behalf of a sidecar (docs/audit.md, "Trust model"): a bearer token that
// the API server authenticates (TokenReview, the API server's own audience) as a service account whose
// token is bound to a pod (`authentication.kubernetes.io/pod-name`/`pod-uid`), a pod that exists with that
// uid, whose sidecar is the one the operator sealed and that nothing else in the pod can reach. Pod-bound
// tokens are minted by kubelets only (config/admission/sidecar-identity.yaml refuses everyone else), so an
// editor of the namespace can neither mint one nor run a container next to the sidecar that reads it.
// Used by signer certification, the Session proxy and credential delivery.
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { AuthenticationV1Api, CoreV1Api, V1Pod } from '@kubernetes/client-node';
import { attestationProblems, type PublicKeys } from '../injection/sealed-pod.ts';

export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
const SERVICE_ACCOUNT_USER = /^system:serviceaccount:([a-z0-9.-]+):([a-z0-9.-]+)$/;

export type RefusalReason =
  'Unauthorized' | 'Forbidden' | 'BadRequest' | 'RequestEntityTooLarge' | 'NotFound' | 'Conflict' | 'InternalError';

/** A refusal answered as a Kubernetes Status with this code and reason. */
export class Refused extends Error {
  override name = 'Refused';
  readonly code: number;
  readonly reason: RefusalReason;
  constructor(code: number, reason: RefusalReason, message: string) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

export function statusBody(code: number, reason: string, message: string): string {
  return JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

/** The request body, refused (413) beyond `maxBytes`: the sidecar-facing endpoints read small bodies only. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        reject(new Refused(413, 'RequestEntityTooLarge', `request body over ${String(maxBytes)} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** readBody parsed as JSON; a body that is not JSON is refused (400). */
export async function readJson(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const body = await readBody(req, maxBytes);
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    throw new Refused(400, 'BadRequest', 'body is not JSON');
  }
}

export interface AttestedPod {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  /** system:serviceaccount:<namespace>:<name> */
  readonly serviceAccount: string;
  readonly pod: V1Pod;
}

export interface PodAttestorOptions {
  readonly authentication: AuthenticationV1Api;
  readonly core: CoreV1Api;
  /** The operator's public keys now (seals are checked against them). */
  readonly publicKeys: () => PublicKeys;
  /** How long an authenticated token is remembered, ms. Default 60 000; 0 disables. */
  readonly tokenCacheMs?: number;
  readonly now?: () => number;
}

function one(extra: Record<string, string[]> | undefined, key: string): string | undefined {
  const values = extra?.[key];
  return values?.length === 1 ? values[0] : undefined;
}

/** The bearer token of a request, or a 401. */
export function bearerToken(req: IncomingMessage): string {
  const auth = req.headers.authorization ?? '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
  if (token === '') throw new Refused(401, 'Unauthorized', 'a pod-bound service-account bearer token is required');
  return token;
}

export class PodAttestor {
  private readonly options: PodAttestorOptions;
  private readonly reviews = new Map<string, { at: number; user: { username: string; pod: string; uid: string } }>();

  constructor(options: PodAttestorOptions) {
    this.options = options;
  }

  /** Authenticates the token and attests its pod; throws Refused (401/403) otherwise. */
  async attest(token: string): Promise<AttestedPod> {
    const user = await this.authenticate(token);
    const match = SERVICE_ACCOUNT_USER.exec(user.username);
    const namespace = match?.[1] ?? '';
    const pod = await this.options.core.readNamespacedPod({ namespace, name: user.pod }).catch(() => undefined);
    if (pod?.metadata?.uid !== user.uid) {
      throw new Refused(403, 'Forbidden', `pod ${namespace}/${user.pod} with uid ${user.uid} does not exist`);
    }
    const problems = attestationProblems(pod, namespace, this.options.publicKeys());
    if (problems.length > 0) {
      throw new Refused(
        403,
        'Forbidden',
        `pod ${namespace}/${user.pod} does not run the Chaperone sidecar as the operator sealed it, alone: ${problems.join('; ')}`,
      );
    }
    return { namespace, name: user.pod, uid: user.uid, serviceAccount: user.username, pod };
  }

  private async authenticate(token: string): Promise<{ username: string; pod: string; uid: string }> {
    const now = (this.options.now ?? Date.now)();
    const key = createHash('sha256').update(token).digest('hex');
    const cached = this.reviews.get(key);
    const ttl = this.options.tokenCacheMs ?? 60_000;
    if (cached !== undefined && now - cached.at < ttl) return cached.user;
    // No audiences: the token must be valid for the API server itself, as the sidecar's projected token is.
    const review = await this.options.authentication.createTokenReview({ body: { spec: { token } } });
    if (review.status?.authenticated !== true) {
      throw new Refused(401, 'Unauthorized', `token not authenticated: ${review.status?.error ?? 'rejected'}`);
    }
    const username = review.status.user?.username ?? '';
    const pod = one(review.status.user?.extra, POD_NAME_EXTRA);
    const uid = one(review.status.user?.extra, POD_UID_EXTRA);
    if (!SERVICE_ACCOUNT_USER.test(username) || pod === undefined || uid === undefined) {
      throw new Refused(403, 'Forbidden', 'the token is not a service-account token bound to a pod');
    }
    const user = { username, pod, uid };
    if (ttl > 0) {
      if (this.reviews.size > 10_000) this.reviews.clear();
      this.reviews.set(key, { at: now, user });
    }
    return user;
  }
}
