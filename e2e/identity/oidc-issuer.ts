// A small real OpenID Connect issuer on loopback for the tests: HTTPS with a CA generated per run, a
// discovery document and a JWKS of keys generated here, and tokens signed with them (as a CI provider or
// SPIRE's OIDC discovery provider would issue them). It counts the requests it serves, so tests can check
// that the exchange caches keys and fetches again only when a token names a key it has not seen.
import { generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, type JWK, type JWTPayload } from 'jose';
import {
  createCertificateAuthority,
  issueServingCertificate,
} from '../../operator/src/certificates/certificate-authority.ts';

interface SigningKey {
  readonly kid: string;
  readonly privateKey: KeyObject;
  readonly publicJwk: JWK;
}

export interface OidcIssuer {
  /** https://127.0.0.1:<port> */
  readonly issuer: string;
  readonly caPem: string;
  /** Requests served, by path. */
  readonly requests: Map<string, number>;
  sign(
    claims: JWTPayload & { sub: string },
    options?: { audience?: string | string[]; expiresIn?: number; notBefore?: number; kid?: string },
  ): Promise<string>;
  /**
   * Signs a header and payload given as JSON text, byte for byte (duplicate members, numbers JSON.stringify
   * cannot write); `{kid}` in the header text is replaced by the current key's id.
   */
  signRaw(headerJson: string, payloadJson: string): string;
  /** Adds a new key and signs with it from now on; `retire` drops every older key from the JWKS. */
  rotate(retire?: boolean): Promise<string>;
  /** The status the JWKS is served with from now on: 200, or an outage (503) or a rate limit (429) with no keys. */
  setJwksStatus(status: number): void;
  close(): Promise<void>;
}

async function newKey(index: number): Promise<SigningKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = `test-oidc-${String(index)}-${Math.random().toString(36).slice(2, 8)}`;
  return { kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

export async function startOidcIssuer(): Promise<OidcIssuer> {
  const now = new Date();
  const ca = await createCertificateAuthority({ commonName: 'chaperone test OIDC CA', lifetimeMs: 86_400_000, now });
  const serving = await issueServingCertificate({
    ca,
    commonName: '127.0.0.1',
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1'],
    lifetimeMs: 86_400_000,
    now,
  });
  let keys: SigningKey[] = [await newKey(0)];
  const requests = new Map<string, number>();
  let jwksStatus = 200;
  let issuer = '';
  const server: Server = createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    requests.set(path, (requests.get(path) ?? 0) + 1);
    if (path === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          issuer,
          jwks_uri: `${issuer}/jwks`,
          id_token_signing_alg_values_supported: ['ES256'],
          subject_types_supported: ['public'],
          response_types_supported: ['id_token'],
        }),
      );
    } else if (path === '/jwks' && jwksStatus !== 200) {
      res.writeHead(jwksStatus, { 'content-type': 'text/plain', 'retry-after': '60' }).end('unavailable');
    } else if (path === '/jwks') {
      res
        .writeHead(200, { 'content-type': 'application/jwk-set+json' })
        .end(JSON.stringify({ keys: keys.map((k) => k.publicJwk) }));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  issuer = `https://127.0.0.1:${String((server.address() as AddressInfo).port)}`;
  const seconds = () => Math.floor(Date.now() / 1000);
  return {
    issuer,
    caPem: ca.certPem,
    requests,
    async sign(claims, options = {}) {
      const key = keys.find((k) => k.kid === options.kid) ?? keys.at(-1);
      if (key === undefined) throw new Error('no key');
      const jwt = new SignJWT(claims)
        .setProtectedHeader({ alg: 'ES256', kid: options.kid ?? key.kid, typ: 'JWT' })
        .setIssuer(issuer)
        .setAudience(options.audience ?? 'chaperone')
        .setIssuedAt()
        .setExpirationTime(seconds() + (options.expiresIn ?? 600));
      if (options.notBefore !== undefined) jwt.setNotBefore(seconds() + options.notBefore);
      return jwt.sign(key.privateKey);
    },
    signRaw(headerJson, payloadJson) {
      const key = keys.at(-1);
      if (key === undefined) throw new Error('no key');
      const input = `${Buffer.from(headerJson.replace('{kid}', key.kid)).toString('base64url')}.${Buffer.from(payloadJson).toString('base64url')}`;
      const signature = cryptoSign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
      return `${input}.${signature.toString('base64url')}`;
    },
    async rotate(retire = false) {
      const key = await newKey(keys.length);
      keys = retire ? [key] : [...keys, key];
      return key.kid;
    },
    setJwksStatus(status) {
      jwksStatus = status;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
