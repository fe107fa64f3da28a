// Applies result plans (core/masking/result-plan.ts) to one command's response: DataRows get their masked
// columns replaced by values valid for the column's type and format (text and binary), so drivers keep
// decoding; ErrorResponses and NoticeResponses of a statement that read masked data lose the text that can
// echo a value (a cast error quotes it); counts per column and strategy go to the outcome record, never a
// value. One plan per statement of the command, in order: a simple Query may carry several.
import type { MaskedCount } from '../../../core/command.ts';
import { replaceDetected } from '../../../core/masking/detectors.ts';
import { applyStrategy, keyedHasher, REDACTED, type KeyedHasher } from '../../../core/masking/mask-value.ts';
import { PASS, type ColumnAction, type ResultPlan } from '../../../core/masking/result-plan.ts';
import { BackendCode, type FieldDescription } from '../protocol/backend-messages.ts';
import { decodeErrorFields, decodeRowDescription } from '../protocol/backend-scanner.ts';
import { errorResponse } from '../protocol/backend-encoder.ts';
import { raisedByAnalysis } from './server-messages.ts';
import { ProtocolViolation } from '../protocol/protocol-violation.ts';
import {
  canonicalText,
  fixedValue,
  hashedValue,
  jsonbBinary,
  maskJsonTokens,
  T,
  TEXT_LIKE,
  textValue,
} from './typed-values.ts';

/** What the response tracker calls while a masked command's response flows; each returns the bytes to send. */
export interface ResultRewriter {
  rowDescription(frame: Buffer): Buffer;
  /** One or more whole DataRow frames, back to back (the scanner's dataRowRuns): the rows to send instead. */
  dataRows(frames: Buffer): Buffer;
  /** A statement of the command ended (CommandComplete, EmptyQueryResponse, PortalSuspended). */
  statementEnd(): void;
  error(frame: Buffer): Buffer;
  notice(frame: Buffer): Buffer;
  /** Values masked so far, per column and strategy. */
  counts(): MaskedCount[];
}

const TYPE_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(T).map(([name, oid]) => [oid, name]));
/** Type names as policies write them (aliases of the catalogue names). */
const TYPE_ALIASES: Readonly<Record<string, string>> = {
  integer: 'int4',
  int: 'int4',
  bigint: 'int8',
  smallint: 'int2',
  boolean: 'bool',
  'character varying': 'varchar',
  character: 'bpchar',
  real: 'float4',
  'double precision': 'float8',
  decimal: 'numeric',
  'timestamp with time zone': 'timestamptz',
  'timestamp without time zone': 'timestamp',
};

export function typeName(oid: number): string | undefined {
  return TYPE_NAMES.get(oid);
}

export function canonicalTypeName(name: string): string {
  const lower = name.toLowerCase();
  return TYPE_ALIASES[lower] ?? lower;
}

/** A plan's type rules keyed by catalogue type name (a policy may write `integer` for int4). */
const canonicalRules = new WeakMap<ReadonlyMap<string, ColumnAction>, ReadonlyMap<string, ColumnAction>>();
function typeRulesByName(rules: ReadonlyMap<string, ColumnAction>): ReadonlyMap<string, ColumnAction> {
  let byName = canonicalRules.get(rules);
  if (byName === undefined) {
    const m = new Map<string, ColumnAction>();
    for (const [name, action] of rules) if (!m.has(canonicalTypeName(name))) m.set(canonicalTypeName(name), action);
    byName = m;
    canonicalRules.set(rules, byName);
  }
  return byName;
}

const NULL_VALUE = null;

/** What the row walk does with a column's non-NULL values. */
const Op = {
  /** Leave the bytes where they are. */
  pass: 0,
  /** Write `Column.constant` (redact, fixed, null: one value per column, made once). */
  constant: 1,
  /** partial on text: stars and the kept tail written in place of an ASCII value. */
  partialText: 2,
  /** hash on text: `hmac:` and 16 hex digits written straight from the value's bytes. */
  hashText: 3,
  /** Anything else: maskValue on a view of the value. */
  value: 4,
} as const;
type Op = (typeof Op)[keyof typeof Op];

