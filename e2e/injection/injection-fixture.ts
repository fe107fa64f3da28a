// Test fixture for the pod webhooks: the operator's admission side started in-process (cache, certificate
// Secret, HTTPS server on 127.0.0.1) and registered by URL with the shared control plane. Every fixture has
// its own instance label in the webhook's namespaceSelector, so parallel test files never call each
// other's servers, and its own operator namespace for the certificate Secret.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type ProtectedResourceSpec } from '@chaperone/api';
import { loadOrCreateAuditAuthority, type AuditAuthority } from '../../operator/src/audit/audit-authority.ts';
import { signerCertificationWebhookOptions } from '../../operator/src/audit/signer-certification.ts';
import { LABEL_INJECTION, LABEL_INJECTION_ENABLED, LABEL_STRICT } from '../../operator/src/injection/constants.ts';
import { validateInjectionSettings, type InjectionSettings } from '../../operator/src/injection/settings.ts';
import { silentLogger, createLogger } from '../../operator/src/observability/logger.ts';
import { startInjectionWebhooks, type InjectionWebhooks } from '../../operator/src/webhooks/start-webhooks.ts';
import type { AdmissionOutcome } from '../../operator/src/webhooks/admission-server.ts';
import { controlPlaneEnv, postgresEnv } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { readFileSync } from 'node:fs';

export const INSTANCE_LABEL = 'chaperone.dev/test-webhook-instance';
export const TEST_IMAGE = 'ghcr.io/chaperone/chaperone-sidecar:test';

export interface WebhookFixture {
  readonly instance: string;
  readonly operatorNamespace: string;
  readonly settings: InjectionSettings;
  readonly webhooks: InjectionWebhooks;
  /** The audit authority whose certification endpoint the webhooks serve (with `audit: true`). */
  readonly authority: AuditAuthority | undefined;
  readonly kc: k8s.KubeConfig;
  readonly core: k8s.CoreV1Api;
  readonly apps: k8s.AppsV1Api;
  readonly batch: k8s.BatchV1Api;
  readonly custom: k8s.CustomObjectsApi;
  /** A fresh namespace selected by this fixture's webhooks (strict when asked), with its default ServiceAccount. */
  namespace(t: TestContext, options?: { strict?: boolean; injection?: boolean }): Promise<string>;
  stop(): Promise<void>;
}

export interface FixtureOptions {
  readonly leafLifetimeMs?: number;
  readonly caLifetimeMs?: number;
  readonly checkIntervalMs?: number;
  readonly onReview?: (path: string, outcome: AdmissionOutcome, seconds: number) => void;
  readonly debugLogs?: boolean;
  /** Serve the signer certification endpoint of an audit authority kept in the operator namespace. */
  readonly audit?: boolean;
}

export async function startWebhookFixture(options: FixtureOptions = {}): Promise<WebhookFixture> {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const instance = randomBytes(4).toString('hex');
  const operatorNamespace = `chaperone-system-${instance}`;
  await core.createNamespace({
    body: { metadata: { name: operatorNamespace, labels: { 'chaperone.dev/test': 'true' } } },
  });
  const settings = validateInjectionSettings({
    image: TEST_IMAGE,
    operatorNamespace,
    issuer: controlPlaneEnv().issuer,
  });
  let webhooks: InjectionWebhooks;
  let authority: AuditAuthority | undefined;
  const logger = options.debugLogs === true ? createLogger({ level: 'debug' }) : silentLogger;
  try {
    authority = options.audit === true ? await loadOrCreateAuditAuthority(core, operatorNamespace, logger) : undefined;
    webhooks = await startInjectionWebhooks({
      kubeConfig: kc,
      logger,
      settings,
      ...(authority === undefined ? {} : signerCertificationWebhookOptions({ authority, kubeConfig: kc, logger })),
      host: '127.0.0.1',
      port: 0,
      certificates: {
        dnsNames: ['chaperone-webhook.test'],
        ipAddresses: ['127.0.0.1'],
        ...(options.leafLifetimeMs === undefined ? {} : { leafLifetimeMs: options.leafLifetimeMs }),
        ...(options.caLifetimeMs === undefined ? {} : { caLifetimeMs: options.caLifetimeMs }),
        ...(options.checkIntervalMs === undefined ? {} : { checkIntervalMs: options.checkIntervalMs }),
      },
      registration: {
        endpoint: 'self',
        mutatingName: `chaperone-pod-injector-${instance}`,
        validatingName: `chaperone-pod-validator-${instance}`,
        extraNamespaceSelector: [{ key: INSTANCE_LABEL, operator: 'In', values: [instance] }],
        deleteOnStop: true,
      },
      ...(options.onReview === undefined ? {} : { onReview: options.onReview }),
    });
  } catch (err) {
    await core.deleteNamespace({ name: operatorNamespace }).catch(() => undefined);
    throw err;
  }
  return {
    instance,
    operatorNamespace,
    settings,
    webhooks,
    authority,
    kc,
    core,
    apps: kc.makeApiClient(k8s.AppsV1Api),
    batch: kc.makeApiClient(k8s.BatchV1Api),
    custom: kc.makeApiClient(k8s.CustomObjectsApi),
    async namespace(t, nsOptions = {}) {
      const labels: Record<string, string> = { [INSTANCE_LABEL]: instance };
      if (nsOptions.injection ?? true) labels[LABEL_INJECTION] = LABEL_INJECTION_ENABLED;
      if (nsOptions.strict === true) labels[LABEL_STRICT] = 'true';
      const ns = await createTestNamespace(t, labels);
      await waitForServiceAccount(core, ns, 'default');
      return ns;
    },
    async stop() {
      await webhooks.stop();
      await core.deleteNamespace({ name: operatorNamespace }).catch(() => undefined);
    },
  };
}

