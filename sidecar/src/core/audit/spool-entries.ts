// What a spool entry holds and how one read back from the spool reaches the Session writer: by the durable
// sink on start (replay), or by the audit worker thread, which gets the replayed entries and then the frames
// the spool writes from the main thread (docs/audit-durability.md). Two kinds of entry:
//   {"s": RecordOrigin, "r": AuditRecord}    one record, both in canonical form;
//   {"i": sessionId, "m": SpooledOutcome}    a command's outcome merged into its decision spooled before.
import { canonicalRecordText, hashRecord, mergeOutcomeText, type AuditRecord } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import { recordOriginJson, type RecordOrigin } from './audit-sink.ts';
import { ownString, readRecordFields, type RecordFields } from './record-fields.ts';
import type { SessionWriter } from './session-writer.ts';

/** A session reference as read back from the spool. */
type SpooledOrigin = Omit<RecordOrigin, 'resourceType'> & Partial<Pick<RecordOrigin, 'resourceType'>>;

/**
 * The outcome entry's `m`: merges a command's outcome into its decision record spooled before it (that
 * session's `seq`): the merged record is that decision with `outcome` and the new `hash`.
 */
export interface SpooledOutcome {
  readonly seq: number;
  readonly hash: string;
  readonly outcome: NonNullable<AuditRecord['outcome']>;
}

/** The payload of a record entry: `canonical` is the record's canonical text (the one its hash was computed from). */
export function recordEntryText(session: RecordOrigin, canonical: string): string {
  return `{"s":${recordOriginJson(session)},"r":${canonical}}`;
}

/** The payload of an outcome entry. */
export function outcomeEntryText(sessionId: string, merge: SpooledOutcome): string {
  // The session id is enough: the decision entry it merges into states the session.
  return `{"i":${JSON.stringify(sessionId)},"m":${JSON.stringify(merge)}}`;
}

/**
 * The entries read back from the spool of an earlier process, to the writer (on start: by the durable sink,
 * or by the audit worker thread, which gets them in messages of a few thousand). A session's last replayed
 * record so far is held (the writer's `open`) until the session's next record or end(), since the writer's
 * flush may run between two messages: a decision taken into a write before its outcome entry came would be
 * stored alone while the session's next record chains to the merged record's hash (its outcome lost), and a
 * replayed session whose queue a flush emptied is written Abandoned, a final phase its later records could
 * not follow (the API server refuses them, and they would stay in the spool).
 */
export class ReplayedSpoolEntries {
  private readonly writer: SessionWriter;
  private readonly logger: Logger;
  /** Per session: the seq of its held record (its last so far). */
  private readonly held = new Map<string, number>();

  constructor(writer: SessionWriter, logger: Logger) {
    this.writer = writer;
    this.logger = logger;
  }

  /** Entry `id`: returns whether it was a record (false for an outcome entry or an unreadable one, logged and skipped). */
  entry(id: number, payload: string): boolean {
    let parsed: { s?: SpooledOrigin; r?: AuditRecord; i?: string; m?: SpooledOutcome };
    try {
      parsed = JSON.parse(payload) as typeof parsed;
    } catch (err) {
      this.logger.error('unreadable audit spool entry skipped', { id, error: err });
      return false;
    }
    if (parsed.m !== undefined) {
      const sessionId = parsed.i ?? '';
      replayOutcome(this.writer, this.logger, id, sessionId, parsed.m);
      // The merged record is still the session's last: held again.
      const held = this.held.get(sessionId);
      if (held !== undefined) this.writer.hold(sessionId, held);
      return false;
    }
    if (parsed.s === undefined || parsed.r === undefined) {
      this.logger.error('unreadable audit spool entry skipped', { id });
      return false;
    }
    // Entries spooled before references carried the resource type were all PostgreSQL's (the only engine then).
    const ref: RecordOrigin = { ...parsed.s, resourceType: parsed.s.resourceType ?? 'postgres' };
    const record = parsed.r;
    this.held.set(ref.sessionId, record.seq);
    this.writer.enqueue(id, ref, record, true, undefined, undefined, true);
    return true;
  }

