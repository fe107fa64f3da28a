// The per-source counts every event loop shares (source-counts.ts): the bound per address, places given back,
// addresses in other slots counted apart, a shared slot sharing one bound, the slot depending on the key, and
// the bound holding exactly when worker threads admit from one address at once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { SOURCE_COUNT_SLOTS, SOURCE_COUNTS_BYTES, SourceCounts, sourceCountsKey } from './source-counts.ts';

const KEY = new Uint8Array(32).fill(7);

function table(slots = SOURCE_COUNT_SLOTS): Int32Array {
  return new Int32Array(new SharedArrayBuffer(slots * Int32Array.BYTES_PER_ELEMENT));
}

/** Two addresses of 127.0.0.x in different slots (with `apart`) or the same slot of `counts`. */
function pair(counts: SourceCounts, apart: boolean): [string, string] {
  const first = '127.0.0.1';
  for (let i = 2; i < 256; i++) {
    const other = `127.0.0.${String(i)}`;
    if ((counts.slotOf(first) === counts.slotOf(other)) !== apart) return [first, other];
  }
  throw new Error('no such pair among 127.0.0.x');
}

test('source counts: up to the bound per address, then refused and not counted; a release gives a place back', () => {
  const slots = table();
  const counts = new SourceCounts(slots, KEY);
  const address = '127.0.0.1';
  for (let i = 0; i < 4; i++) assert.equal(counts.admit(address, 4), true, `admission ${String(i + 1)}`);
  assert.equal(counts.admit(address, 4), false);
  assert.equal(counts.admit(address, 4), false);
  assert.equal(slots[counts.slotOf(address)], 4, 'a refusal leaves the count as it was');
  counts.release(address);
  assert.equal(counts.admit(address, 4), true);
  assert.equal(counts.admit(address, 4), false);
  for (let i = 0; i < 4; i++) counts.release(address);
  assert.equal(
    slots.every((n) => n === 0),
    true,
  );
});

test('source counts: addresses in other slots are counted apart; two in one slot share one bound (stricter)', () => {
  const counts = new SourceCounts(table(), KEY);
  const [a, b] = pair(counts, true);
  assert.equal(counts.admit(a, 1), true);
  assert.equal(counts.admit(a, 1), false);
  assert.equal(counts.admit(b, 1), true, 'another slot has its own bound');
  // Eight slots: two of 127.0.0.x land on one.
  const few = new SourceCounts(table(8), KEY);
  const [c, d] = pair(few, false);
  assert.equal(few.admit(c, 2), true);
  assert.equal(few.admit(d, 2), true);
  assert.equal(few.admit(c, 2), false, 'a shared slot holds the bound for both together');
  assert.equal(few.admit(d, 2), false);
  few.release(d);
  assert.equal(few.admit(c, 2), true);
});

test('source counts: the slot is a keyed hash (another key, other slots); the table is a power of two', () => {
  const addresses = Array.from({ length: 64 }, (_, i) => `10.0.${String(i)}.1`);
  const one = new SourceCounts(table(), sourceCountsKey());
  const other = new SourceCounts(table(), sourceCountsKey());
  const same = addresses.filter((a) => one.slotOf(a) === other.slotOf(a)).length;
  // By chance 64 / 4096 on average; a key that did not change the slots would give 64.
  assert.ok(same < 8, `${String(same)} of 64 addresses in the same slot under two keys`);
  assert.equal(new SourceCounts(table(), KEY).slotOf('::1'), new SourceCounts(table(), KEY).slotOf('::1'));
  assert.equal(SOURCE_COUNTS_BYTES, SOURCE_COUNT_SLOTS * 4);
  assert.throws(() => new SourceCounts(table(100), KEY), /a power of two, not 100/);
});

test('source counts: threads admitting from one address at once admit exactly the bound together', async () => {
  const buffer = new SharedArrayBuffer(SOURCE_COUNTS_BYTES);
  const bound = 5;
  const threads = 4;
  const tries = 50;
  // Each thread: tries admissions of one address at once with the others (a start gate in shared memory),
  // posting how many it got; then, when told, releases them.
  const script = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.module).then(({ SourceCounts }) => {
      const counts = new SourceCounts(new Int32Array(workerData.buffer), workerData.key);
      const gate = new Int32Array(workerData.gate);
      Atomics.add(gate, 0, 1);
      while (Atomics.load(gate, 0) < workerData.threads) {}
      let admitted = 0;
      for (let i = 0; i < workerData.tries; i++) if (counts.admit('127.0.0.1', workerData.bound)) admitted++;
      parentPort.postMessage(admitted);
      parentPort.once('message', () => {
        for (let i = 0; i < admitted; i++) counts.release('127.0.0.1');
        parentPort.postMessage('released');
      });
    });
  `;
  const gate = new SharedArrayBuffer(4);
  const workerData = {
    module: new URL('./source-counts.ts', import.meta.url).href,
    buffer,
    key: KEY,
    gate,
    threads,
    tries,
    bound,
  };
  const workers = Array.from({ length: threads }, () => new Worker(script, { eval: true, workerData }));
  try {
    const next = (w: Worker) =>
      new Promise<unknown>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      });
    const admitted = (await Promise.all(workers.map(next))) as number[];
    assert.equal(
      admitted.reduce((a, b) => a + b, 0),
      bound,
      `per thread: ${admitted.join(', ')}`,
    );
    const counts = new SourceCounts(new Int32Array(buffer), KEY);
    assert.equal(Atomics.load(new Int32Array(buffer), counts.slotOf('127.0.0.1')), bound);
    assert.equal(counts.admit('127.0.0.1', bound), false);
    const released = workers.map(next);
    for (const w of workers) w.postMessage('release');
    assert.deepEqual(
      await Promise.all(released),
      workers.map(() => 'released'),
    );
    assert.equal(
      new Int32Array(buffer).every((n) => n === 0),
      true,
    );
    assert.equal(counts.admit('127.0.0.1', bound), true);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
});
