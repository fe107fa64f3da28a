// Verifies an audit trail: the Session objects of one or more sessions (every part), their hash chains,
// the links between continuation parts and between sessions of one pod, and the signed chain heads.
// Pure: takes objects and keys, returns a report; fetching and printing live in the commands.
// What each check proves, and what it cannot, is in docs/audit.md ("Verification").
import { isDeepStrictEqual } from 'node:util';
import {
  GENESIS_HASH,
  countRecord,
  verifyChain,
  verifyChainHead,
  verifyCheckpoint,
  checkpointDigest,
  verifySignerCertificate,
  type AuditRecord,
  type ChainHead,
  type Checkpoint,
  type CheckpointEntry,
  type Session,
} from '@chaperone/api';
import { calculateJwkThumbprint, type JWK } from 'jose';

export const TRAIL_PROBLEM_KINDS = [
  /** A record's content does not match its hash: the record was edited. */
  'hash-mismatch',
  /** A record's prevHash does not match the record before it: a record was removed or inserted. */
  'broken-link',
  /** seq jumps forward: records were removed. */
  'seq-gap',
  /** seq goes backwards or repeats: records were reordered or duplicated. */
  'seq-order',
  /** A record of an unknown format version, or of another version than the rest of its session. */
  'record-format',
  /** The part this one continues (spec.previousPart) is gone, or a part index is missing. */
  'part-missing',
  /** A part says it was continued (or is not the last index) but no later part exists. */
  'continuation-deleted',
  /** The first record of a part does not continue the last record of the previous part. */
  'part-link',
  /** Two objects claim the same part of one session, or parts disagree on who they continue. */
  'part-conflict',
  /** The first record of a session links to a record of the pod that no present session holds. */
  'session-missing',
  /** No signer or no signed head on a part that has records. */
  'signature-missing',
  /** The head signature does not verify with the part's signer key. */
  'signature-invalid',
  /** The signed head does not match the records (edited or truncated after signing) or the object. */
  'head-mismatch',
  /** The head is signed by a key other than the one the part names, or one not in the trusted set. */
  'untrusted-key',
  /** Records after the signed head: not (yet) covered by a signature. */
  'unsigned-records',
  /** Unsigned Session fields that must agree with signed records (identity, sessionId, part) do not. */
  'metadata-mismatch',
  /** A session that is not open has no session.end record: its end may have been removed. */
  'session-truncated',
  /** Records after session.end (in the same part or in a later one): a closed session was continued. */
  'records-after-end',
  /** The Session's status contradicts its signed records (phase, endTime or counters). */
  'status-mismatch',
  /** Present in a baseline export but missing or rolled back now. */
  'baseline-mismatch',
  /** The signer's certificate does not verify with the authority key or names another key or pod. */
  'certificate-invalid',
  /** The authority key is known but the signer has no certificate (a warning unless certificates are required). */
  'uncertified-key',
  /** A checkpoint does not verify with the authority key, or its chain to the one before is broken. */
  'checkpoint-invalid',
  /** A head stated in a signed operator checkpoint is missing or rolled back now. */
  'checkpoint-mismatch',
] as const;
export type TrailProblemKind = (typeof TRAIL_PROBLEM_KINDS)[number];

export interface TrailProblem {
  /** error: evidence of alteration or removal; warning: cannot be proven either way (see detail). */
  readonly severity: 'error' | 'warning';
  readonly kind: TrailProblemKind;
  /** Empty for problems of the checkpoints themselves (checkpoint-invalid). */
  readonly sessionId: string;
  /** namespace/name of the Session object, when the problem is about one object. */
  readonly object?: string;
  readonly part?: number;
  readonly seq?: number;
  readonly detail: string;
}

export interface VerifiedSession {
  readonly sessionId: string;
  readonly namespace: string;
  /** The pod's namespace: the Session's own, or spec.pod.namespace when kept in an audit namespace. */
  readonly podNamespace: string;
  readonly pod: string;
  readonly resource: string;
  readonly subject: string;
  /** Object names in part order. */
  readonly parts: readonly string[];
  readonly records: number;
  readonly firstSeq?: number;
  readonly lastSeq?: number;
  readonly lastHash?: string;
  /** seq of the last record covered by a valid head signature in the last part. */
  readonly signedThrough?: number;
  readonly keyIds: readonly string[];
  /** namespace/name of the session this one links to through its first record, when linked. */
  readonly previousSession?: string;
  readonly ok: boolean;
}

