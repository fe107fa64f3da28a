// A self-signed serving certificate for a loopback listener, made when the sidecar starts. kubectl (client-go)
// sends a bearer token only over TLS, so the agent's kubeconfig must name an https server it can verify;
// the certificate exists only in this process and in the file the agent's kubeconfig points at, and a new
// one is made at every start. ECDSA P-256 (node:crypto cannot create certificates; @peculiar/x509 does, over
// WebCrypto, as the operator's webhook certificates do).
import { KeyObject, randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface LoopbackCertificate {
  readonly certPem: string;
  readonly keyPem: string;
}

/** A certificate for 127.0.0.1, ::1 and localhost (plus `host` when it is another loopback name), valid a year. */
export async function createLoopbackCertificate(now = new Date()): Promise<LoopbackCertificate> {
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const serial = randomBytes(16);
  serial[0] = (serial[0] ?? 0) & 0x7f;
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serial.toString('hex'),
      name: 'CN=chaperone-sidecar-loopback',
      notBefore: new Date(now.getTime() - 5 * 60_000),
      notAfter: new Date(now.getTime() + 365 * 24 * 3600_000),
      signingAlgorithm: ALGORITHM,
      keys,
      extensions: [
        // A CA of itself (clients verify it as the root) that may only serve TLS.
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension([
          { type: 'ip', value: '127.0.0.1' },
          { type: 'ip', value: '::1' },
          { type: 'dns', value: 'localhost' },
        ]),
      ],
    },
    webcrypto,
  );
  return {
    certPem: `${cert.toString('pem').trimEnd()}\n`,
    keyPem: KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}
