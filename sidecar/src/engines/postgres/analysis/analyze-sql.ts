// SQL statement analysis with libpg-query, the real PostgreSQL parser compiled to WebAssembly. Turns a
// simple-query string (or one extended-protocol Parse) into the SqlStatementFacts the policy decides on,
// one per statement. Pure and synchronous after loadSqlParser(); createSqlAnalyzer adds a cache.
//
// Classification (README.md in this folder is the full reference; keep both in step):
//
// | statement                                              | kind                 | sideEffects            |
// | ------------------------------------------------------ | -------------------- | ---------------------- |
// | SELECT, VALUES, TABLE, FETCH, MOVE, CLOSE              | select               | if a function has them |
// | SELECT with a writing CTE anywhere                     | strongest write (1)  | true                   |
// | SELECT ... FOR UPDATE/SHARE (anywhere in the tree)     | lock                 | true                   |
// | SELECT ... INTO, CREATE TABLE AS, CREATE MATVIEW       | ddl                  | true                   |
// | INSERT / UPDATE / DELETE / MERGE (plus writing CTEs)   | strongest write (1)  | true                   |
// | COPY ... FROM                                          | copy-from            | true                   |
// | COPY ... TO STDOUT                                     | copy-to (2)          | if its query has them  |
// | COPY ... TO file / PROGRAM, COPY FROM PROGRAM          | copy-to / copy-from  | true                   |
// | EXPLAIN (no ANALYZE)                                   | explain              | if a user fn is called |
// | EXPLAIN ANALYZE <stmt>                                 | inner kind (3)       | as the inner statement |
// | PREPARE x AS <stmt>                                    | inner kind           | as the inner statement |
// | DECLARE c CURSOR FOR <stmt>                            | inner kind           | as the inner statement |
// | EXECUTE x                                              | execute              | true (4)               |
// | DEALLOCATE x / ALL                                     | prepare              | false                  |
// | BEGIN, START, COMMIT, ROLLBACK, SAVEPOINT, RELEASE     | transaction          | false (5)              |
// | PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED          | transaction          | true                   |
// | SET TRANSACTION, SET SESSION CHARACTERISTICS           | transaction          | false (5)              |
// | SET/RESET ROLE, SESSION AUTHORIZATION; RESET ALL       | dcl                  | true                   |
// | DISCARD ALL (resets role and session authorization)    | dcl                  | true                   |
// | other SET / RESET, SET CONSTRAINTS                     | set                  | false (6)              |
// | GRANT, REVOKE, roles, ALTER DEFAULT PRIVILEGES,        | dcl                  | true                   |
// |   owners, REASSIGN/DROP OWNED, row-level security      |                      |                        |
// | CREATE / ALTER / DROP / COMMENT / SECURITY LABEL,      | ddl                  | true                   |
// |   TRUNCATE (7), ALTER SYSTEM, CREATE/DROP DATABASE     |                      |                        |
// | VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, REFRESH | maintenance          | true                   |
// | LISTEN, UNLISTEN / NOTIFY                              | listen / notify      | true                   |
// | LOCK                                                   | lock                 | true                   |
// | SHOW                                                   | show                 | false                  |
// | DO / CALL                                              | do / call            | true                   |
// | DISCARD PLANS/SEQUENCES/TEMP, LOAD                     | utility              | true                   |
// | anything else                                          | other                | true                   |
//
// (1) strongest by ddl/dcl > delete > update > merge > insert. (2) a bulk read. (3) EXPLAIN ANALYZE of a
// plain SELECT stays `explain`. (4) the engine decides EXECUTE on the facts remembered from the PREPARE
// (`executes` names it). (5) except READ WRITE, which turns off a server-side read-only guard.
// (6) except settings that change how the server lexes text or weaken a guard (PARSER_SENSITIVE_SETTINGS,
// GUARD_SETTINGS). (7) TRUNCATE is ddl, the stricter choice: it skips row triggers, takes an ACCESS
// EXCLUSIVE lock and a policy allowing `delete` on a table should not allow emptying it.
import { createHash } from 'node:crypto';
import type { SqlStatementFacts, StatementKind } from '@chaperone/api';
import { PG_CATALOG_FUNCTIONS, PG_CATALOG_OPERATORS, PG_CATALOG_RELATIONS, PG_CATALOG_TYPES } from './pg-catalog.ts';
import { RELATION_ARGUMENT_FUNCTIONS, functionHasSideEffects } from './side-effects.ts';
import {
  DEFAULT_SERVER_MAJOR,
  fingerprintStatement,
  loadSqlGrammars,
  sqlGrammar,
  unsupportedServerReason,
} from './sql-grammar.ts';

/** What a transaction-control statement does, so the engine can track the transaction state. */
export type TransactionAction =
  | 'begin'
  | 'commit'
  | 'rollback'
  | 'savepoint'
  | 'release'
  | 'rollback-to'
  | 'prepare-transaction'
  | 'commit-prepared'
  | 'rollback-prepared';

/** A SET / RESET, so the engine can track search_path and refuse parser-sensitive settings. */
export interface SettingChange {
  /** Lower-case setting name (`role`, `search_path`, ...); `transaction` / `session characteristics` for those forms; `all` for RESET ALL. */
  readonly name: string;
  /** `set` a value, `default` (SET x TO DEFAULT), `reset`, `reset-all`, `current` (SET x FROM CURRENT). */
  readonly action: 'set' | 'default' | 'reset' | 'reset-all' | 'current';
  /** The values as text, in order (search_path lists every schema). */
  readonly values: readonly string[];
  /** SET LOCAL: ends with the transaction. */
  readonly local: boolean;
}

