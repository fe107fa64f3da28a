// Result masking for one PostgreSQL connection: for each allowed command whose decision carries masking
// instructions, the lineage of every statement (analysis/column-lineage.ts, with relations from the
// resource's RelationCatalog), the plan per statement (core/masking/result-plan.ts), and the RowMasker the
// response tracker runs over the command's response. It keeps what lineage needs across statements: the
// lineage of each open cursor (FETCH returns the DECLARE's rows), the text of each SQL-level prepared
// statement (EXECUTE returns the PREPARE's rows, planned by the server against the current catalogue, so its
// text is walked again at each EXECUTE), and the row shapes Describe answered (an Execute's DataRows come without
// a RowDescription).
import type { MaskingInstruction } from '@chaperone/api';
import { maskingRules, planIsClear, planResult, type ResultPlan } from '../../../core/masking/result-plan.ts';
import type { AnalyzedStatement } from '../analysis/analyze-sql.ts';
import { sqlLineage, type StatementLineage } from '../analysis/column-lineage.ts';
import type { FieldDescription, TransactionStatus } from '../protocol/backend-messages.ts';
import { decodeRowDescription } from '../protocol/backend-scanner.ts';
import { droppedTables, NO_TABLES_DROPPED, type DroppedTable } from './dropped-relations.ts';
import { lineageKey, type RelationCatalog } from './relation-catalog.ts';
import { RowMasker } from './row-masker.ts';

export type MaskingVerdict =
  | { readonly kind: 'none' }
  | { readonly kind: 'rows'; readonly rewriter: RowMasker }
  | { readonly kind: 'deny'; readonly reason: string };

interface ShapeSlot {
  /** The RowDescription a Describe got (a copy), decoded only when a masked Execute needs its shape. */
  rowDescription?: Buffer | undefined;
  /** A portal's: the slot of the statement it was bound from (a portal's Describe tells its statement's shape too). */
  readonly statement?: ShapeSlot;
}

/** The row shape a slot holds; undefined when it holds none or its RowDescription does not decode. */
function fieldsOf(slot: ShapeSlot | undefined): readonly FieldDescription[] | undefined {
  const frame = slot?.rowDescription;
  if (frame === undefined) return undefined;
  try {
    return decodeRowDescription(frame);
  } catch {
    return undefined;
  }
}

const NONE: MaskingVerdict = Object.freeze({ kind: 'none' });

/** EXECUTE lineages made by walking the prepared text again (walk()); any other EXECUTE is of unknown rows. */
const REWALKED = new WeakSet<StatementLineage>();

/** Rows of a cursor or prepared statement the sidecar did not see declared: nothing is known of them. */
const UNKNOWN: StatementLineage = Object.freeze({
  columns: undefined,
  touched: [],
  predicates: [],
  written: [],
  opaque: true,
  missing: [],
});

/** Statements that may change what the catalogue says (DDL, grants, bodies and utilities not modelled). */
const CATALOG_CHANGING: ReadonlySet<string> = new Set(['ddl', 'dcl', 'do', 'call', 'utility', 'other']);

/** Statements that neither read nor write relations: allowed while the catalogue is being changed. */
const CATALOG_INERT: ReadonlySet<string> = new Set([
  'transaction',
  'set',
  'show',
  'listen',
  'notify',
  'lock',
  'maintenance',
]);

const RENAMING =
  ' is not allowed to an identity whose results are masked: masking rules name columns, and values under another name, or handed to code the server runs on reads and writes, would not be masked';

const DROPPING =
  ' is not allowed to an identity whose results are masked: a materialized view over an inheritance parent keeps the rows of a dropped child, which masking rules reach only through the hierarchy';

/** `schema.name` of each table, or the bare name of an unqualified one. */
const qualified = (tables: readonly DroppedTable[]): string =>
  tables.map((t) => (t.schema === undefined ? t.name : `${t.schema}.${t.name}`)).join(', ');

const CHANGED_CATALOG =
  'statements after a catalogue change (DDL, grants, DO, CALL) in the same transaction or pipeline cannot be traced for masking; commit the change first';

/** Walks again after fetching what a walk found missing (views over views need a round per level). */
const MAX_FETCH_ROUNDS = 6;

