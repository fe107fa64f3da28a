// Kubernetes Events for what a human should notice (`kubectl describe` shows them under the object).
// core/v1 Events, because every kubectl version lists them and they need no MicroTime. Recording is best
// effort, as in client-go: a failed Event is logged and never fails a reconcile.
import { randomBytes } from 'node:crypto';
import type { CoreV1Api } from '@kubernetes/client-node';
import type { Logger } from '../observability/logger.ts';
import { systemClock, type Clock } from './clock.ts';

export interface EventTarget {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name?: string;
    readonly namespace?: string;
    readonly uid?: string;
    readonly resourceVersion?: string;
  };
}

export type EventType = 'Normal' | 'Warning';

export interface EventRecorder {
  record(target: EventTarget, type: EventType, reason: string, message: string): Promise<void>;
}

/** The API server's limit on an Event message is 1 KiB in events.k8s.io; core/v1 is looser, keep both happy. */
const MAX_MESSAGE = 1024;

export function createEventRecorder(options: {
  readonly client: CoreV1Api;
  /** reportingComponent and source.component, e.g. chaperone-operator. */
  readonly component: string;
  /** reportingInstance, e.g. the leader-election identity. */
  readonly instance: string;
  readonly logger: Logger;
  readonly clock?: Clock;
}): EventRecorder {
  const clock = options.clock ?? systemClock;
  return {
    async record(target, type, reason, message) {
      const { name, namespace } = target.metadata;
      if (name === undefined || namespace === undefined) return;
      const now = new Date(clock.now());
      const text = message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE - 3)}...` : message;
      try {
        await options.client.createNamespacedEvent({
          namespace,
          body: {
            metadata: { name: `${name.slice(0, 200)}.${randomBytes(8).toString('hex')}`, namespace },
            involvedObject: {
              apiVersion: target.apiVersion,
              kind: target.kind,
              name,
              namespace,
              ...(target.metadata.uid === undefined ? {} : { uid: target.metadata.uid }),
              ...(target.metadata.resourceVersion === undefined
                ? {}
                : { resourceVersion: target.metadata.resourceVersion }),
            },
            type,
            reason,
            message: text,
            count: 1,
            firstTimestamp: now,
            lastTimestamp: now,
            source: { component: options.component },
            reportingComponent: options.component,
            reportingInstance: options.instance,
          },
        });
      } catch (err) {
        options.logger.warn('could not record event', {
          reason,
          object: `${namespace}/${name}`,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    },
  };
}