export interface TrailReport {
  readonly ok: boolean;
  readonly checkedAt: string;
  readonly sessions: readonly VerifiedSession[];
  readonly problems: readonly TrailProblem[];
  readonly summary: {
    readonly sessions: number;
    readonly objects: number;
    readonly records: number;
    readonly errors: number;
    readonly warnings: number;
  };
  /**
   * How keys were trusted: pinned (a trusted set was given), certified (by the operator's audit authority,
   * whose keys were given) or self-asserted (spec.signer only).
   */
  readonly keyTrust: 'pinned' | 'certified' | 'self-asserted';
  /** Checkpoints that verified, newest last: when and how many heads each stated. */
  readonly checkpoints: readonly { readonly index: number; readonly time: string; readonly sessions: number }[];
  /**
   * With certified key trust: whether a signer key without a certificate was an error (`refused`, the
   * default) or a warning (`accepted`, --allow-uncertified). Absent in reports made before it was recorded
   * (they accepted them).
   */
  readonly uncertifiedKeys?: 'refused' | 'accepted';
}

/** What an earlier export saw of one Session object; verify against it to detect deletion and rollback. */
export interface BaselineHead {
  readonly object: string;
  readonly sessionId: string;
  readonly seq: number;
  readonly hash: string;
}

export interface VerifyTrailOptions {
  /**
   * Trusted Ed25519 public JWKs (with kid). When given, every head must be signed by one of them; when
   * absent, each part's own spec.signer key is used and the report says the keys were self-asserted.
   */
  readonly trustedKeys?: readonly (JWK & { kid?: string })[];
  /** Retention of a ProtectedResource (namespace, name) in milliseconds, to tell expiry from deletion. */
  readonly retentionFor?: (namespace: string, resource: string) => number | undefined;
  /**
   * Record hashes known to exist outside the Sessions given (`namespace/pod/hash`), e.g. the sessions an
   * evidence export left out of its time window; a first record linking to one of them is linked.
   */
  readonly externalHashes?: ReadonlySet<string>;
  /** Heads seen by an earlier export; each must still be present with the same hash. */
  readonly baseline?: readonly BaselineHead[];
  /**
   * Public keys of the operator's audit authority. When given (and no trustedKeys), a signer key is
   * trusted through its certificate, which must bind it to the Session's pod.
   */
  readonly authorityKeys?: readonly (JWK & { kid?: string })[];
  /**
   * With authorityKeys: a part whose signer key has no valid certificate for its pod (on the part itself or
   * on another part in scope signed by the same key) is an error rather than a warning.
   */
  readonly requireCertified?: boolean;
  /**
   * Signer certificates known besides those on the parts (an evidence file's key list). Like those on the
   * parts, one counts for a part only if it verifies with the authority keys for that part's key and pod.
   */
  readonly certificates?: readonly string[];
  /** Operator checkpoints (compact JWS, oldest first); every head they state must still be present. */
  readonly checkpoints?: readonly string[];
  /** Which checkpoint entries are in scope (e.g. one namespace); default all of them. */
  readonly checkpointScope?: (entry: CheckpointEntry) => boolean;
  /** Default: now. */
  readonly now?: Date;
  /**
   * How long after signing the head that covers session.end a session may still be Active (the writer sets
   * Closed right after that write). Later, Active with a session.end is an error. Default 2 minutes.
   */
  readonly closeGraceMs?: number;
}

/** Problems that make the records themselves untrustworthy (then their status is not compared with them). */
const INTEGRITY: ReadonlySet<TrailProblemKind> = new Set<TrailProblemKind>([
  'hash-mismatch',
  'broken-link',
  'seq-gap',
  'seq-order',
  'part-missing',
  'part-link',
  'part-conflict',
  'signature-missing',
  'signature-invalid',
  'head-mismatch',
  'untrusted-key',
  'certificate-invalid',
]);

const objectName = (s: Session) => `${s.metadata.namespace ?? ''}/${s.metadata.name ?? ''}`;

/** The namespace of the Session's pod: spec.pod.namespace when the Session is kept in an audit namespace. */
export function podNamespaceOf(s: Session): string {
  return s.spec.pod.namespace ?? s.metadata.namespace ?? '';
}

/** `<pod namespace>/<pod>/<hash>`: how records of one pod are named across sessions (pod chains, anchors). */
export function podHashKey(s: Session, hash: string): string {
  return `${podNamespaceOf(s)}/${s.spec.pod.name}/${hash}`;
}

