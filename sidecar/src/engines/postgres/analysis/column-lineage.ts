// Column lineage through the libpg-query parse tree: what each result column of a statement is computed
// from (core/masking/result-plan.ts ResultLineage), so result masking follows a masked column through
// aliases, expressions, casts, functions, aggregates, whole-row values, `*`, views, CTEs, subqueries, set
// operations, RETURNING, COPY and cursors. It walks the raw parse tree the way the server's parse analysis
// resolves names, with the relations' columns (and views' definitions) from a RelationLookup.
//
// Fail closed: whatever is not modelled (an unknown relation, a function outside pg_catalog, a construct
// the walk does not know) makes the value `opaque`, and the plan then masks it or denies the statement.
import type { ColumnLineage, ResultLineage } from '../../../core/masking/result-plan.ts';
import { defaultExpressions } from './analyze-sql.ts';
import { PG_CATALOG_FUNCTIONS } from './pg-catalog.ts';
import { sqlGrammar, DEFAULT_SERVER_MAJOR } from './sql-grammar.ts';

/** A relation as the catalogue knows it. */
export interface RelationInfo {
  /** schema.name, lower-case as stored. */
  readonly id: string;
  /** Column names in attribute order (dropped columns left out). */
  readonly columns: readonly string[];
  /** For a view: each column's lineage, from its definition. */
  readonly viewColumns?: readonly ColumnLineage[];
  /** For a view: why its definition may not run for an identity with masked columns (it reads pg_stats …). */
  readonly refusal?: string;
}

/** Finds relations by (possibly unqualified) name. `undefined`: not known (yet); the caller may fetch it. */
export interface RelationLookup {
  relation(schema: string | undefined, name: string): RelationInfo | undefined;
  /**
   * The names defined outside pg_catalog; `undefined`: not known (a catalogue lookup reports them missing),
   * and then every name not qualified with `pg_catalog.` counts as defined elsewhere. Without the method the
   * walk trusts built-in names (pure tests of other rules).
   */
  routines?(): RoutineNames | undefined;
}

/**
 * Functions, operators and casts defined outside pg_catalog. The server resolves a call by its argument types
 * across the search_path, so a call of such a name may run that code (`public.now(int)` for `now(1)`, an
 * operator `+(text, text)` for `'a' + 'b'`), not the built-in: its result is opaque.
 */
export interface RoutineNames {
  readonly functions: ReadonlySet<string>;
  readonly operators: ReadonlySet<string>;
  /** Target type names of casts whose function lies outside pg_catalog. */
  readonly castTargets: ReadonlySet<string>;
  /** Whether such a cast may also apply implicitly or in assignment (anywhere: every value is opaque). */
  readonly implicitCasts: boolean;
}

/** What a walk assumes when the routine names could not be read: anything not pinned to pg_catalog. */
const UNKNOWN_ROUTINES = 'unknown';

/** Lineage of one statement, plus the cursor and prepared-statement facts the engine tracks. */
export interface StatementLineage extends ResultLineage {
  /** Unknown relations met (schema or '' for unqualified, name): fetch them and walk again. */
  readonly missing: readonly (readonly [string, string])[];
  /** DECLARE name CURSOR: the cursor whose FETCHes return this lineage. */
  readonly declares?: string;
  /** FETCH / MOVE name: rows come from this cursor's lineage. */
  readonly fetches?: string;
  /** CLOSE name (`*` for ALL). */
  readonly closes?: string;
  /** PREPARE name AS …: its EXECUTEs return this lineage. */
  readonly prepares?: string;
  /** EXECUTE name: rows come from this prepared statement's lineage. */
  readonly executes?: string;
}

type Json = Readonly<Record<string, unknown>>;
const isRecord = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const rec = (v: unknown): Json => (isRecord(v) ? v : {});
const list = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
/**
 * A parse-tree node: `{ NodeType: body }` when the field holds any Node; a field of one fixed type (an
 * Alias, a WithClause, a WindowDef, a RangeVar in INSERT) is the body itself, with type ''.
 */
function unwrap(node: unknown): { readonly type: string; readonly body: Json } | undefined {
  if (!isRecord(node)) return undefined;
  for (const type in node) {
    const first = type.charCodeAt(0);
    return first >= 65 && first <= 90 ? { type, body: rec(node[type]) } : { type: '', body: node };
  }
  return undefined;
}
const names = (v: unknown): string[] => list(v).map((n) => str(rec(unwrap(n)?.body).sval) ?? '');

/** Lineage of a value while walking: sets are shared and never mutated after creation. */
interface Lin {
  readonly sources: ReadonlySet<string>;
  readonly direct: boolean;
  readonly opaque: boolean;
}
const EMPTY: ReadonlySet<string> = new Set();
const CLEAN: Lin = Object.freeze({ sources: EMPTY, direct: false, opaque: false });
const OPAQUE: Lin = Object.freeze({ sources: EMPTY, direct: false, opaque: true });

function union(lins: readonly Lin[]): Lin {
  if (lins.length === 0) return CLEAN;
  if (lins.length === 1) {
    const only = lins[0] as Lin;
    return only.direct ? { sources: only.sources, direct: false, opaque: only.opaque } : only;
  }
  const sources = new Set<string>();
  let opaque = false;
  for (const l of lins) {
    for (const s of l.sources) sources.add(s);
    opaque ||= l.opaque;
  }
  return { sources, direct: false, opaque };
}

interface Col {
  readonly name: string;
  readonly lin: Lin;
}
/** A name FROM makes visible: a table, view, subquery, CTE or function result. */
interface Source {
  readonly names: readonly string[];
  /** undefined: the column list is not known (a record-returning function); `uniform` stands for each. */
  readonly columns: readonly Col[] | undefined;
  readonly uniform: Lin;
}
interface FromItem {
  readonly sources: readonly Source[];
  /** What `*` expands to for this item, in order; undefined when unknown. */
  readonly star: readonly Col[] | undefined;
}
interface Scope {
  readonly sources: Source[];
  readonly ctes: Map<string, Source>;
  readonly parent: Scope | undefined;
}

