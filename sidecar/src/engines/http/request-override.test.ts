import assert from 'node:assert/strict';
import { test } from 'node:test';
import { requestOverride } from './request-override.ts';

const none = Buffer.alloc(0);

test('headers that override the method or path, or forge the client address, are named', () => {
  for (const name of [
    'x-http-method-override',
    'x-http-method',
    'x-method-override',
    'x-original-url',
    'x-rewrite-url',
    'forwarded',
    'x-forwarded-for',
    'x-forwarded-host',
    'x-forwarded-prefix',
    'x-real-ip',
    'true-client-ip',
  ]) {
    assert.equal(requestOverride(['accept', name], {}, none, undefined), `the ${name} header`);
  }
});

test('_method in the query (any case) or in a form body is named', () => {
  assert.match(requestOverride([], { _method: ['DELETE'] }, none, undefined) ?? '', /query parameter/);
  assert.match(requestOverride([], { _METHOD: ['delete'] }, none, undefined) ?? '', /query parameter/);
  const form = Buffer.from('a=1&_method=DELETE');
  assert.match(requestOverride([], {}, form, 'application/x-www-form-urlencoded; charset=utf-8') ?? '', /form field/);
  assert.match(
    requestOverride([], {}, Buffer.from('a=1&%5Fmethod=DELETE'), 'application/x-www-form-urlencoded') ?? '',
    /form field/,
    'an escaped name is what the framework decodes',
  );
  const multipart = Buffer.from('--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--\r\n');
  assert.match(requestOverride([], {}, multipart, 'multipart/form-data; boundary=b') ?? '', /form field/);
});

test('harmless requests pass', () => {
  assert.equal(
    requestOverride(['accept', 'content-type', 'x-request-id'], { method: ['x'] }, none, undefined),
    undefined,
  );
  assert.equal(requestOverride([], {}, Buffer.from('{"_method":"DELETE"}'), 'application/json'), undefined);
  assert.equal(requestOverride([], {}, Buffer.from('a=1&method=x'), 'application/x-www-form-urlencoded'), undefined);
});

test('underscore spellings, which CGI and WSGI servers read as the dashed names, are named', () => {
  assert.equal(requestOverride(['x_http_method_override'], {}, none, undefined), 'the x_http_method_override header');
  assert.equal(requestOverride(['x-forwarded_for'], {}, none, undefined), 'the x-forwarded_for header');
  assert.equal(requestOverride(['x_request_note'], {}, none, undefined), undefined);
});