/** Verifies every session in `sessions` (all parts of all sessions in scope). */
export async function verifyTrail(
  sessions: readonly Session[],
  options: VerifyTrailOptions = {},
): Promise<TrailReport> {
  const now = options.now ?? new Date();
  const problems: TrailProblem[] = [];
  const bySession = new Map<string, [Session, ...Session[]]>();
  for (const s of sessions) {
    const list = bySession.get(s.spec.sessionId);
    if (list === undefined) bySession.set(s.spec.sessionId, [s]);
    else list.push(s);
  }
  const byName = new Map(sessions.map((s) => [objectName(s), s]));

  const knownCertificates = certificatesByKey(sessions, options.certificates ?? []);
  const verified: VerifiedSession[] = [];
  for (const [sessionId, parts] of bySession) {
    parts.sort((a, b) => a.spec.part - b.spec.part || objectName(a).localeCompare(objectName(b)));
    verified.push(await verifyOneSession(sessionId, parts, byName, { ...options, now, knownCertificates }, problems));
  }

  const linked = linkPodSessions(verified, bySession, options, now, problems);
  if (options.baseline !== undefined)
    checkHeadsPresent(options.baseline, byName, problems, 'baseline-mismatch', 'the baseline');
  const checkpoints = await checkCheckpoints(options, byName, problems);

  const failed = new Set(problems.filter((p) => p.severity === 'error').map((p) => p.sessionId));
  const result = linked.map((v) => ({ ...v, ok: !failed.has(v.sessionId) }));
  result.sort((a, b) => a.namespace.localeCompare(b.namespace) || (a.parts[0] ?? '').localeCompare(b.parts[0] ?? ''));
  const errors = problems.filter((p) => p.severity === 'error').length;
  const keyTrust =
    options.trustedKeys !== undefined ? 'pinned' : options.authorityKeys !== undefined ? 'certified' : 'self-asserted';
  problems.sort(
    (a, b) =>
      a.sessionId.localeCompare(b.sessionId) ||
      (a.part ?? -1) - (b.part ?? -1) ||
      (a.seq ?? 0) - (b.seq ?? 0) ||
      a.kind.localeCompare(b.kind),
  );
  return {
    ok: errors === 0,
    checkedAt: now.toISOString(),
    sessions: result,
    problems,
    summary: {
      sessions: result.length,
      objects: sessions.length,
      records: sessions.reduce((n, s) => n + s.spec.records.length, 0),
      errors,
      warnings: problems.length - errors,
    },
    keyTrust,
    checkpoints,
    ...(keyTrust === 'certified'
      ? { uncertifiedKeys: options.requireCertified === true ? ('refused' as const) : ('accepted' as const) }
      : {}),
  };
}

/** The report limited to some sessions (by sessionId), with its summary recounted. */
export function restrictReport(report: TrailReport, sessionIds: ReadonlySet<string>): TrailReport {
  const sessions = report.sessions.filter((s) => sessionIds.has(s.sessionId));
  // Problems of the checkpoints themselves concern every session.
  const problems = report.problems.filter((p) => p.sessionId === '' || sessionIds.has(p.sessionId));
  const errors = problems.filter((p) => p.severity === 'error').length;
  return {
    ...report,
    ok: errors === 0,
    sessions,
    problems,
    summary: {
      sessions: sessions.length,
      objects: sessions.reduce((n, s) => n + s.parts.length, 0),
      records: sessions.reduce((n, s) => n + s.records, 0),
      errors,
      warnings: problems.length - errors,
    },
  };
}