/**
 * Functions that read server files, large objects, WAL, other sessions' statement texts (the functions
 * behind pg_stat_activity and pg_prepared_xacts) or run SQL given as text (ts_stat, ts_rewrite's two-argument
 * form): refused for masked identities.
 */
const REFUSED_FUNCTIONS =
  /^(?:pg_read_file|pg_read_binary_file|pg_ls_\w+|pg_stat_file|lo_\w+|loread|lowrite|(?:query|table|schema|database|cursor)_to_xml\w*|ts_stat|ts_rewrite|pg_logical_slot_\w+|pg_current_logfile|dblink\w*|pg_stat_get_activity|pg_stat_get_backend_activity|pg_prepared_xact)$/;
/** Views and tables that expose values of any column (statistics, other sessions' statement texts, large objects). */
const REFUSED_RELATIONS: ReadonlySet<string> = new Set([
  'pg_stats',
  'pg_stats_ext',
  'pg_stats_ext_exprs',
  'pg_statistic',
  'pg_statistic_ext_data',
  'pg_stat_statements',
  'pg_stat_activity',
  'pg_largeobject',
  'pg_prepared_xacts',
]);
/**
 * Built-ins whose call keeps their argument where a later statement reads it unmasked: a notification
 * payload, a setting, a sequence's value, an advisory lock's key (every session's keys are in pg_locks), the
 * random seed (it decides every later random(): whoever seeds with a guess compares the numbers), a WAL message.
 */
const WRITING_FUNCTIONS: ReadonlySet<string> = new Set([
  'pg_notify',
  'set_config',
  'setval',
  'setseed',
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
  'pg_advisory_xact_lock',
  'pg_advisory_xact_lock_shared',
  'pg_try_advisory_xact_lock',
  'pg_try_advisory_xact_lock_shared',
  'pg_logical_emit_message',
]);
/**
 * Set-returning built-ins that take a value: how many rows they return depends on it, so under
 * denyPredicates a masked argument decides the row count as a WHERE would (`count(*)` over them).
 */
const SET_RETURNING_FUNCTIONS: ReadonlySet<string> = new Set([
  'unnest',
  'json_each',
  'json_each_text',
  'jsonb_each',
  'jsonb_each_text',
  'json_populate_recordset',
  'jsonb_populate_recordset',
  'json_to_recordset',
  'jsonb_to_recordset',
  'jsonb_path_query',
  'jsonb_path_query_tz',
  'ts_debug',
  'ts_parse',
  'aclexplode',
  'pg_options_to_table',
  'txid_snapshot_xip',
  'pg_snapshot_xip',
]);
/**
 * Set-returning built-ins with one output column, so `*` over them has a known shape. Not `unnest`: of an
 * array of rows it returns the row type's columns (`select email from unnest(array(select c from customers c))`),
 * and of several arrays one column each.
 */
const SCALAR_SET_FUNCTIONS: ReadonlySet<string> = new Set([
  'generate_series',
  'generate_subscripts',
  'regexp_split_to_table',
  'string_to_table',
  'json_array_elements',
  'json_array_elements_text',
  'jsonb_array_elements',
  'jsonb_array_elements_text',
  'json_object_keys',
  'jsonb_object_keys',
  'regexp_matches',
]);

const MAX_VIEW_DEPTH = 16;

class Walk {
  readonly touched = new Set<string>();
  readonly predicates = new Set<string>();
  readonly written = new Set<string>();
  readonly missing: [string, string][] = [];
  opaque = false;
  refusal: string | undefined;
  private inPredicate = 0;
  private readonly lookup: RelationLookup;
  /** Names defined outside pg_catalog (routine-catalog.ts); none when the lookup does not tell. */
  readonly routines: RoutineNames | typeof UNKNOWN_ROUTINES | undefined;

  constructor(lookup: RelationLookup) {
    this.lookup = lookup;
    this.routines = lookup.routines === undefined ? undefined : (lookup.routines() ?? UNKNOWN_ROUTINES);
  }

  /** Whether an unqualified or non-pg_catalog name of this kind may resolve to code outside pg_catalog. */
  shadowed(kind: 'functions' | 'operators' | 'castTargets', schema: string | undefined, name: string): boolean {
    if (schema === 'pg_catalog' || this.routines === undefined) return false;
    return this.routines === UNKNOWN_ROUTINES || this.routines[kind].has(name);
  }

  refuse(reason: string): void {
    this.refusal ??= reason;
  }

  // ---- statements ------------------------------------------------------------------------------

  /** Output columns of a SELECT (also VALUES and set operations); undefined when the shape is unknown. */
  select(s: Json, parent: Scope | undefined): Col[] | undefined {
    const scope: Scope = { sources: [], ctes: new Map(), parent };
    this.withClause(s.withClause, scope);
    if (s.op !== undefined && s.op !== 'SETOP_NONE') {
      const left = this.select(rec(s.larg), scope);
      const right = this.select(rec(s.rarg), scope);
      const out =
        left === undefined || right === undefined || left.length !== right.length
          ? undefined
          : left.map((c, i) => ({ name: c.name, lin: union([c.lin, (right[i] as Col).lin]) }));
      this.predicate(() => {
        for (const sort of list(s.sortClause)) this.sortKey(rec(unwrap(sort)?.body).node, out, scope);
      });
      return out;
    }
    if (s.valuesLists !== undefined) {
      const rows = list(s.valuesLists).map((row) => list(rec(unwrap(row)?.body).items).map((e) => this.expr(e, scope)));
      const width = rows[0]?.length ?? 0;
      return Array.from({ length: width }, (_, i) => ({
        name: `column${String(i + 1)}`,
        lin: union(rows.map((r) => r[i] ?? CLEAN)),
      }));
    }
    const items = list(s.fromClause).map((f) => this.fromItem(f, scope));
    if (s.intoClause !== undefined) this.writesAll = true;
    const out = this.targets(list(s.targetList), scope, items);
    this.predicate(() => {
      this.expr(s.whereClause, scope);
      this.expr(s.havingClause, scope);
      for (const g of list(s.groupClause)) this.sortKey(g, out, scope);
      for (const sort of list(s.sortClause)) this.sortKey(rec(unwrap(sort)?.body).node, out, scope);
      for (const d of list(s.distinctClause)) this.sortKey(d, out, scope);
      for (const w of list(s.windowClause)) this.expr(w, scope);
    });
    // LIMIT and OFFSET decide how many rows come back, as a WHERE does.
    this.predicate(() => {
      this.expr(s.limitCount, scope);
      this.expr(s.limitOffset, scope);
    });
    return out;
  }

