// Masking of values by the policy's masking instructions (api/src/policy.ts MaskingInstruction):
// content detectors find sensitive substrings, strategies replace them. Protocol-neutral, so result
// masking in the engines and parameter masking in audit records mask "the same way".
//
// Today this masks the bound parameters recorded in audit records (AgentSession.record). A parameter's
// column is not known there (`WHERE email = $1` feeds a column only the plan knows), so an instruction
// with column patterns masks every parameter of the statements it covers, entirely; an instruction with
// only detectors masks what its detectors find. Conservative on purpose: an auditor loses a value rather
// than a record leaking one.
import { hash, randomBytes } from 'node:crypto';
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
/** Inner and outer padded keys of HMAC-SHA-256 (RFC 2104), per key. */
const padded = new WeakMap<Buffer, { readonly inner: Buffer; readonly outer: Buffer }>();

/**
 * HMAC-SHA-256 of `value` under `key` (RFC 2104), from two one-shot hashes: createHmac costs tens of µs per
 * call to set up, which a result of a million rows pays a million times. The test checks it against createHmac.
 */
export function keyedHash(key: Buffer, value: string | Buffer): Buffer {
  let pads = padded.get(key);
  if (pads === undefined) {
    const k = Buffer.alloc(BLOCK);
    (key.length > BLOCK ? hash('sha256', key, 'buffer') : key).copy(k);
    pads = { inner: Buffer.from(k.map((b) => b ^ 0x36)), outer: Buffer.from(k.map((b) => b ^ 0x5c)) };
    padded.set(key, pads);
  }
  const message = typeof value === 'string' ? Buffer.from(value) : value;
  const inner = hash('sha256', Buffer.concat([pads.inner, message]), 'buffer');
  return hash('sha256', Buffer.concat([pads.outer, inner]), 'buffer');
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
