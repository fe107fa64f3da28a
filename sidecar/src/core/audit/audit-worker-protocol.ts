// What the sidecar's main thread and its audit worker thread (audit-worker.ts) say to each other: the
// worker's configuration and the messages both ways. Plain data only (structured clone): store
// credentials travel as file paths, read in the worker; the signing key as its JWK, never logged.
import type { JWK } from 'jose';
import type { LogLevel } from '../observability/logger.ts';
import type { PostgresEvidenceStoreOptions } from './evidence-store.ts';
import type { OperatorSessionStoreOptions } from './operator-session-store.ts';
import type { KubernetesSessionStoreOptions, StoreEvent } from './session-store.ts';
import type { SessionWriterOptions, SessionWriterTuning } from './session-writer.ts';

/** Where the worker writes Sessions and records: the stores it builds itself (the sidecar's configuration). */
export interface AuditWorkerStores {
  readonly sessionStore:
    | { readonly kind: 'kubernetes'; readonly options: KubernetesSessionStoreOptions }
    | { readonly kind: 'operator'; readonly options: OperatorSessionStoreOptions };
  /** Records in this evidence store, Session objects keep only heads (docs/evidence-store.md). */
  readonly evidenceStore?: Omit<PostgresEvidenceStoreOptions, 'onIdleError'>;
  /** The worker's structured logs (stderr, as the main thread's). */
  readonly log: { readonly level: LogLevel; readonly base: Readonly<Record<string, unknown>> };
}

/** workerData of the audit worker. */
export interface AuditWorkerData {
  readonly stores: AuditWorkerStores;
  readonly signingKey: {
    readonly keyId: string;
    readonly privateJwk: JWK & { kid: string };
    readonly publicJwk: JWK & { kid: string };
    readonly certificate?: string;
  };
  readonly pod: SessionWriterOptions['pod'];
  readonly flushIntervalMs: number;
  readonly writer: SessionWriterTuning;
  /**
   * Decisions without an outcome are held back until the outcome entry that merges into them, another record
   * of their session, or a release: the main thread may still amend them (false when a JSON-lines export
   * gets every record too: the durable sink then never amends).
   */
  readonly holdDecisions: boolean;
}

export type ToWorker =
  | {
      readonly t: 'entries';
      /** Entries read back from the spool of an earlier process (id, payload, id, payload, …): before any frame. */
      readonly replay: readonly (string | number)[];
      /**
       * The spool's frames written since the last message, in id order, as in its segment files (spool.ts);
       * their buffer is transferred, not copied. Record entries are `{"s": origin, "r": record}`, outcome
       * entries `{"i": sessionId, "m": SpooledOutcome}` (spool-entries.ts).
       */
      readonly frames?: Uint8Array;
      /**
       * Open decisions that will not be amended (session id, seq, …), after the frames (which may hold them).
       * Flat arrays: cheaper to clone than an object per item.
       */
      readonly releases: readonly (string | number)[];
    }
  /** Every entry of the earlier process's spool was passed (after the last `replay`): see ReplayedSpoolEntries.end. */
  | { readonly t: 'replayed' }
  | { readonly t: 'flush'; readonly n: number }
  | { readonly t: 'close'; readonly timeoutMs: number }
  | { readonly t: 'event'; readonly event: Omit<StoreEvent, 'involved'> }
  | { readonly t: 'certificate'; readonly certificate: string };

/** The writer's metric updates since the last message (the main thread applies them to its registry). */
export interface WorkerMetrics {
  readonly pending: number;
  readonly flushed: number;
  readonly failures: Readonly<Record<string, number>>;
  readonly objects: Readonly<Record<string, number>>;
  readonly storeSeconds: readonly number[];
}

export type FromWorker =
  | { readonly t: 'ready' }
  | { readonly t: 'ack'; readonly id: number }
  | { readonly t: 'metrics'; readonly metrics: WorkerMetrics }
  | { readonly t: 'flushed'; readonly n: number }
  | { readonly t: 'closed'; readonly emptied: boolean; readonly pending: number };
