// Webhook certificates rotate under load without a single failed admission: a short-lived leaf renews on
// its own, CA rotations are forced on top, and several creators keep creating injected pods in parallel all
// along. Rotations are counted from the certificates the webhook server actually presents over TLS (a probe
// reads the peer certificate of fresh connections), not from the operator's memory; every certificate it
// presented chains to the caBundle the API server was given.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { connect } from 'node:tls';
import * as k8s from '@kubernetes/client-node';
import { splitPemBundle } from '../../operator/src/certificates/certificate-authority.ts';
import { WebhookCertificates } from '../../operator/src/certificates/webhook-certificates.ts';
import { ANNOTATION_INJECTED } from '../../operator/src/injection/constants.ts';
import { poll } from '../harness/poll.ts';
import { agentPod, createPostgresResource, startWebhookFixture, type WebhookFixture } from './injection-fixture.ts';

let fx: WebhookFixture;
before(async () => {
  // A 6 s leaf renews after 4 s; the check timer follows the renewal time.
  fx = await startWebhookFixture({ leafLifetimeMs: 6_000, checkIntervalMs: 1_000 });
});
after(async () => {
  await fx.stop();
});

/** The certificate the webhook server presents to a new TLS connection (not verified here). */
function servedCertificate(port: number): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const peer = socket.getPeerX509Certificate();
      socket.destroy();
      if (peer === undefined) reject(new Error('no peer certificate'));
      else resolve(peer);
    });
    socket.on('error', reject);
  });
}

const CREATORS = 4;