async function verifyOneSession(
  sessionId: string,
  parts: readonly [Session, ...Session[]],
  byName: ReadonlyMap<string, Session>,
  options: SessionCheckOptions,
  problems: TrailProblem[],
): Promise<VerifiedSession> {
  const add = (p: Omit<TrailProblem, 'sessionId' | 'severity'> & { severity?: TrailProblem['severity'] }) =>
    problems.push({ severity: 'error', sessionId, ...p });
  const first = parts[0];
  const namespace = first.metadata.namespace ?? '';
  const keyIds = new Set<string>();
  let signedThrough: number | undefined;
  let lastSignedAt: string | undefined;

  // Part structure: indexes 0..n without holes, each continuing the one before by name.
  const seenIndex = new Map<number, Session>();
  for (const p of parts) {
    const other = seenIndex.get(p.spec.part);
    if (other !== undefined) {
      add({
        kind: 'part-conflict',
        object: objectName(p),
        part: p.spec.part,
        detail: `${objectName(other)} and ${objectName(p)} both claim part ${p.spec.part}`,
      });
    }
    seenIndex.set(p.spec.part, p);
  }
  for (const p of parts) {
    const name = objectName(p);
    if (p.spec.part === 0) {
      if (p.spec.previousPart !== undefined) {
        add({ kind: 'part-conflict', object: name, part: 0, detail: 'part 0 names a previous part' });
      }
      continue;
    }
    if (p.spec.previousPart === undefined) {
      add({
        kind: 'part-missing',
        object: name,
        part: p.spec.part,
        detail: `part ${p.spec.part} does not name the part it continues`,
      });
      continue;
    }
    const prevName = `${p.metadata.namespace ?? ''}/${p.spec.previousPart}`;
    const prev = byName.get(prevName);
    if (prev === undefined) {
      add({
        kind: 'part-missing',
        object: name,
        part: p.spec.part,
        seq: p.spec.records[0]?.seq,
        detail: `continues ${prevName} (part ${p.spec.part - 1}), which no longer exists: a part was deleted`,
      });
    } else if (prev.spec.sessionId !== sessionId || prev.spec.part !== p.spec.part - 1) {
      add({
        kind: 'part-conflict',
        object: name,
        part: p.spec.part,
        detail: `continues ${prevName}, which is part ${prev.spec.part} of session ${prev.spec.sessionId}`,
      });
    }
  }
  const lastPart = parts.at(-1) ?? first;
  for (let i = 0; i < lastPart.spec.part; i++) {
    if (!seenIndex.has(i) && !parts.some((p) => p.spec.part === i + 1)) {
      // A hole not already reported through the next part's previousPart.
      add({ kind: 'part-missing', part: i, detail: `part ${i} of the session is missing` });
    }
  }
  if (lastPart.status?.phase === 'Continued') {
    add({
      kind: 'continuation-deleted',
      object: objectName(lastPart),
      part: lastPart.spec.part,
      seq: lastPart.spec.records.at(-1)?.seq,
      detail: `${objectName(lastPart)} was continued by part ${lastPart.spec.part + 1}, which no longer exists: a continuation was deleted`,
    });
  }

  // Records of each part, and the links between parts.
  let prev: AuditRecord | undefined;
  let prevPartName: string | undefined;
  for (const p of parts) {
    const name = objectName(p);
    const records = p.spec.records;
    for (const c of verifyChain(records)) {
      add({ kind: c.problem, object: name, part: p.spec.part, seq: c.seq, detail: c.detail });
    }
    const head = records[0];
    if (head !== undefined && prev !== undefined) {
      if (head.seq !== prev.seq + 1) {
        add({
          kind: head.seq > prev.seq + 1 ? 'seq-gap' : 'seq-order',
          object: name,
          part: p.spec.part,
          seq: head.seq,
          detail: `part starts at seq ${head.seq} but ${prevPartName ?? 'the previous part'} ends at seq ${prev.seq}`,
        });
      }
      if (head.prevHash !== prev.hash) {
        add({
          kind: 'part-link',
          object: name,
          part: p.spec.part,
          seq: head.seq,
          detail: `first record does not link to the last record of ${prevPartName ?? 'the previous part'} (prevHash ${head.prevHash}, expected ${prev.hash})`,
        });
      }
    }
    if (p.spec.part === 0 && head !== undefined && head.seq !== 1) {
      add({
        kind: 'seq-gap',
        object: name,
        part: 0,
        seq: head.seq,
        detail: `session starts at seq ${head.seq}: records 1..${head.seq - 1} were removed`,
      });
    }
    if (p.spec.part === 0 && head !== undefined && head.type !== 'session.start' && head.type !== 'auth.failure') {
      add({
        kind: 'metadata-mismatch',
        object: name,
        part: 0,
        seq: head.seq,
        detail: 'first record is not session.start',
      });
    }
    if (
      head?.type === 'session.start' &&
      head.identity !== undefined &&
      !isDeepStrictEqual(head.identity, p.spec.identity)
    ) {
      add({
        kind: 'metadata-mismatch',
        object: name,
        part: p.spec.part,
        seq: head.seq,
        detail: 'spec.identity differs from the identity in the signed session.start record',
      });
    }
    // Format 3: session.start states where the session runs, under its hash; the spec must say the same.
    const stated = head?.type === 'session.start' ? head.session : undefined;
    if (stated !== undefined) {
      const specSays = {
        sessionId: p.spec.sessionId,
        resource: p.spec.resource.name,
        resourceType: p.spec.resource.type,
        namespace: p.spec.pod.namespace ?? p.metadata.namespace ?? '',
        pod: p.spec.pod.name,
      };
      const differs = (Object.keys(specSays) as (keyof typeof specSays)[]).filter((k) => stated[k] !== specSays[k]);
      if (differs.length > 0) {
        add({
          kind: 'metadata-mismatch',
          object: name,
          part: p.spec.part,
          seq: head?.seq,
          detail: `spec differs from the session stated in the signed session.start record (${differs.join(', ')})`,
        });
      }
    }
    if (p.spec.part > 0 && !isDeepStrictEqual(p.spec.identity, first.spec.identity)) {
      add({ kind: 'metadata-mismatch', object: name, part: p.spec.part, detail: 'spec.identity differs from part 0' });
    }
    const signed = await checkHead(p, sessionId, options, add);
    if (signed !== undefined) {
      if (p.spec.signer !== undefined) keyIds.add(p.spec.signer.keyId);
      if (p === lastPart) {
        signedThrough = signed.seq;
        lastSignedAt = signed.signedAt;
      }
    }
    if (records.length > 0) {
      prev = records[records.length - 1];
      prevPartName = name;
    }
  }

  const last = prev;
  const phase = lastPart.status?.phase;
  if (last !== undefined && last.type !== 'session.end' && (phase === 'Closed' || phase === undefined)) {
    add({
      severity: phase === 'Closed' ? 'error' : 'warning',
      kind: 'session-truncated',
      object: objectName(lastPart),
      part: lastPart.spec.part,
      seq: last.seq,
      detail: `session is ${phase ?? 'without status'} but its last record (seq ${last.seq}) is ${last.type}, not session.end: records after it may have been removed`,
    });
  }
  // Status is compared with the records only when they are authentic; altered records are reported already.
  const authentic = !problems.some((p) => p.sessionId === sessionId && p.severity === 'error' && INTEGRITY.has(p.kind));
  checkClosedStaysClosed(parts, lastSignedAt, options, authentic, add);
  const all = parts.flatMap((p) => p.spec.records);
  return {
    sessionId,
    namespace,
    podNamespace: podNamespaceOf(first),
    pod: first.spec.pod.name,
    resource: first.spec.resource.name,
    subject: first.spec.identity.subject,
    parts: parts.map((p) => p.metadata.name ?? ''),
    records: all.length,
    firstSeq: all[0]?.seq,
    lastSeq: last?.seq,
    lastHash: last?.hash,
    signedThrough,
    keyIds: [...keyIds],
    ok: true,
  };
}