export interface AnalyzedStatement extends SqlStatementFacts {
  /** This statement's source text (from the parser's statement location and length), trimmed. */
  readonly text: string;
  /** libpg-query fingerprint: equal for statements that differ only in constants and whitespace. */
  readonly fingerprint: string;
  /** PREPARE name AS ...: the facts are the inner statement's. */
  readonly prepares?: string;
  /** EXECUTE name. */
  readonly executes?: string;
  /**
   * EXECUTE name (args): the facts of the argument expressions alone (they run before the prepared
   * statement does: `EXECUTE r(bump(1))` calls bump). resolveSqlExecute merges them with the PREPARE's.
   */
  readonly executeArguments?: SqlStatementFacts;
  /** DEALLOCATE name; `*` for DEALLOCATE ALL. */
  readonly deallocates?: string;
  /** DECLARE name CURSOR: a portal of that name on the server (one namespace with protocol-level portals). */
  readonly declares?: string;
  /** DECLARE ... WITH HOLD: the cursor outlives its transaction, its query run at COMMIT. */
  readonly holdsCursor?: true;
  /** CLOSE name; `*` for CLOSE ALL. */
  readonly closes?: string;
  /** FETCH or MOVE name: runs the portal of that name (a cursor, or a portal bound by the protocol). */
  readonly fetches?: string;
  /**
   * DDL that can put a column's values under another name than the one masking rules know them by (a
   * rename, a move to another schema, a generated column, ALTER COLUMN TYPE … USING, a trigger or rule, NO
   * INHERIT or DETACH PARTITION):
   * what it does, for the refusal (masking/result-masking.ts).
   */
  readonly renamesColumns?: string;
  readonly transaction?: TransactionAction;
  /** Savepoint name (savepoint, release, rollback-to) or global transaction id (two-phase forms). */
  readonly transactionName?: string;
  /** COMMIT / ROLLBACK AND CHAIN: a new transaction starts at once. */
  readonly chain?: boolean;
  readonly listens?: string;
  /** UNLISTEN channel; `*` for UNLISTEN *. */
  readonly unlistens?: string;
  /** NOTIFY channel, or pg_notify's channel when it is a literal. */
  readonly notifies?: string;
  readonly setting?: SettingChange;
  /**
   * Settings a `set_config(name, value, is_local)` call in the statement changes: the lower-case name when
   * it is a literal, `*` when it is not (a parameter, a column, an expression). set_config is SET by
   * another name, so the session's pins refuse the same settings through it (session-state.ts).
   */
  readonly configures?: readonly string[];
}

export interface SqlSyntaxError {
  readonly message: string;
  /** 1-based character position in the whole text, as in an ErrorResponse `P` field. */
  readonly position?: number;
  /** Set when the text was not parsed because the server's major version has no grammar here. */
  readonly unsupportedServerMajor?: number;
}

export type SqlAnalysis =
  | { readonly ok: true; readonly statements: readonly AnalyzedStatement[] }
  | { readonly ok: false; readonly error: SqlSyntaxError };

export interface AnalyzeOptions {
  /**
   * The session's effective search_path (what current_schemas(false) returns). Unqualified relations and
   * non-built-in functions resolve to its first schema; `$user` entries are skipped. Default ['public'].
   */
  readonly searchPath?: readonly string[];
  /** schema.name of non-pg_catalog functions known to have no side effects. Default none. */
  readonly safeFunctions?: ReadonlySet<string>;
  /**
   * The upstream server's major version (from its `server_version` ParameterStatus, see serverMajorOf):
   * the text is parsed with that major's grammar. A major outside SUPPORTED_SERVER_MAJORS fails every
   * analysis (`unsupportedServerMajor`). Default DEFAULT_SERVER_MAJOR (15).
   */
  readonly serverMajor?: number;
}

/** Settings whose value changes how the server lexes later text, so the proxy's parse would diverge. */
export const PARSER_SENSITIVE_SETTINGS: ReadonlySet<string> = new Set([
  'standard_conforming_strings',
  'client_encoding',
  'backslash_quote',
  // Which schema an unqualified name is in: pinned for the session (session-state.ts), never changed.
  'search_path',
]);

/** Settings that switch off a server-side guard (read-only transactions, triggers and foreign keys). */
export const GUARD_SETTINGS: ReadonlySet<string> = new Set([
  'default_transaction_read_only',
  'transaction_read_only',
  'session_replication_role',
]);

const DCL_SETTINGS: ReadonlySet<string> = new Set(['role', 'session_authorization']);

/** Loads the WebAssembly parsers of every supported major; call once at start-up before analyzeSql. */
export async function loadSqlParser(): Promise<void> {
  await loadSqlGrammars();
}

type Json = Readonly<Record<string, unknown>>;

const isRecord = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const record = (v: unknown): Json => (isRecord(v) ? v : {});
const list = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);
const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** The single `{ NodeType: body }` entry of a wrapped parse-tree node. */
function unwrap(node: unknown): { readonly type: string; readonly body: Json } | undefined {
  if (!isRecord(node)) return undefined;
  for (const type in node) return { type, body: record(node[type]) };
  return undefined;
}

/** The text of a String node (`{ String: { sval } }`), as used in qualified names. */
function stringNode(node: unknown): string | undefined {
  const n = unwrap(node);
  return n?.type === 'String' ? (text(n.body.sval) ?? '') : undefined;
}

/**
 * How many times the analysis looked at a constant's value (constText). A result that never did is the
 * same for every text that differs from it only in literal values, which lets sql-analyzer.ts share it
 * between such texts. Every fact derived from a constant's value must be read through constText.
 */
let constantReads = 0;

/** The value of an A_Const as text (integers, floats, booleans, strings); undefined for NULL or others. */
function constText(node: unknown): string | undefined {
  constantReads++;
  const n = unwrap(node);
  if (n === undefined) return undefined;
  if (n.type === 'String') return text(n.body.sval) ?? '';
  if (n.type === 'Integer') return String(typeof n.body.ival === 'number' ? n.body.ival : 0);
  if (n.type !== 'A_Const') return undefined;
  const c = n.body;
  if (isRecord(c.sval)) return text(c.sval.sval) ?? '';
  // Protocol-buffer JSON omits zero and false, so `ival: {}` is 0.
  if (isRecord(c.ival)) return String(typeof c.ival.ival === 'number' ? c.ival.ival : 0);
  if (isRecord(c.fval)) return text(c.fval.fval) ?? '0';
  if (isRecord(c.boolval)) return c.boolval.boolval === true ? 'true' : 'false';
  return undefined;
}

const TRUE_WORDS: ReadonlySet<string> = new Set(['true', 'on', '1', 'yes']);

/**
 * Whether a boolean DefElem option is on, as PostgreSQL's defGetBoolean reads it: no value, `true`, `on`
 * and 1 are true; `false`, `off` and 0 are false (case-insensitive); anything else is an error on the server
 * and is taken as true here, so EXPLAIN (ANALYZE <odd value>) is decided as if it executed.
 */
function optionIsTrue(defElem: Json): boolean {
  if (defElem.arg === undefined) return true;
  const value = constText(defElem.arg);
  if (value === undefined) return true;
  const lower = value.toLowerCase();
  return !(lower === 'false' || lower === 'off' || (lower === '0' && unwrap(defElem.arg)?.type !== 'String'));
}

