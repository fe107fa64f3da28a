// Leader election on a coordination.k8s.io/v1 Lease, after client-go's tools/leaderelection: a candidate
// takes the Lease when it is free or its holder has not renewed it for leaseDuration (measured on this
// replica's clock, from when it last saw the Lease change, so clock skew between replicas does not
// matter); the leader renews every retryPeriod and gives up when it could not renew for renewDeadline.
// Writes carry the Lease's resourceVersion, so two candidates never both win. On a clean stop the leader
// releases the Lease (empty holder) so a standby takes over at once instead of after leaseDuration.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { ApiException, V1MicroTime, type CoordinationV1Api, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from '../observability/logger.ts';
import { systemClock, sleep, type Clock } from './clock.ts';

export interface LeaderElectionOptions {
  readonly client: CoordinationV1Api;
  /** Namespace of the Lease. */
  readonly namespace: string;
  /** Name of the Lease. */
  readonly name: string;
  /** Unique per replica. Default: hostname plus a random suffix. */
  readonly identity?: string;
  /** How long a Lease stays valid after its last renewal. Default 15 000 ms (client-go). */
  readonly leaseDurationMs?: number;
  /** How long the leader keeps trying to renew before it gives up. Default 10 000 ms. */
  readonly renewDeadlineMs?: number;
  /** Time between attempts to acquire or renew. Default 2 000 ms. */
  readonly retryPeriodMs?: number;
  /** Release the Lease when stopped while leading. Default true. */
  readonly releaseOnStop?: boolean;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Called once this replica holds the Lease. */
  readonly onStartedLeading: () => void;
  /** Called when leadership ends (lost or stopped); the caller must stop its leader-only work. */
  readonly onStoppedLeading: (reason: 'lost' | 'stopped') => void;
  /** Called when another replica is seen holding the Lease. */
  readonly onNewLeader?: (identity: string) => void;
}

export function defaultIdentity(): string {
  return `${hostname()}_${randomBytes(4).toString('hex')}`;
}

