// The approval webhook (docs/approvals.md, "Notifications"): the leader posts every new ApprovalRequest and
// its resolution to one configured URL, signed with HMAC-SHA256 (webhook-signature.ts) under a secret kept
// in a Kubernetes Secret. A small reconciler keyed by request: it reads the request from the informer cache,
// sends what is due (`requested`, then `resolved` once the phase is final) in order, and remembers what was
// delivered in an annotation on the request, so a restart or a new leader does not send it again. A failed
// delivery throws, and the runner retries it with per-key exponential backoff; an event older than
// `maxAgeMs` is given up (a Warning Event says so). Approvals never wait for any of this: the sidecar files
// and follows requests on its own; the notifier only reads them and writes its annotation.
import {
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
  type ObjectCache,
} from '@kubernetes/client-node';
import { Counter } from 'prom-client';
import { API_VERSION, GROUP, VERSION, tallyDecisions, type ApprovalRequest } from '@chaperone/api';
import { systemClock, type Clock } from '../controller-runtime/clock.ts';
import { Controller } from '../controller-runtime/controller.ts';
import type { EventRecorder } from '../controller-runtime/event-recorder.ts';
import { ExponentialBackoffRateLimiter } from '../controller-runtime/rate-limiter.ts';
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
import { signatureHeader } from './webhook-signature.ts';

export const APPROVAL_NOTIFIER_NAME = 'approval-notifier';
/** On an ApprovalRequest: what the webhook has been sent for it (`requested`, then `resolved`). */
export const NOTIFIED_ANNOTATION = 'chaperone.dev/notified';
export const DELIVERY_HEADER = 'x-chaperone-delivery';
export const EVENT_HEADER = 'x-chaperone-event';
const PLURAL = 'approvalrequests';
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export interface ApprovalWebhookOptions {
  /** Where notifications are POSTed (http or https). */
  readonly url: string;
  /** The Secret holding the HMAC key, and the key in it. */
  readonly secret: { readonly namespace: string; readonly name: string; readonly key: string };
  /** One attempt's deadline. Default 10 000 ms. */
  readonly timeoutMs?: number;
  /** Events older than this are not sent (again): given up after retries, skipped when first seen. Default 1 h. */
  readonly maxAgeMs?: number;
  /** Backoff between attempts of one request: first delay and cap. Defaults 1 000 and 60 000 ms. */
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
}

export type NotificationType = 'approval.requested' | 'approval.resolved';

/** The JSON body of a notification. Everything in it is what `kubectl get approvalrequest` shows. */
export interface ApprovalNotification {
  readonly apiVersion: string;
  readonly kind: 'ApprovalNotification';
  readonly type: NotificationType;
  /** Stable across retries of the same event: the request's uid and the event. */
  readonly id: string;
  readonly time: string;
  readonly request: {
    readonly namespace: string;
    readonly name: string;
    readonly uid: string;
    readonly phase: string;
    readonly resource: string;
    readonly requester: { readonly subject: string; readonly chain: readonly string[] };
    readonly command: { readonly kind: string; readonly text: string; readonly parameters?: readonly string[] };
    readonly policy: string;
    readonly rule: string;
    readonly requiredApprovals: number;
    readonly approvals: number;
    readonly expiresTime: string;
    readonly bindingHash?: string;
    readonly decisions: readonly {
      readonly approver: string;
      readonly decision: string;
      readonly time: string;
      readonly comment?: string;
    }[];
    /** What an approver runs. */
    readonly approveCommand: string;
  };
}

const FINAL = new Set(['Approved', 'Denied', 'Expired', 'Cancelled', 'Abandoned']);

/**
 * What is due for a request, in order, given what its annotation says was sent (or `sentHere`, what
 * this process marked, when the cache does not show the annotation yet).
 */
export function notificationsDue(request: ApprovalRequest, sentHere?: string): NotificationType[] {
  const sent = sentHere === 'resolved' ? sentHere : (request.metadata.annotations?.[NOTIFIED_ANNOTATION] ?? sentHere);
  const phase = request.status?.phase ?? 'Pending';
  const due: NotificationType[] = [];
  if (sent === undefined) due.push('approval.requested');
  if (sent !== 'resolved' && FINAL.has(phase)) due.push('approval.resolved');
  return due;
}

/** When the event happened: the request's creation, or the Decided condition's transition. */
export function eventTime(request: ApprovalRequest, type: NotificationType): number {
  if (type === 'approval.resolved') {
    const decided = request.status?.conditions?.find((c) => c.type === 'Decided' && c.status === 'True');
    if (decided?.lastTransitionTime !== undefined) return Date.parse(decided.lastTransitionTime);
  }
  return Date.parse(request.metadata.creationTimestamp ?? '') || 0;
}