  /** Set when the statement copies what it reads into a relation (SELECT INTO, CREATE TABLE AS). */
  writesAll = false;

  private withClause(w: unknown, scope: Scope): void {
    if (!isRecord(w)) return;
    const body = w;
    const ctes = list(body.ctes).map((c) => rec(unwrap(c)?.body));
    // In WITH RECURSIVE every CTE sees every other, whatever their order (the server walks them in the order
    // of their references): `with recursive a as (select name from products), products(name) as (select
    // email from customers) select name from a` reads the CTE products, not the table. A CTE not walked
    // yet is opaque; each round resolves one more step of a chain of forward references.
    if (body.recursive === true) {
      for (const cte of ctes) {
        const name = str(cte.ctename) ?? '';
        scope.ctes.set(name, { names: [name], columns: undefined, uniform: OPAQUE });
      }
    }
    const rounds = body.recursive === true ? ctes.length : 1;
    for (let round = 0; round < rounds; round++) for (const cte of ctes) this.commonTableExpression(cte, body, scope);
  }

  private commonTableExpression(cte: Json, body: Json, scope: Scope): void {
    const name = str(cte.ctename) ?? '';
    const query = unwrap(cte.ctequery);
    let cols: Col[] | undefined;
    const aliases = names(cte.aliascolnames);
    if (body.recursive === true && query?.type === 'SelectStmt' && query.body.op !== 'SETOP_NONE') {
      // The recursive term reads the CTE itself: from the seed (the non-recursive term) on, every column
      // may carry whatever any column carries; two rounds reach the fixed point of that union.
      const seed = this.select(rec(query.body.larg), scope);
      let all = union(seed?.map((col) => col.lin) ?? [OPAQUE]);
      for (let round = 0; round < 2; round++) {
        const bound = renameColumns(
          seed?.map((col) => ({ name: col.name, lin: all })),
          aliases,
        );
        scope.ctes.set(name, { names: [name], columns: bound, uniform: all });
        const again = this.select(query.body, scope);
        all = union([all, ...(again?.map((col) => col.lin) ?? [OPAQUE])]);
      }
      cols = seed?.map((col) => ({ name: col.name, lin: all }));
    } else {
      cols = this.statementColumns(query, scope);
    }
    const renamed = withSearchAndCycleColumns(renameColumns(cols, aliases), cte);
    scope.ctes.set(name, { names: [name], columns: renamed, uniform: union(renamed?.map((x) => x.lin) ?? [OPAQUE]) });
  }

  /** Columns a nested statement returns: a SELECT, or a data-modifying statement's RETURNING. */
  statementColumns(node: { type: string; body: Json } | undefined, parent: Scope | undefined): Col[] | undefined {
    switch (node?.type) {
      case 'SelectStmt':
        return this.select(node.body, parent);
      case 'InsertStmt':
      case 'UpdateStmt':
      case 'DeleteStmt':
        return this.modify(node.type, node.body, parent);
      default:
        this.opaque = true;
        return undefined;
    }
  }

  /** INSERT / UPDATE / DELETE: what they write is `written`; RETURNING is the result. */
  modify(type: string, s: Json, parent: Scope | undefined): Col[] | undefined {
    const scope: Scope = { sources: [], ctes: new Map(), parent };
    this.withClause(s.withClause, scope);
    const target = this.rangeVar(rec(s.relation), scope);
    scope.sources.push(...target.sources);
    // The server's errors about a written row echo the whole row ("Failing row contains (…)" of a NOT NULL
    // or CHECK violation, a cast in a CHECK): every column of the target counts as read.
    for (const c of target.star ?? []) this.use(c.lin);
    const items = [
      target,
      ...list(type === 'DeleteStmt' ? s.usingClause : s.fromClause).map((f) => this.fromItem(f, scope)),
    ];
    const write = (lin: Lin): void => {
      for (const src of lin.sources) this.written.add(src);
      if (lin.opaque) this.opaque = true;
    };
    if (type === 'InsertStmt') {
      const query = unwrap(s.selectStmt);
      const cols = query === undefined ? [] : this.statementColumns(query, scope);
      if (cols === undefined) this.writesAll = true;
      else for (const c of cols) write(c.lin);
      const conflict = rec(s.onConflictClause);
      for (const t of list(conflict.targetList)) write(this.expr(rec(unwrap(t)?.body).val, scope));
      this.predicate(() => this.expr(conflict.whereClause, scope));
    } else if (type === 'UpdateStmt') {
      for (const t of list(s.targetList)) write(this.expr(rec(unwrap(t)?.body).val, scope));
    }
    this.predicate(() => this.expr(s.whereClause, scope));
    const returning = list(s.returningList);
    return returning.length === 0 ? [] : this.targets(returning, scope, items);
  }

