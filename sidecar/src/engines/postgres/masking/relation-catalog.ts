// The relations result masking needs to know (column names in order, view definitions), read from the
// upstream's own catalogue over one connection of the resource's credential, cached per resource and
// dropped after DDL through the sidecar and after CACHE_TTL_MS (DDL by others). Unqualified names resolve
// the way the server does: pg_catalog first, then the session's search_path; a name some session has as a
// temporary relation resolves to nothing (unknown), because which session's it is cannot be known here.
import type { ColumnLineage } from '../../../core/masking/result-plan.ts';
import {
  viewLineage,
  type RelationInfo,
  type RelationLookup,
  type RoutineNames,
  type StatementLineage,
} from '../analysis/column-lineage.ts';
import { BackendCode } from '../protocol/backend-messages.ts';
import type { DroppedTable } from './dropped-relations.ts';
import { ROUTINE_CATALOG_SQL, ROUTINE_NAMES_KEY, routineNamesFromRows } from './routine-catalog.ts';
import { BackendScanner, decodeDataRow, decodeErrorFields } from '../protocol/backend-scanner.ts';
import { encodeQuery } from '../protocol/frontend-encoder.ts';
import type { UpstreamConnection } from '../protocol/upstream-connection.ts';

/** How long a relation's entry is trusted without DDL through this sidecar. */
export const CACHE_TTL_MS = 10_000;

interface CatalogRow {
  readonly schema: string;
  readonly name: string;
  readonly columns: readonly string[];
  readonly definition: string | undefined;
  /** Its inheritance ancestors and descendants (partitions too), `schema.name`: they hold the same rows. */
  readonly related: readonly string[];
  /** A foreign table: its rows come from wherever its server points (this database's masked table too). */
  readonly foreign: boolean;
  /**
   * A materialized view whose definition reads a view: its rows are what that view read at the last REFRESH,
   * and `CREATE OR REPLACE VIEW` since (`… select id, name as label` over one that read ssn) changes the
   * definition the walk sees, not the rows.
   */
  readonly storedFromView: boolean;
}

interface Entry {
  readonly fetchedAt: number;
  /** Every relation of that name, any schema. */
  readonly rows: readonly CatalogRow[];
}

const CATALOG_SQL = (names: readonly string[]): string =>
  `SELECT n.nspname, c.relname,
     coalesce((SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text,
     CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
     (WITH RECURSIVE up(oid) AS (
        SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid
        UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid),
      down(oid) AS (
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid
        UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN down ON i.inhparent = down.oid)
      SELECT coalesce(json_agg(rn.nspname || '.' || r.relname), '[]')::text
      FROM (SELECT oid FROM up UNION SELECT oid FROM down) x
      JOIN pg_catalog.pg_class r ON r.oid = x.oid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace),
     c.relkind = 'f',
     c.relkind = 'm' AND EXISTS (
       SELECT FROM pg_catalog.pg_rewrite rw
       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid
       JOIN pg_catalog.pg_class v ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND v.oid = d.refobjid
       WHERE rw.ev_class = c.oid AND v.relkind = 'v')
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relname = ANY (ARRAY[${names.map(quoteLiteral).join(', ')}]::text[])`;

function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

export class RelationCatalog {
  private readonly connect: () => Promise<UpstreamConnection>;
  private readonly now: () => number;
  private connection: Promise<QueryChannel> | undefined;
  private readonly entries = new Map<string, Entry>();
  /** Functions, operators and casts outside pg_catalog (routine-catalog.ts), cached like a relation. */
  private routineNames: { readonly fetchedAt: number; readonly names: RoutineNames } | undefined;
  private readonly viewCache = new Map<string, WalkedView>();
  private generation = 0;
  /** Changes whenever what a lookup can answer changes: DDL through the sidecar, any fetch stored. */
  private version = 0;
  private readonly lineages = new LineageCache();

  /**
   * Shared with the same listener's catalogues on the other event loops: bumped by invalidate(), and a
   * catalogue that sees it moved forgets everything too (DDL through another loop). Absent with one loop.
   */
  private readonly shared: Int32Array | undefined;
  private sharedSeen = 0;

  constructor(connect: () => Promise<UpstreamConnection>, now: () => number = Date.now, shared?: Int32Array) {
    this.connect = connect;
    this.now = now;
    this.shared = shared;
    if (shared !== undefined) this.sharedSeen = Atomics.load(shared, 0);
  }

