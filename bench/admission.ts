// Admission latency of the pod injector: annotated pods created at a fixed rate (open loop: a slow answer
// does not slow the arrivals) against a real API server, with the webhook in this process. Reports p50/p99
// at the webhook (request complete → response written, the prom-client histogram's source) and end to
// end (the client's create call: API server, both webhooks, etcd). Target: webhook p99 <= 10 ms.
//
//   node bench/admission.ts [--rate 50] [--seconds 10]
//
// Starts its own control plane (unless CHAPERONE_TEST_KUBECONFIG points at one) and stops it by PID.
import { parseArgs } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../e2e/harness/control-plane.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { applyCrds } from '../e2e/harness/kube.ts';
import { validateInjectionSettings } from '../operator/src/injection/settings.ts';
import { silentLogger } from '../operator/src/observability/logger.ts';
import { startInjectionWebhooks } from '../operator/src/webhooks/start-webhooks.ts';

export interface LatencySummary {
  readonly count: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface AdmissionBenchResult {
  readonly rate: number;
  readonly seconds: number;
  readonly created: number;
  readonly failed: number;
  readonly webhook: LatencySummary;
  readonly endToEnd: LatencySummary;
  readonly targetP99Ms: number;
  readonly met: boolean;
}

function summarise(samplesMs: number[]): LatencySummary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  const round = (n: number) => Math.round(n * 1000) / 1000;
  return { count: sorted.length, p50Ms: round(at(0.5)), p99Ms: round(at(0.99)), maxMs: round(at(1)) };
}

export async function runAdmissionBench(
  options: { rate?: number; seconds?: number } = {},
): Promise<AdmissionBenchResult> {
  const rate = options.rate ?? 50;
  const seconds = options.seconds ?? 10;
  let controlPlane: ControlPlane | undefined;
  const kc = new k8s.KubeConfig();
  const existing = process.env.CHAPERONE_TEST_KUBECONFIG;
  let issuer = process.env.CHAPERONE_TEST_ISSUER ?? 'https://kubernetes.default.svc.cluster.local';
  if (existing === undefined) {
    controlPlane = await startControlPlane(createRunDirectory());
    await applyCrds(controlPlane.kubeconfig);
    kc.loadFromFile(controlPlane.kubeconfig);
    issuer = controlPlane.issuer;
  } else {
    kc.loadFromFile(existing);
  }
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const suffix = Date.now().toString(36);
  const operatorNamespace = `chaperone-bench-system-${suffix}`;
  const namespace = `chaperone-bench-${suffix}`;
  const webhookSamples: number[] = [];
  let webhooks: Awaited<ReturnType<typeof startInjectionWebhooks>> | undefined;
  try {
    await core.createNamespace({ body: { metadata: { name: operatorNamespace } } });
    await core.createNamespace({
      body: {
        metadata: {
          name: namespace,
          labels: { 'chaperone.dev/injection': 'enabled', 'chaperone.dev/bench': suffix },
        },
      },
    });
    for (let i = 0; i < 600; i++) {
      try {
        await core.readNamespacedServiceAccount({ namespace, name: 'default' });
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await core.createNamespacedSecret({
      namespace,
      body: { metadata: { name: 'db' }, stringData: { username: 'u', password: 'p' } },
    });
    await custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: 'protectedresources',
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: 'ProtectedResource',
        metadata: { name: 'orders-db' },
        spec: {
          type: 'postgres',
          endpoint: { host: 'db.example', database: 'orders' },
          credentialSecretRef: { name: 'db' },
        },
      },
    });
    webhooks = await startInjectionWebhooks({
      kubeConfig: kc,
      logger: silentLogger,
      settings: validateInjectionSettings({ image: 'chaperone-sidecar:bench', operatorNamespace, issuer }),
      host: '127.0.0.1',
      port: 0,
      certificates: { dnsNames: ['bench.test'], ipAddresses: ['127.0.0.1'] },
      registration: {
        endpoint: 'self',
        mutatingName: `chaperone-bench-injector-${suffix}`,
        validatingName: `chaperone-bench-validator-${suffix}`,
        extraNamespaceSelector: [{ key: 'chaperone.dev/bench', operator: 'In', values: [suffix] }],
        deleteOnStop: true,
      },
      onReview: (path, _outcome, s) => {
        if (path === '/mutate-pods') webhookSamples.push(s * 1000);
      },
    });
    // Warm up (connections, JIT, the cache's first GETs), then measure.
    for (let i = 0; i < 20; i++) {
      await core.createNamespacedPod({ namespace, body: pod(`warm-${String(i)}`) });
    }
    webhookSamples.length = 0;
    const endToEnd: number[] = [];
    let failed = 0;
    const total = rate * seconds;
    const started = performance.now();
    const inflight: Promise<void>[] = [];
    for (let i = 0; i < total; i++) {
      const due = started + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const t0 = performance.now();
      inflight.push(
        core.createNamespacedPod({ namespace, body: pod(`p-${String(i)}`) }).then(
          () => {
            endToEnd.push(performance.now() - t0);
          },
          () => {
            failed++;
          },
        ),
      );
    }
    await Promise.all(inflight);
    const webhook = summarise(webhookSamples);
    const targetP99Ms = 10;
    return {
      rate,
      seconds,
      created: endToEnd.length,
      failed,
      webhook,
      endToEnd: summarise(endToEnd),
      targetP99Ms,
      met: webhook.p99Ms <= targetP99Ms && failed === 0,
    };
  } finally {
    await webhooks?.stop();
    await core.deleteNamespace({ name: namespace }).catch(() => undefined);
    await core.deleteNamespace({ name: operatorNamespace }).catch(() => undefined);
    await controlPlane?.stop();
  }
}

function pod(name: string): k8s.V1Pod {
  return {
    metadata: { name, annotations: { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': 'orders-db' } },
    spec: { containers: [{ name: 'agent', image: 'postgres:17' }] },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { rate: { type: 'string' }, seconds: { type: 'string' } } });
  const result = await runAdmissionBench({
    ...(values.rate === undefined ? {} : { rate: Number(values.rate) }),
    ...(values.seconds === undefined ? {} : { seconds: Number(values.seconds) }),
  });
  console.log(JSON.stringify(result, null, 2));
}
