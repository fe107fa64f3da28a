import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { AuthCode, BackendCode } from './backend-messages.ts';
import {
  BackendScanner,
  decodeAuthentication,
  decodeBackendKeyData,
  commandCompleteRows,
  decodeCommandComplete,
  decodeCopyResponse,
  decodeDataRow,
  decodeErrorFields,
  decodeNegotiateProtocolVersion,
  decodeNotificationResponse,
  decodeParameterStatus,
  decodeReadyForQuery,
  decodeRowDescription,
  scanChunk,
  withNotifierPid,
  type BackendScannerOptions,
} from './backend-scanner.ts';
import { ProtocolViolation } from './protocol-violation.ts';
import { cstr, i16, i32, i8, msg, prng, u32 } from './test-wire.ts';

const field = (name: string, table: number, attr: number, type: number, size: number, fmt: number): Buffer =>
  Buffer.concat([cstr(name), u32(table), i16(attr), u32(type), i16(size), i32(-1), i16(fmt)]);
const row = (...values: (string | null)[]): Buffer =>
  msg(
    'D',
    i16(values.length),
    ...values.map((v) => (v === null ? i32(-1) : Buffer.concat([i32(Buffer.byteLength(v)), Buffer.from(v)]))),
  );

/** A realistic server → client stream, frame by frame. */
const frames: Buffer[] = [
  msg('R', i32(0)),
  msg('S', cstr('server_version'), cstr('15.8')),
  msg('K', i32(77), i32(12345)),
  msg('Z', Buffer.from('I')),
  msg('T', i16(2), field('id', 16384, 1, 23, 4, 0), field('ssn', 16384, 2, 25, -1, 0)),
  row('1', '123-45-6789'),
  row('2', null),
  row('3', 'secret'),
  msg('C', cstr('SELECT 3')),
  msg('N', i8(0x53), cstr('NOTICE'), i8(0x43), cstr('00000'), i8(0x4d), cstr('hi'), i8(0)),
  msg('A', i32(77), cstr('chan'), cstr('payload')),
  msg('1'),
  msg('2'),
  msg('n'),
  msg('s'),
  msg('H', i8(0), i16(1), i16(0)),
  msg('d', Buffer.from('x\n')),
  msg('c'),
  msg('C', cstr('COPY 1')),
  msg('E', i8(0x53), cstr('ERROR'), i8(0x43), cstr('57014'), i8(0x4d), cstr('canceling statement'), i8(0)),
  msg('Z', Buffer.from('E')),
];
const stream = Buffer.concat(frames);

interface ScanResult {
  readonly output: Buffer;
  readonly frames: string[];
}

function scan(chunks: Buffer[], options: BackendScannerOptions): ScanResult {
  const s = new BackendScanner(options);
  const out: Buffer[] = [];
  const seen: string[] = [];
  for (const c of chunks) {
    for (const b of scanChunk(s, c, (code, frame) => {
      assert.equal(frame[0], code);
      seen.push(frame.toString('hex'));
      return undefined;
    })) {
      out.push(Buffer.from(b));
    }
  }
  assert.ok(s.atFrameBoundary);
  return { output: Buffer.concat(out), frames: seen };
}

const interestSets: BackendCode[][] = [
  [],
  Object.values(BackendCode),
  [BackendCode.DataRow],
  [BackendCode.RowDescription, BackendCode.CommandComplete, BackendCode.ReadyForQuery, BackendCode.ErrorResponse],
  [BackendCode.Authentication, BackendCode.CopyData],
];