  /** Forgets everything (DDL went through the sidecar), on every event loop. */
  invalidate(): void {
    this.forget();
    if (this.shared !== undefined) this.sharedSeen = Atomics.add(this.shared, 0, 1) + 1;
  }

  /** Forgets everything when another loop's catalogue was invalidated since this one last looked. */
  private sync(): void {
    if (this.shared === undefined) return;
    const now = Atomics.load(this.shared, 0);
    if (now === this.sharedSeen) return;
    this.sharedSeen = now;
    this.forget();
  }

  private forget(): void {
    this.entries.clear();
    this.routineNames = undefined;
    this.viewCache.clear();
    this.generation++;
    this.version++;
    this.lineages.clear();
  }

  /**
   * The lineage of a statement walked before, when nothing it read from the catalogue has changed since:
   * the same text and search_path (`key`), the same catalogue version (no DDL through the sidecar, no entry
   * fetched again), and every entry the walk read still fresh.
   */
  cachedLineage(key: string): StatementLineage | undefined {
    this.sync();
    return this.lineages.get(key, this.version, this.now());
  }

  /** Keeps a complete walk (nothing missing) made with `lookup` of this catalogue's current version. */
  rememberLineage(key: string, lineage: StatementLineage, lookup: CatalogLookup): void {
    if (lineage.missing.length > 0 || lookup.missing.size > 0 || lookup.version !== this.version) return;
    this.lineages.set(key, lineage, this.version, lookup.oldestRead + CACHE_TTL_MS);
  }

  /** Whether every name is cached and fresh. */
  has(names: readonly string[]): boolean {
    this.sync();
    const now = this.now();
    return names.every((n) => {
      const e = n === ROUTINE_NAMES_KEY ? this.routineNames : this.entries.get(n);
      return e !== undefined && now - e.fetchedAt < CACHE_TTL_MS;
    });
  }

  /** Reads the relations named `names` (every schema) from the upstream catalogue. */
  async fetch(names: readonly string[]): Promise<void> {
    const wanted = [...new Set(names)].filter((n) => !this.has([n]) && n !== ROUTINE_NAMES_KEY);
    const routines = names.includes(ROUTINE_NAMES_KEY) && !this.has([ROUTINE_NAMES_KEY]);
    if (wanted.length === 0 && !routines) return;
    const generation = this.generation;
    let rows: (Buffer | null)[][] = [];
    let routineRows: (Buffer | null)[][] = [];
    try {
      const channel = await (this.connection ??= this.open());
      if (wanted.length > 0) rows = await channel.query(CATALOG_SQL(wanted));
      if (routines) routineRows = await channel.query(ROUTINE_CATALOG_SQL);
    } catch (err) {
      this.connection = undefined;
      throw err;
    }
    if (generation !== this.generation) return; // invalidated meanwhile: fetch again on the next use
    const fetchedAt = this.now();
    if (routines) {
      this.routineNames = { fetchedAt, names: routineNamesFromRows(routineRows) };
      this.viewCache.clear(); // a view's calls may resolve elsewhere now
    }
    const byName = new Map<string, CatalogRow[]>(wanted.map((n) => [n, []]));
    for (const r of rows) {
      const row: CatalogRow = {
        schema: r[0]?.toString('utf8') ?? '',
        name: r[1]?.toString('utf8') ?? '',
        columns: JSON.parse(r[2]?.toString('utf8') ?? '[]') as string[],
        definition: r[3] === null || r[3] === undefined ? undefined : r[3].toString('utf8'),
        related: JSON.parse(r[4]?.toString('utf8') ?? '[]') as string[],
        foreign: r[5]?.toString('utf8') === 't',
        storedFromView: r[6]?.toString('utf8') === 't',
      };
      byName.get(row.name)?.push(row);
    }
    for (const [name, found] of byName) this.entries.set(name, { fetchedAt, rows: found });
    // What any cached walk read may have changed (a view redefined, a column renamed by another client).
    this.version++;
    this.lineages.clear();
    for (const key of this.viewCache.keys()) if (wanted.some((n) => key.endsWith(`.${n}`))) this.viewCache.delete(key);
  }