  /** MERGE: the values its actions write are `written`; the join and WHEN conditions are predicates. */
  merge(s: Json): void {
    const scope: Scope = { sources: [], ctes: new Map(), parent: undefined };
    this.withClause(s.withClause, scope);
    const target = this.rangeVar(rec(s.relation), scope);
    scope.sources.push(...target.sources);
    for (const c of target.star ?? []) this.use(c.lin);
    this.fromItem(s.sourceRelation, scope);
    const write = (lin: Lin): void => {
      for (const src of lin.sources) this.written.add(src);
      if (lin.opaque) this.opaque = true;
    };
    this.predicate(() => this.expr(s.joinCondition, scope));
    for (const w of list(s.mergeWhenClauses)) {
      const when = rec(unwrap(w)?.body);
      this.predicate(() => this.expr(when.condition, scope));
      for (const t of list(when.targetList)) write(this.expr(rec(unwrap(t)?.body).val, scope));
      for (const v of list(when.values)) write(this.expr(v, scope));
    }
  }

  private predicate<T>(run: () => T): T {
    this.inPredicate++;
    try {
      return run();
    } finally {
      this.inPredicate--;
    }
  }

  /** ORDER BY / GROUP BY / DISTINCT ON keys: a position or an output name refers to a result column. */
  private sortKey(node: unknown, out: readonly Col[] | undefined, scope: Scope): void {
    const n = unwrap(node);
    if (n?.type === 'A_Const' && isRecord(n.body.ival)) {
      const position = typeof n.body.ival.ival === 'number' ? n.body.ival.ival : 0;
      const col = out?.[position - 1];
      if (col === undefined) this.opaque = true;
      else this.use(col.lin);
      return;
    }
    if (n?.type === 'ColumnRef') {
      const fields = list(n.body.fields);
      const only = fields.length === 1 ? str(rec(unwrap(fields[0])?.body).sval) : undefined;
      const named = only === undefined ? undefined : out?.find((c) => c.name === only);
      if (named !== undefined && this.findColumn(only ?? '', scope) === undefined) {
        this.use(named.lin);
        return;
      }
    }
    this.expr(node, scope);
  }

  /** Records that a value is read (and, inside a predicate, filtered on). */
  private use(lin: Lin): void {
    for (const s of lin.sources) {
      this.touched.add(s);
      if (this.inPredicate > 0) this.predicates.add(s);
    }
    if (lin.opaque) this.opaque = true;
  }

  private targets(targets: readonly unknown[], scope: Scope, items: readonly FromItem[]): Col[] | undefined {
    const out: Col[] = [];
    let known = true;
    for (const t of targets) {
      const rt = rec(unwrap(t)?.body);
      const val = unwrap(rt.val);
      if (val?.type === 'ColumnRef') {
        const fields = list(val.body.fields);
        const last = unwrap(fields[fields.length - 1]);
        if (last?.type === 'A_Star') {
          const expanded = fields.length === 1 ? starOf(items) : this.sourceStar(names(fields.slice(0, -1)), scope);
          if (expanded === undefined) known = false;
          else out.push(...expanded);
          for (const c of expanded ?? []) this.use(c.lin);
          if (expanded === undefined) this.use(union(items.flatMap((i) => i.sources.map((s) => sourceWhole(s)))));
          continue;
        }
      }
      if (val?.type === 'A_Indirection' && list(val.body.indirection).some((i) => unwrap(i)?.type === 'A_Star')) {
        // (x).*: a composite's fields; their number is not known here.
        this.use(this.expr(val.body.arg, scope));
        known = false;
        continue;
      }
      const lin = this.expr(rt.val, scope);
      out.push({ name: str(rt.name) ?? outputName(rt.val), lin });
    }
    return known ? out : undefined;
  }

  private sourceStar(qualifier: readonly string[], scope: Scope): Col[] | undefined {
    const source = this.findSource(qualifier, scope);
    if (source === undefined) {
      this.opaque = true;
      return undefined;
    }
    return source.columns?.slice();
  }

  // ---- FROM ------------------------------------------------------------------------------------

  private fromItem(node: unknown, scope: Scope): FromItem {
    const item = this.fromItemInner(node, scope);
    scope.sources.push(...item.sources);
    return item;
  }

  private fromItemInner(node: unknown, scope: Scope): FromItem {
    const n = unwrap(node);
    switch (n?.type) {
      case 'RangeVar':
        return this.rangeVar(n.body, scope);
      case 'RangeTableSample':
        return this.rangeVar(rec(unwrap(n.body.relation)?.body), scope);
      case 'RangeSubselect': {
        const inner: Scope = {
          sources: n.body.lateral === true ? [...scope.sources] : [],
          ctes: new Map(),
          parent: scope,
        };
        const cols = this.statementColumns(unwrap(n.body.subquery), inner);
        return this.aliased(n.body.alias, cols, union(cols?.map((c) => c.lin) ?? [OPAQUE]), []);
      }
      case 'RangeFunction':
        return this.rangeFunction(n.body, scope);
      case 'JoinExpr':
        return this.join(n.body, scope);
      default: {
        // RangeTableFunc (XMLTABLE) and anything newer: its columns carry whatever its arguments carry.
        this.opaque = true;
        const lin = union([OPAQUE, this.expr(n?.body, scope)]);
        return this.aliased(n?.body.alias, undefined, lin, []);
      }
    }
  }

  private aliased(
    alias: unknown,
    cols: readonly Col[] | undefined,
    uniform: Lin,
    defaults: readonly string[],
  ): FromItem {
    const a = rec(alias);
    const aliasName = str(a.aliasname);
    const renamed = renameColumns(cols, names(a.colnames));
    const source: Source = { names: aliasName === undefined ? defaults : [aliasName], columns: renamed, uniform };
    return { sources: [source], star: renamed };
  }

