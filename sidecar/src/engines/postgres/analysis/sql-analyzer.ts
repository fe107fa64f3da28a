// A per-process analyzer with a least-recently-used cache in front of analyzeSql. Analysis is a pure
// function of (text, search_path, safe functions), and agents repeat the same statements, so a hit costs
// a Map lookup instead of a parse (README.md, "Performance").
//
// Statements that differ only in literal values (`... WHERE aid = 12345`, `... = 678`: the simple query
// protocol, ORMs without prepared statements) share one entry, keyed on the text with its literals
// replaced by placeholders (literal-normalizer.ts), when the analysis provably does not depend on those
// values: it parsed, it read no constant's value (SET values, '...'::regclass, nextval('seq'), pg_notify,
// EXPLAIN options, ... all go through constText), and every literal the lexer found is an A_Const in the
// parse tree, at the literal's own position (so no literal became a name, a file name, a function body,
// a transaction id or a count, and the lexer and the parser agree on where every literal is). Any other
// text is keyed on its exact text, as before. Only the facts are shared: each statement's `text` is cut
// from the text being analysed, so audit records and prepared statements always see the real text.
import { analyzeSql, analyzeSqlDetailed } from './analyze-sql.ts';
import type { AnalyzedStatement, DetailedAnalysis, SqlAnalysis } from './analyze-sql.ts';
import { keyToTextOffset, normalizeLiterals, textToKeyOffset, type NormalizedText } from './literal-normalizer.ts';
import { DEFAULT_SERVER_MAJOR, serverMajorOf, unsupportedServerReason } from './sql-grammar.ts';

export interface SqlAnalyzerOptions {
  /** Most analyses kept; least recently used are evicted first. Default 1000; 0 disables the cache. */
  readonly cacheSize?: number;
  /** Longest text (in UTF-16 code units) that is cached, bounding memory to about cacheSize × this. Default 16384. */
  readonly maxCachedTextLength?: number;
  /** schema.name of non-pg_catalog functions known to have no side effects (analyzeSql's safeFunctions). Default none. */
  readonly safeFunctions?: readonly string[];
  /** Share analyses between texts that differ only in literal values (see above). Default true. */
  readonly normalizeLiterals?: boolean;
  /**
   * The upstream's major version: statements are parsed with that major's grammar (sql-grammar.ts).
   * createSqlAnalyzer throws UnsupportedServerVersion for a major it cannot model. Default 15.
   */
  readonly serverMajor?: number;
}

/** What the cache did, for tests and metrics: every analyze call counts once. */
export interface SqlAnalyzerStats {
  /** Answered from an entry for the same text. */
  readonly hits: number;
  /** Answered from an entry made for another text with the same literal-normalised key. */
  readonly sharedHits: number;
  /** Parsed (not cached, or not cacheable). */
  readonly misses: number;
}

/** The upstream's major version has no grammar here; the session must be refused (fail closed). */
export class UnsupportedServerVersion extends Error {
  override readonly name = 'UnsupportedServerVersion';
  readonly serverVersion: string;

  constructor(serverVersion: string, reason: string) {
    super(reason);
    this.serverVersion = serverVersion;
  }
}

export interface SqlAnalyzer {
  /**
   * analyzeSql with this analyzer's options. `searchPath` defaults to ['public']. The result may be shared
   * with other callers: treat it as immutable.
   */
  analyze(text: string, searchPath?: readonly string[]): SqlAnalysis;
  /** Entries currently cached. */
  readonly size: number;
  /** The major version whose grammar this analyzer parses with. */
  readonly serverMajor: number;
  /** Cache counters since creation (clear() keeps them). */
  readonly stats: SqlAnalyzerStats;
  clear(): void;
}

const DEFAULT_SEARCH_PATH: readonly string[] = Object.freeze(['public']);

type OkAnalysis = Extract<SqlAnalysis, { ok: true }>;

/**
 * On a statement array built for a text from a shared entry: the entry's own array (same facts, other
 * text). A non-enumerable property rather than a WeakMap: one such array is made per simple query, and
 * short-lived WeakMap keys are costly for the garbage collector.
 */
const FACTS_SOURCE = Symbol('factsSource');

type WithFactsSource = readonly AnalyzedStatement[] & { readonly [FACTS_SOURCE]?: readonly AnalyzedStatement[] };

/**
 * An array whose statements have the same facts as `statements` (everything but `text`), stable across
 * texts that share a cache entry: callers may key per-statement-list caches (policy input, fingerprints)
 * on it. It is `statements` itself unless they were built from a shared entry.
 */
export function factsSource(statements: readonly AnalyzedStatement[]): readonly AnalyzedStatement[] {
  return (statements as WithFactsSource)[FACTS_SOURCE] ?? statements;
}

