// The session-retention controller: a small reconciler keyed by namespace, in the style of the
// AccessPolicy controller (operator/src/controller-runtime/). Its one source watches ProtectedResources and maps
// each to its namespace, so a namespace is pruned when one of its resources appears or changes (a new
// retention applies at once). Every reconcile prunes that namespace with pruneExpiredSessions
// (session-retention.ts) and asks to be requeued after the retention interval, or sooner when a kept
// session expires earlier (capped at one hour). The controller only runs while this replica leads.
import { type CustomObjectsApi, type KubeConfig, type ObjectCache } from '@kubernetes/client-node';
import { type ProtectedResource } from '@chaperone/api';
import { systemClock, type Clock } from '../controller-runtime/clock.ts';
import { Controller } from '../controller-runtime/controller.ts';
import type {
  Reconciler,
  ReconcileContext,
  ReconcileRequest,
  ReconcileResult,
} from '../controller-runtime/reconcile.ts';
import { InformerSource } from '../controller-runtime/source.ts';
import { cacheOf, customObjectInformer } from '../controller-runtime/custom-object-informer.ts';
import type { Logger } from '../observability/logger.ts';
import type { OperatorMetrics } from '../observability/metrics.ts';
import { pruneExpiredSessions, retentionFromResources } from './session-retention.ts';

export const RETENTION_CONTROLLER_NAME = 'session-retention';
export const DEFAULT_RETENTION_INTERVAL_MS = 300_000;
/** A requeue is never further away than this, whatever the interval. */
export const MAX_RETENTION_REQUEUE_MS = 3_600_000;
/** And never sooner than this, so a session expiring "now" does not spin the queue. */
const MIN_RETENTION_REQUEUE_MS = 1_000;
const PR_PLURAL = 'protectedresources';

/** When to look at a namespace again: the interval, or the next expiry when earlier; within [1 s, 1 h]. */
export function retentionRequeueMs(intervalMs: number, now: Date, nextExpiry: Date | undefined): number {
  let after = Math.min(intervalMs, MAX_RETENTION_REQUEUE_MS);
  if (nextExpiry !== undefined) after = Math.min(after, nextExpiry.getTime() - now.getTime());
  return Math.max(after, MIN_RETENTION_REQUEUE_MS);
}

export interface SessionRetentionReconcilerOptions {
  readonly custom: CustomObjectsApi;
  readonly resources: ObjectCache<ProtectedResource>;
  readonly metrics: OperatorMetrics;
  readonly intervalMs: number;
  readonly clock?: Clock;
}

/** Request name = the namespace to prune (request namespace is empty: the key is the namespace itself). */
export class SessionRetentionReconciler implements Reconciler {
  private readonly options: SessionRetentionReconcilerOptions;
  private readonly clock: Clock;

  constructor(options: SessionRetentionReconcilerOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  async reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | undefined> {
    const namespace = request.name;
    const resources = this.options.resources.list(namespace);
    // No ProtectedResource: every Session there has an unknown retention and is kept; a new resource
    // enqueues the namespace again.
    if (resources.length === 0) return undefined;
    const now = new Date(this.clock.now());
    const result = await pruneExpiredSessions(this.options.custom, namespace, now, retentionFromResources(resources));
    if (result.deleted.length > 0) {
      this.options.metrics.sessionsPruned.inc({ namespace }, result.deleted.length);
      context.logger.info('pruned expired sessions', { namespace, deleted: result.deleted });
    }
    if (result.unknownRetention.length > 0) {
      context.logger.debug('kept sessions with unknown retention', { namespace, sessions: result.unknownRetention });
    }
    const requeueAfterMs = retentionRequeueMs(this.options.intervalMs, now, result.nextExpiry);
    context.logger.debug('retention pass', {
      namespace,
      deleted: result.deleted.length,
      nextExpiry: result.nextExpiry?.toISOString(),
      requeueAfterMs,
    });
    return { requeueAfterMs };
  }
}

export interface SessionRetentionControllerOptions {
  readonly kubeConfig: KubeConfig;
  readonly custom: CustomObjectsApi;
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  /** Watch and prune only this namespace (enqueued at start). Default: every namespace with ProtectedResources. */
  readonly namespace?: string;
  /** Default 300 000 (5 minutes). */
  readonly intervalMs?: number;
  readonly clock?: Clock;
}

export function createSessionRetentionController(options: SessionRetentionControllerOptions): Controller {
  const { kubeConfig, custom, namespace } = options;
  const informer = customObjectInformer(kubeConfig, custom, PR_PLURAL, namespace);
  const source = new InformerSource({
    name: 'protectedresources',
    informer,
    // Keyed by namespace: many resources of one namespace collapse into one prune.
    map: (obj) => (obj.metadata?.namespace === undefined ? [] : [obj.metadata.namespace]),
    logger: options.logger.child({ controller: RETENTION_CONTROLLER_NAME }),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  const reconciler = new SessionRetentionReconciler({
    custom,
    resources: cacheOf<ProtectedResource>(informer),
    metrics: options.metrics,
    intervalMs: options.intervalMs ?? DEFAULT_RETENTION_INTERVAL_MS,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  // No resync: every reconcile that found resources returns its own requeueAfter.
  const controller = new Controller({
    name: RETENTION_CONTROLLER_NAME,
    reconciler,
    sources: [source],
    logger: options.logger,
    metrics: options.metrics,
    workers: 1,
    resyncPeriodMs: 0,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  if (namespace !== undefined) controller.enqueue(namespace);
  return controller;
}
