// Writes exchange records into TokenExchangeLog objects: one hash-chained stream per operator replica
// process, in bounded parts. A record gets its seq, prevHash and hash when it is appended (the issued token
// carries that hash), and the exchange answers only once the record is in the API server: records that
// arrive while a write is in flight share the next write (group commit), so concurrent exchanges cost one
// API call. Appends use a JSON Patch guarded by the resourceVersion, so a retry after a lost answer never
// writes a record twice. Every write also sets the head, signed with the exchange's signing key.
import { randomBytes } from 'node:crypto';
import { ApiException, PatchStrategy, setHeaderOptions, type CustomObjectsApi } from '@kubernetes/client-node';
import { CompactSign, importJWK, type JWK } from 'jose';
import {
  API_VERSION,
  EXCHANGE_LOG_HEAD_TYPE,
  EXCHANGE_LOG_MAX_RECORDS,
  EXCHANGE_RECORD_VERSION,
  EXCHANGE_STREAM_LABEL,
  GENESIS_HASH,
  GROUP,
  VERSION,
  canonicalExchangeLogHead,
  hashExchangeRecord,
  type ExchangeRecord,
  type TokenExchangeLog,
  type TokenExchangeLogSpec,
} from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import { SIGNING_ALGORITHM } from './signing-keys.ts';

export const EXCHANGE_LOG_PLURAL = 'tokenexchangelogs';
/**
 * A part is continued after this many records or before its records pass this many bytes. Far below the
 * CRD's cap (EXCHANGE_LOG_MAX_RECORDS): every append makes the API server decode and validate the whole
 * object (schema, and the append-only CEL rule comparing every old record), and an exchange waits for its
 * append. Measured on the 2-core machine (bench/README.md): p50 per exchange 27 ms with 16-record parts,
 * 72 ms with 64. More, smaller objects are the price: one per 16 exchanges.
 */
const MAX_PART_RECORDS = 16;
const MAX_PART_BYTES = 64 * 1024;
const JSON_PATCH = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export type RecordContent = Omit<ExchangeRecord, 'v' | 'seq' | 'time' | 'prevHash' | 'hash' | 'replica'>;

export class EvidenceUnavailable extends Error {
  override name = 'EvidenceUnavailable';
}

export interface ExchangeLogOptions {
  readonly custom: CustomObjectsApi;
  readonly namespace: string;
  /** iss of the exchange. */
  readonly issuer: string;
  readonly replica: string;
  /** The key that signs heads (the exchange's current signing key). */
  readonly signer: () => { readonly kid: string; readonly privateJwk: JWK };
  readonly logger: Logger;
  /** How long an exchange waits for its record to be written before it fails. Default 10 s. */
  readonly writeTimeoutMs?: number;
  readonly now?: () => number;
}

interface Pending {
  readonly record: ExchangeRecord;
  readonly bytes: number;
  resolve(): void;
  reject(err: Error): void;
  settled: boolean;
}

interface Part {
  readonly name: string;
  readonly index: number;
  resourceVersion: string;
  records: number;
  bytes: number;
}

function code(err: unknown): number | undefined {
  return err instanceof ApiException ? (err as ApiException<unknown>).code : undefined;
}

export class ExchangeLog {
  readonly stream = randomBytes(6).toString('hex');
  private readonly options: ExchangeLogOptions;
  private readonly now: () => number;
  private seq = 0;
  private prevHash = GENESIS_HASH;
  private readonly queue: Pending[] = [];
  private part: Part | undefined;
  private writing: Promise<void> | undefined;
  private backoffMs = 0;
  private stopped = false;
  private phases: Promise<void> = Promise.resolve();

  constructor(options: ExchangeLogOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
  }

  /** Names of this stream's parts so far (newest last). */
  get partName(): string | undefined {
    return this.part?.name;
  }

