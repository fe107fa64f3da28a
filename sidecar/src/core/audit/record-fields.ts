// The fields of an audit record that the Session writer and the evidence store read (the writer's queue,
// the Session's counters, the store's columns), read from the record's JSON text without building the whole
// record: the audit worker stores a live record's text as the main thread spooled it, and a whole parsed
// record (command, statements, reasons: ~25 objects and strings) would wait in the writer's queue for its
// head, seconds, long enough to be promoted and collected in V8's old generation. Reading costs about what
// JSON.parse does; what it saves is that garbage (~1 µs per statement, bench/README.md "The evidence path's
// CPU per statement"). The reader walks the record's members and checks the JSON grammar of every value it
// skips (structure, literals, numbers, where each string ends; not the characters inside a string); the
// members it keeps are parsed exactly (JSON.parse for escapes). A text it cannot read throws: in the worker
// that is a bug that stops it, as a JSON.parse error of the entry did before.
import type { AuditRecord } from '@chaperone/api';

type Decision = NonNullable<AuditRecord['decision']>;
type Outcome = NonNullable<AuditRecord['outcome']>;

/** What the writer and the store read of a record; an AuditRecord is one. */
export interface RecordFields {
  readonly v: number;
  readonly seq: number;
  readonly time: string;
  readonly type: AuditRecord['type'];
  readonly hash: string;
  readonly prevHash: string;
  /** On session.start (the Session's identity). */
  readonly identity?: AuditRecord['identity'];
  readonly decision?: Pick<Decision, 'result'>;
  readonly outcome?: Pick<Outcome, 'status'>;
}

