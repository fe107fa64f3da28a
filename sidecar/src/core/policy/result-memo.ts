// What each result a policy returned stood for, found by the result's bytes. A policy returns a handful of
// distinct result sets (one per rule and statement kind it decides), so on a decision-cache miss comparing
// the bytes in the module's memory with those seen before (a memcmp) replaces decoding them into a string
// and hashing that string, which cost about a microsecond of each miss. Results of one length are few
// (a reason names the statement's number and kind), and at most SAME_LENGTH of them are kept, so a lookup
// compares a bounded number of byte strings whatever a client sends.

/** Results of one length remembered at most; the oldest of them goes first. */
const SAME_LENGTH = 8;

interface Known<V> {
  readonly bytes: Buffer;
  readonly value: V;
}

export class ResultMemo<V> {
  private byLength = new Map<number, Known<V>[]>();
  private size = 0;
  private readonly capacity: number;

  /** @param capacity results remembered; all are dropped when it is reached (a policy has few). */
  constructor(capacity: number) {
    this.capacity = capacity;
  }

  /** The value remembered for these bytes; `bytes` may be a view that changes after the call. */
  get(bytes: Uint8Array): V | undefined {
    const same = this.byLength.get(bytes.length);
    if (same === undefined) return undefined;
    for (const k of same) if (k.bytes.equals(bytes)) return k.value;
    return undefined;
  }

  /** Remembers `value` for a copy of `bytes`. */
  set(bytes: Uint8Array, value: V): void {
    if (this.capacity === 0) return;
    if (this.size >= this.capacity) {
      this.byLength = new Map();
      this.size = 0;
    }
    const known = { bytes: Buffer.from(bytes), value };
    const same = this.byLength.get(bytes.length);
    if (same === undefined) this.byLength.set(bytes.length, [known]);
    else {
      if (same.length >= SAME_LENGTH) {
        same.shift();
        this.size -= 1;
      }
      same.push(known);
    }
    this.size += 1;
  }
}
