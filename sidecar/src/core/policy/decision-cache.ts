// A bounded, approximately least-recently-used map for policy decisions. A Map keeps insertion order, so
// the oldest entry is always the first key. Moving an entry to the young end on every hit (delete + set)
// costs microseconds on a large V8 Map, so a hit only refreshes an entry that has drifted into the older
// half of the cache; hot entries therefore never reach the eviction end, and a hit is one Map lookup.

export interface CacheStats {
  readonly hits: number;
  readonly misses: number;
  readonly size: number;
}

interface Entry<V> {
  readonly value: V;
  tick: number;
}

export class DecisionCache<V> {
  private entries = new Map<string, Entry<V>>();
  private tick = 0;
  private hits = 0;
  private misses = 0;
  readonly capacity: number;
  private readonly refreshAge: number;

  /** @param capacity largest number of entries kept; 0 disables the cache. */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0)
      throw new RangeError(`cache capacity must be a non-negative integer, got ${capacity}`);
    this.capacity = capacity;
    this.refreshAge = Math.floor(capacity / 2);
  }

  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    if (this.tick - entry.tick >= this.refreshAge) {
      this.entries.delete(key);
      entry.tick = ++this.tick;
      this.entries.set(key, entry);
    }
    return entry.value;
  }

  set(key: string, value: V): void {
    if (this.capacity === 0) return;
    this.entries.delete(key);
    this.entries.set(key, { value, tick: ++this.tick });
    if (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next();
      if (oldest.done !== true) this.entries.delete(oldest.value);
    }
  }

  clear(): void {
    this.entries = new Map();
  }

  stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, size: this.entries.size };
  }
}