  private rangeVar(rv: Json, scope: Scope): FromItem {
    const schema = str(rv.schemaname);
    const name = str(rv.relname) ?? '';
    if (schema === undefined) {
      for (let s: Scope | undefined = scope; s !== undefined; s = s.parent) {
        const cte = s.ctes.get(name);
        if (cte !== undefined) return this.aliased(rv.alias, cte.columns, cte.uniform, [name]);
      }
    }
    if (
      REFUSED_RELATIONS.has(name) &&
      (schema === undefined || schema === 'pg_catalog' || name === 'pg_stat_statements')
    ) {
      this.refuse(`reading ${name} is not allowed for an identity with masked columns (it exposes column values)`);
    }
    const relation = this.lookup.relation(schema, name);
    if (relation === undefined) {
      this.missing.push([schema ?? '', name]);
      this.opaque = true;
      return this.aliased(rv.alias, undefined, OPAQUE, [name]);
    }
    // A view (or materialized view) over what is refused here by name: pg_stats through a monitoring view.
    if (relation.refusal !== undefined) this.refuse(`reading ${relation.id}: ${relation.refusal}`);
    const cols = relation.columns.map((c, i): Col => {
      const id = `${relation.id}.${c}`;
      const view = relation.viewColumns?.[i];
      if (view === undefined) return { name: c, lin: { sources: new Set([id]), direct: true, opaque: false } };
      return { name: c, lin: { sources: new Set([id, ...view.sources]), direct: view.direct, opaque: view.opaque } };
    });
    const relName = relation.id.slice(relation.id.indexOf('.') + 1);
    return this.aliased(rv.alias, cols, union(cols.map((c) => c.lin)), [name, relation.id, relName]);
  }

  private rangeFunction(body: Json, scope: Scope): FromItem {
    const lins: Lin[] = [];
    // The result's column names, in order; undefined when they are not known (a record or a row type).
    let named: string[] | undefined = [];
    let fname = '';
    for (const f of list(body.functions)) {
      const [call, coldefs] = list(rec(unwrap(f)?.body).items);
      // A function in FROM is a row source: its arguments decide which rows and how many.
      lins.push(this.predicate(() => this.expr(call, scope)));
      const c = unwrap(call);
      fname = names(c?.body.funcname).at(-1) ?? '';
      const defs = columnDefinitionNames(coldefs);
      if (defs.length > 0) named?.push(...defs);
      else if (c?.type === 'FuncCall' && SCALAR_SET_FUNCTIONS.has(fname)) named?.push(fname);
      else named = undefined;
    }
    const coldeflist = columnDefinitionNames(body.coldeflist);
    if (coldeflist.length > 0) named = coldeflist;
    const lin = union(lins);
    const cols =
      named === undefined
        ? undefined
        : [
            ...named.map((name) => ({ name, lin })),
            ...(body.ordinality === true ? [{ name: 'ordinality', lin: CLEAN }] : []),
          ];
    return this.aliased(body.alias, cols, lin, [fname]);
  }

  private join(j: Json, scope: Scope): FromItem {
    const left = this.fromItemInner(j.larg, scope);
    scope.sources.push(...left.sources);
    const right = this.fromItemInner(j.rarg, scope);
    scope.sources.push(...right.sources);
    this.predicate(() => this.expr(j.quals, scope));
    let using = names(j.usingClause);
    if (j.isNatural === true) {
      const rightNames = new Set(right.star?.map((c) => c.name) ?? []);
      using = left.star?.map((c) => c.name).filter((n) => rightNames.has(n)) ?? [];
      if (left.star === undefined || right.star === undefined) this.opaque = true;
    }
    let star: Col[] | undefined;
    if (left.star !== undefined && right.star !== undefined) {
      const merged = using.map((u) => {
        const lins = [
          left.star?.find((c) => c.name === u)?.lin ?? OPAQUE,
          right.star?.find((c) => c.name === u)?.lin ?? OPAQUE,
        ];
        this.predicate(() => {
          for (const l of lins) this.use(l);
        });
        return { name: u, lin: union(lins) };
      });
      star = [
        ...merged,
        ...left.star.filter((c) => !using.includes(c.name)),
        ...right.star.filter((c) => !using.includes(c.name)),
      ];
    }
    // The items were pushed for the quals; the caller pushes what this join makes visible.
    scope.sources.splice(scope.sources.length - left.sources.length - right.sources.length);
    const alias = rec(j.alias);
    if (str(alias.aliasname) !== undefined) {
      return this.aliased(j.alias, star, union(star?.map((c) => c.lin) ?? [OPAQUE]), []);
    }
    return { sources: [...left.sources, ...right.sources], star };
  }

  // ---- names -----------------------------------------------------------------------------------

  private findSource(qualifier: readonly string[], scope: Scope): Source | undefined {
    const wanted = qualifier.join('.');
    for (let s: Scope | undefined = scope; s !== undefined; s = s.parent) {
      const found = s.sources.find((src) => src.names.includes(wanted));
      if (found !== undefined) return found;
    }
    return undefined;
  }

  /** An unqualified column name: the innermost scope where some source has it. */
  private findColumn(name: string, scope: Scope): Lin | undefined {
    // What sources of inner levels whose columns are not known (a record-returning function) may hold
    // under this name: the server takes an unqualified name from the innermost level that has it, so a
    // column of an outer query (a clean `email` of `(values (1)) o(email)`) only stands for it when no
    // inner source can have it.
    const maybe: Lin[] = [];
    for (let s: Scope | undefined = scope; s !== undefined; s = s.parent) {
      const hits = s.sources.flatMap((src) => src.columns?.filter((c) => c.name === name).map((c) => c.lin) ?? []);
      if (hits.length === 1 && maybe.length === 0) return hits[0];
      if (hits.length > 0) return union([...maybe, ...hits]);
      for (const src of s.sources) if (src.columns === undefined) maybe.push(src.uniform);
    }
    return maybe.length > 0 ? union(maybe) : undefined;
  }