/**
 * The last option named `name`. PostgreSQL applies the options of EXPLAIN, BEGIN / START TRANSACTION, SET
 * TRANSACTION and SET SESSION CHARACTERISTICS one after the other, so a repeated option's last value
 * wins: EXPLAIN (ANALYZE false, ANALYZE true) executes, BEGIN READ ONLY, READ WRITE is read-write
 * (checked against PostgreSQL 15; COPY instead refuses repeated options).
 */
function lastOption(options: unknown, name: string): Json | undefined {
  let found: Json | undefined;
  for (const o of list(options)) {
    const n = unwrap(o);
    if (n?.type === 'DefElem' && n.body.defname === name) found = n.body;
  }
  return found;
}

/** Splits a regclass literal such as `Public."My Table"` into identifiers the way the server does. */
export function parseQualifiedName(value: string): readonly string[] | undefined {
  const parts: string[] = [];
  let i = 0;
  for (;;) {
    let part = '';
    if (value[i] === '"') {
      i++;
      for (;;) {
        if (i >= value.length) return undefined;
        if (value[i] === '"') {
          if (value[i + 1] === '"') {
            part += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        part += value.charAt(i);
        i++;
      }
    } else {
      const start = i;
      while (i < value.length && value[i] !== '.' && value[i] !== '"') i++;
      part = value.slice(start, i).trim().toLowerCase();
      if (part === '') return undefined;
    }
    parts.push(part);
    if (i >= value.length) return parts;
    if (value[i] !== '.') return undefined;
    i++;
  }
}

type WriteKind = 'insert' | 'merge' | 'update' | 'delete' | 'ddl';
const WRITE_RANK: Readonly<Record<WriteKind, number>> = { insert: 1, merge: 2, update: 3, delete: 4, ddl: 5 };
const WRITE_NODES: Readonly<Record<string, WriteKind>> = {
  InsertStmt: 'insert',
  UpdateStmt: 'update',
  DeleteStmt: 'delete',
  MergeStmt: 'merge',
};

/** Walks one statement's parse tree collecting relations, functions and effects. */
class FactCollector {
  readonly relations = new Set<string>();
  readonly functions = new Set<string>();
  strongestWrite: WriteKind | undefined;
  locksRows = false;
  selectInto = false;
  sideEffects = false;
  /** A function outside pg_catalog (or shadowable) is called: EXPLAIN may run it while planning. */
  callsUserFunction = false;
  notifies: string | undefined;
  /** set_config targets: lower-case literal names, `*` for a name that is not a literal. */
  readonly configures = new Set<string>();
  private readonly defaultSchema: string;
  private readonly pgCatalogFirst: boolean;
  private readonly safeFunctions: ReadonlySet<string>;

  constructor(searchPath: readonly string[], safeFunctions: ReadonlySet<string>) {
    // pg_catalog objects resolve through the name lists; pg_temp and $user may not exist.
    const schemas = searchPath.filter((s) => s !== '$user' && s !== '"$user"' && s !== 'pg_temp');
    const userSchemas = schemas.filter((s) => s !== 'pg_catalog');
    this.defaultSchema = userSchemas[0] ?? 'public';
    // pg_catalog is searched first unless search_path names it after another schema.
    const at = schemas.indexOf('pg_catalog');
    this.pgCatalogFirst = at <= 0;
    this.safeFunctions = safeFunctions;
  }

  addWrite(kind: WriteKind): void {
    if (this.strongestWrite === undefined || WRITE_RANK[kind] > WRITE_RANK[this.strongestWrite]) {
      this.strongestWrite = kind;
    }
  }

  addRelation(schema: string | undefined, name: string): void {
    if (schema !== undefined) this.relations.add(`${schema}.${name}`);
    else if (PG_CATALOG_RELATIONS.has(name)) this.relations.add(`pg_catalog.${name}`);
    else this.relations.add(`${this.defaultSchema}.${name}`);
  }

  /** A RangeVar; unqualified names that a CTE in scope defines are not relations. */
  addRangeVar(rangeVar: Json, scope: ReadonlySet<string>, isTarget = false): void {
    const name = text(rangeVar.relname);
    if (name === undefined) return;
    const schema = text(rangeVar.schemaname);
    if (schema === undefined && !isTarget && scope.has(name)) return;
    this.addRelation(schema, name);
  }

  addRelationLiteral(value: string): void {
    const parts = parseQualifiedName(value);
    if (parts === undefined) return;
    const name = parts[parts.length - 1];
    if (name === undefined) return;
    this.addRelation(parts.length > 1 ? parts[parts.length - 2] : undefined, name);
  }

  addFunctionCall(call: Json): void {
    const parts = list(call.funcname).map((p) => stringNode(p) ?? '');
    const name = parts[parts.length - 1];
    if (name === undefined) return;
    let schema = parts.length > 1 ? parts[parts.length - 2] : undefined;
    let shadowable = false;
    if (schema === undefined) {
      if (PG_CATALOG_FUNCTIONS.has(name)) {
        schema = 'pg_catalog';
        shadowable = !this.pgCatalogFirst;
      } else {
        schema = this.defaultSchema;
      }
    }
    this.functions.add(`${schema}.${name}`);
    if (shadowable || schema !== 'pg_catalog') this.callsUserFunction = true;
    if (shadowable || functionHasSideEffects(schema, name, this.safeFunctions)) this.sideEffects = true;
    if (schema !== 'pg_catalog') return;
    if (name === 'set_config') {
      this.configures.add(constText(list(call.args)[0])?.toLowerCase() ?? '*');
      return;
    }
    // Only these read their first argument's value (nextval('seq') names a relation).
    const relationArgument = RELATION_ARGUMENT_FUNCTIONS.has(name);
    if (!relationArgument && name !== 'pg_notify') return;
    const first = constText(list(call.args)[0]);
    if (first === undefined) return;
    if (relationArgument) this.addRelationLiteral(first);
    if (name === 'pg_notify') this.notifies = first;
  }

  /**
   * Whether these expressions call anything but pg_catalog's built-ins (a function, operator or cast
   * defined elsewhere, or a built-in name the search_path lets another schema shadow).
   */
  callsCodeOutsideCatalog(expressions: readonly unknown[]): boolean {
    const before = this.callsUserFunction;
    this.callsUserFunction = false;
    this.visit(expressions, EMPTY_SET);
    const calls = this.callsUserFunction;
    this.callsUserFunction = before || calls;
    return calls;
  }

  /** Visits a WITH clause and returns the scope its statement body sees. */
  private visitWith(withClause: Json, scope: ReadonlySet<string>): ReadonlySet<string> {
    const ctes = list(withClause.ctes).map((c) => record(record(c).CommonTableExpr));
    const names = ctes.map((c) => text(c.ctename) ?? '');
    const all = new Set([...scope, ...names]);
    ctes.forEach((cte, i) => {
      // Without RECURSIVE a CTE sees only the ones before it; a same-named table is a real relation.
      this.visit(cte, withClause.recursive === true ? all : new Set([...scope, ...names.slice(0, i)]));
    });
    return all;
  }

  visit(value: unknown, scope: ReadonlySet<string>): void {
    if (Array.isArray(value)) {
      for (const v of value) this.visit(v, scope);
      return;
    }
    if (!isRecord(value)) return;
    // RangeVar is the only parse node with a relname; it appears both wrapped and unwrapped.
    if (typeof value.relname === 'string') {
      this.addRangeVar(value, scope);
      return;
    }
    const inner = isRecord(value.withClause) ? this.visitWith(value.withClause, scope) : scope;
    for (const key in value) {
      if (key === 'withClause') continue;
      const child = value[key];
      switch (key) {
        case 'FuncCall':
          this.addFunctionCall(record(child));
          break;
        case 'TypeCast':
          this.visitTypeCast(record(child));
          break;
        case 'TypeName':
        case 'typeName':
          // Wrapped in PREPARE's parameter types; a field of casts, column definition lists (`AS t(a d)`),
          // XMLTABLE columns and XMLSERIALIZE: a value read as that type goes through its CHECK.
          this.visitTypeName(record(child));
          break;
        case 'RangeTableSample':
          // The sampling method is a handler function: BERNOULLI and SYSTEM are pg_catalog's, any other
          // (tsm_system_rows, or one an owner installed) is code from elsewhere.
          this.visitSamplingMethod(list(record(child).method));
          break;
        case 'SubLink':
          // x op ANY / ALL (subquery): the operator is the SubLink's, not an A_Expr's.
          this.visitOperator(list(record(child).operName));
          break;
        case 'A_Expr':
          // BETWEEN forms carry the keyword as their name; the comparisons they expand to are built-in.
          if (!(text(record(child).kind) ?? '').includes('BETWEEN')) {
            this.visitOperator(list(record(child).name));
          }
          break;
        case 'SortBy':
          // ORDER BY x USING op
          this.visitOperator(list(record(child).useOp));
          break;
        case 'InsertStmt':
        case 'UpdateStmt':
        case 'DeleteStmt':
        case 'MergeStmt': {
          const kind = WRITE_NODES[key];
          if (kind !== undefined) this.addWrite(kind);
          // The target of a write is always a table, never a CTE of the same name.
          this.addRangeVar(record(record(child).relation), inner, true);
          break;
        }
        case 'lockingClause':
          // FOR UPDATE OF names FROM items (often aliases), not further relations.
          if (list(child).length > 0) this.locksRows = true;
          continue;
        case 'intoClause':
          if (isRecord(child)) this.selectInto = true;
          break;
      }
      this.visit(child, inner);
    }
  }

  /**
   * An operator runs a function. One that pg_catalog does not have by that name, or one named in another
   * schema (OPERATOR(public.===)), is user-defined and may run any SQL. (A user-defined operator that
   * reuses a built-in name for other argument types cannot be told apart without the catalog: docs.)
   */
  private visitOperator(name: readonly unknown[]): void {
    if (name.length === 0) return;
    const parts = name.map((p) => stringNode(p) ?? '');
    const operator = parts[parts.length - 1] ?? '';
    const schema = parts.length > 1 ? parts[parts.length - 2] : undefined;
    if ((schema !== undefined && schema !== 'pg_catalog') || !PG_CATALOG_OPERATORS.has(operator)) {
      this.sideEffects = true;
      this.callsUserFunction = true;
    }
  }

  /**
   * A type outside pg_catalog can run user code on every value read as it: a domain's CHECK constraint, an
   * input or cast function. Wherever the statement names one (a cast, a column definition list, a PREPARE
   * parameter, an XMLTABLE column, XMLSERIALIZE), the statement calls code.
   */
  private visitTypeName(type: Json): void {
    const names = list(type.names).map((n) => stringNode(n));
    const typeName = names[names.length - 1] ?? '';
    const typeSchema = names.length > 1 ? names[names.length - 2] : undefined;
    if (typeSchema === undefined ? !PG_CATALOG_TYPES.has(typeName) : typeSchema !== 'pg_catalog') {
      this.sideEffects = true;
      this.callsUserFunction = true;
    }
  }

  private visitSamplingMethod(method: readonly unknown[]): void {
    const parts = method.map((p) => stringNode(p) ?? '');
    const name = parts[parts.length - 1] ?? '';
    const schema = parts.length > 1 ? parts[parts.length - 2] : 'pg_catalog';
    if (schema !== 'pg_catalog' || !BUILT_IN_SAMPLING_METHODS.has(name)) {
      this.sideEffects = true;
      this.callsUserFunction = true;
    }
  }

  /** A cast; its type is checked by visitTypeName (the walk reaches its `typeName`). */
  private visitTypeCast(cast: Json): void {
    const names = list(record(cast.typeName).names).map((n) => stringNode(n));
    if (names[names.length - 1] !== 'regclass') return;
    const value = constText(cast.arg);
    if (value !== undefined && unwrap(cast.arg)?.type === 'A_Const') this.addRelationLiteral(value);
  }
}

/** TABLESAMPLE methods PostgreSQL has built in (pg_catalog's tsm_handler functions). */
const BUILT_IN_SAMPLING_METHODS: ReadonlySet<string> = new Set(['bernoulli', 'system']);

/** Relation-like object types of DROP / COMMENT / SECURITY LABEL, whose names are String lists. */
const RELATION_OBJECT_TYPES: ReadonlySet<string> = new Set([
  'OBJECT_TABLE',
  'OBJECT_VIEW',
  'OBJECT_MATVIEW',
  'OBJECT_SEQUENCE',
  'OBJECT_INDEX',
  'OBJECT_FOREIGN_TABLE',
]);

const DDL_STATEMENTS: ReadonlySet<string> = new Set([
  'CreateSchemaStmt',
  'ReplicaIdentityStmt',
  'AlterCollationStmt',
  'AlterDomainStmt',
  'CreateStmt',
  'CreateTableSpaceStmt',
  'DropTableSpaceStmt',
  'AlterTableSpaceOptionsStmt',
  'AlterTableMoveAllStmt',
  'CreateExtensionStmt',
  'AlterExtensionStmt',
  'AlterExtensionContentsStmt',
  'CreateFdwStmt',
  'AlterFdwStmt',
  'CreateForeignServerStmt',
  'AlterForeignServerStmt',
  'CreateForeignTableStmt',
  'CreateUserMappingStmt',
  'AlterUserMappingStmt',
  'DropUserMappingStmt',
  'ImportForeignSchemaStmt',
  'CreateAmStmt',
  'CreateTrigStmt',
  'CreateEventTrigStmt',
  'AlterEventTrigStmt',
  'CreatePLangStmt',
  'CreateSeqStmt',
  'AlterSeqStmt',
  'DefineStmt',
  'CreateDomainStmt',
  'CreateOpClassStmt',
  'CreateOpFamilyStmt',
  'AlterOpFamilyStmt',
  'TruncateStmt',
  'CommentStmt',
  'SecLabelStmt',
  'IndexStmt',
  'CreateStatsStmt',
  'AlterStatsStmt',
  'CreateFunctionStmt',
  'AlterFunctionStmt',
  'RenameStmt',
  'AlterObjectDependsStmt',
  'AlterObjectSchemaStmt',
  'AlterOperatorStmt',
  'AlterTypeStmt',
  'RuleStmt',
  'CompositeTypeStmt',
  'CreateEnumStmt',
  'CreateRangeStmt',
  'AlterEnumStmt',
  'ViewStmt',
  'CreatedbStmt',
  'AlterDatabaseStmt',
  'AlterDatabaseRefreshCollStmt',
  'AlterDatabaseSetStmt',
  'DropdbStmt',
  'AlterSystemStmt',
  'CreateTableAsStmt',
  'CreateConversionStmt',
  'CreateCastStmt',
  'CreateTransformStmt',
  'AlterTSDictionaryStmt',
  'AlterTSConfigurationStmt',
  'CreatePublicationStmt',
  'AlterPublicationStmt',
  'CreateSubscriptionStmt',
  'AlterSubscriptionStmt',
  'DropSubscriptionStmt',
]);

const DCL_STATEMENTS: ReadonlySet<string> = new Set([
  'GrantStmt',
  'GrantRoleStmt',
  'AlterDefaultPrivilegesStmt',
  'CreateRoleStmt',
  'AlterRoleStmt',
  'AlterRoleSetStmt',
  'DropRoleStmt',
  'DropOwnedStmt',
  'ReassignOwnedStmt',
  'AlterOwnerStmt',
  'CreatePolicyStmt',
  'AlterPolicyStmt',
]);

/** ALTER TABLE sub-commands that change who may do what (ownership, row-level security). */
const DCL_ALTER_TABLE_COMMANDS: ReadonlySet<string> = new Set([
  'AT_ChangeOwner',
  'AT_EnableRowSecurity',
  'AT_DisableRowSecurity',
  'AT_ForceRowSecurity',
  'AT_NoForceRowSecurity',
]);

const MAINTENANCE_STATEMENTS: ReadonlySet<string> = new Set([
  'VacuumStmt',
  'ClusterStmt',
  'ReindexStmt',
  'CheckPointStmt',
  'RefreshMatViewStmt',
]);

const TRANSACTION_ACTIONS: Readonly<Record<string, TransactionAction>> = {
  TRANS_STMT_BEGIN: 'begin',
  TRANS_STMT_START: 'begin',
  TRANS_STMT_COMMIT: 'commit',
  TRANS_STMT_ROLLBACK: 'rollback',
  TRANS_STMT_SAVEPOINT: 'savepoint',
  TRANS_STMT_RELEASE: 'release',
  TRANS_STMT_ROLLBACK_TO: 'rollback-to',
  TRANS_STMT_PREPARE: 'prepare-transaction',
  TRANS_STMT_COMMIT_PREPARED: 'commit-prepared',
  TRANS_STMT_ROLLBACK_PREPARED: 'rollback-prepared',
};

/** DECLARE ... WITH HOLD (parsenodes.h). */
const CURSOR_OPT_HOLD = 0x0020;

const SETTING_ACTIONS: Readonly<Record<string, SettingChange['action']>> = {
  VAR_SET_VALUE: 'set',
  VAR_SET_MULTI: 'set',
  VAR_SET_DEFAULT: 'default',
  VAR_SET_CURRENT: 'current',
  VAR_RESET: 'reset',
  VAR_RESET_ALL: 'reset-all',
};

type Extras = Omit<AnalyzedStatement, keyof SqlStatementFacts | 'text' | 'fingerprint'>;
type Classified = SqlStatementFacts & Extras;

/**
 * Transaction modes: READ WRITE (transaction_read_only = 0) switches off a server read-only guard. The
 * grammar writes READ ONLY / READ WRITE as the integer 1 / 0; only a last mode that is exactly 1 keeps the
 * guard, anything else counts as READ WRITE.
 */
function readWriteRequested(options: unknown): boolean {
  const readOnly = lastOption(options, 'transaction_read_only');
  if (readOnly === undefined) return false;
  return readOnly.arg === undefined || constText(readOnly.arg) !== '1';
}

function classifySetting(set: Json): Classified {
  const action = SETTING_ACTIONS[text(set.kind) ?? ''] ?? 'set';
  // Setting names are case-insensitive to the server: SET "ROLE" = x sets role.
  const name = action === 'reset-all' ? 'all' : (text(set.name) ?? '').toLowerCase();
  const values: string[] = [];
  for (const arg of list(set.args)) {
    const value = constText(arg);
    if (value !== undefined) values.push(value);
  }
  const setting: SettingChange = { name, action, values, local: set.is_local === true };
  const facts = { relations: [], functions: [], setting };
  // RESET ALL resets role and session_authorization as well.
  if (DCL_SETTINGS.has(name) || action === 'reset-all') return { kind: 'dcl', sideEffects: true, ...facts };
  if (name === 'transaction' || name === 'session characteristics') {
    return { kind: 'transaction', sideEffects: readWriteRequested(set.args), ...facts };
  }
  let sideEffects = PARSER_SENSITIVE_SETTINGS.has(name);
  if (GUARD_SETTINGS.has(name)) {
    // Only switching a guard on is harmless; off, DEFAULT and RESET may switch it off.
    const value = (values[0] ?? '').toLowerCase();
    const on = name === 'session_replication_role' ? value === 'origin' : TRUE_WORDS.has(value);
    sideEffects = !(action === 'set' && on);
  }
  return { kind: 'set', sideEffects, ...facts };
}

function qualifiedList(node: unknown): readonly string[] {
  const n = unwrap(node);
  if (n?.type !== 'List') return [];
  return list(n.body.items).map((i) => stringNode(i) ?? '');
}

/** Classifies one statement node. `scope` is empty at top level. */
function classify(node: unknown, collect: FactCollector): Classified {
  const n = unwrap(node);
  if (n === undefined) return { kind: 'other', relations: [], functions: [], sideEffects: true };
  const { type, body } = n;
  const noScope: ReadonlySet<string> = new Set();
  const facts = (kind: StatementKind, sideEffects: boolean): Classified => ({
    kind,
    relations: [...collect.relations],
    functions: [...collect.functions],
    sideEffects: sideEffects || collect.sideEffects,
    ...(collect.notifies === undefined ? {} : { notifies: collect.notifies }),
    ...(collect.configures.size === 0 ? {} : { configures: [...collect.configures] }),
  });
  const inner = (query: unknown, extra: Extras): Classified => ({ ...classify(query, collect), ...extra });

  switch (type) {
    case 'SelectStmt': {
      collect.visit(node, noScope);
      if (collect.selectInto) return facts('ddl', true);
      if (collect.strongestWrite !== undefined) return facts(collect.strongestWrite, true);
      if (collect.locksRows) return facts('lock', true);
      return facts('select', false);
    }
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
    case 'MergeStmt':
      collect.visit(node, noScope);
      return facts(collect.strongestWrite ?? 'other', true);
    case 'CopyStmt': {
      collect.visit(node, noScope);
      if (collect.strongestWrite !== undefined) return facts(collect.strongestWrite, true);
      const toFileOrProgram = body.is_program === true || text(body.filename) !== undefined;
      if (body.is_from === true) return facts('copy-from', true);
      return facts('copy-to', toFileOrProgram || collect.locksRows);
    }
    case 'ExplainStmt': {
      const analyze = lastOption(body.options, 'analyze');
      if (analyze !== undefined && optionIsTrue(analyze)) {
        const executed = classify(body.query, collect);
        return executed.kind === 'select' ? { ...executed, kind: 'explain' } : executed;
      }
      collect.visit(body.query, noScope);
      // Planning can run non-volatile user functions on constant arguments.
      return facts('explain', collect.callsUserFunction);
    }
    case 'PrepareStmt':
      // Its parameter types: EXECUTE reads each argument as one (a user domain runs its CHECK).
      collect.visit(body.argtypes, noScope);
      return inner(body.query, { prepares: text(body.name) ?? '' });
    case 'DeclareCursorStmt': {
      // CURSOR_OPT_HOLD: its query runs to the end at COMMIT, where PostgreSQL applies no statement_timeout.
      const holds = typeof body.options === 'number' && (body.options & CURSOR_OPT_HOLD) !== 0;
      return inner(body.query, { declares: text(body.portalname) ?? '', ...(holds ? { holdsCursor: true } : {}) });
    }
    case 'CreateTableAsStmt': {
      const query = unwrap(body.query);
      if (query?.type !== 'ExecuteStmt') break;
      // CREATE TABLE AS EXECUTE name runs what name holds: resolved (or refused) by the gate as EXECUTE is.
      collect.visit(node, noScope);
      return { ...facts('ddl', true), executes: text(query.body.name) ?? '' };
    }
    case 'ExecuteStmt': {
      collect.visit(body.params, noScope);
      const args = facts('execute', false);
      return {
        ...facts('execute', true),
        executes: text(body.name) ?? '',
        executeArguments: {
          kind: 'execute',
          relations: args.relations,
          functions: args.functions,
          sideEffects: args.sideEffects,
        },
      };
    }
    case 'DeallocateStmt':
      // DEALLOCATE ALL: no name (PostgreSQL 15), `isall` (17+).
      return { ...facts('prepare', false), deallocates: body.isall === true ? '*' : (text(body.name) ?? '*') };
    case 'FetchStmt':
      // The cursor's query was decided when it was declared (the engine refuses names it did not see declared).
      return { ...facts('select', false), fetches: text(body.portalname) ?? '' };
    case 'ClosePortalStmt':
      return { ...facts('select', false), closes: text(body.portalname) ?? '*' };
    case 'TransactionStmt': {
      const action = TRANSACTION_ACTIONS[text(body.kind) ?? ''];
      const twoPhase =
        action === 'prepare-transaction' || action === 'commit-prepared' || action === 'rollback-prepared';
      const name = text(body.savepoint_name) ?? text(body.gid);
      return {
        ...facts('transaction', twoPhase || readWriteRequested(body.options)),
        ...(action === undefined ? {} : { transaction: action }),
        ...(name === undefined ? {} : { transactionName: name }),
        ...(body.chain === true ? { chain: true } : {}),
      };
    }
    case 'VariableSetStmt':
      return classifySetting(body);
    case 'VariableShowStmt':
      return facts('show', false);
    case 'ConstraintsSetStmt':
      return facts('set', false);
    case 'DiscardStmt':
      return facts(body.target === 'DISCARD_ALL' ? 'dcl' : 'utility', true);
    case 'LoadStmt':
      return facts('utility', true);
    case 'DoStmt':
      return facts('do', true);
    case 'CallStmt':
      collect.addFunctionCall(record(body.funccall));
      collect.visit(body.funccall, noScope);
      return facts('call', true);
    case 'ListenStmt':
      return { ...facts('listen', true), listens: text(body.conditionname) ?? '' };
    case 'UnlistenStmt':
      return { ...facts('listen', true), unlistens: text(body.conditionname) ?? '*' };
    case 'NotifyStmt':
      return { ...facts('notify', true), notifies: text(body.conditionname) ?? '' };
    case 'LockStmt':
      collect.visit(node, noScope);
      return facts('lock', true);
  }

  collect.visit(node, noScope);
  if (type === 'DropStmt' || type === 'CommentStmt' || type === 'SecLabelStmt') {
    const objtype = text(type === 'DropStmt' ? body.removeType : body.objtype) ?? '';
    if (RELATION_OBJECT_TYPES.has(objtype)) {
      const objects = type === 'DropStmt' ? list(body.objects) : [body.object];
      for (const o of objects) {
        const parts = qualifiedList(o);
        const name = parts[parts.length - 1];
        if (name !== undefined) collect.addRelation(parts.length > 1 ? parts[parts.length - 2] : undefined, name);
      }
    }
    return facts(objtype === 'OBJECT_POLICY' ? 'dcl' : 'ddl', true);
  }
  const defaults = defaultExpressions(type, body);
  const copiesByDefault =
    defaults.length > 0 && collect.callsCodeOutsideCatalog(defaults) ? DEFAULT_CALLING_CODE : undefined;
  if (type === 'AlterTableStmt') {
    const dcl = list(body.cmds).some((c) =>
      DCL_ALTER_TABLE_COMMANDS.has(text(record(record(c).AlterTableCmd).subtype) ?? ''),
    );
    const copies =
      list(body.cmds)
        .map((c) => columnCopy(record(record(c).AlterTableCmd)))
        .find((r) => r !== undefined) ?? copiesByDefault;
    return { ...facts(dcl ? 'dcl' : 'ddl', true), ...(copies === undefined ? {} : { renamesColumns: copies }) };
  }
  const renames =
    copiesByDefault ??
    RENAMING_STATEMENTS[type] ??
    (type === 'DefineStmt' && text(body.kind) === 'OBJECT_AGGREGATE' ? CREATING_ROUTINE : undefined);
  if (renames !== undefined)
    return { ...facts(DCL_STATEMENTS.has(type) ? 'dcl' : 'ddl', true), renamesColumns: renames };
  if (DDL_STATEMENTS.has(type)) return facts('ddl', true);
  if (DCL_STATEMENTS.has(type)) return facts('dcl', true);
  if (MAINTENANCE_STATEMENTS.has(type)) return facts('maintenance', true);
  return facts('other', true);
}

/**
 * A function's body reads and writes anything, untraced: calling it is a DO block by another name (a
 * `select copy_emails()` that inserts the masked column into a table of the agent's). Also procedures
 * (CREATE PROCEDURE) and aggregates (CREATE AGGREGATE), and CREATE OR REPLACE of an existing one.
 */
const CREATING_ROUTINE = 'creating a function, procedure or aggregate';

/**
 * A DEFAULT runs code the statement that fills it does not name (`insert into t default values` runs
 * `f()`), and the column it fills is clean to the lineage: a default calling anything but the pg_catalog
 * built-ins could copy masked values into it.
 */
const DEFAULT_CALLING_CODE = 'setting a column or domain DEFAULT that calls code outside pg_catalog';

/** Statements that give values another name (see AnalyzedStatement.renamesColumns). */
const RENAMING_STATEMENTS: Readonly<Record<string, string>> = {
  CreateFunctionStmt: CREATING_ROUTINE,
  RenameStmt: 'renaming an object',
  AlterObjectSchemaStmt: 'moving an object to another schema',
  CreateTrigStmt: 'creating a trigger',
  RuleStmt: 'creating a rule',
  // A policy's expression runs on every read of its table, whatever the statement names, and its errors
  // echo values (`using (email::int > 0)`, then `select id from customers`).
  CreatePolicyStmt: 'creating a row-level security policy',
  AlterPolicyStmt: 'changing a row-level security policy',
};

/**
 * The DEFAULT expressions a statement sets: of columns (CREATE TABLE, CREATE FOREIGN TABLE, ALTER TABLE ADD
 * COLUMN, ALTER COLUMN SET DEFAULT, also of views) and of domains (CREATE DOMAIN, ALTER DOMAIN SET DEFAULT).
 */
export function defaultExpressions(type: string, body: Json): unknown[] {
  const found: unknown[] = [];
  if (type === 'AlterDomainStmt' && text(body.subtype) === 'T' && body.def !== undefined) found.push(body.def);
  for (const c of list(body.cmds)) {
    const cmd = record(record(c).AlterTableCmd);
    if (text(cmd.subtype) === 'AT_ColumnDefault' && cmd.def !== undefined) found.push(cmd.def);
  }
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) {
      for (const v of value) visit(v);
      return;
    }
    if (!isRecord(value)) return;
    const constraint = value.Constraint;
    if (isRecord(constraint) && constraint.contype === 'CONSTR_DEFAULT' && constraint.raw_expr !== undefined)
      found.push(constraint.raw_expr);
    for (const key in value) visit(value[key]);
  };
  if (DEFAULT_SETTING_STATEMENTS.has(type)) visit(body);
  return found;
}

