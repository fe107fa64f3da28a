// Operator-signed checkpoints (api/src/audit-signature.ts): at an interval, the leader lists every Session
// in scope and signs a statement of each object's signed head, linked to the previous checkpoint by its
// digest. The newest checkpoint is kept in a ConfigMap for `kubectl chaperone verify`; every checkpoint is
// also logged as one JSON line, so a log shipper carries them out of the cluster, where nobody with
// cluster rights can take them back. Against a checkpoint, deleting or rolling back any Session it saw,
// the pod's newest included, is evident (docs/audit.md, "Trust model").
import type { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import {
  AUDIT_CHECKPOINT_KEY,
  AUDIT_CHECKPOINT_NAME,
  CHECKPOINT_TYPE,
  GENESIS_HASH,
  checkpointDigest,
  signCheckpoint,
  verifyCheckpoint,
  type Checkpoint,
  type CheckpointEntry,
} from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import { listSessions } from './list-sessions.ts';
import type { OperatorMetrics } from '../observability/metrics.ts';
import type { AuditAuthority } from './audit-authority.ts';

export const DEFAULT_CHECKPOINT_INTERVAL_MS = 300_000;

export interface CheckpointWriterOptions {
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;
  readonly authority: AuditAuthority;
  /** Where the checkpoint ConfigMap lives (the operator's namespace). */
  readonly storeNamespace: string;
  /** Sessions of this namespace only; default every namespace. */
  readonly namespace?: string;
  readonly intervalMs?: number;
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  readonly now?: () => Date;
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown };
  return typeof e.code === 'number' ? e.code : undefined;
}

export class CheckpointWriter {
  private readonly options: CheckpointWriterOptions;
  private readonly now: () => Date;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private last: { index: number; digest: string; entriesKey: string } | undefined;

  constructor(options: CheckpointWriterOptions) {
    this.options = options;
    this.now = options.now ?? (() => new Date());
  }

  /** Continues the chain of the stored checkpoint (when this authority signed it) and writes one now. */
  async start(): Promise<void> {
    try {
      await this.resume();
    } catch (err) {
      // The chain restarts at index 1; verifiers see a new chain, not a broken one.
      this.options.logger.error('could not read the stored audit checkpoint', { error: err });
    }
    await this.tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** Writes a checkpoint now unless nothing changed since the last one; returns its JWS when written. */
  async writeCheckpoint(): Promise<string | undefined> {
    const entries = await this.listHeads();
    const entriesKey = JSON.stringify(entries);
    if (this.last?.entriesKey === entriesKey) {
      this.options.metrics.checkpoints.inc({ result: 'unchanged' });
      return undefined;
    }
    const checkpoint: Checkpoint = {
      typ: CHECKPOINT_TYPE,
      time: this.now().toISOString(),
      index: (this.last?.index ?? 0) + 1,
      previous: this.last?.digest ?? GENESIS_HASH,
      namespaces: this.options.namespace === undefined ? [] : [this.options.namespace],
      sessions: entries,
    };
    const jws = await signCheckpoint(checkpoint, this.options.authority.privateJwk);
    await this.store(jws);
    this.last = { index: checkpoint.index, digest: checkpointDigest(jws), entriesKey };
    this.options.metrics.checkpoints.inc({ result: 'written' });
    this.options.metrics.checkpointSessions.set(entries.length);
    this.options.logger.info('audit checkpoint', {
      index: checkpoint.index,
      objects: entries.length,
      digest: this.last.digest,
      checkpoint: jws,
    });
    return jws;
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    this.running = this.writeCheckpoint().then(
      () => undefined,
      (err: unknown) => {
        this.options.metrics.checkpoints.inc({ result: 'error' });
        this.options.logger.error('audit checkpoint failed; retrying at the next interval', { error: err });
      },
    );
    await this.running;
    this.running = undefined;
    // stop() may have run while the checkpoint was written.
    if (!(this.stopped as boolean)) {
      this.timer = setTimeout(() => void this.tick(), this.options.intervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS);
      this.timer.unref();
    }
  }

  private async resume(): Promise<void> {
    let stored: string | undefined;
    try {
      const cm = await this.options.core.readNamespacedConfigMap({
        namespace: this.options.storeNamespace,
        name: AUDIT_CHECKPOINT_NAME,
      });
      stored = cm.data?.[AUDIT_CHECKPOINT_KEY];
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
    if (stored === undefined) return;
    try {
      const checkpoint = await verifyCheckpoint(stored, [this.options.authority.publicJwk]);
      this.last = { index: checkpoint.index, digest: checkpointDigest(stored), entriesKey: '' };
    } catch (err) {
      // Not ours (another authority key) or damaged: start a new chain and say so.
      this.options.logger.warn('stored audit checkpoint does not verify with this authority; starting a new chain', {
        error: err,
      });
    }
  }

  private async listHeads(): Promise<CheckpointEntry[]> {
    const items = await listSessions(this.options.custom, this.options.namespace);
    return items
      .filter((s) => s.spec.head !== undefined)
      .map((s) => ({
        object: `${s.metadata.namespace ?? ''}/${s.metadata.name ?? ''}`,
        sessionId: s.spec.sessionId,
        part: s.spec.part,
        seq: s.spec.head?.seq ?? 0,
        hash: s.spec.head?.hash ?? '',
      }))
      .sort((a, b) => a.object.localeCompare(b.object));
  }

  private async store(jws: string): Promise<void> {
    const { core, storeNamespace } = this.options;
    const body = {
      metadata: { name: AUDIT_CHECKPOINT_NAME, labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' } },
      data: { [AUDIT_CHECKPOINT_KEY]: jws },
    };
    try {
      await core.replaceNamespacedConfigMap({ namespace: storeNamespace, name: AUDIT_CHECKPOINT_NAME, body });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      await core.createNamespacedConfigMap({ namespace: storeNamespace, body });
    }
  }
}
