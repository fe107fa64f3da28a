import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readHeaders, readQuery, UnreadableQuery } from './request-reading.ts';

const plain = (q: string) => JSON.parse(JSON.stringify(readQuery(q))) as Record<string, string[]>;

test('a plain query: names to values, escapes decoded once', () => {
  assert.deepEqual(plain('a=1&b=x%20y&c'), { a: ['1'], b: ['x y'], c: [''] });
  assert.deepEqual(plain(''), {});
  assert.deepEqual(plain('a=1&&b=2'), { a: ['1'], b: ['2'] });
});

test('a repeated parameter gives every value (first-wins and last-wins servers alike)', () => {
  assert.deepEqual(plain('role=user&role=admin'), { role: ['user', 'admin'] });
});

test('+ is read as a space and as itself', () => {
  assert.deepEqual(plain('q=a+b'), { q: ['a b', 'a+b'] });
  assert.deepEqual(plain('q=a%2Bb'), { q: ['a+b'] });
});

test('double encoding gives the second decoding too', () => {
  assert.deepEqual(plain('path=%252e%252e'), { path: ['%2e%2e', '..'] });
  assert.deepEqual(plain('r%256fle=admin'), { 'r%6fle': ['admin'], role: ['admin'] });
});

test('ambiguities no list of readings covers are refused', () => {
  for (const q of ['a=1;b=2', 'a=%zz', 'a=%c3%28', 'a=\u0001']) {
    assert.throws(() => readQuery(q), UnreadableQuery, q);
  }
});

test('__proto__ is a parameter like any other', () => {
  const q = readQuery('__proto__=x');
  assert.deepEqual(q.__proto__, ['x']);
});

test('a header name with _ is also read as its dashed spelling (CGI and WSGI give both one name)', () => {
  const headers = readHeaders({ x_debug: '1', 'x-tenant': 'a', x_tenant: 'b' });
  assert.deepEqual(headers['x-debug'], ['1']);
  assert.deepEqual(headers.x_debug, ['1']);
  assert.deepEqual(headers['x-tenant'], ['a', 'b']);
});
