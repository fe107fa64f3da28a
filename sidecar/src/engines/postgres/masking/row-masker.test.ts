// The row masker on hand-built frames (test-wire.ts): masked values stay valid for their type in text and
// binary format, untouched columns keep their bytes, errors of masked statements lose their text, and the
// counts name column, rule and strategy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ColumnAction, ResultPlan } from '../../../core/masking/result-plan.ts';
import { PASS } from '../../../core/masking/result-plan.ts';
import { cstr, i16, i32, msg, u32 } from '../protocol/test-wire.ts';
import { RowMasker } from './row-masker.ts';

const KEY = Buffer.alloc(32, 1);
const mask = (strategy: 'redact' | 'hash' | 'partial' | 'null', source = 'public.t.c'): ColumnAction => ({
  kind: 'mask',
  strategy,
  keepLast: 4,
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
    m.dataRow(
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
  const a = values(m.dataRow(dataRow([Buffer.from('ada@example.com'), Buffer.from('4111111111111111')])));
  const b = values(m.dataRow(dataRow([Buffer.from('ada@example.com'), null])));
  assert.match(String(a[0]), /^hmac:[0-9a-f]{16}$/);
  assert.deepEqual(a[0], b[0]);
  assert.equal(String(a[1]), '************1111');
  assert.equal(b[1], null, 'NULL stays NULL');
  m.statementEnd();
  m.rowDescription(rowDescription([['e', 25, 0]]));
  const row = dataRow([Buffer.from('ada@example.com')]);
  assert.equal(m.dataRow(row), row, 'the second statement passes its rows as they are');
});

test('a result wider or narrower than the lineage said takes the fallback in every column', () => {
  const m = new RowMasker({ plans: [plan([PASS])], hashKey: KEY });
  m.rowDescription(
    rowDescription([
      ['a', 25, 0],
      ['b', 25, 0],
    ]),
  );
  assert.deepEqual(values(m.dataRow(dataRow([Buffer.from('x'), Buffer.from('y')]))).map(String), [
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
