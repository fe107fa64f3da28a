import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MaskingInstruction } from '@chaperone/api';
import { createJsonMasker } from './json-masking.ts';

const rule = (over: Partial<MaskingInstruction>): MaskingInstruction => ({
  rule: 'p/r',
  columns: [],
  detectors: [],
  strategy: 'redact',
  ...over,
});

test('fields named by key or dotted path are masked whole, in objects and arrays', () => {
  const masker = createJsonMasker([rule({ columns: ['email', 'card.number'] })]);
  assert.ok(masker);
  const doc = {
    users: [
      { email: 'a@example.com', card: { number: '4111111111111111', expiry: '12/30' } },
      { email: 'b@example.com' },
    ],
    card: { number: '5500000000000004' },
  };
  assert.equal(masker.mask(doc), 3);
  assert.deepEqual(doc, {
    users: [{ email: '[MASKED]', card: { number: '4111111111111111', expiry: '12/30' } }, { email: '[MASKED]' }],
    card: { number: '[MASKED]' },
  });
});

test('detectors mask what they find in every string; null strategy writes JSON null', () => {
  const masker = createJsonMasker([rule({ detectors: ['us-ssn'] }), rule({ columns: ['token'], strategy: 'null' })]);
  const doc = ['ssn 123-45-6789 on file', { token: 'abc', note: 'no ssn' }];
  masker?.mask(doc);
  assert.deepEqual(doc, ['ssn [MASKED] on file', { token: null, note: 'no ssn' }]);
  assert.equal(createJsonMasker([]), undefined);
});
