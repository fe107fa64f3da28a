import assert from 'node:assert/strict';
import { test } from 'node:test';
import { duplicateJsonMember, numericDateProblem } from './jwt-text.ts';

test('duplicateJsonMember finds a name given twice in one object, at any depth, however spelled', () => {
  assert.equal(duplicateJsonMember('{"sub":"a","exp":1,"sub":"b"}'), 'sub');
  assert.equal(duplicateJsonMember('{"sub":"a","s\\u0075b":"b"}'), 'sub', 'an escaped spelling is the same name');
  assert.equal(duplicateJsonMember('{"act":{"sub":"a","act":{"sub":"b","sub":"c"}}}'), 'sub');
  assert.equal(duplicateJsonMember('{ "alg" : "none" ,\n "alg":"ES256"}'), 'alg');
  assert.equal(duplicateJsonMember('[{"a":1},{"a":2,"a":3}]'), 'a');
});

test('duplicateJsonMember accepts the same name in sibling objects, in values and in strings', () => {
  assert.equal(duplicateJsonMember('{"a":{"x":1},"b":{"x":2}}'), undefined);
  assert.equal(duplicateJsonMember('{"a":["a","a"],"b":"a"}'), undefined);
  assert.equal(duplicateJsonMember('{"a":"{\\"a\\":1,\\"a\\":2}","b":"\\\\"}'), undefined);
  assert.equal(duplicateJsonMember('{"groups":[{"a":1},{"a":1}],"sub":"x"}'), undefined);
  assert.equal(duplicateJsonMember('{}'), undefined);
  assert.equal(duplicateJsonMember('{"a":"unterminated\\"}'), undefined, 'not JSON: ends, left to the parser');
});

test('numericDateProblem refuses dates JSON can spell and a Date cannot hold', () => {
  assert.match(numericDateProblem({ exp: JSON.parse('1e309') as number }) ?? '', /exp is not a date \(Infinity\)/);
  assert.match(numericDateProblem({ nbf: -Infinity }) ?? '', /nbf/);
  assert.match(numericDateProblem({ iat: Number.NaN }) ?? '', /iat/);
  assert.match(numericDateProblem({ exp: 9.4e12 }) ?? '', /exp/);
  assert.equal(numericDateProblem({ exp: 1_800_000_000, nbf: -0, iat: 0 }), undefined);
  assert.equal(numericDateProblem({ exp: 8.64e12 }), undefined, 'the last second a Date holds');
  assert.equal(numericDateProblem({ exp: '1e309' }), undefined, 'a string is left to the claim checks');
});
