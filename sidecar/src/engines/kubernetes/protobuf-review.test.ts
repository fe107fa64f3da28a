import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MalformedReview } from './access-review.ts';
import { decodeProtobufReview } from './protobuf-review.ts';

/** A length-delimited protobuf field, built by hand (field number, bytes). */
function field(n: number, value: Buffer | string): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value) : value;
  if (bytes.length > 127) throw new Error('test helper handles short fields only');
  return Buffer.concat([Buffer.from([(n << 3) | 2, bytes.length]), bytes]);
}

function envelope(object: Buffer): Buffer {
  const typeMeta = Buffer.concat([field(1, 'authorization.k8s.io/v1'), field(2, 'SelfSubjectAccessReview')]);
  return Buffer.concat([Buffer.from('k8s\0', 'latin1'), field(1, typeMeta), field(2, object)]);
}

test('a protobuf SelfSubjectAccessReview (as kubectl auth can-i sends it) decodes to its attributes', () => {
  const attrs = Buffer.concat([
    field(1, 'team-a'),
    field(2, 'delete'),
    field(3, 'apps'),
    field(5, 'deployments'),
    field(7, 'web'),
  ]);
  const doc = decodeProtobufReview(envelope(Buffer.concat([field(1, Buffer.alloc(0)), field(2, field(1, attrs))])));
  assert.equal(doc.kind, 'SelfSubjectAccessReview');
  assert.deepEqual(doc.spec?.resourceAttributes, {
    namespace: 'team-a',
    verb: 'delete',
    group: 'apps',
    resource: 'deployments',
    name: 'web',
  });
  const nonResource = decodeProtobufReview(
    envelope(field(2, field(2, Buffer.concat([field(1, '/metrics'), field(2, 'get')])))),
  );
  assert.deepEqual(nonResource.spec?.nonResourceAttributes, { path: '/metrics', verb: 'get' });
});

test('truncated, unframed and odd wire types are refused', () => {
  const good = envelope(field(2, field(1, field(2, 'get'))));
  for (const bad of [
    Buffer.from('{"kind":"SelfSubjectAccessReview"}'),
    good.subarray(0, good.length - 2),
    Buffer.concat([Buffer.from('k8s\0', 'latin1'), Buffer.from([0x0d, 1, 2, 3, 4])]),
    Buffer.concat([Buffer.from('k8s\0', 'latin1'), Buffer.from([0x08, 0xff])]),
  ]) {
    assert.throws(() => decodeProtobufReview(bad), MalformedReview);
  }
});
