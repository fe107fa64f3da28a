// Reading an audit file of JSON lines (the sidecar's `audit.path` output) back into whole records. Two line
// forms (docs/audit.md, "JSON lines"):
// - full: `{"session": {sessionId, resource, resourceType, namespace, pod}, "record": <canonical record>}`,
//   what record formats 1 and 2 always used and what a session's first line still is when it is not a
//   format-3 session.start;
// - compact (format 3): `{"session": "<sessionId>", "record": {...}}`. The session's first line in the file
//   is its session.start record, whole, carrying the session in its hashed `session` member; every later
//   line leaves out `prevHash` (it is the hash of the session's previous line) and carries its hash as
//   base64url SHA-256.
// Decoding restores each record as it was hashed (prevHash back in, the hash as `sha256:` hex), so the chain
// is verified exactly as for records kept anywhere else. Pure: takes the file's text.
import type { AuditRecord } from './audit-record.ts';
import { expandCompactHash } from './audit-chain.ts';

/** Where a session's records come from, as its first line in the file states it. */
export interface JsonLinesSessionRef {
  readonly sessionId: string;
  readonly resource: string;
  readonly namespace: string;
  readonly pod: string;
}

export interface JsonLinesEntry {
  /** 1-based line of the file. */
  readonly line: number;
  readonly session: JsonLinesSessionRef;
  /** The record as it was hashed (prevHash and the sha256: hex hash restored for compact lines). */
  readonly record: AuditRecord;
}

export interface JsonLinesDecodeProblem {
  /**
   * malformed-line: not a line of either form. missing-start: a compact line of a session whose first line
   * (the session.start that states the session) is not before it in the file. session-mismatch: a line
   * names another session than its record's own `session` member.
   */
  readonly kind: 'malformed-line' | 'missing-start' | 'session-mismatch';
  readonly line: number;
  readonly sessionId?: string;
  readonly seq?: number;
  readonly detail: string;
}

export interface DecodedJsonLines {
  /** Lines in the file (a last empty line after the final newline not counted). */
  readonly lines: number;
  readonly entries: readonly JsonLinesEntry[];
  readonly problems: readonly JsonLinesDecodeProblem[];
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** The session a record states in its own (hashed) `session` member, format 3's session.start. */
function statedSession(record: Record<string, unknown>): JsonLinesSessionRef | undefined {
  const s = record.session;
  if (!isObject(s) || typeof s.sessionId !== 'string') return undefined;
  return { sessionId: s.sessionId, resource: str(s.resource), namespace: str(s.namespace), pod: str(s.pod) };
}

/** Decodes the text of a JSON-lines audit file, line by line, into whole records. */
export function decodeAuditJsonLines(text: string): DecodedJsonLines {
  const entries: JsonLinesEntry[] = [];
  const problems: JsonLinesDecodeProblem[] = [];
  // Per session: what its first line stated, and the hash of its last line (the next compact line's prevHash).
  const sessions = new Map<string, { ref: JsonLinesSessionRef; lastHash: string }>();
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  lines.forEach((raw, i) => {
    const line = i + 1;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      problems.push({ kind: 'malformed-line', line, detail: 'not JSON' });
      return;
    }
    const session = isObject(parsed) ? parsed.session : undefined;
    const record = isObject(parsed) ? parsed.record : undefined;
    if (!isObject(record) || typeof record.seq !== 'number' || typeof record.hash !== 'string') {
      problems.push({ kind: 'malformed-line', line, detail: 'expected {"session": ..., "record": {seq, hash, ...}}' });
      return;
    }
    const seq = record.seq;
    let ref: JsonLinesSessionRef;
    if (isObject(session) && typeof session.sessionId === 'string') {
      // A full line: the session stated beside the record, the record whole.
      ref = {
        sessionId: session.sessionId,
        resource: str(session.resource),
        namespace: str(session.namespace),
        pod: str(session.pod),
      };
    } else if (typeof session === 'string') {
      const known = sessions.get(session);
      const stated = statedSession(record);
      if (known !== undefined) ref = known.ref;
      else if (stated !== undefined) ref = stated;
      else {
        problems.push({
          kind: 'missing-start',
          line,
          sessionId: session,
          seq,
          detail: `a line of session ${session} before the line that states the session (its session.start)`,
        });
        return;
      }
    } else {
      problems.push({
        kind: 'malformed-line',
        line,
        seq,
        detail: 'expected "session" to be an object or a session id',
      });
      return;
    }
    const stated = statedSession(record);
    if (
      (typeof session === 'string' && session !== ref.sessionId) ||
      (stated !== undefined &&
        (stated.sessionId !== ref.sessionId ||
          stated.resource !== ref.resource ||
          stated.namespace !== ref.namespace ||
          stated.pod !== ref.pod))
    ) {
      problems.push({
        kind: 'session-mismatch',
        line,
        sessionId: ref.sessionId,
        seq,
        detail: `the line names session ${typeof session === 'string' ? session : ref.sessionId} (${ref.namespace}/${ref.pod} ${ref.resource}), its record states ${stated?.sessionId ?? ref.sessionId} (${stated?.namespace ?? ''}/${stated?.pod ?? ''} ${stated?.resource ?? ''})`,
      });
    }
    const previous = sessions.get(ref.sessionId);
    let prevHash = record.prevHash;
    if (prevHash === undefined && typeof session === 'string' && previous !== undefined) prevHash = previous.lastHash;
    const hash = record.hash.startsWith('sha256:') ? record.hash : expandCompactHash(record.hash);
    if (typeof prevHash !== 'string' || hash === undefined) {
      problems.push({
        kind: 'malformed-line',
        line,
        sessionId: ref.sessionId,
        seq,
        detail:
          hash === undefined
            ? 'the hash is neither sha256:<hex> nor 43 base64url characters'
            : 'no prevHash, and no earlier line of the session to take it from',
      });
      return;
    }
    const whole = { ...record, prevHash, hash } as unknown as AuditRecord;
    sessions.set(ref.sessionId, { ref: previous?.ref ?? ref, lastHash: hash });
    entries.push({ line, session: ref, record: whole });
  });
  return { lines: lines.length, entries, problems };
}