/**
 * A closed session stays closed, and its status tells the truth about its signed records: nothing follows
 * session.end (in its part or a later one); a session with a session.end is not Active long after the head
 * covering it was signed, nor Abandoned; Closed carries the end's time; finished parts count what their
 * records say (status.counters, cumulative up to each part).
 */
function checkClosedStaysClosed(
  parts: readonly Session[],
  lastSignedAt: string | undefined,
  options: VerifyTrailOptions & { now: Date },
  compareStatus: boolean,
  add: (p: Omit<TrailProblem, 'sessionId' | 'severity'> & { severity?: TrailProblem['severity'] }) => void,
): void {
  let end: { record: AuditRecord; part: Session } | undefined;
  const counters = { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 };
  for (const p of parts) {
    for (const r of p.spec.records) {
      if (end !== undefined) {
        add({
          kind: 'records-after-end',
          object: objectName(p),
          part: p.spec.part,
          seq: r.seq,
          detail: `record ${String(r.seq)} (${r.type}) follows session.end (seq ${String(end.record.seq)} in ${objectName(end.part)}): a closed session was continued`,
        });
        break;
      }
      countRecord(counters, r);
      if (r.type === 'session.end') end = { record: r, part: p };
    }
    const status = p.status;
    if (
      compareStatus &&
      status !== undefined &&
      status.phase !== 'Active' &&
      !isDeepStrictEqual(status.counters, counters)
    ) {
      add({
        kind: 'status-mismatch',
        object: objectName(p),
        part: p.spec.part,
        detail: `status.counters ${JSON.stringify(status.counters)} differ from what the records up to this part count (${JSON.stringify(counters)})`,
      });
    }
  }
  const last = parts.at(-1);
  const phase = last?.status?.phase;
  if (!compareStatus || last === undefined || end === undefined) return;
  const name = objectName(last);
  if (phase === 'Abandoned' || phase === 'Continued') {
    add({
      kind: 'status-mismatch',
      object: name,
      part: last.spec.part,
      seq: end.record.seq,
      detail: `the session ended (session.end, seq ${String(end.record.seq)}) but its last part is ${phase}`,
    });
  } else if (phase === 'Active') {
    const signedAt = lastSignedAt === undefined ? undefined : Date.parse(lastSignedAt);
    const late = signedAt !== undefined && options.now.getTime() - signedAt > (options.closeGraceMs ?? 2 * 60_000);
    add({
      severity: late ? 'error' : 'warning',
      kind: 'status-mismatch',
      object: name,
      part: last.spec.part,
      seq: end.record.seq,
      detail: late
        ? `the session ended (session.end signed at ${lastSignedAt ?? ''}) but its status says Active: the status was set back`
        : 'the session ended but its status still says Active (the sidecar may not have written Closed yet)',
    });
  } else if (phase === 'Closed') {
    const endTime = last.status?.endTime;
    const second = (t: string) => Math.floor(Date.parse(t) / 1000);
    if (endTime !== undefined && second(endTime) !== second(end.record.time)) {
      add({
        kind: 'status-mismatch',
        object: name,
        part: last.spec.part,
        seq: end.record.seq,
        detail: `status.endTime ${endTime} is not the time of the signed session.end record (${end.record.time})`,
      });
    }
  }
}

