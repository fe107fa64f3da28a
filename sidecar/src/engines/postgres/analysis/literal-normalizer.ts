// A small SQL lexer that finds the literals of a statement string, so the analysis cache can key
// `... WHERE aid = 12345` and `... WHERE aid = 678` alike (sql-analyzer.ts). It follows PostgreSQL's
// scanner (src/backend/parser/scan.l, standard_conforming_strings on) only as far as it needs to find
// where literals, comments, quoted identifiers and dollar quotes begin and end; everything outside
// literals is kept verbatim in the key. Anything it is not sure about makes it give up (undefined), and
// the caller falls back to keying on the exact text:
//
// - `U&'...'` / `U&"..."` (Unicode escapes with a UESCAPE clause), E-strings with \u, \U, \x or octal
//   escapes (their value can make the text fail to lex), bit/hex strings followed directly by a quote;
// - numbers the server (PostgreSQL 15) and the parser (libpg-query, PostgreSQL 18) read differently or
//   reject: 0x/0o/0b prefixes, `_` separators, a number followed directly by a letter, `$`, `.` or `_`
//   (`1e`, `123abc`, `1..2`), parameters followed by a letter (`$1a`);
// - `$` that starts neither a parameter nor a dollar quote, unterminated quotes, identifiers, dollar
//   quotes or block comments, and control characters other than space, tab, CR, LF and form feed
//   (this includes NUL and U+0001, the marker of a literal in the key).
//
// A literal becomes U+0001 plus its class in the key: `i` an integer that fits int4 (the parser's
// ICONST; larger integers are FCONST), `n` another number, `s` a '...' string, `e` an E'...' string,
// `d` a dollar-quoted string, `b` a B'...' bit string, `x` an X'...' hex string. Keeping the class
// keeps the token stream the grammar sees identical up to literal values for every text with one key.

/** Literals found in a text: the key plus each literal's position, for mapping offsets between the two. */
export interface NormalizedText {
  /** The text with each literal replaced by U+0001 and its class letter. */
  readonly key: string;
  /** [start, end) of each literal in the text, flattened: start0, end0, start1, end1, ... */
  readonly literals: readonly number[];
  /**
   * Per literal: for a number with a `-` right before it (only whitespace or comments between), the
   * position of that `-` (the parser reports a negated constant there); otherwise -1.
   */
  readonly minus: readonly number[];
}

/** Length of the marker that replaces each literal in the key. */
export const MARKER_LENGTH = 2;

const SPACE = 0x20;
const TAB = 0x09;
const LF = 0x0a;
const FF = 0x0c;
const CR = 0x0d;
const QUOTE = 0x27; // '
const DQUOTE = 0x22; // "
const DOLLAR = 0x24; // $
const MINUS = 0x2d; // -
const SLASH = 0x2f; // /
const STAR = 0x2a; // *
const DOT = 0x2e; // .
const BACKSLASH = 0x5c; // \
const AMP = 0x26; // &
const UNDERSCORE = 0x5f; // _

const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
const isLetter = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
/** First character of an identifier or dollar-quote tag: letters, `_` and anything outside ASCII (scan.l ident_start). */
const isIdentStart = (c: number): boolean => isLetter(c) || c === UNDERSCORE || c >= 0x80;
/** Later characters of an identifier (scan.l ident_cont); dollar-quote tags do not allow `$`. */
const isIdentCont = (c: number): boolean => isIdentStart(c) || isDigit(c) || c === DOLLAR;
const isTagCont = (c: number): boolean => isIdentStart(c) || isDigit(c);

/**
 * Finds the literals of `text`. Undefined when the text is unusual in any way listed above: then the
 * caller must key on the exact text. A result with no literals has `key === text`.
 */
