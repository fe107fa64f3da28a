// Signed chain heads. At every flush the sidecar signs the head of each session's chain (the last record's
// seq and hash) with its Ed25519 key as a compact JWS; the key itself is certified by the operator (see
// docs/audit.md, "Trust model"). Anyone with the public keys can check a head offline.
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { CompactSign, compactVerify, importJWK, type JWK } from 'jose';

/** The signed payload of a chain head (the JWS payload is its JCS-canonical JSON). */
export interface ChainHead {
  /** Always "chaperone.dev/chain-head/v1". */
  readonly typ: typeof CHAIN_HEAD_TYPE;
  readonly sessionId: string;
  /** namespace/name of the Session object (part) this head was written to. */
  readonly object: string;
  readonly seq: number;
  readonly hash: string;
  /** UTC time of signing, RFC 3339. */
  readonly signedAt: string;
}

export const CHAIN_HEAD_TYPE = 'chaperone.dev/chain-head/v1';

/** Signs a head with an Ed25519 private JWK (with `kid`); returns the compact JWS. */
export async function signChainHead(head: ChainHead, privateJwk: JWK & { kid: string }): Promise<string> {
  const key = await importJWK(privateJwk, 'EdDSA');
  const payload = new TextEncoder().encode(canonicalHead(head));
  return new CompactSign(payload)
    .setProtectedHeader({ alg: 'EdDSA', kid: privateJwk.kid, typ: 'chaperone-head+jws' })
    .sign(key);
}

/** Verifies a compact JWS head against a set of public JWKs (by kid); returns the head or throws. */
export async function verifyChainHead(
  jws: string,
  publicJwks: readonly (JWK & { kid?: string })[],
): Promise<ChainHead> {
  const { protectedHeader, payload } = await compactVerify(jws, async (header) => {
    const jwk = publicJwks.find((k) => k.kid === header.kid);
    if (jwk === undefined) throw new Error(`unknown signing key ${String(header.kid)}`);
    return importJWK(jwk, 'EdDSA');
  });
  if (protectedHeader.alg !== 'EdDSA') throw new Error(`unexpected algorithm ${protectedHeader.alg}`);
  const head = JSON.parse(new TextDecoder().decode(payload)) as Partial<ChainHead>;
  if (head.typ !== CHAIN_HEAD_TYPE) throw new Error('not a chain head');
  return head as ChainHead;
}

function canonicalHead(head: ChainHead): string {
  // Fixed key order: the payload is verified as bytes, so it only has to be stable, and this is JCS order.
  return JSON.stringify({
    hash: head.hash,
    object: head.object,
    seq: head.seq,
    sessionId: head.sessionId,
    signedAt: head.signedAt,
    typ: head.typ,
  });
}

// ---------------------------------------------------------------------------------------------------------
// Statements of the operator's audit authority key (docs/audit.md, "Trust model"): a signer certificate
// binds a sidecar's key to the pod it runs in, after the operator authenticated that pod with a
// TokenReview; a checkpoint states the signed heads of every Session the operator saw, chained to the
// previous checkpoint, so removing or rolling back a whole session after a checkpoint is evident.

export const SIGNER_CERTIFICATE_TYPE = 'chaperone.dev/signer-certificate/v1';
export const CHECKPOINT_TYPE = 'chaperone.dev/checkpoint/v1';

export interface SignerCertificate {
  readonly typ: typeof SIGNER_CERTIFICATE_TYPE;
  /** kid (RFC 7638 thumbprint) of the certified key. */
  readonly keyId: string;
  /** The certified Ed25519 public key's `x` (base64url). */
  readonly x: string;
  /** The pod the key's sidecar runs in, as the pod-bound service-account token said. */
  readonly pod: { readonly namespace: string; readonly name: string; readonly uid: string };
  readonly serviceAccount: string;
  /** UTC time of issue, RFC 3339. */
  readonly issuedAt: string;
}

/** One Session object's signed head as a checkpoint saw it. */
export interface CheckpointEntry {
  /** namespace/name of the Session object. */
  readonly object: string;
  readonly sessionId: string;
  readonly part: number;
  readonly seq: number;
  readonly hash: string;
}