/** An unreadable record text: `at` is the UTF-16 offset in the text where reading stopped. */
export class UnreadableRecordText extends Error {
  override name = 'UnreadableRecordText';
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/** Containers nested deeper than this are refused (records nest ~5 deep). */
const MAX_DEPTH = 32;

function fail(text: string, at: number, what: string): never {
  throw new UnreadableRecordText(`record text unreadable at ${String(at)} of ${String(text.length)}: ${what}`);
}

/** Index of the quote closing the string that opens at `at` (a quote): the next quote not escaped. */
function stringEnd(text: string, at: number): number {
  let end = text.indexOf('"', at + 1);
  while (end !== -1 && text.charCodeAt(end - 1) === BACKSLASH) {
    // Escaped only after an odd run of backslashes (`\\"` ends the string).
    let first = end - 1;
    while (text.charCodeAt(first - 1) === BACKSLASH) first -= 1;
    if ((end - first) % 2 === 0) break;
    end = text.indexOf('"', end + 1);
  }
  if (end === -1) fail(text, at, 'unterminated string');
  return end;
}

/** Index after the number at `at` (JSON's grammar), or -1. */
function numberEnd(text: string, at: number): number {
  let i = at;
  if (text.charCodeAt(i) === 0x2d) i += 1;
  const first = text.charCodeAt(i);
  if (first === 0x30) i += 1;
  else if (first >= 0x31 && first <= 0x39) while (isDigit(text.charCodeAt(++i)));
  else return -1;
  if (text.charCodeAt(i) === 0x2e) {
    if (!isDigit(text.charCodeAt(++i))) return -1;
    while (isDigit(text.charCodeAt(++i)));
  }
  const e = text.charCodeAt(i);
  if (e === 0x65 || e === 0x45) {
    const sign = text.charCodeAt(++i);
    if (sign === 0x2b || sign === 0x2d) i += 1;
    if (!isDigit(text.charCodeAt(i))) return -1;
    while (isDigit(text.charCodeAt(++i)));
  }
  return i;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/**
 * Index after the JSON value that starts at `at` (grammar checked; string contents are not). Containers
 * are walked without recursion: `objects` has a bit per open container, set for an object.
 */
function skipValue(text: string, at: number): number {
  let i = at;
  let depth = 0;
  let objects = 0;
  for (;;) {
    // A value at i.
    const c = text.charCodeAt(i);
    if (c === QUOTE) i = stringEnd(text, i) + 1;
    else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (depth >= MAX_DEPTH) fail(text, i, 'nested too deep');
      const object = c === OPEN_BRACE;
      objects = object ? objects | (1 << depth) : objects & ~(1 << depth);
      depth += 1;
      i += 1;
      if (text.charCodeAt(i) === (object ? CLOSE_BRACE : CLOSE_BRACKET)) {
        depth -= 1;
        i += 1;
      } else {
        if (object) i = memberName(text, i);
        continue;
      }
    } else if (c === 0x74 && text.startsWith('true', i)) i += 4;
    else if (c === 0x66 && text.startsWith('false', i)) i += 5;
    else if (c === 0x6e && text.startsWith('null', i)) i += 4;
    else {
      const end = numberEnd(text, i);
      if (end < 0) fail(text, i, 'value expected');
      i = end;
    }
    // After a value: a comma and the next, or the end of containers.
    for (;;) {
      if (depth === 0) return i;
      const object = (objects & (1 << (depth - 1))) !== 0;
      const next = text.charCodeAt(i);
      if (next === COMMA) {
        i += 1;
        if (object) i = memberName(text, i);
        break;
      }
      if (next !== (object ? CLOSE_BRACE : CLOSE_BRACKET)) fail(text, i, 'comma or end expected');
      depth -= 1;
      i += 1;
    }
  }
}

/** Index after `"name":` at `at`, whose name is not read. */
function memberName(text: string, at: number): number {
  if (text.charCodeAt(at) !== QUOTE) fail(text, at, 'member name expected');
  const end = stringEnd(text, at) + 1;
  if (text.charCodeAt(end) !== COLON) fail(text, end, 'colon expected');
  return end + 1;
}

/** Whether a string's text needs JSON.parse: an escape, or a control character (which JSON.parse refuses). */
function needsParse(inner: string): boolean {
  for (let i = 0; i < inner.length; i++) {
    const c = inner.charCodeAt(i);
    if (c === BACKSLASH || c < 0x20) return true;
  }
  return false;
}

/**
 * `s` as a string of its own. V8 makes a substring of 13 characters or more a view into the whole text
 * (a sliced string), which keeps the whole text alive as long as the substring lives: a record's hash,
 * prevHash and time would keep its whole spool entry (~0.7 KiB) in the worker until its head is written,
 * after the writer dropped the text (session-writer.ts). Concatenating builds a new string that slice()
 * flattens into a copy (measured: 20,000 hashes sliced from 2 KiB texts 44.9 MiB of heap, copied 6.2 MiB).
 */
export function ownString(s: string): string {
  return s.length < 13 ? s : ` ${s}`.slice(1);
}

/**
 * The string value of text[from, to) (a copy of its own: ownString), or undefined when it is not a string.
 */
function stringOf(text: string, from: number, to: number): string | undefined {
  if (text.charCodeAt(from) !== QUOTE) return undefined;
  const inner = text.slice(from + 1, to - 1);
  return needsParse(inner) ? (JSON.parse(text.slice(from, to)) as string) : ownString(inner);
}

/** A member's name at `at` (a quote), and the index of its end quote. */
function nameAt(text: string, at: number): { readonly name: string; readonly end: number } {
  if (text.charCodeAt(at) !== QUOTE) fail(text, at, 'member name expected');
  const end = stringEnd(text, at);
  const raw = text.slice(at + 1, end);
  return { name: needsParse(raw) ? (JSON.parse(text.slice(at, end + 1)) as string) : raw, end };
}

/**
 * The string member `name` of the object at `from` (a decision's result, an outcome's status), undefined
 * when absent or not a string; the index after the object in `after`.
 */
function innerString(text: string, from: number, name: string, after: { end: number }): string | undefined {
  if (text.charCodeAt(from) !== OPEN_BRACE) fail(text, from, 'object expected');
  let i = from + 1;
  let found: string | undefined;
  let seen = false;
  if (text.charCodeAt(i) === CLOSE_BRACE) {
    after.end = i + 1;
    return undefined;
  }
  for (;;) {
    const n = nameAt(text, i);
    if (text.charCodeAt(n.end + 1) !== COLON) fail(text, n.end + 1, 'colon expected');
    const valueAt = n.end + 2;
    i = skipValue(text, valueAt);
    if (n.name === name) {
      if (seen) fail(text, valueAt, `member ${name} twice`);
      seen = true;
      found = stringOf(text, valueAt, i);
    }
    const next = text.charCodeAt(i);
    if (next === CLOSE_BRACE) {
      after.end = i + 1;
      return found;
    }
    if (next !== COMMA) fail(text, i, 'comma expected');
    i += 1;
  }
}

const KEPT = ['v', 'seq', 'time', 'type', 'hash', 'prevHash', 'identity', 'decision', 'outcome'];

/**
 * The RecordFields of the record whose JSON text is text[start, end) (a spool entry's `r` member): the
 * object must end exactly at `end`, each member may appear once, and the kept members have their types.
 */
export function readRecordFields(text: string, start = 0, end = text.length): RecordFields {
  let v: unknown;
  let seq: unknown;
  let time: string | undefined;
  let type: string | undefined;
  let hash: string | undefined;
  let prevHash: string | undefined;
  let identity: unknown;
  let decision: { result: string | undefined } | undefined;
  let outcome: { status: string | undefined } | undefined;
  // Kept members seen (a bit each): one twice is refused (JSON.parse would take the last).
  let seen = 0;
  const after = { end: 0 };
  if (text.charCodeAt(start) !== OPEN_BRACE) fail(text, start, 'object expected');
  let i = start + 1;
  for (;;) {
    if (text.charCodeAt(i) !== QUOTE) fail(text, i, 'member name expected');
    const nameEnd = stringEnd(text, i);
    const raw = text.slice(i + 1, nameEnd);
    const name = needsParse(raw) ? (JSON.parse(text.slice(i, nameEnd + 1)) as string) : raw;
    if (text.charCodeAt(nameEnd + 1) !== COLON) fail(text, nameEnd + 1, 'colon expected');
    const from = nameEnd + 2;
    const bit = KEPT.indexOf(name);
    if (bit >= 0) {
      if ((seen & (1 << bit)) !== 0) fail(text, from, `member ${name} twice`);
      seen |= 1 << bit;
    }
    switch (name) {
      case 'decision':
        decision = { result: innerString(text, from, 'result', after) };
        i = after.end;
        break;
      case 'outcome':
        outcome = { status: innerString(text, from, 'status', after) };
        i = after.end;
        break;
      default:
        i = skipValue(text, from);
        if (name === 'time') time = stringOf(text, from, i);
        else if (name === 'type') type = stringOf(text, from, i);
        else if (name === 'hash') hash = stringOf(text, from, i);
        else if (name === 'prevHash') prevHash = stringOf(text, from, i);
        else if (name === 'seq' || name === 'v') {
          const n: unknown = JSON.parse(text.slice(from, i));
          if (name === 'seq') seq = n;
          else v = n;
        } else if (name === 'identity') identity = JSON.parse(text.slice(from, i));
    }
    const next = text.charCodeAt(i);
    if (next === CLOSE_BRACE) break;
    if (next !== COMMA) fail(text, i, 'comma expected');
    i += 1;
  }
  if (i + 1 !== end) fail(text, i + 1, 'text after the record');
  if (!Number.isSafeInteger(v)) fail(text, start, 'v missing or not an integer');
  if (!Number.isSafeInteger(seq)) fail(text, start, 'seq missing or not an integer');
  if (time === undefined || type === undefined || hash === undefined || prevHash === undefined)
    fail(text, start, 'time, type, hash or prevHash missing or not a string');
  const fields: {
    v: number;
    seq: number;
    time: string;
    type: AuditRecord['type'];
    hash: string;
    prevHash: string;
    identity?: AuditRecord['identity'];
    decision?: Pick<Decision, 'result'>;
    outcome?: Pick<Outcome, 'status'>;
  } = { v: v as number, seq: seq as number, time, type: type as AuditRecord['type'], hash, prevHash };
  if (identity !== undefined) fields.identity = identity as AuditRecord['identity'];
  if (decision !== undefined) {
    if (decision.result === undefined) fail(text, start, 'decision.result missing or not a string');
    fields.decision = { result: decision.result as Decision['result'] };
  }
  if (outcome !== undefined) {
    if (outcome.status === undefined) fail(text, start, 'outcome.status missing or not a string');
    fields.outcome = { status: outcome.status as Outcome['status'] };
  }
  return fields;
}
