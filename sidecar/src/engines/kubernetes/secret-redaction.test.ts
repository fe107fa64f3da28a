import assert from 'node:assert/strict';
import { test } from 'node:test';
import { containsMaskedValue, MASKED_DATA, MASKED_TEXT, redactSecrets } from './secret-redaction.ts';

const secret = () => ({
  kind: 'Secret',
  type: 'Opaque',
  metadata: {
    name: 'db',
    annotations: {
      'kubectl.kubernetes.io/last-applied-configuration': JSON.stringify({
        kind: 'Secret',
        data: { password: 'c2VjcmV0' },
      }),
    },
  },
  data: { password: 'c2VjcmV0', user: 'YWRtaW4=' },
  stringData: { extra: 'plain' },
});

test('a Secret, its last-applied copy, a list, a watch event and Table rows are all masked', () => {
  const docs: unknown[] = [
    secret(),
    { kind: 'SecretList', items: [{ ...secret(), kind: undefined }] },
    { type: 'ADDED', object: secret() },
    { kind: 'Table', rows: [{ cells: ['db'], object: secret() }] },
  ];
  for (const doc of docs) {
    assert.ok(redactSecrets(doc) > 0);
    const text = JSON.stringify(doc);
    assert.ok(!text.includes('c2VjcmV0') && !text.includes('YWRtaW4=') && !text.includes('plain'), text);
    assert.ok(text.includes(MASKED_DATA));
  }
  assert.equal(Buffer.from(MASKED_DATA, 'base64').toString(), MASKED_TEXT);
});

test('a Status and a Secret without data are left alone', () => {
  const status = { kind: 'Status', status: 'Failure', message: 'not found' };
  assert.equal(redactSecrets(status), 0);
  assert.deepEqual(status, { kind: 'Status', status: 'Failure', message: 'not found' });
  assert.equal(redactSecrets({ kind: 'Secret', metadata: { name: 'x' } }), 0);
});

test('an unreadable last-applied annotation is replaced rather than passed on', () => {
  const doc = {
    kind: 'Secret',
    metadata: { annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{not json' } },
  };
  redactSecrets(doc);
  assert.equal(doc.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration'], MASKED_TEXT);
});

test('writing a masked value back is recognised', () => {
  assert.ok(containsMaskedValue(`{"data":{"p":"${MASKED_DATA}"}}`));
  assert.ok(containsMaskedValue(`stringData: {p: ${MASKED_TEXT}}`));
  assert.ok(!containsMaskedValue('{"data":{"p":"c2VjcmV0"}}'));
});
