// The hash chain over audit records. Each record's hash is sha256 over the RFC 8785 (JCS) canonical JSON
// of the record without its `hash` field; `prevHash` links it to the record before it (the previous
// session of the pod for seq 1, or GENESIS_HASH). Any implementation can recompute it (docs/audit.md).
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { AuditRecord } from './audit-record.ts';

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

/** UTC time with microseconds, e.g. 2026-11-27T10:00:00.000001Z, from epoch microseconds. */
export function formatAuditTime(epochMicros: bigint): string {
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
  readonly problem: 'hash-mismatch' | 'broken-link' | 'seq-gap' | 'seq-order';
  readonly detail: string;
}

/** Checks hashes, links and seq continuity of records in order; `prevHash` is the expected first link. */
export function verifyChain(records: readonly AuditRecord[], prevHash?: string): ChainProblem[] {
  const problems: ChainProblem[] = [];
  let expectedPrev = prevHash;
  let expectedSeq: number | undefined;
  for (const r of records) {
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
