// The operator's audit authority against the real API server: a sidecar key is certified only for a pod
// the TokenReview proves and that runs the sidecar; verify trusts certified keys and refuses a certificate
// reused for another pod; the leader's signed checkpoints make deleting a pod's newest session evident.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import {
  AUDIT_CHECKPOINT_KEY,
  AUDIT_CHECKPOINT_NAME,
  SIGNER_CERTIFICATION_PATH,
  verifyCheckpoint,
  verifySignerCertificate,
} from '@chaperone/api';
import { LABEL_INJECTION, LABEL_INJECTION_ENABLED } from '../../operator/src/injection/constants.ts';
import { validateInjectionSettings } from '../../operator/src/injection/settings.ts';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { startOperator } from '../../operator/src/operator.ts';
import { loadOrCreateSigningKey } from '../../sidecar/src/core/audit/signing-key.ts';
import { requestSignerCertificate } from '../../sidecar/src/core/audit/signer-certification.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { podToken } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import {
  INSTANCE_LABEL,
  agentPod,
  createPostgresResource,
  waitForServiceAccount,
} from '../injection/injection-fixture.ts';
import { buildTrail, createSigner, createTrail } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';

/** POSTs to the certification endpoint as a raw client would; returns status and parsed body. */
function post(url: string, ca: string, token: string | undefined, body: string) {
  return new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        ca,
        headers: {
          'content-type': 'application/json',
          ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>,
          });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