/** Statements whose parse tree can hold a column or domain DEFAULT constraint. */
const DEFAULT_SETTING_STATEMENTS: ReadonlySet<string> = new Set([
  'CreateStmt',
  'CreateForeignTableStmt',
  'AlterTableStmt',
  'CreateDomainStmt',
]);

/**
 * An ALTER TABLE command that fills a column from other columns (a generated column, TYPE … USING), or takes
 * a table's rows out from under its parent's name (NO INHERIT, DETACH PARTITION): a rule naming the parent
 * covers them no longer, and a materialized view over the parent keeps them.
 */
function columnCopy(cmd: Json): string | undefined {
  const def = record(record(cmd.def).ColumnDef);
  const subtype = text(cmd.subtype);
  if (subtype === 'AT_AlterColumnType' && def.raw_default !== undefined) return 'changing a column type with USING';
  if (subtype === 'AT_DropInherit') return 'taking a table out of its inheritance parent (NO INHERIT)';
  if (subtype === 'AT_DetachPartition' || subtype === 'AT_DetachPartitionFinalize') return 'detaching a partition';
  if (subtype !== 'AT_AddColumn') return undefined;
  const generated = list(def.constraints).some(
    (c) => text(record(record(c).Constraint).contype) === 'CONSTR_GENERATED',
  );
  return generated ? 'adding a generated column' : undefined;
}

