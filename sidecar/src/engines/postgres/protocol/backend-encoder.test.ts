import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import {
  authenticationCleartextPassword,
  authenticationMD5Password,
  authenticationOk,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
  backendKeyData,
  BIND_COMPLETE,
  CLOSE_COMPLETE,
  commandComplete,
  dataRow,
  emptyQueryResponse,
  errorResponse,
  negotiateProtocolVersion,
  noData,
  noticeResponse,
  PARSE_COMPLETE,
  parameterStatus,
  readyForQuery,
  rowDescription,
  sslResponse,
} from './backend-encoder.ts';
import {
  encodeCancelRequest,
  encodeExecute,
  encodeParse,
  encodePasswordMessage,
  encodeQuery,
  encodeSASLInitialResponse,
  encodeSASLResponse,
  encodeSSLRequest,
  encodeStartupMessage,
  SYNC_FRAME,
  TERMINATE_FRAME,
} from './frontend-encoder.ts';
import { FrontendDecoder } from './frontend-decoder.ts';
import { cstr, i16, i32, i8, msg, packet, u32 } from './test-wire.ts';

/** Parses backend bytes with node-postgres's own parser, an independent implementation. */
function pgParse(bytes: Buffer): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  new Parser().parse(bytes, (m: BackendMessage) => {
    out.push({
      ...(m as unknown as Record<string, unknown>),
      name: m.name,
      message: (m as { message?: string }).message,
    });
  });
  return out;
}

