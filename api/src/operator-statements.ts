// Statements the operator signs with its key (the audit authority's Ed25519 key, docs/audit.md "Trust
// model") besides certificates and checkpoints:
//   * a pod seal: the digest of the sidecar container, its volumes and its configuration exactly as the
//     injector rendered them, for one namespace. Certification, Session admission, the sidecars' RoleBinding
//     and credential delivery trust a pod's sidecar only when its spec still matches its seal.
//   * a policy set: the compiled policy bundles of one namespace (name, ConfigMap, digest) at a point in
//     time. Sidecars load only the bundles a set signed by a pinned key names, and never an older set.
// Every statement is a compact JWS (EdDSA) over the JCS JSON of its payload with its own `typ`, so one kind
// of statement can never be taken for another. Seals are signed synchronously (node:crypto), because the
// injector is a pure synchronous function; they are ordinary JWS that jose verifies.
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  type KeyObject,
} from 'node:crypto';
import type { JWK } from 'jose';
import { jcs } from './jcs.ts';

export const POD_SEAL_TYPE = 'chaperone.dev/pod-seal/v1';
export const POLICY_SET_TYPE = 'chaperone.dev/policy-set/v1';

export interface PodSeal {
  readonly typ: typeof POD_SEAL_TYPE;
  /** Namespace the pod was admitted in. */
  readonly namespace: string;
  /** sha256 (`sha256:` + hex) of the JCS JSON of the sealed parts (see podSealDigest). */
  readonly digest: string;
}

/** What a seal covers, as the injector rendered it. */
export interface SealedParts {
  /** The sidecar container, without `resources`/`resizePolicy` (in-place resize may change them). */
  readonly container: unknown;
  /** The volumes the sidecar mounts, sorted by name. */
  readonly volumes: readonly unknown[];
  /** The injector's annotations (sidecar configuration, agent kubeconfig), by key. */
  readonly annotations: Readonly<Record<string, string>>;
}

function canonical(value: unknown): string {
  const text = jcs(value);
  if (text === undefined) throw new Error('statement cannot be canonicalized');
  return text;
}

export function podSealDigest(parts: SealedParts): string {
  return `sha256:${createHash('sha256').update(canonical(parts)).digest('hex')}`;
}

export interface PolicySetEntry {
  /** AccessPolicy name. */
  readonly name: string;
  /** ConfigMap holding its bundle (policy.wasm, manifest.json). */
  readonly configMap: string;
  /** The bundle digest (bundleDigest in policy-bundle.ts), recomputed by the sidecar from the bytes. */
  readonly digest: string;
}

export interface PolicySet {
  readonly typ: typeof POLICY_SET_TYPE;
  readonly namespace: string;
  /** UTC time of signing, RFC 3339 with milliseconds; strictly increasing per namespace. */
  readonly issuedAt: string;
  /** Sorted by name. */
  readonly policies: readonly PolicySetEntry[];
}

/** An Ed25519 private JWK (with kid) as a KeyObject for synchronous signing. */
export interface StatementSigner {
  readonly keyId: string;
  readonly key: KeyObject;
}

export function statementSigner(privateJwk: JWK & { kid: string }): StatementSigner {
  return { keyId: privateJwk.kid, key: createPrivateKey({ key: privateJwk, format: 'jwk' }) };
}

/** A compact JWS with header {alg: EdDSA, kid, typ} over the JCS JSON of `payload`, signed synchronously. */
export function signStatementSync(payload: object, typ: string, signer: StatementSigner): string {
  const header = Buffer.from(JSON.stringify({ alg: 'EdDSA', kid: signer.keyId, typ })).toString('base64url');
  const body = Buffer.from(canonical(payload)).toString('base64url');
  const input = `${header}.${body}`;
  return `${input}.${cryptoSign(null, Buffer.from(input), signer.key).toString('base64url')}`;
}

/**
 * Verifies a compact JWS (alg EdDSA, Ed25519) against public JWKs chosen by the header's kid, synchronously,
 * and returns its JSON payload; the caller checks `typ`. Throws when it does not verify.
 */
export function verifyStatementSync(jws: string, keys: readonly (JWK & { kid?: string })[]): unknown {
  const parts = jws.split('.');
  if (parts.length !== 3) throw new Error('not a compact JWS');
  const [header, body, signature] = parts as [string, string, string];
  let protectedHeader: { alg?: unknown; kid?: unknown; crit?: unknown };
  try {
    protectedHeader = JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as typeof protectedHeader;
  } catch {
    throw new Error('the JWS header is not JSON');
  }
  if (protectedHeader.alg !== 'EdDSA') throw new Error(`unexpected algorithm ${String(protectedHeader.alg)}`);
  if (protectedHeader.crit !== undefined) throw new Error('critical header parameters are not supported');
  const jwk = keys.find((k) => k.kid === protectedHeader.kid);
  if (jwk === undefined) throw new Error(`unknown authority key ${String(protectedHeader.kid)}`);
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new Error('not an Ed25519 key');
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, format: 'jwk' });
  if (!cryptoVerify(null, Buffer.from(`${header}.${body}`), key, Buffer.from(signature, 'base64url'))) {
    throw new Error('signature verification failed');
  }
  try {
    return JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as unknown;
  } catch {
    throw new Error('the JWS payload is not JSON');
  }
}

export function signPodSeal(seal: Omit<PodSeal, 'typ'>, signer: StatementSigner): string {
  return signStatementSync({ ...seal, typ: POD_SEAL_TYPE }, 'chaperone-seal+jws', signer);
}

export function verifyPodSeal(jws: string, keys: readonly (JWK & { kid?: string })[]): PodSeal {
  const seal = verifyStatementSync(jws, keys) as Partial<PodSeal> | null;
  if (seal === null || typeof seal !== 'object') throw new Error('not a pod seal');
  if (seal.typ !== POD_SEAL_TYPE || typeof seal.digest !== 'string' || typeof seal.namespace !== 'string') {
    throw new Error('not a pod seal');
  }
  return seal as PodSeal;
}

export function signPolicySet(set: Omit<PolicySet, 'typ'>, signer: StatementSigner): string {
  return signStatementSync({ ...set, typ: POLICY_SET_TYPE }, 'chaperone-policy-set+jws', signer);
}

export function verifyPolicySet(jws: string, keys: readonly (JWK & { kid?: string })[]): PolicySet {
  const set = verifyStatementSync(jws, keys) as Partial<PolicySet> | null;
  if (set === null || typeof set !== 'object') throw new Error('not a policy set');
  if (
    set.typ !== POLICY_SET_TYPE ||
    typeof set.namespace !== 'string' ||
    typeof set.issuedAt !== 'string' ||
    !Array.isArray(set.policies) ||
    !set.policies.every(
      (p: Partial<PolicySetEntry>) =>
        typeof p.name === 'string' && typeof p.configMap === 'string' && typeof p.digest === 'string',
    )
  ) {
    throw new Error('not a policy set');
  }
  return set as PolicySet;
}

/** The per-namespace ConfigMap holding the signed policy set (key POLICY_SET_KEY). */
export const POLICY_SET_CONFIGMAP = 'chaperone-policies';
export const POLICY_SET_KEY = 'policies.jws';
/** Pod annotation carrying the operator's seal over the injected sidecar. */
export const SEAL_ANNOTATION = 'chaperone.dev/seal';

/** Operator endpoints sidecars call with their pod-bound token (next to SIGNER_CERTIFICATION_PATH). */
export const SESSION_PROXY_PATH = '/audit/v1/sessions';
export const CREDENTIAL_DELIVERY_PATH = '/credentials/v1/fetch';
