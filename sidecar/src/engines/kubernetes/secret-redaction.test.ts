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

test('the mask is recognised however the body spells it, as the API server decodes it', () => {
  const [head, tail] = [MASKED_DATA.slice(0, 12), MASKED_DATA.slice(12)];
  // The last character before the padding with other unused low bits: Go's decoder reads the same bytes.
  const sibling = `${MASKED_DATA.slice(0, -3)}B==`;
  assert.equal(Buffer.from(sibling, 'base64').toString(), MASKED_TEXT);
  const spelled: Record<string, string> = {
    'JSON escapes in the base64': `{"data":{"p":"${MASKED_DATA.replace(/=/g, '\\u003d')}"}}`,
    'JSON escapes in stringData': `{"stringData":{"p":"chaperone\\u003amasked"}}`,
    'a line break inside the base64 (JSON)': `{"data":{"p":"${head}\\n${tail}"}}`,
    'CRLF inside the base64 (JSON)': `{"data":{"p":"${head}\\r\\n${tail}"}}`,
    'a YAML block scalar across lines': `data:\n  p: |\n    ${head}\n    ${tail}\n`,
    'a YAML double-quoted escape': `data:\n  p: "${MASKED_DATA.replace(/=/g, '\\x3d')}"\n`,
    'another spelling of the last character': `{"data":{"p":"${sibling}"}}`,
    'a JSON patch': `[{"op":"replace","path":"/data/p","value":"${head}\\n${tail}"}]`,
  };
  for (const [name, body] of Object.entries(spelled)) {
    assert.ok(!body.includes(MASKED_DATA) && !body.includes(MASKED_TEXT), `${name}: not a plain copy`);
    assert.ok(containsMaskedValue(body), name);
  }
  // Harmless: real values, names that look like base64, bodies that do not parse.
  for (const body of [
    '{"data":{"p":"c2VjcmV0"},"metadata":{"name":"chaperone"}}',
    'data:\n  p: c2VjcmV0\n',
    '{"data":',
    `[${'0,'.repeat(200_000)}0]`,
  ]) {
    assert.ok(!containsMaskedValue(body), body.slice(0, 60));
  }
});

test('a Secret body in a media type the sidecar cannot read counts as carrying the mask', () => {
  // CBOR text strings may come in chunks: "chaperone:" and "masked" as two, never one run of bytes.
  const chunked = Buffer.concat([
    Buffer.from([0xa1, 0x6a]),
    Buffer.from('stringData'),
    Buffer.from([0xa1, 0x61, 0x70, 0x7f, 0x6a]),
    Buffer.from('chaperone:'),
    Buffer.from([0x66]),
    Buffer.from('masked'),
    Buffer.from([0xff]),
  ]).toString('latin1');
  assert.ok(!chunked.includes(MASKED_TEXT), 'the text search alone does not see it');
  for (const type of ['application/cbor', 'application/apply-patch+cbor', 'text/plain', 'application/x-anything']) {
    assert.ok(containsMaskedValue(chunked, type), type);
    assert.ok(containsMaskedValue('{"data":{"p":"c2VjcmV0"}}', type), `${type}: refused whatever it holds`);
  }
  for (const type of [
    '',
    'application/json',
    'application/json; charset=utf-8',
    'application/merge-patch+json',
    'application/json-patch+json',
    'application/strategic-merge-patch+json',
    'application/apply-patch+yaml',
    'application/yaml',
    'application/vnd.kubernetes.protobuf',
  ]) {
    assert.ok(!containsMaskedValue('{"data":{"p":"c2VjcmV0"}}', type), `${type}: read, and no mask in it`);
  }
});
