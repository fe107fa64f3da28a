import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FrontendDecoder, type FrontendDecoderOptions } from './frontend-decoder.ts';
import {
  protocolNegotiation,
  readPasswordString,
  readSaslInitialResponse,
  readSaslResponse,
  type FrontendMessage,
  type PasswordMessage,
  type StartupMessage,
} from './frontend-messages.ts';
import { ProtocolViolation, UnsupportedProtocolVersion } from './protocol-violation.ts';
import { cstr, i16, i32, i8, msg, packet, prng, u32 } from './test-wire.ts';

/** Turns messages into plain data (Buffers as hex, Maps as entry lists) for deep comparison. */
function plain(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return `hex:${value.toString('hex')}`;
  if (value instanceof Map) return [...(value as Map<unknown, unknown>).entries()].map(([k, v]) => [k, plain(v)]);
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Feeds `chunks` one by one, draining after each; copies results so views cannot go stale. */
function decodeChunks(chunks: Buffer[], options?: FrontendDecoderOptions): unknown[] {
  const d = new FrontendDecoder(options);
  const out: unknown[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let m = d.next(); m !== null; m = d.next()) out.push(plain(m));
  }
  assert.equal(d.bufferedBytes, 0, 'all bytes consumed');
  return out;
}

function splitAt(bytes: Buffer, ...points: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  out.push(bytes.subarray(prev));
  return out;
}

function byteByByte(bytes: Buffer): Buffer[] {
  return [...bytes].map((b) => Buffer.from([b]));
}

/** Asserts that every single split point, every byte-by-byte feed, and a one-shot feed agree. */
function assertSplitInvariant(bytes: Buffer, options?: FrontendDecoderOptions): unknown[] {
  const whole = decodeChunks([bytes], options);
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(decodeChunks(splitAt(bytes, i), options), whole, `split at ${i}`);
  }
  assert.deepEqual(decodeChunks(byteByByte(bytes), options), whole, 'byte by byte');
  return whole;
}

function expectViolation(chunks: Buffer[], pattern: RegExp, options?: FrontendDecoderOptions): void {
  const d = new FrontendDecoder(options);
  assert.throws(
    () => {
      for (const c of chunks) {
        d.push(c);
        while (d.next() !== null);
      }
    },
    (err: unknown) => err instanceof ProtocolViolation && pattern.test(err.message),
  );
  assert.equal(d.phase, 'failed');
  assert.throws(() => d.next(), ProtocolViolation, 'decoder stays unusable');
  assert.throws(() => {
    d.push(Buffer.from([0x53, 0, 0, 0, 4]));
  }, ProtocolViolation);
}

const startup = packet(
  i32(196608),
  cstr('user'),
  cstr('alice'),
  cstr('database'),
  cstr('shop'),
  cstr('application_name'),
  cstr('psql ✓'),
  i8(0),
);

const regular: Buffer[] = [
  msg('p', cstr('s3cret')),
  msg('Q', cstr('SELECT 1; SELECT 2')),
  msg('P', cstr('stmt1'), cstr('SELECT $1::int, $2'), i16(2), u32(23), u32(0xfffffff0)),
  msg(
    'B',
    cstr('portal1'),
    cstr('stmt1'),
    i16(1),
    i16(1),
    i16(3),
    i32(4),
    i32(42),
    i32(-1),
    i32(0),
    i16(2),
    i16(0),
    i16(1),
  ),
  msg('D', i8(0x53), cstr('stmt1')),
  msg('D', i8(0x50), cstr('')),
  msg('E', cstr('portal1'), i32(100)),
  msg('H'),
  msg('S'),
  msg('C', i8(0x53), cstr('stmt1')),
  msg('C', i8(0x50), cstr('portal1')),
  msg('d', Buffer.from('1\tone\n')),
  msg('d'),
  msg('c'),
  msg('f', cstr('client gave up')),
  msg('F', u32(1598), i16(0), i16(0), i16(0)),
  msg('X'),
];

