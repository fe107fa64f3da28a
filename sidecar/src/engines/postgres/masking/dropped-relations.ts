// What DROP statements would take out of an inheritance hierarchy. A materialized view over a parent (or a
// partitioned table) stores its children's rows, and its lineage reaches a rule naming a child only through
// pg_inherits: once the child is dropped the stored rows stay, under a parent no rule reaches. For an
// identity with column rules the sidecar refuses dropping a table that has inheritance ancestors or
// descendants (the catalogue is asked at the DDL: result-masking.ts), and DDL that drops tables it does not
// name (DROP OWNED; DROP … CASCADE of a schema, type, function, extension, server …), which would need the
// whole dependency graph.
import type { AnalyzedStatement } from '../analysis/analyze-sql.ts';
import { DEFAULT_SERVER_MAJOR, sqlGrammar } from '../analysis/sql-grammar.ts';

/** A table a DROP names: its schema when qualified, its name. */
export interface DroppedTable {
  readonly schema: string | undefined;
  readonly name: string;
}

export interface Drops {
  /** Tables dropped by name (DROP TABLE, DROP FOREIGN TABLE), to be looked up in the catalogue. */
  readonly tables: readonly DroppedTable[];
  /** Why the statements are refused without a lookup: they drop tables they do not name. */
  readonly sweeping?: string;
}

/** Statements that drop no table. */
export const NO_TABLES_DROPPED: Drops = Object.freeze({ tables: [] });

/** DROP object types whose rows can be an inheritance child's. */
const TABLE_TYPES: ReadonlySet<string> = new Set(['OBJECT_TABLE', 'OBJECT_FOREIGN_TABLE']);

/**
 * DROP object types whose CASCADE reaches no table: views, materialized views and indexes depend on tables,
 * not tables on them; a sequence's dependants are defaults. Any other type's CASCADE may drop a table (a
 * schema's, a type's typed tables, a function's partitioned tables by their key, an extension's, a server's
 * foreign tables).
 */
const CASCADE_WITHOUT_TABLES: ReadonlySet<string> = new Set([
  'OBJECT_VIEW',
  'OBJECT_MATVIEW',
  'OBJECT_INDEX',
  'OBJECT_SEQUENCE',
]);

type Json = Record<string, unknown>;
const rec = (v: unknown): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const sval = (v: unknown): string | undefined => {
  const s = rec(rec(v).String).sval;
  return typeof s === 'string' ? s : undefined;
};

/**
 * The tables `statements` drop by name, or why they are refused outright. Only DDL and DCL statements are
 * parsed (DROP OWNED is DCL); a text that does not parse is the server's syntax error, dropping nothing.
 */
export function droppedTables(statements: readonly AnalyzedStatement[]): Drops {
  const grammar = sqlGrammar(DEFAULT_SERVER_MAJOR);
  const tables: DroppedTable[] = [];
  for (const s of statements) {
    if ((s.kind !== 'ddl' && s.kind !== 'dcl') || grammar === undefined) continue;
    let stmts: unknown[];
    try {
      stmts = list(rec(grammar.parse(s.text)).stmts);
    } catch {
      continue;
    }
    for (const raw of stmts) {
      const stmt = rec(rec(raw).stmt);
      if (stmt.DropOwnedStmt !== undefined)
        return { tables, sweeping: 'DROP OWNED (it drops tables it does not name)' };
      const drop = rec(stmt.DropStmt);
      const type = typeof drop.removeType === 'string' ? drop.removeType : '';
      if (TABLE_TYPES.has(type)) {
        for (const o of list(drop.objects)) {
          const parts = list(rec(rec(o).List).items).map(sval);
          const name = parts.at(-1);
          if (name === undefined || parts.some((p) => p === undefined)) {
            return { tables, sweeping: 'dropping a table named in an unexpected form' };
          }
          tables.push({ schema: parts.length > 1 ? parts.at(-2) : undefined, name });
        }
      } else if (drop.behavior === 'DROP_CASCADE' && !CASCADE_WITHOUT_TABLES.has(type)) {
        return {
          tables,
          sweeping: 'DROP … CASCADE of an object tables may depend on (it drops tables it does not name)',
        };
      }
    }
  }
  return tables.length === 0 ? NO_TABLES_DROPPED : { tables };
}