  /**
   * Seals the next record of the stream and queues it. `durable` resolves once it is stored, and rejects
   * (EvidenceUnavailable) if that takes longer than the write timeout: the caller must then not hand out
   * the token. The record stays queued and is written when the API server answers again.
   */
  append(content: RecordContent): { record: ExchangeRecord; durable: Promise<void> } {
    if (this.stopped) throw new EvidenceUnavailable('the exchange log is stopped');
    const unhashed = {
      v: EXCHANGE_RECORD_VERSION,
      seq: this.seq + 1,
      time: new Date(this.now()).toISOString(),
      ...content,
      replica: this.options.replica,
      prevHash: this.prevHash,
    };
    const record: ExchangeRecord = { ...unhashed, hash: hashExchangeRecord(unhashed) };
    this.seq = record.seq;
    this.prevHash = record.hash;
    let resolve!: () => void;
    let reject!: (err: Error) => void;
    const durable = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const pending: Pending = {
      record,
      bytes: Buffer.byteLength(JSON.stringify(record)),
      resolve: () => {
        pending.settled = true;
        resolve();
      },
      reject: (err) => {
        pending.settled = true;
        reject(err);
      },
      settled: false,
    };
    this.queue.push(pending);
    const timer = setTimeout(() => {
      if (!pending.settled) {
        pending.reject(new EvidenceUnavailable('the exchange record could not be written to the API server in time'));
      }
    }, this.options.writeTimeoutMs ?? 10_000);
    timer.unref();
    void durable.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    this.kick();
    return { record, durable };
  }

  /** Writes what is queued, then marks the last part Closed. */
  async stop(): Promise<void> {
    this.stopped = true;
    const deadline = this.now() + 10_000;
    while (this.queue.length > 0 && this.now() < deadline) {
      this.kick();
      await (this.writing ?? new Promise((r) => setTimeout(r, 50)));
    }
    for (const p of this.queue.splice(0)) {
      if (!p.settled) p.reject(new EvidenceUnavailable('the exchange log stopped before the record was written'));
    }
    if (this.part !== undefined) this.phaseLater(this.part.name, 'Closed');
    await this.phases;
  }

  /** Status updates in order (an earlier Active never lands after Closed), off the exchange's path. */
  private phaseLater(name: string, phase: 'Active' | 'Continued' | 'Closed'): void {
    this.phases = this.phases.then(() => this.setPhase(name, phase)).catch(() => undefined);
  }

