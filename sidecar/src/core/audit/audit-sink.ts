// Where audit records go. The sink is the one interface every engine writes through: JSON lines to a file
// or stdout here; the durable spool and the Session writer sit behind the same interface.
import { createWriteStream, type WriteStream } from 'node:fs';
import type { AuditRecord, KnownMember, ResourceType, SealedRecord, UnhashedRecord } from '@chaperone/api';
// The sealing module alone: the JSON-lines worker thread loads this file (not every schema of the package).
import { canonicalRecordText, compactRecordText, jcs } from '@chaperone/api/audit-seal';

/** Where a record comes from: the agent session, its resource and pod. Not part of the hashed record; the Session objects carry it. */
export interface RecordOrigin {
  readonly sessionId: string;
  readonly resource: string;
  /** The resource's type (spec.resource.type of its Session objects). */
  readonly resourceType: ResourceType;
  readonly namespace: string;
  readonly pod: string;
}

/** Thrown by AuditSink.write when a record cannot be accepted (NIST AU-5): the spool is full or the disk failed. */
export class AuditUnavailable extends Error {
  override name = 'AuditUnavailable';
  readonly reason: 'spool-full' | 'disk-error' | 'closed';
  constructor(reason: 'spool-full' | 'disk-error' | 'closed', message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}

/** The texts of a sealed record a sink may write (see SealedRecord). */
export type SealedText = Pick<SealedRecord, 'canonical' | 'compact'>;

export interface AuditSink {
  /**
   * True when the sink neither refuses records nor makes them durable (JSON lines): what it is given may be
   * written after the command it describes was forwarded, off the latency path. A sink that can refuse a
   * record or must have it on disk first (the durable spool) is written before.
   */
  readonly deferrable: boolean;
  /**
   * Accepts one record. Records of one session arrive in seq order. Throws AuditUnavailable when the record
   * cannot be accepted; the caller decides (per the resource's audit failure mode) what that means.
   * `sealed` carries the record's JCS text and its compact JSON-lines text when the caller has them
   * (RecordChain made them to hash the record): sinks use them instead of serialising the record again.
   */
  write(session: RecordOrigin, record: AuditRecord, sealed?: SealedText): void;
  /**
   * Optional (JSON lines off the event loop, json-lines-writer.ts): the sink seals records itself. RecordChain
   * then gives it each record's members (seq and time assigned; no prevHash, no hash) instead of calling
   * write(), in seq order per session; the sink links a session's first record to the pod chain's head and
   * every later one to the record before it, as RecordChain would. `known` as for sealLinked.
   */
  writeMembers?(session: RecordOrigin, members: Omit<UnhashedRecord, 'prevHash'>, known: KnownMember | undefined): void;
  /**
   * Optional (the durable sink): replaces the session's last record written, a command.decision, by `record`,
   * the same decision with its command's outcome in it (same seq, time and prevHash; a new hash), if the
   * sink has not passed the decision on yet. The decision stays as durable as it was; the sink keeps what it
   * needs to rebuild the merged record after a crash. False when the decision was passed on (or the sink
   * cannot): then nothing changed and the outcome is written as its own record.
   */
  amend?(session: RecordOrigin, record: AuditRecord, sealed: SealedText): boolean;
  /**
   * Resolves when every record written so far is on durable storage (group commit); undefined when that is
   * already so or the sink has no durability of its own. Engines forward a command only after this.
   */
  whenDurable(): Promise<void> | undefined;
  /** Resolves when everything written so far is handed to the destination. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

const sessionJson = new WeakMap<RecordOrigin, string>();

/** The canonical (JCS) text of a session reference; a session's reference is one object, canonicalised once. */
export function recordOriginJson(session: RecordOrigin): string {
  let ref = sessionJson.get(session);
  if (ref === undefined) {
    ref = jcs(session) ?? '{}';
    sessionJson.set(session, ref);
  }
  return ref;
}

/**
 * A full line: `{"session": {...}, "record": {...}}` with the session stated beside the record and the record
 * in canonical (JCS) form; `canonical` is that form when the caller has it already (AuditSink.write).
 */
export function formatJsonLine(session: RecordOrigin, record: AuditRecord, canonical?: string): string {
  return `{"session":${recordOriginJson(session)},"record":${canonical ?? canonicalRecordText(record)}}\n`;
}

/**
 * How long JSON lines wait to be written together, ms, and how many bytes are written at once without
 * waiting. The sink promises no durability (the durable spool does), so lines are written off the latency
 * path: one write per 10 ms instead of one per event-loop turn, which at one client was a thread-pool round
 * trip for every statement.
 */
const JSON_LINES_BATCH_MS = 10;
const JSON_LINES_BATCH_BYTES = 256 * 1024;
/** UTF-8 bytes one UTF-16 code unit can take at most: what a line is sized by before it is encoded. */
const MAX_UTF8_PER_UNIT = 3;

/**
 * Audit records as JSON lines (docs/audit.md, "JSON lines"). A session's first line states the session:
 * for a format-3 record that states it itself (its first record's `session` member, in the chain), the line
 * is `{"session":"<id>","record":<canonical record>}`, otherwise a full line (formatJsonLine). Every later
 * line of the session is compact: `{"session":"<id>","record":<record without prevHash, hash in base64url>}`.
 * Lines are UTF-8-encoded straight into one batch buffer, written once per batch.
 */
export class JsonLinesSink implements AuditSink {
  readonly deferrable = true;
  private readonly stream: NodeJS.WritableStream;
  private readonly ownsStream: boolean;
  /** Per session whose first line this sink wrote: the `{"session":"<id>","record":` every line starts with. */
  private readonly linePrefix = new WeakMap<RecordOrigin, string>();
  private batch: Buffer | undefined;
  private used = 0;
  private timer: NodeJS.Timeout | undefined;

