// Where the Session writer appends records when Sessions keep only signed heads (docs/evidence-store.md):
// the interface the writer needs and its PostgreSQL implementation with node-postgres. The sidecar logs in
// as the store's writer role, which may INSERT (and so COPY) and call the counters function and nothing
// else. Records of a live session go in with COPY; a batch that may hold records already there (a replay
// after a restart, a retry after an unknown outcome) with an insert that skips them, so the writer may
// retry any batch.
import { readFileSync } from 'node:fs';
import { finished } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import {
  EVIDENCE_COPY_SQL,
  EVIDENCE_COUNTERS_FUNCTION,
  EVIDENCE_INSERT_SQL,
  evidenceCopyRows,
  evidenceRow,
  type AuditRecord,
  type EvidenceCounters,
  type EvidenceLocation,
} from '@chaperone/api';
import type { RecordFields } from './record-fields.ts';

/**
 * One record to append, with its canonical text (the text hashed, stored as it is): a whole record may come
 * without it (then `canonical` makes it), the fields of one (record-fields.ts) only with it.
 */
export type EvidenceEntry =
  { readonly record: AuditRecord; readonly text?: string } | { readonly record: RecordFields; readonly text: string };

function entryText(e: EvidenceEntry, canonical: (r: AuditRecord) => string): string {
  return e.text === undefined ? canonical(e.record) : e.text;
}

/** The session the records belong to, and where its Session object and pod are. */
export interface EvidenceSession {
  readonly sessionId: string;
  /** Namespace of the Session object. */
  readonly namespace: string;
  readonly podNamespace: string;
  readonly pod: string;
  readonly resource: string;
}

export interface EvidenceStore {
  readonly location: EvidenceLocation;
  /**
   * Appends records of one session. With `mayExist` (a replay, a retry after an unknown outcome) records
   * already stored are skipped; without, none of them may be there yet (the cheaper path; a record already
   * there makes the whole batch fail, and the caller retries with `mayExist`). Throws when the store is
   * unreachable.
   */
  append(
    session: EvidenceSession,
    entries: readonly EvidenceEntry[],
    canonical: (r: AuditRecord) => string,
    mayExist: boolean,
  ): Promise<void>;
  /** Counters of a session's stored records with seq ≤ `throughSeq` (after a restart, to resume status.counters). */
  counters(sessionId: string, throughSeq: number): Promise<EvidenceCounters>;
  close(): Promise<void>;
}

export interface PostgresEvidenceStoreOptions {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  /** The writer role. */
  readonly user: string;
  /** File holding the writer role's password (a mounted Secret key); read at every new connection. */
  readonly passwordFile?: string;
  /** CA bundle to verify the server's certificate; with it, TLS with verify-full. Read at every new connection. */
  readonly caFile?: string;
  /** Server name the certificate must carry. Default `host`. */
  readonly serverName?: string;
  /** Connections kept. Default 4 (the writer's concurrency). */
  readonly maxConnections?: number;
  /** Deadline of one statement, ms. Default 30 s. */
  readonly statementTimeoutMs?: number;
  /** Called on an error of an idle connection (the pool replaces it). */
  readonly onIdleError?: (err: Error) => void;
}

export class PostgresEvidenceStore implements EvidenceStore {
  readonly location: EvidenceLocation;
  private readonly pool: pg.Pool;

  constructor(options: PostgresEvidenceStoreOptions) {
    this.location = { type: 'postgres', location: `${options.host}:${String(options.port)}/${options.database}` };
    const passwordFile = options.passwordFile;
    this.pool = new pg.Pool({
      host: options.host,
      port: options.port,
      database: options.database,
      user: options.user,
      ...(passwordFile === undefined ? {} : { password: () => readFileSync(passwordFile, 'utf8').trim() }),
      ...(options.caFile === undefined ? {} : { ssl: rereadCaTls(options.caFile, options.serverName ?? options.host) }),
      max: options.maxConnections ?? 4,
      connectionTimeoutMillis: 10_000,
      idleTimeoutMillis: 60_000,
      query_timeout: options.statementTimeoutMs ?? 30_000,
      application_name: 'chaperone-sidecar',
    });
    this.pool.on('error', (err) => options.onIdleError?.(err));
  }