const expectedRegular = [
  { type: 'PasswordMessage', payload: cstr('s3cret') },
  { type: 'Query', query: 'SELECT 1; SELECT 2' },
  { type: 'Parse', name: 'stmt1', query: 'SELECT $1::int, $2', paramTypes: [23, 0xfffffff0] },
  {
    type: 'Bind',
    portal: 'portal1',
    statement: 'stmt1',
    paramFormats: [1],
    params: [i32(42), null, Buffer.alloc(0)],
    resultFormats: [0, 1],
  },
  { type: 'Describe', kind: 'S', name: 'stmt1' },
  { type: 'Describe', kind: 'P', name: '' },
  { type: 'Execute', portal: 'portal1', maxRows: 100 },
  { type: 'Flush' },
  { type: 'Sync' },
  { type: 'Close', kind: 'S', name: 'stmt1' },
  { type: 'Close', kind: 'P', name: 'portal1' },
  { type: 'CopyData', data: Buffer.from('1\tone\n') },
  { type: 'CopyData', data: Buffer.alloc(0) },
  { type: 'CopyDone' },
  { type: 'CopyFail', message: 'client gave up' },
  { type: 'FunctionCall', functionOid: 1598, payload: Buffer.concat([i16(0), i16(0), i16(0)]) },
  { type: 'Terminate' },
];