/** An analysis shared by every text with one literal-normalised key. */
class SharedEntry {
  /** The text the analysis was made from. */
  readonly source: string;
  readonly analysis: OkAnalysis;
  /** Each statement's [start, end) in the key. */
  readonly keySpans: readonly number[];

  constructor(source: string, analysis: OkAnalysis, keySpans: readonly number[]) {
    this.source = source;
    this.analysis = analysis;
    this.keySpans = keySpans;
  }

  /** The analysis for `text` (same key): the shared facts, each statement's text cut from `text`. */
  for(text: string, normalized: NormalizedText): OkAnalysis {
    if (text === this.source) return this.analysis;
    const shared = this.analysis.statements;
    const statements: AnalyzedStatement[] = [];
    for (let i = 0; i < shared.length; i++) {
      const start = keyToTextOffset(normalized.literals, this.keySpans[2 * i] as number);
      const end = keyToTextOffset(normalized.literals, this.keySpans[2 * i + 1] as number);
      statements.push({ ...(shared[i] as AnalyzedStatement), text: text.slice(start, end) });
    }
    Object.defineProperty(statements, FACTS_SOURCE, { value: shared });
    return { ok: true, statements };
  }
}

/** Marks a normalised key whose texts must be keyed exactly: their analysis depends on literal values. */
const LITERAL_DEPENDENT = Symbol('literal-dependent');

type Entry = SqlAnalysis | SharedEntry | typeof LITERAL_DEPENDENT;

/** UTF-8 byte offset of each UTF-16 offset in `positions` (ascending), as the parser reports locations. */
function byteOffsets(text: string, positions: readonly number[]): number[] {
  if (Buffer.byteLength(text) === text.length) return positions.slice();
  const out: number[] = [];
  let bytes = 0;
  let at = 0;
  for (const p of positions) {
    bytes += Buffer.byteLength(text.slice(at, p));
    at = p;
    out.push(bytes);
  }
  return out;
}

/**
 * The statement spans in key coordinates when `detail` (the analysis of `text`) may be shared by every text
 * with the same normalised key; undefined when it may depend on a literal's value.
 */
function shareableSpans(detail: DetailedAnalysis, normalized: NormalizedText, text: string): number[] | undefined {
  if (!detail.analysis.ok || detail.readsConstants || detail.spans === undefined) return undefined;
  // Every literal is a constant of the parse tree where the lexer found it (a negated number is reported
  // at its minus sign). A literal that is anything else (a COPY file name, a function body, FETCH's count,
  // the second half of 'a' 'b' continued over a newline) or a lexer that disagrees with the parser: no sharing.
  const { literals, minus } = normalized;
  const positions: number[] = [];
  for (let k = 0; k < minus.length; k++) {
    const m = minus[k] as number;
    positions.push(m >= 0 ? m : (literals[2 * k] as number), literals[2 * k] as number);
  }
  // A minus sign comes after the previous literal and before its own, so positions are ascending.
  if (!positions.every((p, i) => i === 0 || p >= (positions[i - 1] as number))) return undefined;
  const bytes = byteOffsets(text, positions);
  for (let k = 0; k < minus.length; k++) {
    const negated = bytes[2 * k] as number;
    const own = bytes[2 * k + 1] as number;
    const hasMinus = (minus[k] as number) >= 0;
    if (!detail.constantLocations.has(own) && !(hasMinus && detail.constantLocations.has(negated))) return undefined;
  }
  const keySpans: number[] = [];
  for (const offset of detail.spans) {
    const mapped = textToKeyOffset(literals, offset);
    if (mapped === undefined) return undefined;
    keySpans.push(mapped);
  }
  return keySpans;
}