interface SqlErrorLike {
  readonly message: string;
  readonly sqlDetails?: { readonly cursorPosition?: number };
}

function syntaxError(error: unknown): SqlSyntaxError {
  if (!(error instanceof Error)) return { message: String(error) };
  const details = (error as SqlErrorLike).sqlDetails;
  const cursor = details?.cursorPosition;
  return typeof cursor === 'number' ? { message: error.message, position: cursor + 1 } : { message: error.message };
}

function fingerprintOf(statement: string): string {
  // Text another major's grammar accepted may not parse for the fingerprinter; a content hash keeps the
  // field total.
  return fingerprintStatement(statement) ?? createHash('sha256').update(statement).digest('hex').slice(0, 16);
}

const EMPTY_SET: ReadonlySet<string> = new Set();
const DEFAULT_SEARCH_PATH: readonly string[] = ['public'];

/**
 * Parses `sql` with the real PostgreSQL parser and returns the facts of every statement in it, or the
 * syntax error. Never throws: anything the parser or the walk cannot handle (including WebAssembly
 * traps on absurd input) is reported as an error, so the caller fails closed. An empty or comment-only
 * string has no statements. Text containing NUL is refused: the server would stop reading at it.
 */
export function analyzeSql(sql: string, options: AnalyzeOptions = {}): SqlAnalysis {
  return analyze(sql, options, false).analysis;
}

