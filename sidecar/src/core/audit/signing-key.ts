// The sidecar's Ed25519 key that signs chain heads (api/src/audit-signature.ts). Kept as a private JWK
// file; generated on first start when the file is absent (into the spool directory by default), so a
// restarted sidecar keeps signing with the same key. The kid is the RFC 7638 thumbprint.
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';

export interface SigningKey {
  readonly keyId: string;
  /** Private JWK with `kid`, for signChainHead. */
  readonly privateJwk: JWK & { kid: string };
  /** Public JWK (kty, crv, x, kid), written into Session spec.signer.publicKey. */
  readonly publicJwk: JWK & { kid: string };
  /** The operator's certificate for this key (compact JWS), once it has issued one. */
  certificate?: string;
}

export class SigningKeyError extends Error {
  override name = 'SigningKeyError';
}

/** Reads the private JWK in `file`, or generates one and writes it there (mode 0600) when it is absent. */
export async function loadOrCreateSigningKey(file: string): Promise<SigningKey> {
  let jwk: JWK;
  try {
    jwk = JSON.parse(readFileSync(file, 'utf8')) as JWK;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new SigningKeyError(`cannot read signing key ${file}: ${(err as Error).message}`, { cause: err });
    }
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const { privateKey } = generateKeyPairSync('ed25519');
    jwk = privateKey.export({ format: 'jwk' });
    jwk.kid = await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '' });
    const tmp = `${file}.tmp-${String(process.pid)}`;
    writeFileSync(tmp, `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
    renameSync(tmp, file);
  }
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string' || typeof jwk.d !== 'string') {
    throw new SigningKeyError(`signing key ${file} is not an Ed25519 private JWK`);
  }
  const keyId = jwk.kid ?? (await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: jwk.x }));
  return {
    keyId,
    privateJwk: { ...jwk, kid: keyId },
    publicJwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x, kid: keyId },
  };
}