  /** Every entry was passed: held records are their sessions' last, and may be written. */
  end(): void {
    for (const [sessionId, seq] of this.held) this.writer.release(sessionId, seq);
    this.held.clear();
  }
}

/**
 * A replayed outcome entry: merged into its decision when that is replayed too and not yet taken into a
 * write (else it is stored already: an earlier process wrote it).
 */
function replayOutcome(
  writer: SessionWriter,
  logger: Logger,
  id: number,
  sessionId: string,
  merge: SpooledOutcome,
): void {
  const decision = writer.queuedRecord(sessionId, merge.seq);
  if (decision === undefined || decision.type !== 'command.decision' || decision.outcome !== undefined) {
    writer.acknowledgeLater(id);
    return;
  }
  const { hash: _, ...unhashed } = { ...decision, outcome: merge.outcome };
  const record: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
  if (record.hash !== merge.hash) {
    // Never so unless the spool was edited: keep the decision as spooled; verify shows the broken link.
    logger.error('audit spool outcome entry does not match its decision; decision kept alone', {
      id,
      sessionId,
      seq: merge.seq,
    });
    writer.acknowledgeLater(id);
    return;
  }
  writer.amend(id, sessionId, record, canonicalRecordText(record));
}

/**
 * The entries of this process's spool as its frames are written (the audit worker thread), to the writer:
 * what the main thread's sink did with each record before, done here from the entry's text. A decision
 * without an outcome is held (`holdDecisions`) until the outcome entry merging into it, the session's next
 * record or a release; the merged record is the decision's canonical text edited as the main thread did
 * (sealWithOutcome), with the hash the main thread computed (the outcome entry's). With `fieldsOnly` (the
 * writer keeps records in an evidence store, which stores their text) only the fields the writer reads are
 * taken from a record's text (record-fields.ts), not the whole record.
 */
export class LiveSpoolEntries {
  private readonly writer: SessionWriter;
  private readonly logger: Logger;
  private readonly holdDecisions: boolean;
  private readonly fieldsOnly: boolean;
  /** Per session: its reference and the reference's canonical JSON (the record entry's text starts after it). */
  private readonly origins = new Map<string, { readonly origin: RecordOrigin; readonly json: string }>();
  /** With `fieldsOnly`: the references by their JSON as the record entries carry it. */
  private readonly originsByJson = new Map<string, RecordOrigin>();
  /** Per session: its open decision (held), with its canonical text, and the whole record if it was parsed. */
  private readonly open = new Map<
    string,
    { readonly record: RecordFields; readonly canonical: string; readonly whole: AuditRecord | undefined }
  >();

  constructor(writer: SessionWriter, logger: Logger, holdDecisions: boolean, fieldsOnly = false) {
    this.writer = writer;
    this.logger = logger;
    this.holdDecisions = holdDecisions;
    this.fieldsOnly = fieldsOnly;
  }

  /**
   * Entry `id` of the spool, written by this process a moment ago: one it cannot read is a bug, and throws
   * (the worker thread ends, the sidecar fails closed).
   */
  entry(id: number, payload: string): void {
    if (this.fieldsOnly && payload.startsWith('{"s":{')) {
      this.recordFields(id, payload);
      return;
    }
    const parsed = JSON.parse(payload) as { s?: RecordOrigin; r?: AuditRecord; i?: string; m?: SpooledOutcome };
    if (parsed.m !== undefined) {
      this.outcome(id, parsed.i ?? '', parsed.m);
      return;
    }
    const { s, r: record } = parsed;
    if (s === undefined || record === undefined)
      throw new Error(`audit spool entry ${String(id)} is neither a record nor an outcome`);
    let known = this.origins.get(s.sessionId);
    if (known === undefined) {
      // Bounded by the sessions live at once; a session's reference is not needed once it ended.
      if (this.origins.size >= 10_000) this.origins.clear();
      known = { origin: s, json: recordOriginJson(s) };
      this.origins.set(s.sessionId, known);
    }
    // `{"s":<origin>,"r":<record's canonical text>}` as the sink wrote it: the text is the rest.
    const at = 5 + known.json.length;
    const text =
      payload.startsWith(known.json, 5) && payload.startsWith(',"r":', at)
        ? payload.slice(at + 5, -1)
        : canonicalRecordText(record);
    if (record.type === 'session.end') this.origins.delete(s.sessionId);
    this.queue(id, known.origin, record, text, record);
  }

