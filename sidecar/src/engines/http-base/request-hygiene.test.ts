import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AmbiguousRequest, bearerToken, checkHeaders, forwardableHeaders, splitTarget } from './request-hygiene.ts';

const base = ['Host', 'api.example.com'];

test('framing that two parsers could read differently is refused', () => {
  const refused: readonly (readonly string[])[] = [
    [...base, 'Content-Length', '5', 'Transfer-Encoding', 'chunked'],
    [...base, 'Content-Length', '5', 'Content-Length', '6'],
    [...base, 'Content-Length', '5', 'Content-Length', '5'],
    [...base, 'Content-Length', '+5'],
    [...base, 'Content-Length', '0x5'],
    [...base, 'Content-Length', '5, 5'],
    [...base, 'Transfer-Encoding', 'gzip, chunked'],
    [...base, 'Transfer-Encoding', 'chunked, identity'],
    [...base, 'Transfer-Encoding', 'xchunked'],
    [...base, 'Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'],
    [...base, 'Host', 'evil.example.com'],
    ['Content-Length', '0'],
    ['Host', ''],
    ['Host', 'a b'],
    [...base, 'X-Folded', 'a\r\n b'],
    [...base, 'X Bad', 'a'],
    [...base, 'Authorization', 'Bearer a', 'Authorization', 'Bearer b'],
    [...base, 'X-Nul', 'a\0b'],
  ];
  for (const raw of refused) assert.throws(() => checkHeaders(raw), AmbiguousRequest, JSON.stringify(raw));
});

test('clean requests pass, with their body framing', () => {
  assert.equal(checkHeaders([...base, 'Content-Length', '12']).body, 12);
  assert.equal(checkHeaders([...base, 'Transfer-Encoding', 'Chunked']).body, 'chunked');
  assert.equal(checkHeaders(base).body, 0);
  assert.equal(checkHeaders([...base, 'Accept', 'a', 'Accept', 'b']).headers.get('accept'), 'a, b');
});

test('absolute-form targets must name the Host header; other forms are refused', () => {
  assert.deepEqual(splitTarget('/a/b?c=d', 'h'), { rawPath: '/a/b', rawQuery: 'c=d' });
  assert.deepEqual(splitTarget('http://h:80/a?x', 'h:80'), { rawPath: '/a', rawQuery: 'x' });
  assert.deepEqual(splitTarget('https://H', 'h'), { rawPath: '/', rawQuery: '' });
  for (const [target, host] of [
    ['http://evil/a', 'h'],
    ['http://h@evil/a', 'h'],
    ['*', 'h'],
    ['h:443', 'h'],
    ['/a#frag', 'h'],
  ] as const) {
    assert.throws(() => splitTarget(target, host), AmbiguousRequest, target);
  }
});

test('hop-by-hop headers, those Connection names, Host, Content-Length and dropped ones never travel upstream', () => {
  const checked = checkHeaders([
    ...base,
    'Connection',
    'keep-alive, X-Secret-Hop',
    'X-Secret-Hop',
    '1',
    'Keep-Alive',
    'timeout=5',
    'Proxy-Authorization',
    'Basic x',
    'TE',
    'trailers',
    'Content-Length',
    '3',
    'Authorization',
    'Bearer agent',
    'Accept',
    'application/json',
  ]);
  assert.deepEqual(
    forwardableHeaders(checked, (n) => n === 'authorization'),
    { accept: 'application/json' },
  );
});

test('bearer tokens are read from one well-formed Authorization header only', () => {
  assert.equal(bearerToken('Bearer abc.def'), 'abc.def');
  assert.equal(bearerToken('bearer abc'), 'abc');
  assert.equal(bearerToken('Basic abc'), undefined);
  assert.equal(bearerToken('Bearer a b'), undefined);
  assert.equal(bearerToken(undefined), undefined);
});
