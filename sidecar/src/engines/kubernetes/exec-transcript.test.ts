import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ExecTranscript, WebSocketFrameReader } from './exec-transcript.ts';

/** A WebSocket frame, built by hand (RFC 6455 §5.2), masked as a client sends it when `mask` is given. */
function frame(
  opcode: number,
  payload: Buffer,
  options: { fin?: boolean; mask?: Buffer; rsv1?: boolean } = {},
): Buffer {
  const fin = options.fin ?? true;
  const head: number[] = [(fin ? 0x80 : 0) | (options.rsv1 === true ? 0x40 : 0) | opcode];
  const maskBit = options.mask === undefined ? 0 : 0x80;
  if (payload.length < 126) head.push(maskBit | payload.length);
  else if (payload.length < 65536) head.push(maskBit | 126, payload.length >> 8, payload.length & 0xff);
  else {
    head.push(maskBit | 127, 0, 0, 0, 0);
    head.push(
      (payload.length >>> 24) & 0xff,
      (payload.length >>> 16) & 0xff,
      (payload.length >>> 8) & 0xff,
      payload.length & 0xff,
    );
  }
  const mask = options.mask;
  const body = mask === undefined ? payload : Buffer.from(payload.map((b, i) => b ^ (mask[i % 4] ?? 0)));
  return Buffer.concat([Buffer.from(head), ...(mask === undefined ? [] : [mask]), body]);
}

const MASK = Buffer.from([0x12, 0x34, 0x56, 0x78]);
const channel = (n: number, text: string) => Buffer.concat([Buffer.from([n]), Buffer.from(text)]);

test('client frames (masked), fragmented, with a ping between fragments, read at every split point', () => {
  const stream = Buffer.concat([
    frame(0x2, channel(0, 'echo hel'), { fin: false, mask: MASK }),
    frame(0x9, Buffer.from('ping'), { mask: MASK }),
    frame(0x0, Buffer.from('lo\n'), { mask: MASK }),
    frame(0x2, channel(0, 'x'.repeat(300)), { mask: MASK }),
  ]);
  for (let split = 0; split <= stream.length; split++) {
    let got = '';
    const reader = new WebSocketFrameReader((payload) => (got += payload.toString('latin1')));
    reader.push(stream.subarray(0, split));
    reader.push(stream.subarray(split));
    assert.equal(got, `\u0000echo hello\n\u0000${'x'.repeat(300)}`, `split at ${String(split)}`);
    assert.equal(reader.failed, undefined);
  }
});

test('the transcript keeps the bounded beginning of each channel, both directions', () => {
  const t = new ExecTranscript(16);
  t.fromClient.push(frame(0x2, channel(0, 'cat /etc/hostname\n'), { mask: MASK }));
  t.toClient.push(frame(0x2, channel(1, 'node-1\n')));
  t.toClient.push(frame(0x2, channel(2, 'warn\n')));
  t.toClient.push(frame(0x2, channel(3, '{"status":"Success"}')));
  t.fromClient.push(frame(0x2, channel(4, '{"Width":80}'), { mask: MASK }));
  assert.equal(
    t.summary(),
    'stdin (18 B): "cat /etc/hostnam"…; stdout (7 B): "node-1\\n"; stderr (5 B): "warn\\n"; error (20 B): "{\\"status\\":\\"Succe"…',
  );
});

test('a compressed frame (RSV1) stops the transcript and says so', () => {
  const t = new ExecTranscript(64);
  t.fromClient.push(frame(0x2, channel(0, 'secret'), { mask: MASK, rsv1: true }));
  assert.match(t.summary(), /transcript of the client's frames stopped: a frame with reserved bits set/);
  assert.doesNotMatch(t.summary(), /stdin/);
});

test('a 64-bit length frame is read', () => {
  const t = new ExecTranscript(4);
  t.toClient.push(frame(0x2, channel(1, 'y'.repeat(70_000))));
  assert.equal(t.summary(), 'stdout (70000 B): "yyyy"…');
});