describe('BackendScanner', () => {
  for (const interest of interestSets) {
    const label = interest.map((c) => String.fromCharCode(c)).join('') || 'nothing';
    it(`with interest in ${label}: output equals input at every split point and byte by byte`, () => {
      const interesting = new Set<number>(interest);
      const expectedFrames = frames.filter((f) => interesting.has(f[0] ?? 0)).map((f) => f.toString('hex'));
      const check = (chunks: Buffer[], what: string): void => {
        const r = scan(chunks, { interest });
        assert.deepEqual(r.output, stream, what);
        assert.deepEqual(r.frames, expectedFrames, what);
      };
      check([stream], 'whole');
      for (let i = 0; i <= stream.length; i++) check([stream.subarray(0, i), stream.subarray(i)], `split at ${i}`);
      check(
        [...stream].map((b) => Buffer.from([b])),
        'byte by byte',
      );
    });
  }

  it('random multi-way splits agree (seeded)', () => {
    const rand = prng(42);
    for (let iter = 0; iter < 500; iter++) {
      const chunks: Buffer[] = [];
      for (let pos = 0; pos < stream.length;) {
        const n = 1 + Math.floor(rand() * 40);
        chunks.push(stream.subarray(pos, pos + n));
        pos += n;
      }
      const interest = interestSets[iter % interestSets.length] ?? [];
      assert.deepEqual(scan(chunks, { interest }).output, stream);
    }
  });

  it('coalesces uninteresting frames into one raw view of the chunk', () => {
    const s = new BackendScanner({ interest: [BackendCode.ReadyForQuery] });
    s.push(stream);
    const first = s.next();
    assert.ok(first?.kind === 'raw');
    assert.equal(first.bytes.buffer, stream.buffer, 'a view, not a copy');
    assert.equal(
      first.bytes.length,
      frames.slice(0, 3).reduce((n, f) => n + f.length, 0),
    );
    const z = s.next();
    assert.ok(z?.kind === 'frame' && z.code === BackendCode.ReadyForQuery);
    assert.equal(decodeReadyForQuery(z.frame), 'I');
  });

  it('replaces one DataRow; every other byte is the original', () => {
    const masked = row('3', '******');
    for (let i = 0; i <= stream.length; i += 7) {
      const s = new BackendScanner({ interest: [BackendCode.DataRow] });
      const out: Buffer[] = [];
      for (const chunk of [stream.subarray(0, i), stream.subarray(i)]) {
        out.push(
          ...scanChunk(s, chunk, (_code, frame) => {
            const values = decodeDataRow(frame);
            return values[1]?.toString() === 'secret' ? masked : undefined;
          }),
        );
      }
      const expected = Buffer.concat(frames.map((f) => (f.equals(row('3', 'secret')) ? masked : f)));
      assert.deepEqual(Buffer.concat(out), expected, `split at ${i}`);
      assert.notDeepEqual(expected, stream);
    }
  });

  it('streams a large uninteresting DataRow without buffering it', () => {
    const big = msg('D', i16(1), i32(1 << 20), Buffer.alloc(1 << 20, 0x61));
    const s = new BackendScanner({ interest: [BackendCode.ReadyForQuery], maxBufferedFrameLength: 1024 });
    let forwarded = 0;
    for (let pos = 0; pos < big.length; pos += 65536) {
      const chunk = big.subarray(pos, pos + 65536);
      s.push(chunk);
      const seg = s.next();
      assert.ok(seg?.kind === 'raw');
      assert.equal(seg.bytes.length, chunk.length, 'forwarded as soon as it arrives');
      forwarded += seg.bytes.length;
      assert.equal(s.next(), null);
    }
    assert.equal(forwarded, big.length);
    s.push(msg('Z', Buffer.from('I')));
    assert.equal(s.next()?.kind, 'frame');
  });

  it('rejects an interesting frame over the buffering limit, from its header', () => {
    const s = new BackendScanner({ interest: [BackendCode.DataRow], maxBufferedFrameLength: 1024 });
    s.push(Buffer.concat([Buffer.from('D'), i32(1025)]));
    assert.throws(() => s.next(), /exceeds the 1024-byte buffering limit/);
    assert.throws(() => s.next(), ProtocolViolation, 'unusable after an error');
  });

  it('rejects unknown type bytes and short lengths', () => {
    const bad = (bytes: Buffer, re: RegExp, interest: BackendCode[] = []): void => {
      const s = new BackendScanner({ interest });
      s.push(bytes);
      assert.throws(
        () => {
          while (s.next() !== null);
        },
        (e: unknown) => e instanceof ProtocolViolation && re.test(e.message),
      );
    };
    bad(Buffer.from('Q'), /invalid backend message type Q/);
    bad(Buffer.concat([msg('Z', Buffer.from('I')), Buffer.from([0xff])]), /invalid backend message type 0xff/);
    bad(Buffer.concat([Buffer.from('D'), i32(3)]), /invalid backend message length 3/);
    bad(Buffer.concat([Buffer.from('D'), i32(-5)]), /invalid backend message length -5/, [BackendCode.DataRow]);
  });

  it('applies an interest change at the next frame, even when a header straddles chunks', () => {
    const s = new BackendScanner({ interest: [] });
    const z = msg('Z', Buffer.from('I'));
    s.push(z.subarray(0, 2));
    const first = s.next();
    assert.ok(first?.kind === 'raw' && first.bytes.length === 2);
    s.setInterested(BackendCode.ReadyForQuery, true);
    const out = scanChunk(s, Buffer.concat([z.subarray(2), z]), () => undefined);
    assert.deepEqual(Buffer.concat([first.bytes, ...out]), Buffer.concat([z, z]));
    assert.ok(s.isInterested(BackendCode.ReadyForQuery));
  });

  it('dataRowRuns: whole DataRows in a row come back as one segment, at every split point', () => {
    const rows = [row('1', 'a'), row('2', null), row('3', 'ccc'), row('4', 'dddd'), row('5', '')];
    const input = Buffer.concat([frames[4] as Buffer, ...rows, msg('C', cstr('SELECT 5')), ...rows.slice(0, 2)]);
    const dataRows = (segmentFrames: Buffer[]): Buffer[] => {
      // Split each DataRow segment back into frames by their length words.
      const out: Buffer[] = [];
      for (const f of segmentFrames) {
        for (let at = 0; at < f.length; at += 1 + f.readInt32BE(at + 1)) {
          assert.equal(f[at], BackendCode.DataRow);
          out.push(f.subarray(at, at + 1 + f.readInt32BE(at + 1)));
        }
      }
      return out;
    };
    const interest = [BackendCode.DataRow, BackendCode.CommandComplete, BackendCode.RowDescription];
    for (let i = 0; i <= input.length; i++) {
      const s = new BackendScanner({ interest, dataRowRuns: true });
      const out: Buffer[] = [];
      const rowSegments: Buffer[] = [];
      for (const chunk of [input.subarray(0, i), input.subarray(i)]) {
        for (const b of scanChunk(s, chunk, (code, frame) => {
          if (code === BackendCode.DataRow) rowSegments.push(Buffer.from(frame));
          else assert.equal(frame.readInt32BE(1), frame.length - 1, 'other frames stay one per segment');
          return undefined;
        })) {
          out.push(Buffer.from(b));
        }
      }
      assert.deepEqual(Buffer.concat(out), input, `split at ${i}`);
      assert.deepEqual(dataRows(rowSegments), [...rows, ...rows.slice(0, 2)], `split at ${i}`);
      if (i === 0) assert.equal(rowSegments.length, 2, 'one segment per run when the chunk holds it whole');
    }
  });

  it('dataRowRuns: a bad length inside a run is found like any other', () => {
    for (const len of [3, 2048]) {
      const s = new BackendScanner({
        interest: [BackendCode.DataRow],
        dataRowRuns: true,
        maxBufferedFrameLength: 1024,
      });
      s.push(Buffer.concat([row('1', 'a'), Buffer.from('D'), i32(len), Buffer.alloc(8)]));
      const first = s.next();
      assert.ok(first?.kind === 'frame');
      assert.deepEqual(first.frame, row('1', 'a'), 'the run ends before the bad frame');
      assert.throws(() => s.next(), ProtocolViolation);
    }
  });

  it('hands back unread bytes at a frame boundary', () => {
    const s = new BackendScanner({ interest: [BackendCode.ReadyForQuery] });
    s.push(Buffer.concat([msg('Z', Buffer.from('I')), msg('S', cstr('a'), cstr('b'))]));
    assert.equal(s.next()?.kind, 'frame');
    assert.deepEqual(s.detachRemainder(), msg('S', cstr('a'), cstr('b')));
    assert.equal(s.next(), null);
  });
});

