// The Helm chart (charts/chaperone): lint-clean, its copies of the CRDs and admission policies are
// current, its webhook configurations are the ones the operator's code renders, every object it renders is
// accepted by the real API server (server-side dry run), and the operator runs under exactly the chart's
// RBAC: with a token of the chart's ServiceAccount and the chart's own container arguments it compiles a
// policy, reconciles a ProtectedResource (sidecar RBAC), keeps the webhook caBundle, creates the audit
// authority, certifies through a TokenReview and writes checkpoints, without a single "forbidden".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments, stringify } from 'yaml';
import {
  AUDIT_AUTHORITY_NAME,
  AUDIT_CHECKPOINT_NAME,
  GROUP,
  SIGNER_CERTIFICATION_PATH,
  VERSION,
  type AccessPolicy,
} from '@chaperone/api';
import { renderWebhookConfigurations } from '../operator/src/webhooks/webhook-registration.ts';
import { controlPlaneEnv, testDir } from './harness/env.ts';
import { createTestNamespace, kubeConfig, kubectl } from './harness/kube.ts';
import { poll } from './harness/poll.ts';
import { freePort } from './harness/postgres.ts';
import { stopProcess } from './harness/processes.ts';
import { REPO_ROOT, toolPath } from './harness/tools.ts';
import { createPostgresResource } from './injection/injection-fixture.ts';

const CHART = join(REPO_ROOT, 'charts', 'chaperone');
const run = promisify(execFile);

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [key: string]: unknown;
}

async function helmTemplate(release: string, namespace: string, values: Record<string, string>): Promise<Manifest[]> {
  const set = Object.entries(values).flatMap(([k, v]) => ['--set', `${k}=${v}`]);
  const { stdout } = await run(
    toolPath('helm'),
    ['template', release, CHART, '--namespace', namespace, '--kube-version', '1.37.2', ...set],
    { maxBuffer: 16 * 1024 * 1024 },
  );
  return parseAllDocuments(stdout)
    .map((d) => d.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null);
}