function isStatus(err: unknown, code: number): boolean {
  return err instanceof ApiException && (err as ApiException<unknown>).code === code;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class LeaderElector {
  readonly identity: string;
  private readonly options: LeaderElectionOptions;
  private readonly clock: Clock;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly stopping = new AbortController();
  private leading = false;
  private observedVersion: string | undefined;
  private observedTime = 0;
  private observedHolder = '';
  private lease: V1Lease | undefined;
  private running: Promise<void> | undefined;

  constructor(options: LeaderElectionOptions) {
    this.options = options;
    this.identity = options.identity ?? defaultIdentity();
    this.clock = options.clock ?? systemClock;
    this.leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = options.retryPeriodMs ?? 2_000;
    if (!(this.leaseDurationMs > this.renewDeadlineMs && this.renewDeadlineMs > this.retryPeriodMs)) {
      throw new RangeError('leader election needs leaseDuration > renewDeadline > retryPeriod');
    }
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** The holder this replica last saw in the Lease ('' when free or unknown). */
  get observedLeader(): string {
    return this.observedHolder;
  }

  /** Starts campaigning in the background; resolves when the elector has stopped (lost or stopped). */
  start(): Promise<void> {
    this.running ??= this.run();
    return this.running;
  }

  /** Stops campaigning; the leader releases the Lease first (unless releaseOnStop is false). */
  async stop(): Promise<void> {
    this.stopping.abort();
    await this.running;
  }

  private async run(): Promise<void> {
    const { logger } = this.options;
    const signal = this.stopping.signal;
    // A method, not signal.aborted inline: TypeScript would narrow the property and miss that awaits change it.
    const stopped = () => signal.aborted;
    logger.info('leader election: campaigning', { lease: this.leaseRef(), identity: this.identity });
    // Acquire: keep trying every retryPeriod (with up to 20% jitter, as client-go) until it works.
    while (!stopped()) {
      if (await this.tryAcquireOrRenew()) break;
      await sleep(this.clock, this.retryPeriodMs * (1 + Math.random() * 0.2), signal);
    }
    if (stopped()) return;
    this.leading = true;
    logger.info('leader election: became leader', { lease: this.leaseRef(), identity: this.identity });
    this.options.onStartedLeading();
    // Renew: give up when no renewal succeeded within renewDeadline.
    let lastRenew = this.clock.now();
    while (!stopped()) {
      await sleep(this.clock, this.retryPeriodMs, signal);
      if (stopped()) break;
      if (await this.tryAcquireOrRenew()) {
        lastRenew = this.clock.now();
        continue;
      }
      if (
        this.clock.now() - lastRenew >= this.renewDeadlineMs ||
        (this.observedHolder !== this.identity && this.observedHolder !== '')
      ) {
        this.leading = false;
        logger.error('leader election: lost the lease', { lease: this.leaseRef(), identity: this.identity });
        this.options.onStoppedLeading('lost');
        return;
      }
    }
    if (this.options.releaseOnStop ?? true) await this.release();
    this.leading = false;
    this.options.onStoppedLeading('stopped');
  }

  private leaseRef(): string {
    return `${this.options.namespace}/${this.options.name}`;
  }

  private observe(lease: V1Lease): void {
    const version = lease.metadata?.resourceVersion;
    if (version !== this.observedVersion) {
      this.observedVersion = version;
      this.observedTime = this.clock.now();
    }
    const holder = lease.spec?.holderIdentity ?? '';
    if (holder !== this.observedHolder) {
      this.observedHolder = holder;
      if (holder !== '' && holder !== this.identity) this.options.onNewLeader?.(holder);
    }
    this.lease = lease;
  }

  /** One attempt; true when this replica holds a freshly written Lease afterwards. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { client, namespace, name, logger } = this.options;
    const now = this.clock.now();
    const durationSeconds = Math.ceil(this.leaseDurationMs / 1000);
    let current: V1Lease;
    try {
      current = await client.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (!isStatus(err, 404)) {
        logger.warn('leader election: reading the lease failed', { lease: this.leaseRef(), error: describe(err) });
        return false;
      }
      try {
        const created = await client.createNamespacedLease({
          namespace,
          body: {
            apiVersion: 'coordination.k8s.io/v1',
            kind: 'Lease',
            metadata: { name, namespace },
            spec: {
              holderIdentity: this.identity,
              leaseDurationSeconds: durationSeconds,
              acquireTime: new V1MicroTime(now),
              renewTime: new V1MicroTime(now),
              leaseTransitions: 0,
            },
          },
        });
        this.observe(created);
        return true;
      } catch (createErr) {
        if (!isStatus(createErr, 409)) {
          logger.warn('leader election: creating the lease failed', {
            lease: this.leaseRef(),
            error: describe(createErr),
          });
        }
        return false;
      }
    }
    this.observe(current);
    const spec = current.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const validForMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (holder !== '' && holder !== this.identity && this.observedTime + validForMs > now) return false;
    const renewing = holder === this.identity;
    try {
      const updated = await client.replaceNamespacedLease({
        name,
        namespace,
        body: {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          // resourceVersion makes the write conditional: a concurrent writer gets 409 Conflict.
          metadata: { name, namespace, resourceVersion: current.metadata?.resourceVersion ?? '' },
          spec: {
            holderIdentity: this.identity,
            leaseDurationSeconds: durationSeconds,
            acquireTime: renewing && spec.acquireTime !== undefined ? spec.acquireTime : new V1MicroTime(now),
            renewTime: new V1MicroTime(now),
            leaseTransitions: (spec.leaseTransitions ?? 0) + (renewing ? 0 : 1),
          },
        },
      });
      this.observe(updated);
      return true;
    } catch (err) {
      // 409: someone else wrote the Lease since we read it; the next round sees their write.
      if (!isStatus(err, 409)) {
        logger.warn('leader election: updating the lease failed', { lease: this.leaseRef(), error: describe(err) });
      }
      return false;
    }
  }

  /** Empties the holder so a standby need not wait for the Lease to expire. */
  private async release(): Promise<void> {
    const { client, namespace, name, logger } = this.options;
    const lease = this.lease;
    if (lease?.spec?.holderIdentity !== this.identity) return;
    const now = this.clock.now();
    try {
      await client.replaceNamespacedLease({
        name,
        namespace,
        body: {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion ?? '' },
          spec: {
            leaseTransitions: lease.spec.leaseTransitions ?? 0,
            holderIdentity: '',
            leaseDurationSeconds: 1,
            acquireTime: new V1MicroTime(now),
            renewTime: new V1MicroTime(now),
          },
        },
      });
      logger.info('leader election: released the lease', { lease: this.leaseRef(), identity: this.identity });
    } catch (err) {
      logger.warn('leader election: releasing the lease failed', { lease: this.leaseRef(), error: describe(err) });
    }
  }
}
