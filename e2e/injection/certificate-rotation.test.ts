// Webhook certificates rotate under load without a single failed admission: a short-lived leaf renews on
// its own, CA rotations are forced on top, and a loop keeps creating injected pods all along.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import * as k8s from '@kubernetes/client-node';
import { splitPemBundle } from '../../operator/src/certificates/certificate-authority.ts';
import { WebhookCertificates } from '../../operator/src/certificates/webhook-certificates.ts';
import { ANNOTATION_INJECTED } from '../../operator/src/injection/constants.ts';
import { agentPod, createPostgresResource, startWebhookFixture, type WebhookFixture } from './injection-fixture.ts';

let fx: WebhookFixture;
before(async () => {
  // A 6 s leaf renews after 4 s; the check timer follows the renewal time.
  fx = await startWebhookFixture({ leafLifetimeMs: 6_000, checkIntervalMs: 1_000 });
});
after(async () => {
  await fx.stop();
});

test('leaf and CA rotation while pods keep being created: every admission succeeds', async (t) => {
  const ns = await fx.namespace(t);
  await createPostgresResource(fx, ns, { listenPort: 15432 });
  const fingerprints = new Set<string>([fx.webhooks.certificates.current().fingerprint]);
  const caRotations = 2;
  let created = 0;
  const failures: string[] = [];
  const state = { done: false };
  const loop = (async () => {
    while (!state.done) {
      try {
        const pod = await fx.core.createNamespacedPod({
          namespace: ns,
          body: agentPod(`p-${String(created)}`, 'orders-db'),
        });
        assert.ok(pod.metadata?.annotations?.[ANNOTATION_INJECTED], 'injected');
      } catch (err) {
        failures.push(err instanceof k8s.ApiException ? String(err.body) : String(err));
      }
      created++;
      fingerprints.add(fx.webhooks.certificates.current().fingerprint);
    }
  })();
  try {
    // Natural renewals: wait for two leaves after the first.
    while (fingerprints.size < 3) await new Promise((r) => setTimeout(r, 200));
    const managed = fx.webhooks.certificates;
    assert.ok(managed instanceof WebhookCertificates, 'the operator manages its own certificates here');
    for (let i = 0; i < caRotations; i++) {
      await managed.reconcile({ rotateCa: true });
      fingerprints.add(fx.webhooks.certificates.current().fingerprint);
      const before = created;
      while (created < before + 10) await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    state.done = true;
    await loop;
  }
  assert.deepEqual(failures, [], 'no admission failed during rotation');
  assert.ok(created > 20, `created ${String(created)} pods`);
  assert.ok(fingerprints.size >= 3 + caRotations);

  // The published caBundle holds the current CA first-class and still trusts the previous ones.
  const admission = fx.kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const config = await admission.readMutatingWebhookConfiguration({ name: fx.webhooks.names.mutating });
  const caBundle = Buffer.from(config.webhooks?.[0]?.clientConfig.caBundle ?? '', 'base64').toString('utf8');
  const cas = splitPemBundle(caBundle).map((p) => new X509Certificate(p));
  assert.ok(cas.length >= caRotations + 1, 'previous CAs stay trusted until they expire');
  const leaf = new X509Certificate(fx.webhooks.certificates.current().certPem);
  assert.ok(
    cas.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey)),
    'the serving leaf chains to the caBundle',
  );
  const validating = await admission.readValidatingWebhookConfiguration({ name: fx.webhooks.names.validating });
  assert.equal(validating.webhooks?.[0]?.clientConfig.caBundle, config.webhooks?.[0]?.clientConfig.caBundle);

  // The Secret is the single source every replica reads.
  const secret = await fx.core.readNamespacedSecret({ namespace: fx.operatorNamespace, name: 'chaperone-webhook-tls' });
  assert.equal(
    Buffer.from(secret.data?.['tls.crt'] ?? '', 'base64').toString('utf8'),
    fx.webhooks.certificates.current().certPem,
  );
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