/** The ServiceAccount admission plugin refuses pods until the namespace's default ServiceAccount exists. */
export async function waitForServiceAccount(core: k8s.CoreV1Api, namespace: string, name: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      await core.readNamespacedServiceAccount({ namespace, name });
      return;
    } catch {
      await sleep(100);
    }
  }
  throw new Error(`ServiceAccount ${namespace}/${name} did not appear`);
}

export const RESOURCE = 'orders-db';
export const CREDENTIAL_SECRET = 'orders-db-credentials';
export const CA_SECRET = 'orders-db-ca';

/**
 * A postgres ProtectedResource pointing at the harness PostgreSQL (verify-full against its CA, host
 * localhost as its certificate names), with the credential and CA Secrets it references.
 */
export async function createPostgresResource(
  fixture: Pick<WebhookFixture, 'core' | 'custom'>,
  namespace: string,
  options: { name?: string; listenPort?: number } = {},
): Promise<string> {
  const pg = postgresEnv();
  const name = options.name ?? RESOURCE;
  await fixture.core
    .createNamespacedSecret({
      namespace,
      body: { metadata: { name: CREDENTIAL_SECRET }, stringData: { username: pg.user, password: pg.password } },
    })
    .catch((err: unknown) => {
      if (!(err instanceof k8s.ApiException && err.code === 409)) throw err;
    });
  await fixture.core
    .createNamespacedSecret({
      namespace,
      body: { metadata: { name: CA_SECRET }, stringData: { 'ca.crt': readFileSync(pg.caFile, 'utf8') } },
    })
    .catch((err: unknown) => {
      if (!(err instanceof k8s.ApiException && err.code === 409)) throw err;
    });
  const spec: Partial<ProtectedResourceSpec> = {
    type: 'postgres',
    endpoint: { host: 'localhost', port: pg.port, database: pg.database },
    tls: { mode: 'verify-full', caSecretRef: { name: CA_SECRET, key: 'ca.crt' } },
    credentialSecretRef: { name: CREDENTIAL_SECRET, usernameKey: 'username', passwordKey: 'password' },
    ...(options.listenPort === undefined ? {} : { listenPort: options.listenPort }),
  };
  await fixture.custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'protectedresources',
    body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'ProtectedResource', metadata: { name }, spec },
  });
  return name;
}

/** Waits until a controller (ReplicaSet, Job) has created at least one pod matching `selector`. */
export async function waitForPods(
  core: k8s.CoreV1Api,
  namespace: string,
  selector: string,
  count = 1,
): Promise<k8s.V1Pod[]> {
  for (let i = 0; i < 600; i++) {
    const pods = await core.listNamespacedPod({ namespace, labelSelector: selector });
    if (pods.items.length >= count) return pods.items;
    await sleep(100);
  }
  throw new Error(`no pods for ${selector} in ${namespace} after 60 s`);
}

/** An opted-in agent pod: one container running psql, annotated for the named resources. */
export function agentPod(name: string, resources: string, extra: Partial<k8s.V1PodSpec> = {}): k8s.V1Pod {
  return {
    metadata: {
      name,
      labels: { app: name },
      annotations: { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': resources },
    },
    spec: { containers: [{ name: 'agent', image: 'postgres:17', command: ['sleep', 'infinity'] }], ...extra },
  };
}