  /**
   * Which of `tables` belong to an inheritance hierarchy (have ancestors or descendants, partitions too), as
   * the catalogue says now. An unqualified name counts in every schema that has a relation of that name; one
   * whose entry could not be stored (invalidated meanwhile) counts too: fail closed. Throws when the
   * catalogue cannot be read.
   */
  async inHierarchy(tables: readonly DroppedTable[]): Promise<DroppedTable[]> {
    await this.fetch(tables.map((t) => t.name));
    return tables.filter((t) => {
      const entry = this.entries.get(t.name);
      if (entry === undefined) return true;
      return entry.rows.some((r) => (t.schema === undefined || r.schema === t.schema) && r.related.length > 0);
    });
  }

  /** Closes the catalogue connection. */
  close(): void {
    void this.connection?.then(
      (c) => {
        c.close();
      },
      () => undefined,
    );
    this.connection = undefined;
  }

  /**
   * A lookup for one session's search_path. Names not cached (also those a view's definition reads) are
   * collected in `missing`; the caller fetches them and walks again.
   */
  lookup(searchPath: readonly string[]): CatalogLookup {
    this.sync();
    const entries = this.entries;
    const routineNames = this.routineNames;
    const viewCache = this.viewCache;
    const now = this.now;
    const resolving = new Set<string>();
    const lookup: CatalogLookup = {
      missing: new Set(),
      version: this.version,
      oldestRead: Infinity,
      routines() {
        if (routineNames === undefined || now() - routineNames.fetchedAt >= CACHE_TTL_MS) {
          lookup.missing.add(ROUTINE_NAMES_KEY);
          return undefined;
        }
        lookup.oldestRead = Math.min(lookup.oldestRead, routineNames.fetchedAt);
        return routineNames.names;
      },
      relation(schema, name) {
        const entry = entries.get(name);
        if (entry === undefined || now() - entry.fetchedAt >= CACHE_TTL_MS) {
          lookup.missing.add(name);
          return undefined;
        }
        lookup.oldestRead = Math.min(lookup.oldestRead, entry.fetchedAt);
        let row: CatalogRow | undefined;
        if (schema !== undefined) {
          row = entry.rows.find((r) => r.schema === schema);
        } else {
          if (entry.rows.some((r) => r.schema.startsWith('pg_temp'))) return undefined;
          for (const s of ['pg_catalog', ...searchPath]) {
            row = entry.rows.find((r) => r.schema === s);
            if (row !== undefined) break;
          }
        }
        if (row === undefined) return undefined;
        const id = `${row.schema}.${row.name}`;
        if (row.foreign) return { id, columns: row.columns, viewColumns: row.columns.map(() => OPAQUE_COLUMN) };
        if (row.definition === undefined) {
          if (row.related.length === 0) return { id, columns: row.columns };
          // A partition or an inheritance child holds rows of its ancestors, and a parent shows its
          // descendants' rows: a rule naming any of them covers the column here too (a child's own columns
          // under a wildcard rule of its parent are masked as well: fail closed).
          const related = row.related;
          return {
            id,
            columns: row.columns,
            viewColumns: row.columns.map((c) => ({
              sources: related.map((r) => `${r}.${c}`),
              direct: true,
              opaque: false,
            })),
          };
        }
        // A view: its columns' lineage from its definition (cycles and unknown parts: opaque). A materialized
        // view over a view keeps the refusals of its definition, but its rows may be another definition's.
        if (resolving.has(id)) return { id, columns: row.columns, viewColumns: row.columns.map(() => OPAQUE_COLUMN) };
        let view = viewCache.get(id);
        if (view === undefined) {
          resolving.add(id);
          const walked = viewLineage(row.definition, lookup, resolving.size);
          resolving.delete(id);
          if (walked.missing.length > 0) return undefined; // fetch what the view reads first (lookup.missing)
          view = { columns: walked.columns, ...(walked.refusal === undefined ? {} : { refusal: walked.refusal }) };
          viewCache.set(id, view);
        }
        const viewColumns = view.columns;
        return {
          id,
          columns: row.columns,
          viewColumns:
            viewColumns === undefined || viewColumns.length !== row.columns.length || row.storedFromView
              ? row.columns.map(() => OPAQUE_COLUMN)
              : viewColumns,
          ...(view.refusal === undefined ? {} : { refusal: view.refusal }),
        } satisfies RelationInfo;
      },
    };
    return lookup;
  }

  private async open(): Promise<QueryChannel> {
    return new QueryChannel(await this.connect());
  }
}