export interface ResultMaskingOptions {
  readonly catalog: RelationCatalog;
  readonly hashKey: Buffer;
}

export class ResultMasking {
  private readonly catalog: RelationCatalog;
  private readonly hashKey: Buffer;
  private readonly cursors = new Map<string, StatementLineage>();
  /** The PREPARE statement text of each SQL-level prepared statement, by name. */
  private readonly preparedTexts = new Map<string, string>();
  /**
   * Row shapes by 'S:statement' / 'P:portal'. A slot is made new at each Parse / Bind, and a Describe and an
   * Execute hold on to the slot current when the client sent them: pipelined responses then fill and read
   * the shape of their own binding, even when the next Bind of the same name is already on its way.
   */
  private readonly slots = new Map<string, ShapeSlot>();
  /** This connection ran a statement that may change the catalogue, and has not been settled since. */
  private catalogChanged = false;

  constructor(options: ResultMaskingOptions) {
    this.catalog = options.catalog;
    this.hashKey = options.hashKey;
  }

  /**
   * The masking of one allowed command. Synchronous when the catalogue has every relation it reads; a
   * promise when some must be fetched first (the gate holds the command meanwhile).
   */
  plan(
    statements: readonly AnalyzedStatement[],
    instructions: readonly MaskingInstruction[],
    searchPath: readonly string[],
    portal?: { readonly portal: string; readonly statement: string; readonly resultFormats: readonly number[] },
    settled = false,
  ): MaskingVerdict | Promise<MaskingVerdict> {
    if (this.catalogChanged && settled) {
      // The change is committed or gone: read the catalogue again (a walk meanwhile may have cached the
      // definitions from before it).
      this.catalogChanged = false;
      this.catalog.invalidate();
    }
    let changed = this.catalogChanged;
    if (statements.some((s) => CATALOG_CHANGING.has(s.kind))) {
      this.catalog.invalidate();
      this.catalogChanged = true;
    }
    if (instructions.length === 0) return NONE;
    const byColumn = maskingRules(instructions).byColumn.length > 0;
    if (byColumn) {
      // Rules name columns: a column renamed, moved or copied into another by DDL would no longer be masked.
      const renaming = statements.find((s) => s.renamesColumns !== undefined);
      if (renaming?.renamesColumns !== undefined)
        return { kind: 'deny', reason: `${renaming.renamesColumns}${RENAMING}` };
      // After this session changed the catalogue in a transaction or pipeline not yet settled, the catalogue
      // connection still sees the definitions from before (a view redefined to expose a masked column, a
      // column renamed): what the session reads or writes then cannot be traced. Refused until it commits.
      for (const s of statements) {
        if (changed && !CATALOG_INERT.has(s.kind)) return { kind: 'deny', reason: CHANGED_CATALOG };
        if (CATALOG_CHANGING.has(s.kind)) changed = true;
      }
    }
    const drops = byColumn ? droppedTables(statements) : NO_TABLES_DROPPED;
    if (drops.sweeping !== undefined) return { kind: 'deny', reason: `${drops.sweeping}${DROPPING}` };
    if (drops.tables.length > 0) {
      // The stored rows of a materialized view over a parent are masked by a child's rule only while the
      // child is in the hierarchy: asked of the catalogue now, before the DROP runs.
      return this.catalog.inHierarchy(drops.tables).then(
        (members) =>
          members.length > 0
            ? {
                kind: 'deny',
                reason: `dropping ${qualified(members)}, a table in an inheritance hierarchy,${DROPPING}`,
              }
            : this.walkAndDecide(statements, instructions, searchPath, portal),
        (): MaskingVerdict => ({
          kind: 'deny',
          reason: `dropping a table whose inheritance cannot be read${DROPPING}`,
        }),
      );
    }
    return this.walkAndDecide(statements, instructions, searchPath, portal);
  }

  private walkAndDecide(
    statements: readonly AnalyzedStatement[],
    instructions: readonly MaskingInstruction[],
    searchPath: readonly string[],
    portal:
      { readonly portal: string; readonly statement: string; readonly resultFormats: readonly number[] } | undefined,
  ): MaskingVerdict | Promise<MaskingVerdict> {
    const first = this.walk(statements, searchPath);
    if (first.missing.length === 0) return this.decide(statements, first.lineages, instructions, portal);
    return this.fetchAndWalk(statements, searchPath, first.missing).then((lineages) =>
      this.decide(statements, lineages, instructions, portal),
    );
  }

