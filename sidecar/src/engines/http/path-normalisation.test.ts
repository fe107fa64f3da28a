import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalisePath, UnnormalisablePath } from './path-normalisation.ts';

test('paths are normalised as upstream servers read them', () => {
  const cases: readonly [string, string][] = [
    ['/', '/'],
    ['/a/b', '/a/b'],
    ['/a/b/', '/a/b/'],
    ['//a///b', '/a/b'],
    ['/a/./b', '/a/b'],
    ['/a/b/..', '/a/'],
    ['/a/b/../c', '/a/c'],
    ['/api/%2e%2e/admin', '/admin'],
    ['/api/%2E%2E/admin', '/admin'],
    ['/api/.%2e/admin', '/admin'],
    ['/%61dmin', '/admin'],
    ['/a%7Eb', '/a~b'],
    ['/a%20b', '/a%20b'],
    ['/a%c3%a9', '/a%C3%A9'],
    ['/a/.', '/a/'],
    ['/a//../b', '/b'],
  ];
  for (const [raw, expected] of cases) assert.equal(normalisePath(raw), expected, raw);
});

test('what upstreams disagree about is refused', () => {
  for (const raw of [
    'a/b',
    '/..',
    '/a/../..',
    '/%2e%2e/etc/passwd',
    '/a%2Fb',
    '/a%2fb',
    '/a%5Cb',
    '/a\\b',
    '/admin;jsessionid=x',
    '/admin%3bx',
    '/a%00b',
    '/a%0d%0ab',
    '/a\tb',
    '/a%zz',
    '/a%',
    '/a%ff',
    '/public/%252e%252e/admin',
    '/a%252Fb',
    '/a%2561',
  ]) {
    assert.throws(() => normalisePath(raw), UnnormalisablePath, raw);
  }
});

test('a percent sign that forms no escape after decoding is a plain character', () => {
  assert.equal(normalisePath('/100%25'), '/100%25');
  assert.equal(normalisePath('/a%25zz'), '/a%25zz');
});