/** Checks one part's signed head; returns the seq it covers and when it was signed, when valid. */
async function checkHead(
  p: Session,
  sessionId: string,
  options: SessionCheckOptions,
  add: (p: Omit<TrailProblem, 'sessionId' | 'severity'> & { severity?: TrailProblem['severity'] }) => void,
): Promise<{ seq: number; signedAt: string } | undefined> {
  const name = objectName(p);
  const part = p.spec.part;
  const records = p.spec.records;
  const { signer, head } = p.spec;
  if (signer === undefined || head === undefined) {
    if (records.length > 0) {
      add({
        kind: 'signature-missing',
        object: name,
        part,
        detail: `${records.length} record(s) but no ${signer === undefined ? 'signer' : 'signed head'}`,
      });
    }
    return undefined;
  }
  let signerKey: JWK & { kid?: string };
  try {
    signerKey = JSON.parse(signer.publicKey) as JWK & { kid?: string };
  } catch {
    add({ kind: 'signature-invalid', object: name, part, detail: 'spec.signer.publicKey is not JSON' });
    return undefined;
  }
  signerKey = { ...signerKey, kid: signer.keyId };
  if (head.keyId !== signer.keyId) {
    add({
      kind: 'untrusted-key',
      object: name,
      part,
      detail: `head names key ${head.keyId} but the part's signer is ${signer.keyId}`,
    });
  }
  let keys: readonly (JWK & { kid?: string })[] = [signerKey];
  if (options.trustedKeys !== undefined) {
    const pinned = options.trustedKeys.find((k) => k.kid === signer.keyId);
    if (pinned === undefined || pinned.x !== signerKey.x || pinned.crv !== signerKey.crv) {
      add({
        kind: 'untrusted-key',
        object: name,
        part,
        detail: `signer key ${signer.keyId} is not in the trusted key set${pinned === undefined ? '' : ' (same kid, different key)'}`,
      });
      return undefined;
    }
    keys = [pinned];
  } else if (options.authorityKeys !== undefined) {
    if (!(await checkCertificate(p, signerKey, options, add))) return undefined;
  }
  let payload: ChainHead;
  try {
    payload = await verifyChainHead(head.signature, keys);
  } catch (err) {
    add({
      kind: 'signature-invalid',
      object: name,
      part,
      seq: head.seq,
      detail: `head signature does not verify with key ${signer.keyId}: ${(err as Error).message}`,
    });
    return undefined;
  }
  if (payload.seq !== head.seq || payload.hash !== head.hash) {
    add({
      kind: 'head-mismatch',
      object: name,
      part,
      seq: head.seq,
      detail: `spec.head (seq ${head.seq}) differs from the signed head (seq ${payload.seq}, ${payload.hash})`,
    });
  }
  if (payload.sessionId !== sessionId || payload.object !== name) {
    add({
      kind: 'head-mismatch',
      object: name,
      part,
      detail: `signed head belongs to ${payload.object} of session ${payload.sessionId}, not this object`,
    });
  }
  const covered = records.find((r) => r.seq === payload.seq);
  if (covered === undefined) {
    add({
      kind: 'head-mismatch',
      object: name,
      part,
      seq: payload.seq,
      detail: `signed head covers seq ${payload.seq}, which is not in this part: records were removed after signing`,
    });
    return undefined;
  }
  if (covered.hash !== payload.hash) {
    add({
      kind: 'head-mismatch',
      object: name,
      part,
      seq: payload.seq,
      detail: `record ${payload.seq} has hash ${covered.hash} but the signed head says ${payload.hash}: the chain was rewritten after signing`,
    });
    return undefined;
  }
  const after = records.filter((r) => r.seq > payload.seq);
  if (after.length > 0) {
    add({
      severity: p.status?.phase === 'Active' ? 'warning' : 'error',
      kind: 'unsigned-records',
      object: name,
      part,
      seq: after[0]?.seq,
      detail: `${after.length} record(s) after the signed head (seq ${payload.seq}) carry no signature`,
    });
  }
  return { seq: payload.seq, signedAt: payload.signedAt };
}

/**
 * Sessions of one pod chain through their first record: its prevHash is a hash of the pod's previous
 * session (the sidecar links to the first record of the session that started before it; GENESIS_HASH for
 * a pod's first session; any record of the pod is accepted, for other writers). A link to a
 * hash no present session holds means a whole session was removed, unless retention explains it: the
 * linking session started before the horizon (no problem), or it is the pod's oldest remaining session
 * (a warning: pruning and deletion of the oldest sessions look the same without a baseline export).
 */