describe('backend encoder: byte-exact', () => {
  it('ReadyForQuery, fixed frames and sslResponse', () => {
    assert.deepEqual(readyForQuery('I'), msg('Z', Buffer.from('I')));
    assert.deepEqual(readyForQuery('T'), msg('Z', Buffer.from('T')));
    assert.deepEqual(readyForQuery('E'), msg('Z', Buffer.from('E')));
    assert.equal(readyForQuery('I'), readyForQuery('I'), 'precomputed constant');
    assert.deepEqual(noData(), msg('n'));
    assert.deepEqual(emptyQueryResponse(), msg('I'));
    assert.deepEqual(PARSE_COMPLETE, msg('1'));
    assert.deepEqual(BIND_COMPLETE, msg('2'));
    assert.deepEqual(CLOSE_COMPLETE, msg('3'));
    assert.deepEqual(sslResponse(true), Buffer.from('S'));
    assert.deepEqual(sslResponse(false), Buffer.from('N'));
  });

  it('Authentication requests', () => {
    assert.deepEqual(authenticationOk(), msg('R', i32(0)));
    assert.deepEqual(authenticationCleartextPassword(), msg('R', i32(3)));
    assert.deepEqual(authenticationMD5Password(Buffer.from([1, 2, 3, 4])), msg('R', i32(5), Buffer.from([1, 2, 3, 4])));
    assert.throws(() => authenticationMD5Password(Buffer.alloc(3)), RangeError);
    assert.deepEqual(
      authenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']),
      msg('R', i32(10), cstr('SCRAM-SHA-256-PLUS'), cstr('SCRAM-SHA-256'), i8(0)),
    );
    assert.deepEqual(
      authenticationSASLContinue('r=abc,s=xyz,i=4096'),
      msg('R', i32(11), Buffer.from('r=abc,s=xyz,i=4096')),
    );
    assert.deepEqual(authenticationSASLFinal(Buffer.from('v=sig')), msg('R', i32(12), Buffer.from('v=sig')));
  });

  it('ParameterStatus, BackendKeyData, CommandComplete, NegotiateProtocolVersion', () => {
    assert.deepEqual(parameterStatus('client_encoding', 'UTF8'), msg('S', cstr('client_encoding'), cstr('UTF8')));
    assert.deepEqual(parameterStatus('x', 'é'), msg('S', cstr('x'), Buffer.from([0xc3, 0xa9, 0])), 'byte lengths');
    assert.deepEqual(backendKeyData(1234, -559038737), msg('K', i32(1234), i32(-559038737)));
    assert.deepEqual(backendKeyData(1234, 0xdeadbeef), msg('K', i32(1234), u32(0xdeadbeef)));
    assert.deepEqual(backendKeyData(7, Buffer.alloc(32, 9)), msg('K', i32(7), Buffer.alloc(32, 9)));
    assert.throws(() => backendKeyData(7, Buffer.alloc(3)), RangeError);
    assert.deepEqual(commandComplete('INSERT 0 5'), msg('C', cstr('INSERT 0 5')));
    // The version field is the whole code, 3.0 = 0x00030000, as PostgreSQL sends it.
    assert.deepEqual(negotiateProtocolVersion(0, ['_pq_.a']), msg('v', i32(0x00030000), i32(1), cstr('_pq_.a')));
    assert.deepEqual(negotiateProtocolVersion(2, []), msg('v', i32(0x00030002), i32(0)));
    assert.throws(() => commandComplete('bad\0tag'), RangeError);
  });

  it('RowDescription and DataRow', () => {
    assert.deepEqual(
      rowDescription([
        { name: 'id', tableOid: 16384, columnAttr: 1, typeOid: 23, typeSize: 4, typeModifier: -1, format: 0 },
        { name: 'naïve', tableOid: 0, columnAttr: 0, typeOid: 25, typeSize: -1, typeModifier: -1, format: 1 },
      ]),
      msg(
        'T',
        i16(2),
        cstr('id'),
        u32(16384),
        i16(1),
        u32(23),
        i16(4),
        i32(-1),
        i16(0),
        cstr('naïve'),
        u32(0),
        i16(0),
        u32(25),
        i16(-1),
        i32(-1),
        i16(1),
      ),
    );
    assert.deepEqual(
      dataRow(['1', null, Buffer.from([0, 1]), '', 'ü']),
      msg(
        'D',
        i16(5),
        i32(1),
        Buffer.from('1'),
        i32(-1),
        i32(2),
        Buffer.from([0, 1]),
        i32(0),
        i32(2),
        Buffer.from('ü'),
      ),
    );
    assert.deepEqual(dataRow([]), msg('D', i16(0)));
  });

  it('ErrorResponse and NoticeResponse, fields in server order, NUL-safe', () => {
    assert.deepEqual(
      errorResponse({
        severity: 'FATAL',
        code: '28P01',
        message: 'password authentication failed for user "a"',
        detail: 'd',
        hint: 'h',
        extra: { X: 'custom' },
      }),
      msg(
        'E',
        i8(0x53),
        cstr('FATAL'),
        i8(0x56),
        cstr('FATAL'),
        i8(0x43),
        cstr('28P01'),
        i8(0x4d),
        cstr('password authentication failed for user "a"'),
        i8(0x44),
        cstr('d'),
        i8(0x48),
        cstr('h'),
        i8(0x58),
        cstr('custom'),
        i8(0),
      ),
    );
    assert.deepEqual(
      noticeResponse({ severity: 'AVISO', severityNonLocalized: 'NOTICE', code: '00000', message: 'a\0b' }),
      msg(
        'N',
        i8(0x53),
        cstr('AVISO'),
        i8(0x56),
        cstr('NOTICE'),
        i8(0x43),
        cstr('00000'),
        i8(0x4d),
        cstr('a\uFFFDb'),
        i8(0),
      ),
    );
    assert.throws(
      () => errorResponse({ severity: 'ERROR', code: 'XX000', message: 'm', extra: { XY: 'no' } }),
      RangeError,
    );
  });
});

