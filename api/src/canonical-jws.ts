// The one text of a signed token. A Session, an exchange record and `token trace` name a token by the
// sha256 of its text (tokenHash), so a token whose holder can re-spell it while it still verifies would carry
// a hash nobody issued. Two kinds of re-spelling verify with jose: a lenient base64url spelling of the
// signature (padding, whitespace, the unused low bits of its last character), and, for ECDSA, the twin
// signature (r, n − s) that every (r, s) has (ECDSA is malleable; OpenSSL and jose accept both halves).

/** A compact JWS: three base64url parts, no padding, no whitespace (RFC 7515 §7.1); an empty signature is refused later, by its algorithm. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/**
 * Whether `token` is in its one base64url spelling: compact, and a signature whose base64url re-encodes to
 * itself. The header and payload need no such check: the signature covers their text.
 */
export function canonicalCompactJws(token: string): boolean {
  if (!COMPACT_JWS.test(token)) return false;
  const signature = token.slice(token.lastIndexOf('.') + 1);
  return Buffer.from(signature, 'base64url').toString('base64url') === signature;
}

/** Group orders of the curves of the JWS ECDSA algorithms (SEC 2; RFC 7518 §3.4). */
const CURVES: Readonly<Record<string, { readonly order: bigint; readonly size: number }>> = {
  ES256: { order: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n, size: 32 },
  ES384: {
    order: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
    size: 48,
  },
  ES512: {
    order:
      0x1fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409n,
    size: 66,
  },
};

function signatureParts(token: string, alg: string): { order: bigint; r: Buffer; s: bigint; size: number } | undefined {
  const curve = CURVES[alg];
  if (curve === undefined) return undefined;
  const signature = Buffer.from(token.slice(token.lastIndexOf('.') + 1), 'base64url');
  // JWS ECDSA signatures are r || s of exactly the order's length each (RFC 7518 §3.4); jose fails any other.
  if (signature.length !== 2 * curve.size) return undefined;
  const { order, size } = curve;
  return { order, r: signature.subarray(0, size), s: BigInt(`0x${signature.subarray(size).toString('hex')}`), size };
}

/**
 * Whether an ECDSA-signed token carries the upper twin (s > n/2) of its signature. The low twin is the
 * canonical one (as in Bitcoin's BIP 62 and Ethereum's EIP-2): Chaperone's token exchange issues only low-S
 * tokens, so a high-S token of the exchange was re-spelled by its holder. Other algorithms: false.
 */
export function ecdsaHighS(token: string, alg: string): boolean {
  const parts = signatureParts(token, alg);
  return parts !== undefined && parts.s > parts.order / 2n;
}

/** The token with its ECDSA signature's low-S twin (the same token when it already is, or is not ECDSA). */
export function lowSEcdsa(token: string, alg: string): string {
  const parts = signatureParts(token, alg);
  if (parts === undefined || parts.s <= parts.order / 2n) return token;
  const twin = Buffer.from((parts.order - parts.s).toString(16).padStart(parts.size * 2, '0'), 'hex');
  return `${token.slice(0, token.lastIndexOf('.') + 1)}${Buffer.concat([parts.r, twin]).toString('base64url')}`;
}