/** Creates an analyzer; loadSqlParser() must have resolved before analyze is called. */
export function createSqlAnalyzer(options: SqlAnalyzerOptions = {}): SqlAnalyzer {
  const cacheSize = options.cacheSize ?? 1000;
  const maxCachedTextLength = options.maxCachedTextLength ?? 16384;
  const normalize = options.normalizeLiterals ?? true;
  if (!Number.isInteger(cacheSize) || cacheSize < 0) throw new RangeError('cacheSize must be a non-negative integer');
  const serverMajor = options.serverMajor ?? DEFAULT_SERVER_MAJOR;
  const unsupported = unsupportedServerReason(String(serverMajor));
  if (unsupported !== undefined) throw new UnsupportedServerVersion(String(serverMajor), unsupported);
  const safeFunctions: ReadonlySet<string> = new Set(options.safeFunctions ?? []);
  const analyzeOptions = { safeFunctions, serverMajor };
  const stats = { hits: 0, sharedHits: 0, misses: 0 };
  // Map iteration order is insertion order: the first key is the least recently used.
  const cache = new Map<string, Entry>();
  /** The key most recently used (the cache's last): a hit on it needs no move to the end. */
  let newestKey: string | undefined;
  /**
   * Each frozen search path's key text: a session passes its one pinned array with every statement, and
   * JSON.stringify of it per statement is a runtime call. Only frozen arrays: they cannot change under it.
   */
  const pathKeys = new WeakMap<readonly string[], string>();

  const lookup = (key: string): Entry | undefined => {
    const hit = cache.get(key);
    if (hit !== undefined && key !== newestKey) {
      cache.delete(key);
      cache.set(key, hit);
      newestKey = key;
    }
    return hit;
  };
  const store = (key: string, entry: Entry): void => {
    cache.delete(key); // a key stored again (its exact entry after its shared one was evicted) moves to the end
    cache.set(key, entry);
    newestKey = key;
    if (cache.size > cacheSize) {
      for (const oldest of cache.keys()) {
        cache.delete(oldest);
        break;
      }
    }
  };

  return {
    analyze(text: string, searchPath: readonly string[] = DEFAULT_SEARCH_PATH): SqlAnalysis {
      if (cacheSize === 0 || text.length > maxCachedTextLength) {
        stats.misses++;
        return analyzeSql(text, { ...analyzeOptions, searchPath });
      }
      // JSON escapes newlines, so the first raw newline separates the search path from the text. Exact
      // keys start with E, normalised ones with N: the two can never collide.
      let path = pathKeys.get(searchPath);
      if (path === undefined) {
        path = JSON.stringify(searchPath);
        if (Object.isFrozen(searchPath)) pathKeys.set(searchPath, path);
      }
      const normalized = normalize ? normalizeLiterals(text) : undefined;
      if (normalized !== undefined && normalized.literals.length > 0) {
        const sharedKey = `N${path}\n${normalized.key}`;
        const entry = lookup(sharedKey);
        if (entry instanceof SharedEntry) {
          if (text === entry.source) stats.hits++;
          else stats.sharedHits++;
          return entry.for(text, normalized);
        }
        if (entry === undefined) {
          stats.misses++;
          const detail = analyzeSqlDetailed(text, { ...analyzeOptions, searchPath });
          const keySpans = shareableSpans(detail, normalized, text);
          if (keySpans !== undefined && detail.analysis.ok) {
            store(sharedKey, new SharedEntry(text, detail.analysis, keySpans));
          } else {
            store(sharedKey, LITERAL_DEPENDENT);
            store(`E${path}\n${text}`, detail.analysis);
          }
          return detail.analysis;
        }
        // LITERAL_DEPENDENT: keyed on the exact text below.
      }
      const key = `E${path}\n${text}`;
      const hit = lookup(key);
      if (hit !== undefined && hit !== LITERAL_DEPENDENT && !(hit instanceof SharedEntry)) {
        stats.hits++;
        return hit;
      }
      stats.misses++;
      const result = analyzeSql(text, { ...analyzeOptions, searchPath });
      store(key, result);
      return result;
    },
    get size() {
      return cache.size;
    },
    serverMajor,
    get stats(): SqlAnalyzerStats {
      return { ...stats };
    },
    clear() {
      cache.clear();
      newestKey = undefined;
    },
  };
}

/** One analyzer per upstream major version, created on first use with the same options. */
export interface SqlAnalyzers {
  /**
   * The analyzer for an upstream that reported `serverVersion` (its `server_version` ParameterStatus).
   * Throws UnsupportedServerVersion when that major has no grammar here: refuse the session.
   */
  forServerVersion(serverVersion: string): SqlAnalyzer;
}

/** Analyzers per server major version (createSqlAnalyzer options apply to each; serverMajor is ignored). */
export function createSqlAnalyzers(options: Omit<SqlAnalyzerOptions, 'serverMajor'> = {}): SqlAnalyzers {
  const byMajor = new Map<number, SqlAnalyzer>();
  return {
    forServerVersion(serverVersion: string): SqlAnalyzer {
      const unsupported = unsupportedServerReason(serverVersion);
      const major = serverMajorOf(serverVersion);
      if (unsupported !== undefined || major === undefined) {
        throw new UnsupportedServerVersion(serverVersion, unsupported ?? 'unsupported server version');
      }
      let analyzer = byMajor.get(major);
      if (analyzer === undefined) {
        analyzer = createSqlAnalyzer({ ...options, serverMajor: major });
        byMajor.set(major, analyzer);
      }
      return analyzer;
    },
  };
}