  private columnRef(fields: readonly unknown[], scope: Scope): Lin {
    const parts = fields.map((f) => {
      const u = unwrap(f);
      return u?.type === 'A_Star' ? '*' : (str(u?.body.sval) ?? '');
    });
    const last = parts[parts.length - 1] ?? '';
    if (last === '*') {
      // x.* inside an expression (row_to_json(u.*)): the whole row.
      const source = parts.length === 1 ? undefined : this.findSource(parts.slice(0, -1), scope);
      if (source === undefined) return parts.length === 1 ? union(scope.sources.map(sourceWhole)) : OPAQUE;
      return sourceWhole(source);
    }
    if (parts.length === 1) {
      const found = this.findColumn(last, scope);
      if (found !== undefined) return found;
      const whole = this.findSource([last], scope);
      if (whole !== undefined) return sourceWhole(whole);
    } else {
      const source = this.findSource(parts.slice(0, -1), scope);
      if (source !== undefined) {
        const col = source.columns?.find((c) => c.name === last);
        if (col !== undefined) return col.lin;
        if (source.columns === undefined) return source.uniform;
      }
      // a.b.c where a.b is a composite column: the whole of what `a` may be.
      const first =
        this.findColumn(parts[0] ?? '', scope) ??
        (parts.length > 0 ? this.findSource([parts[0] ?? ''], scope) : undefined);
      if (first !== undefined) return 'sources' in first ? union([first]) : sourceWhole(first);
    }
    // Not a column of any known source: a record function's column, or a name the server will reject.
    const unknown: Lin[] = [];
    for (let s: Scope | undefined = scope; s !== undefined; s = s.parent) {
      for (const src of s.sources) if (src.columns === undefined) unknown.push(src.uniform);
    }
    return unknown.length > 0 ? union(unknown) : OPAQUE;
  }

  // ---- expressions -----------------------------------------------------------------------------

  /** The lineage of an expression; every column it reads is recorded. */
  expr(node: unknown, scope: Scope): Lin {
    if (Array.isArray(node)) return union(node.map((n) => this.expr(n, scope)));
    const n = unwrap(node);
    if (n === undefined) return CLEAN;
    switch (n.type) {
      case 'A_Const':
      case 'ParamRef':
      case 'SQLValueFunction':
      case 'String':
      case 'Integer':
      case 'Float':
      case 'Boolean':
      case 'TypeName':
        return CLEAN;
      case 'ColumnRef': {
        const lin = this.columnRef(list(n.body.fields), scope);
        this.use(lin);
        return lin;
      }
      case 'FuncCall':
        return this.call(n.body, scope);
      case 'A_Expr':
        return this.operator(n.body, scope);
      case 'TypeCast': {
        const lin = this.expr(n.body.arg, scope);
        const type = names(rec(n.body.typeName).names);
        // A cast to this type (whatever schema names the type) may run a function outside pg_catalog
        // (`create cast (customers as text) with function public.f(customers)`): not the argument's value.
        if (!this.shadowed('castTargets', undefined, type.at(-1) ?? '')) return lin;
        this.opaque = true;
        return union([lin, OPAQUE]);
      }
      case 'SubLink': {
        const inner: Scope = { sources: [], ctes: new Map(), parent: scope };
        const test = this.expr(n.body.testexpr, scope);
        if (n.body.subLinkType === 'EXISTS_SUBLINK') {
          this.predicate(() => this.statementColumns(unwrap(n.body.subselect), inner));
          return CLEAN;
        }
        const cols = this.statementColumns(unwrap(n.body.subselect), inner);
        return union([test, ...(cols?.map((c) => c.lin) ?? [OPAQUE])]);
      }
      case 'SortBy':
        return this.expr(n.body.node, scope);
      case 'WindowDef': {
        // Its frame offsets decide which rows each value is computed over (`count(*) over (rows between N
        // preceding and current row)` is N + 1): predicates, like its keys.
        this.predicate(() => {
          for (const key of ['partitionClause', 'orderClause', 'startOffset', 'endOffset'] as const)
            this.expr(n.body[key], scope);
        });
        return CLEAN;
      }
      case 'CaseWhen': {
        const cond = this.expr(n.body.expr, scope);
        return union([cond, this.expr(n.body.result, scope)]);
      }
      default: {
        // Operators, casts, CASE, row and array constructors, indirection, boolean logic, COALESCE …: the
        // value carries whatever its parts carry.
        const parts: Lin[] = [];
        for (const key in n.body) {
          if (key === 'location' || key === 'typeName') continue;
          const child = n.body[key];
          if (typeof child === 'object' && child !== null) parts.push(this.expr(child, scope));
        }
        return union(parts);
      }
    }
  }

  private call(f: Json, scope: Scope): Lin {
    const fn = names(f.funcname);
    const name = fn[fn.length - 1] ?? '';
    const schema = fn.length > 1 ? fn[fn.length - 2] : undefined;
    // A built-in name not pinned by `pg_catalog.` may resolve to a function of that name elsewhere (by its
    // argument types), and a type name called like a function (`text(c)`) to a cast outside pg_catalog.
    const builtin =
      (schema === undefined || schema === 'pg_catalog') &&
      PG_CATALOG_FUNCTIONS.has(name) &&
      !this.shadowed('functions', schema, name) &&
      !this.shadowed('castTargets', undefined, name);
    if (builtin && REFUSED_FUNCTIONS.test(name)) {
      this.refuse(`${name}() is not allowed for an identity with masked columns (it reads data around the masking)`);
    }
    // An ordered-set aggregate returns a value of its WITHIN GROUP ordering (`mode() within group (order by
    // email)` is an email); elsewhere the ORDER BY of an aggregate only orders its arguments.
    // The ORDER BY of an aggregate orders the values it returns (`array_agg(id order by ssn)`), and a
    // set-returning function's arguments decide how many rows there are: predicates both.
    const order = this.predicate(() => this.expr(f.agg_order, scope));
    const rows = SET_RETURNING_FUNCTIONS.has(name) || SCALAR_SET_FUNCTIONS.has(name);
    const values = rows ? this.predicate(() => this.expr(f.args, scope)) : this.expr(f.args, scope);
    const args = f.agg_within_group === true ? union([values, order]) : values;
    this.predicate(() => {
      this.expr(f.agg_filter, scope);
      const over = rec(f.over);
      for (const key of ['partitionClause', 'orderClause', 'startOffset', 'endOffset'] as const)
        this.expr(over[key], scope);
    });
    if (!builtin || WRITING_FUNCTIONS.has(name)) {
      for (const s of args.sources) this.written.add(s);
    }
    if (!builtin) {
      this.opaque = true;
      return union([args, OPAQUE]);
    }
    return union([args]);
  }