  private kick(): void {
    if (this.writing !== undefined || this.queue.length === 0) return;
    this.writing = this.writeBatch()
      .then(
        () => {
          this.backoffMs = 0;
        },
        async (err: unknown) => {
          this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 200), 5000);
          this.options.logger.warn('exchange log write failed; retrying', {
            error: err,
            stream: this.stream,
            retryInMs: this.backoffMs,
          });
          await new Promise((r) => setTimeout(r, this.backoffMs));
        },
      )
      .finally(() => {
        this.writing = undefined;
        if (this.queue.length > 0) this.kick();
      });
  }

  /** One API write: the queued records that fit the current part (or a new part). */
  private async writeBatch(): Promise<void> {
    let part = this.part;
    const first = this.queue[0];
    if (first === undefined) return;
    if (part !== undefined && (part.records >= MAX_PART_RECORDS || part.bytes + first.bytes > MAX_PART_BYTES)) {
      // Status is not evidence: written beside the appends, never delaying an exchange.
      this.phaseLater(part.name, 'Continued');
      part = undefined;
    }
    const room = Math.min(MAX_PART_RECORDS, EXCHANGE_LOG_MAX_RECORDS) - (part?.records ?? 0);
    let bytes = part?.bytes ?? 0;
    const batch: Pending[] = [];
    for (const p of this.queue) {
      if (batch.length >= room || (batch.length > 0 && bytes + p.bytes > MAX_PART_BYTES)) break;
      batch.push(p);
      bytes += p.bytes;
    }
    const last = batch.at(-1)?.record;
    if (last === undefined) return;
    const records = batch.map((p) => p.record);
    if (part === undefined) {
      const index = this.part === undefined ? 0 : this.part.index + 1;
      const name = `tx-${this.stream}-${String(index)}`;
      const head = await this.signHead(name, last);
      const body: TokenExchangeLog = {
        apiVersion: API_VERSION,
        kind: 'TokenExchangeLog',
        metadata: {
          name,
          namespace: this.options.namespace,
          labels: { [EXCHANGE_STREAM_LABEL]: this.stream, 'app.kubernetes.io/managed-by': 'chaperone-operator' },
        },
        spec: {
          stream: this.stream,
          part: index,
          ...(this.part === undefined ? {} : { previousPart: this.part.name }),
          issuer: this.options.issuer,
          replica: this.options.replica,
          startTime: new Date(this.now()).toISOString(),
          records,
          head,
        },
      };
      let created: TokenExchangeLog;
      try {
        created = (await this.options.custom.createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: this.options.namespace,
          plural: EXCHANGE_LOG_PLURAL,
          body,
        })) as TokenExchangeLog;
      } catch (err) {
        // A lost answer to a create that succeeded: the object is there with exactly these records.
        if (code(err) !== 409) throw err;
        created = await this.read(name);
        if (created.spec.records.at(-1)?.hash !== last.hash) throw err;
      }
      this.part = {
        name,
        index,
        resourceVersion: created.metadata.resourceVersion ?? '',
        records: records.length,
        bytes,
      };
      this.phaseLater(name, 'Active');
    } else {
      const head = await this.signHead(part.name, last);
      const ops: unknown[] = [{ op: 'test', path: '/metadata/resourceVersion', value: part.resourceVersion }];
      for (const r of records) ops.push({ op: 'add', path: '/spec/records/-', value: r });
      ops.push({ op: 'add', path: '/spec/head', value: head });
      let updated: TokenExchangeLog;
      try {
        updated = (await this.options.custom.patchNamespacedCustomObject(
          {
            group: GROUP,
            version: VERSION,
            namespace: this.options.namespace,
            plural: EXCHANGE_LOG_PLURAL,
            name: part.name,
            body: ops,
          },
          JSON_PATCH,
        )) as TokenExchangeLog;
      } catch (err) {
        // The part was deleted under us: continue in a new part that names it, so the hole stays evident
        // (`kubectl chaperone token log --verify`) and exchanges do not fail for ever.
        if (code(err) === 404) {
          part.records = Number.MAX_SAFE_INTEGER;
          this.options.logger.warn('exchange log part deleted; continuing in a new part', { part: part.name });
          throw err;
        }
        // The test op failed: perhaps our own earlier write landed although its answer was lost.
        if (code(err) !== 422 && code(err) !== 409) throw err;
        updated = await this.read(part.name);
        if (updated.spec.records.at(-1)?.hash !== last.hash) {
          const stored = new Set(updated.spec.records.map((r) => r.hash));
          const done = this.queue.filter((p) => stored.has(p.record.hash)).length;
          for (const p of this.queue.splice(0, done)) p.resolve();
          part.resourceVersion = updated.metadata.resourceVersion ?? '';
          part.records = updated.spec.records.length;
          throw err;
        }
      }
      part.resourceVersion = updated.metadata.resourceVersion ?? '';
      part.records += records.length;
      part.bytes = bytes;
    }
    for (const p of this.queue.splice(0, batch.length)) p.resolve();
  }

  private async read(name: string): Promise<TokenExchangeLog> {
    return (await this.options.custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: this.options.namespace,
      plural: EXCHANGE_LOG_PLURAL,
      name,
    })) as TokenExchangeLog;
  }

  private async signHead(name: string, last: ExchangeRecord): Promise<NonNullable<TokenExchangeLogSpec['head']>> {
    const signer = this.options.signer();
    const payload = canonicalExchangeLogHead({
      typ: EXCHANGE_LOG_HEAD_TYPE,
      stream: this.stream,
      object: `${this.options.namespace}/${name}`,
      seq: last.seq,
      hash: last.hash,
      signedAt: new Date(this.now()).toISOString(),
    });
    const key = await importJWK(signer.privateJwk, SIGNING_ALGORITHM);
    const signature = await new CompactSign(new TextEncoder().encode(payload))
      .setProtectedHeader({ alg: SIGNING_ALGORITHM, kid: signer.kid, typ: 'chaperone-exchange-head+jws' })
      .sign(key);
    return { seq: last.seq, hash: last.hash, signature, keyId: signer.kid };
  }

  private async setPhase(name: string, phase: 'Active' | 'Continued' | 'Closed'): Promise<void> {
    await this.options.custom.patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: this.options.namespace,
        plural: EXCHANGE_LOG_PLURAL,
        name,
        body: { status: { phase } },
      },
      MERGE_PATCH,
    );
  }
}
