// Wires the operator together: API clients, metrics server, Event recorder, the leader-only controllers
// (AccessPolicy, ProtectedResource with the sidecars' RBAC, session retention), optional leader election, and the injection webhooks, which every
// replica serves (admission is not leader-elected). Used by bin/chaperone-operator.ts and, in-process, by
// the tests.
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  RbacAuthorizationV1Api,
  type KubeConfig,
} from '@kubernetes/client-node';

import type { IncomingMessage, ServerResponse } from 'node:http';

/** Label of the namespace Sessions are kept in when the operator writes them (config/admission). */
export const AUDIT_NAMESPACE_LABEL = 'chaperone.dev/audit-namespace';
import { CREDENTIAL_DELIVERY_PATH, SESSION_PROXY_PATH, statementSigner } from '@chaperone/api';
import { loadOrCreateAuditAuthority, type AuditAuthority } from './audit/audit-authority.ts';
import { CheckpointWriter } from './audit/checkpoint-writer.ts';
import { signerCertificationWebhookOptions } from './audit/signer-certification.ts';
import {
  startTokenExchange,
  type RunningTokenExchange,
  type TokenExchangeOptions,
} from './identity/start-token-exchange.ts';
import { createSessionProxyHandler } from './audit/session-proxy.ts';
import { createCredentialDeliveryHandler } from './credentials/credential-delivery.ts';
import { validateInjectionSettings, type EvidenceStoreSettings } from './injection/settings.ts';
import type { Clock } from './controller-runtime/clock.ts';
import type { Controller } from './controller-runtime/controller.ts';
import { createEventRecorder } from './controller-runtime/event-recorder.ts';
import { defaultIdentity, LeaderElector } from './controller-runtime/leader-election.ts';
import { createAccessPolicyController, FIELD_MANAGER } from './controllers/access-policy-controller.ts';
import { createProtectedResourceController } from './controllers/protected-resource-controller.ts';
import { createSessionRetentionController } from './controllers/session-retention-controller.ts';
import { createApprovalNotifierController, type ApprovalWebhookOptions } from './approvals/approval-notifier.ts';
import type { CompileOptions } from './policy/compile-policy.ts';
import type { Logger } from './observability/logger.ts';
import {
  createOperatorMetrics,
  serveMetrics,
  type MetricsServer,
  type OperatorMetrics,
} from './observability/metrics.ts';
import {
  startInjectionWebhooks,
  type InjectionWebhooks,
  type InjectionWebhooksOptions,
} from './webhooks/start-webhooks.ts';

