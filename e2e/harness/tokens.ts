// A throwaway token issuer for tests: an RS256 key pair, its JWKS file, and valid or deliberately broken
// tokens (the attacks the sidecar must refuse).
import { createHmac, createSign, generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { SignJWT, exportJWK, type JWTPayload } from 'jose';

export interface TestIssuer {
  readonly issuer: string;
  readonly kid: string;
  readonly jwksFile: string;
  readonly publicKeyPem: string;
  sign(
    claims: JWTPayload & { sub: string },
    options?: { expiresIn?: number; notBefore?: number; audience?: string; issuer?: string; kid?: string },
  ): Promise<string>;
  /**
   * Signs a header and payload given as JSON text exactly as written (duplicate keys, odd types), with the
   * issuer's key: what a trusted but sloppy or compromised signer could produce.
   */
  signRaw(headerJson: string, payloadJson: string): string;
  /** The attacks, each a complete token string. */
  attacks(sub: string): Promise<Record<string, string>>;
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

export async function createTestIssuer(
  jwksFile: string,
  issuer = 'https://issuer.test.chaperone.dev',
): Promise<TestIssuer> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = 'test-key-1';
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
  writeFileSync(jwksFile, JSON.stringify({ keys: [jwk] }));
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const now = () => Math.floor(Date.now() / 1000);

  const sign: TestIssuer['sign'] = async (claims, options = {}) => {
    const jwt = new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: options.kid ?? kid, typ: 'JWT' })
      .setIssuer(options.issuer ?? issuer)
      .setAudience(options.audience ?? 'chaperone')
      .setIssuedAt()
      .setExpirationTime(now() + (options.expiresIn ?? 600));
    if (options.notBefore !== undefined) jwt.setNotBefore(now() + options.notBefore);
    return jwt.sign(privateKey);
  };

  const signRaw: TestIssuer['signRaw'] = (headerJson, payloadJson) => {
    const input = `${Buffer.from(headerJson).toString('base64url')}.${Buffer.from(payloadJson).toString('base64url')}`;
    return `${input}.${createSign('RSA-SHA256').update(input).sign(privateKey).toString('base64url')}`;
  };

  return {
    issuer,
    kid,
    jwksFile,
    publicKeyPem,
    sign,
    signRaw,
    async attacks(sub) {
      const valid = await sign({ sub });
      const [header, payload, signature] = valid.split('.') as [string, string, string];
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as JWTPayload;
      const hmacHeader = b64({ alg: 'HS256', kid, typ: 'JWT' });
      const hmacSignature = createHmac('sha256', publicKeyPem).update(`${hmacHeader}.${payload}`).digest('base64url');
      return {
        expired: await sign({ sub }, { expiresIn: -3600 }),
        'not yet valid': await sign({ sub }, { notBefore: 3600 }),
        'wrong audience': await sign({ sub }, { audience: 'kubernetes' }),
        'wrong issuer': await sign({ sub }, { issuer: 'https://evil.example.com' }),
        'alg none': `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`,
        'HMAC signed with the public key': `${hmacHeader}.${payload}.${hmacSignature}`,
        'tampered payload': `${header}.${b64({ ...claims, sub: 'system:serviceaccount:kube-system:admin' })}.${signature}`,
        'unknown key id': await sign({ sub }, { kid: 'rotated-away' }),
        'not a JWT': 'hunter2',
      };
    },
  };
}
