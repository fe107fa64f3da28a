// From what a result is made of (its column lineage, found by the engine) and the policy's masking
// instructions to what happens to each result column: pass, mask with a rule's strategy, or scan with
// detectors; or the whole statement is refused. Protocol-neutral: the PostgreSQL engine builds the lineage
// from the parse tree and applies the plan to DataRows; other engines can build lineage of their own.
//
// Fail closed: a column whose lineage is not proven clean is masked (or the statement denied, per the
// strictest instruction's `untraceable`), never passed through.
import type { ContentDetector, MaskingInstruction, MaskingStrategy, UntraceableAction } from '@chaperone/api';
import { ALL_DETECTORS } from './detectors.ts';

/** What one result column is made of. Column ids are `schema.relation.column`, lower-case as stored. */
export interface ColumnLineage {
  /** Every column (of tables and of views on the way) the value is computed from. */
  readonly sources: readonly string[];
  /** The value is exactly one source column's value (a bare reference, through aliases, views, subqueries). */
  readonly direct: boolean;
  /** Something the value depends on could not be traced (an opaque function, an unknown relation). */
  readonly opaque: boolean;
}

/** What a statement's result (and the statement around it) is made of. */
export interface ResultLineage {
  /** One entry per result column, in order; undefined when the result's shape could not be derived. */
  readonly columns: readonly ColumnLineage[] | undefined;
  /** Every column read anywhere in the statement. */
  readonly touched: readonly string[];
  /** Columns used to filter, join, group, order or deduplicate (the predicate-oracle class). */
  readonly predicates: readonly string[];
  /** Something in the statement could not be traced. */
  readonly opaque: boolean;
  /** Columns whose values the statement writes somewhere (INSERT … SELECT, UPDATE SET, a side-effecting call). */
  readonly written: readonly string[];
  /** The statement hands data out on a path that carries no maskable rows (COPY, EXPLAIN). */
  readonly export?: string;
  /** Something a masked identity may not run at all (statistics views, server file reads), in words. */
  readonly refusal?: string;
}

export type ColumnAction =
  | { readonly kind: 'pass' }
  | {
      readonly kind: 'mask';
      readonly strategy: MaskingStrategy;
      readonly keepLast: number;
      /** fixed: the text written in text-like columns. */
      readonly value: string;
      readonly rule: string;
      /** Why: the masked source column, `type <name>`, or `untraceable`. */
      readonly source: string;
    }
  | {
      readonly kind: 'detect';
      readonly detectors: readonly {
        readonly detector: ContentDetector;
        readonly strategy: MaskingStrategy;
        readonly keepLast: number;
        readonly value: string;
        readonly rule: string;
      }[];
    };

export const PASS: ColumnAction = Object.freeze({ kind: 'pass' });

export type ResultPlan =
  | { readonly kind: 'deny'; readonly reason: string }
  | {
      readonly kind: 'mask';
      /** Per column; undefined: every column takes `fallback` (the shape was not derived). */
      readonly columns: readonly ColumnAction[] | undefined;
      readonly fallback: ColumnAction;
      /** Columns of these type names are masked whatever their lineage (decided when the types are known). */
      readonly typeRules: ReadonlyMap<string, ColumnAction>;
      /** Detectors every otherwise passed text value goes through. */
      readonly detect: ColumnAction | undefined;
      /** Errors and notices of the statement must be scrubbed: it read masked or untraceable data. */
      readonly sensitive: boolean;
    };

/** Compiled column patterns of one instruction list; built once per list (decisions are cached). */
export interface MaskingRules {
  readonly instructions: readonly MaskingInstruction[];
  /** The first instruction whose column patterns cover a column id, if any (cached per id). */
  ruleFor(columnId: string): MaskingInstruction | undefined;
  /** Instructions that mask by column or type. */
  readonly byColumn: readonly MaskingInstruction[];
  readonly untraceable: UntraceableAction;
  readonly denyPredicates: boolean;
  readonly detect: ColumnAction | undefined;
  readonly typeRules: ReadonlyMap<string, ColumnAction>;
}

const STRICTNESS: Readonly<Record<UntraceableAction, number>> = { detect: 0, redact: 1, deny: 2 };

function patternRegExp(pattern: string): RegExp {
  const escaped = pattern
    .toLowerCase()
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^]*');
  return new RegExp(`^${escaped}$`);
}

/**
 * Whether a column pattern covers `schema.relation.column`: `column`, `relation.column` and
 * `schema.relation.column` forms; `*` matches any run of characters within the parts it is written in.
 */
function patternMatcher(pattern: string): (columnId: string) => boolean {
  const parts = pattern.split('.').length;
  const re = patternRegExp(pattern);
  return (id) => {
    const idParts = id.split('.');
    if (parts >= 3) return re.test(id);
    return re.test(idParts.slice(idParts.length - parts).join('.'));
  };
}

const compiled = new WeakMap<readonly MaskingInstruction[], MaskingRules>();

