import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OutboundBytes } from './outbound-bytes.ts';

function recorder() {
  const writes: Buffer[] = [];
  const events: string[] = [];
  return {
    writes,
    events,
    sink: {
      write(b: Buffer) {
        writes.push(b);
        events.push(`write ${b.length}`);
        return true;
      },
      cork: () => events.push('cork'),
      uncork: () => events.push('uncork'),
    },
  };
}

test('consecutive views of one chunk leave as that chunk, without a copy', () => {
  const chunk = Buffer.from('TdataDdataCdoneZI');
  const out = new OutboundBytes();
  out.push(chunk.subarray(0, 5));
  out.push(chunk.subarray(5, 10));
  out.push(chunk.subarray(10, chunk.length));
  const [only, ...rest] = out.take();
  assert.equal(rest.length, 0);
  assert.ok(only !== undefined);
  assert.deepEqual(only, chunk);
  assert.equal(only.buffer, chunk.buffer, 'a view of the same memory, not a copy');
  assert.equal(out.length, 0);
});

test('a replaced frame splits the run; the order of bytes is kept', () => {
  const chunk = Buffer.from('AAAABBBBCCCC');
  const out = new OutboundBytes();
  out.push(chunk.subarray(0, 4));
  out.push(Buffer.from('xx')); // our frame in place of BBBB
  out.push(chunk.subarray(8, 12));
  assert.deepEqual(
    out.take().map((b) => b.toString()),
    ['AAAA', 'xx', 'CCCC'],
  );
});

test('views that are not adjacent are not merged, even in the same memory', () => {
  const chunk = Buffer.from('0123456789');
  const out = new OutboundBytes();
  out.push(chunk.subarray(0, 3));
  out.push(chunk.subarray(5, 7));
  out.push(chunk.subarray(7, 8));
  assert.deepEqual(
    out.take().map((b) => b.toString()),
    ['012', '567'],
  );
});

test('flushTo: one write for one run, one concatenated write for small pieces, a corked writev for large ones', () => {
  const one = recorder();
  const out = new OutboundBytes();
  const chunk = Buffer.from('abcdef');
  out.push(chunk.subarray(0, 3));
  out.push(chunk.subarray(3));
  out.flushTo(one.sink);
  assert.deepEqual(one.events, ['write 6']);

  const small = recorder();
  out.push(Buffer.from('ab'));
  out.push(Buffer.from('cd'));
  out.flushTo(small.sink);
  assert.deepEqual(small.events, ['write 4']);
  assert.equal(small.writes[0]?.toString(), 'abcd');

  const large = recorder();
  out.push(Buffer.alloc(20_000, 1));
  out.push(Buffer.alloc(10, 2));
  out.flushTo(large.sink);
  assert.deepEqual(large.events, ['cork', 'write 20000', 'write 10', 'uncork']);

  const none = recorder();
  out.flushTo(none.sink);
  assert.deepEqual(none.events, []);
});

test('flushTo reports backpressure', () => {
  const out = new OutboundBytes();
  out.push(Buffer.from('x'));
  assert.equal(out.flushTo({ write: () => false, cork: () => undefined, uncork: () => undefined }), false);
});

test('readFrom: a run that spans the whole chunk leaves as that chunk; a run over part of it as a view', () => {
  const chunk = Buffer.from('TdataCdoneZI');
  const out = new OutboundBytes();
  const whole = recorder();
  out.readFrom(chunk);
  out.push(chunk.subarray(0, 5));
  out.push(chunk.subarray(5, 10));
  out.push(chunk.subarray(10));
  out.flushTo(whole.sink);
  assert.equal(whole.writes[0], chunk, 'the chunk object itself');

  const part = recorder();
  out.readFrom(chunk);
  out.push(chunk.subarray(0, 5));
  out.push(chunk.subarray(5, 10));
  out.flushTo(part.sink);
  assert.notEqual(part.writes[0], chunk);
  assert.equal(part.writes[0]?.toString(), 'TdataCdone');

  // Taken once, the chunk is forgotten: a later run of other memory is never mistaken for it.
  const later = recorder();
  const other = Buffer.from(chunk);
  out.push(other.subarray(0, 5));
  out.push(other.subarray(5));
  out.flushTo(later.sink);
  assert.equal(later.writes[0]?.toString(), chunk.toString());
  assert.equal(later.writes[0].buffer, other.buffer);
});