export function notificationFor(request: ApprovalRequest, type: NotificationType, now: number): ApprovalNotification {
  const { spec, metadata } = request;
  const namespace = metadata.namespace ?? '';
  const name = metadata.name ?? '';
  const uid = metadata.uid ?? '';
  const tally = tallyDecisions(spec, request.status?.decisions ?? []);
  return {
    apiVersion: API_VERSION,
    kind: 'ApprovalNotification',
    type,
    id: `${uid}/${type === 'approval.requested' ? 'requested' : 'resolved'}`,
    time: new Date(now).toISOString(),
    request: {
      namespace,
      name,
      uid,
      phase: request.status?.phase ?? 'Pending',
      resource: spec.resource,
      requester: { subject: spec.requester.subject, chain: (spec.requester.chain ?? []).map((a) => a.subject) },
      command: {
        kind: spec.command.kind,
        text: spec.command.text,
        ...(spec.command.parameters === undefined ? {} : { parameters: spec.command.parameters }),
      },
      policy: spec.policy.name,
      rule: spec.policy.rule,
      requiredApprovals: spec.requiredApprovals,
      approvals: tally.approvals,
      expiresTime: spec.expiresTime,
      ...(spec.bindingHash === undefined ? {} : { bindingHash: spec.bindingHash }),
      decisions: (request.status?.decisions ?? []).map((d) => ({
        approver: d.approver.username,
        decision: d.decision,
        time: d.time,
        ...(d.comment === undefined ? {} : { comment: d.comment }),
      })),
      approveCommand: `kubectl chaperone approve ${name} -n ${namespace}`,
    },
  };
}

/** A non-2xx answer or a network failure; retried. */
export class DeliveryFailed extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'DeliveryFailed';
  }
}

export interface ApprovalNotifierDeps {
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;
  readonly requests: ObjectCache<ApprovalRequest>;
  readonly events: EventRecorder;
  readonly webhook: ApprovalWebhookOptions;
  readonly metrics: OperatorMetrics;
  readonly clock?: Clock;
}

function notificationMetrics(metrics: OperatorMetrics): Counter<'result'> {
  const name = 'chaperone_operator_approval_notifications_total';
  const existing = metrics.registry.getSingleMetric(name);
  if (existing !== undefined) return existing as Counter<'result'>;
  return new Counter({
    name,
    help: 'Approval webhook deliveries by result: delivered, failed (retried), abandoned (given up), skipped (too old when first seen).',
    labelNames: ['result'],
    registers: [metrics.registry],
  });
}

export class ApprovalNotifier implements Reconciler {
  private readonly deps: ApprovalNotifierDeps;
  private readonly clock: Clock;
  private readonly deliveries: Counter<'result'>;
  /**
   * By namespace/name: what this process marked sent, for which object (the informer cache shows the
   * annotation a little later than the patch).
   */
  private readonly sent = new Map<string, { readonly uid: string; readonly value: string }>();

  constructor(deps: ApprovalNotifierDeps) {
    this.deps = deps;
    this.clock = deps.clock ?? systemClock;
    this.deliveries = notificationMetrics(deps.metrics);
  }

  async reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | undefined> {
    const object = this.deps.requests.get(request.name, request.namespace);
    const key = `${request.namespace}/${request.name}`;
    if (object === undefined) {
      this.sent.delete(key);
      return undefined;
    }
    const uid = object.metadata.uid ?? '';
    const memo = this.sent.get(key);
    const sentHere = memo?.uid === uid ? memo.value : undefined;
    const due = notificationsDue(object, sentHere);
    if (due.length === 0) return undefined;
    const now = this.clock.now();
    const maxAge = this.deps.webhook.maxAgeMs ?? 3_600_000;
    for (const type of due) {
      const age = now - eventTime(object, type);
      const firstSight = object.metadata.annotations?.[NOTIFIED_ANNOTATION] === undefined && sentHere === undefined;
      if (age > maxAge) {
        // Seen for the first time long after it happened (the webhook was just configured, or the operator
        // was down): history is not replayed. Seen before and still failing: given up.
        this.deliveries.inc({ result: firstSight && type === 'approval.requested' ? 'skipped' : 'abandoned' });
        if (!(firstSight && type === 'approval.requested')) {
          void this.deps.events.record(
            object,
            'Warning',
            'NotificationAbandoned',
            `the approval webhook was not reached within ${String(Math.round(maxAge / 1000))} s; ${type} not delivered`,
          );
        }
        await this.markSent(object, type);
        continue;
      }
      await this.deliver(notificationFor(object, type, now), context);
      await this.markSent(object, type);
    }
    return undefined;
  }

