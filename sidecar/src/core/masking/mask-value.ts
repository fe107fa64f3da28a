// Masking of values by the policy's masking instructions (api/src/policy.ts MaskingInstruction):
// content detectors find sensitive substrings, strategies replace them. Protocol-neutral, so result
// masking in the engines and parameter masking in audit records mask "the same way".
//
// Today this masks the bound parameters recorded in audit records (AgentSession.record). A parameter's
// column is not known there (`WHERE email = $1` feeds a column only the plan knows), so an instruction
// with column patterns masks every parameter of the statements it covers, entirely; an instruction with
// only detectors masks what its detectors find. Conservative on purpose: an auditor loses a value rather
// than a record leaking one.
import { createHmac, randomBytes } from 'node:crypto';
import type { ContentDetector, MaskingInstruction, MaskingStrategy } from '@chaperone/api';

/** What redact writes in place of a value. */
export const REDACTED = '[MASKED]';

function luhn(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = Number(digits[digits.length - 1 - i]);
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

function ibanValid(candidate: string): boolean {
  const s = candidate.replace(/ /g, '').toUpperCase();
  const rearranged = s.slice(4) + s.slice(0, 4);
  let remainder = 0;
  for (const ch of rearranged) {
    const code = ch >= 'A' && ch <= 'Z' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const digit of code) remainder = (remainder * 10 + Number(digit)) % 97;
  }
  return remainder === 1;
}

/** Each detector: a global pattern and an optional check of a match (checksums cut false positives). */
const DETECTORS: Readonly<Record<ContentDetector, { pattern: RegExp; check?: (match: string) => boolean }>> = {
  email: { pattern: /[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}/g },
  'credit-card': {
    pattern: /\b\d(?:[ -]?\d){12,18}\b/g,
    check: (m) => luhn(m.replace(/[ -]/g, '')),
  },
  'us-ssn': { pattern: /\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b/g },
  phone: { pattern: /(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}\b/g },
  iban: { pattern: /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b/g, check: ibanValid },
  ipv4: { pattern: /\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b/g },
  jwt: { pattern: /\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}/g },
  'secret-key': {
    pattern:
      /\b(?:AKIA[0-9A-Z]{16}|(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}|gh[pousr]_[0-9A-Za-z]{36,}|xox[abpr]-[0-9A-Za-z-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)/g,
  },
};

export interface ValueMasker {
  /** `value` with every covered part replaced; the same string when nothing applies. */
  mask(value: string): string;
}

/** Applies one strategy to one value (a whole value, or a detected substring). */
export function applyStrategy(strategy: MaskingStrategy, value: string, hashKey: Buffer): string {
  switch (strategy) {
    case 'redact':
      return REDACTED;
    case 'null':
      return 'NULL';
    case 'partial':
      return value.length <= 4 ? '*'.repeat(value.length) : `${'*'.repeat(value.length - 4)}${value.slice(-4)}`;
    case 'hash':
      // Keyed, so a masked value cannot be confirmed by hashing guesses; stable for one key (joins).
      return `hmac:${createHmac('sha256', hashKey).update(value).digest('hex').slice(0, 16)}`;
  }
}

/** Masks whole values (column rules) and detected substrings (detector rules), per `instructions`. */
export function createValueMasker(
  instructions: readonly MaskingInstruction[],
  hashKey: Buffer,
): ValueMasker | undefined {
  if (instructions.length === 0) return undefined;
  const whole = instructions.find((i) => i.columns.length > 0);
  const detectors = instructions.flatMap((i) =>
    i.detectors.map((d) => ({ detector: DETECTORS[d], strategy: i.strategy })),
  );
  return {
    mask(value: string): string {
      if (whole !== undefined) return applyStrategy(whole.strategy, value, hashKey);
      let out = value;
      for (const { detector, strategy } of detectors) {
        out = out.replace(detector.pattern, (match) =>
          detector.check === undefined || detector.check(match) ? applyStrategy(strategy, match, hashKey) : match,
        );
      }
      return out;
    },
  };
}

/** A process-wide hash key when none is configured: hashes join within one sidecar process only. */
export const PROCESS_HASH_KEY: Buffer = randomBytes(32);
