// The hash chain over audit records. Each record's hash is sha256 over the RFC 8785 (JCS) canonical JSON
// of the record without its `hash` field; `prevHash` links it to the record before it (the previous
// session of the pod for seq 1, or GENESIS_HASH). Any implementation can recompute it (docs/audit.md).
import { createHash, hash as cryptoHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { AUDIT_RECORD_VERSIONS, type AuditRecord } from './audit-record.ts';
import { jcs, jcsMembersAround, type KnownMember } from './jcs.ts';

export { jcs, type KnownMember } from './jcs.ts';

export const GENESIS_HASH = `sha256:${'0'.repeat(64)}`;

export type UnhashedRecord = Omit<AuditRecord, 'hash'>;

/** The canonical bytes that are hashed: JCS of the record minus `hash`. */
export function canonicalRecord(record: UnhashedRecord | AuditRecord): string {
  const { hash: _hash, ...rest } = record as AuditRecord;
  const text = canonicalize(rest);
  if (text === undefined) throw new Error('record cannot be canonicalized');
  return text;
}

export function hashRecord(record: UnhashedRecord | AuditRecord): string {
  return `sha256:${createHash('sha256').update(canonicalRecord(record)).digest('hex')}`;
}

/** A record with its hash, and its canonical (JCS) text including the hash. */
export interface SealedRecord {
  readonly record: AuditRecord;
  readonly canonical: string;
}

/**
 * Adds the hash to a record and returns its canonical text as well, so that writing the record (JSON lines,
 * the spool) does not serialise it again: the record is canonicalised once, and the text with `hash` is
 * that text with the hash member inserted at its sorted place. The hash is the one hashRecord computes.
 * `known`: members whose canonical text the caller has already (a cached decision's, see KnownMember).
 */
export function sealRecord(unhashed: UnhashedRecord, known?: readonly KnownMember[]): SealedRecord {
  const parts = jcsMembersAround(unhashed, 'hash', known);
  if (parts === undefined) {
    // Not a plain object of plain data (or it has a hash already): the reference path, same result.
    const record: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
    return { record, canonical: jcs(record) ?? '{}' };
  }
  const { before, after } = parts;
  const unhashedText = before === '' || after === '' ? `{${before}${after}}` : `{${before},${after}}`;
  // Hashing flattens the text; the canonical text is made of slices of it, not of the members again, so
  // whoever copies it next (the JSON-lines batch, the spool) reads one flat string.
  const hash = `sha256:${cryptoHash('sha256', unhashedText, 'hex')}`;
  // A hash is hex: its JSON form needs no escaping.
  const hashMember = `"hash":"${hash}"`;
  const at = before.length + 1; // where `,after}` starts
  let canonical: string;
  if (before === '') canonical = after === '' ? `{${hashMember}}` : `{${hashMember},${unhashedText.slice(1)}`;
  else if (after === '') canonical = `${unhashedText.slice(0, -1)},${hashMember}}`;
  else canonical = `${unhashedText.slice(0, at)},${hashMember}${unhashedText.slice(at)}`;
  return { record: { ...unhashed, hash }, canonical };
}

/** The JCS text of a record with its hash (what JSON-lines output and the spool carry). */
export function canonicalRecordText(record: AuditRecord): string {
  return jcs(record) ?? '{}';
}

/** The last whole second formatAuditTime formatted, and its `YYYY-MM-DDTHH:MM:SS` text. */
let lastSecond = Number.NaN;
let lastSecondText = '';
const MAX_FAST_SECOND = 253402300799; // 9999-12-31T23:59:59Z: toISOString has four-digit years up to here

/** UTC time with microseconds, e.g. 2026-11-27T10:00:00.000001Z, from epoch microseconds. */
export function formatAuditTime(epochMicros: bigint): string {
  const n = Number(epochMicros);
  // Records come in bursts within one second: the date part is formatted once per second.
  if (n >= 0 && Number.isSafeInteger(n)) {
    const micros = n % 1000000;
    const second = (n - micros) / 1000000;
    if (second <= MAX_FAST_SECOND) {
      if (second !== lastSecond) {
        lastSecondText = new Date(second * 1000).toISOString().slice(0, 19);
        lastSecond = second;
      }
      return `${lastSecondText}.${String(micros).padStart(6, '0')}Z`;
    }
  }
  return formatAuditTimeSlow(epochMicros);
}

/** The general form (and the reference formatAuditTime is tested against). */
export function formatAuditTimeSlow(epochMicros: bigint): string {
  const millis = Number(epochMicros / 1000n);
  const micros = Number(epochMicros % 1000000n);
  return `${new Date(millis).toISOString().slice(0, 19)}.${String(micros).padStart(6, '0')}Z`;
}

const hrtimeOrigin = BigInt(Date.now()) * 1000n - process.hrtime.bigint() / 1000n;

/** Current time in epoch microseconds: wall clock at process start plus the monotonic clock since. */
export function nowMicros(): bigint {
  return hrtimeOrigin + process.hrtime.bigint() / 1000n;
}

export interface ChainProblem {
  readonly seq: number;
  readonly problem: 'hash-mismatch' | 'broken-link' | 'seq-gap' | 'seq-order' | 'record-format';
  readonly detail: string;
}

const KNOWN_VERSIONS: ReadonlySet<number> = new Set(AUDIT_RECORD_VERSIONS);

/**
 * Checks hashes, links and seq continuity of records in order; `prevHash` is the expected first link. The
 * records are one session's (or one part's): each must be of a known format version, all of the same one
 * (one sidecar process writes a session).
 */
export function verifyChain(records: readonly AuditRecord[], prevHash?: string): ChainProblem[] {
  const problems: ChainProblem[] = [];
  let expectedPrev = prevHash;
  let expectedSeq: number | undefined;
  const version = records[0]?.v;
  for (const r of records) {
    if (!KNOWN_VERSIONS.has(r.v)) {
      problems.push({ seq: r.seq, problem: 'record-format', detail: `unknown record format version ${String(r.v)}` });
    } else if (r.v !== version) {
      problems.push({
        seq: r.seq,
        problem: 'record-format',
        detail: `record format version ${String(r.v)} in a session of version ${String(version)} records`,
      });
    }
    if (expectedSeq !== undefined && r.seq !== expectedSeq) {
      problems.push({
        seq: r.seq,
        problem: r.seq < expectedSeq ? 'seq-order' : 'seq-gap',
        detail: `expected seq ${String(expectedSeq)}, found ${String(r.seq)}`,
      });
    }
    const computed = hashRecord(r);
    if (computed !== r.hash) {
      problems.push({
        seq: r.seq,
        problem: 'hash-mismatch',
        detail: `record content does not match its hash (computed ${computed})`,
      });
    }
    if (expectedPrev !== undefined && r.prevHash !== expectedPrev) {
      problems.push({
        seq: r.seq,
        problem: 'broken-link',
        detail: `prevHash ${r.prevHash} does not match the previous record ${expectedPrev}`,
      });
    }
    expectedPrev = r.hash;
    expectedSeq = r.seq + 1;
  }
  return problems;
}
