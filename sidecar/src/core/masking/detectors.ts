// Content detectors: find sensitive substrings in text, whatever column they came from. Each detector is a
// pattern plus, where a checksum exists, a check that cuts false positives (Luhn for payment cards, ISO 7064
// mod 97 for IBANs). Precision and recall are documented per detector in docs/masking.md; the tests
// (detectors.test.ts) hold a true and a false positive for each. Protocol-neutral: the PostgreSQL engine
// scans result values with them, the HTTP and Kubernetes engines can scan bodies.
import type { ContentDetector } from '@chaperone/api';

export interface Detector {
  /** Global pattern; matches are candidates. */
  readonly pattern: RegExp;
  /** Accepts or rejects a candidate (a checksum); absent: every match counts. */
  readonly check?: (match: string) => boolean;
  /** A cheap test that rules a value out before the pattern runs (most values hold no candidate). */
  readonly mayContain: (value: string) => boolean;
}

export function luhn(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

export function ibanValid(candidate: string): boolean {
  const s = candidate.replace(/ /g, '').toUpperCase();
  if (s.length < 15 || s.length > 34) return false;
  const rearranged = s.slice(4) + s.slice(0, 4);
  let remainder = 0;
  for (const ch of rearranged) {
    const code = ch >= 'A' && ch <= 'Z' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const digit of code) remainder = (remainder * 10 + Number(digit)) % 97;
  }
  return remainder === 1;
}

function ipv6Valid(candidate: string): boolean {
  const parts = candidate.split('::');
  if (parts.length > 2) return false;
  const groups = parts.flatMap((p) => (p === '' ? [] : p.split(':')));
  if (groups.some((g) => !/^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  return parts.length === 2 ? groups.length <= 7 && groups.length >= 2 : groups.length === 8;
}

const hasDigit = (v: string): boolean => /\d/.test(v);

export const DETECTORS: Readonly<Record<ContentDetector, Detector>> = {
  email: {
    // The lookbehind starts a candidate only where a run of local-part characters starts: the same matches
    // (a run either reaches the @ or does not, wherever in it one starts), but linear instead of quadratic
    // in the run's length.
    pattern: /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/g,
    mayContain: (v) => v.includes('@'),
  },
  'credit-card': {
    pattern: /(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])/g,
    check: (m) => luhn(m.replace(/[ -]/g, '')),
    mayContain: hasDigit,
  },
  'us-ssn': {
    pattern: /(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)/g,
    mayContain: (v) => /\d-\d/.test(v),
  },
  phone: {
    pattern:
      /(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}|(?<![\d.-])\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4})(?![\d.-]?\d)/g,
    mayContain: hasDigit,
  },
  iban: {
    pattern: /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b/g,
    check: ibanValid,
    mayContain: (v) => /[A-Z]{2}\d\d/.test(v),
  },
  ipv4: {
    pattern: /(?<!\d\.?)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)/g,
    mayContain: (v) => /\d\.\d/.test(v),
  },
  ipv6: {
    pattern: /(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])/g,
    check: ipv6Valid,
    // A valid address has `::` or a group between two colons (ipv6Valid): most text with a colon has neither.
    mayContain: (v) => /::|[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:/.test(v),
  },
  jwt: {
    pattern: /\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}/g,
    mayContain: (v) => v.includes('eyJ'),
  },
  'secret-key': {
    pattern:
      /(?:\bAKIA[0-9A-Z]{16}\b|\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}|\bgh[pousr]_[0-9A-Za-z]{36,}|\bgithub_pat_[0-9A-Za-z_]{40,}|\bglpat-[0-9A-Za-z_-]{20,}|\bxox[abpr]-[0-9A-Za-z-]{10,}|\bAIza[0-9A-Za-z_-]{35}|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))/g,
    mayContain: (v) => /AKIA|_live_|_test_|gh[pousr]_|github_pat_|glpat-|xox|AIza|PRIVATE KEY/.test(v),
  },
};

/** Every detector, for the `detect` fallback on untraceable columns. */
export const ALL_DETECTORS: readonly ContentDetector[] = Object.keys(DETECTORS) as ContentDetector[];

/**
 * Replaces what `detectors` find in `value` with `replace(match)`; returns the new text and how many
 * matches were replaced (the same string and 0 when nothing was found).
 */
export function replaceDetected(
  value: string,
  detectors: readonly ContentDetector[],
  replace: (match: string) => string,
): { readonly text: string; readonly count: number } {
  let out = value;
  let count = 0;
  for (const name of detectors) {
    const d = DETECTORS[name];
    if (!d.mayContain(out)) continue;
    d.pattern.lastIndex = 0;
    out = out.replace(d.pattern, (match) => {
      if (d.check !== undefined && !d.check(match)) return match;
      count += 1;
      return replace(match);
    });
  }
  return { text: out, count };
}
