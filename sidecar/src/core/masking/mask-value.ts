// Masking of values by the policy's masking instructions (api/src/policy.ts MaskingInstruction):
// content detectors find sensitive substrings, strategies replace them. Protocol-neutral, so result
// masking in the engines and parameter masking in audit records mask "the same way".
//
// Today this masks the bound parameters recorded in audit records (AgentSession.record). A parameter's
// column is not known there (`WHERE email = $1` feeds a column only the plan knows), so an instruction
// with column patterns masks every parameter of the statements it covers, entirely; an instruction with
// only detectors masks what its detectors find. Conservative on purpose: an auditor loses a value rather
// than a record leaking one.
import { createHmac, hash, randomBytes } from 'node:crypto';
import type { MaskingInstruction, MaskingStrategy } from '@chaperone/api';
import { replaceDetected } from './detectors.ts';

/** What redact writes in place of a value. */
export const REDACTED = '[MASKED]';

export interface ValueMasker {
  /** `value` with every covered part replaced; the same string when nothing applies. */
  mask(value: string): string;
}

/** Applies one strategy to one value (a whole value, or a detected substring). */
export function applyStrategy(
  strategy: MaskingStrategy,
  value: string,
  hashKey: Buffer,
  keepLast = 4,
  fixedValue = '',
): string {
  switch (strategy) {
    case 'redact':
      return REDACTED;
    case 'fixed':
      return fixedValue;
    case 'null':
      return 'NULL';
    case 'partial': {
      // Characters, not UTF-16 units: a kept tail never splits a character.
      const chars = Array.from(value);
      // Never keep more than half of the value.
      const keep = chars.length >= 2 * keepLast ? keepLast : 0;
      return '*'.repeat(chars.length - keep) + chars.slice(chars.length - keep).join('');
    }
    case 'hash':
      // Keyed, so a masked value cannot be confirmed by hashing guesses; stable for one key (joins).
      return `hmac:${keyedHash(hashKey, value).toString('hex', 0, 8)}`;
  }
}

const BLOCK = 64;
/** Messages up to this many bytes are hashed from a scratch buffer; longer ones through createHmac. */
const SCRATCH_MESSAGE = 4096;

/**
 * HMAC-SHA-256 under one key (RFC 2104), for many short values: the inner and outer padded keys are made
 * once and the message is copied after the inner one in a scratch buffer, so a value costs two one-shot
 * `crypto.hash` calls and no allocation but their results (createHmac costs about 10 µs per call to set up;
 * `crypto.hash` returning a Buffer costs about four times what returning a string does, so the digests come
 * back as binary (latin1) or hex strings). Not reentrant: one instance per key, used synchronously.
 */
export class KeyedHasher {
  private readonly key: Buffer;
  /** Inner padded key, then the message. */
  private readonly inner = Buffer.alloc(BLOCK + SCRATCH_MESSAGE);
  /** Outer padded key, then the inner digest. */
  private readonly outer = Buffer.alloc(BLOCK + 32);
  /** Views of `inner` by length (the padded key and a message of that many bytes), made once each. */
  private readonly views: Buffer[] = [];

  constructor(key: Buffer) {
    this.key = key;
    const k = Buffer.alloc(BLOCK);
    (key.length > BLOCK ? hash('sha256', key, 'buffer') : key).copy(k);
    for (let i = 0; i < BLOCK; i++) {
      this.inner[i] = (k[i] ?? 0) ^ 0x36;
      this.outer[i] = (k[i] ?? 0) ^ 0x5c;
    }
  }

  /** The HMAC of `src[start, end)`. */
  digest(src: Buffer, start = 0, end = src.length): Buffer {
    const n = end - start;
    if (n > SCRATCH_MESSAGE) return createHmac('sha256', this.key).update(src.subarray(start, end)).digest();
    src.copy(this.inner, BLOCK, start, end);
    return Buffer.from(this.outerHash(BLOCK + n, 'binary'), 'latin1');
  }

  /** The first 16 hex digits (8 bytes) of the HMAC of `src[start, end)`, as `hmac:` values print it. */
  hex16(src: Buffer, start: number, end: number): string {
    const n = end - start;
    if (n > SCRATCH_MESSAGE) {
      return createHmac('sha256', this.key).update(src.subarray(start, end)).digest('hex').slice(0, 16);
    }
    src.copy(this.inner, BLOCK, start, end);
    return this.outerHash(BLOCK + n, 'hex').slice(0, 16);
  }

  /** The HMAC of the UTF-8 bytes of `text`. */
  digestText(text: string): Buffer {
    // At most 3 bytes per UTF-16 unit: a text of up to SCRATCH_MESSAGE / 3 units always fits.
    if (text.length * 3 > SCRATCH_MESSAGE) return createHmac('sha256', this.key).update(text).digest();
    const n = this.inner.write(text, BLOCK, 'utf8');
    return Buffer.from(this.outerHash(BLOCK + n, 'binary'), 'latin1');
  }

  /** SHA-256(outer key ‖ SHA-256(inner[0, length))), in `encoding`. */
  private outerHash(length: number, encoding: 'binary' | 'hex'): string {
    const view = (this.views[length] ??= this.inner.subarray(0, length));
    this.outer.write(hash('sha256', view, 'binary'), BLOCK, 'latin1');
    return hash('sha256', this.outer, encoding);
  }
}

const hashers = new WeakMap<Buffer, KeyedHasher>();

/** The KeyedHasher of `key`, made at its first use. */
export function keyedHasher(key: Buffer): KeyedHasher {
  let h = hashers.get(key);
  if (h === undefined) {
    h = new KeyedHasher(key);
    hashers.set(key, h);
  }
  return h;
}

/** HMAC-SHA-256 of `value` under `key` (RFC 2104). The test checks it against createHmac. */
export function keyedHash(key: Buffer, value: string | Buffer): Buffer {
  const h = keyedHasher(key);
  return typeof value === 'string' ? h.digestText(value) : h.digest(value);
}

/** Masks whole values (column rules) and detected substrings (detector rules), per `instructions`. */
export function createValueMasker(
  instructions: readonly MaskingInstruction[],
  hashKey: Buffer,
): ValueMasker | undefined {
  if (instructions.length === 0) return undefined;
  const whole = instructions.find((i) => i.columns.length > 0 || (i.types?.length ?? 0) > 0);
  return {
    mask(value: string): string {
      if (whole !== undefined) return applyStrategy(whole.strategy, value, hashKey, whole.keepLast, whole.value);
      let out = value;
      for (const i of instructions) {
        if (i.detectors.length === 0) continue;
        out = replaceDetected(out, i.detectors, (m) => applyStrategy(i.strategy, m, hashKey, i.keepLast, i.value)).text;
      }
      return out;
    },
  };
}

/** A process-wide hash key when none is configured: hashes join within one sidecar process only. */
export const PROCESS_HASH_KEY: Buffer = randomBytes(32);
