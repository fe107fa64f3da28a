// The chain of one agent session's audit records: assigns seq and microsecond UTC time, links each record
// to the previous one by hash (the first to the pod's previous session, through the PodChain), puts the
// session's verified identity (with its whole delegation chain) and where it runs (session id, resource,
// pod) into its session.start record (format version 3: every later record is bound to that one by the
// chain), and hands it to the sink.
// Engines describe what happened; this makes it a record.
import {
  AUDIT_RECORD_VERSION,
  formatAuditTime,
  nowMicros,
  sealLinked,
  sealWithOutcome,
  type AuditRecord,
  type Identity,
  type KnownMember,
  type UnhashedRecord,
} from '@chaperone/api';
import type { AuditSink, RecordOrigin, SealedText } from './audit-sink.ts';
import type { PodChain } from './pod-chain.ts';

export type RecordContent = Omit<AuditRecord, 'v' | 'seq' | 'time' | 'prevHash' | 'hash'>;

export class RecordChain {
  readonly origin: RecordOrigin;
  private readonly sink: AuditSink;
  private readonly clock: () => bigint;
  private readonly chain: PodChain;
  private seq = 0;
  /** Unset until the first record: a session links to the pod's newest session when it records, not when it opens. */
  private prevHash: string | undefined;
  private commandId = 0;
  /** The last record written and its canonical text: what amendLast() merges an outcome into. */
  private last: (SealedText & { readonly record: AuditRecord }) | undefined;
  /** The sink seals this chain's records (AuditSink.writeMembers): prevHash and last stay unset. */
  private sealedBySink = false;

  /** The verified identity the session.start record carries (its whole delegation chain). */
  private readonly identity: Identity | undefined;

  constructor(
    sink: AuditSink,
    origin: RecordOrigin,
    chain: PodChain,
    options: { clock?: () => bigint; identity?: Identity } = {},
  ) {
    this.sink = sink;
    this.origin = origin;
    this.chain = chain;
    this.clock = options.clock ?? nowMicros;
    this.identity = options.identity;
  }

  /** Allocates the id shared by a command's decision and outcome records. */
  nextCommandId(): number {
    this.commandId += 1;
    return this.commandId;
  }

  /**
   * Hash of the last record written; the pod chain's head before the first. Not known here when the sink
   * seals the records (AuditSink.writeMembers).
   */
  get lastHash(): string {
    if (this.sealedBySink) throw new Error('the audit sink seals this chain: its hashes are not known here');
    return this.prevHash ?? this.chain.head;
  }

  /** The chain's clock, epoch microseconds: what a record's time is taken from. */
  now(): bigint {
    return this.clock();
  }

  /**
   * Builds the next record and writes it, sealed: the record with its link and hash is returned. When the
   * sink seals records itself (AuditSink.writeMembers, JSON lines off the event loop) it gets the record's
   * members instead, and nothing is returned. If the sink refuses it (AuditUnavailable), the chain does not
   * advance: the next record takes the same seq, so a refused record leaves no hole in the chain.
   * `known`: a member of `content` whose canonical text the caller keeps (see KnownMember).
   * `time`: when the event happened (from now()), when it is recorded later than that (a decision held
   * until its outcome, AgentSession); default now.
   */
  record(content: RecordContent, known?: KnownMember, time?: bigint): AuditRecord | undefined {
    const first = this.seq === 0;
    const members: Omit<UnhashedRecord, 'prevHash'> = {
      v: AUDIT_RECORD_VERSION,
      seq: this.seq + 1,
      time: formatAuditTime(time ?? this.clock()),
      ...(this.identity === undefined || content.type !== 'session.start' ? {} : { identity: this.identity }),
      // Format 3: where the session runs, on its first record (session.start, or a lone auth.failure), bound
      // by the chain to every later record; JSON lines state it there once (docs/audit.md).
      ...(first ? { session: { ...this.origin } } : {}),
      ...content,
    };
    const sink = this.sink;
    if (sink.writeMembers !== undefined) {
      // The sink seals off this thread (JSON lines, json-lines-writer.ts): it keeps the link and the pod
      // chain's head; nothing here waits for the hash.
      sink.writeMembers(this.origin, members, known);
      this.seq = members.seq;
      this.sealedBySink = true;
      return undefined;
    }
    // Canonicalised once: the sink writes the text the hash was computed over (plus the hash member).
    const seal = (prevHash: string): ReturnType<typeof sealLinked> => {
      const sealed = sealLinked(members, prevHash, known === undefined ? undefined : [known], !first);
      this.sink.write(this.origin, sealed.record, sealed);
      return sealed;
    };
    let sealed: ReturnType<typeof sealLinked>;
    if (this.prevHash === undefined) {
      // The session's first record links to the pod's newest session, as one step with the head's advance.
      let linked: ReturnType<typeof sealLinked> | undefined;
      this.chain.linkSession((head) => {
        linked = seal(head);
        return linked.record.hash;
      });
      sealed = linked as ReturnType<typeof sealLinked>;
    } else {
      sealed = seal(this.prevHash);
    }
    const record = sealed.record;
    this.seq = record.seq;
    this.last = sealed;
    this.prevHash = record.hash;
    return record;
  }

  /** Seq of the last record written (0 before the first). */
  get lastSeq(): number {
    return this.seq;
  }

  /**
   * Replaces the last record written (the command.decision `seq`) by the same decision with its command's
   * outcome in it: same seq, time and link, a new hash (one record per statement, docs/audit-durability.md).
   * Only when the sink can still replace it (AuditSink.amend: it has not passed the decision on); then the
   * chain continues from the new record. False: nothing changed, the outcome is to be written as a record of
   * its own.
   */
  amendLast(seq: number, outcome: NonNullable<AuditRecord['outcome']>): boolean {
    const sink = this.sink;
    const last = this.last;
    if (sink.amend === undefined || last === undefined) return false;
    if (last.record.seq !== seq || last.record.type !== 'command.decision') return false;
    const merged = sealWithOutcome(last, outcome);
    if (merged === undefined || !sink.amend(this.origin, merged.record, merged)) return false;
    this.last = merged;
    this.prevHash = merged.record.hash;
    return true;
  }
}
