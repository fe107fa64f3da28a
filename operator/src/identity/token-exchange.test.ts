import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseExchangeRequest, withoutLineBreak } from './token-exchange.ts';

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT = 'urn:ietf:params:oauth:token-type:jwt';

function form(subject: string, actor?: string): URLSearchParams {
  const params = new URLSearchParams({ grant_type: GRANT, subject_token: subject, subject_token_type: JWT });
  if (actor !== undefined) {
    params.set('actor_token', actor);
    params.set('actor_token_type', JWT);
  }
  return params;
}

test('a token read from a file loses its one trailing line break, nothing else', () => {
  assert.equal(withoutLineBreak('a.b.c\n'), 'a.b.c');
  assert.equal(withoutLineBreak('a.b.c\r\n'), 'a.b.c');
  // Only one line break, and no other whitespace: the rest is for the canonical-text check to refuse.
  assert.equal(withoutLineBreak('a.b.c\n\n'), 'a.b.c\n');
  assert.equal(withoutLineBreak('a.b.c '), 'a.b.c ');
  assert.equal(withoutLineBreak(' a.b.c'), ' a.b.c');
  assert.equal(withoutLineBreak('a.b.c'), 'a.b.c');
});

test('the exchange takes subject and actor tokens without the line break of their files', () => {
  const parsed = parseExchangeRequest(form('s.s.s\n', 'a.a.a\r\n'));
  assert.equal(parsed.subjectToken, 's.s.s');
  assert.equal(parsed.actorToken, 'a.a.a');
  assert.equal(parseExchangeRequest(form('s.s.s\t')).subjectToken, 's.s.s\t');
});
