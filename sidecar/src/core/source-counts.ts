// Connections per client address counted in memory every event loop shares (docs/sidecar-event-loops.md,
// "Bounds"): a listener's bound per source (PostgreSQL's maxUnauthenticatedPerSource) holds for the sidecar,
// whichever loops the kernel hands a source's connections to. A fixed table of Int32 slots per listener,
// the slot of an address chosen by a keyed hash: the key is random per sidecar start (made by the main
// thread, copied into every loop), so no client can pick addresses that land on one slot. Two addresses
// that do share a slot share one bound: stricter for both, never looser.
import { createHmac, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';

/** Slots per listener: a power of two (the slot is the hash's low bits). */
export const SOURCE_COUNT_SLOTS = 4096;
/** Bytes of one listener's table in the shared buffer. */
export const SOURCE_COUNTS_BYTES = SOURCE_COUNT_SLOTS * Int32Array.BYTES_PER_ELEMENT;

/** A new key for the slot hash, made once per sidecar start by the main thread. */
export function sourceCountsKey(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

/** One listener's counts per source address, shared by every event loop. */
export class SourceCounts {
  private readonly slots: Int32Array;
  /** A KeyObject: an HMAC under it costs ~3 µs of CPU, under the bytes ~20 µs (the key imported each time). */
  private readonly key: KeyObject;

  /** `slots`: the listener's table in shared memory (a power of two of them); `key`: every loop's same key. */
  constructor(slots: Int32Array, key: Uint8Array) {
    if (slots.length === 0 || (slots.length & (slots.length - 1)) !== 0) {
      throw new Error(`source count slots: a power of two, not ${String(slots.length)}`);
    }
    this.slots = slots;
    this.key = createSecretKey(key);
  }

  /** The slot `address` is counted in. */
  slotOf(address: string): number {
    return createHmac('sha256', this.key).update(address).digest().readUInt32BE(0) & (this.slots.length - 1);
  }

  /**
   * Counts one more connection from `address` unless `bound` are counted in its slot already (then false,
   * and nothing is counted). The add comes first, so two loops never both take the last place; one that
   * finds the slot full takes its add back (a connection refused meanwhile sees one too many: stricter).
   */
  admit(address: string, bound: number): boolean {
    const slot = this.slotOf(address);
    if (Atomics.add(this.slots, slot, 1) < bound) return true;
    Atomics.sub(this.slots, slot, 1);
    return false;
  }

  /** One connection admitted from `address` no longer counts (on any loop: every loop has the same key). */
  release(address: string): void {
    Atomics.sub(this.slots, this.slotOf(address), 1);
  }
}
