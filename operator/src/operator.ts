// Wires the operator together: API clients, metrics server, Event recorder, the AccessPolicy controller,
// and optional leader election. Used by bin/chaperone-operator.ts and, in-process, by the tests.
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import type { Clock } from './controller/clock.ts';
import type { Controller } from './controller/controller.ts';
import { createEventRecorder } from './controller/event-recorder.ts';
import { defaultIdentity, LeaderElector } from './controller/leader-election.ts';
import { createAccessPolicyController, FIELD_MANAGER } from './controllers/access-policy-controller.ts';
import type { CompileOptions } from './policy/compile-policy.ts';
import type { Logger } from './observability/logger.ts';
import {
  createOperatorMetrics,
  serveMetrics,
  type MetricsServer,
  type OperatorMetrics,
} from './observability/metrics.ts';

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
  readonly logger: Logger;
  readonly metrics?: OperatorMetrics;
  readonly clock?: Clock;
}

export interface RunningOperator {
  readonly identity: string;
  readonly metrics: OperatorMetrics;
  /** Bound address of the metrics server, when it runs. */
  readonly metricsAddress: string | undefined;
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
  let controller: Controller | undefined;
  let leading = false;
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
    });
  const startController = async () => {
    leading = true;
    controller = newController();
    await controller.start();
  };

  const bind = options.metricsBindAddress ?? ':8080';
  const server: MetricsServer | undefined =
    bind === '0' ? undefined : await serveMetrics(metrics.registry, bind, () => controller !== undefined);

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
        startController().catch((err: unknown) => {
          logger.error('controller failed to start', { error: err });
        });
      },
      onStoppedLeading: (reason) => {
        metrics.isLeader.set(label, 0);
        leading = false;
        // A replica that lost the Lease must stop reconciling at once: another one may already lead.
        if (reason === 'lost') {
          void controller?.stop().finally(() => {
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
    await startController();
  }
  logger.info('operator started', {
    identity,
    namespace: options.namespace ?? '(all)',
    leaderElect: options.leaderElect === true,
    metrics: server?.address,
  });

  let stopping: Promise<void> | undefined;
  return {
    identity,
    metrics,
    metricsAddress: server?.address,
    isLeader: () => leading,
    done,
    stop() {
      stopping ??= (async () => {
        // Reconcilers first, so the Lease is released only once nothing is writing any more.
        await controller?.stop();
        await elector?.stop();
        await server?.close();
        logger.info('operator stopped');
      })();
      return stopping;
    },
  };
}
