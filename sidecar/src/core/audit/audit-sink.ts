// Where audit records go. The sink is the one interface every engine writes through: JSON lines to a file
// or stdout here; the durable spool and the Session writer sit behind the same interface.
import { createWriteStream, type WriteStream } from 'node:fs';
import { canonicalRecordText, jcs, type AuditRecord, type ResourceType } from '@chaperone/api';

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
   * `canonical` is the record's JCS text when the caller has it (RecordChain computed it to hash the
   * record): sinks that write the canonical form use it instead of serialising the record again.
   */
  write(session: RecordOrigin, record: AuditRecord, canonical?: string): void;
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
 * One JSON object per line: `{"session": {...}, "record": {...}}` with the record in canonical (JCS) form;
 * `canonical` is that form when the caller has it already (AuditSink.write).
 */
export function formatJsonLine(session: RecordOrigin, record: AuditRecord, canonical?: string): string {
  return `{"session":${recordOriginJson(session)},"record":${canonical ?? canonicalRecordText(record)}}\n`;
}

/**
 * How long JSON lines wait to be written together, ms, and how many characters are written at once without
 * waiting. The sink promises no durability (the durable spool does), so lines are written off the latency
 * path: one write per 10 ms instead of one per event-loop turn, which at one client was a thread-pool round
 * trip for every statement.
 */
const JSON_LINES_BATCH_MS = 10;
const JSON_LINES_BATCH_CHARS = 256 * 1024;

export class JsonLinesSink implements AuditSink {
  readonly deferrable = true;
  private readonly stream: WriteStream | NodeJS.WriteStream;
  private readonly ownsStream: boolean;
  private pending: string[] = [];
  private pendingChars = 0;
  private timer: NodeJS.Timeout | undefined;

  /** `path` is a file (appended to) or `-` for stdout. */
  constructor(path: string) {
    if (path === '-') {
      this.stream = process.stdout;
      this.ownsStream = false;
    } else {
      this.stream = createWriteStream(path, { flags: 'a' });
      this.ownsStream = true;
    }
  }

  /** Lines are collected and written together, at most JSON_LINES_BATCH_MS after the first of a batch. */
  write(session: RecordOrigin, record: AuditRecord, canonical?: string): void {
    const line = formatJsonLine(session, record, canonical);
    this.pending.push(line);
    this.pendingChars += line.length;
    if (this.pendingChars >= JSON_LINES_BATCH_CHARS) this.writePending();
    else this.timer ??= setTimeout(this.writePending, JSON_LINES_BATCH_MS);
  }

  private readonly writePending = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const text = this.pending.join('');
    this.pending = [];
    this.pendingChars = 0;
    this.stream.write(text);
  };

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