/** One result column as the masker needs it. */
interface Column {
  readonly action: ColumnAction;
  readonly type: number;
  readonly binary: boolean;
  readonly label: string;
  count: number;
  readonly op: Op;
  /** Op.constant: the value's length word and bytes (length -1 alone for NULL). */
  readonly constant: Buffer | undefined;
  /** Op.partialText: characters kept at the end. */
  readonly keepLast: number;
}

/** A value as a DataRow carries it: its length word, then its bytes; NULL as length -1. */
function lengthPrefixed(value: Buffer | null): Buffer {
  if (value === null) return NULL_LENGTH;
  const out = Buffer.alloc(4 + value.length);
  out.writeInt32BE(value.length, 0);
  value.copy(out, 4);
  return out;
}

const NULL_LENGTH = Buffer.from([0xff, 0xff, 0xff, 0xff]);
const HMAC_PREFIX = Buffer.from('hmac:');
/** `hmac:` and 16 hex digits. */
const HASHED_TEXT_LENGTH = HMAC_PREFIX.length + 16;

function readInt32(b: Buffer, at: number): number {
  return ((b[at] ?? 0) << 24) | ((b[at + 1] ?? 0) << 16) | ((b[at + 2] ?? 0) << 8) | (b[at + 3] ?? 0);
}

function writeInt32(b: Buffer, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = v >>> 16;
  b[at + 2] = v >>> 8;
  b[at + 3] = v;
}

/** Copies `src[from, to)` to `dst` at `at`, returns the end: short spans by a loop, cheaper than a native call. */
function copySpan(src: Buffer, from: number, to: number, dst: Buffer, at: number): number {
  const n = to - from;
  if (n > 16) return at + src.copy(dst, at, from, to);
  for (let i = 0; i < n; i++) dst[at + i] = src[from + i] ?? 0;
  return at + n;
}

function malformedRow(what: string): ProtocolViolation {
  return new ProtocolViolation(`DataRow: ${what}`);
}

export interface RowMaskerOptions {
  readonly plans: readonly ResultPlan[];
  readonly hashKey: Buffer;
  /** The shape of the rows when no RowDescription comes with them (an extended-protocol Execute), read at the first row. */
  readonly described?: () => readonly FieldDescription[] | undefined;
}

export class RowMasker implements ResultRewriter {
  private readonly plans: readonly ResultPlan[];
  private readonly hashKey: Buffer;
  private statement = 0;
  private columns: Column[] | undefined;
  /** Columns up to the last one that is not passed: the row walk reads no further. */
  private walked = 0;
  /** Bytes a row may grow by through constant and hashed-text columns. */
  private growth = 0;
  /**
   * Where rewritten runs are written, one after another; `slabUsed` bytes of it are handed out (views that
   * may still be queued on the client socket), and never written again: a full slab is replaced, not reused.
   */
  private slab: Buffer = EMPTY;
  private slabUsed = 0;
  private readonly done: MaskedCount[] = [];

  private readonly hasher: KeyedHasher;

  constructor(options: RowMaskerOptions) {
    this.plans = options.plans;
    this.hashKey = options.hashKey;
    this.hasher = keyedHasher(options.hashKey);
    this.described = options.described;
  }

  private readonly described: (() => readonly FieldDescription[] | undefined) | undefined;

  private get plan(): ResultPlan | undefined {
    return this.plans[this.statement];
  }

  rowDescription(frame: Buffer): Buffer {
    this.use(this.shape(decodeRowDescription(frame)));
    return frame;
  }

  statementEnd(): void {
    this.collect();
    this.columns = undefined;
    this.walked = 0;
    this.growth = 0;
    this.statement += 1;
  }

  counts(): MaskedCount[] {
    this.collect();
    return this.done;
  }

  error(frame: Buffer): Buffer {
    if (!this.sensitive()) return frame;
    const f = decodeErrorFields(frame);
    return errorResponse({
      severity: f.severity,
      code: f.code,
      message: `chaperone: the error text is withheld because the statement reads masked columns (SQLSTATE ${f.code})`,
      // A position counts characters of the agent's text only when analysis of that text raised the error;
      // otherwise it may count characters of a value the server parsed (server-messages.ts).
      ...(f.position === undefined || !raisedByAnalysis(f) ? {} : { position: f.position }),
    });
  }

  notice(frame: Buffer): Buffer {
    return this.sensitive() ? EMPTY : frame;
  }