test('leaf and CA rotation while parallel creators keep creating pods: every admission succeeds', async (t) => {
  const ns = await fx.namespace(t);
  await createPostgresResource(fx, ns, { listenPort: 15432 });
  const port = fx.webhooks.server.port;
  const served = new Map<string, X509Certificate>();
  const probe = async (): Promise<X509Certificate> => {
    const cert = await servedCertificate(port);
    served.set(cert.fingerprint256, cert);
    return cert;
  };
  const admission = fx.kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const publishedCas = async (): Promise<X509Certificate[]> => {
    const config = await admission.readMutatingWebhookConfiguration({ name: fx.webhooks.names.mutating });
    const bundle = Buffer.from(config.webhooks?.[0]?.clientConfig.caBundle ?? '', 'base64').toString('utf8');
    return splitPemBundle(bundle).map((p) => new X509Certificate(p));
  };
  /** Fingerprint of the published CA that issued `leaf`. */
  const issuerOf = async (leaf: X509Certificate): Promise<string | undefined> =>
    (await publishedCas()).find((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey))?.fingerprint256;
  const caRotations = 2;
  let created = 0;
  const failures: string[] = [];
  const state = { done: false };
  const creator = async (id: number): Promise<void> => {
    for (let i = 0; !state.done; i++) {
      try {
        const pod = await fx.core.createNamespacedPod({
          namespace: ns,
          body: agentPod(`p-${String(id)}-${String(i)}`, 'orders-db'),
        });
        assert.ok(pod.metadata?.annotations?.[ANNOTATION_INJECTED], 'injected');
        created++;
      } catch (err) {
        failures.push(err instanceof k8s.ApiException ? String(err.body) : String(err));
      }
    }
  };
  const creators = Array.from({ length: CREATORS }, (_, id) => creator(id));
  try {
    await probe();
    // Natural renewals, as a client sees them: two more leaves presented after the first.
    await poll(
      'two leaf renewals presented over TLS',
      async () => ((await probe(), served.size >= 3) ? true : undefined),
      120_000,
    );
    const managed = fx.webhooks.certificates;
    assert.ok(managed instanceof WebhookCertificates, 'the operator manages its own certificates here');
    for (let i = 0; i < caRotations; i++) {
      const oldCa = await issuerOf(await probe());
      assert.ok(oldCa !== undefined, 'the presented leaf chains to the published caBundle');
      await managed.reconcile({ rotateCa: true });
      // The server presents a leaf of another CA, and pods keep being admitted after the switch.
      await poll('a leaf of the new CA presented over TLS', async () => {
        const ca = await issuerOf(await probe());
        return ca !== undefined && ca !== oldCa ? true : undefined;
      });
      const after = created;
      await poll('ten more pods admitted under the new CA', () =>
        Promise.resolve(created >= after + 10 ? true : undefined),
      );
    }
  } finally {
    state.done = true;
    await Promise.all(creators);
  }
  assert.deepEqual(failures, [], 'no admission failed during rotation');
  assert.ok(created > 20, `created ${String(created)} pods`);
  assert.ok(served.size >= 3 + caRotations, `${String(served.size)} distinct certificates presented over TLS`);

  // The published caBundle holds the current CA first-class and still trusts the previous ones; every
  // certificate the server presented chains to it.
  const config = await admission.readMutatingWebhookConfiguration({ name: fx.webhooks.names.mutating });
  const cas = await publishedCas();
  assert.ok(cas.length >= caRotations + 1, 'previous CAs stay trusted until they expire');
  const issuers = new Set<string>();
  for (const leaf of served.values()) {
    const ca = cas.find((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey));
    assert.ok(ca, `the presented leaf ${leaf.fingerprint256} chains to the caBundle`);
    assert.ok(leaf.checkIP('127.0.0.1'), 'the presented leaf names the address the API server calls');
    issuers.add(ca.fingerprint256);
  }
  assert.ok(issuers.size >= caRotations + 1, `presented leaves came from ${String(issuers.size)} CAs`);
  const validating = await admission.readValidatingWebhookConfiguration({ name: fx.webhooks.names.validating });
  assert.equal(validating.webhooks?.[0]?.clientConfig.caBundle, config.webhooks?.[0]?.clientConfig.caBundle);

  // The Secret every replica reads holds the certificate the server presents (read back to back; a
  // renewal in between is retried).
  await poll('the Secret to hold the presented certificate', async () => {
    const secret = await fx.core.readNamespacedSecret({
      namespace: fx.operatorNamespace,
      name: 'chaperone-webhook-tls',
    });
    const stored = new X509Certificate(Buffer.from(secret.data?.['tls.crt'] ?? '', 'base64').toString('utf8'));
    return stored.fingerprint256 === (await probe()).fingerprint256 ? true : undefined;
  });
});

test('two replicas renewing at once agree on one certificate (resourceVersion concurrency)', async () => {
  const { WebhookCertificates } = await import('../../operator/src/certificates/webhook-certificates.ts');
  const { silentLogger } = await import('../../operator/src/observability/logger.ts');
  const make = () =>
    new WebhookCertificates({
      core: fx.core,
      admissionRegistration: fx.kc.makeApiClient(k8s.AdmissionregistrationV1Api),
      namespace: fx.operatorNamespace,
      secretName: 'chaperone-webhook-tls-race',
      dnsNames: ['race.test'],
      mutatingWebhookConfigurations: [],
      validatingWebhookConfigurations: [],
      logger: silentLogger,
    });
  const a = make();
  const b = make();
  const [ma, mb] = await Promise.all([a.reconcile(), b.reconcile()]);
  // Either both wrote nothing new, or the loser adopted the winner's material on re-read.
  const stored = await fx.core.readNamespacedSecret({
    namespace: fx.operatorNamespace,
    name: 'chaperone-webhook-tls-race',
  });
  const storedCert = Buffer.from(stored.data?.['tls.crt'] ?? '', 'base64').toString('utf8');
  const settled = [await a.reconcile(), await b.reconcile()];
  assert.ok([ma.certPem, mb.certPem].includes(storedCert));
  assert.equal(settled[0]?.certPem, storedCert);
  assert.equal(settled[1]?.certPem, storedCert);
});
