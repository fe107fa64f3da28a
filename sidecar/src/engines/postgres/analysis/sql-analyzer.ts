// A per-process analyzer with a least-recently-used cache in front of analyzeSql. Analysis is a pure
// function of (text, search_path, safe functions), and agents repeat the same statements, so a hit costs
// a Map lookup instead of a parse (README.md, "Performance").
import { analyzeSql } from './analyze-sql.ts';
import type { SqlAnalysis } from './analyze-sql.ts';

export interface SqlAnalyzerOptions {
  /** Most analyses kept; least recently used are evicted first. Default 1000; 0 disables the cache. */
  readonly cacheSize?: number;
  /** Longest text (in UTF-16 code units) that is cached, bounding memory to about cacheSize × this. Default 16384. */
  readonly maxCachedTextLength?: number;
  /** schema.name of non-pg_catalog functions known to have no side effects (analyzeSql's safeFunctions). Default none. */
  readonly safeFunctions?: readonly string[];
}

export interface SqlAnalyzer {
  /**
   * analyzeSql with this analyzer's options. `searchPath` defaults to ['public']. The result may be shared
   * with other callers: treat it as immutable.
   */
  analyze(text: string, searchPath?: readonly string[]): SqlAnalysis;
  /** Entries currently cached. */
  readonly size: number;
  clear(): void;
}

const DEFAULT_SEARCH_PATH: readonly string[] = ['public'];

/** Creates an analyzer; loadSqlParser() must have resolved before analyze is called. */
export function createSqlAnalyzer(options: SqlAnalyzerOptions = {}): SqlAnalyzer {
  const cacheSize = options.cacheSize ?? 1000;
  const maxCachedTextLength = options.maxCachedTextLength ?? 16384;
  if (!Number.isInteger(cacheSize) || cacheSize < 0) throw new RangeError('cacheSize must be a non-negative integer');
  const safeFunctions: ReadonlySet<string> = new Set(options.safeFunctions ?? []);
  // Map iteration order is insertion order: the first key is the least recently used.
  const cache = new Map<string, SqlAnalysis>();

  return {
    analyze(text: string, searchPath: readonly string[] = DEFAULT_SEARCH_PATH): SqlAnalysis {
      if (cacheSize === 0 || text.length > maxCachedTextLength) return analyzeSql(text, { searchPath, safeFunctions });
      // JSON escapes newlines, so the first raw newline separates the search path from the text.
      const key = `${JSON.stringify(searchPath)}\n${text}`;
      const hit = cache.get(key);
      if (hit !== undefined) {
        cache.delete(key);
        cache.set(key, hit);
        return hit;
      }
      const result = analyzeSql(text, { searchPath, safeFunctions });
      cache.set(key, result);
      if (cache.size > cacheSize) {
        for (const oldest of cache.keys()) {
          cache.delete(oldest);
          break;
        }
      }
      return result;
    },
    get size() {
      return cache.size;
    },
    clear() {
      cache.clear();
    },
  };
}