  /**
   * Rewrites a run of DataRows into one Buffer: the bytes between masked values (the rest of a row, the next
   * row's header and its first values) are copied as one span, masked values are written in their place,
   * and a row whose size changed gets its length word patched. Value lengths are read only up to the last
   * masked column. Returns `frames` itself when nothing of this statement is masked.
   */
  dataRows(frames: Buffer): Buffer {
    const columns = this.columns ?? this.lateShape() ?? this.shapeless(frames);
    if (columns === undefined || this.walked === 0) return frames;
    const walked = this.walked;
    const growth = this.growth;
    // Runs are written one after another into a slab, so most runs cost no allocation but their view.
    const estimate = frames.length + (frames.length >>> 2) + growth;
    if (this.slab.length - this.slabUsed < estimate) {
      // Small for a small result, growing to SLAB_SIZE for a long one.
      this.slab = Buffer.allocUnsafe(Math.max(Math.min(SLAB_SIZE, 2 * this.slab.length), FIRST_SLAB_SIZE, estimate));
      this.slabUsed = 0;
    }
    let out = this.slab;
    let begin = this.slabUsed;
    let o = begin;
    /** Start of the input bytes not copied yet; they go out unchanged. */
    let from = 0;
    for (let at = 0; at < frames.length;) {
      if (frames.length - at < 7 || frames[at] !== BackendCode.DataRow) throw malformedRow('truncated run');
      const rowEnd = at + 1 + readInt32(frames, at + 1);
      if (rowEnd > frames.length || rowEnd < at + 7) throw malformedRow('length out of bounds');
      if (o + (rowEnd - from) + growth > out.length) {
        out = this.grow(begin, o, o - begin + (rowEnd - from) + growth);
        o -= begin;
        begin = 0;
      }
      // Where this row's header lands: it goes out with the span before the row's first masked value.
      let rowStart = o + (at - from);
      let changed = false;
      const count = ((frames[at + 5] ?? 0) << 8) | (frames[at + 6] ?? 0);
      const last = count < walked ? count : walked;
      let pos = at + 7;
      for (let i = 0; i < last; i++) {
        if (rowEnd - pos < 4) throw malformedRow('value length out of bounds');
        const len = readInt32(frames, pos);
        const valueEnd = len < 0 ? pos + 4 : pos + 4 + len;
        if (valueEnd > rowEnd) throw malformedRow('value out of bounds');
        const column = columns[i] as Column;
        const op = column.op;
        if (op === Op.pass || len < 0) {
          pos = valueEnd;
          continue;
        }
        const start = pos + 4;
        if (op === Op.partialText && isAscii(frames, start, valueEnd)) {
          // The value keeps its length (and its length word): stars, then the kept tail.
          o = copySpan(frames, from, start, out, o);
          const keep = len >= 2 * column.keepLast ? column.keepLast : 0;
          const stars = o + len - keep;
          if (len - keep > 16) out.fill(0x2a, o, stars);
          else for (let k = o; k < stars; k++) out[k] = 0x2a;
          o = copySpan(frames, valueEnd - keep, valueEnd, out, stars);
        } else if (op === Op.constant) {
          o = copySpan(frames, from, pos, out, o);
          const constant = column.constant as Buffer;
          o = copySpan(constant, 0, constant.length, out, o);
        } else if (op === Op.hashText) {
          o = copySpan(frames, from, pos, out, o);
          writeInt32(out, o, HASHED_TEXT_LENGTH);
          o = copySpan(HMAC_PREFIX, 0, HMAC_PREFIX.length, out, o + 4);
          o += out.write(this.hasher.hex16(frames, start, valueEnd), o, 'latin1');
        } else {
          const original = frames.subarray(start, valueEnd);
          const masked = this.maskValue(column, original); // counts for itself
          if (masked === original) {
            pos = valueEnd;
            continue;
          }
          const size = masked === null ? 4 : 4 + masked.length;
          const needed = o + (pos - from) + size + (rowEnd - valueEnd) + growth;
          if (needed > out.length) {
            out = this.grow(begin, o, needed - begin);
            o -= begin;
            rowStart -= begin;
            begin = 0;
          }
          o = copySpan(frames, from, pos, out, o);
          if (masked === null) {
            writeInt32(out, o, -1);
            o += 4;
          } else {
            writeInt32(out, o, masked.length);
            o = copySpan(masked, 0, masked.length, out, o + 4);
          }
          changed = true;
          pos = from = valueEnd;
          continue;
        }
        column.count += 1;
        changed = true;
        pos = from = valueEnd;
      }
      // The header went out before the first masked value; the row ends where its unchanged rest will.
      if (changed) writeInt32(out, rowStart + 1, o + (rowEnd - from) - rowStart - 1);
      at = rowEnd;
    }
    o = copySpan(frames, from, frames.length, out, o);
    this.slabUsed = o;
    return out.subarray(begin, o);
  }

