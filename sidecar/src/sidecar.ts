// Wires the sidecar together from a validated configuration: identity, policy bundles, audit sink,
// metrics and, per configured resource, a listener served by the engine registered for its type
// (engines/registry.ts). Returns a handle that stops everything.
import type { Server } from 'node:http';
import type { SidecarConfig } from './config.ts';
import { parseHostPort } from './config.ts';
import { join } from 'node:path';
import { JsonLinesSink, type AuditSink } from './core/audit/audit-sink.ts';
import { PodChain } from './core/audit/pod-chain.ts';
import { CredentialFetcher } from './core/credentials/credential-fetcher.ts';
import type { SignerCertifier } from './core/audit/signer-certification.ts';

const IN_CLUSTER_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';
import { TokenVerifier } from './core/identity/token-verifier.ts';
import { createLogger, type Logger } from './core/observability/logger.ts';
import { createSidecarMetrics, serveMetrics, type SidecarMetrics } from './core/observability/metrics.ts';
import { BundleWatcher } from './core/policy/bundle-directory.ts';
import { PolicyEngine } from './core/policy/policy-engine.ts';
import type { Engine, EngineServices } from './core/engine.ts';
import { ResourceListener } from './core/resource-listener.ts';
import type { ApprovalDesk } from './core/approvals/approval-desk.ts';
import { ENGINES } from './engines/registry.ts';

export interface RunningSidecar {
  readonly listeners: readonly { name: string; host: string; port: number }[];
  readonly metricsAddress: { host: string; port: number } | undefined;
  readonly policy: PolicyEngine;
  readonly metrics: SidecarMetrics;
  /** Re-reads the bundle directory now instead of at the next poll. */
  reloadPolicies(): Promise<void>;
  close(): Promise<void>;
}

export interface StartOptions {
  readonly logger?: Logger;
  readonly sink?: AuditSink;
}

/**
 * The audit sink the configuration asks for: JSON lines by default; with `audit.spoolDir` the durable spool
 * and Session writer (optionally also exporting JSON lines).
 */