export interface Checkpoint {
  readonly typ: typeof CHECKPOINT_TYPE;
  /** UTC time the operator listed the Sessions, RFC 3339. */
  readonly time: string;
  /** Counts up from 1 for each checkpoint of one authority key. */
  readonly index: number;
  /** sha256 of the previous checkpoint's compact JWS ("sha256:" + hex), or GENESIS_HASH for the first. */
  readonly previous: string;
  /** Namespaces covered; empty means every namespace. */
  readonly namespaces: readonly string[];
  readonly sessions: readonly CheckpointEntry[];
}

export async function signSignerCertificate(
  certificate: SignerCertificate,
  authorityJwk: JWK & { kid: string },
): Promise<string> {
  return signStatement(certificate, 'chaperone-cert+jws', authorityJwk);
}

/** Verifies a signer certificate against the authority's public JWKs; returns it or throws. */
export async function verifySignerCertificate(
  jws: string,
  authorityJwks: readonly (JWK & { kid?: string })[],
): Promise<SignerCertificate> {
  const certificate = await verifyStatement<Partial<SignerCertificate>>(jws, authorityJwks);
  if (certificate.typ !== SIGNER_CERTIFICATE_TYPE) throw new Error('not a signer certificate');
  return certificate as SignerCertificate;
}

export async function signCheckpoint(checkpoint: Checkpoint, authorityJwk: JWK & { kid: string }): Promise<string> {
  return signStatement(checkpoint, 'chaperone-checkpoint+jws', authorityJwk);
}

export async function verifyCheckpoint(
  jws: string,
  authorityJwks: readonly (JWK & { kid?: string })[],
): Promise<Checkpoint> {
  const checkpoint = await verifyStatement<Partial<Checkpoint>>(jws, authorityJwks);
  if (checkpoint.typ !== CHECKPOINT_TYPE || !Array.isArray(checkpoint.sessions)) throw new Error('not a checkpoint');
  return checkpoint as Checkpoint;
}

/** The `previous` link of the checkpoint after the one whose compact JWS is `jws`. */
export function checkpointDigest(jws: string): string {
  return `sha256:${createHash('sha256').update(jws).digest('hex')}`;
}

async function signStatement(payload: object, typ: string, jwk: JWK & { kid: string }): Promise<string> {
  const key = await importJWK(jwk, 'EdDSA');
  const text = canonicalize(payload);
  if (text === undefined) throw new Error('statement cannot be canonicalized');
  return new CompactSign(new TextEncoder().encode(text))
    .setProtectedHeader({ alg: 'EdDSA', kid: jwk.kid, typ })
    .sign(key);
}

async function verifyStatement<T>(jws: string, publicJwks: readonly (JWK & { kid?: string })[]): Promise<T> {
  const { protectedHeader, payload } = await compactVerify(jws, async (header) => {
    const jwk = publicJwks.find((k) => k.kid === header.kid);
    if (jwk === undefined) throw new Error(`unknown authority key ${String(header.kid)}`);
    return importJWK(jwk, 'EdDSA');
  });
  if (protectedHeader.alg !== 'EdDSA') throw new Error(`unexpected algorithm ${protectedHeader.alg}`);
  return JSON.parse(new TextDecoder().decode(payload)) as T;
}

/** Name of the operator's Secret (private key) and ConfigMap (public JWKS) of the audit authority. */
export const AUDIT_AUTHORITY_NAME = 'chaperone-audit-authority';
/** Key of the public JWKS in the authority ConfigMap. */
export const AUDIT_AUTHORITY_JWKS_KEY = 'jwks.json';
/** ConfigMap (operator namespace) holding the newest checkpoint, key `checkpoint.jws`. */
export const AUDIT_CHECKPOINT_NAME = 'chaperone-audit-checkpoint';
export const AUDIT_CHECKPOINT_KEY = 'checkpoint.jws';
/** Path of the operator's signer certification endpoint (on the webhook server). */
export const SIGNER_CERTIFICATION_PATH = '/audit/v1/certify';