  /** A new slab holding the run written so far (`slab[begin, used)`) at its start, with room for `needed` bytes. */
  private grow(begin: number, used: number, needed: number): Buffer {
    const next = Buffer.allocUnsafe(Math.max(Math.min(SLAB_SIZE, 2 * this.slab.length), needed));
    this.slab.copy(next, 0, begin, used);
    this.slab = next;
    this.slabUsed = 0;
    return next;
  }

  // ---- internals -------------------------------------------------------------------------------

  private sensitive(): boolean {
    // Once any statement of the command read masked data, its errors and notices are scrubbed.
    return this.plans.some((p) => p.kind === 'deny' || p.sensitive);
  }

  private lateShape(): Column[] | undefined {
    const fields = this.described?.();
    if (fields === undefined) return undefined;
    return this.use(this.shape(fields));
  }

  /** Rows without a known shape (no RowDescription seen): every value takes the plan's fallback. */
  private shapeless(frames: Buffer): Column[] | undefined {
    const plan = this.plan;
    if (plan === undefined || plan.kind === 'deny') return undefined;
    if (frames.length < 7) throw malformedRow('truncated');
    // The first row's width; rows of a result all have the same.
    const count = frames.readInt16BE(5);
    const columns: Column[] = [];
    for (let i = 0; i < count; i++) {
      const action = plan.columns?.[i] ?? plan.fallback;
      const effective = action.kind === 'pass' ? (plan.detect ?? PASS) : action;
      columns.push(this.column(effective, UNKNOWN_TYPE, false, `column ${String(i + 1)}`));
    }
    return this.use(columns);
  }

  private shape(fields: readonly FieldDescription[]): Column[] {
    const plan = this.plan;
    return fields.map((f, i): Column => {
      let action: ColumnAction = PASS;
      if (plan !== undefined && plan.kind === 'mask') {
        // A result of another width than the lineage says (a stale catalogue): every column takes the fallback.
        const planned =
          plan.columns !== undefined && plan.columns.length === fields.length ? plan.columns[i] : undefined;
        action = planned ?? plan.fallback;
        if (action.kind === 'pass') {
          const byType = typeRulesByName(plan.typeRules).get(typeName(f.typeOid) ?? '');
          action = byType ?? plan.detect ?? PASS;
        }
      }
      const source = action.kind === 'mask' ? ` (${action.source})` : '';
      return this.column(action, f.typeOid, f.format === 1, `${f.name}${source}`);
    });
  }

  /** A column and how the row walk treats it. */
  private column(action: ColumnAction, type: number, binary: boolean, label: string): Column {
    const base = { action, type, binary, label, count: 0, constant: undefined, keepLast: 0 };
    if (action.kind === 'pass') return { ...base, op: Op.pass };
    if (action.kind === 'detect') return { ...base, op: Op.value };
    const constant = (value: Buffer | null): Column => ({ ...base, op: Op.constant, constant: lengthPrefixed(value) });
    // Rows of an unknown shape: whatever the strategy, NULL (valid in every type and format).
    if (type === UNKNOWN_TYPE) return constant(NULL_VALUE);
    switch (action.strategy) {
      case 'null':
        return constant(NULL_VALUE);
      case 'redact':
        return constant(this.replacement(base, REDACTED));
      case 'fixed':
        return constant(this.replacement(base, action.value));
      case 'partial':
        // ASCII text in place; other values (and text that is not ASCII) through maskValue.
        return { ...base, op: TEXT_LIKE.has(type) ? Op.partialText : Op.value, keepLast: action.keepLast };
      case 'hash':
        // Text in either format is its own canonical text: hashed from its bytes, written as `hmac:…`.
        return { ...base, op: TEXT_LIKE.has(type) || type === 0 ? Op.hashText : Op.value };
    }
  }

