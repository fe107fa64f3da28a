// The row masker on hand-built frames (test-wire.ts): masked values stay valid for their type in text and
// binary format, untouched columns keep their bytes, errors of masked statements lose their text, and the
// counts name column, rule and strategy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { ContentDetector, MaskingStrategy } from '@chaperone/api';
import type { ColumnAction, ResultPlan } from '../../../core/masking/result-plan.ts';
import { PASS } from '../../../core/masking/result-plan.ts';
import { ProtocolViolation } from '../protocol/protocol-violation.ts';
import { decodeErrorFields } from '../protocol/backend-scanner.ts';
import { cstr, i16, i32, msg, u32 } from '../protocol/test-wire.ts';
import { RowMasker } from './row-masker.ts';

const KEY = Buffer.alloc(32, 1);
const mask = (strategy: MaskingStrategy, source = 'public.t.c', value = ''): ColumnAction => ({
  kind: 'mask',
  strategy,
  keepLast: 4,
  value,
  rule: 'ns/p/r',
  source,
});

function plan(columns: ColumnAction[], sensitive = true): ResultPlan {
  return {
    kind: 'mask',
    columns,
    fallback: mask('redact', 'untraceable'),
    typeRules: new Map(),
    detect: undefined,
    sensitive,
  };
}

function rowDescription(fields: [name: string, type: number, format: number][]): Buffer {
  return msg(
    'T',
    i16(fields.length),
    ...fields.map(([name, type, format]) =>
      Buffer.concat([cstr(name), u32(0), i16(0), u32(type), i16(-1), i32(-1), i16(format)]),
    ),
  );
}

function dataRow(values: (Buffer | null)[]): Buffer {
  return msg('D', i16(values.length), ...values.map((v) => (v === null ? i32(-1) : Buffer.concat([i32(v.length), v]))));
}

function present(v: Buffer | null | undefined): Buffer {
  assert.ok(v !== null && v !== undefined, 'a value, not NULL');
  return v;
}

/** The values of a DataRow, read the plain way. */
function values(frame: Buffer): (Buffer | null)[] {
  const out: (Buffer | null)[] = [];
  let at = 7;
  for (let i = 0; i < frame.readInt16BE(5); i++) {
    const len = frame.readInt32BE(at);
    out.push(len < 0 ? null : frame.subarray(at + 4, at + 4 + len));
    at += 4 + Math.max(len, 0);
  }
  assert.equal(at, frame.length);
  assert.equal(frame.readInt32BE(1), frame.length - 1);
  return out;
}

test('binary format: fixed values of the column type; text columns redacted; untouched columns byte for byte', () => {
  const m = new RowMasker({
    plans: [plan([PASS, mask('redact'), mask('redact'), mask('redact'), mask('null')])],
    hashKey: KEY,
  });
  m.rowDescription(
    rowDescription([
      ['id', 23, 1],
      ['n', 23, 1],
      ['j', 3802, 1],
      ['t', 25, 1],
      ['x', 25, 1],
    ]),
  );
  const id = i32(42);
  const out = values(
    m.dataRows(
      dataRow([
        id,
        i32(123456789),
        Buffer.concat([Buffer.from([1]), Buffer.from('{"a":"secret"}')]),
        Buffer.from('secret'),
        Buffer.from('s'),
      ]),
    ),
  );
  assert.deepEqual(out[0], id);
  assert.deepEqual(out[1], Buffer.alloc(4));
  assert.deepEqual(out[2], Buffer.concat([Buffer.from([1]), Buffer.from('"[MASKED]"')]));
  assert.deepEqual(out[3], Buffer.from('[MASKED]'));
  assert.equal(out[4], null);
  assert.deepEqual(
    m.counts().map((c) => [c.column, c.strategy, c.count]),
    [
      ['n (public.t.c)', 'redact', 1],
      ['j (public.t.c)', 'redact', 1],
      ['t (public.t.c)', 'redact', 1],
      ['x (public.t.c)', 'null', 1],
    ],
  );
});