  async append(
    session: EvidenceSession,
    entries: readonly EvidenceEntry[],
    canonical: (r: AuditRecord) => string,
    mayExist: boolean,
  ): Promise<void> {
    if (entries.length === 0) return;
    if (mayExist) {
      await this.insert(session, entries, canonical);
      return;
    }
    // COPY: no array literals to build and escape here, none to parse on the server, no conflict check.
    const text = evidenceCopyRows(
      session,
      entries.map((e) => ({ row: evidenceRow(session.sessionId, e.record), text: entryText(e, canonical) })),
    );
    const client = await this.pool.connect();
    let broken: Error | undefined;
    // A checked-out client has no error listener (the pool's is for idle clients), and pg emits 'error'
    // on the client when its socket fails mid-COPY: unheard, that is an uncaught exception that ends the
    // sidecar. The COPY stream gets the same error and rejects below.
    const onSocketError = (err: Error) => {
      broken = err;
    };
    client.on('error', onSocketError);
    try {
      const copy = client.query(copyFrom(EVIDENCE_COPY_SQL));
      copy.end(Buffer.from(text, 'utf8'));
      await finished(copy);
    } catch (err) {
      // The connection may be mid-COPY: never hand it back to the pool.
      broken = err as Error;
      throw err;
    } finally {
      client.removeListener('error', onSocketError);
      client.release(broken ?? false);
    }
  }

  /** The idempotent insert: one statement, records already there (same session, seq, time) skipped. */
  private async insert(
    session: EvidenceSession,
    entries: readonly EvidenceEntry[],
    canonical: (r: AuditRecord) => string,
  ): Promise<void> {
    const seq: number[] = [];
    const time: string[] = [];
    const type: string[] = [];
    const result: (string | null)[] = [];
    const hash: string[] = [];
    const prevHash: string[] = [];
    const record: string[] = [];
    for (const e of entries) {
      const row = evidenceRow(session.sessionId, e.record);
      seq.push(row.seq);
      time.push(row.time);
      type.push(row.type);
      result.push(row.result);
      hash.push(row.hash);
      prevHash.push(row.prevHash);
      record.push(entryText(e, canonical));
    }
    await this.pool.query(EVIDENCE_INSERT_SQL, [
      session.sessionId,
      session.namespace,
      session.podNamespace,
      session.pod,
      session.resource,
      seq,
      time,
      type,
      result,
      hash,
      prevHash,
      record,
    ]);
  }

  async counters(sessionId: string, throughSeq: number): Promise<EvidenceCounters> {
    const { rows } = await this.pool.query<Record<keyof EvidenceCounters, string>>(
      `select * from ${EVIDENCE_COUNTERS_FUNCTION}($1, $2)`,
      [sessionId, throughSeq],
    );
    const row = rows[0];
    const n = (v: string | undefined) => Number(v ?? 0);
    return {
      commands: n(row?.commands),
      allowed: n(row?.allowed),
      denied: n(row?.denied),
      held: n(row?.held),
      errors: n(row?.errors),
    };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/**
 * TLS options whose CA is read from `caFile` at every new connection, as the password file is, so a rotated
 * CA (a mounted Secret updated in place) reaches new connections without a restart. node-postgres copies
 * these options into tls.connect per connection (Object.assign, which calls the getter); a file that
 * cannot be read then keeps the last CA read (an error there would be thrown from a socket callback), and
 * it must be readable at start.
 */
function rereadCaTls(caFile: string, servername: string): { readonly ca: string; readonly servername: string } {
  let last = readFileSync(caFile, 'utf8');
  return {
    servername,
    get ca() {
      try {
        last = readFileSync(caFile, 'utf8');
      } catch {
        // Keep the last CA; the connection is verified against it (fails closed if the server moved on).
      }
      return last;
    },
  };
}
