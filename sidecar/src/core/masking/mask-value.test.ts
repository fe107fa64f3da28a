import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { MaskingInstruction } from '@chaperone/api';
import { createHmac } from 'node:crypto';
import { applyStrategy, createValueMasker, keyedHash, keyedHasher, REDACTED } from './mask-value.ts';

const KEY = Buffer.alloc(32, 7);

function masker(instruction: Partial<MaskingInstruction>) {
  const m = createValueMasker(
    [{ rule: 'team/p/m', columns: [], detectors: [], strategy: 'redact', ...instruction }],
    KEY,
  );
  assert.ok(m !== undefined);
  return m;
}

describe('createValueMasker', () => {
  it('masks what each detector finds, and only that', () => {
    const cases: [MaskingInstruction['detectors'][number], string, string][] = [
      ['email', 'write to ada@example.com today', `write to ${REDACTED} today`],
      ['credit-card', 'card 4111 1111 1111 1111 ok', `card ${REDACTED} ok`],
      ['credit-card', 'order 4111 1111 1111 1112', 'order 4111 1111 1111 1112'], // fails Luhn
      ['us-ssn', 'ssn 123-45-6789', `ssn ${REDACTED}`],
      ['us-ssn', 'ssn 000-45-6789', 'ssn 000-45-6789'],
      ['iban', 'pay DE89370400440532013000 now', `pay ${REDACTED} now`],
      ['iban', 'pay DE89370400440532013001 now', 'pay DE89370400440532013001 now'], // bad check digits
      ['ipv4', 'from 10.1.2.3:5432', `from ${REDACTED}:5432`],
      ['ipv4', 'version 1.2.3', 'version 1.2.3'],
      ['jwt', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl', REDACTED],
      ['secret-key', 'key=AKIAIOSFODNN7EXAMPLE', `key=${REDACTED}`],
      ['phone', 'call +1 415 555 2671', `call ${REDACTED}`],
    ];
    for (const [detector, input, expected] of cases) {
      assert.equal(masker({ detectors: [detector] }).mask(input), expected, `${detector}: ${input}`);
    }
    assert.equal(masker({ detectors: ['email'] }).mask('no personal data'), 'no personal data');
  });

  it('a rule with column patterns masks whole values (the column of a parameter is not known)', () => {
    const m = masker({ columns: ['public.customers.email'], detectors: ['ipv4'], strategy: 'partial' });
    assert.equal(m.mask('plain text value'), '************alue');
  });

  it('strategies: redact, null, partial, keyed hash', () => {
    assert.equal(applyStrategy('redact', 'secret', KEY), REDACTED);
    assert.equal(applyStrategy('null', 'secret', KEY), 'NULL');
    assert.equal(applyStrategy('partial', '4111111111111111', KEY), '************1111');
    assert.equal(applyStrategy('partial', 'abc', KEY), '***');
    const hashed = applyStrategy('hash', 'ada@example.com', KEY);
    assert.match(hashed, /^hmac:[0-9a-f]{16}$/);
    assert.equal(applyStrategy('hash', 'ada@example.com', KEY), hashed, 'stable for one key (joins)');
    assert.notEqual(applyStrategy('hash', 'ada@example.com', Buffer.alloc(32, 8)), hashed, 'keyed');
    assert.equal(masker({ detectors: ['email'], strategy: 'hash' }).mask('ada@example.com'), hashed);
  });

  it('keyedHash is HMAC-SHA-256', () => {
    // Short and long (past the scratch buffer), ASCII and not, in an order that reuses the scratch with
    // shorter messages after longer ones.
    const values = [
      '',
      'ada@example.com',
      'x'.repeat(1000),
      'é€😀'.repeat(400),
      'y'.repeat(5000),
      'a',
      'ü'.repeat(2047),
    ];
    for (const key of [KEY, Buffer.alloc(100, 3), Buffer.alloc(0)]) {
      for (const value of values) {
        const expected = createHmac('sha256', key).update(value).digest();
        assert.deepEqual(keyedHash(key, value), expected, `text of ${String(value.length)}`);
        assert.deepEqual(keyedHash(key, Buffer.from(value)), expected, `bytes of ${String(value.length)}`);
        // A value inside a larger buffer (a DataRow), by offsets.
        const framed = Buffer.concat([Buffer.from('head'), Buffer.from(value), Buffer.from('tail')]);
        const end = framed.length - 4;
        assert.deepEqual(keyedHasher(key).digest(framed, 4, end), expected);
        assert.equal(keyedHasher(key).hex16(framed, 4, end), expected.toString('hex', 0, 8));
      }
    }
  });

  it('no instructions: no masker', () => {
    assert.equal(createValueMasker([], KEY), undefined);
  });
});