describe('backend frame decoders', () => {
  it('agree with pg-protocol on RowDescription and DataRow', () => {
    const t = frames[4] ?? Buffer.alloc(0);
    const fields = decodeRowDescription(t);
    assert.deepEqual(fields, [
      { name: 'id', tableOid: 16384, columnAttr: 1, typeOid: 23, typeSize: 4, typeModifier: -1, format: 0 },
      { name: 'ssn', tableOid: 16384, columnAttr: 2, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 },
    ]);
    const parsed: BackendMessage[] = [];
    new Parser().parse(Buffer.concat([t, frames[5] ?? Buffer.alloc(0), frames[6] ?? Buffer.alloc(0)]), (m) => {
      parsed.push(m);
    });
    const pgFields = (parsed[0] as unknown as { fields: { name: string; dataTypeID: number; tableID: number }[] })
      .fields;
    assert.deepEqual(
      pgFields.map((f) => [f.name, f.tableID, f.dataTypeID]),
      fields.map((f) => [f.name, f.tableOid, f.typeOid]),
    );
    for (const [i, frame] of [frames[5], frames[6]].entries()) {
      const ours = decodeDataRow(frame ?? Buffer.alloc(0)).map((v) => (v === null ? null : v.toString()));
      assert.deepEqual(ours, (parsed[i + 1] as unknown as { fields: (string | null)[] }).fields);
    }
  });

  it('decode CommandComplete tags and row counts', () => {
    const cc = (tag: string): unknown => decodeCommandComplete(msg('C', cstr(tag)));
    assert.deepEqual(cc('SELECT 3'), { tag: 'SELECT 3', command: 'SELECT', rows: 3 });
    assert.deepEqual(cc('INSERT 0 5'), { tag: 'INSERT 0 5', command: 'INSERT', rows: 5 });
    assert.deepEqual(cc('UPDATE 0'), { tag: 'UPDATE 0', command: 'UPDATE', rows: 0 });
    assert.deepEqual(cc('CREATE TABLE'), { tag: 'CREATE TABLE', command: 'CREATE TABLE', rows: null });
    assert.deepEqual(cc('BEGIN'), { tag: 'BEGIN', command: 'BEGIN', rows: null });
  });

  it('read a CommandComplete row count from the bytes as decodeCommandComplete does', () => {
    const tags = [
      'SELECT 3',
      'INSERT 0 5',
      'UPDATE 0',
      'DELETE 12345678901234567890',
      'MERGE 7',
      'FETCH 2',
      'MOVE 1',
      'COPY 100',
      'CREATE TABLE',
      'BEGIN',
      '',
      'SELECT',
      'SELECT ',
      'SELECT  4',
      'SELECT 4 ',
      'SELECT x4',
      'SELECT -4',
      'SELECTED 4',
      'select 4',
      'INSERT 0 1e3',
      'SELECT 0004',
      'ÜPDATE 3',
      'UPDATE ３',
    ];
    const random = (n: number) => {
      const alphabet = ['SELECT', 'INSERT', ' ', '0', '9', '5', 'x', 'DELETE', '\u00e9', '-'];
      let t = '';
      for (let i = 0; i < n; i++) t += alphabet[Math.floor(Math.random() * alphabet.length)] ?? '';
      return t;
    };
    for (let i = 0; i < 2000; i++) tags.push(random(1 + (i % 7)));
    for (const tag of tags) {
      const frame = msg('C', cstr(tag));
      assert.equal(commandCompleteRows(frame), decodeCommandComplete(frame).rows, JSON.stringify(tag));
    }
    // Malformed frames are refused as the full decoder refuses them.
    assert.throws(() => commandCompleteRows(msg('C', Buffer.from('SELECT 1'))), /missing its NUL/);
    assert.throws(() => commandCompleteRows(msg('C', cstr('SELECT 1'), cstr('x'))), /trailing byte/);
    assert.throws(() => commandCompleteRows(msg('Z', i8(0x49))), /expected C/);
  });

  it('decode errors, notices, status, parameters, keys, notifications, COPY and auth', () => {
    assert.deepEqual(decodeErrorFields(frames[19] ?? Buffer.alloc(0)), {
      severity: 'ERROR',
      code: '57014',
      message: 'canceling statement',
    });
    assert.deepEqual(
      decodeErrorFields(
        msg(
          'N',
          i8(0x53),
          cstr('WARNING'),
          i8(0x56),
          cstr('WARNING'),
          i8(0x43),
          cstr('01000'),
          i8(0x4d),
          cstr('m'),
          i8(0x44),
          cstr('d'),
          i8(0x74),
          cstr('tbl'),
          i8(0x5a),
          cstr('future'),
          i8(0),
        ),
      ),
      {
        severity: 'WARNING',
        severityNonLocalized: 'WARNING',
        code: '01000',
        message: 'm',
        detail: 'd',
        table: 'tbl',
        extra: { Z: 'future' },
      },
    );
    assert.equal(decodeReadyForQuery(msg('Z', Buffer.from('T'))), 'T');
    assert.throws(() => decodeReadyForQuery(msg('Z', Buffer.from('X'))), ProtocolViolation);
    assert.deepEqual(decodeParameterStatus(frames[1] ?? Buffer.alloc(0)), { name: 'server_version', value: '15.8' });
    const key = decodeBackendKeyData(frames[2] ?? Buffer.alloc(0));
    assert.equal(key.processId, 77);
    assert.deepEqual(key.secretKey, i32(12345));
    assert.throws(() => decodeBackendKeyData(msg('K', i32(1), i16(1))), /cancel key of 2 bytes/);
    assert.deepEqual(decodeNotificationResponse(frames[10] ?? Buffer.alloc(0)), {
      processId: 77,
      channel: 'chan',
      payload: 'payload',
    });
    assert.deepEqual(decodeCopyResponse(frames[15] ?? Buffer.alloc(0)), {
      direction: 'out',
      format: 0,
      columnFormats: [0],
    });
    assert.deepEqual(decodeCopyResponse(msg('G', i8(1), i16(2), i16(1), i16(1))), {
      direction: 'in',
      format: 1,
      columnFormats: [1, 1],
    });
    assert.deepEqual(decodeAuthentication(msg('R', i32(0))), { code: AuthCode.Ok });
    assert.deepEqual(decodeAuthentication(msg('R', i32(5), Buffer.from([1, 2, 3, 4]))), {
      code: AuthCode.MD5Password,
      salt: Buffer.from([1, 2, 3, 4]),
    });
    assert.deepEqual(decodeAuthentication(msg('R', i32(10), cstr('SCRAM-SHA-256'), i8(0))), {
      code: AuthCode.SASL,
      mechanisms: ['SCRAM-SHA-256'],
    });
    assert.throws(() => decodeAuthentication(msg('R', i32(99))), /unknown request code 99/);
    // As PostgreSQL sends it: the whole version code (3.0 = 0x00030000).
    assert.deepEqual(decodeNegotiateProtocolVersion(msg('v', i32(0x00030000), i32(1), cstr('_pq_.x'))), {
      newestMinorVersion: 0,
      unrecognizedOptions: ['_pq_.x'],
    });
    assert.throws(() => decodeNegotiateProtocolVersion(msg('v', i32(0), i32(0))), /other than 3\.x/);
  });

  it('reject malformed frames', () => {
    assert.throws(() => decodeDataRow(msg('T', i16(0))), /expected D/);
    assert.throws(() => decodeDataRow(msg('D', i16(2), i32(1), Buffer.from('a'))), /columns extends past/);
    assert.throws(() => decodeDataRow(msg('D', i16(1), i32(5), Buffer.from('a'))), /column 1 extends past/);
    assert.throws(() => decodeDataRow(msg('D', i16(-1))), /negative column count/);
    assert.throws(() => decodeDataRow(Buffer.concat([Buffer.from('D'), i32(99), i16(0)])), /length field mismatch/);
    assert.throws(() => decodeRowDescription(msg('T', i16(1), cstr('x'))), /past the end/);
    assert.throws(() => decodeRowDescription(msg('T', i16(1000))), /fields extends past/);
    assert.throws(() => decodeErrorFields(msg('E', i8(0x53), Buffer.from('ERROR'))), /missing its NUL/);
    assert.throws(() => decodeCommandComplete(msg('C', Buffer.from('SELECT 1'))), /missing its NUL/);
  });

  it('give a notification of the own backend of the session the pid the client knows, in a copy', () => {
    const frame = msg('A', i32(4242), cstr('chan'), cstr('payload'));
    const rewritten = withNotifierPid(frame, 4242, 7);
    assert.deepEqual(rewritten, msg('A', i32(7), cstr('chan'), cstr('payload')));
    assert.equal(frame.readInt32BE(5), 4242, 'the scanned frame is left as it was');
    const other = msg('A', i32(99), cstr('chan'), cstr(''));
    assert.equal(withNotifierPid(other, 4242, 7), other, 'another backend keeps its pid');
    const status = msg('S', cstr('a'), cstr('b'));
    assert.equal(withNotifierPid(status, status.readInt32BE(5), 7), status, 'only NotificationResponse');
  });
});