export interface OperatorOptions {
  readonly kubeConfig: KubeConfig;
  /** Watch only this namespace. Default: every namespace. */
  readonly namespace?: string;
  /** Run reconcilers only while holding the leader Lease. Default false. */
  readonly leaderElect?: boolean;
  /** Namespace of the Lease. Default: namespace, else POD_NAMESPACE, else chaperone-system. */
  readonly leaderElectionNamespace?: string;
  /** Name of the Lease. Default chaperone-operator. */
  readonly leaderElectionId?: string;
  /** Leader-election timings in milliseconds; defaults 15 000 / 10 000 / 2 000 (client-go). */
  readonly leaseDurationMs?: number;
  readonly renewDeadlineMs?: number;
  readonly retryPeriodMs?: number;
  /** This replica's identity in the Lease and in Events. Default: hostname plus a random suffix. */
  readonly identity?: string;
  /** host:port for /metrics, /healthz and /readyz; "0" disables. Default ":8080". */
  readonly metricsBindAddress?: string;
  /** Concurrent reconciles. Default 2. */
  readonly workers?: number;
  /** Default 10 minutes. */
  readonly resyncPeriodMs?: number;
  /** Default 60 seconds. */
  readonly reconcileTimeoutMs?: number;
  readonly compileOptions?: CompileOptions;
  /** Session retention pass per namespace, in milliseconds (sooner when a session expires earlier). Default 300 000. */
  readonly retentionIntervalMs?: number;
  /**
   * The audit authority (docs/audit.md, Trust model): its key in a Secret of `namespace`, the signer
   * certification endpoint on the webhook server (with webhooks), and checkpoints by the leader.
   * Default: off.
   */
  readonly audit?: { readonly namespace: string; readonly checkpointIntervalMs?: number };
  /**
   * The token exchange (docs/identity.md), served on the webhook HTTPS server by every replica; needs
   * `webhooks`. Default: off.
   */
  readonly tokenExchange?: Omit<TokenExchangeOptions, 'kubeConfig' | 'logger' | 'registry' | 'replica'>;
  /**
   * Keep Sessions in an audit namespace (labelled chaperone.dev/audit-namespace=true): injected sidecars
   * hand them to the operator's Session proxy, which attests each sidecar and writes them there; sidecars
   * get no right on Sessions (docs/audit.md, "Evidence out of the editors' reach"). Needs the webhooks.
   * Default: sidecars write Sessions in their own namespace.
   */
  readonly sessions?: { readonly auditNamespace: string };
  /**
   * Deliver credentials kept in this namespace to attested sidecars (ProtectedResources naming a Secret of it
   * with credentialSecretRef.namespace), instead of mounting Secrets of the agents' namespace (docs/injection.md).
   * Needs the webhooks. Default: off.
   */
  readonly credentials?: { readonly namespace: string };
  /**
   * The installation's evidence store (docs/evidence-store.md): injected sidecars keep their records there
   * (ProtectedResource spec.audit.records) and get its writer credential delivered from the credential
   * namespace. Needs `credentials`. Default none: records in Session objects.
   */
  readonly evidenceStore?: EvidenceStoreSettings;
  /**
   * Post every new ApprovalRequest and its resolution, HMAC-signed, to this URL (docs/approvals.md,
   * "Notifications"). Sent by the leader only. Default: off.
   */
  readonly approvalWebhook?: ApprovalWebhookOptions;
  /** Serve the injection webhooks (on every replica, leader or not). Default: off. */
  readonly webhooks?: Omit<InjectionWebhooksOptions, 'kubeConfig' | 'logger' | 'registry'>;
  readonly logger: Logger;
  readonly metrics?: OperatorMetrics;
  readonly clock?: Clock;
}

export interface RunningOperator {
  readonly identity: string;
  readonly metrics: OperatorMetrics;
  /** Bound address of the metrics server, when it runs. */
  readonly metricsAddress: string | undefined;
  /** The admission side, when webhooks are enabled. */
  readonly webhooks: InjectionWebhooks | undefined;
  /** The operator's key (audit authority), when audit or webhooks are enabled. */
  readonly authority: AuditAuthority | undefined;
  /** The token exchange, when enabled. */
  readonly tokenExchange: RunningTokenExchange | undefined;
  /** The checkpoint writer while this replica leads (audit enabled). */
  checkpoints(): CheckpointWriter | undefined;
  /** Whether this replica runs the reconcilers now. */
  isLeader(): boolean;
  /** Resolves when the operator stopped on its own: leadership lost (reason "lost"). */
  readonly done: Promise<'lost'>;
  /** Stops reconcilers, watches, leader election (releasing the Lease) and the metrics server. */
  stop(): Promise<void>;
}

export const DEFAULT_LEASE_NAME = 'chaperone-operator';