  /**
   * An operator expression carries its operands, unless an operator it runs may be defined outside
   * pg_catalog: `OPERATOR(pg_catalog.+)` pins the schema, a bare `+` resolves by the operands' types across
   * the search_path. IS DISTINCT FROM, NULLIF, IN, LIKE, SIMILAR TO and BETWEEN run comparison operators by
   * those names.
   */
  private operator(e: Json, scope: Scope): Lin {
    const parts: Lin[] = [];
    for (const key of ['lexpr', 'rexpr'] as const) parts.push(this.expr(e[key], scope));
    const lin = union(parts);
    const opName = names(e.name);
    const schema = opName.length > 1 ? opName[opName.length - 2] : undefined;
    const kind = str(e.kind) ?? '';
    const run =
      kind === 'AEXPR_OP' || kind === 'AEXPR_OP_ANY' || kind === 'AEXPR_OP_ALL'
        ? [opName.at(-1) ?? '']
        : IMPLIED_OPERATORS;
    if (!run.some((o) => this.shadowed('operators', schema, o))) return lin;
    for (const s of lin.sources) this.written.add(s);
    this.opaque = true;
    return union([lin, OPAQUE]);
  }
}

/** The operators the server looks up by name for the A_Expr kinds other than a plain operator. */
const IMPLIED_OPERATORS = ['=', '<>', '<', '>', '<=', '>=', '~~', '!~~', '~~*', '!~~*', '~', '!~'];

/** The column names of a column definition list (`AS t(a int, b text)`). */
function columnDefinitionNames(defs: unknown): string[] {
  return list(defs).map((d) => str(rec(unwrap(d)?.body).colname) ?? '');
}

/**
 * A recursive CTE's SEARCH and CYCLE clauses add columns to its result: the search sequence (a row of the
 * searched columns' values), the cycle mark and the cycle path (an array of rows of the cycle columns'
 * values). Each carries what the CTE's columns carry.
 */
function withSearchAndCycleColumns(cols: Col[] | undefined, cte: Json): Col[] | undefined {
  if (cols === undefined) return undefined;
  const search = rec(cte.search_clause);
  const cycle = rec(cte.cycle_clause);
  const added = [str(search.search_seq_column), str(cycle.cycle_mark_column), str(cycle.cycle_path_column)].filter(
    (n): n is string => n !== undefined,
  );
  if (added.length === 0) return cols;
  const all = union(cols.map((c) => c.lin));
  return [...cols, ...added.map((name) => ({ name, lin: all }))];
}

function sourceWhole(source: Source): Lin {
  return source.columns === undefined ? source.uniform : union(source.columns.map((c) => c.lin));
}

function starOf(items: readonly FromItem[]): Col[] | undefined {
  const out: Col[] = [];
  for (const i of items) {
    if (i.star === undefined) return undefined;
    out.push(...i.star);
  }
  return out;
}

function renameColumns(cols: readonly Col[] | undefined, newNames: readonly string[]): Col[] | undefined {
  if (cols === undefined) return undefined;
  return cols.map((c, i) => (i < newNames.length ? { name: newNames[i] ?? c.name, lin: c.lin } : c));
}

/** The column name PostgreSQL gives an unnamed target (FigureColname, enough of it for name lookups). */
function outputName(val: unknown): string {
  const n = unwrap(val);
  switch (n?.type) {
    case 'ColumnRef': {
      const last = names(n.body.fields).at(-1);
      return last === undefined || last === '' ? '?column?' : last;
    }
    case 'FuncCall':
      return names(n.body.funcname).at(-1) ?? '?column?';
    case 'TypeCast': {
      const inner = outputName(n.body.arg);
      return inner === '?column?' ? (names(rec(n.body.typeName).names).at(-1) ?? inner) : inner;
    }
    case 'A_Indirection': {
      const last = names(n.body.indirection).at(-1);
      return last === undefined || last === '' ? outputName(n.body.arg) : last;
    }
    case 'CaseExpr':
      return 'case';
    default:
      return '?column?';
  }
}

function toColumnLineage(cols: readonly Col[] | undefined): ColumnLineage[] | undefined {
  return cols?.map((c) => ({ sources: [...c.lin.sources], direct: c.lin.direct, opaque: c.lin.opaque }));
}

