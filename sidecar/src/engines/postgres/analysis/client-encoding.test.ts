import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  clientEncodingRefusal,
  isUtf8EncodingName,
  normaliseEncodingName,
  serverEncodingRefusal,
} from './client-encoding.ts';

describe('client encodings', () => {
  it('normalises names as PostgreSQL does (letters and digits, lower case)', () => {
    assert.equal(normaliseEncodingName('UTF-8'), 'utf8');
    assert.equal(normaliseEncodingName(' Shift_JIS '), 'shiftjis');
    assert.equal(normaliseEncodingName('SQL_ASCII'), 'sqlascii');
  });

  it('accepts every spelling of UTF8 and its alias Unicode', () => {
    for (const name of ['UTF8', 'utf8', 'utf-8', 'Utf_8', 'UNICODE', 'Unicode', ' utf 8 ']) {
      assert.equal(isUtf8EncodingName(name), true, name);
      assert.equal(clientEncodingRefusal(name), undefined, name);
      assert.equal(serverEncodingRefusal(name), undefined, name);
    }
  });

  it('refuses encodings whose trail bytes can be ASCII, SQL_ASCII and single-byte ones, in any case', () => {
    for (const name of ['SJIS', 'sjis', 'Sjis', 'SHIFT_JIS_2004', 'BIG5', 'GBK', 'UHC', 'GB18030', 'JOHAB']) {
      assert.match(clientEncodingRefusal(name) ?? '', /not supported through the chaperone sidecar/, name);
    }
    for (const name of ['SQL_ASCII', 'sql-ascii', 'LATIN1', 'EUC_JP', 'WIN1252', 'auto', '', 'utf16', 'utf-8x']) {
      assert.notEqual(clientEncodingRefusal(name), undefined, name);
    }
    assert.match(serverEncodingRefusal('LATIN1') ?? '', /UTF8 databases only/);
    assert.notEqual(serverEncodingRefusal('SQL_ASCII'), undefined);
  });
});