export async function createAuditSink(
  config: SidecarConfig,
  logger: Logger,
  metrics: SidecarMetrics,
): Promise<AuditSink> {
  const audit = config.audit;
  if (audit.spoolDir === undefined) return new JsonLinesSink(audit.path);
  // Loaded only when used. The Session writer and its stores (the Kubernetes client, pg) run in the audit
  // worker thread, which loads them there (core/audit/audit-worker.ts; docs/audit-durability.md "Threads").
  const [{ DurableAuditSink }, { SignerCertifier }, { loadOrCreateSigningKey }] = await Promise.all([
    import('./core/audit/durable-audit-sink.ts'),
    import('./core/audit/signer-certification.ts'),
    import('./core/audit/signing-key.ts'),
  ]);
  const namespace = audit.kubernetes?.namespace ?? config.pod.namespace;
  const signingKey = await loadOrCreateSigningKey(audit.signingKeyFile ?? join(audit.spoolDir, 'signing-key.jwk'));
  const certification = audit.certification;
  let certifier: SignerCertifier | undefined;
  if (certification !== undefined) {
    // Before the first Session part is written, so that (normally) every part carries the certificate.
    certifier = new SignerCertifier({
      url: certification.url,
      ...(certification.caFile === undefined ? {} : { caFile: certification.caFile }),
      ...(certification.ca === undefined ? {} : { ca: certification.ca }),
      tokenFile: certification.tokenFile ?? audit.kubernetes?.tokenFile ?? IN_CLUSTER_TOKEN_FILE,
      signingKey,
      logger: logger.child({ component: 'signer-certification' }),
    });
    await certifier.start(certification.waitSeconds * 1000);
  }
  const storeConfig = audit.evidenceStore;
  const auditLogger = logger.child({ component: 'audit' });
  const sink = await DurableAuditSink.open({
    spoolDir: join(audit.spoolDir, 'spool'),
    ...(storeConfig === undefined
      ? {}
      : {
          writer: { storeBatchRecords: storeConfig.batchRecords, storeHeadIntervalMs: storeConfig.headIntervalMs },
        }),
    spoolMaxBytes: audit.spoolMaxBytes,
    spoolDurability: audit.spoolDurability,
    flushIntervalMs: audit.flushIntervalMs,
    worker: {
      sessionStore:
        audit.operator === undefined
          ? { kind: 'kubernetes', options: { ...audit.kubernetes, namespace, host: config.pod.name } }
          : {
              kind: 'operator',
              options: {
                ...audit.operator,
                tokenFile: audit.operator.tokenFile ?? audit.kubernetes?.tokenFile ?? IN_CLUSTER_TOKEN_FILE,
                namespace,
              },
            },
      ...(storeConfig === undefined ? {} : { evidenceStore: storeConfig.postgres }),
      log: { level: config.log.level, base: { component: 'audit' } },
    },
    // Fail closed (docs/audit-durability.md "Threads"): records are refused from now on, and the sidecar
    // stops as on SIGTERM, with a non-zero status; on the next start the spool is replayed.
    onWorkerFailure: () => {
      process.exitCode = 70;
      process.kill(process.pid, 'SIGTERM');
    },
    signingKey,
    pod: { name: config.pod.name, namespace: config.pod.namespace, uid: config.pod.uid },
    logger: auditLogger,
    registry: metrics.registry,
    ...(audit.exportJsonLines ? { also: new JsonLinesSink(audit.path) } : {}),
    ...(certifier === undefined ? {} : { onClose: () => certifier.stop() }),
  });
  await sink.ready();
  if (certifier !== undefined && signingKey.certificate === undefined) {
    // Sessions written now carry a self-asserted key; say so where the pod's owner looks first.
    sink.podEvent({
      type: 'Warning',
      reason: 'SignerNotCertified',
      message: `The operator has not certified this sidecar's signing key (${signingKey.keyId}) yet; Sessions are written with a self-asserted key until it does (retrying).`,
    });
  }
  logger.info('durable audit trail', {
    spoolDir: audit.spoolDir,
    namespace,
    server: audit.kubernetes?.server ?? audit.kubernetes?.kubeconfig,
    keyId: signingKey.keyId,
    evidenceStore:
      storeConfig === undefined
        ? undefined
        : `${storeConfig.postgres.host}:${String(storeConfig.postgres.port)}/${storeConfig.postgres.database}`,
    certified: signingKey.certificate !== undefined,
  });
  return sink;
}

/**
 * The approval desk and its ApprovalRequest store, loaded only when approvals are configured: the store's
 * Kubernetes client (@kubernetes/client-node, ~870 modules) is ~40 MiB of a sidecar's memory at rest.
 */
async function approvalDesk(config: SidecarConfig, logger: Logger, metrics: SidecarMetrics): Promise<ApprovalDesk> {
  const approvals = config.approvals;
  if (approvals === undefined) throw new Error('approvals are not configured');
  const [{ ApprovalDesk }, { ApprovalRequestStore }, { kubeConfigFor }] = await Promise.all([
    import('./core/approvals/approval-desk.ts'),
    import('./core/approvals/approval-requests.ts'),
    import('./core/policy/policy-set-source.ts'),
  ]);
  return new ApprovalDesk({
    store: new ApprovalRequestStore(
      kubeConfigFor(approvals.kubernetes),
      approvals.kubernetes.namespace ?? config.pod.namespace,
    ),
    pod: { name: config.pod.name, uid: config.pod.uid },
    logger: logger.child({ component: 'approvals' }),
    registry: metrics.registry,
  });
}

