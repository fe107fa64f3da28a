// X.509 for the admission webhook: a self-managed CA and short-lived serving certificates signed by it
// (node:crypto parses certificates but cannot create them, so @peculiar/x509 builds and signs them over
// WebCrypto). ECDSA P-256: small, fast to generate, accepted by the API server's TLS client.
import { KeyObject, X509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/** Certificates start this much in the past, so a peer whose clock runs behind still accepts them. */
const BACKDATE_MS = 5 * 60_000;

export interface IssuedCertificate {
  readonly certPem: string;
  readonly keyPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

function serial(): string {
  // Positive (top bit clear), 16 bytes, random: RFC 5280 asks for unique, unpredictable serials.
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}

async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
}

/** PEM with one trailing newline, so bundles can be concatenated (Go's PEM decoder needs the line break). */
function pemOf(cert: x509.X509Certificate): string {
  return `${cert.toString('pem').trimEnd()}\n`;
}

function privateKeyPem(key: webcrypto.CryptoKey): string {
  return KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' }).toString();
}

export interface CreateCaOptions {
  readonly commonName: string;
  readonly lifetimeMs: number;
  readonly now: Date;
}

export async function createCertificateAuthority(options: CreateCaOptions): Promise<IssuedCertificate> {
  const keys = await generateKeys();
  const notBefore = new Date(options.now.getTime() - BACKDATE_MS);
  const notAfter = new Date(options.now.getTime() + options.lifetimeMs);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serial(),
      name: `CN=${options.commonName}`,
      notBefore,
      notAfter,
      signingAlgorithm: ALGORITHM,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
      ],
    },
    webcrypto,
  );
  return { certPem: pemOf(cert), keyPem: privateKeyPem(keys.privateKey), notBefore, notAfter };
}

export interface IssueServingOptions {
  readonly ca: Pick<IssuedCertificate, 'certPem' | 'keyPem'>;
  readonly commonName: string;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly lifetimeMs: number;
  readonly now: Date;
}

export async function issueServingCertificate(options: IssueServingOptions): Promise<IssuedCertificate> {
  return issueLeaf(options, {
    subject: `CN=${options.commonName}`,
    usage: x509.ExtendedKeyUsage.serverAuth,
    altNames: [
      ...options.dnsNames.map((value) => ({ type: 'dns' as const, value })),
      ...options.ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    ],
  });
}

export interface IssueClientOptions {
  readonly ca: Pick<IssuedCertificate, 'certPem' | 'keyPem'>;
  /** The user name the API server takes from the certificate (CN). */
  readonly user: string;
  /** Its groups (O, one each). */
  readonly groups: readonly string[];
  readonly lifetimeMs: number;
  readonly now: Date;
}

/**
 * A client certificate for an API server that trusts `ca` as its client CA (--client-ca-file): the user
 * is the CN, the groups the O attributes. The test harness uses it for users and kubelets.
 */
export async function issueClientCertificate(options: IssueClientOptions): Promise<IssuedCertificate> {
  const escape = (value: string) => value.replace(/[,+"\\<>;=]/g, (c) => `\\${c}`);
  return issueLeaf(options, {
    subject: [`CN=${escape(options.user)}`, ...options.groups.map((g) => `O=${escape(g)}`)].join(', '),
    usage: x509.ExtendedKeyUsage.clientAuth,
    altNames: [],
  });
}

async function issueLeaf(
  options: { ca: Pick<IssuedCertificate, 'certPem' | 'keyPem'>; lifetimeMs: number; now: Date },
  leaf: { subject: string; usage: string; altNames: { type: 'dns' | 'ip'; value: string }[] },
): Promise<IssuedCertificate> {
  const keys = await generateKeys();
  const caCert = new x509.X509Certificate(options.ca.certPem);
  const caKey = createPrivateKey(options.ca.keyPem).toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
  ]);
  const notBefore = new Date(options.now.getTime() - BACKDATE_MS);
  // Never outlive the CA: a leaf past its issuer's notAfter fails verification anyway.
  const notAfter = new Date(Math.min(options.now.getTime() + options.lifetimeMs, caCert.notAfter.getTime()));
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial(),
      subject: leaf.subject,
      issuer: caCert.subject,
      notBefore,
      notAfter,
      signingAlgorithm: ALGORITHM,
      publicKey: keys.publicKey,
      signingKey: caKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([leaf.usage], false),
        ...(leaf.altNames.length === 0 ? [] : [new x509.SubjectAlternativeNameExtension(leaf.altNames)]),
        await x509.AuthorityKeyIdentifierExtension.create(caCert, false, webcrypto),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
      ],
    },
    webcrypto,
  );
  return { certPem: pemOf(cert), keyPem: privateKeyPem(keys.privateKey), notBefore, notAfter };
}

/** The PEM blocks of a bundle, in order. */
export function splitPemBundle(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((b) => `${b}\n`) ?? [];
}

export function certificateValidity(pem: string): { notBefore: Date; notAfter: Date; fingerprint: string } {
  const cert = new X509Certificate(pem);
  return { notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo), fingerprint: cert.fingerprint256 };
}

/** Whether `leafPem` was signed by `caPem` (used to check a stored pair still belongs together). */
export function isIssuedBy(leafPem: string, caPem: string): boolean {
  const leaf = new X509Certificate(leafPem);
  const ca = new X509Certificate(caPem);
  return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
}