export function normalizeLiterals(text: string): NormalizedText | undefined {
  const n = text.length;
  const literals: number[] = [];
  const minus: number[] = [];
  let key = '';
  let copied = 0;
  /** Position of the last character that was neither whitespace nor inside a comment, and that character. */
  let lastPos = -1;
  let lastChar = -1;
  let i = 0;

  const literal = (start: number, end: number, cls: string, minusAt: number): void => {
    key += `${text.slice(copied, start)}\u0001${cls}`;
    copied = end;
    literals.push(start, end);
    minus.push(minusAt);
    lastPos = end - 1;
    lastChar = -1;
  };

  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === SPACE || c === LF || c === TAB || c === CR || c === FF) {
      i++;
      continue;
    }
    if (c < 0x20 || c === 0x7f) return undefined;

    // Comments: `--` to the end of the line; `/* */`, nested.
    if (c === MINUS && text.charCodeAt(i + 1) === MINUS) {
      i += 2;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === LF || d === CR) break;
        if (d < 0x20 && d !== TAB && d !== FF) return undefined;
        i++;
      }
      continue;
    }
    if (c === SLASH && text.charCodeAt(i + 1) === STAR) {
      let depth = 1;
      i += 2;
      while (depth > 0) {
        if (i >= n) return undefined;
        const d = text.charCodeAt(i);
        if (d === SLASH && text.charCodeAt(i + 1) === STAR) {
          depth++;
          i += 2;
        } else if (d === STAR && text.charCodeAt(i + 1) === SLASH) {
          depth--;
          i += 2;
        } else {
          if (d < 0x20 && d !== SPACE && d !== LF && d !== TAB && d !== CR && d !== FF) return undefined;
          i++;
        }
      }
      continue;
    }

    if (c === QUOTE) {
      const end = standardStringEnd(text, i + 1);
      if (end < 0) return undefined;
      literal(i, end, 's', -1);
      i = end;
      continue;
    }

    if (c === DQUOTE) {
      // Quoted identifier, "" inside is a quote; kept verbatim.
      let j = i + 1;
      for (;;) {
        const q = text.indexOf('"', j);
        if (q < 0) return undefined;
        if (text.charCodeAt(q + 1) === DQUOTE) {
          j = q + 2;
          continue;
        }
        j = q + 1;
        break;
      }
      if (hasControl(text, i, j)) return undefined;
      lastPos = j - 1;
      lastChar = DQUOTE;
      i = j;
      continue;
    }

    if (c === DOLLAR) {
      const next = text.charCodeAt(i + 1);
      if (isDigit(next)) {
        // A parameter, $1: kept verbatim.
        let j = i + 1;
        while (j < n && isDigit(text.charCodeAt(j))) j++;
        if (j < n && (isIdentCont(text.charCodeAt(j)) || text.charCodeAt(j) === DOT)) return undefined;
        lastPos = j - 1;
        lastChar = -1;
        i = j;
        continue;
      }
      // A dollar quote: $$ or $tag$, up to the first occurrence of the same delimiter.
      let j = i + 1;
      if (next !== DOLLAR) {
        if (!isIdentStart(next)) return undefined;
        j++;
        while (j < n && isTagCont(text.charCodeAt(j))) j++;
        if (text.charCodeAt(j) !== DOLLAR) return undefined;
      }
      const delimiter = text.slice(i, j + 1);
      const close = text.indexOf(delimiter, j + 1);
      if (close < 0) return undefined;
      const end = close + delimiter.length;
      if (hasControl(text, j + 1, close)) return undefined;
      literal(i, end, 'd', -1);
      i = end;
      continue;
    }

    if (isDigit(c) || (c === DOT && isDigit(text.charCodeAt(i + 1)))) {
      const end = numberEnd(text, i);
      if (end < 0) return undefined;
      let integer = true;
      for (let k = i; k < end; k++) {
        if (!isDigit(text.charCodeAt(k))) {
          integer = false;
          break;
        }
      }
      const cls = integer && fitsInt4(text, i, end) ? 'i' : 'n';
      literal(i, end, cls, lastChar === MINUS ? lastPos : -1);
      i = end;
      continue;
    }

    if (isIdentStart(c)) {
      let j = i + 1;
      while (j < n && isIdentCont(text.charCodeAt(j))) j++;
      if (j === i + 1) {
        const after = text.charCodeAt(j);
        if ((c === 0x55 || c === 0x75) && after === AMP) return undefined; // U&'...', U&"..."
        if (after === QUOTE) {
          const prefix = c | 0x20; // lower case
          if (prefix === 0x65) {
            // E'...': backslash escapes.
            const end = escapeStringEnd(text, j + 1);
            if (end < 0) return undefined;
            literal(i, end, 'e', -1);
            i = end;
            continue;
          }
          if (prefix === 0x62 || prefix === 0x78) {
            // B'...' / X'...': no escapes, not even ''; the next quote ends them.
            const q = text.indexOf("'", j + 1);
            if (q < 0 || text.charCodeAt(q + 1) === QUOTE || hasControl(text, j + 1, q)) return undefined;
            literal(i, q + 1, prefix === 0x62 ? 'b' : 'x', -1);
            i = q + 1;
            continue;
          }
          // N'...' is the keyword NCHAR and a plain string: the N stays in the key.
        }
      }
      lastPos = j - 1;
      lastChar = -1;
      i = j;
      continue;
    }

    // Operators and punctuation, kept verbatim. A `-` is remembered for the number after it.
    lastPos = i;
    lastChar = c;
    i++;
  }
  if (literals.length === 0) return { key: text, literals, minus };
  key += text.slice(copied);
  return { key, literals, minus };
}

