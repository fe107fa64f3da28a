// Where a controller's keys come from. Event handlers only enqueue namespace/name keys; the reconciler
// reads the object itself. An informer source maps each added, updated or deleted object to keys: the
// object's own key for the primary resource ("For"), the controlling owner's key for owned objects
// ("Owns"), as controller-runtime's handler.EnqueueRequestForObject / EnqueueRequestForOwner do.
import type { Informer, KubernetesObject, ObjectCache } from '@kubernetes/client-node';
import type { Logger } from '../observability/logger.ts';
import { systemClock, type Clock, type TimerHandle } from './clock.ts';
import { objectKey } from './reconcile.ts';

export interface Source {
  /** Starts delivering keys; resolves once the source's cache holds a complete list (has synced). */
  start(enqueue: (key: string) => void, signal: AbortSignal): Promise<void>;
  stop(): Promise<void>;
  /** Keys of every object in the cache, for periodic resync. Only primary sources provide it. */
  keys?(): Iterable<string>;
}

/** The object's own namespace/name. */
export function keyOfObject(obj: KubernetesObject): string[] {
  const name = obj.metadata?.name;
  return name === undefined ? [] : [objectKey(obj.metadata?.namespace, name)];
}

/** The key of the controlling owner of the given kind (same namespace), if there is one. */
export function keyOfOwner(apiVersion: string, kind: string): (obj: KubernetesObject) => string[] {
  return (obj) => {
    const owner = obj.metadata?.ownerReferences?.find(
      (ref) => ref.controller === true && ref.kind === kind && ref.apiVersion === apiVersion,
    );
    return owner === undefined ? [] : [objectKey(obj.metadata?.namespace, owner.name)];
  };
}

export interface InformerSourceOptions<T extends KubernetesObject> {
  /** For logs. */
  readonly name: string;
  readonly informer: Informer<T> & ObjectCache<T> & { latestResourceVersion?(): string };
  /** Keys to enqueue for an object. Default keyOfObject. */
  readonly map?: (obj: T) => readonly string[];
  /** Whether keys() lists the cache for resync (the primary resource). Default true when map is absent. */
  readonly primary?: boolean;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** First restart delay after a list or watch error; doubles up to 30 s. Default 1000. */
  readonly restartDelayMs?: number;
}

const MAX_RESTART_DELAY_MS = 30_000;

/**
 * Wraps a client-node informer (ListWatch). ListWatch re-watches by itself after a normal end, a client
 * timeout or a 410 Gone, but after any other list or watch error it reports the error and stops; this
 * source restarts it with exponential backoff, and reports synced once a list has succeeded.
 */
export class InformerSource<T extends KubernetesObject> implements Source {
  private readonly options: InformerSourceOptions<T>;
  private readonly clock: Clock;
  private stopped = false;
  private failures = 0;
  private restartTimer: TimerHandle | undefined;
  private restarting = false;
  private markSynced: (() => void) | undefined;

  constructor(options: InformerSourceOptions<T>) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  get cache(): ObjectCache<T> {
    return this.options.informer;
  }

  keys(): Iterable<string> {
    if (!(this.options.primary ?? this.options.map === undefined)) return [];
    return this.options.informer.list().flatMap((obj) => keyOfObject(obj));
  }

  async start(enqueue: (key: string) => void, signal: AbortSignal): Promise<void> {
    const { informer, logger } = this.options;
    const map = this.options.map ?? keyOfObject;
    const handler = (obj: T) => {
      for (const key of map(obj)) enqueue(key);
    };
    informer.on('add', handler);
    informer.on('update', handler);
    informer.on('delete', handler);
    informer.on('error', (err: unknown) => {
      if (this.stopped) return;
      this.failures++;
      const delay = Math.min((this.options.restartDelayMs ?? 1000) * 2 ** (this.failures - 1), MAX_RESTART_DELAY_MS);
      logger.warn('list/watch failed; restarting', { source: this.options.name, error: describe(err), delayMs: delay });
      this.scheduleRestart(delay);
    });
    const synced = new Promise<void>((resolve) => {
      this.markSynced = resolve;
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await this.run();
    await synced;
  }

  private scheduleRestart(delayMs: number): void {
    this.restartTimer?.cancel();
    this.restartTimer = this.clock.setTimer(() => {
      void this.run();
    }, delayMs);
  }

  /** One list (when needed) and watch; ListWatch reports failures through its error callbacks. */
  private async run(): Promise<void> {
    if (this.stopped || this.restarting) return;
    this.restarting = true;
    try {
      await this.options.informer.start();
    } catch (err) {
      // Failures before the request is sent (credentials, URL) reject start() instead of reporting an error.
      this.failures++;
      this.options.logger.warn('list/watch could not start; retrying', {
        source: this.options.name,
        error: describe(err),
      });
      this.scheduleRestart(Math.min((this.options.restartDelayMs ?? 1000) * 2 ** this.failures, MAX_RESTART_DELAY_MS));
      return;
    } finally {
      this.restarting = false;
    }
    const resourceVersion = this.options.informer.latestResourceVersion?.() ?? 'unknown';
    if (resourceVersion !== '' && !this.isStopped()) {
      this.failures = 0;
      this.markSynced?.();
    }
  }

  /** A method so TypeScript does not narrow the flag across awaits. */
  private isStopped(): boolean {
    return this.stopped;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.restartTimer?.cancel();
    await this.options.informer.stop();
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null) {
    const e = err as { message?: unknown; statusCode?: unknown; code?: unknown };
    if (typeof e.message === 'string') return e.message;
    return JSON.stringify(err);
  }
  return String(err);
}