/** The lineage of one parsed statement (`stmt` is the RawStmt's `stmt`). */
export function statementLineage(stmt: unknown, lookup: RelationLookup): StatementLineage {
  const walk = new Walk(lookup);
  const n = unwrap(stmt);
  let columns: Col[] | undefined = [];
  let exported: string | undefined;
  const extra: { declares?: string; fetches?: string; closes?: string; prepares?: string; executes?: string } = {};
  switch (n?.type) {
    case 'SelectStmt':
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
      columns = walk.statementColumns(n, undefined);
      break;
    case 'MergeStmt':
      walk.merge(n.body);
      break;
    case 'DeclareCursorStmt':
      extra.declares = str(n.body.portalname) ?? '';
      columns = walk.statementColumns(unwrap(n.body.query), undefined);
      break;
    case 'FetchStmt':
      extra.fetches = str(n.body.portalname) ?? '';
      columns = undefined;
      break;
    case 'ClosePortalStmt':
      extra.closes = str(n.body.portalname) ?? '*';
      break;
    case 'PrepareStmt':
      extra.prepares = str(n.body.name) ?? '';
      columns = walk.statementColumns(unwrap(n.body.query), undefined);
      break;
    case 'ExecuteStmt':
      extra.executes = str(n.body.name) ?? '';
      walk.expr(n.body.params, { sources: [], ctes: new Map(), parent: undefined });
      columns = undefined;
      break;
    case 'CopyStmt': {
      if (n.body.is_from === true) break;
      exported = 'COPY';
      const query = unwrap(n.body.query);
      if (query !== undefined) walk.statementColumns(query, undefined);
      else
        walk.select(
          {
            targetList: [{ ResTarget: { val: { ColumnRef: { fields: [{ A_Star: {} }] } } } }],
            fromClause: [{ RangeVar: n.body.relation }],
          },
          undefined,
        );
      columns = [];
      break;
    }
    case 'ExplainStmt':
      exported = 'EXPLAIN';
      walk.statementColumns(unwrap(n.body.query), undefined);
      columns = undefined;
      break;
    case 'CreateTableAsStmt':
      // CREATE TABLE AS EXECUTE copies a prepared statement's rows, planned against the catalogue of now,
      // into a table: what it copies is not traced here (result-masking.ts walks EXECUTE's text only).
      if (unwrap(n.body.query)?.type === 'ExecuteStmt') {
        walk.refuse(
          'CREATE TABLE AS EXECUTE is not allowed for an identity with masked columns (it copies rows the masking cannot trace into a table)',
        );
      }
      walk.statementColumns(unwrap(n.body.query), undefined);
      walk.writesAll = true;
      break;
    case 'ViewStmt':
      walk.statementColumns(unwrap(n.body.query), undefined);
      break;
    case 'DoStmt':
    case 'CallStmt':
      walk.refuse('DO blocks and procedures cannot be traced for an identity with masked columns');
      walk.opaque = true;
      columns = undefined;
      break;
    case 'TransactionStmt':
      // COMMIT and PREPARE TRANSACTION run the deferred constraint checks, whose errors echo the rows the
      // transaction wrote ("Key (id, email)=(…) is not present"): withheld like a write's.
      if (n.body.kind === 'TRANS_STMT_COMMIT' || n.body.kind === 'TRANS_STMT_PREPARE') walk.opaque = true;
      break;
    case 'VariableSetStmt':
    case 'VariableShowStmt':
    case 'DeallocateStmt':
    case 'ListenStmt':
    case 'UnlistenStmt':
    case 'NotifyStmt':
    case 'DiscardStmt':
      break;
    default:
      // DDL, maintenance and utilities read no rows out, but the server evaluates expressions over existing
      // rows for them (a CHECK or a foreign key validated, an index or statistics expression, ANALYZE), and
      // its errors echo the values ("invalid input syntax for type integer: "<email>"", "Key (email)=(…)"):
      // opaque, so their error texts and notices are withheld from an identity with masked columns.
      walk.opaque = true;
      // A DEFAULT it sets fills a column the lineage sees as clean: one whose value is not the built-ins'
      // (a name resolved to code outside pg_catalog by the catalogue, a function reading data around the
      // masking) could copy masked values into it. analyze-sql.ts refuses names outside pg_catalog already.
      if (n !== undefined) {
        const defaults = defaultExpressions(n.type, n.body);
        const scope: Scope = { sources: [], ctes: new Map(), parent: undefined };
        if (defaults.length > 0 && walk.expr(defaults, scope).opaque) {
          walk.refuse(
            'a DEFAULT that calls code outside pg_catalog is not allowed for an identity with masked columns',
          );
        }
      }
      break;
  }
  if (walk.routines === UNKNOWN_ROUTINES || walk.routines?.implicitCasts === true) {
    // A cast outside pg_catalog the server may apply implicitly or in assignment (to any value of its
    // source type, wherever one meets another type) runs code the walk cannot see: every value is opaque.
    walk.opaque = true;
    columns = columns?.map((c) => ({ name: c.name, lin: union([c.lin, OPAQUE]) }));
  }
  const written = walk.writesAll ? [...walk.touched, ...walk.written] : [...walk.written];
  return {
    columns: toColumnLineage(columns),
    touched: [...walk.touched],
    predicates: [...walk.predicates],
    written,
    opaque: walk.opaque,
    missing: walk.missing,
    ...(exported === undefined ? {} : { export: exported }),
    ...(walk.refusal === undefined ? {} : { refusal: walk.refusal }),
    ...extra,
  };
}

/** Parses `sql` (one or more statements) and returns each statement's lineage; throws on a syntax error. */
export function sqlLineage(
  sql: string,
  lookup: RelationLookup,
  serverMajor = DEFAULT_SERVER_MAJOR,
): StatementLineage[] {
  const grammar = sqlGrammar(serverMajor);
  if (grammar === undefined) throw new Error(`no grammar for PostgreSQL ${String(serverMajor)}`);
  const tree = rec(grammar.parse(sql));
  return list(tree.stmts).map((raw) => statementLineage(rec(raw).stmt, lookup));
}

/** A view's columns' lineage from its definition (pg_get_viewdef), walked with the same lookup. */
export function viewLineage(
  definition: string,
  lookup: RelationLookup,
  depth: number,
): {
  readonly columns: readonly ColumnLineage[] | undefined;
  readonly missing: readonly (readonly [string, string])[];
  readonly refusal?: string;
} {
  if (depth > MAX_VIEW_DEPTH) return { columns: undefined, missing: [] };
  const grammar = sqlGrammar(DEFAULT_SERVER_MAJOR);
  const stmt = rec(list(rec(grammar?.parse(definition)).stmts)[0]).stmt;
  const lineage = statementLineage(stmt, lookup);
  return {
    columns: lineage.columns,
    missing: lineage.missing,
    ...(lineage.refusal === undefined ? {} : { refusal: lineage.refusal }),
  };
}
