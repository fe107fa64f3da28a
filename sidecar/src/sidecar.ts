// Wires the sidecar together from a validated configuration: what is per pod (audit sink, pod chain,
// credentials, approvals, the metrics endpoint) and the event loops that serve the listeners (loop.ts: the
// main thread's, plus worker threads with `eventLoops` > 1, event-loops.ts). Returns a handle that stops
// everything.
import type { Server } from 'node:http';
import type { SidecarConfig } from './config.ts';
import { eventLoopPlan, parseHostPort, perLoopLimits, setLoopShares, MAX_EVENT_LOOPS } from './config.ts';
import { join } from 'node:path';
import { JsonLinesSink, type AuditSink } from './core/audit/audit-sink.ts';
import { JsonLinesWriter } from './core/audit/json-lines-writer.ts';
import { PodChain, sharedPodChainHead } from './core/audit/pod-chain.ts';
import { CredentialFetcher } from './core/credentials/credential-fetcher.ts';
import type { SignerCertifier } from './core/audit/signer-certification.ts';

const IN_CLUSTER_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';
import { createLogger, type Logger } from './core/observability/logger.ts';
import { createSidecarMetrics, serveMetrics, type SidecarMetrics } from './core/observability/metrics.ts';
import type { PolicyEngine } from './core/policy/policy-engine.ts';
import type { LoopPeers } from './core/engine.ts';
import type { ApprovalDesk } from './core/approvals/approval-desk.ts';
import { PROCESS_HASH_KEY } from './core/masking/mask-value.ts';
import { SOURCE_COUNTS_BYTES, sourceCountsKey } from './core/source-counts.ts';
import { WorkerLoops, type LoopShared } from './event-loops.ts';
import { LazyEventLoops } from './lazy-event-loops.ts';
import {
  CATALOG_GENERATION_BYTES,
  LOOP_CONNECTIONS_BYTES,
  OPEN_CONNECTIONS_BYTES,
  startLoop,
  type RunningLoop,
} from './loop.ts';

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
  if (audit.spoolDir === undefined) {
    // Sealed and written by a worker thread (core/audit/json-lines-writer.ts): nothing waits for these records.
    return JsonLinesWriter.open(audit.path, (err) => {
      // Fail closed, as when the audit worker fails: records are refused, and the sidecar stops.
      logger.error('the JSON-lines audit writer failed; stopping', { error: err });
      process.exitCode = 70;
      process.kill(process.pid, 'SIGTERM');
    });
  }
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
  // More than one event loop, now or lazily (docs/sidecar-event-loops.md): what every loop shares, in shared
  // memory, from the start (the main loop counts its connections there before a second loop exists).
  const plan = eventLoopPlan(config);
  if (config.eventLoops === undefined && plan.max === 1) {
    logger.debug('lazy event loops off', { because: plan.lazyOffBecause });
  }
  const shared: LoopShared | undefined =
    plan.max === 1
      ? undefined
      : {
          podChainHead: sharedPodChainHead(),
          openConnections: new SharedArrayBuffer(OPEN_CONNECTIONS_BYTES * config.listeners.length),
          loopConnections: new SharedArrayBuffer(LOOP_CONNECTIONS_BYTES * MAX_EVENT_LOOPS),
          sourceCounts: new SharedArrayBuffer(SOURCE_COUNTS_BYTES * config.listeners.length),
          sourceCountsKey: sourceCountsKey(),
          catalogGenerations: new SharedArrayBuffer(CATALOG_GENERATION_BYTES * config.listeners.length),
          processHashKey: new Uint8Array(PROCESS_HASH_KEY),
        };
  if (shared !== undefined && !(sink instanceof JsonLinesWriter)) {
    throw new Error('more than one event loop needs the JSON-lines audit sink (docs/sidecar-event-loops.md)');
  }
  // With a spool the head is kept beside it, so sessions stay linked across sidecar restarts in one pod.
  const podChain =
    shared !== undefined
      ? PodChain.shared(config.pod, shared.podChainHead)
      : config.audit.spoolDir === undefined
        ? PodChain.inMemory(config.pod)
        : PodChain.open(config.pod, join(config.audit.spoolDir, 'pod-chain-head.json'), logger);
  const approvals = config.approvals === undefined ? undefined : await approvalDesk(config, logger, metrics);
  // Requests a previous run of this sidecar left Pending can never run: say so before serving.
  await approvals?.start();
  let workers: WorkerLoops | undefined;
  let lazy: LazyEventLoops | undefined;
  // Lazy loops: the main loop runs with a copy whose shares of the bounds follow the running loops
  // (setLoopShares): the whole bounds while it runs alone.
  const mainConfig = plan.eager === plan.max ? perLoopLimits(config) : structuredClone(config);
  const peers: LoopPeers = { ask: (listener, message) => workers?.askLoops(listener, message) ?? Promise.resolve([]) };
  let loop: RunningLoop | undefined;
  let metricsServer: Server | undefined;
  try {
    loop = await startLoop(
      mainConfig,
      {
        pod: { name: config.pod.name, namespace: config.pod.namespace },
        sink,
        podChain,
        metrics,
        logger,
        ...(approvals === undefined ? {} : { approvals }),
      },
      shared === undefined
        ? undefined
        : {
            index: 0,
            openConnections: shared.openConnections,
            loopConnections: shared.loopConnections,
            sourceCounts: shared.sourceCounts,
            sourceCountsKey: shared.sourceCountsKey,
            catalogGenerations: shared.catalogGenerations,
            peers,
            // Set below once the lazy loops exist; until then an accept has nothing to tell.
            onAccept: () => lazy?.noteAccept(),
          },
    );
    if (shared !== undefined) {
      const loops = new WorkerLoops({
        config: perLoopLimits(config),
        shared,
        main: loop,
        sink: sink as JsonLinesWriter,
        logger,
        registry: metrics.registry,
        onFailure: (err) => {
          // Fail closed, as when the audit worker fails: the sidecar stops with a non-zero status.
          logger.error('an event loop failed; stopping', { error: err });
          process.exitCode = 70;
          process.kill(process.pid, 'SIGTERM');
        },
      });
      workers = loops;
      for (let i = 1; i < plan.eager; i++) await loops.add('configured');
      if (plan.max > plan.eager) {
        lazy = new LazyEventLoops({
          loops,
          max: plan.max,
          settings: config.lazyEventLoops,
          listeners: config.listeners.length,
          openConnections: shared.openConnections,
          loopConnections: shared.loopConnections,
          onCountChange: (n) => setLoopShares(mainConfig, config, n),
          logger,
        });
        lazy.start();
      }
    }
    if (config.metrics.listen !== '') {
      const { host, port } = parseHostPort(config.metrics.listen);
      const loops = workers;
      metricsServer = await serveMetrics(
        loops === undefined
          ? metrics.registry
          : {
              contentType: metrics.registry.contentType,
              metrics: async () => (await loops.metrics(metrics.registry)).metrics(),
            },
        host,
        port,
      );
    }
  } catch (err) {
    credentials?.stop();
    lazy?.stop();
    await workers?.close();
    await loop?.close();
    if (options.sink === undefined) await sink.close().catch(() => undefined);
    throw err;
  }
  const main = loop;
  const metricsAddr = metricsServer?.address();
  return {
    listeners: main.addresses,
    metricsAddress:
      metricsAddr === undefined || metricsAddr === null || typeof metricsAddr === 'string'
        ? undefined
        : { host: metricsAddr.address, port: metricsAddr.port },
    policy: main.policy,
    metrics,
    async reloadPolicies() {
      await Promise.all([main.reloadPolicies(), workers?.reloadPolicies()]);
    },
    async close() {
      credentials?.stop();
      // Held commands first: their clients get ApprovalAbandoned and the requests say Abandoned.
      await approvals?.close();
      // The workers' last audit lines reach the sink before it closes.
      lazy?.stop();
      await Promise.all([main.close(), workers?.close()]);
      await new Promise<void>((resolve) => {
        if (metricsServer === undefined) resolve();
        else metricsServer.close(() => resolve());
      });
      await sink.close();
    },
  };
}