export async function startSidecar(config: SidecarConfig, options: StartOptions = {}): Promise<RunningSidecar> {
  const logger = options.logger ?? createLogger({ level: config.log.level, base: { component: 'chaperone-sidecar' } });
  const metrics = createSidecarMetrics();
  // Delivered credentials first: the listeners read them for every upstream connection.
  const delivery = config.credentials;
  const credentials =
    delivery === undefined
      ? undefined
      : new CredentialFetcher({
          ...delivery,
          tokenFile: delivery.tokenFile ?? config.audit.kubernetes?.tokenFile ?? IN_CLUSTER_TOKEN_FILE,
          refreshMs: delivery.refreshSeconds * 1000,
          logger: logger.child({ component: 'credentials' }),
        });
  await credentials?.start(delivery?.waitSeconds === undefined ? 0 : delivery.waitSeconds * 1000);
  const sink = options.sink ?? (await createAuditSink(config, logger, metrics));
  // With a spool the head is kept beside it, so sessions stay linked across sidecar restarts in one pod.
  const podChain =
    config.audit.spoolDir === undefined
      ? PodChain.inMemory(config.pod)
      : PodChain.open(config.pod, join(config.audit.spoolDir, 'pod-chain-head.json'), logger);
  const policy = new PolicyEngine({ cacheSize: config.policy.decisionCacheSize });
  const policySet = config.policy.kubernetes;
  const watcher =
    policySet === undefined
      ? new BundleWatcher({
          dir: config.policy.bundleDir ?? '',
          engine: policy,
          logger,
          pollIntervalMs: config.policy.pollIntervalMs,
          onReload: (result) => metrics.bundleReloads.inc({ result }),
        })
      : new (await import('./core/policy/policy-set-source.ts')).PolicySetSource({
          configMap: policySet.configMap,
          namespace: policySet.namespace ?? config.pod.namespace,
          access: policySet,
          trustedKeys: config.policy.trustedKeys ?? [],
          engine: policy,
          logger: logger.child({ component: 'policy-set' }),
          resyncMs: policySet.resyncSeconds * 1000,
          pod: { name: config.pod.name, uid: config.pod.uid },
          onReload: (result) => metrics.bundleReloads.inc({ result }),
        });
  // One engine per type in use, initialised once (a parser to load, ...).
  const engines = new Map<string, Engine>();
  for (const l of config.listeners) {
    if (!engines.has(l.type)) engines.set(l.type, await ENGINES[l.type]());
  }
  await Promise.all([...[...engines.values()].map((e) => e.init()), watcher.start()]);
  const verifier = new TokenVerifier({
    issuers: config.identity.issuers,
    clockToleranceSeconds: config.identity.clockToleranceSeconds,
  });
  const approvals = config.approvals === undefined ? undefined : await approvalDesk(config, logger, metrics);
  // Requests a previous run of this sidecar left Pending can never run: say so before serving.
  await approvals?.start();
  const services: EngineServices = {
    pod: { name: config.pod.name, namespace: config.pod.namespace },
    verifier,
    policy,
    sink,
    podChain,
    metrics,
    logger,
    ...(approvals === undefined ? {} : { approvals }),
  };

  const listeners: ResourceListener[] = [];
  const addresses: { name: string; host: string; port: number }[] = [];
  let metricsServer: Server | undefined;
  try {
    for (const l of config.listeners) {
      const engine = engines.get(l.type) as Engine;
      // Tokens the exchange narrowed to other resources are refused on this one.
      const verifierHere = verifier.forResource({ namespace: l.resource.namespace, name: l.name });
      const endpoint = engine.bind(l, { ...services, verifier: verifierHere });
      const listener = new ResourceListener(l, endpoint, services);
      const address = await listener.listen();
      await endpoint.ready?.(address);
      listeners.push(listener);
      addresses.push({ name: l.name, ...address });
    }
    if (config.metrics.listen !== '') {
      const { host, port } = parseHostPort(config.metrics.listen);
      metricsServer = await serveMetrics(metrics.registry, host, port);
    }
  } catch (err) {
    watcher.stop();
    credentials?.stop();
    await Promise.allSettled(listeners.map((l) => l.close()));
    if (options.sink === undefined) await sink.close().catch(() => undefined);
    throw err;
  }
  const metricsAddr = metricsServer?.address();
  return {
    listeners: addresses,
    metricsAddress:
      metricsAddr === undefined || metricsAddr === null || typeof metricsAddr === 'string'
        ? undefined
        : { host: metricsAddr.address, port: metricsAddr.port },
    policy,
    metrics,
    reloadPolicies: () => watcher.check(),
    async close() {
      watcher.stop();
      credentials?.stop();
      // Held commands first: their clients get ApprovalAbandoned and the requests say Abandoned.
      await approvals?.close();
      await Promise.allSettled(listeners.map((l) => l.close()));
      await new Promise<void>((resolve) => {
        if (metricsServer === undefined) resolve();
        else metricsServer.close(() => resolve());
      });
      await sink.close();
    },
  };
}