describe('FrontendDecoder', () => {
  it('decodes a StartupMessage and every regular message type, identically at every split point', () => {
    const stream = Buffer.concat([startup, ...regular]);
    const got = assertSplitInvariant(stream);
    const frames = [startup, ...regular];
    const expected = [
      {
        type: 'StartupMessage',
        protocolVersion: 196608,
        majorVersion: 3,
        minorVersion: 0,
        parameters: new Map([
          ['user', 'alice'],
          ['database', 'shop'],
          ['application_name', 'psql ✓'],
        ]),
        protocolOptions: new Map(),
      },
      ...expectedRegular,
    ].map((m, i) => plain({ ...m, frame: frames[i] }));
    // Keys are compared regardless of order.
    assert.deepEqual(
      got.map((m) => sortKeys(m)),
      expected.map((m) => sortKeys(m)),
    );
  });

  it('decodes two-way splits of a short stream', () => {
    const stream = Buffer.concat([regular[2] ?? Buffer.alloc(0), regular[3] ?? Buffer.alloc(0), msg('S')]);
    const whole = decodeChunks([stream], { initialPhase: 'regular' });
    assert.equal(whole.length, 3);
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        assert.deepEqual(decodeChunks(splitAt(stream, i, j), { initialPhase: 'regular' }), whole, `split ${i},${j}`);
      }
    }
  });

  it('returns zero-copy views for frames inside one chunk', () => {
    const chunk = Buffer.concat([msg('Q', cstr('SELECT 1')), msg('d', Buffer.from('abc'))]);
    const d = new FrontendDecoder({ initialPhase: 'regular' });
    const [q, c] = d.decode(chunk);
    assert.ok(q !== undefined && c !== undefined && c.type === 'CopyData');
    assert.equal(q.frame.buffer, chunk.buffer);
    assert.equal(c.data.buffer, chunk.buffer);
    assert.equal(c.data.byteOffset, chunk.byteOffset + 14 + 5);
  });

  it('decodes SSLRequest, GSSENCRequest and CancelRequest packets', () => {
    assert.deepEqual(assertSplitInvariant(packet(i32(80877103))), [
      plain({ type: 'SSLRequest', frame: packet(i32(80877103)) }),
    ]);
    assert.deepEqual(assertSplitInvariant(packet(i32(80877104))), [
      plain({ type: 'GSSENCRequest', frame: packet(i32(80877104)) }),
    ]);
    const cancel = packet(i32(80877102), i32(4242), Buffer.from([1, 2, 3, 4]));
    assert.deepEqual(assertSplitInvariant(cancel), [
      plain({ type: 'CancelRequest', frame: cancel, processId: 4242, secretKey: Buffer.from([1, 2, 3, 4]) }),
    ]);
    const longKey = Buffer.alloc(32, 7);
    const cancel32 = packet(i32(80877102), i32(9), longKey);
    assert.deepEqual(decodeChunks([cancel32]), [
      plain({ type: 'CancelRequest', frame: cancel32, processId: 9, secretKey: longKey }),
    ]);
  });

  it('continues with the StartupMessage after SSLRequest and GSSENCRequest were answered', () => {
    const d = new FrontendDecoder();
    assert.equal(d.decode(packet(i32(80877104)))[0]?.type, 'GSSENCRequest');
    assert.equal(d.decode(packet(i32(80877103)))[0]?.type, 'SSLRequest');
    assert.equal(d.phase, 'startup');
    const [m] = d.decode(Buffer.concat([startup, msg('p', cstr('pw'))]).subarray(0, startup.length + 3));
    assert.equal(m?.type, 'StartupMessage');
    assert.equal(d.phase, 'regular');
    assert.equal(d.bufferedBytes, 3);
  });

  it('accepts protocol 3.2 and reports that it must be negotiated down, with _pq_ options', () => {
    const p = packet(i32(196610), cstr('user'), cstr('bob'), cstr('_pq_.something'), cstr('on'), i8(0));
    const [m] = decodeChunks([p]) as [{ minorVersion: number }];
    assert.equal(m.minorVersion, 2);
    const d = new FrontendDecoder();
    const [s] = d.decode(p) as [StartupMessage];
    assert.deepEqual([...s.parameters], [['user', 'bob']]);
    assert.deepEqual([...s.protocolOptions], [['_pq_.something', 'on']]);
    assert.deepEqual(protocolNegotiation(s), { newestMinorVersion: 0, unrecognizedOptions: ['_pq_.something'] });
    assert.deepEqual(protocolNegotiation(s, 2, new Set(['_pq_.something'])), null);
    const [plain30] = new FrontendDecoder().decode(startup) as [StartupMessage];
    assert.equal(protocolNegotiation(plain30), null);
  });

  it('reads PasswordMessage payloads as password, SASLInitialResponse or SASLResponse', () => {
    const d = new FrontendDecoder({ initialPhase: 'regular' });
    const [pw, sasl, saslNull, resp] = d.decode(
      Buffer.concat([
        msg('p', cstr('md5abc')),
        msg('p', cstr('SCRAM-SHA-256'), i32(5), Buffer.from('n,,xy')),
        msg('p', cstr('SCRAM-SHA-256'), i32(-1)),
        msg('p', Buffer.from('c=biws,r=x,p=y')),
      ]),
    ) as PasswordMessage[];
    assert.ok(pw && sasl && saslNull && resp);
    assert.equal(readPasswordString(pw), 'md5abc');
    const init = readSaslInitialResponse(sasl);
    assert.equal(init.mechanism, 'SCRAM-SHA-256');
    assert.equal(init.data?.toString(), 'n,,xy');
    assert.equal(readSaslInitialResponse(saslNull).data, null);
    assert.equal(readSaslResponse(resp).toString(), 'c=biws,r=x,p=y');
    assert.throws(() => readPasswordString(sasl), /trailing/);
    assert.throws(() => readSaslInitialResponse(resp), ProtocolViolation);
    const [bad] = new FrontendDecoder({ initialPhase: 'regular' }).decode(
      msg('p', cstr('SCRAM-SHA-256'), i32(50), Buffer.from('short')),
    ) as PasswordMessage[];
    assert.ok(bad);
    assert.throws(() => readSaslInitialResponse(bad), /past the end/);
    const [noNul] = new FrontendDecoder({ initialPhase: 'regular' }).decode(
      msg('p', Buffer.from('pw')),
    ) as PasswordMessage[];
    assert.ok(noNul);
    assert.throws(() => readPasswordString(noNul), /NUL/);
  });

  it('returns null on truncated input and keeps waiting', () => {
    const d = new FrontendDecoder({ initialPhase: 'regular' });
    const q = msg('Q', cstr('SELECT 1'));
    d.push(q.subarray(0, q.length - 1));
    assert.equal(d.next(), null);
    assert.equal(d.bufferedBytes, q.length - 1);
    d.push(q.subarray(q.length - 1));
    assert.equal((d.next() as FrontendMessage).type, 'Query');
  });

  it('keeps undrained bytes when pushed again before draining', () => {
    const d = new FrontendDecoder({ initialPhase: 'regular' });
    d.push(Buffer.concat([msg('S'), msg('H')]));
    assert.equal(d.next()?.type, 'Sync');
    d.push(msg('X'));
    assert.deepEqual([d.next()?.type, d.next()?.type, d.next()], ['Flush', 'Terminate', null]);
  });

  describe('rejects malformed input with ProtocolViolation', () => {
    const r = (...chunks: Buffer[]): Buffer[] => chunks;
    it('startup packet lengths out of range', () => {
      expectViolation(r(i32(7), i32(0)), /invalid startup packet length 7/);
      expectViolation(r(i32(10001)), /invalid startup packet length 10001/);
      expectViolation(r(i32(-8)), /invalid startup packet length -8/);
      expectViolation(r(Buffer.from('GET / HTTP/1.1\r\n')), /invalid startup packet length/);
      // A TLS ClientHello sent directly (without SSLRequest) is garbage to the startup decoder.
      expectViolation(r(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])), /invalid startup packet length/);
    });
    it('garbage startup packets', () => {
      expectViolation(r(packet(i32(131072), cstr('user'), cstr('x'), i8(0))), /unsupported frontend protocol 2\.0/);
      expectViolation(r(packet(i32(1234), i32(0))), /unsupported frontend protocol 0\.1234/);
      expectViolation(r(packet(i32(196608), cstr('user'), cstr('x'))), /NUL terminator/);
      expectViolation(r(packet(i32(196608), cstr('user'), Buffer.from('x'))), /NUL terminator/);
      expectViolation(r(packet(i32(196608), cstr('user'), cstr('x'), i8(0), i8(0))), /trailing/);
      expectViolation(r(packet(i32(196608), cstr('user'), cstr('a'), cstr('user'), cstr('b'), i8(0))), /duplicate/);
      expectViolation(r(packet(i32(80877103), i32(0))), /SSLRequest has length 12/);
      expectViolation(r(packet(i32(80877102), i32(1))), /CancelRequest has length 12/);
      expectViolation(r(packet(i32(80877102), i32(1), Buffer.alloc(257))), /CancelRequest has length 269/);
    });
    it('bytes after SSLRequest, a repeated SSLRequest, data after CancelRequest', () => {
      expectViolation(r(Buffer.concat([packet(i32(80877103)), startup])), /unencrypted data after SSLRequest/);
      expectViolation(r(Buffer.concat([packet(i32(80877104)), i8(0)])), /unencrypted data after GSSENCRequest/);
      expectViolation(r(packet(i32(80877103)), packet(i32(80877103))), /SSLRequest sent twice/);
      // PostgreSQL answers these as a protocol it does not support (0A000), not as a violation (08P01): the
      // connection answers an UnsupportedProtocolVersion with the catalogue's UnsupportedProtocol.
      for (const frames of [
        [packet(i32(80877103)), packet(i32(80877103))],
        [packet(i32(80877104)), packet(i32(80877104))],
        [packet(i32(131072), cstr('user'), cstr('x'), i8(0))],
        [packet(i32(262144), cstr('user'), cstr('x'), i8(0))],
      ]) {
        const d = new FrontendDecoder();
        assert.throws(
          () => {
            for (const f of frames) {
              d.push(f);
              while (d.next() !== null);
            }
          },
          (err: unknown) => err instanceof UnsupportedProtocolVersion,
        );
      }
      expectViolation(r(Buffer.concat([packet(i32(80877102), i32(1), i32(2)), i8(0)])), /after CancelRequest/);
    });
    const reg: FrontendDecoderOptions = { initialPhase: 'regular' };
    it('bad regular lengths, including lengths over 1 GiB, before any body arrives', () => {
      expectViolation(r(Buffer.concat([Buffer.from('Q'), i32(3)])), /length 3 \(less than 4\)/, reg);
      expectViolation(r(Buffer.concat([Buffer.from('Q'), i32(-1)])), /negative/, reg);
      expectViolation(r(Buffer.concat([Buffer.from('Q'), u32(0x80000000)])), /negative/, reg);
      expectViolation(r(Buffer.concat([Buffer.from('d'), i32(0x40000001)])), /exceeds the limit of 67108864/, reg);
      expectViolation(r(Buffer.concat([Buffer.from('d'), i32(1025)])), /exceeds the limit of 1024/, {
        ...reg,
        maxMessageLength: 1024,
      });
      assert.throws(() => new FrontendDecoder({ maxMessageLength: 2 ** 31 }), RangeError);
    });
    it('unknown type bytes, from the first byte', () => {
      expectViolation(r(Buffer.from('Z')), /invalid frontend message type 0x5a/, reg);
      expectViolation(r(Buffer.from([0])), /invalid frontend message type 0x00/, reg);
      expectViolation(r(msg('S'), msg('T')), /0x54/, reg);
    });
    it('missing NUL terminators and counts beyond the body', () => {
      expectViolation(r(msg('Q', Buffer.from('SELECT 1'))), /Query: query string is missing its NUL/, reg);
      expectViolation(r(msg('Q', cstr('SELECT 1'), i8(1))), /trailing/, reg);
      expectViolation(r(msg('P', cstr('s'), Buffer.from('SELECT'))), /Parse: query string is missing/, reg);
      expectViolation(r(msg('P', cstr('s'), cstr('SELECT'), i16(-1))), /Parse: parameter types extends past/, reg);
      expectViolation(r(msg('P', cstr('s'), cstr('SELECT'), i16(2), u32(23))), /past the end/, reg);
      expectViolation(r(msg('P', cstr('s'), cstr('SELECT'))), /parameter type count extends past/, reg);
      expectViolation(r(msg('B', cstr(''), cstr(''), i16(0), i16(1), i32(10), i16(0))), /parameter 1 extends/, reg);
      expectViolation(r(msg('B', cstr(''), cstr(''), i16(0), i16(1), i32(-2), i16(0))), /negative length/, reg);
      expectViolation(
        r(msg('B', cstr(''), cstr(''), i16(2), i16(0), i16(0), i16(3))),
        /2 parameter formats but 3/,
        reg,
      );
      expectViolation(r(msg('B', cstr(''), cstr(''), i16(0), i16(0x7fff))), /parameter values extends past/, reg);
      expectViolation(r(msg('D', i8(0x58), cstr('x'))), /invalid Describe message subtype 0x58/, reg);
      expectViolation(r(msg('C', i8(0x53))), /Close: name is missing/, reg);
      expectViolation(r(msg('E', cstr('p'), i16(1))), /row limit extends past/, reg);
      expectViolation(r(msg('S', i8(0))), /Sync message has a body/, reg);
      expectViolation(r(msg('X', i8(0))), /Terminate message has a body/, reg);
      expectViolation(r(msg('f', Buffer.from('oops'))), /CopyFail: error message is missing/, reg);
      expectViolation(r(msg('F', i16(1))), /function OID extends past/, reg);
    });
  });

  it('never allocates more than about twice what was received, even for a 2 GiB length', () => {
    const d = new FrontendDecoder({ initialPhase: 'regular', maxMessageLength: 0x7fffffff });
    const before = process.memoryUsage().arrayBuffers;
    d.push(Buffer.concat([Buffer.from('d'), i32(0x7fffffff), Buffer.alloc(100)]));
    assert.equal(d.next(), null);
    for (let i = 0; i < 16; i++) {
      d.push(Buffer.alloc(64 * 1024));
      assert.equal(d.next(), null);
    }
    assert.equal(d.bufferedBytes, 105 + 16 * 64 * 1024);
    assert.ok(process.memoryUsage().arrayBuffers - before < 16 * 1024 * 1024);
  });

  it('fuzz: random and mutated frames either decode or throw ProtocolViolation', () => {
    const rand = prng(0xc0ffee);
    const int = (n: number): number => Math.floor(rand() * n);
    const corpus = [startup, ...regular, packet(i32(80877103)), packet(i32(80877102), i32(1), i32(2))];
    const before = process.memoryUsage().arrayBuffers;
    let decoded = 0;
    let violations = 0;
    for (let iter = 0; iter < 5000; iter++) {
      const startPhase = rand() < 0.3 ? 'startup' : 'regular';
      const parts: Buffer[] = [];
      const count = 1 + int(4);
      for (let k = 0; k < count; k++) {
        const base = corpus[int(corpus.length)] ?? Buffer.alloc(0);
        const bytes = Buffer.from(base);
        const mode = int(10);
        if (mode === 0) {
          for (let f = 0; f < 1 + int(3); f++) bytes[int(bytes.length)] = int(256);
        } else if (mode === 1) {
          parts.push(bytes.subarray(0, int(bytes.length)));
          continue;
        } else if (mode === 2) {
          const junk = Buffer.alloc(int(40));
          for (let j = 0; j < junk.length; j++) junk[j] = int(256);
          parts.push(junk);
          continue;
        } else if (mode === 3 && bytes.length >= 5) {
          // Random length field.
          bytes.writeUInt32BE((rand() * 0xffffffff) >>> 0, startPhase === 'startup' && k === 0 ? 0 : 1);
        }
        parts.push(bytes);
      }
      const stream = Buffer.concat(parts);
      const d = new FrontendDecoder({ initialPhase: startPhase, maxMessageLength: 1 << 20 });
      let pos = 0;
      try {
        while (pos < stream.length) {
          const step = 1 + int(stream.length - pos);
          d.push(stream.subarray(pos, pos + step));
          pos += step;
          let guard = 0;
          for (let m = d.next(); m !== null; m = d.next()) {
            decoded++;
            assert.ok(++guard <= stream.length, 'no more messages than bytes');
          }
          assert.ok(d.bufferedBytes <= stream.length);
        }
      } catch (err) {
        if (!(err instanceof ProtocolViolation)) throw err;
        violations++;
      }
    }
    assert.ok(decoded > 1000 && violations > 1000, `decoded ${decoded}, violations ${violations}`);
    assert.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024);
  });
});

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, x]) => [k, sortKeys(x)]),
    );
  }
  return v;
}