test('text format: hash is keyed and stable, partial keeps the tail, a statement end moves to the next plan', () => {
  const m = new RowMasker({ plans: [plan([mask('hash'), mask('partial')]), plan([PASS], false)], hashKey: KEY });
  m.rowDescription(
    rowDescription([
      ['e', 25, 0],
      ['card', 1043, 0],
    ]),
  );
  const a = values(m.dataRows(dataRow([Buffer.from('ada@example.com'), Buffer.from('4111111111111111')])));
  const b = values(m.dataRows(dataRow([Buffer.from('ada@example.com'), null])));
  assert.match(String(a[0]), /^hmac:[0-9a-f]{16}$/);
  assert.deepEqual(a[0], b[0]);
  assert.equal(String(a[1]), '************1111');
  assert.equal(b[1], null, 'NULL stays NULL');
  m.statementEnd();
  m.rowDescription(rowDescription([['e', 25, 0]]));
  const row = dataRow([Buffer.from('ada@example.com')]);
  assert.equal(m.dataRows(row), row, 'the second statement passes its rows as they are');
});

test('a result wider or narrower than the lineage said takes the fallback in every column', () => {
  const m = new RowMasker({ plans: [plan([PASS])], hashKey: KEY });
  m.rowDescription(
    rowDescription([
      ['a', 25, 0],
      ['b', 25, 0],
    ]),
  );
  assert.deepEqual(values(m.dataRows(dataRow([Buffer.from('x'), Buffer.from('y')]))).map(String), [
    '[MASKED]',
    '[MASKED]',
  ]);
});

test('errors of a statement that reads masked data lose their text; notices are dropped', () => {
  const m = new RowMasker({ plans: [plan([mask('redact')])], hashKey: KEY });
  const error = msg(
    'E',
    cstr('SERROR'),
    cstr('VERROR'),
    cstr('C22P02'),
    cstr('Minvalid input syntax for type integer: "ada@example.com"'),
    cstr('Dmore ada@example.com'),
    i16(0).subarray(0, 1),
  );
  const out = m.error(error);
  assert.ok(!out.toString('latin1').includes('ada@example.com'));
  assert.ok(out.toString('latin1').includes('22P02'));
  assert.equal(m.notice(msg('N', cstr('SNOTICE'), cstr('Mada@example.com'), Buffer.from([0]))).length, 0);
  const clear = new RowMasker({ plans: [plan([PASS], false)], hashKey: KEY });
  assert.equal(clear.error(error), error, 'a statement that read nothing masked keeps its error');
});

test('a withheld error keeps its position only when analysis of the agent’s text raised it', () => {
  const m = new RowMasker({ plans: [plan([mask('redact')])], hashKey: KEY });
  // `translate(ssn, '5', ',')::regtype`: the grammar run over the value points at its fifth character.
  const inValue = msg(
    'E',
    cstr('SERROR'),
    cstr('C42601'),
    cstr('P5'),
    cstr('Fscan.l'),
    cstr('Wvalue'),
    Buffer.from([0]),
  );
  assert.equal(decodeErrorFields(m.error(inValue)).position, undefined);
  const inText = msg('E', cstr('SERROR'), cstr('C42P01'), cstr('P19'), cstr('Fparse_relation.c'), Buffer.from([0]));
  assert.equal(decodeErrorFields(m.error(inText)).position, '19');
});

