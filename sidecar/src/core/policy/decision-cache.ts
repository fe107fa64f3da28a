// A bounded, approximately least-recently-used map for policy decisions. A Map keeps insertion order, so
// the oldest entry is always the first key. Moving an entry to the young end on every hit (delete + set)
// costs microseconds on a large V8 Map, so a hit only refreshes an entry that has drifted into the older
// half of the cache; hot entries therefore never reach the eviction end, and a hit is one Map lookup.
// Eviction drops the oldest entries in batches: a V8 Map keeps deleted slots until it rehashes, and a fresh
// iterator walks over them, so taking the single oldest key on every insert into a full cache walked
// thousands of holes each time (6-7 µs per miss on a full 10,000-entry cache).

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
  /** How many of the oldest entries one eviction drops. */
  private readonly evictBatch: number;

  /** @param capacity largest number of entries kept; 0 disables the cache. */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0)
      throw new RangeError(`cache capacity must be a non-negative integer, got ${capacity}`);
    this.capacity = capacity;
    this.refreshAge = Math.floor(capacity / 2);
    this.evictBatch = Math.max(1, Math.floor(capacity / 16));
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
    if (this.entries.size > this.capacity) this.evictOldest();
  }

  private evictOldest(): void {
    let n = Math.min(this.evictBatch, this.entries.size);
    // One iterator for the whole batch; deleting the key it just returned does not disturb it.
    for (const key of this.entries.keys()) {
      this.entries.delete(key);
      if (--n === 0) break;
    }
  }

  clear(): void {
    this.entries = new Map();
  }

  stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, size: this.entries.size };
  }
}