  /** One signed POST; throws DeliveryFailed unless the receiver answers 2xx. */
  private async deliver(notification: ApprovalNotification, context: ReconcileContext): Promise<void> {
    const secret = await this.secret();
    const body = JSON.stringify(notification);
    const timestamp = Math.floor(this.clock.now() / 1000);
    const timeout = AbortSignal.timeout(this.deps.webhook.timeoutMs ?? 10_000);
    let status: number;
    try {
      const response = await fetch(this.deps.webhook.url, {
        method: 'POST',
        // A redirect could carry the signed body elsewhere: never followed.
        redirect: 'manual',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'chaperone-operator',
          [EVENT_HEADER]: notification.type,
          [DELIVERY_HEADER]: notification.id,
          'x-chaperone-signature': signatureHeader(secret, timestamp, body),
        },
        body,
        signal: AbortSignal.any([timeout, context.signal]),
      });
      status = response.status;
      await response.body?.cancel();
    } catch (err) {
      this.deliveries.inc({ result: 'failed' });
      throw new DeliveryFailed(`approval webhook not reached: ${(err as Error).message}`, { cause: err });
    }
    if (status < 200 || status > 299) {
      this.deliveries.inc({ result: 'failed' });
      throw new DeliveryFailed(`approval webhook answered ${String(status)}`);
    }
    this.deliveries.inc({ result: 'delivered' });
    context.logger.info('approval notification delivered', {
      request: `${notification.request.namespace}/${notification.request.name}`,
      type: notification.type,
      delivery: notification.id,
    });
  }

  /** The key, read at each delivery so that a rotated Secret applies at once. Never logged. */
  private async secret(): Promise<Buffer> {
    const { namespace, name, key } = this.deps.webhook.secret;
    const secret = await this.deps.core.readNamespacedSecret({ namespace, name });
    const value = secret.data?.[key];
    if (value === undefined || value === '') {
      throw new DeliveryFailed(
        `Secret ${namespace}/${name} has no key ${key}; the approval webhook is not signed or sent`,
      );
    }
    return Buffer.from(value, 'base64');
  }

  private async markSent(object: ApprovalRequest, type: NotificationType): Promise<void> {
    const uid = object.metadata.uid ?? '';
    const value = type === 'approval.requested' ? 'requested' : 'resolved';
    await this.deps.custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: object.metadata.namespace ?? '',
        plural: PLURAL,
        name: object.metadata.name ?? '',
        body: {
          metadata: {
            // Only when it is still the object read (a re-created request of the same name is another one).
            uid: object.metadata.uid,
            annotations: { [NOTIFIED_ANNOTATION]: value },
          },
        },
      },
      MERGE_PATCH,
    );
    this.sent.set(`${object.metadata.namespace ?? ''}/${object.metadata.name ?? ''}`, { uid, value });
  }
}

export interface ApprovalNotifierControllerOptions {
  readonly kubeConfig: KubeConfig;
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;
  readonly events: EventRecorder;
  readonly webhook: ApprovalWebhookOptions;
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  readonly namespace?: string;
  readonly clock?: Clock;
}

/** The leader's notifier: one worker, so notifications leave in the order requests change. */
export function createApprovalNotifierController(options: ApprovalNotifierControllerOptions): Controller {
  const { kubeConfig, custom, namespace } = options;
  const informer = customObjectInformer(kubeConfig, custom, PLURAL, namespace);
  const logger = options.logger.child({ controller: APPROVAL_NOTIFIER_NAME });
  const source = new InformerSource({
    name: PLURAL,
    informer,
    logger,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  const reconciler = new ApprovalNotifier({
    core: options.core,
    custom,
    requests: cacheOf<ApprovalRequest>(informer),
    events: options.events,
    webhook: options.webhook,
    metrics: options.metrics,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  logger.info('approval webhook enabled', {
    url: redactUrl(options.webhook.url),
    secret: `${options.webhook.secret.namespace}/${options.webhook.secret.name}`,
  });
  return new Controller({
    name: APPROVAL_NOTIFIER_NAME,
    reconciler,
    sources: [source],
    logger: options.logger,
    metrics: options.metrics,
    workers: 1,
    rateLimiter: new ExponentialBackoffRateLimiter({
      baseDelayMs: options.webhook.retryBaseMs ?? 1_000,
      maxDelayMs: options.webhook.retryMaxMs ?? 60_000,
    }),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
}

/** The URL without user info or query (which may carry a token). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}