  /**
   * `path` is a file (appended to) or `-` for stdout; or a stream to write the batches to (an event loop's
   * batches posted to the loop that owns the file, docs/sidecar-event-loops.md).
   */
  constructor(path: string | NodeJS.WritableStream) {
    if (typeof path !== 'string') {
      this.stream = path;
      this.ownsStream = false;
    } else if (path === '-') {
      this.stream = process.stdout;
      this.ownsStream = false;
    } else {
      this.stream = createWriteStream(path, { flags: 'a' });
      this.ownsStream = true;
    }
  }

  /** Lines are collected and written together, at most JSON_LINES_BATCH_MS after the first of a batch. */
  write(session: RecordOrigin, record: AuditRecord, sealed?: SealedText): void {
    let prefix = this.linePrefix.get(session);
    let text: string;
    if (prefix === undefined) {
      if (record.session === undefined) {
        // A session that does not state itself in its first record (formats 1 and 2): a full line.
        this.append(formatJsonLine(session, record, sealed?.canonical), '');
        return;
      }
      prefix = `{"session":${JSON.stringify(session.sessionId)},"record":`;
      this.linePrefix.set(session, prefix);
      text = sealed?.canonical ?? canonicalRecordText(record);
    } else {
      text = sealed?.compact ?? compactRecordText(record);
    }
    this.append(prefix, text);
  }

  /** Appends `head + body + "}\n"` (or `head` alone when body is empty) to the batch. */
  private append(head: string, body: string): void {
    const closing = body === '' ? '' : '}\n';
    const worst = (head.length + body.length + 2) * MAX_UTF8_PER_UNIT;
    if (worst > JSON_LINES_BATCH_BYTES - this.used) {
      this.writePending();
      if (worst > JSON_LINES_BATCH_BYTES) {
        // Larger than a batch (long parameters): written on its own, after what came before it.
        this.stream.write(`${head}${body}${closing}`);
        return;
      }
    }
    const batch = (this.batch ??= Buffer.allocUnsafe(JSON_LINES_BATCH_BYTES));
    this.used += batch.write(head, this.used);
    if (body !== '') {
      this.used += batch.write(body, this.used);
      this.used += batch.write(closing, this.used, 'latin1');
    }
    this.timer ??= setTimeout(this.writePending, JSON_LINES_BATCH_MS);
  }

  private readonly writePending = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.batch;
    if (batch === undefined || this.used === 0) return;
    // The stream keeps the bytes until they are written: the next batch gets a new buffer.
    this.stream.write(batch.subarray(0, this.used));
    this.batch = undefined;
    this.used = 0;
  };

  /** Appends whole lines another event loop's JsonLinesSink batched (after this sink's pending lines). */
  appendLines(lines: Uint8Array): void {
    this.writePending();
    this.stream.write(lines);
  }

  whenDurable(): undefined {
    return undefined;
  }

  flush(): Promise<void> {
    this.writePending();
    // The callback of a write runs once everything before it has been handed to the file.
    return new Promise((resolve) => this.stream.write('', () => resolve()));
  }

  async close(): Promise<void> {
    await this.flush();
    if (this.ownsStream) {
      await new Promise<void>((resolve) => (this.stream as WriteStream).end(resolve));
    }
  }
}

/** Keeps records in memory; for tests and for the bench's audit-on runs that measure the proxy alone. */
export class MemorySink implements AuditSink {
  /** Written at once, so tests see a record as soon as the call that makes it returns. */
  readonly deferrable = false;
  readonly records: { session: RecordOrigin; record: AuditRecord }[] = [];
  write(session: RecordOrigin, record: AuditRecord): void {
    this.records.push({ session, record });
  }
  whenDurable(): undefined {
    return undefined;
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