export function maskingRules(instructions: readonly MaskingInstruction[]): MaskingRules {
  const cached = compiled.get(instructions);
  if (cached !== undefined) return cached;
  const matchers = instructions.map((i) => ({ instruction: i, match: i.columns.map(patternMatcher) }));
  const byId = new Map<string, MaskingInstruction | undefined>();
  const byColumn = instructions.filter((i) => i.columns.length > 0 || (i.types?.length ?? 0) > 0);
  let untraceable: UntraceableAction = 'detect';
  for (const i of byColumn) {
    const u = i.untraceable ?? 'redact';
    if (STRICTNESS[u] > STRICTNESS[untraceable]) untraceable = u;
  }
  const detectors = instructions.flatMap((i) =>
    i.detectors.map((detector) => ({
      detector,
      strategy: i.strategy,
      keepLast: i.keepLast ?? 4,
      value: i.value ?? '',
      rule: i.rule,
    })),
  );
  const typeRules = new Map<string, ColumnAction>();
  for (const i of instructions) {
    for (const t of i.types ?? []) {
      if (!typeRules.has(t.toLowerCase())) typeRules.set(t.toLowerCase(), maskAction(i, `type ${t}`));
    }
  }
  const rules: MaskingRules = {
    instructions,
    byColumn,
    untraceable,
    denyPredicates: instructions.some((i) => i.denyPredicates === true),
    detect: detectors.length === 0 ? undefined : { kind: 'detect', detectors },
    typeRules,
    ruleFor(columnId) {
      if (byId.has(columnId)) return byId.get(columnId);
      const found = matchers.find((m) => m.match.some((f) => f(columnId)))?.instruction;
      if (byId.size > 10_000) byId.clear();
      byId.set(columnId, found);
      return found;
    },
  };
  compiled.set(instructions, rules);
  return rules;
}

function maskAction(i: MaskingInstruction, source: string, strategy = i.strategy): ColumnAction {
  return { kind: 'mask', strategy, keepLast: i.keepLast ?? 4, value: i.value ?? '', rule: i.rule, source };
}

const STRATEGY_STRICTNESS: Readonly<Record<MaskingStrategy, number>> = {
  partial: 0,
  hash: 1,
  fixed: 2,
  redact: 3,
  null: 4,
};

/** The fallback for untraceable values: redact under the strictest column rule, or detectors everywhere. */
function untraceableAction(rules: MaskingRules): ColumnAction {
  const rule = rules.byColumn[0];
  if (rules.untraceable === 'detect' || rule === undefined) {
    return {
      kind: 'detect',
      detectors: ALL_DETECTORS.map((detector) => ({
        detector,
        strategy: 'redact' as const,
        keepLast: 0,
        value: '',
        rule: rule?.rule ?? 'untraceable',
      })),
    };
  }
  return { kind: 'mask', strategy: 'redact', keepLast: 0, value: '', rule: rule.rule, source: 'untraceable' };
}

/** Decides the plan for one statement's result under `rules`. */
export function planResult(lineage: ResultLineage, rules: MaskingRules): ResultPlan {
  const masked = (id: string): boolean => rules.ruleFor(id) !== undefined;
  const hasColumnRules = rules.byColumn.length > 0;
  if (lineage.refusal !== undefined && hasColumnRules) return { kind: 'deny', reason: lineage.refusal };
  const touchedMasked = lineage.touched.filter(masked);
  const sensitive = touchedMasked.length > 0 || (hasColumnRules && lineage.opaque);
  if (hasColumnRules) {
    if (lineage.export !== undefined && sensitive) {
      return {
        kind: 'deny',
        reason: `${lineage.export} of masked columns is not allowed (${describe(touchedMasked)})`,
      };
    }
    const written = lineage.written.filter(masked);
    if (written.length > 0) {
      return {
        kind: 'deny',
        reason: `writing values of masked columns elsewhere is not allowed (${describe(written)})`,
      };
    }
    if (rules.denyPredicates) {
      const oracle = lineage.predicates.filter(masked);
      if (oracle.length > 0) {
        return {
          kind: 'deny',
          reason: `filtering, joining, grouping or ordering on masked columns is not allowed (${describe(oracle)})`,
        };
      }
    }
  }
  // A result whose shape is unknown but which read nothing masked and nothing opaque passes as it is.
  const fallback = hasColumnRules && sensitive ? untraceableAction(rules) : PASS;
  const untraceableColumns =
    hasColumnRules &&
    ((lineage.columns === undefined && sensitive) || (lineage.columns?.some((c) => c.opaque) ?? false));
  if (untraceableColumns && rules.untraceable === 'deny') {
    return { kind: 'deny', reason: 'the lineage of a result column cannot be proven (untraceable: deny)' };
  }
  const columns = lineage.columns?.map((c): ColumnAction => {
    if (!hasColumnRules) return PASS;
    if (c.opaque) return fallback;
    let strictest: MaskingInstruction | undefined;
    let source = '';
    for (const id of c.sources) {
      const rule = rules.ruleFor(id);
      if (
        rule !== undefined &&
        (strictest === undefined || STRATEGY_STRICTNESS[rule.strategy] > STRATEGY_STRICTNESS[strictest.strategy])
      ) {
        strictest = rule;
        source = id;
      }
    }
    if (strictest === undefined) return PASS;
    if (c.direct) return maskAction(strictest, source);
    // A value computed from a masked column keeps nothing of it: partial would keep the tail of any
    // expression (`repeat('x', 8) || substr(card, 1, 4)` shows the first four digits) and a hash tells which
    // rows agree on any predicate written into the expression (`case when email like 'a%' …`).
    const derived = strictest.strategy === 'hash' || strictest.strategy === 'partial' ? 'redact' : strictest.strategy;
    return maskAction(strictest, `${source} (derived)`, derived);
  });
  return {
    kind: 'mask',
    columns,
    fallback,
    typeRules: rules.typeRules,
    detect: rules.detect,
    sensitive: sensitive || untraceableColumns,
  };
}

/** True when a plan changes nothing: no rewriting is needed for the statement. */
export function planIsClear(plan: ResultPlan): boolean {
  if (plan.kind === 'deny') return false;
  if (plan.sensitive || plan.detect !== undefined || plan.typeRules.size > 0 || plan.columns === undefined)
    return false;
  return plan.columns.every((c) => c.kind === 'pass');
}

function describe(ids: readonly string[]): string {
  const unique = [...new Set(ids)];
  return unique.length > 3 ? `${unique.slice(0, 3).join(', ')}, …` : unique.join(', ');
}