describe('backend encoder: round trip through pg-protocol Parser', () => {
  it('parses everything the encoder writes, concatenated in one stream', () => {
    const stream = Buffer.concat([
      authenticationOk(),
      authenticationMD5Password(Buffer.from([9, 8, 7, 6])),
      authenticationSASL(['SCRAM-SHA-256']),
      authenticationSASLContinue('r=x'),
      authenticationSASLFinal('v=y'),
      parameterStatus('server_version', '15.8'),
      backendKeyData(4321, 0x01020304),
      rowDescription([
        { name: 'n', tableOid: 1, columnAttr: 2, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 },
      ]),
      dataRow(['hello', null]),
      commandComplete('SELECT 1'),
      noData(),
      emptyQueryResponse(),
      PARSE_COMPLETE,
      BIND_COMPLETE,
      CLOSE_COMPLETE,
      errorResponse({ severity: 'ERROR', code: '42501', message: 'denied by policy', hint: 'ask', position: '8' }),
      noticeResponse({ severity: 'NOTICE', code: '00000', message: 'fyi' }),
      readyForQuery('T'),
    ]);
    const parsed = pgParse(stream);
    assert.deepEqual(
      parsed.map((m) => m.name),
      [
        'authenticationOk',
        'authenticationMD5Password',
        'authenticationSASL',
        'authenticationSASLContinue',
        'authenticationSASLFinal',
        'parameterStatus',
        'backendKeyData',
        'rowDescription',
        'dataRow',
        'commandComplete',
        'noData',
        'emptyQuery',
        'parseComplete',
        'bindComplete',
        'closeComplete',
        'error',
        'notice',
        'readyForQuery',
      ],
    );
    const at = (i: number): Record<string, unknown> => parsed[i] ?? {};
    assert.deepEqual(at(1).salt, Buffer.from([9, 8, 7, 6]));
    assert.deepEqual(at(2).mechanisms, ['SCRAM-SHA-256']);
    assert.equal(at(3).data, 'r=x');
    assert.equal(at(4).data, 'v=y');
    assert.equal(at(5).parameterName, 'server_version');
    assert.equal(at(5).parameterValue, '15.8');
    assert.equal(at(6).processID, 4321);
    assert.equal(at(6).secretKey, 0x01020304);
    const fields = at(7).fields as { name: string; tableID: number; columnID: number; dataTypeID: number }[];
    assert.deepEqual(
      fields.map((f) => [f.name, f.tableID, f.columnID, f.dataTypeID]),
      [['n', 1, 2, 25]],
    );
    assert.deepEqual(at(8).fields, ['hello', null]);
    assert.equal(at(9).text, 'SELECT 1');
    assert.equal(at(15).code, '42501');
    assert.equal(at(15).message, 'denied by policy');
    assert.equal(at(15).hint, 'ask');
    assert.equal(at(15).position, '8');
    assert.equal(at(15).severity, 'ERROR');
    assert.equal(at(16).message, 'fyi');
    assert.equal(at(17).status, 'T');
  });
});

describe('frontend encoder', () => {
  it('writes byte-exact startup, SSL, cancel and password messages', () => {
    assert.deepEqual(
      encodeStartupMessage([
        ['user', 'u'],
        ['database', 'd'],
      ]),
      packet(i32(196608), cstr('user'), cstr('u'), cstr('database'), cstr('d'), i8(0)),
    );
    assert.throws(() => encodeStartupMessage([['', 'x']]), RangeError);
    assert.deepEqual(encodeSSLRequest(), packet(i32(80877103)));
    assert.deepEqual(encodeCancelRequest(5, 6), packet(i32(80877102), i32(5), i32(6)));
    assert.deepEqual(encodeCancelRequest(5, Buffer.alloc(32, 1)), packet(i32(80877102), i32(5), Buffer.alloc(32, 1)));
    assert.deepEqual(encodePasswordMessage('pw'), msg('p', cstr('pw')));
    assert.deepEqual(
      encodeSASLInitialResponse('SCRAM-SHA-256', 'n,,n=,r=x'),
      msg('p', cstr('SCRAM-SHA-256'), i32(9), Buffer.from('n,,n=,r=x')),
    );
    assert.deepEqual(encodeSASLResponse('c=biws'), msg('p', Buffer.from('c=biws')));
    assert.deepEqual(encodeQuery('SELECT 1'), msg('Q', cstr('SELECT 1')));
    assert.deepEqual(encodeParse('s1', 'SELECT é'), msg('P', cstr('s1'), cstr('SELECT é'), i16(0)));
    assert.deepEqual(encodeExecute('', 10), msg('E', cstr(''), i32(10)));
    assert.deepEqual(SYNC_FRAME, msg('S'));
    assert.deepEqual(TERMINATE_FRAME, msg('X'));
  });

  it('round-trips through FrontendDecoder', () => {
    const d = new FrontendDecoder();
    const [s] = d.decode(
      encodeStartupMessage([
        ['user', 'ü'],
        ['application_name', 'x'],
      ]),
    );
    assert.ok(s?.type === 'StartupMessage');
    assert.deepEqual(
      [...s.parameters],
      [
        ['user', 'ü'],
        ['application_name', 'x'],
      ],
    );
    const msgs = d.decode(Buffer.concat([encodeQuery('SELECT 1'), SYNC_FRAME, TERMINATE_FRAME]));
    assert.deepEqual(
      msgs.map((m) => m.type),
      ['Query', 'Sync', 'Terminate'],
    );
  });
});
