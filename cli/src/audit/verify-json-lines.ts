// Verifies an audit file of JSON lines (the sidecar's `audit.path` output, one `{"session", "record"}`
// object per line): every record's hash, the hash links and seq continuity within each session, that each
// session keeps one resource and pod, and the links between the sessions of one pod (a session's first
// record names the first record of the session before it, or GENESIS_HASH). Pure: takes the file's text.
//
// What it proves and what it cannot (docs/audit.md, "Verifying a JSON-lines file"): an edited, removed,
// inserted or reordered record inside the file is found; records cut from the end of a session show as a
// session without its session.end; a whole file rewritten with fresh hashes is not found, because JSON
// lines carry no signature: that is what Session objects and `kubectl chaperone verify` are for.
import {
  decodeAuditJsonLines,
  GENESIS_HASH,
  verifyChain,
  type AuditRecord,
  type JsonLinesSessionRef,
} from '@chaperone/api';

export const JSON_LINES_PROBLEM_KINDS = [
  /** A line that is not a JSON object with `session` and `record` (of either line form). */
  'malformed-line',
  'hash-mismatch',
  'broken-link',
  'seq-gap',
  'seq-order',
  /** A record of an unknown format version, or of another version than the rest of its session. */
  'record-format',
  /** A session's first record in the file is not seq 1, or a compact line comes before its session's first line. */
  'missing-start',
  /** Records of one session name another resource or pod, or a line another session than its record states. */
  'session-mismatch',
] as const;
export type JsonLinesProblemKind = (typeof JSON_LINES_PROBLEM_KINDS)[number];

export interface JsonLinesProblem {
  readonly kind: JsonLinesProblemKind;
  /** 1-based line of the file. */
  readonly line: number;
  readonly sessionId?: string;
  readonly seq?: number;
  readonly detail: string;
}

/** Not wrong by itself, but worth a look: a session still open or cut at the end, a link out of the file. */
export interface JsonLinesNote {
  /**
   * no-session-end: still open, or cut at the end. link-outside-file: the predecessor is in an earlier file
   * or was removed. forked-link: two sessions name the same predecessor (after a node crash the pod-chain
   * head may be one session old, docs/audit.md; otherwise a copied or replayed session).
   */
  readonly kind: 'no-session-end' | 'link-outside-file' | 'forked-link';
  readonly sessionId: string;
  readonly detail: string;
}

export interface JsonLinesSession {
  readonly sessionId: string;
  readonly resource: string;
  readonly pod: string;
  readonly records: number;
  readonly firstTime?: string;
  readonly lastTime?: string;
  /** session.end's outcome status, when the session ended in the file. */
  readonly ended?: string;
  readonly ok: boolean;
}

export interface JsonLinesReport {
  readonly apiVersion: 'chaperone.dev/v1alpha1';
  readonly kind: 'AuditFileReport';
  readonly lines: number;
  readonly records: number;
  readonly sessions: readonly JsonLinesSession[];
  readonly problems: readonly JsonLinesProblem[];
  readonly notes: readonly JsonLinesNote[];
  readonly verified: boolean;
}

interface SessionLines {
  readonly ref: JsonLinesSessionRef;
  readonly records: AuditRecord[];
  readonly lines: number[];
}

/** Verifies the text of a JSON-lines audit file (either line form, docs/audit.md "JSON lines"). */
export function verifyJsonLines(text: string): JsonLinesReport {
  const decoded = decodeAuditJsonLines(text);
  const problems: JsonLinesProblem[] = [...decoded.problems];
  const notes: JsonLinesNote[] = [];
  const sessions = new Map<string, SessionLines>();
  const records = decoded.entries.length;
  for (const { line, session: ref, record } of decoded.entries) {
    let entry = sessions.get(ref.sessionId);
    if (entry === undefined) {
      entry = { ref, records: [], lines: [] };
      sessions.set(ref.sessionId, entry);
    } else if (
      entry.ref.resource !== ref.resource ||
      entry.ref.pod !== ref.pod ||
      entry.ref.namespace !== ref.namespace
    ) {
      problems.push({
        kind: 'session-mismatch',
        line,
        sessionId: ref.sessionId,
        seq: record.seq,
        detail: `session ${ref.sessionId} was ${entry.ref.namespace}/${entry.ref.pod} ${entry.ref.resource}, this record says ${ref.namespace}/${ref.pod} ${ref.resource}`,
      });
    }
    entry.records.push(record);
    entry.lines.push(line);
  }

  // The first record of each session, by hash: what the next session of the pod links to.
  const firstHashes = new Map<string, string>();
  for (const s of sessions.values()) {
    const first = s.records[0];
    if (first !== undefined) firstHashes.set(first.hash, s.ref.sessionId);
  }
  const predecessors = new Map<string, string>();
  const summaries: JsonLinesSession[] = [];
  for (const s of sessions.values()) {
    const before = problems.length;
    for (const p of verifyChain(s.records)) {
      problems.push({
        kind: p.problem,
        line: s.lines[p.index] ?? 0,
        sessionId: s.ref.sessionId,
        seq: p.seq,
        detail: p.detail,
      });
    }
    const first = s.records[0];
    if (first !== undefined) {
      if (first.seq !== 1) {
        problems.push({
          kind: 'missing-start',
          line: s.lines[0] ?? 0,
          sessionId: s.ref.sessionId,
          seq: first.seq,
          detail: `the session's first record in the file is seq ${String(first.seq)}`,
        });
      } else if (first.prevHash !== GENESIS_HASH) {
        const predecessor = firstHashes.get(first.prevHash);
        const podKey = `${s.ref.namespace}/${s.ref.pod}|${first.prevHash}`;
        const forkedWith = predecessors.get(podKey);
        if (forkedWith !== undefined) {
          notes.push({
            kind: 'forked-link',
            sessionId: s.ref.sessionId,
            detail: `sessions ${forkedWith} and ${s.ref.sessionId} both link to ${first.prevHash}`,
          });
        }
        predecessors.set(podKey, s.ref.sessionId);
        if (predecessor === undefined) {
          notes.push({
            kind: 'link-outside-file',
            sessionId: s.ref.sessionId,
            detail: `its first record links to ${first.prevHash}, which is not the first record of a session in this file (an earlier file, or a removed session)`,
          });
        }
      }
    }
    const last = s.records.at(-1);
    const ended = last?.type === 'session.end' ? (last.outcome?.status ?? 'ended') : undefined;
    if (ended === undefined) {
      notes.push({
        kind: 'no-session-end',
        sessionId: s.ref.sessionId,
        detail: 'no session.end record: the session was still open, or records were cut from its end',
      });
    }
    summaries.push({
      sessionId: s.ref.sessionId,
      resource: s.ref.resource,
      pod: `${s.ref.namespace}/${s.ref.pod}`,
      records: s.records.length,
      ...(first?.time === undefined ? {} : { firstTime: first.time }),
      ...(last?.time === undefined ? {} : { lastTime: last.time }),
      ...(ended === undefined ? {} : { ended }),
      ok: problems.length === before,
    });
  }
  problems.sort((a, b) => a.line - b.line);
  return {
    apiVersion: 'chaperone.dev/v1alpha1',
    kind: 'AuditFileReport',
    lines: decoded.lines,
    records,
    sessions: summaries,
    problems,
    notes,
    verified: problems.length === 0,
  };
}