  /** Takes the columns of a statement's rows, and what the row walk needs of them. */
  private use(columns: Column[]): Column[] {
    this.columns = columns;
    let walked = 0;
    let growth = 0;
    columns.forEach((c, i) => {
      if (c.op !== Op.pass) walked = i + 1;
      if (c.op === Op.constant) growth += Math.max(0, (c.constant?.length ?? 0) - 4);
      if (c.op === Op.hashText) growth += HASHED_TEXT_LENGTH;
    });
    this.walked = walked;
    this.growth = growth;
    return columns;
  }

  private collect(): void {
    for (const c of this.columns ?? []) {
      if (c.count === 0) continue;
      const a = c.action;
      const rule = a.kind === 'mask' ? a.rule : a.kind === 'detect' ? (a.detectors[0]?.rule ?? '') : '';
      const strategy = a.kind === 'mask' ? a.strategy : 'detect';
      this.done.push({ column: c.label, rule, strategy, count: c.count });
      c.count = 0;
    }
  }

  /** The value to send instead of `original` (the same Buffer when nothing was found to mask). */
  private maskValue(column: Column, original: Buffer): Buffer | null {
    const action = column.action;
    if (action.kind === 'detect') return this.detect(column, original);
    if (action.kind === 'pass') return original;
    column.count += 1;
    switch (action.strategy) {
      case 'null':
        return NULL_VALUE;
      case 'redact':
        return this.replacement(column, REDACTED);
      case 'fixed':
        return this.replacement(column, action.value);
      case 'hash':
        return column.type === UNKNOWN_TYPE
          ? NULL_VALUE
          : hashedValue(column.type, column.binary, original, this.hashKey);
      case 'partial': {
        const text = canonicalText(column.type, column.binary, original);
        if (text === undefined) return this.replacement(column, REDACTED);
        return this.replacement(column, applyStrategy('partial', text, this.hashKey, action.keepLast));
      }
    }
  }

  /** A masked text in the column's type and format, or the type's fixed value, or NULL. */
  private replacement(column: { readonly type: number; readonly binary: boolean }, masked: string): Buffer | null {
    if (column.type === UNKNOWN_TYPE) return NULL_VALUE;
    return textValue(column.type, column.binary, masked);
  }

  private detect(column: Column, original: Buffer): Buffer | null {
    if (column.action.kind !== 'detect') return original;
    const text = canonicalText(column.type, column.binary, original) ?? original.toString('hex');
    let count = 0;
    const detectors = column.action.detectors;
    const mask = (value: string): string => {
      let out = value;
      for (const d of detectors) {
        const r = replaceDetected(out, [d.detector], (m) =>
          applyStrategy(d.strategy, m, this.hashKey, d.keepLast, d.value),
        );
        if (r.count > 0) {
          out = r.text;
          count += r.count;
        }
      }
      return out;
    };
    const json = column.type === T.json || column.type === T.jsonb;
    // In JSON, token by token (the result stays JSON); in other text, the whole text.
    const out = json ? maskJsonTokens(text, mask) : mask(text);
    if (count === 0) return original;
    column.count += count;
    if (json) return column.type === T.jsonb && column.binary ? jsonbBinary(out) : Buffer.from(out);
    // Plain text takes the replacement in place; xml, values of other types (numbers, arrays, composites),
    // and values of an unknown shape in which something was found are replaced whole: a substitution could
    // make them invalid for their type.
    if (column.type === UNKNOWN_TYPE) return NULL_VALUE;
    if ((TEXT_LIKE.has(column.type) || column.type === 0) && column.type !== T.xml) return Buffer.from(out);
    if (column.type === T.xml) return Buffer.from(REDACTED);
    return fixedValue(column.type, column.binary);
  }
}

/** The shape of the rows is not known: masked values become NULL, valid in any type and format. */
const UNKNOWN_TYPE = -1;
const EMPTY = Buffer.alloc(0);

function isAscii(b: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if ((b[i] ?? 0) > 0x7f) return false;
  return true;
}

/** Size of the masker's first output slab, and of the largest (each next one twice the last). */
const FIRST_SLAB_SIZE = 16 * 1024;
const SLAB_SIZE = 256 * 1024;
