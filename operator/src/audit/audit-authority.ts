// The operator's audit authority: an Ed25519 key that certifies sidecar signing keys and signs checkpoints
// (api/src/audit-signature.ts). The private JWK lives in a Secret in the operator's namespace, created by
// whichever replica gets there first; the public keys are published in a ConfigMap of the same name for
// auditors and `kubectl chaperone verify`. Anyone who can read the Secret can sign as the authority, so
// auditors should pin the public key outside the cluster (docs/audit.md, "Trust model").
import { generateKeyPairSync } from 'node:crypto';
import type { CoreV1Api, V1ConfigMap, V1Secret } from '@kubernetes/client-node';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { AUDIT_AUTHORITY_JWKS_KEY, AUDIT_AUTHORITY_NAME } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';

const PRIVATE_KEY = 'authority.jwk';

export interface AuditAuthority {
  readonly keyId: string;
  readonly privateJwk: JWK & { kid: string };
  readonly publicJwk: JWK & { kid: string };
  /** Every public key published in the JWKS ConfigMap (earlier keys too), the current one included. */
  readonly publicKeys: readonly (JWK & { kid: string })[];
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  return typeof e.code === 'number' ? e.code : typeof e.statusCode === 'number' ? e.statusCode : undefined;
}

async function newPrivateJwk(): Promise<JWK & { kid: string }> {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '' });
  return { ...jwk, kid };
}

function parsePrivateJwk(secret: V1Secret): JWK & { kid: string } {
  const data = secret.data?.[PRIVATE_KEY];
  if (data === undefined) throw new Error(`Secret ${AUDIT_AUTHORITY_NAME} has no ${PRIVATE_KEY}`);
  const jwk = JSON.parse(Buffer.from(data, 'base64').toString('utf8')) as JWK;
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string' || typeof jwk.kid !== 'string') {
    throw new Error(`Secret ${AUDIT_AUTHORITY_NAME} does not hold an Ed25519 private JWK with a kid`);
  }
  return jwk as JWK & { kid: string };
}

/** Reads the authority key from its Secret, creating it when absent, and publishes its public key. */
export async function loadOrCreateAuditAuthority(
  core: CoreV1Api,
  namespace: string,
  logger: Logger,
): Promise<AuditAuthority> {
  let privateJwk: JWK & { kid: string };
  try {
    privateJwk = parsePrivateJwk(await core.readNamespacedSecret({ namespace, name: AUDIT_AUTHORITY_NAME }));
  } catch (err) {
    if (statusOf(err) !== 404) throw err;
    const fresh = await newPrivateJwk();
    try {
      await core.createNamespacedSecret({
        namespace,
        body: {
          metadata: { name: AUDIT_AUTHORITY_NAME, labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' } },
          type: 'Opaque',
          data: { [PRIVATE_KEY]: Buffer.from(JSON.stringify(fresh)).toString('base64') },
        },
      });
      privateJwk = fresh;
      logger.info('audit authority key created', { namespace, keyId: fresh.kid });
    } catch (createErr) {
      // Another replica created it first: use theirs.
      if (statusOf(createErr) !== 409) throw createErr;
      privateJwk = parsePrivateJwk(await core.readNamespacedSecret({ namespace, name: AUDIT_AUTHORITY_NAME }));
    }
  }
  const publicJwk = { kty: 'OKP', crv: 'Ed25519', x: privateJwk.x ?? '', kid: privateJwk.kid };
  const publicKeys = await publishPublicKey(core, namespace, publicJwk);
  return { keyId: privateJwk.kid, privateJwk, publicJwk, publicKeys };
}

/**
 * Adds the public key to the ConfigMap's JWKS (earlier keys stay, so old certificates keep verifying);
 * returns every key published.
 */
async function publishPublicKey(
  core: CoreV1Api,
  namespace: string,
  publicJwk: JWK & { kid: string },
): Promise<(JWK & { kid: string })[]> {
  let existing: V1ConfigMap | undefined;
  try {
    existing = await core.readNamespacedConfigMap({ namespace, name: AUDIT_AUTHORITY_NAME });
  } catch (err) {
    if (statusOf(err) !== 404) throw err;
  }
  const keys = existing === undefined ? [] : parseJwks(existing.data?.[AUDIT_AUTHORITY_JWKS_KEY] ?? '{"keys":[]}');
  if (keys.some((k) => k.kid === publicJwk.kid)) return keys;
  const data = { [AUDIT_AUTHORITY_JWKS_KEY]: JSON.stringify({ keys: [...keys, publicJwk] }, null, 2) };
  if (existing === undefined) {
    try {
      await core.createNamespacedConfigMap({
        namespace,
        body: {
          metadata: { name: AUDIT_AUTHORITY_NAME, labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' } },
          data,
        },
      });
    } catch (err) {
      if (statusOf(err) !== 409) throw err;
      return publishPublicKey(core, namespace, publicJwk);
    }
    return [publicJwk];
  }
  await core.replaceNamespacedConfigMap({
    namespace,
    name: AUDIT_AUTHORITY_NAME,
    body: { metadata: existing.metadata, data: { ...existing.data, ...data } },
  });
  return [...keys, publicJwk];
}

export function parseJwks(text: string): (JWK & { kid: string })[] {
  const parsed = JSON.parse(text) as { keys?: unknown };
  if (!Array.isArray(parsed.keys)) throw new Error('not a JWKS: no "keys" array');
  return (parsed.keys as JWK[]).filter((k): k is JWK & { kid: string } => typeof k.kid === 'string');
}