  /**
   * A record entry as the durable sink writes it, `{"s":<origin's JSON>,"r":<record's canonical text>}`: the
   * origin is parsed once per session, the record's fields are read from its text, and the text is what is
   * stored. (The origin is a flat object of strings, in which `,"r":{` cannot occur: a quote inside a JSON
   * string is escaped.)
   */
  private recordFields(id: number, payload: string): void {
    const originEnd = payload.indexOf(',"r":{', 6);
    if (originEnd < 0) throw new Error(`audit spool entry ${String(id)} is not a record entry`);
    const originJson = payload.slice(5, originEnd);
    let origin = this.originsByJson.get(originJson);
    if (origin === undefined) {
      origin = JSON.parse(originJson) as RecordOrigin;
      if (typeof origin.sessionId !== 'string' || typeof origin.resource !== 'string')
        throw new Error(`audit spool entry ${String(id)} names no session`);
      // Bounded by the sessions live at once; a session's reference is not needed once it ended.
      if (this.originsByJson.size >= 10_000) this.originsByJson.clear();
      // A key of its own: the slice would keep this session's first entry alive as long as the session.
      this.originsByJson.set(ownString(originJson), origin);
    }
    const start = originEnd + 5;
    // The record must end where the entry's closing brace is (readRecordFields checks it ends there).
    if (!payload.endsWith('}')) throw new Error(`audit spool entry ${String(id)} is not a record entry`);
    const fields = readRecordFields(payload, start, payload.length - 1);
    if (fields.type === 'session.end') this.originsByJson.delete(originJson);
    this.queue(id, origin, fields, payload.slice(start, -1), undefined);
  }

  private queue(
    id: number,
    origin: RecordOrigin,
    record: RecordFields,
    text: string,
    whole: AuditRecord | undefined,
  ): void {
    const sessionId = origin.sessionId;
    const open = this.holdDecisions && record.type === 'command.decision' && record.outcome === undefined;
    if (open) this.open.set(sessionId, { record, canonical: text, whole });
    else this.open.delete(sessionId);
    if (whole === undefined) this.writer.enqueueFields(id, origin, record, text, open);
    else this.writer.enqueue(id, origin, whole, false, Buffer.byteLength(text), text, open);
  }

  /** The open decision `seq` of the session will not be amended: the writer may take it. */
  release(sessionId: string, seq: number): void {
    if (this.open.get(sessionId)?.record.seq === seq) this.open.delete(sessionId);
    this.writer.release(sessionId, seq);
  }

  private outcome(id: number, sessionId: string, merge: SpooledOutcome): void {
    const decision = this.open.get(sessionId);
    // The main thread computed the merged record's hash from the same decision text and outcome a moment
    // ago: taken from the entry, not computed again (the replay of an earlier process's spool checks it).
    const merged =
      decision?.record.seq === merge.seq && decision.record.outcome === undefined
        ? mergeOutcomeText(decision.canonical, decision.record.hash, merge.outcome, merge.hash)
        : undefined;
    if (decision === undefined || merged === undefined) {
      // Never so unless the threads disagree on which decision is open: it is written alone, and verify
      // shows the broken link to the next record.
      this.logger.error('audit spool outcome entry does not match its open decision; decision kept alone', {
        id,
        sessionId,
        seq: merge.seq,
      });
      this.writer.acknowledgeLater(id);
      if (decision !== undefined) this.release(sessionId, decision.record.seq);
      return;
    }
    this.open.delete(sessionId);
    const { whole } = decision;
    if (whole === undefined) {
      const record = { ...decision.record, outcome: merge.outcome, hash: merged.hash };
      this.writer.amendFields(id, sessionId, record, merged.canonical);
    } else {
      this.writer.amend(id, sessionId, { ...whole, outcome: merge.outcome, hash: merged.hash }, merged.canonical);
    }
  }
}