function linkPodSessions(
  verified: VerifiedSession[],
  bySession: ReadonlyMap<string, Session[]>,
  options: VerifyTrailOptions,
  now: Date,
  problems: TrailProblem[],
): VerifiedSession[] {
  const hashes = new Map<string, { session: VerifiedSession; seq: number }>();
  for (const v of verified) {
    for (const part of bySession.get(v.sessionId) ?? []) {
      for (const r of part.spec.records) hashes.set(podHashKey(part, r.hash), { session: v, seq: r.seq });
    }
  }
  const firstTime = new Map(
    verified.map((v) => {
      const first = bySession.get(v.sessionId)?.find((p) => p.spec.part === 0)?.spec.records[0];
      return [v.sessionId, first === undefined ? Infinity : Date.parse(first.time)];
    }),
  );
  return verified.map((v) => {
    const part0 = bySession.get(v.sessionId)?.find((p) => p.spec.part === 0);
    const r1 = part0?.spec.records[0];
    if (r1?.seq !== 1 || r1.prevHash === GENESIS_HASH) return v;
    const key = `${v.podNamespace}/${v.pod}/${r1.prevHash}`;
    const found = hashes.get(key);
    if (found !== undefined && found.session.sessionId !== v.sessionId) {
      return { ...v, previousSession: `${found.session.namespace}/${found.session.parts.at(-1) ?? ''}` };
    }
    if (options.externalHashes?.has(key) === true) return v;
    const retentionMs = options.retentionFor?.(v.namespace, v.resource);
    const started = Date.parse(r1.time);
    const horizon = retentionMs === undefined ? undefined : new Date(now.getTime() - retentionMs).toISOString();
    const oldestOfPod = !verified.some(
      (o) =>
        o !== v &&
        o.podNamespace === v.podNamespace &&
        o.pod === v.pod &&
        (firstTime.get(o.sessionId) ?? Infinity) < started,
    );
    const base = {
      kind: 'session-missing' as const,
      sessionId: v.sessionId,
      object: `${v.namespace}/${v.parts[0] ?? ''}`,
      part: 0,
      seq: 1,
    };
    if (retentionMs !== undefined && started < now.getTime() - retentionMs) {
      // The predecessor ended before this session started, so it is past the horizon: pruned, as it should be.
    } else if (horizon !== undefined && oldestOfPod) {
      problems.push({
        ...base,
        severity: 'warning',
        detail:
          `the first record links to ${r1.prevHash}, a session of pod ${v.pod} that is no longer present. This is the pod's oldest ` +
          `remaining session, so retention (horizon ${horizon}) may have removed its predecessor; deletion of a pod's oldest ` +
          'sessions cannot be told apart from that without an earlier export (verify --baseline)',
      });
    } else {
      problems.push({
        ...base,
        severity: 'error',
        detail:
          `the first record links to ${r1.prevHash}, a record of an earlier session of pod ${v.pod} that no present Session holds: ` +
          `a whole session was deleted${oldestOfPod ? '' : ' (older sessions of the pod are still present, so retention did not remove it)'}`,
      });
    }
    return v;
  });
}

/** Every head `source` saw must still be there with the same hash (deletion and rollback checks). */
function checkHeadsPresent(
  heads: readonly BaselineHead[],
  byName: ReadonlyMap<string, Session>,
  problems: TrailProblem[],
  kind: 'baseline-mismatch' | 'checkpoint-mismatch',
  source: string,
): void {
  for (const b of heads) {
    const now = byName.get(b.object);
    if (now === undefined) {
      problems.push({
        severity: 'error',
        kind,
        sessionId: b.sessionId,
        object: b.object,
        seq: b.seq,
        detail: `${b.object} was in ${source} (through seq ${b.seq}) and is gone (deleted, or expired under retention)`,
      });
      continue;
    }
    const r = now.spec.records.find((x) => x.seq === b.seq);
    if (r?.hash !== b.hash) {
      problems.push({
        severity: 'error',
        kind,
        sessionId: b.sessionId,
        object: b.object,
        part: now.spec.part,
        seq: b.seq,
        detail:
          r === undefined
            ? `${source} saw seq ${b.seq}; it is no longer there (rolled back or removed)`
            : `${source} saw seq ${b.seq} with hash ${b.hash}; it now has ${r.hash}`,
      });
    }
  }
}

/** What verifying one session needs besides the caller's options: every known certificate, by key id. */
type SessionCheckOptions = VerifyTrailOptions & {
  readonly now: Date;
  readonly knownCertificates: ReadonlyMap<string, readonly string[]>;
};

/**
 * Every signer certificate in scope (on the parts, and given besides), by the key id it names. The key id
 * is read from the unverified payload only to pick candidates; each is verified before it counts.
 */
function certificatesByKey(sessions: readonly Session[], extra: readonly string[]): Map<string, string[]> {
  const byKey = new Map<string, string[]>();
  const all = new Set([...sessions.flatMap((s) => s.spec.signer?.certificate ?? []), ...extra]);
  for (const jws of all) {
    let keyId: unknown;
    try {
      keyId = (JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as { keyId?: unknown })
        .keyId;
    } catch {
      continue;
    }
    if (typeof keyId === 'string') byKey.set(keyId, [...(byKey.get(keyId) ?? []), jws]);
  }
  return byKey;
}

/**
 * Why a certificate does not vouch for a part's signer key: not the authority's, for another key, or for
 * another pod than the Session's. Undefined when it does.
 */