/** analyzeSql plus what sql-analyzer.ts needs to decide whether the result depends on literal values. */
export interface DetailedAnalysis {
  readonly analysis: SqlAnalysis;
  /**
   * Per statement, [start, end) of its `text` in `sql` (UTF-16 offsets): start0, end0, start1, ...;
   * undefined when the analysis failed or a statement's text is not such a slice.
   */
  readonly spans: readonly number[] | undefined;
  /** Whether any fact was derived from a constant's value (SET values, '...'::regclass, nextval('s'), ...). */
  readonly readsConstants: boolean;
  /** UTF-8 byte offsets of every A_Const node of the parse tree (where the parser saw each constant). */
  readonly constantLocations: ReadonlySet<number>;
}

/** analyzeSql with the statement spans, whether constants were read, and where the parse tree has constants. */
export function analyzeSqlDetailed(sql: string, options: AnalyzeOptions = {}): DetailedAnalysis {
  return analyze(sql, options, true);
}

const NO_LOCATIONS: ReadonlySet<number> = new Set();

function analyze(sql: string, options: AnalyzeOptions, detailed: boolean): DetailedAnalysis {
  const failed = (error: SqlSyntaxError): DetailedAnalysis => ({
    analysis: { ok: false, error },
    spans: undefined,
    readsConstants: true,
    constantLocations: NO_LOCATIONS,
  });
  const serverMajor = options.serverMajor ?? DEFAULT_SERVER_MAJOR;
  const grammar = sqlGrammar(serverMajor);
  if (grammar === undefined) {
    const reason = unsupportedServerReason(String(serverMajor)) ?? 'unsupported server version';
    return failed({ message: reason, unsupportedServerMajor: serverMajor });
  }
  if (sql.includes('\0')) return failed({ message: 'query text contains a NUL character' });
  if (sql.trim() === '') {
    return {
      analysis: { ok: true, statements: [] },
      spans: [],
      readsConstants: false,
      constantLocations: NO_LOCATIONS,
    };
  }
  const searchPath = options.searchPath ?? DEFAULT_SEARCH_PATH;
  const safeFunctions = options.safeFunctions ?? EMPTY_SET;
  const readsBefore = constantReads;
  try {
    const tree: unknown = grammar.parse(sql);
    // Statement locations are byte offsets into the UTF-8 text.
    const bytes = Buffer.byteLength(sql) === sql.length ? undefined : Buffer.from(sql, 'utf8');
    const statements: AnalyzedStatement[] = [];
    let spans: number[] | undefined = detailed ? [] : undefined;
    for (const raw of list(record(tree).stmts)) {
      const r = record(raw);
      const start = typeof r.stmt_location === 'number' ? r.stmt_location : 0;
      const length = typeof r.stmt_len === 'number' && r.stmt_len > 0 ? r.stmt_len : undefined;
      const end = length === undefined ? undefined : start + length;
      const untrimmed = bytes === undefined ? sql.slice(start, end) : bytes.subarray(start, end).toString('utf8');
      const source = untrimmed.trim();
      if (spans !== undefined) {
        const charStart = bytes === undefined ? start : bytes.subarray(0, start).toString('utf8').length;
        const spanStart = charStart + (untrimmed.length - untrimmed.trimStart().length);
        const spanEnd = spanStart + source.length;
        if (sql.slice(spanStart, spanEnd) === source) spans.push(spanStart, spanEnd);
        else spans = undefined;
      }
      const classified = classify(r.stmt, new FactCollector(searchPath, safeFunctions));
      statements.push({ ...classified, text: source, fingerprint: fingerprintOf(source) });
    }
    return {
      analysis: { ok: true, statements },
      spans,
      readsConstants: constantReads !== readsBefore,
      constantLocations: detailed ? collectConstantLocations(tree) : NO_LOCATIONS,
    };
  } catch (error) {
    return failed(syntaxError(error));
  }
}

