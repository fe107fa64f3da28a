import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { signatureHeader, verifySignature } from './webhook-signature.ts';

const key = Buffer.from('0123456789abcdef0123456789abcdef');
const body = '{"type":"approval.requested","id":"u/requested"}';
const now = 1_800_000_000;

/** Written from the documentation, not with the module under test. */
function expectedHeader(t: number, b: string): string {
  return `t=${String(t)},v1=${createHmac('sha256', key)
    .update(`${String(t)}.${b}`)
    .digest('hex')}`;
}

test('the header is t=<unix seconds>,v1=<HMAC-SHA256 hex over "<t>.<body>">', () => {
  assert.equal(signatureHeader(key, now, body), expectedHeader(now, body));
  assert.equal(signatureHeader(key, now, Buffer.from(body)), expectedHeader(now, body));
});

test('a receiver accepts its own signature inside the window, either side', () => {
  assert.deepEqual(verifySignature(key, expectedHeader(now, body), body, now + 299), { valid: true });
  assert.deepEqual(verifySignature(key, expectedHeader(now, body), body, now - 299), { valid: true });
  // A second v1 (a sender signing with an old and a new key while rotating): any one matching is enough.
  const rotating = `${expectedHeader(now, body)},v1=${'0'.repeat(64)}`;
  assert.deepEqual(verifySignature(key, rotating, body, now), { valid: true });
});

test('replays, tampering and malformed headers are refused', () => {
  const cases: [string, string | undefined, string, number, string][] = [
    ['replayed after the window', expectedHeader(now, body), body, now + 301, 'timestamp outside the window'],
    ['a changed body', expectedHeader(now, body), body.replace('requested', 'resolved'), now, 'signature mismatch'],
    [
      'the timestamp moved (replay with a fresh t)',
      expectedHeader(now, body).replace(`t=${String(now)}`, `t=${String(now + 60)}`),
      body,
      now + 60,
      'signature mismatch',
    ],
    ['another key', signatureHeader(Buffer.from('another key'), now, body), body, now, 'signature mismatch'],
    ['no header', undefined, body, now, 'no signature'],
    ['no timestamp', `v1=${'a'.repeat(64)}`, body, now, 'no timestamp'],
    ['a non-numeric timestamp', `t=soon,v1=${'a'.repeat(64)}`, body, now, 'no timestamp'],
    ['no v1', `t=${String(now)},v0=${'a'.repeat(64)}`, body, now, 'no v1 signature'],
    ['a short v1', `t=${String(now)},v1=abcd`, body, now, 'no v1 signature'],
  ];
  for (const [what, header, b, at, reason] of cases) {
    assert.deepEqual(verifySignature(key, header, b, at), { valid: false, reason }, what);
  }
});
