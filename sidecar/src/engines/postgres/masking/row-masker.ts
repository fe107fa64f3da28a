// Applies result plans (core/masking/result-plan.ts) to one command's response: DataRows get their masked
// columns replaced by values valid for the column's type and format (text and binary), so drivers keep
// decoding; ErrorResponses and NoticeResponses of a statement that read masked data lose the text that can
// echo a value (a cast error quotes it); counts per column and strategy go to the outcome record, never a
// value. One plan per statement of the command, in order: a simple Query may carry several.
import type { MaskedCount } from '../../../core/command.ts';
import { replaceDetected } from '../../../core/masking/detectors.ts';
import { applyStrategy, REDACTED } from '../../../core/masking/mask-value.ts';
import { PASS, type ColumnAction, type ResultPlan } from '../../../core/masking/result-plan.ts';
import { BackendCode, type FieldDescription } from '../protocol/backend-messages.ts';
import { decodeErrorFields, decodeRowDescription } from '../protocol/backend-scanner.ts';
import { errorResponse } from '../protocol/backend-encoder.ts';
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
  dataRow(frame: Buffer): Buffer;
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

/** One result column as the masker needs it. */
interface Column {
  readonly action: ColumnAction;
  readonly type: number;
  readonly binary: boolean;
  readonly label: string;
  count: number;
  /** The column's redacted value, made once. */
  redacted?: { readonly value: Buffer | null };
}

function isAscii(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if ((b[i] ?? 0) > 0x7f) return false;
  return true;
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
  private readonly done: MaskedCount[] = [];

  constructor(options: RowMaskerOptions) {
    this.plans = options.plans;
    this.hashKey = options.hashKey;
    this.described = options.described;
  }

  private readonly described: (() => readonly FieldDescription[] | undefined) | undefined;

  private get plan(): ResultPlan | undefined {
    return this.plans[this.statement];
  }

  rowDescription(frame: Buffer): Buffer {
    this.columns = this.shape(decodeRowDescription(frame));
    return frame;
  }

  statementEnd(): void {
    this.collect();
    this.columns = undefined;
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
      ...(f.position === undefined ? {} : { position: f.position }),
    });
  }

  notice(frame: Buffer): Buffer {
    return this.sensitive() ? EMPTY : frame;
  }

  dataRow(frame: Buffer): Buffer {
    const columns = this.columns ?? this.lateShape() ?? this.shapeless(frame);
    if (columns === undefined) return frame;
    const count = frame.readInt16BE(5);
    // Offsets of each value (start of its length word), to copy untouched spans whole.
    let pos = 7;
    let replacements: { start: number; end: number; value: Buffer | null }[] | undefined;
    for (let i = 0; i < count; i++) {
      const len = frame.readInt32BE(pos);
      const start = pos;
      const end = pos + 4 + (len < 0 ? 0 : len);
      const column = columns[i] ?? FALLBACK_COLUMN;
      if (column.action.kind !== 'pass' && len >= 0) {
        const original = frame.subarray(pos + 4, end);
        const masked = this.maskValue(column, original);
        if (masked !== original) {
          (replacements ??= []).push({ start, end, value: masked });
        }
      }
      pos = end;
    }
    if (replacements === undefined) return frame;
    let size = frame.length;
    for (const r of replacements) size += (r.value === null ? 4 : 4 + r.value.length) - (r.end - r.start);
    const out = Buffer.allocUnsafe(size);
    out[0] = BackendCode.DataRow;
    out.writeInt32BE(size - 1, 1);
    let from = 5;
    let at = 5;
    for (const r of replacements) {
      at += frame.copy(out, at, from, r.start);
      if (r.value === null) {
        at = out.writeInt32BE(-1, at);
      } else {
        at = out.writeInt32BE(r.value.length, at);
        at += r.value.copy(out, at);
      }
      from = r.end;
    }
    frame.copy(out, at, from);
    return out;
  }

  // ---- internals -------------------------------------------------------------------------------

  private sensitive(): boolean {
    // Once any statement of the command read masked data, its errors and notices are scrubbed.
    return this.plans.some((p) => p.kind === 'deny' || p.sensitive);
  }

  private lateShape(): Column[] | undefined {
    const fields = this.described?.();
    if (fields === undefined) return undefined;
    this.columns = this.shape(fields);
    return this.columns;
  }

  /** Rows without a known shape (no RowDescription seen): every value takes the plan's fallback. */
  private shapeless(frame: Buffer): Column[] | undefined {
    const plan = this.plan;
    if (plan === undefined || plan.kind === 'deny') return undefined;
    const count = frame.readInt16BE(5);
    const columns: Column[] = [];
    for (let i = 0; i < count; i++) {
      const action = plan.columns?.[i] ?? plan.fallback;
      const effective = action.kind === 'pass' ? (plan.detect ?? PASS) : action;
      columns.push({
        action: effective,
        type: UNKNOWN_TYPE,
        binary: false,
        label: `column ${String(i + 1)}`,
        count: 0,
      });
    }
    this.columns = columns;
    return columns;
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
      return { action, type: f.typeOid, binary: f.format === 1, label: `${f.name}${source}`, count: 0 };
    });
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
      // One value per column, made once.
      case 'redact':
        return (column.redacted ??= { value: this.replacement(column, REDACTED) }).value;
      case 'fixed':
        return (column.redacted ??= { value: this.replacement(column, action.value) }).value;
      case 'hash':
        return column.type === UNKNOWN_TYPE
          ? NULL_VALUE
          : hashedValue(column.type, column.binary, original, this.hashKey);
      case 'partial': {
        if (TEXT_LIKE.has(column.type) && isAscii(original)) {
          // The hot case without a detour through strings: ASCII text in place.
          const keep = original.length >= 2 * action.keepLast ? action.keepLast : 0;
          const out = Buffer.alloc(original.length, 0x2a);
          original.copy(out, original.length - keep, original.length - keep);
          return out;
        }
        const text = canonicalText(column.type, column.binary, original);
        if (text === undefined) return this.replacement(column, REDACTED);
        return this.replacement(column, applyStrategy('partial', text, this.hashKey, action.keepLast));
      }
    }
  }

  /** A masked text in the column's type and format, or the type's fixed value, or NULL. */
  private replacement(column: Column, masked: string): Buffer | null {
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
const FALLBACK_COLUMN: Column = { action: PASS, type: 0, binary: false, label: '', count: 0 };