export async function startOperator(options: OperatorOptions): Promise<RunningOperator> {
  const { kubeConfig, logger } = options;
  const identity = options.identity ?? defaultIdentity();
  const metrics = options.metrics ?? createOperatorMetrics();
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const events = createEventRecorder({
    client: core,
    component: FIELD_MANAGER,
    instance: identity,
    logger,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  let controllers: Controller[] | undefined;
  let checkpointWriter: CheckpointWriter | undefined;
  let leading = false;
  // The operator's key: it certifies sidecar keys and signs checkpoints (audit authority), seals injected
  // sidecars (webhooks) and signs policy sets (AccessPolicy controller). Kept in the audit namespace, else
  // the operator namespace of the webhooks; without either, policy sets are published unsigned.
  const keyNamespace = options.audit?.namespace ?? options.webhooks?.settings.operatorNamespace;
  const authority =
    keyNamespace === undefined ? undefined : await loadOrCreateAuditAuthority(core, keyNamespace, logger);
  const newController = () =>
    createAccessPolicyController({
      kubeConfig,
      custom,
      core,
      events,
      logger,
      metrics,
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
      ...(options.workers === undefined ? {} : { workers: options.workers }),
      ...(options.resyncPeriodMs === undefined ? {} : { resyncPeriodMs: options.resyncPeriodMs }),
      ...(options.reconcileTimeoutMs === undefined ? {} : { reconcileTimeoutMs: options.reconcileTimeoutMs }),
      ...(options.compileOptions === undefined ? {} : { compileOptions: options.compileOptions }),
      ...(options.clock === undefined ? {} : { clock: options.clock }),
      ...(authority === undefined
        ? {}
        : { signer: statementSigner(authority.privateJwk), publicKeys: authority.publicKeys }),
    });
  const newRetentionController = () =>
    createSessionRetentionController({
      kubeConfig,
      custom,
      logger,
      metrics,
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
      ...(options.retentionIntervalMs === undefined ? {} : { intervalMs: options.retentionIntervalMs }),
      ...(options.clock === undefined ? {} : { clock: options.clock }),
    });
  const newResourceController = () =>
    createProtectedResourceController({
      kubeConfig,
      custom,
      core,
      rbac: kubeConfig.makeApiClient(RbacAuthorizationV1Api),
      events,
      logger,
      metrics,
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
      ...(options.workers === undefined ? {} : { workers: options.workers }),
      ...(options.resyncPeriodMs === undefined ? {} : { resyncPeriodMs: options.resyncPeriodMs }),
      ...(options.reconcileTimeoutMs === undefined ? {} : { reconcileTimeoutMs: options.reconcileTimeoutMs }),
      ...(options.clock === undefined ? {} : { clock: options.clock }),
      ...(authority === undefined ? {} : { publicKeys: authority.publicKeys }),
      ...(options.sessions === undefined ? {} : { sessionsInPodNamespace: false }),
      ...(options.credentials === undefined ? {} : { credentialNamespace: options.credentials.namespace }),
    });
  const startControllers = async () => {
    leading = true;
    const started = [newController(), newResourceController(), newRetentionController()];
    if (options.approvalWebhook !== undefined) {
      started.push(
        createApprovalNotifierController({
          kubeConfig,
          core,
          custom,
          events,
          webhook: options.approvalWebhook,
          logger,
          metrics,
          ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
          ...(options.clock === undefined ? {} : { clock: options.clock }),
        }),
      );
    }
    controllers = started;
    if (authority !== undefined && options.audit !== undefined) {
      checkpointWriter = new CheckpointWriter({
        core,
        custom,
        authority,
        storeNamespace: options.audit.namespace,
        ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
        ...(options.audit.checkpointIntervalMs === undefined ? {} : { intervalMs: options.audit.checkpointIntervalMs }),
        logger: logger.child({ component: 'audit-checkpoints' }),
        metrics,
      });
    }
    await Promise.all([...started.map((c) => c.start()), checkpointWriter?.start()]);
  };
  const stopControllers = async () => {
    const running = controllers ?? [];
    await Promise.all([...running.map((c) => c.stop()), checkpointWriter?.stop()]);
  };

  if (options.tokenExchange !== undefined && options.webhooks === undefined) {
    throw new Error('the token exchange is served on the webhook server: enable webhooks too');
  }
  if ((options.sessions !== undefined || options.credentials !== undefined) && options.webhooks === undefined) {
    throw new Error('keeping Sessions in an audit namespace and delivering credentials need the webhooks');
  }
  if (options.evidenceStore !== undefined && options.credentials === undefined) {
    throw new Error("an evidence store needs a credential namespace: the writer's password is delivered from there");
  }
  if (options.sessions !== undefined) await checkAuditNamespace(core, options.sessions.auditNamespace, logger);
  const tokenExchange =
    options.tokenExchange === undefined
      ? undefined
      : await startTokenExchange({
          ...options.tokenExchange,
          kubeConfig,
          logger,
          registry: metrics.registry,
          replica: identity,
        });
  const sidecarRoutes =
    authority === undefined ? undefined : operatorRoutes(options, authority, kubeConfig, logger, metrics);
  // Admission first: every replica serves it, standbys included, and a replica that cannot serve it
  // (certificates, cache) must not start at all.
  let webhooks: InjectionWebhooks | undefined;
  try {
    webhooks =
      options.webhooks === undefined || authority === undefined
        ? undefined
        : await startInjectionWebhooks({
            ...options.webhooks,
            settings: validateInjectionSettings({
              ...options.webhooks.settings,
              ...(options.sessions === undefined ? {} : { sessionNamespace: options.sessions.auditNamespace }),
              ...(options.credentials === undefined ? {} : { credentialNamespace: options.credentials.namespace }),
              ...(options.evidenceStore === undefined ? {} : { evidenceStore: options.evidenceStore }),
            }),
            kubeConfig,
            logger,
            registry: metrics.registry,
            authority,
            ...(sidecarRoutes?.signerCertificationPath === undefined
              ? {}
              : { signerCertificationPath: sidecarRoutes.signerCertificationPath }),
            routes: { ...sidecarRoutes?.routes, ...tokenExchange?.routes },
            ...(tokenExchange === undefined ? {} : { tokenExchangeIssuer: tokenExchange.issuer }),
          });
  } catch (err) {
    await tokenExchange?.stop();
    throw err;
  }

  const bind = options.metricsBindAddress ?? ':8080';
  // Ready: with webhooks, once admission is served (every replica, so the webhook Service reaches
  // standbys too); without, once this replica runs its controllers.
  const ready = () => webhooks !== undefined || controllers !== undefined;
  let server: MetricsServer | undefined;
  try {
    server = bind === '0' ? undefined : await serveMetrics(metrics.registry, bind, ready);
  } catch (err) {
    await webhooks?.stop();
    await tokenExchange?.stop();
    throw err;
  }

  let resolveDone: (reason: 'lost') => void = () => undefined;
  const done = new Promise<'lost'>((resolve) => {
    resolveDone = resolve;
  });
  let elector: LeaderElector | undefined;
  if (options.leaderElect === true) {
    const lease = {
      namespace:
        options.leaderElectionNamespace ?? options.namespace ?? process.env.POD_NAMESPACE ?? 'chaperone-system',
      name: options.leaderElectionId ?? DEFAULT_LEASE_NAME,
    };
    const label = { lease: `${lease.namespace}/${lease.name}` };
    metrics.isLeader.set(label, 0);
    elector = new LeaderElector({
      client: kubeConfig.makeApiClient(CoordinationV1Api),
      ...lease,
      identity,
      logger,
      ...(options.leaseDurationMs === undefined ? {} : { leaseDurationMs: options.leaseDurationMs }),
      ...(options.renewDeadlineMs === undefined ? {} : { renewDeadlineMs: options.renewDeadlineMs }),
      ...(options.retryPeriodMs === undefined ? {} : { retryPeriodMs: options.retryPeriodMs }),
      ...(options.clock === undefined ? {} : { clock: options.clock }),
      onStartedLeading: () => {
        metrics.isLeader.set(label, 1);
        startControllers().catch((err: unknown) => {
          logger.error('controller failed to start', { error: err });
        });
      },
      onStoppedLeading: (reason) => {
        metrics.isLeader.set(label, 0);
        leading = false;
        // A replica that lost the Lease must stop reconciling at once: another one may already lead.
        if (reason === 'lost') {
          void stopControllers().finally(() => {
            resolveDone('lost');
          });
        }
      },
      onNewLeader: (holder) => {
        logger.info('leader election: another replica leads', { leader: holder });
      },
    });
    void elector.start();
  } else {
    try {
      await startControllers();
    } catch (err) {
      await stopControllers();
      await webhooks?.stop();
      await tokenExchange?.stop();
      await server?.close();
      throw err;
    }
  }
  logger.info('operator started', {
    identity,
    namespace: options.namespace ?? '(all)',
    leaderElect: options.leaderElect === true,
    metrics: server?.address,
    webhooks: webhooks === undefined ? undefined : `https://${webhooks.server.host}:${String(webhooks.server.port)}`,
  });

  let stopping: Promise<void> | undefined;
  return {
    identity,
    metrics,
    metricsAddress: server?.address,
    webhooks,
    authority,
    tokenExchange,
    checkpoints: () => (leading ? checkpointWriter : undefined),
    isLeader: () => leading,
    done,
    stop() {
      stopping ??= (async () => {
        // Reconcilers first, so the Lease is released only once nothing is writing any more. Admission
        // stops with the process (the webhook configurations stay: other replicas keep serving).
        await stopControllers();
        await elector?.stop();
        await webhooks?.stop();
        await tokenExchange?.stop();
        await server?.close();
        logger.info('operator stopped');
      })();
      return stopping;
    },
  };
}

/** The endpoints sidecars call on the webhook server: certification, the Session proxy, credential delivery. */
function operatorRoutes(
  options: OperatorOptions,
  authority: AuditAuthority,
  kubeConfig: KubeConfig,
  logger: Logger,
  metrics: OperatorMetrics,
): Pick<InjectionWebhooksOptions, 'routes' | 'signerCertificationPath'> {
  const certification =
    options.audit === undefined
      ? undefined
      : signerCertificationWebhookOptions({
          authority,
          kubeConfig,
          logger: logger.child({ component: 'signer-certification' }),
          registry: metrics.registry,
        });
  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = { ...certification?.routes };
  if (options.sessions !== undefined) {
    routes[SESSION_PROXY_PATH] = createSessionProxyHandler({
      kubeConfig,
      auditNamespace: options.sessions.auditNamespace,
      publicKeys: () => authority.publicKeys,
      logger: logger.child({ component: 'session-proxy' }),
      registry: metrics.registry,
    });
  }
  if (options.credentials !== undefined) {
    routes[CREDENTIAL_DELIVERY_PATH] = createCredentialDeliveryHandler({
      kubeConfig,
      credentialNamespace: options.credentials.namespace,
      ...(options.evidenceStore === undefined ? {} : { evidenceStore: options.evidenceStore }),
      publicKeys: () => authority.publicKeys,
      logger: logger.child({ component: 'credential-delivery' }),
      registry: metrics.registry,
    });
  }
  return {
    routes,
    ...(certification === undefined ? {} : { signerCertificationPath: certification.signerCertificationPath }),
  };
}

/** The Session writers policy accepts the operator's writes only in a namespace labelled as the audit namespace. */
async function checkAuditNamespace(core: CoreV1Api, name: string, logger: Logger): Promise<void> {
  const namespace = await core.readNamespace({ name }).catch(() => undefined);
  if (namespace?.metadata?.labels?.[AUDIT_NAMESPACE_LABEL] !== 'true') {
    logger.error('the audit namespace is missing or not labelled; Session writes into it will be refused', {
      namespace: name,
      label: `${AUDIT_NAMESPACE_LABEL}=true`,
    });
  }
}