/** A RelationLookup that also collects the names it did not have cached (directly or in a view's definition). */
export interface CatalogLookup extends RelationLookup {
  readonly missing: Set<string>;
  /** The catalogue version the lookup answers from. */
  readonly version: number;
  /** When the oldest entry the lookup answered from was fetched (Infinity: none). */
  oldestRead: number;
}

/** How many statements' lineages a resource keeps (distinct statement texts; the oldest go first). */
export const LINEAGE_CACHE_SIZE = 2_000;

/**
 * Walked lineages by statement text and search_path, each valid for one catalogue version and until the
 * first catalogue entry it read expires. Pure bookkeeping (the catalogue decides versions and times).
 */
export class LineageCache {
  private readonly entries = new Map<
    string,
    { readonly lineage: StatementLineage; readonly version: number; readonly validUntil: number }
  >();
  private readonly capacity: number;

  constructor(capacity = LINEAGE_CACHE_SIZE) {
    this.capacity = capacity;
  }

  get(key: string, version: number, now: number): StatementLineage | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (e.version !== version || now >= e.validUntil) {
      this.entries.delete(key);
      return undefined;
    }
    return e.lineage;
  }

  set(key: string, lineage: StatementLineage, version: number, validUntil: number): void {
    this.entries.delete(key);
    if (this.entries.size >= this.capacity) {
      const oldest = this.entries.keys().next();
      if (oldest.done !== true) this.entries.delete(oldest.value);
    }
    this.entries.set(key, { lineage, version, validUntil });
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}

/** The cache key of a statement's lineage: its exact text under one search_path. */
export function lineageKey(text: string, searchPath: readonly string[]): string {
  return `${searchPath.join('\u0000')}\u0001${text}`;
}

/** A view's definition walked: its columns' lineage, and why reading it is refused, if it is. */
interface WalkedView {
  readonly columns: readonly ColumnLineage[] | undefined;
  readonly refusal?: string;
}

const OPAQUE_COLUMN: ColumnLineage = Object.freeze({ sources: [], direct: false, opaque: true });

/** One simple query at a time over an upstream connection; rows as raw column values. */
class QueryChannel {
  private readonly upstream: UpstreamConnection;
  private readonly scanner = new BackendScanner({
    interest: [BackendCode.DataRow, BackendCode.ErrorResponse, BackendCode.ReadyForQuery],
  });
  private queue: Promise<unknown> = Promise.resolve();
  private current: { rows: (Buffer | null)[][]; error?: Error; done: (err?: Error) => void } | undefined;
  private failed: Error | undefined;

  constructor(upstream: UpstreamConnection) {
    this.upstream = upstream;
    const socket = upstream.socket;
    socket.on('error', (err: Error) => {
      this.fail(err);
    });
    socket.on('close', () => {
      this.fail(new Error('catalogue connection closed'));
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        this.scanner.push(chunk);
        for (let seg = this.scanner.next(); seg !== null; seg = this.scanner.next()) {
          if (seg.kind !== 'frame' || this.current === undefined) continue;
          if (seg.code === BackendCode.DataRow) this.current.rows.push(decodeDataRow(Buffer.from(seg.frame)));
          else if (seg.code === BackendCode.ErrorResponse) {
            this.current.error = new Error(`catalogue query failed: ${decodeErrorFields(seg.frame).message}`);
          } else if (seg.code === BackendCode.ReadyForQuery) {
            const c = this.current;
            this.current = undefined;
            c.done(c.error);
          }
        }
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
        socket.destroy();
      }
    });
    socket.resume();
  }

  query(sql: string): Promise<(Buffer | null)[][]> {
    const run = this.queue.then(
      () =>
        new Promise<(Buffer | null)[][]>((resolve, reject) => {
          if (this.failed !== undefined) {
            reject(this.failed);
            return;
          }
          const rows: (Buffer | null)[][] = [];
          this.current = {
            rows,
            done: (err) => {
              if (err === undefined) resolve(rows);
              else reject(err);
            },
          };
          this.upstream.socket.write(encodeQuery(sql));
        }),
    );
    this.queue = run.catch(() => undefined);
    return run;
  }

  close(): void {
    this.upstream.socket.destroy();
  }

  private fail(err: Error): void {
    this.failed ??= err;
    const c = this.current;
    this.current = undefined;
    c?.done(err);
  }
}