  /**
   * While this connection has a catalogue change not settled, what to do at the next ReadyForQuery: once no
   * transaction is open the change is committed (or gone), and the catalogue is read again on every loop.
   * Other sessions may have read the catalogue of before meanwhile (`begin; alter table …` here, a read
   * there, then `commit`), and would otherwise walk their statements against it for CACHE_TTL_MS more.
   * `then`: what else runs at that ReadyForQuery.
   */
  settling(then: ((status: TransactionStatus) => void) | undefined): ((status: TransactionStatus) => void) | undefined {
    if (!this.catalogChanged) return then;
    return (status) => {
      then?.(status);
      if (status === 'I') this.catalog.invalidate();
    };
  }

  /** A Describe was sent: the returned callback takes its RowDescription (the shape of that binding). */
  describing(kind: 'S' | 'P', name: string): (rowDescription: Buffer) => void {
    const key = `${kind}:${name}`;
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = {};
      this.slots.set(key, slot);
    }
    const target = slot;
    // Most Describes (libpq sends one with every prepared Execute) precede commands nothing is masked in:
    // the frame is kept, not decoded; a copy, since the chunk it is a view of goes on to the client.
    return (frame) => {
      target.rowDescription = Buffer.from(frame);
      // The row shape of a statement does not change between its bindings (only the formats do, and an
      // Execute takes those from its Bind): a driver that describes the portal at the first execution and
      // only binds and executes afterwards (pgJDBC's named statements) gets the shape for those too.
      if (target.statement !== undefined && target.statement.rowDescription === undefined) {
        target.statement.rowDescription = target.rowDescription;
      }
    };
  }

  /**
   * The server may not hold this prepared statement (or cursor) as this connection last planned it: a Parse,
   * Close or DEALLOCATE of the name, or a PREPARE or DECLARE that failed. EXECUTE / FETCH of it are then
   * planned as unknown rows (masked or refused), never with a stale lineage.
   */
  forgetPrepared(name: string): void {
    this.preparedTexts.delete(name);
  }

  forgetCursor(name: string): void {
    this.cursors.delete(name);
  }

  /**
   * A statement was parsed or a portal bound (a new binding of the name; a portal's from `statement`), or
   * either was closed.
   */
  rebound(kind: 'S' | 'P', name: string, statement?: string): void {
    const from = statement === undefined ? undefined : this.slots.get(`S:${statement}`);
    this.slots.set(`${kind}:${name}`, from === undefined ? {} : { statement: from });
  }

  private async fetchAndWalk(
    statements: readonly AnalyzedStatement[],
    searchPath: readonly string[],
    missing: readonly string[],
  ): Promise<StatementLineage[]> {
    let wanted = missing;
    let lineages: StatementLineage[] = [];
    for (let round = 0; round < MAX_FETCH_ROUNDS; round++) {
      try {
        await this.catalog.fetch(wanted);
      } catch {
        // The catalogue cannot be read: what is missing stays unknown, and unknown is masked or denied.
        return this.walk(statements, searchPath).lineages;
      }
      const walked = this.walk(statements, searchPath);
      lineages = walked.lineages;
      if (walked.missing.length === 0) break;
      wanted = walked.missing;
    }
    return lineages;
  }

  private walk(
    statements: readonly AnalyzedStatement[],
    searchPath: readonly string[],
  ): { lineages: StatementLineage[]; missing: string[] } {
    const missing = new Set<string>();
    let preparedHere: Map<string, string> | undefined; // PREPAREs earlier in this string
    const lineages = statements.map((s): StatementLineage => {
      const lineage = this.walkText(s.text, searchPath, missing);
      if (lineage.prepares !== undefined) (preparedHere ??= new Map()).set(lineage.prepares, s.text);
      if (lineage.executes === undefined) return lineage;
      // The server plans EXECUTE against the catalogue of now, not of the PREPARE: a view redefined since
      // (`create or replace view v as select email as label …`) or a table replaced by a view under its name
      // is what it reads. The prepared text is walked again (cached like any walk of this catalogue).
      const text = preparedHere?.get(lineage.executes) ?? this.preparedTexts.get(lineage.executes);
      if (text === undefined) return lineage; // resolve(): unknown rows
      const { prepares: _prepares, ...prepared } = this.walkText(text, searchPath, missing);
      const executed: StatementLineage = {
        ...prepared,
        executes: lineage.executes,
        touched: [...prepared.touched, ...lineage.touched],
        predicates: [...prepared.predicates, ...lineage.predicates],
        written: [...prepared.written, ...lineage.written],
        opaque: prepared.opaque || lineage.opaque,
        ...(lineage.refusal === undefined ? {} : { refusal: lineage.refusal }),
      };
      REWALKED.add(executed);
      return executed;
    });
    return { lineages, missing: [...missing] };
  }

  /** One statement's lineage; the names it found missing go into `missing`. */
  private walkText(text: string, searchPath: readonly string[], missing: Set<string>): StatementLineage {
    // The walk depends on the exact text, the search_path and the catalogue; the catalogue keeps it for as
    // long as none of those changed (relation-catalog.ts).
    const key = lineageKey(text, searchPath);
    const cached = this.catalog.cachedLineage(key);
    if (cached !== undefined) return cached;
    const lookup = this.catalog.lookup(searchPath);
    let lineage: StatementLineage;
    try {
      lineage = sqlLineage(text, lookup)[0] ?? UNKNOWN;
    } catch {
      return UNKNOWN;
    }
    for (const name of lookup.missing) missing.add(name);
    this.catalog.rememberLineage(key, lineage, lookup);
    return lineage;
  }

  private decide(
    statements: readonly AnalyzedStatement[],
    walked: readonly StatementLineage[],
    instructions: readonly MaskingInstruction[],
    portal:
      { readonly portal: string; readonly statement: string; readonly resultFormats: readonly number[] } | undefined,
  ): MaskingVerdict {
    const rules = maskingRules(instructions);
    const plans: ResultPlan[] = [];
    // In order: a FETCH later in the same query string reads the cursor an earlier DECLARE opened.
    for (const [i, statement] of walked.entries()) {
      const l = this.resolve(statement);
      const plan = planResult(l, rules);
      if (plan.kind === 'deny') return { kind: 'deny', reason: plan.reason };
      plans.push(plan);
      this.remember(l, statements[i]?.text);
    }
    if (plans.every(planIsClear)) return NONE;
    const described = portal === undefined ? undefined : this.shapeOf(portal);
    return {
      kind: 'rows',
      rewriter: new RowMasker({ plans, hashKey: this.hashKey, ...(described === undefined ? {} : { described }) }),
    };
  }

  /** FETCH and EXECUTE return the rows of what DECLARE and PREPARE stored. */
  private resolve(l: StatementLineage): StatementLineage {
    if (l.fetches !== undefined) return this.cursors.get(l.fetches) ?? UNKNOWN;
    if (l.executes !== undefined && !REWALKED.has(l)) {
      return { ...UNKNOWN, touched: l.touched, written: l.written };
    }
    return l;
  }

  private remember(l: StatementLineage, text: string | undefined): void {
    if (l.declares !== undefined) this.cursors.set(l.declares, l);
    if (l.prepares !== undefined && text !== undefined) this.preparedTexts.set(l.prepares, text);
    if (l.closes !== undefined) {
      if (l.closes === '*') this.cursors.clear();
      else this.cursors.delete(l.closes);
    }
  }

  /**
   * The row shape of a portal's Execute, read when its first DataRow arrives (its Describe's answer comes
   * just before): the portal's Describe, or its statement's with the Bind's result formats.
   */
  private shapeOf(p: {
    readonly portal: string;
    readonly statement: string;
    readonly resultFormats: readonly number[];
  }): () => readonly FieldDescription[] | undefined {
    const byPortal = this.slots.get(`P:${p.portal}`);
    const byStatement = this.slots.get(`S:${p.statement}`);
    const formats = p.resultFormats;
    return () => {
      const portalFields = fieldsOf(byPortal);
      if (portalFields !== undefined) return portalFields;
      return fieldsOf(byStatement)?.map((f, i) => ({
        ...f,
        format: formats.length === 0 ? 0 : formats.length === 1 ? (formats[0] ?? 0) : (formats[i] ?? 0),
      }));
    };
  }
}