/** The keyed hash strategy writes a value of the column's own type, equal in text and binary format. */
test('hash: integers, numerics, UUIDs, bytea and jsonb get hashed values of their type, the same in both formats', () => {
  const columns: [string, number][] = [
    ['n', 23],
    ['b', 20],
    ['s', 21],
    ['num', 1700],
    ['u', 2950],
    ['raw', 17],
    ['jb', 3802],
    ['d', 1082],
  ];
  const masker = (format: number): RowMasker => {
    const m = new RowMasker({ plans: [plan(columns.map(() => mask('hash')))], hashKey: KEY });
    m.rowDescription(rowDescription(columns.map(([n, t]) => [n, t, format])));
    return m;
  };
  const text = values(
    masker(0).dataRows(
      dataRow(
        [
          '424242',
          '9000000001',
          '7',
          '12345.60',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '\\xdeadbeef',
          '{"k": 1}',
          '2021-03-04',
        ].map((v) => Buffer.from(v)),
      ),
    ),
  );
  const uuid = Buffer.from('a0eebc999c0b4ef8bb6d6bb9bd380a11', 'hex');
  // numeric_send of 12345.60: ndigits 3, weight 1, positive, dscale 2, digits 1 2345 6000.
  const numeric = Buffer.concat([i16(3), i16(1), i16(0), i16(2), i16(1), i16(2345), i16(6000)]);
  const int8 = Buffer.alloc(8);
  int8.writeBigInt64BE(9000000001n);
  const binary = values(
    masker(1).dataRows(
      dataRow([
        i32(424242),
        int8,
        i16(7),
        numeric,
        uuid,
        Buffer.from('deadbeef', 'hex'),
        Buffer.concat([Buffer.from([1]), Buffer.from('{"k": 1}')]),
        i32(7733),
      ]),
    ),
  );
  const n = Number(String(text[0]));
  assert.ok(Number.isInteger(n) && n >= 0 && n !== 424242, String(text[0]));
  assert.equal(binary[0]?.readInt32BE(0), n, 'int4: the same hashed integer in both formats');
  assert.equal(binary[1]?.readBigInt64BE(0).toString(), String(text[1]));
  assert.equal(binary[2]?.readInt16BE(0), Number(String(text[2])));
  assert.match(String(text[3]), /^\d{1,15}$/);
  assert.equal(numericDigits(binary[3] ?? Buffer.alloc(0)), String(text[3]), 'numeric: the same hashed integer');
  assert.match(String(text[4]), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(binary[4]?.toString('hex'), String(text[4]).replace(/-/g, ''), 'uuid: the same in both formats');
  const hashed = /^hmac:[0-9a-f]{16}$/;
  assert.match(Buffer.from(String(text[5]).slice(2), 'hex').toString(), hashed, 'bytea text: hex of the hash text');
  assert.equal(binary[5]?.toString(), Buffer.from(String(text[5]).slice(2), 'hex').toString());
  assert.match(JSON.parse(String(text[6])) as string, hashed);
  assert.equal(binary[6]?.[0], 1, 'jsonb binary keeps its version byte');
  assert.equal(String(present(binary[6]).subarray(1)), String(text[6]));
  assert.equal(String(text[7]), '1970-01-01', 'a date has no hashed form: its fixed value');
});

/** numeric_send bytes of a non-negative integer, back to its decimal digits. */
function numericDigits(b: Buffer): string {
  const ndigits = b.readInt16BE(0);
  const weight = b.readInt16BE(2);
  assert.equal(b.readInt16BE(4), 0);
  assert.equal(b.readInt16BE(6), 0);
  let out = '';
  for (let i = 0; i <= weight; i++) {
    const d = i < ndigits ? b.readInt16BE(8 + 2 * i) : 0;
    out += i === 0 ? String(d) : String(d).padStart(4, '0');
  }
  return out === '' ? '0' : out;
}

test("fixed writes its value in text, the type's fixed value elsewhere; arrays get an empty array", () => {
  const cols: [string, number, number][] = [
    ['t', 25, 0],
    ['v', 1043, 1],
    ['j', 114, 0],
    ['arr', 1009, 0],
    ['arrb', 1007, 1],
    ['ts', 1184, 1],
    ['rec', 2249, 0],
  ];
  const m = new RowMasker({ plans: [plan(cols.map(() => mask('fixed', 'public.t.c', 'n/a')))], hashKey: KEY });
  m.rowDescription(rowDescription(cols));
  const out = values(
    m.dataRows(
      dataRow([
        Buffer.from('secret'),
        Buffer.from('secret'),
        Buffer.from('{"a":"secret"}'),
        Buffer.from('{secret}'),
        Buffer.concat([i32(1), i32(0), i32(23), i32(1), i32(1), i32(4), i32(5)]),
        Buffer.alloc(8, 7),
        Buffer.from('(secret,1)'),
      ]),
    ),
  );
  assert.deepEqual(out.slice(0, 4).map(String), ['n/a', 'n/a', '"n/a"', '{}']);
  assert.deepEqual(out[4], Buffer.concat([i32(0), i32(0), i32(23)]), 'array_send of an empty int4[]');
  const epoch = Buffer.alloc(8);
  epoch.writeBigInt64BE(BigInt(Date.UTC(1970, 0, 1) - Date.UTC(2000, 0, 1)) * 1000n);
  assert.deepEqual(out[5], epoch, 'timestamptz: 1970-01-01 in binary (µs before 2000-01-01)');
  assert.equal(out[6], null, 'a record has no fixed value: NULL');
});

test('detectors keep JSON valid, replace numbers and arrays whole, and never break a value of another type', () => {
  const detect = (detectors: ContentDetector[], strategy: MaskingStrategy): ColumnAction => ({
    kind: 'detect',
    detectors: detectors.map((detector) => ({ detector, strategy, keepLast: 4, value: '', rule: 'ns/p/d' })),
  });
  const cols: [string, number, number][] = [
    ['j', 114, 0],
    ['jb', 3802, 1],
    ['pem', 3802, 0],
    ['arr', 1016, 0],
    ['big', 20, 1],
    ['t', 25, 0],
  ];
  const action = detect(['credit-card', 'email', 'secret-key'], 'partial');
  const m = new RowMasker({ plans: [plan(cols.map(() => action))], hashKey: KEY });
  m.rowDescription(rowDescription(cols));
  const int8 = Buffer.alloc(8);
  int8.writeBigInt64BE(4111111111111111n);
  const out = values(
    m.dataRows(
      dataRow([
        Buffer.from('{"card": 4111111111111111, "mail": "a.b@example.com", "n": 5}'),
        Buffer.concat([Buffer.from([1]), Buffer.from('{"card": "4111 1111 1111 1111"}')]),
        Buffer.from('{"k": "-----BEGIN RSA PRIVATE KEY-----\\nMIIB", "after": 1}'),
        Buffer.from('{4111111111111111,5}'),
        int8,
        Buffer.from('mail a.b@example.com now'),
      ]),
    ),
  );
  assert.deepEqual(JSON.parse(String(out[0])), { card: '************1111', mail: '***********.com', n: 5 });
  assert.equal(out[1]?.[0], 1);
  assert.deepEqual(JSON.parse(String(present(out[1]).subarray(1))), { card: '***************1111' });
  const pem = JSON.parse(String(out[2])) as { k: string; after: number };
  assert.equal(pem.after, 1, 'a match that runs to the end of the text stays inside its JSON string');
  assert.ok(!pem.k.includes('BEGIN'), pem.k);
  assert.equal(String(out[3]), '{}', 'an int8[] in which a card number was found: an empty array');
  assert.deepEqual(out[4], Buffer.alloc(8), 'a binary int8 that is a card number: 0');
  assert.equal(String(out[5]), 'mail ***********.com now');
});

test('a type rule written with an alias (integer) covers the catalogue type (int4)', () => {
  const byType = mask('null', 'type integer');
  const m = new RowMasker({
    plans: [
      {
        kind: 'mask',
        columns: [PASS, PASS],
        fallback: PASS,
        typeRules: new Map([['integer', byType]]),
        detect: undefined,
        sensitive: false,
      },
    ],
    hashKey: KEY,
  });
  m.rowDescription(
    rowDescription([
      ['n', 23, 0],
      ['t', 25, 0],
    ]),
  );
  assert.deepEqual(values(m.dataRows(dataRow([Buffer.from('5'), Buffer.from('x')]))), [null, Buffer.from('x')]);
});

/** The masked text of `value` as the strategies define it, written the plain way. */
function expectedText(strategy: 'redact' | 'partial' | 'hash', value: string): string {
  if (strategy === 'redact') return '[MASKED]';
  if (strategy === 'hash') return `hmac:${createHmac('sha256', KEY).update(value).digest('hex').slice(0, 16)}`;
  const chars = Array.from(value); // code points, as the strategy counts them
  const keep = chars.length >= 8 ? 4 : 0;
  return '*'.repeat(chars.length - keep) + chars.slice(chars.length - keep).join('');
}

test('a run of DataRows is masked row by row into one buffer: NULLs, empty, non-ASCII, short rows, unmasked tail', () => {
  const cols: [string, number, number][] = [
    ['id', 23, 0],
    ['r', 25, 0],
    ['p', 1043, 0],
    ['h', 25, 1],
    ['n', 23, 0],
    ['tail', 25, 0],
  ];
  const plans = [plan([PASS, mask('redact'), mask('partial'), mask('hash'), mask('hash'), PASS])];
  const samples = [
    '',
    'a',
    'ada@example.com',
    '123456789',
    'Zoë Brontë-Ångström',
    '😀😀😀😀😀😀😀😀😀',
    'x'.repeat(300),
  ];
  const input: (string | null)[][] = [];
  for (let i = 0; i < 400; i++) {
    const s = (k: number): string | null => (i % 7 === k ? null : (samples[(i + k) % samples.length] ?? ''));
    input.push([
      String(i),
      s(1),
      s(2),
      s(3),
      i % 5 === 0 ? null : String(i * 7919),
      `tail ${String(i)} ${'t'.repeat(i % 40)}`,
    ]);
  }
  // Every few rows one narrower than the description (a server would not send it; the masker must not misread it).
  input[17] = ['17', 'secret'];
  const frame = (vals: (string | null)[]): Buffer => dataRow(vals.map((v) => (v === null ? null : Buffer.from(v))));
  const run = Buffer.concat(input.map(frame));

  const m = new RowMasker({ plans, hashKey: KEY });
  m.rowDescription(rowDescription(cols));
  const out = m.dataRows(run);

  const single = new RowMasker({ plans, hashKey: KEY });
  single.rowDescription(rowDescription(cols));
  assert.deepEqual(out, Buffer.concat(input.map((vals) => single.dataRows(frame(vals)))), 'the same as row by row');

  // Split the output back into rows and compare each value with what the strategy says.
  let at = 0;
  for (const vals of input) {
    const len = out.readInt32BE(at + 1);
    const got: (string | null)[] = values(out.subarray(at, at + 1 + len)).map((v) =>
      v === null ? null : v.toString(),
    );
    at += 1 + len;
    const want = vals.map((v, i) => {
      if (v === null) return null;
      switch (i) {
        case 1:
          return expectedText('redact', v);
        case 2:
          return expectedText('partial', v);
        case 3:
          return expectedText('hash', v);
        case 4:
          return null; // checked below: a hashed int4
        default:
          return v;
      }
    });
    if (vals[4] !== null && vals[4] !== undefined) {
      const n = Number(got[4]);
      assert.ok(Number.isInteger(n) && n >= 0 && String(n) !== vals[4], `int4 hashed: ${String(got[4])}`);
      got[4] = null;
    }
    assert.deepEqual(got, want, `row ${String(vals[0])}`);
  }
  assert.equal(at, out.length);
  const counted = Object.fromEntries(m.counts().map((c) => [c.column.split(' ')[0], c.count]));
  const nonNull = (k: number): number => input.filter((v) => v[k] !== null && v[k] !== undefined).length;
  assert.deepEqual(counted, { r: nonNull(1), p: nonNull(2), h: nonNull(3), n: nonNull(4) });
});

test('rows that grow past the first output slab, and values that grow their row (hashed integers)', () => {
  const m = new RowMasker({
    plans: [plan([mask('hash'), mask('fixed', 'public.t.c', 'n/a'.repeat(100))])],
    hashKey: KEY,
  });
  m.rowDescription(
    rowDescription([
      ['n', 23, 0],
      ['t', 25, 0],
    ]),
  );
  const rows = Array.from({ length: 3000 }, (_, i) => dataRow([Buffer.from(String(i % 10)), Buffer.from('s')]));
  const out = m.dataRows(Buffer.concat(rows));
  let at = 0;
  for (let i = 0; i < rows.length; i++) {
    const len = out.readInt32BE(at + 1);
    const [n, t] = values(out.subarray(at, at + 1 + len));
    assert.match(String(n), /^\d+$/);
    assert.equal(String(t), 'n/a'.repeat(100));
    at += 1 + len;
  }
  assert.equal(at, out.length);
  assert.ok(out.length > 3000 * 300, 'every row grew');
});

test('a malformed run is a protocol violation, not a misread', () => {
  const m = new RowMasker({ plans: [plan([mask('redact'), PASS])], hashKey: KEY });
  m.rowDescription(
    rowDescription([
      ['a', 25, 0],
      ['b', 25, 0],
    ]),
  );
  const good = dataRow([Buffer.from('secret'), Buffer.from('x')]);
  const valueTooLong = Buffer.from(good);
  valueTooLong.writeInt32BE(100, 7);
  const rowTooLong = Buffer.from(good);
  rowTooLong.writeInt32BE(good.length + 10, 1);
  for (const bad of [
    valueTooLong,
    rowTooLong,
    Buffer.concat([good, good.subarray(0, 6)]),
    Buffer.concat([good, msg('C', cstr('SELECT 1'))]),
  ]) {
    assert.throws(() => m.dataRows(bad), ProtocolViolation);
  }
});
