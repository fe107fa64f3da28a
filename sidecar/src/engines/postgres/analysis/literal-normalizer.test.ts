import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { keyToTextOffset, normalizeLiterals, textToKeyOffset } from './literal-normalizer.ts';

const MARKER = String.fromCharCode(1);

/** The key with markers shown as <class>, for readable expectations. */
function shown(text: string): string | undefined {
  const n = normalizeLiterals(text);
  return n?.key
    .split(MARKER)
    .map((part, i) => (i === 0 ? part : `<${part.slice(0, 1)}>${part.slice(1)}`))
    .join('');
}

describe('normalizeLiterals', () => {
  it('replaces numbers and strings, keeping everything else', () => {
    assert.equal(
      shown('SELECT abalance FROM pgbench_accounts WHERE aid = 12345;'),
      'SELECT abalance FROM pgbench_accounts WHERE aid = <i>;',
    );
    assert.equal(
      shown("select * from t where a = 'x' and b in (1, 2.5, .5, 1e5, 1.e-3, 2E+10)"),
      'select * from t where a = <s> and b in (<i>, <n>, <n>, <n>, <n>, <n>)',
    );
    assert.equal(shown("select 'it''s', '', ''''"), 'select <s>, <s>, <s>');
    assert.equal(
      shown("select E'a\\'b''c\\\\', e'\\n', B'0101', x'ff', X'', N'nat'"),
      'select <e>, <e>, <b>, <x>, <x>, N<s>',
    );
    assert.equal(shown('select $$a$b$$, $tag$x $$ y$tag$, $a$$b$$a$'), 'select <d>, <d>, <d>');
    assert.equal(
      shown('select "a""b", "-- no comment", "\'not a string\'" from "T"'),
      'select "a""b", "-- no comment", "\'not a string\'" from "T"',
    );
  });

  it('tells integers that fit int4 from other numbers (the parser makes larger ones FCONST)', () => {
    assert.equal(
      shown('select 2147483647, 02147483647, 2147483648, 99999999999, 0, 000'),
      'select <i>, <i>, <n>, <n>, <i>, <i>',
    );
  });

  it('keeps parameters, identifiers with $ and digits, and operators', () => {
    assert.equal(
      shown('select $1, a$b$c, t1.c2, x::int, a<->b, a||b from t where c = $12'),
      'select $1, a$b$c, t1.c2, x::int, a<->b, a||b from t where c = $12',
    );
    assert.equal(shown("select xE'a'"), 'select xE<s>');
    assert.equal(shown('select 1'), 'select <i>');
    const none = normalizeLiterals('select a from t');
    assert.deepEqual(none, { key: 'select a from t', literals: [], minus: [] });
  });

  it('leaves literals inside comments and comments inside literals alone', () => {
    assert.equal(shown("select 1 -- it's 2\n, 3"), "select <i> -- it's 2\n, <i>");
    assert.equal(shown("select /* 'x' /* nested 'y' */ still 4 */ 5"), "select /* 'x' /* nested 'y' */ still 4 */ <i>");
    assert.equal(shown("select '-- not a comment', '/* nor this', $$ -- $$"), 'select <s>, <s>, <d>');
    assert.equal(shown('select 1 --\rselect 2'), 'select <i> --\rselect <i>');
    assert.equal(shown('select 1/**/+/*/ */2'), 'select <i>/**/+/*/ */<i>');
    assert.equal(shown('select 1 <--2'), 'select <i> <--2');
  });

  it('handles multi-statement strings', () => {
    assert.equal(shown("SELECT 1; SELECT 'a;b'; SELECT $$;$$;"), 'SELECT <i>; SELECT <s>; SELECT <d>;');
  });

  it('remembers a minus sign right before a number', () => {
    const text = 'select -1, - /* c */ 2, 3 - 4, -(5), a=-6, @-7, -x';
    const n = normalizeLiterals(text);
    assert.ok(n !== undefined);
    const minus = n.minus.map((m) => (m < 0 ? undefined : text[m]));
    assert.deepEqual(minus, ['-', '-', undefined, '-', undefined, '-', '-']);
    assert.equal(n.minus[1], text.indexOf('- /*'));
    // Strings never get one.
    assert.deepEqual(normalizeLiterals("select -'1'")?.minus, [-1]);
  });

  it('gives up on unusual or hostile input', () => {
    for (const text of [
      "select 'unterminated",
      "select 'a'' ",
      'select "unterminated',
      'select $$unterminated',
      'select $a$ x $b$',
      'select /* unterminated',
      'select /* /* nested */ unterminated',
      "select E'\\'",
      "select E'\\u0041'",
      "select E'\\U00000041'",
      "select E'\\x41'",
      "select E'\\101'",
      "select U&'d\\0061t\\+000061'",
      'select U&"d0061t"',
      "select u&'x'",
      "select B'01''10'",
      'select 0x1F',
      'select 0o17',
      'select 0b101',
      'select 1_000',
      'select 1e',
      'select 1e+',
      'select 123abc',
      'select 1..2',
      'select 1.5.6',
      'select 1$',
      'select 1.a',
      'select $1a',
      'select $1.5',
      'select $',
      'select $ 1',
      'select $1$',
      'select 1\u0000',
      "select 'a\u0000'",
      'select \u0001i',
      "select '\u0001'",
      'select 1 -- \u0001',
      'select /* \u0001 */ 1',
      'select "\u0001"',
      'select 1\u000b',
      'select 1\u007f',
      "select '\u001b[31m'",
    ]) {
      assert.equal(normalizeLiterals(text), undefined, JSON.stringify(text));
    }
  });

  it('maps offsets between the text and the key', () => {
    const text = "SELECT 'abc', 12345; SELECT $$x$$ -- tail";
    const n = normalizeLiterals(text);
    assert.ok(n !== undefined);
    assert.equal(n.key, 'SELECT \u0001s, \u0001i; SELECT \u0001d -- tail');
    for (const [offset, key] of [
      [0, 0],
      [7, 7], // start of 'abc'
      [12, 9], // end of 'abc'
      [14, 11], // start of 12345
      [19, 13], // end of 12345
      [text.length, n.key.length],
    ] as const) {
      assert.equal(textToKeyOffset(n.literals, offset), key, `text ${String(offset)}`);
      assert.equal(keyToTextOffset(n.literals, key), offset, `key ${String(key)}`);
    }
    assert.equal(textToKeyOffset(n.literals, 8), undefined); // inside 'abc'
    assert.equal(textToKeyOffset(n.literals, 18), undefined); // inside 12345
    // The same key maps to other texts' offsets.
    const other = normalizeLiterals("SELECT 'a much longer string', 7; SELECT $$$$ -- tail");
    assert.ok(other !== undefined);
    assert.equal(other.key, n.key);
    assert.equal(keyToTextOffset(other.literals, 13), "SELECT 'a much longer string', 7".length);
  });

  it('never throws and never puts a marker outside a literal on random input', () => {
    const alphabet = [
      "'",
      '"',
      '$',
      '-',
      '/',
      '*',
      '\\',
      'e',
      'E',
      'b',
      'x',
      'u',
      '&',
      '1',
      '.',
      ' ',
      '\n',
      'a',
      ';',
      '(',
      'é',
      '😀',
    ];
    let seed = 42;
    const rand = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    for (let i = 0; i < 20000; i++) {
      let text = '';
      for (let j = Math.floor(rand() * 30); j > 0; j--) text += alphabet[Math.floor(rand() * alphabet.length)];
      const n = normalizeLiterals(text);
      if (n === undefined) continue;
      // Rebuilding the text from the key and the literal spans gives the text back.
      let rebuilt = '';
      let at = 0;
      let k = 0;
      for (let p = 0; p < n.key.length; p++) {
        if (n.key[p] === '\u0001') {
          rebuilt += text.slice(n.literals[2 * k], n.literals[2 * k + 1]);
          k++;
          p++;
          continue;
        }
        rebuilt += n.key[p];
        at++;
      }
      assert.equal(rebuilt, text, JSON.stringify(text));
      assert.equal(k, n.literals.length / 2);
      assert.ok(at <= text.length);
    }
  });
});
