// What a spool entry holds and how one read back from the spool reaches the Session writer: by the durable
// sink on start (replay), or by the audit worker thread, which gets the replayed entries from the main
// thread (docs/audit-durability.md). Two kinds of entry:
//   {"s": RecordOrigin, "r": AuditRecord}    one record, both in canonical form;
//   {"i": sessionId, "m": SpooledOutcome}    a command's outcome merged into its decision spooled before.
import { canonicalRecordText, hashRecord, type AuditRecord } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import type { RecordOrigin } from './audit-sink.ts';
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

/** The payload of an outcome entry. */
export function outcomeEntryText(sessionId: string, merge: SpooledOutcome): string {
  // The session id is enough: the decision entry it merges into states the session.
  return `{"i":${JSON.stringify(sessionId)},"m":${JSON.stringify(merge)}}`;
}

/**
 * Hands one entry read back from the spool of an earlier process to the writer. Returns whether it was a
 * record (false for an outcome entry or an unreadable one, which is logged and skipped).
 */
export function replaySpoolEntry(writer: SessionWriter, logger: Logger, id: number, payload: string): boolean {
  let parsed: { s?: SpooledOrigin; r?: AuditRecord; i?: string; m?: SpooledOutcome };
  try {
    parsed = JSON.parse(payload) as typeof parsed;
  } catch (err) {
    logger.error('unreadable audit spool entry skipped', { id, error: err });
    return false;
  }
  if (parsed.m !== undefined) {
    replayOutcome(writer, logger, id, parsed.i ?? '', parsed.m);
    return false;
  }
  if (parsed.s === undefined || parsed.r === undefined) {
    logger.error('unreadable audit spool entry skipped', { id });
    return false;
  }
  // Entries spooled before references carried the resource type were all PostgreSQL's (the only engine then).
  const ref: RecordOrigin = { ...parsed.s, resourceType: parsed.s.resourceType ?? 'postgres' };
  writer.enqueue(id, ref, parsed.r, true);
  return true;
}

/** A replayed outcome entry: merged into its decision when that is replayed too (else it is stored already). */
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
