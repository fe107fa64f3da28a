// Trusted signing keys for verification: a JWKS file ({"keys": [...]}), a JSON array of JWKs, or one JWK.
import { readFile } from 'node:fs/promises';
import type { JWK } from 'jose';

export async function loadTrustedKeys(path: string): Promise<(JWK & { kid?: string })[]> {
  const parsed = JSON.parse(await readFile(path, 'utf8')) as unknown;
  const keys: unknown[] = Array.isArray(parsed)
    ? parsed
    : typeof parsed === 'object' && parsed !== null && 'keys' in parsed && Array.isArray(parsed.keys)
      ? (parsed.keys as unknown[])
      : [parsed];
  return keys.map((k, i) => {
    if (typeof k !== 'object' || k === null || !('kty' in k)) throw new Error(`${path}: entry ${i} is not a JWK`);
    const jwk = k as JWK & { kid?: string };
    if (jwk.kid === undefined) throw new Error(`${path}: key ${i} has no kid`);
    return jwk;
  });
}