async function certificateProblem(
  p: Session,
  signerKey: JWK & { kid?: string },
  jws: string,
  authorityKeys: readonly (JWK & { kid?: string })[],
): Promise<string | undefined> {
  let certificate;
  try {
    certificate = await verifySignerCertificate(jws, authorityKeys);
  } catch (err) {
    return `the signer certificate does not verify with the authority keys: ${(err as Error).message}`;
  }
  if (certificate.keyId !== signerKey.kid || certificate.x !== signerKey.x) {
    return `the certificate is for key ${certificate.keyId}, not the signer key ${String(signerKey.kid)}`;
  }
  const pod = p.spec.pod;
  const namespace = podNamespaceOf(p);
  if (
    certificate.pod.namespace !== namespace ||
    certificate.pod.name !== pod.name ||
    (pod.uid !== undefined && certificate.pod.uid !== pod.uid)
  ) {
    return (
      `the certificate binds the key to pod ${certificate.pod.namespace}/${certificate.pod.name} (uid ${certificate.pod.uid}), ` +
      `but the Session says ${namespace}/${pod.name}${pod.uid === undefined ? '' : ` (uid ${pod.uid})`}`
    );
  }
  return undefined;
}

/** `sha256 thumbprint T` of a key (RFC 7638), with its kid when that is something else. */
async function describeKey(key: JWK & { kid?: string }): Promise<string> {
  let thumbprint: string;
  try {
    thumbprint = await calculateJwkThumbprint(key, 'sha256');
  } catch {
    return `${String(key.kid)} (no thumbprint: not a complete public key)`;
  }
  return key.kid === undefined || key.kid === thumbprint
    ? `sha256 thumbprint ${thumbprint}`
    : `sha256 thumbprint ${thumbprint} (kid ${key.kid})`;
}

/**
 * Verifies a part's signer certificate against the authority keys: signed by the authority, for this key,
 * for this Session's pod. A part without one counts as certified when another part in scope carries a
 * valid certificate for the same key and pod: a certificate binds a key to a pod, not to the parts that
 * happen to carry it, and any writer of Sessions could have copied it onto the part anyway (docs/audit.md,
 * "Uncertified keys"). Returns false when the signer must not be trusted.
 */
async function checkCertificate(
  p: Session,
  signerKey: JWK & { kid?: string },
  options: SessionCheckOptions,
  add: (p: Omit<TrailProblem, 'sessionId' | 'severity'> & { severity?: TrailProblem['severity'] }) => void,
): Promise<boolean> {
  const name = objectName(p);
  const part = p.spec.part;
  const authorityKeys = options.authorityKeys ?? [];
  const jws = p.spec.signer?.certificate;
  if (jws === undefined) {
    for (const other of options.knownCertificates.get(String(signerKey.kid)) ?? []) {
      if ((await certificateProblem(p, signerKey, other, authorityKeys)) === undefined) return true;
    }
    const refused = options.requireCertified === true;
    add({
      severity: refused ? 'error' : 'warning',
      kind: 'uncertified-key',
      object: name,
      part,
      detail:
        `part ${String(part)} is signed by key ${await describeKey(signerKey)}, for which neither this part nor any other ` +
        `part of pod ${podNamespaceOf(p)}/${p.spec.pod.name} carries a certificate from the operator: the key is self-asserted` +
        (refused ? ' (--allow-uncertified accepts it as a warning)' : ''),
    });
    return !refused;
  }
  const problem = await certificateProblem(p, signerKey, jws, authorityKeys);
  if (problem === undefined) return true;
  add({ kind: 'certificate-invalid', object: name, part, detail: problem });
  return false;
}

/** Verifies each checkpoint and its link to the one before, then requires every head it states. */
async function checkCheckpoints(
  options: VerifyTrailOptions,
  byName: ReadonlyMap<string, Session>,
  problems: TrailProblem[],
): Promise<TrailReport['checkpoints']> {
  const verified: TrailReport['checkpoints'][number][] = [];
  if (options.checkpoints === undefined || options.checkpoints.length === 0) return verified;
  const invalid = (detail: string) =>
    problems.push({ severity: 'error', kind: 'checkpoint-invalid', sessionId: '', detail });
  if (options.authorityKeys === undefined) {
    invalid('checkpoints were given but no authority keys to verify them');
    return verified;
  }
  let previous: { checkpoint: Checkpoint; digest: string } | undefined;
  for (const jws of options.checkpoints) {
    let checkpoint: Checkpoint;
    try {
      checkpoint = await verifyCheckpoint(jws, options.authorityKeys);
    } catch (err) {
      invalid(`a checkpoint does not verify with the authority keys: ${(err as Error).message}`);
      continue;
    }
    if (
      previous !== undefined &&
      checkpoint.index === previous.checkpoint.index + 1 &&
      checkpoint.previous !== previous.digest
    ) {
      invalid(
        `checkpoint ${checkpoint.index} does not link to checkpoint ${previous.checkpoint.index}: a checkpoint was replaced`,
      );
    }
    previous = { checkpoint, digest: checkpointDigest(jws) };
    verified.push({ index: checkpoint.index, time: checkpoint.time, sessions: checkpoint.sessions.length });
    const inScope = checkpoint.sessions.filter((e) => options.checkpointScope?.(e) ?? true);
    checkHeadsPresent(
      inScope,
      byName,
      problems,
      'checkpoint-mismatch',
      `checkpoint ${checkpoint.index} (${checkpoint.time})`,
    );
  }
  return verified;
}
