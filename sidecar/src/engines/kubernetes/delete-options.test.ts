import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mediaType, UnreadableDeleteOptions, withDeleteOptions } from './delete-options.ts';
import { classifyRequest, UnclassifiableRequest } from './request-info.ts';

// Protobuf written out byte by byte from k8s.io/apimachinery's generated.proto: runtime.Unknown {1 typeMeta,
// 2 raw} behind the `k8s\0` magic; DeleteOptions {1 gracePeriodSeconds varint, 4 propagationPolicy, 5 dryRun}.
const MAGIC = [0x6b, 0x38, 0x73, 0x00];
const TYPE_META = [0x0a, 0x13, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x0d, ...Buffer.from('DeleteOptions')];
const DRY_ALL = [0x2a, 0x03, 0x41, 0x6c, 0x6c]; // field 5, length 3, "All"
const GRACE_0 = [0x08, 0x00]; // field 1 varint 0
const envelope = (raw: number[]) => Buffer.from([...MAGIC, ...TYPE_META, 0x12, raw.length, ...raw]);

const del = (query = '') => classifyRequest('DELETE', '/api/v1/namespaces/x/configmaps/c', query);
const PB = 'application/vnd.kubernetes.protobuf';
const json = (options: unknown) => Buffer.from(JSON.stringify(options));

test("a DELETE with a body takes its dry run from the body's DeleteOptions, as the API server does", () => {
  assert.equal(withDeleteOptions(del(), json({ dryRun: ['All'] }), 'application/json').dryRun, true);
  assert.equal(withDeleteOptions(del(), json({ dryRun: [] }), 'application/json').dryRun, false);
  assert.equal(withDeleteOptions(del(), json({ propagationPolicy: 'Background' }), 'application/json').dryRun, false);
  assert.equal(withDeleteOptions(del(), Buffer.from('dryRun:\n- All\n'), 'application/yaml').dryRun, true);
  // No Content-Type: the API server reads JSON. Names match exactly; the last duplicate wins.
  assert.equal(withDeleteOptions(del(), json({ dryRun: ['All'] }), '').dryRun, true);
  assert.equal(withDeleteOptions(del(), json({ DryRun: ['All'] }), 'application/json').dryRun, false);
  assert.equal(
    withDeleteOptions(del(), Buffer.from('{"dryRun":["All"],"dryRun":[]}'), 'application/json').dryRun,
    false,
  );
  // The query's dryRun is ignored by the API server when there is a body: refused, never recorded as a dry run.
  assert.throws(() => withDeleteOptions(del('dryRun=All'), json({}), 'application/json'), UnclassifiableRequest);
  assert.throws(() => withDeleteOptions(del(), json({ dryRun: ['Some'] }), 'application/json'), UnclassifiableRequest);
});

test('protobuf DeleteOptions are read for dryRun', () => {
  assert.equal(withDeleteOptions(del(), envelope([...GRACE_0, ...DRY_ALL]), PB).dryRun, true);
  assert.equal(withDeleteOptions(del(), envelope([...DRY_ALL, ...DRY_ALL]), PB).dryRun, true);
  assert.equal(withDeleteOptions(del(), envelope(GRACE_0), PB).dryRun, false);
  assert.equal(withDeleteOptions(del(), envelope([]), PB).dryRun, false);
  // An unknown field (99, length-delimited) is skipped as the API server skips it.
  assert.equal(withDeleteOptions(del(), envelope([...DRY_ALL, 0x9a, 0x06, 0x01, 0x78]), PB).dryRun, true);
  // [All, ""] and [all]: the API server refuses them, so does the engine.
  assert.throws(() => withDeleteOptions(del(), envelope([...DRY_ALL, 0x2a, 0x00]), PB), UnclassifiableRequest);
  assert.throws(() => withDeleteOptions(del(), envelope([0x2a, 0x03, 0x61, 0x6c, 0x6c]), PB), UnclassifiableRequest);
});

test('protobuf the engine cannot read as the API server does is refused', () => {
  const refused = (body: Buffer) => assert.throws(() => withDeleteOptions(del(), body, PB), UnclassifiableRequest);
  refused(Buffer.from(MAGIC)); // the envelope alone
  refused(Buffer.from(DRY_ALL)); // no envelope
  refused(envelope([...DRY_ALL]).subarray(0, -1)); // cut inside dryRun
  refused(Buffer.concat([envelope(DRY_ALL), Buffer.from([0x12, 0x00])])); // a second raw field
  refused(envelope([0x28, 0x01])); // dryRun as a varint
  refused(envelope([0x2b])); // a group
});

test('a DELETE body in a media type other than JSON, YAML or protobuf is refused', () => {
  for (const type of [
    'application/cbor',
    'text/plain',
    'application/json-patch+json',
    'application/json, application/yaml',
    'json',
  ]) {
    assert.throws(() => withDeleteOptions(del(), json({ dryRun: ['All'] }), type), UnreadableDeleteOptions, type);
  }
  assert.equal(mediaType('Application/JSON; charset=utf-8'), 'application/json');
  assert.equal(mediaType('application/json;'), 'application/json');
  assert.equal(mediaType('application/json; charset'), undefined);
});
