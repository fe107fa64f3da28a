// Signed chain heads. At every flush the sidecar signs the head of each session's chain (the last record's
// seq and hash) with its Ed25519 key as a compact JWS; the key itself is certified by the operator (see
// docs/audit.md, "Trust model"). Anyone with the public keys can check a head offline.
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