function hasControl(text: string, from: number, to: number): boolean {
  for (let k = from; k < to; k++) {
    const d = text.charCodeAt(k);
    if ((d < 0x20 && d !== LF && d !== TAB && d !== CR && d !== FF) || d === 0x7f) return true;
  }
  return false;
}

/** End (after the closing quote) of a '...' string whose content starts at `from`; -1 if unterminated. */
function standardStringEnd(text: string, from: number): number {
  let j = from;
  for (;;) {
    const q = text.indexOf("'", j);
    if (q < 0) return -1;
    if (text.charCodeAt(q + 1) === QUOTE) {
      j = q + 2;
      continue;
    }
    return hasControl(text, from, q) ? -1 : q + 1;
  }
}

/** End of an E'...' string whose content starts at `from`; -1 if unterminated or an escape could fail to lex. */
function escapeStringEnd(text: string, from: number): number {
  const n = text.length;
  let j = from;
  while (j < n) {
    const d = text.charCodeAt(j);
    if (d === BACKSLASH) {
      const e = text.charCodeAt(j + 1);
      // \u, \U, \x and octal escapes produce code points or bytes that may be invalid.
      if (Number.isNaN(e) || e === 0x75 || e === 0x55 || e === 0x78 || (e >= 0x30 && e <= 0x37)) return -1;
      if ((e < 0x20 && e !== LF && e !== TAB && e !== CR && e !== FF) || e === 0x7f) return -1;
      j += 2;
      continue;
    }
    if (d === QUOTE) {
      if (text.charCodeAt(j + 1) === QUOTE) {
        j += 2;
        continue;
      }
      return j + 1;
    }
    if ((d < 0x20 && d !== LF && d !== TAB && d !== CR && d !== FF) || d === 0x7f) return -1;
    j++;
  }
  return -1;
}

/**
 * End of a decimal number starting at `start` (digits, optional fraction, optional exponent); -1 when
 * what follows could be read differently by the server and the parser (see the file comment).
 */
function numberEnd(text: string, start: number): number {
  const n = text.length;
  let j = start;
  const first = text.charCodeAt(j);
  if (first === 0x30 && j + 1 < n && isLetter(text.charCodeAt(j + 1))) {
    const p = text.charCodeAt(j + 1) | 0x20;
    if (p === 0x78 || p === 0x6f || p === 0x62) return -1; // 0x.., 0o.., 0b..
  }
  while (j < n && isDigit(text.charCodeAt(j))) j++;
  if (text.charCodeAt(j) === DOT) {
    if (text.charCodeAt(j + 1) === DOT) return -1; // 1..2
    j++;
    while (j < n && isDigit(text.charCodeAt(j))) j++;
  }
  const e = text.charCodeAt(j);
  if (e === 0x65 || e === 0x45) {
    let k = j + 1;
    const sign = text.charCodeAt(k);
    if (sign === 0x2b || sign === MINUS) k++;
    if (!isDigit(text.charCodeAt(k))) return -1; // 1e, 1e+
    while (k < n && isDigit(text.charCodeAt(k))) k++;
    j = k;
  }
  if (j < n) {
    const after = text.charCodeAt(j);
    if (isIdentCont(after) || after === DOT) return -1;
  }
  return j;
}

/** Whether the digits text[start, end) are at most 2147483647 (the parser makes larger integers FCONST). */
function fitsInt4(text: string, start: number, end: number): boolean {
  let s = start;
  while (s < end - 1 && text.charCodeAt(s) === 0x30) s++;
  const len = end - s;
  if (len < 10) return true;
  if (len > 10) return false;
  return text.slice(s, end) <= '2147483647';
}

/**
 * Maps an offset in the text to the key: undefined when it falls strictly inside a literal. Offsets at a
 * literal's start map to its marker's start, at its end to the marker's end.
 */
export function textToKeyOffset(literals: readonly number[], offset: number): number | undefined {
  let delta = 0;
  for (let k = 0; k < literals.length; k += 2) {
    const start = literals[k] as number;
    const end = literals[k + 1] as number;
    if (offset <= start) break;
    if (offset < end) return undefined;
    delta += end - start - MARKER_LENGTH;
  }
  return offset - delta;
}

/** Maps an offset in the key (never inside a marker) back to the text the literals were found in. */
export function keyToTextOffset(literals: readonly number[], offset: number): number {
  let delta = 0;
  for (let k = 0; k < literals.length; k += 2) {
    const start = literals[k] as number;
    const end = literals[k + 1] as number;
    // The marker of this literal starts at start - delta in the key.
    if (offset <= start - delta) break;
    delta += end - start - MARKER_LENGTH;
  }
  return offset + delta;
}