test('audit authority: signer certification by TokenReview, certified keys in verify, signed checkpoints', async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const instance = randomBytes(4).toString('hex');
  const operatorNamespace = await createTestNamespace(t);
  const ns = await createTestNamespace(t, { [INSTANCE_LABEL]: instance, [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
  const plainNs = await createTestNamespace(t);
  await waitForServiceAccount(core, ns, 'default');
  await waitForServiceAccount(core, plainNs, 'default');
  const lines: string[] = [];
  const operator = await startOperator({
    kubeConfig: kc,
    namespace: ns,
    logger: createLogger({ level: 'info', write: (l) => lines.push(l) }),
    metricsBindAddress: '0',
    identity: `e2e-authority-${instance}`,
    audit: { namespace: operatorNamespace, checkpointIntervalMs: 200 },
    webhooks: {
      settings: validateInjectionSettings({
        image: 'ghcr.io/chaperone/chaperone-sidecar:test',
        operatorNamespace,
        issuer: controlPlaneEnv().issuer,
      }),
      host: '127.0.0.1',
      port: 0,
      certificates: { dnsNames: ['chaperone-webhook.test'], ipAddresses: ['127.0.0.1'] },
      registration: {
        endpoint: 'self',
        mutatingName: `chaperone-pod-injector-${instance}`,
        validatingName: `chaperone-pod-validator-${instance}`,
        extraNamespaceSelector: [{ key: INSTANCE_LABEL, operator: 'In', values: [instance] }],
        deleteOnStop: true,
      },
    },
  });
  t.after(() => operator.stop());
  const authority = operator.authority;
  const webhooks = operator.webhooks;
  assert.ok(authority !== undefined && webhooks !== undefined);
  const url = webhooks.server.url(SIGNER_CERTIFICATION_PATH);
  const ca = webhooks.certificates.current().caBundlePem;
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'ca.crt'), ca);

  await createPostgresResource({ core, custom }, ns);
  await core.createNamespacedPod({ namespace: ns, body: agentPod('agent', 'orders-db') });
  const pod = await core.readNamespacedPod({ namespace: ns, name: 'agent' });
  const key = await loadOrCreateSigningKey(join(dir, 'signing-key.jwk'));
  const authorityJwks = [authority.publicJwk];
  const cli = (...args: string[]) => runCli(args, { KUBECONFIG: controlPlaneEnv().kubeconfig });

  let certificate = '';
  await t.test("the injected pod's sidecar token gets its key certified for that pod", async () => {
    writeFileSync(join(dir, 'token'), await podToken(core, pod, undefined));
    certificate = await requestSignerCertificate({
      url,
      caFile: join(dir, 'ca.crt'),
      tokenFile: join(dir, 'token'),
      signingKey: key,
      logger: createLogger({ level: 'error' }),
    });
    const c = await verifySignerCertificate(certificate, authorityJwks);
    assert.deepEqual(c.pod, { namespace: ns, name: 'agent', uid: pod.metadata?.uid });
    assert.equal(c.keyId, key.keyId);
    assert.equal(c.x, key.publicJwk.x);
    assert.equal(c.serviceAccount, `system:serviceaccount:${ns}:default`);
    assert.ok(lines.some((l) => l.includes('"msg":"signer certificate issued"')));
    const tokenSignature = readFileSync(join(dir, 'token'), 'utf8').split('.')[2] ?? '';
    assert.ok(tokenSignature.length > 20);
    assert.ok(!lines.some((l) => l.includes(tokenSignature)), 'the token is never logged');
  });

  await t.test(
    'refusals: no token, a bad token, a token not bound to a pod, a pod without the sidecar, bad keys',
    async () => {
      const body = JSON.stringify({ publicKey: key.publicJwk });
      const noToken = await post(url, ca, undefined, body);
      assert.equal(noToken.status, 401);
      assert.equal(noToken.body.kind, 'Status');
      assert.equal(noToken.body.reason, 'Unauthorized');

      const forged = await post(url, ca, 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', body);
      assert.equal(forged.status, 401);

      const unbound = await core.createNamespacedServiceAccountToken({
        namespace: ns,
        name: 'default',
        body: { spec: { audiences: [], expirationSeconds: 600 } },
      });
      const notPod = await post(url, ca, unbound.status?.token, body);
      assert.equal(notPod.status, 403);
      assert.match(String(notPod.body.message), /not a service-account token bound to a pod/);

      await core.createNamespacedPod({
        namespace: plainNs,
        body: { metadata: { name: 'plain' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } },
      });
      const plain = await core.readNamespacedPod({ namespace: plainNs, name: 'plain' });
      const noSidecar = await post(url, ca, await podToken(core, plain, undefined), body);
      assert.equal(noSidecar.status, 403);
      assert.match(String(noSidecar.body.message), /does not run the Chaperone sidecar/);

      const token = await podToken(core, pod, undefined);
      const rsa = await post(url, ca, token, JSON.stringify({ publicKey: { kty: 'RSA', n: 'x', e: 'AQAB' } }));
      assert.equal(rsa.status, 400);
      const withPrivate = await post(url, ca, token, JSON.stringify({ publicKey: key.privateJwk }));
      assert.equal(withPrivate.status, 400);
      assert.match(String(withPrivate.body.message), /never d/);
      const notJson = await post(url, ca, token, '{');
      assert.equal(notJson.status, 400);
    },
  );

  // Two sessions of the pod signed with the certified key, one with a key of the test's own.
  const signer = { kid: key.keyId, privateJwk: key.privateJwk, publicJwk: key.publicJwk };
  const podRef = { name: 'agent', uid: pod.metadata?.uid ?? '' };
  const first = await buildTrail({ name: 'agent-1', namespace: ns, signer, pod: podRef, certificate });
  const second = await buildTrail({
    name: 'agent-2',
    namespace: ns,
    signer,
    pod: podRef,
    certificate,
    prevHash: first[0]?.spec.records[0]?.hash,
  });
  const selfSigned = await buildTrail({
    name: 'other-1',
    namespace: ns,
    signer: await createSigner(),
    pod: { name: 'other' },
  });
  for (const s of [first, second, selfSigned]) await createTrail(kc, s);

  await t.test('verify trusts certified keys; self-asserted ones are errors unless allowed', async () => {
    const r = await cli(
      'verify',
      '--all',
      '-n',
      ns,
      '--authority-namespace',
      operatorNamespace,
      '--allow-uncertified',
      '-o',
      'json',
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout) as { keyTrust: string; problems: { kind: string; object: string }[] };
    assert.equal(report.keyTrust, 'certified');
    assert.deepEqual(
      report.problems.map((p) => `${p.kind} ${p.object}`),
      [`uncertified-key ${ns}/other-1`],
    );
    for (const flags of [[], ['--require-certified']]) {
      const strict = await cli('verify', '--all', '-n', ns, '--authority-namespace', operatorNamespace, ...flags);
      assert.equal(strict.code, 1);
      assert.match(strict.stdout, /ERROR uncertified-key\s+.*\/other-1/);
    }
  });

  await t.test('a certificate copied onto a session of another pod is refused', async () => {
    const stolen = await buildTrail({ name: 'forged-1', namespace: ns, signer, pod: { name: 'victim' }, certificate });
    await createTrail(kc, stolen);
    const r = await cli('verify', 'forged-1', '-n', ns, '--authority-namespace', operatorNamespace);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /certificate-invalid\s+.*forged-1.*binds the key to pod .*\/agent/);
    await kubectl(['delete', 'session', 'forged-1', '-n', ns]);
  });

  await t.test("the leader's checkpoint states every head; deleting the pod's newest session is found", async () => {
    const jws = await poll('a checkpoint that states agent-2', async () => {
      const cm = await core.readNamespacedConfigMap({ namespace: operatorNamespace, name: AUDIT_CHECKPOINT_NAME });
      const text = cm.data?.[AUDIT_CHECKPOINT_KEY];
      if (text === undefined) return undefined;
      const c = await verifyCheckpoint(text, authorityJwks);
      return c.sessions.some((e) => e.object === `${ns}/agent-2`) &&
        !c.sessions.some((e) => e.object === `${ns}/forged-1`)
        ? text
        : undefined;
    });
    const checkpoint = await verifyCheckpoint(jws, authorityJwks);
    assert.ok(checkpoint.index >= 1);
    assert.deepEqual(checkpoint.namespaces, [ns]);
    assert.ok(
      lines.some((l) => l.includes('"msg":"audit checkpoint"')),
      'checkpoints are logged for shipping',
    );

    const clean = await cli(
      'verify',
      '--all',
      '-n',
      ns,
      '--authority-namespace',
      operatorNamespace,
      '--allow-uncertified',
    );
    assert.equal(clean.code, 0, clean.stdout);
    assert.match(clean.stdout, /Checkpoint \d+ of .*: \d+ head\(s\) stated by the operator, checked/);

    // Save the checkpoint as a log shipper would, then delete the newest session: nothing links to it,
    // but the checkpoint saw it.
    writeFileSync(join(dir, 'checkpoints.jws'), `${jws}\n`);
    await operator.stop();
    await kubectl(['delete', 'session', 'agent-2', '-n', ns]);
    const found = await cli(
      'verify',
      '--all',
      '-n',
      ns,
      '--authority-namespace',
      operatorNamespace,
      '--checkpoint',
      join(dir, 'checkpoints.jws'),
    );
    assert.equal(found.code, 1);
    assert.match(found.stdout, /ERROR checkpoint-mismatch\s+.*\/agent-2.*was in checkpoint \d+/);

    // A checkpoint checked against another authority key does not count.
    const other = await createSigner();
    writeFileSync(join(dir, 'other-authority.json'), JSON.stringify({ keys: [other.publicJwk] }));
    const wrongKey = await cli(
      'verify',
      '--all',
      '-n',
      ns,
      '--authority-keys',
      join(dir, 'other-authority.json'),
      '--checkpoint',
      join(dir, 'checkpoints.jws'),
    );
    assert.equal(wrongKey.code, 1);
    assert.match(wrongKey.stdout, /checkpoint-invalid/);
    assert.match(wrongKey.stdout, /certificate-invalid/);
  });
});
