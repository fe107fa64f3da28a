// Sealing audit records: the hash over a record's RFC 8785 (JCS) canonical JSON without its `hash` member,
// and the texts a sink writes (docs/audit.md). Apart from audit-chain.ts (time, verification) and the
// record's schema so that a thread that only seals records (the sidecar's JSON-lines worker) loads this,
// jcs.ts and canonicalize, not every schema of the package (`@chaperone/api/audit-seal`).
import { createHash, hash as cryptoHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { AuditRecord } from './audit-record.ts';
import { jcs, jcsMembersBetween, type KnownMember } from './jcs.ts';

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

/** A record with its hash, its canonical (JCS) text including the hash, and its compact JSON-lines text. */
export interface SealedRecord {
  readonly record: AuditRecord;
  readonly canonical: string;
  /**
   * The record as a compact JSON-lines line carries it after its session's first line (docs/audit.md, "JSON
   * lines"): the canonical text without `prevHash` (the previous line's hash) and with the hash as
   * base64url SHA-256. compactRecordText computes the same for a record that was not sealed.
   */
  readonly compact: string;
}

/** Base64url of the 32 bytes of a `sha256:` hex hash (43 characters, no padding). */
export function compactHash(hash: string): string {
  return Buffer.from(hash.slice(7), 'hex').toString('base64url');
}

/** The `sha256:` hex form of a compact (base64url) hash; undefined when `text` is not 43 base64url characters. */
export function expandCompactHash(text: string): string | undefined {
  if (!/^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/.test(text)) return undefined;
  return `sha256:${Buffer.from(text, 'base64url').toString('hex')}`;
}

/** The compact text of a record (see SealedRecord.compact), by the reference JCS path. */
export function compactRecordText(record: AuditRecord): string {
  const { prevHash: _prevHash, hash, ...rest } = record;
  return jcs({ ...rest, hash: compactHash(hash) }) ?? '{}';
}

/** `a,b` of two member lists, either possibly empty. */
const andThen = (a: string, b: string): string => (b === '' ? a : a === '' ? b : `${a},${b}`);

/**
 * Adds the hash to a record and returns its canonical text and its compact text as well, so that writing the
 * record (JSON lines, the spool) does not serialise it again: the record's members are canonicalised once,
 * and both texts are made of those members with the hash (and for the canonical text `prevHash`) inserted
 * at their sorted places. The hash is the one hashRecord computes. `known`: members whose canonical text the
 * caller has already (a cached decision's, see KnownMember).
 */
export function sealRecord(unhashed: UnhashedRecord, known?: readonly KnownMember[]): SealedRecord {
  const { prevHash, ...members } = unhashed;
  return sealLinked(members, prevHash, known);
}

/**
 * sealRecord for a record given without its `prevHash` (what RecordChain builds): no copy of the record.
 * `ownHash`: prevHash is a hash this function returned (RecordChain's previous record), so its form is known;
 * any other is checked first, since it goes into the texts unescaped.
 */
export function sealLinked(
  members: Omit<UnhashedRecord, 'prevHash'>,
  prevHash: string,
  known?: readonly KnownMember[],
  ownHash = false,
): SealedRecord {
  const parts = jcsMembersBetween(members, 'hash', 'prevHash', known);
  if (parts === undefined || !(ownHash || /^sha256:[0-9a-f]{64}$/.test(prevHash))) {
    // Not a plain object of plain data (or it has a hash already): the reference path, same result.
    const unhashed: UnhashedRecord = { ...members, prevHash };
    const record: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
    return { record, canonical: jcs(record) ?? '{}', compact: compactRecordText(record) };
  }
  const [before, between, after] = parts;
  // A sha256: hex hash needs no JSON escaping.
  const hashed = `{${andThen(andThen(andThen(before, between), `"prevHash":"${prevHash}"`), after)}}`;
  const hash = `sha256:${cryptoHash('sha256', hashed, 'hex')}`;
  // Hashing flattened `hashed`: the canonical text is made of slices of it (the hash member goes right after
  // `before`; `prevHash` is never the first member, so something follows), not of the members again.
  const at = before.length + 1;
  const canonical =
    before === ''
      ? `{"hash":"${hash}",${hashed.slice(1)}`
      : `${hashed.slice(0, at)},"hash":"${hash}"${hashed.slice(at)}`;
  return new LinkedRecord({ ...members, prevHash, hash }, canonical, before, between, after);
}

/** A sealed record whose compact text is made when a sink asks for it (only JSON lines do). */
class LinkedRecord implements SealedRecord {
  readonly record: AuditRecord;
  readonly canonical: string;
  readonly #before: string;
  readonly #between: string;
  readonly #after: string;

  constructor(record: AuditRecord, canonical: string, before: string, between: string, after: string) {
    this.record = record;
    this.canonical = canonical;
    this.#before = before;
    this.#between = between;
    this.#after = after;
  }

  get compact(): string {
    const hash = `"hash":"${compactHash(this.record.hash)}"`;
    return `{${andThen(andThen(andThen(this.#before, hash), this.#between), this.#after)}}`;
  }
}

/**
 * A sealed command.decision (`canonical`: its JCS text with the hash) with `outcome` added: the same record
 * merged with its command's outcome (one record per statement, docs/audit-durability.md), sealed by editing
 * the decision's canonical text instead of canonicalising the record again. In JCS order `outcome` comes
 * right after `hash` and before `prevHash`, and a decision has neither an outcome nor a nested `hash` key, so
 * the text hashed is the decision's with its hash member replaced by the outcome member; the result is the
 * text sealLinked would give (tested against it). Undefined when the text is not of that shape.
 * `knownHash`: the merged record's hash as the caller already has it from the process that sealed it (the
 * sidecar's audit worker, from the spool's outcome entry): taken as it is, not computed again.
 */
export function sealWithOutcome(
  decision: { readonly record: AuditRecord; readonly canonical: string },
  outcome: NonNullable<AuditRecord['outcome']>,
  knownHash?: string,
): SealedRecord | undefined {
  const { record, canonical } = decision;
  if (record.outcome !== undefined) return undefined;
  const text = mergeOutcomeText(canonical, record.hash, outcome, knownHash);
  if (text === undefined) return undefined;
  const merged: AuditRecord = { ...record, outcome, hash: text.hash };
  return {
    record: merged,
    canonical: text.canonical,
    get compact() {
      return compactRecordText(merged);
    },
  };
}

/**
 * sealWithOutcome's text edit alone, for a caller that holds the decision's canonical text and hash but
 * not the whole record (the sidecar's audit worker): the merged record's canonical text and hash, or
 * undefined when the text is not of a decision's shape. The decision must have no outcome.
 */
export function mergeOutcomeText(
  canonical: string,
  decisionHash: string,
  outcome: NonNullable<AuditRecord['outcome']>,
  knownHash?: string,
): { readonly canonical: string; readonly hash: string } | undefined {
  const member = `"hash":"${decisionHash}",`;
  const at = canonical.lastIndexOf(member);
  const outcomeText = jcs(outcome);
  if (at < 0 || outcomeText === undefined || !canonical.startsWith('"prevHash":', at + member.length)) return undefined;
  const before = canonical.slice(0, at);
  const after = canonical.slice(at + member.length);
  const hash = knownHash ?? `sha256:${cryptoHash('sha256', `${before}"outcome":${outcomeText},${after}`, 'hex')}`;
  return { canonical: `${before}"hash":"${hash}","outcome":${outcomeText},${after}`, hash };
}

/** The JCS text of a record with its hash (what JSON-lines output and the spool carry). */
export function canonicalRecordText(record: AuditRecord): string {
  return jcs(record) ?? '{}';
}