test('helm lint --strict passes and the chart carries the current CRDs and admission policies', async () => {
  const lint = await run(toolPath('helm'), ['lint', '--strict', CHART]);
  assert.match(lint.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  for (const name of readdirSync(join(REPO_ROOT, 'crds'))) {
    assert.equal(
      readFileSync(join(CHART, 'crds', name), 'utf8'),
      readFileSync(join(REPO_ROOT, 'crds', name), 'utf8'),
      `charts/chaperone/crds/${name} is stale: run make generate`,
    );
  }
  for (const name of readdirSync(join(REPO_ROOT, 'config', 'admission'))) {
    assert.equal(
      readFileSync(join(CHART, 'files', 'admission', name), 'utf8'),
      readFileSync(join(REPO_ROOT, 'config', 'admission', name), 'utf8'),
      `charts/chaperone/files/admission/${name} is stale: run make generate`,
    );
  }
});

test("the chart's webhook configurations are the ones the operator renders", async () => {
  const manifests = await helmTemplate('chap', 'chaperone-system', {});
  const fromCode = renderWebhookConfigurations({
    endpoint: { service: { namespace: 'chaperone-system', name: 'chap-chaperone-webhook' } },
    caBundlePem: '',
    operatorNamespace: 'chaperone-system',
  });
  for (const [kind, code] of [
    ['MutatingWebhookConfiguration', fromCode.mutating],
    ['ValidatingWebhookConfiguration', fromCode.validating],
  ] as const) {
    const chart = manifests.find((m) => m.kind === kind) as unknown as typeof code | undefined;
    assert.ok(chart !== undefined, `${kind} is rendered`);
    // Plain JSON on both sides; the caBundle is the operator's to write.
    const withoutCa = (c: typeof code): unknown =>
      (JSON.parse(JSON.stringify(c.webhooks ?? [])) as { clientConfig: Record<string, unknown> }[]).map((w) => {
        delete w.clientConfig.caBundle;
        return w;
      });
    assert.deepEqual(withoutCa(chart), withoutCa(code));
  }
  const operator = 'system:serviceaccount:chaperone-system:chap-chaperone';
  const policies = stringify(manifests.filter((m) => m.kind.startsWith('ValidatingAdmissionPolicy')));
  assert.ok(policies.includes(operator), 'the admission policies name the release service account');
  assert.ok(!policies.includes('chaperone-system:chaperone-operator'));
});

test('the chart sets the injected sidecar and keeps an operator pod up through disruptions', async () => {
  const deploymentOf = (manifests: Manifest[]) =>
    manifests.find((m) => m.kind === 'Deployment') as unknown as k8s.V1Deployment;
  const defaults = await helmTemplate('chap', 'chaperone-system', {});
  const pod = deploymentOf(defaults).spec?.template.spec;
  const args = pod?.containers[0]?.args ?? [];
  assert.ok(args.includes('--sidecar-image-pull-policy=IfNotPresent'));
  const resources = args.find((a) => a.startsWith('--sidecar-resources='))?.slice('--sidecar-resources='.length);
  assert.deepEqual(JSON.parse(resources ?? 'null'), {
    requests: { cpu: '50m', memory: '96Mi' },
    limits: { memory: '256Mi' },
  });
  // Two replicas: a PodDisruptionBudget of the operator's pods, and a preference for different nodes.
  const budget = defaults.find((m) => m.kind === 'PodDisruptionBudget') as unknown as k8s.V1PodDisruptionBudget;
  assert.equal(budget.spec?.maxUnavailable, 1);
  assert.deepEqual(budget.spec.selector?.matchLabels, pod?.topologySpreadConstraints?.[0]?.labelSelector?.matchLabels);
  assert.deepEqual(budget.spec.selector?.matchLabels, deploymentOf(defaults).spec?.selector.matchLabels);
  assert.equal(pod?.topologySpreadConstraints?.[0]?.whenUnsatisfiable, 'ScheduleAnyway');
  assert.equal(pod.priorityClassName, undefined);

  const tuned = await helmTemplate('chap', 'chaperone-system', {
    replicaCount: '1',
    spreadAcrossNodes: 'false',
    priorityClassName: 'system-cluster-critical',
    'sidecarImage.pullPolicy': 'Always',
    'sidecarResources.limits.memory': '1Gi',
  });
  const tunedPod = deploymentOf(tuned).spec?.template.spec;
  assert.ok(!tuned.some((m) => m.kind === 'PodDisruptionBudget'), 'one replica: a budget would block every drain');
  assert.equal(tunedPod?.topologySpreadConstraints, undefined);
  assert.equal(tunedPod?.priorityClassName, 'system-cluster-critical');
  const tunedArgs = tunedPod.containers[0]?.args ?? [];
  assert.ok(tunedArgs.includes('--sidecar-image-pull-policy=Always'));
  assert.match(tunedArgs.find((a) => a.startsWith('--sidecar-resources=')) ?? '', /"limits":\{"memory":"1Gi"\}/);
  // The schema refuses what the operator would refuse anyway.
  await assert.rejects(
    helmTemplate('chap', 'chaperone-system', { 'sidecarResources.limits.memory': 'lots' }),
    /sidecarResources\/limits\/memory/,
  );
  await assert.rejects(
    helmTemplate('chap', 'chaperone-system', { 'sidecarImage.pullPolicy': 'Sometimes' }),
    /pullPolicy/,
  );
});

test('with certManager.enabled, cert-manager issues the certificate the operator serves and injects caBundle', async () => {
  const manifests = await helmTemplate('chap', 'chaperone-system', { 'certManager.enabled': 'true' });
  const certificate = manifests.find((m) => m.kind === 'Certificate') as unknown as {
    spec: { secretName: string; dnsNames: string[]; issuerRef: { name: string; kind: string } };
  };
  assert.deepEqual(certificate.spec.dnsNames, [
    'chap-chaperone-webhook.chaperone-system.svc',
    'chap-chaperone-webhook.chaperone-system.svc.cluster.local',
  ]);
  assert.deepEqual(certificate.spec.issuerRef, { name: 'chap-chaperone-webhook', kind: 'Issuer' });
  assert.ok(manifests.some((m) => m.kind === 'Issuer'));
  const deployment = manifests.find((m) => m.kind === 'Deployment') as unknown as k8s.V1Deployment;
  const pod = deployment.spec?.template.spec;
  assert.ok(pod !== undefined);
  assert.ok(pod.containers[0]?.args?.includes('--webhook-cert-dir=/etc/chaperone/webhook-tls'));
  const volume = pod.volumes?.find((v) => v.secret?.secretName === certificate.spec.secretName);
  assert.ok(volume !== undefined, 'the Certificate Secret is mounted');
  assert.ok(
    pod.containers[0]?.volumeMounts?.some(
      (m) => m.name === volume.name && m.mountPath === '/etc/chaperone/webhook-tls',
    ),
  );
  for (const kind of ['MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration']) {
    const config = manifests.find((m) => m.kind === kind) as unknown as k8s.V1MutatingWebhookConfiguration;
    assert.equal(
      config.metadata?.annotations?.['cert-manager.io/inject-ca-from'],
      'chaperone-system/chap-chaperone-webhook',
    );
    assert.equal(config.webhooks?.[0]?.clientConfig.caBundle, undefined);
  }
  // The operator leaves the webhook configurations alone in this mode, so it may not change them.
  const role = manifests.find((m) => m.kind === 'ClusterRole') as unknown as k8s.V1ClusterRole;
  assert.ok(!(role.rules ?? []).some((r) => r.apiGroups?.includes('admissionregistration.k8s.io')));

  const withIssuer = await helmTemplate('chap', 'chaperone-system', {
    'certManager.enabled': 'true',
    'certManager.issuerRef.name': 'corp-ca',
    'certManager.issuerRef.kind': 'ClusterIssuer',
  });
  assert.ok(!withIssuer.some((m) => m.kind === 'Issuer'));
  const issued = withIssuer.find((m) => m.kind === 'Certificate') as unknown as typeof certificate;
  assert.deepEqual(issued.spec.issuerRef, { name: 'corp-ca', kind: 'ClusterIssuer' });
});

test('the operator runs under exactly the chart RBAC, with the chart arguments', { timeout: 240_000 }, async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const release = `chap-${randomBytes(3).toString('hex')}`;
  const operatorNamespace = await createTestNamespace(t);
  const workNamespace = await createTestNamespace(t, { 'chaperone.dev/injection': 'enabled' });
  const manifests = await helmTemplate(release, operatorNamespace, {
    watchNamespace: workNamespace,
    'auditAuthority.checkpointIntervalSeconds': '1',
    replicaCount: '1',
  });
  const fullname = `${release}-chaperone`;

  // Everything the chart renders is valid for the API server; the Deployment and Service cannot run here
  // (no kubelet, no image), the rest is installed for real. The webhook configurations select only the
  // work namespace (watchNamespace), so other tests are never sent to their missing Service.
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const file = (name: string, docs: Manifest[]) => {
    const path = join(dir, name);
    writeFileSync(path, docs.map((d) => `---\n${stringify(d)}`).join(''));
    return path;
  };
  const deploymentAndService = manifests.filter((m) => m.kind === 'Deployment' || m.kind === 'Service');
  await kubectl(['apply', '--dry-run=server', '-f', file('workload.yaml', deploymentAndService)]);
  const installed = manifests.filter(
    (m) => !['Deployment', 'Service', 'ValidatingAdmissionPolicy', 'ValidatingAdmissionPolicyBinding'].includes(m.kind),
  );
  // The admission policies are cluster-wide and other tests install their own: a dry run only.
  const policies = manifests.filter((m) => m.kind.startsWith('ValidatingAdmissionPolicy'));
  await kubectl(['apply', '--dry-run=server', '-f', file('policies.yaml', policies)]);
  t.after(async () => {
    await kubectl(['delete', '--ignore-not-found', '--wait=false', '-f', join(dir, 'installed.yaml')]).catch(
      () => undefined,
    );
  });
  await kubectl(['apply', '-f', file('installed.yaml', installed)]);

  // The operator's identity: a token of the chart's ServiceAccount, nothing else.
  const token = await core.createNamespacedServiceAccountToken({
    namespace: operatorNamespace,
    name: fullname,
    body: { spec: { audiences: [], expirationSeconds: 3600 } },
  });
  const cluster = kc.getCurrentCluster();
  assert.ok(cluster !== null && token.status?.token !== undefined);
  const kubeconfig = join(dir, 'operator.kubeconfig');
  writeFileSync(
    kubeconfig,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'c',
          cluster: {
            server: cluster.server,
            ...(cluster.caData === undefined
              ? { 'certificate-authority': cluster.caFile }
              : { 'certificate-authority-data': cluster.caData }),
          },
        },
      ],
      users: [{ name: 'operator', user: { token: token.status.token } }],
      contexts: [{ name: 'c', context: { cluster: 'c', user: 'operator' } }],
      'current-context': 'c',
    }),
  );

  const deployment = manifests.find((m) => m.kind === 'Deployment') as unknown as k8s.V1Deployment;
  const chartArgs = deployment.spec?.template.spec?.containers[0]?.args ?? [];
  assert.ok(chartArgs.includes('--enable-audit-authority') && chartArgs.includes('--enable-webhooks'));
  // Only what a pod network provides differently here: loopback addresses and a free port.
  const webhookPort = await freePort();
  const args = [
    ...chartArgs.filter((a) => !a.startsWith('--metrics-bind-address') && !a.startsWith('--webhook-port')),
    '--metrics-bind-address=127.0.0.1:0',
    '--webhook-host=127.0.0.1',
    `--webhook-port=${String(webhookPort)}`,
    `--service-account-issuer=${controlPlaneEnv().issuer}`,
    `--kubeconfig=${kubeconfig}`,
  ];
  const logs: string[] = [];
  const child = spawn(process.execPath, [join(REPO_ROOT, 'operator/src/bin/chaperone-operator.ts'), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, POD_NAMESPACE: operatorNamespace },
  });
  createInterface({ input: child.stderr }).on('line', (l) => logs.push(l));
  t.after(() => stopProcess(child, 10_000));
  const until = <T>(what: string, fn: () => Promise<T | undefined>) =>
    poll(what, fn).catch((err: unknown) => {
      throw new Error(`${String(err)}\noperator logs:\n${logs.join('\n')}`, { cause: err });
    });

  // AccessPolicy → compiled bundle ConfigMap, Ready with a digest.
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: workNamespace,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'reads' },
      spec: {
        resources: { names: ['orders-db'] },
        rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
      },
    },
  });
  await until('the AccessPolicy Ready', async () => {
    const p = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: workNamespace,
      plural: 'accesspolicies',
      name: 'reads',
    })) as AccessPolicy;
    return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true ? p : undefined;
  });

  // ProtectedResource → Ready, and the sidecars' Role and RoleBinding (needs escalate and bind).
  await createPostgresResource({ core, custom }, workNamespace);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  await until('the sidecar Role', () =>
    rbac.readNamespacedRole({ namespace: workNamespace, name: 'chaperone-sidecar' }).catch(() => undefined),
  );

  // Webhook certificate: the caBundle the operator writes into the chart's configurations.
  await until('the caBundle in the mutating configuration', async () => {
    const m = await admission.readMutatingWebhookConfiguration({ name: `${fullname}-pod-injector` });
    return m.webhooks?.[0]?.clientConfig.caBundle;
  });

  // Audit authority: key Secret, public JWKS, checkpoints, and a TokenReview behind the endpoint.
  await until('the authority JWKS', () =>
    core.readNamespacedConfigMap({ namespace: operatorNamespace, name: AUDIT_AUTHORITY_NAME }).catch(() => undefined),
  );
  await until('a checkpoint', () =>
    core.readNamespacedConfigMap({ namespace: operatorNamespace, name: AUDIT_CHECKPOINT_NAME }).catch(() => undefined),
  );
  const secret = await core.readNamespacedSecret({ namespace: operatorNamespace, name: 'chaperone-webhook-tls' });
  const ca = Buffer.from(secret.data?.['ca.crt'] ?? '', 'base64').toString('utf8');
  const unbound = await core.createNamespacedServiceAccountToken({
    namespace: workNamespace,
    name: 'default',
    body: { spec: { audiences: [], expirationSeconds: 600 } },
  });
  const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(
      `https://127.0.0.1:${String(webhookPort)}${SIGNER_CERTIFICATION_PATH}`,
      {
        method: 'POST',
        ca,
        servername: `${fullname}-webhook.${operatorNamespace}.svc`,
        headers: { authorization: `Bearer ${unbound.status?.token ?? ''}`, 'content-type': 'application/json' },
      },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ publicKey: { kty: 'OKP', crv: 'Ed25519', x: 'A'.repeat(43) } }));
  });
  // 403 "not bound to a pod" means the TokenReview itself was allowed and answered.
  assert.equal(answer.status, 403, answer.body);
  assert.match(answer.body, /not a service-account token bound to a pod/);

  const forbidden = logs.filter((l) => /forbidden|Forbidden|HTTP-Code: 403/.test(l));
  assert.deepEqual(forbidden, [], 'the operator never hit an RBAC refusal');
});
