// Serving from a mounted certificate directory (cert-manager mode): the HTTPS server presents the files'
// certificate, adopts a renewed one for new connections, and rides out a half-written update.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { silentLogger } from '../observability/logger.ts';
import { startAdmissionServer } from '../webhooks/admission-server.ts';
import { createCertificateAuthority, issueServingCertificate } from './certificate-authority.ts';
import { MountedCertificates } from './mounted-certificates.ts';

/** SHA-256 fingerprint of the certificate a new TLS connection is served. */
function servedFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path: '/healthz', ca, agent: false }, (res) => {
      const socket = res.socket as TLSSocket;
      resolve(new X509Certificate(socket.getPeerX509Certificate()?.raw ?? Buffer.alloc(0)).fingerprint256);
      res.resume();
    });
    req.on('error', reject);
  });
}

test('mounted certificates: served, renewed for new connections, a torn update is not adopted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'chaperone-mounted-cert-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const now = new Date();
  const ca = await createCertificateAuthority({ commonName: 'test ca', lifetimeMs: 86_400_000, now });
  const issue = () =>
    issueServingCertificate({
      ca,
      commonName: 'webhook.test',
      dnsNames: ['webhook.test'],
      ipAddresses: ['127.0.0.1'],
      lifetimeMs: 3_600_000,
      now,
    });
  const first = await issue();
  writeFileSync(join(dir, 'tls.crt'), first.certPem);
  writeFileSync(join(dir, 'tls.key'), first.keyPem);
  writeFileSync(join(dir, 'ca.crt'), ca.certPem);

  let changes = 0;
  const served: { server?: Awaited<ReturnType<typeof startAdmissionServer>> } = {};
  const certificates = new MountedCertificates({
    dir,
    pollIntervalMs: 3_600_000,
    logger: silentLogger,
    onChange: (m) => {
      changes += 1;
      served.server?.setCertificate(m.certPem, m.keyPem);
    },
  });
  const material = await certificates.start();
  t.after(() => certificates.stop());
  assert.equal(material.caBundlePem, ca.certPem);
  const server = await startAdmissionServer({
    host: '127.0.0.1',
    port: 0,
    certPem: material.certPem,
    keyPem: material.keyPem,
    handlers: {},
    logger: silentLogger,
  });
  served.server = server;
  t.after(() => server.close());
  const fingerprintOf = (pem: string) => new X509Certificate(pem).fingerprint256;
  assert.equal(await servedFingerprint(server.port, ca.certPem), fingerprintOf(first.certPem));

  // The certificate is replaced but the key not yet: that pair does not load, so nothing changes.
  const second = await issue();
  writeFileSync(join(dir, 'tls.crt'), second.certPem);
  certificates.poll();
  assert.equal(changes, 0);
  assert.equal(certificates.current().fingerprint, material.fingerprint);
  assert.equal(await servedFingerprint(server.port, ca.certPem), fingerprintOf(first.certPem));

  writeFileSync(join(dir, 'tls.key'), second.keyPem);
  certificates.poll();
  assert.equal(changes, 1);
  assert.equal(await servedFingerprint(server.port, ca.certPem), fingerprintOf(second.certPem));
  certificates.poll();
  assert.equal(changes, 1, 'unchanged files are not adopted again');
});

test('mounted certificates: a directory without a usable pair fails at start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'chaperone-mounted-cert-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const certificates = new MountedCertificates({ dir, logger: silentLogger });
  await assert.rejects(certificates.start(), /ENOENT/);
});