/** Byte offsets of every A_Const in a parse tree. */
function collectConstantLocations(tree: unknown): ReadonlySet<number> {
  const locations = new Set<number>();
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) {
      for (const v of value) visit(v);
      return;
    }
    if (!isRecord(value)) return;
    for (const key in value) {
      const child = value[key];
      if (key === 'A_Const' && isRecord(child)) {
        // Protocol-buffer JSON omits a zero location.
        locations.add(typeof child.location === 'number' ? child.location : 0);
      }
      visit(child);
    }
  };
  visit(tree);
  return locations;
}

/**
 * The facts an `EXECUTE name (args)` runs with: the statement `PREPARE name` stored (its kind and facts)
 * plus the EXECUTE's own argument expressions (their relations, functions and side effects), with the
 * EXECUTE's text and fingerprint. Without a known PREPARE the EXECUTE is returned as it is (kind
 * `execute`, side-effecting). Statements that are not an EXECUTE are returned unchanged.
 */
export function resolveSqlExecute(
  execute: AnalyzedStatement,
  prepared: AnalyzedStatement | undefined,
): AnalyzedStatement {
  if (execute.executes === undefined || prepared === undefined) return execute;
  const args = execute.executeArguments;
  const union = (a: readonly string[], b: readonly string[] | undefined): readonly string[] =>
    b === undefined || b.length === 0 ? a : [...new Set([...a, ...b])];
  if (execute.kind !== 'execute') {
    // CREATE TABLE AS EXECUTE: a statement of its own kind that also runs the prepared one.
    const relations = union(execute.relations, prepared.relations);
    return { ...execute, relations, functions: union(execute.functions, prepared.functions), sideEffects: true };
  }
  const { prepares: _prepares, executeArguments: _arguments, ...preparedFacts } = prepared;
  return {
    ...preparedFacts,
    relations: union(prepared.relations, args?.relations),
    functions: union(prepared.functions, args?.functions),
    sideEffects: prepared.sideEffects || args === undefined || args.sideEffects,
    text: execute.text,
    fingerprint: execute.fingerprint,
    executes: execute.executes,
  };
}
