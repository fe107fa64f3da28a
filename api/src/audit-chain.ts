// The hash chain over audit records. Each record's hash is sha256 over the RFC 8785 (JCS) canonical JSON
// of the record without its `hash` field; `prevHash` links it to the record before it (the previous
// session of the pod for seq 1, or GENESIS_HASH). Any implementation can recompute it (docs/audit.md).
// Sealing itself is in audit-seal.ts.
import { AUDIT_RECORD_VERSIONS, type AuditRecord } from './audit-record.ts';
import { hashRecord } from './audit-seal.ts';

export * from './audit-seal.ts';

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
  /** Position of the record in the list verified (seq alone is ambiguous when records are replayed). */
  readonly index: number;
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
  for (const [index, r] of records.entries()) {
    if (!KNOWN_VERSIONS.has(r.v)) {
      problems.push({
        seq: r.seq,
        index,
        problem: 'record-format',
        detail: `unknown record format version ${String(r.v)}`,
      });
    } else if (r.v !== version) {
      problems.push({
        seq: r.seq,
        index,
        problem: 'record-format',
        detail: `record format version ${String(r.v)} in a session of version ${String(version)} records`,
      });
    }
    if (expectedSeq !== undefined && r.seq !== expectedSeq) {
      problems.push({
        seq: r.seq,
        index,
        problem: r.seq < expectedSeq ? 'seq-order' : 'seq-gap',
        detail: `expected seq ${String(expectedSeq)}, found ${String(r.seq)}`,
      });
    }
    const computed = hashRecord(r);
    if (computed !== r.hash) {
      problems.push({
        seq: r.seq,
        index,
        problem: 'hash-mismatch',
        detail: `record content does not match its hash (computed ${computed})`,
      });
    }
    if (expectedPrev !== undefined && r.prevHash !== expectedPrev) {
      problems.push({
        seq: r.seq,
        index,
        problem: 'broken-link',
        detail: `prevHash ${r.prevHash} does not match the previous record ${expectedPrev}`,
      });
    }
    expectedPrev = r.hash;
    expectedSeq = r.seq + 1;
  }
  return problems;
}
