import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { AuditUnavailable } from './audit-sink.ts';
import { decodeFrames, Spool } from './spool.ts';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'chaperone-spool-test-'));
  dirs.push(dir);
  return dir;
}
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A frame built by hand from the documented layout, independent of the production encoder. */
function handFrame(id: number, text: string): Buffer {
  const payload = Buffer.from(text);
  const body = Buffer.concat([
    Buffer.from([0, 0, 0, 0, (id >>> 24) & 255, (id >>> 16) & 255, (id >>> 8) & 255, id & 255]),
    payload,
  ]);
  const header = Buffer.alloc(8);
  header.writeUInt32BE(payload.length, 0);
  header.writeUInt32BE(crc32(body), 4);
  return Buffer.concat([header, body]);
}

function segmentFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith('segment-'))
    .sort();
}

describe('Spool', () => {
  it('writes entries in the documented frame layout and reads them back after reopening', async () => {
    const dir = tempDir();
    const { spool, entries } = Spool.open({ dir, maxBytes: 1 << 20 });
    assert.deepEqual(entries, []);
    assert.equal(spool.append(Buffer.from('one')), 1);
    assert.equal(spool.append(Buffer.from('two')), 2);
    await spool.whenDurable();
    assert.equal(spool.durableId, 2);
    await spool.close();
    const [file] = segmentFiles(dir);
    assert.ok(file !== undefined);
    assert.deepEqual(readFileSync(join(dir, file)), Buffer.concat([handFrame(1, 'one'), handFrame(2, 'two')]));

    const reopened = Spool.open({ dir, maxBytes: 1 << 20 });
    assert.deepEqual(
      reopened.entries.map((e) => [e.id, e.payload.toString()]),
      [
        [1, 'one'],
        [2, 'two'],
      ],
    );
    assert.equal(reopened.spool.append(Buffer.from('three')), 3);
    await reopened.spool.close();
  });

  it('frames text entries (multi-byte, one larger than the pending buffer) as append() frames their bytes', async () => {
    const dir = tempDir();
    const { spool } = Spool.open({ dir, maxBytes: 1 << 22, durability: 'Written' });
    const texts = ['{"a":"é€😀"}', 'x'.repeat(200_000), '', 'lone \ud800 surrogate', 'last'];
    texts.forEach((t, i) => assert.equal(spool.appendText(t, i % 2 === 0), i + 1));
    assert.equal(spool.append(Buffer.from('bytes')), texts.length + 1);
    await spool.whenDurable();
    // A second turn reuses the pending buffer: its frames must not carry the first turn's bytes.
    assert.equal(spool.appendText('next turn'), texts.length + 2);
    await spool.close();
    const [file] = segmentFiles(dir);
    assert.ok(file !== undefined);
    const expected = [...texts, 'bytes', 'next turn'].map((t, i) => handFrame(i + 1, t));
    assert.deepEqual(readFileSync(join(dir, file)), Buffer.concat(expected));
    const reopened = Spool.open({ dir, maxBytes: 1 << 22 });
    assert.deepEqual(
      reopened.entries.map((e) => e.payload.toString()),
      [...texts.map((t) => Buffer.from(t).toString()), 'bytes', 'next turn'],
    );
    await reopened.spool.close();
  });

  it('commits appends made while a sync runs in one further batch', async () => {
    const dir = tempDir();
    const commits: number[] = [];
    const { spool } = Spool.open({ dir, maxBytes: 1 << 20, onCommit: (n) => commits.push(n) });
    spool.append(Buffer.from('a'));
    const first = spool.whenDurable();
    spool.append(Buffer.from('b'));
    assert.equal(spool.whenDurable(), first, 'appends before the commit starts share a batch');
    await new Promise((resolve) => setImmediate(resolve)); // the commit has started; its fdatasync runs
    const running = spool.whenDurable();
    for (let i = 0; i < 50; i++) spool.append(Buffer.from(`c${String(i)}`));
    const next = spool.whenDurable();
    assert.notEqual(next, running);
    await next;
    assert.deepEqual(commits, [2, 50]);
    assert.equal(spool.whenDurable(), undefined, 'nothing pending: no promise');
    await spool.close();
  });

  it('with durability Written, whenDurable() waits for one write of the pending entries and the sync follows', async () => {
    const dir = tempDir();
    const commits: number[] = [];
    const { spool } = Spool.open({ dir, maxBytes: 1 << 20, durability: 'Written', onCommit: (n) => commits.push(n) });
    spool.append(Buffer.from('one'));
    spool.append(Buffer.from('two'));
    const written = spool.whenDurable();
    assert.ok(written !== undefined);
    assert.equal(spool.whenDurable(), written, 'appends of one turn share one write');
    assert.deepEqual(segmentFiles(dir), [], 'nothing written before the commit');
    await written;
    assert.equal(spool.whenDurable(), undefined, 'nothing to wait for once written');
    const [file] = segmentFiles(dir);
    assert.ok(file !== undefined);
    assert.deepEqual(readFileSync(join(dir, file)), Buffer.concat([handFrame(1, 'one'), handFrame(2, 'two')]));
    const synced = spool.whenSynced();
    assert.ok(synced !== undefined);
    await synced;
    assert.equal(spool.durableId, 2);
    assert.deepEqual(commits, [2], 'one fdatasync for both');
    assert.equal(spool.whenSynced(), undefined);
    await spool.close();
  });

  it('with durability Written, background syncs start no more often than the interval, and close syncs at once', async () => {
    const dir = tempDir();
    const commits: number[] = [];
    const { spool } = Spool.open({
      dir,
      maxBytes: 1 << 20,
      durability: 'Written',
      writtenSyncIntervalMs: 3_600_000,
      onCommit: (n) => commits.push(n),
    });
    spool.append(Buffer.from('first'));
    await spool.whenDurable();
    await spool.whenSynced();
    assert.deepEqual(commits, [1], 'the first sync starts at once');
    for (let i = 2; i <= 10; i++) {
      spool.append(Buffer.from(`entry ${String(i)}`));
      await spool.whenDurable();
    }
    assert.deepEqual(commits, [1], 'written, but no second sync within the interval');
    assert.equal(spool.durableId, 1);
    await spool.close();
    assert.deepEqual(commits, [1, 9], 'close syncs the rest without waiting for the interval');
    const reopened = Spool.open({ dir, maxBytes: 1 << 20 });
    assert.equal(reopened.entries.length, 10);
    await reopened.spool.close();
  });

  it('with durability Written, entries written while a sync runs are synced by the next one, across segment roll-overs', async () => {
    const dir = tempDir();
    const commits: number[] = [];
    const { spool } = Spool.open({
      dir,
      maxBytes: 1 << 22,
      segmentBytes: 4096,
      durability: 'Written',
      onCommit: (n) => commits.push(n),
    });
    const payload = (i: number) => Buffer.from(`${String(i)}:${'y'.repeat(300)}`);
    let n = 0;
    for (let round = 0; round < 40; round++) {
      for (let i = 0; i < 7; i++) spool.append(payload(++n));
      // Every other round waits for the write, so later writes land while the fdatasync runs.
      if (round % 2 === 0) await spool.whenDurable();
    }
    await spool.whenSynced();
    assert.equal(spool.durableId, n);
    assert.equal(
      commits.reduce((a, b) => a + b, 0),
      n,
      'every entry was covered by exactly one group commit',
    );
    assert.ok(segmentFiles(dir).length > 5, 'segments rolled over');
    await spool.close();
    const reopened = Spool.open({ dir, maxBytes: 1 << 22 });
    assert.deepEqual(
      reopened.entries.map((e) => e.payload.toString()),
      Array.from({ length: n }, (_, i) => payload(i + 1).toString()),
    );
    await reopened.spool.close();
  });

  it('refuses entries beyond its bound, keeps a reserve for priority entries, and frees space on acknowledge', async () => {
    const dir = tempDir();
    const { spool } = Spool.open({ dir, maxBytes: 16 * 1024, segmentBytes: 2048, reserveBytes: 1024 });
    const payload = Buffer.alloc(200, 120);
    let ids = 0;
    let refusal: unknown;
    // Batches of five, so segments roll over (a batch never spans segments).
    while (refusal === undefined) {
      try {
        for (let i = 0; i < 5; i++) {
          spool.append(payload);
          ids += 1;
        }
      } catch (err) {
        refusal = err;
      }
      await spool.whenDurable();
    }
    assert.ok(refusal instanceof AuditUnavailable && refusal.reason === 'spool-full');
    assert.ok(spool.usedBytes <= 15 * 1024);
    spool.append(payload, true); // priority entries may use the reserve
    ids += 1;
    await spool.whenDurable();
    const before = segmentFiles(dir).length;
    assert.ok(before > 2);
    spool.acknowledge(ids - 10);
    await spool.whenAcknowledged();
    assert.ok(segmentFiles(dir).length < before, 'acknowledged segments are deleted');
    spool.append(payload);
    await spool.whenDurable();
    spool.acknowledge(spool.lastId);
    assert.equal(spool.usedBytes, 0, 'the space is free at once');
    await spool.whenAcknowledged();
    assert.deepEqual(segmentFiles(dir), []);
    await spool.close();

    const reopened = Spool.open({ dir, maxBytes: 16 * 1024 });
    assert.deepEqual(reopened.entries, [], 'acknowledged entries are not replayed');
    assert.equal(reopened.spool.append(payload), ids + 2, 'ids continue after the acknowledged ones');
    await reopened.spool.close();
  });

  it('rewrites the ack file at most once a second, but always before a segment is deleted', async () => {
    const dir = tempDir();
    const { spool } = Spool.open({ dir, maxBytes: 1 << 20, segmentBytes: 256 });
    // Ten batches of ten (a segment rolls over only between batches).
    for (let i = 1; i <= 100; i++) {
      spool.append(Buffer.from(`entry ${String(i)}`));
      if (i % 10 === 0) await spool.whenDurable();
    }
    const segments = segmentFiles(dir).length;
    assert.ok(segments > 2);
    const ackFile = () => readFileSync(join(dir, 'ack'), 'utf8');
    spool.acknowledge(5);
    await spool.whenAcknowledged();
    assert.equal(ackFile(), '5\n');
    // Within the second and inside the first segment: only memory moves (a replay would re-send 6).
    spool.acknowledge(6);
    await spool.whenAcknowledged();
    assert.equal(ackFile(), '5\n');
    assert.equal(segmentFiles(dir).length, segments);
    // Deleting the first segment writes the file first.
    spool.acknowledge(60);
    await spool.whenAcknowledged();
    assert.ok(segmentFiles(dir).length < segments, 'a segment was deleted');
    assert.equal(ackFile(), '60\n');
    // A crash now (no close): the replay starts right after the acknowledged entries and repairs nothing.
    const reopened = Spool.open({ dir, maxBytes: 1 << 20 });
    assert.deepEqual(reopened.repairs, []);
    assert.equal(reopened.entries[0]?.id, 61);
    await reopened.spool.close();
  });

  it('replays only unacknowledged entries', async () => {
    const dir = tempDir();
    const { spool } = Spool.open({ dir, maxBytes: 1 << 20, segmentBytes: 1024 });
    for (let i = 1; i <= 100; i++) spool.append(Buffer.from(`entry ${String(i)}`));
    await spool.whenDurable();
    spool.acknowledge(40);
    await spool.close();
    const { entries, spool: again } = Spool.open({ dir, maxBytes: 1 << 20 });
    // Whole segments are deleted, so some entries at or below 40 may remain on disk but are not replayed.
    assert.deepEqual(
      entries.map((e) => e.id),
      Array.from({ length: 60 }, (_, i) => i + 41),
    );
    assert.equal(entries[0]?.payload.toString(), 'entry 41');
    await again.close();
  });

  it('truncates a torn tail write and keeps every complete entry', async () => {
    const dir = tempDir();
    const { spool } = Spool.open({ dir, maxBytes: 1 << 20 });
    for (let i = 1; i <= 5; i++) spool.append(Buffer.from(`entry ${String(i)}`));
    await spool.whenDurable();
    await spool.close();
    const [file] = segmentFiles(dir);
    assert.ok(file !== undefined);
    const path = join(dir, file);
    const good = statSync(path).size;
    // Half of a sixth frame, as if the process died inside write().
    appendFileSync(path, handFrame(6, 'entry 6 which never finished').subarray(0, 13));
    const reopened = Spool.open({ dir, maxBytes: 1 << 20 });
    assert.deepEqual(
      reopened.entries.map((e) => e.id),
      [1, 2, 3, 4, 5],
    );
    assert.equal(reopened.repairs.length, 1);
    assert.match(reopened.repairs[0] ?? '', /incomplete frame/);
    assert.equal(statSync(path).size, good, 'the torn bytes are cut off');
    assert.equal(reopened.spool.append(Buffer.from('entry 6')), 6);
    await reopened.spool.whenDurable();
    await reopened.spool.close();
    assert.deepEqual(
      Spool.open({ dir, maxBytes: 1 << 20 }).entries.map((e) => e.payload.toString()),
      ['entry 1', 'entry 2', 'entry 3', 'entry 4', 'entry 5', 'entry 6'],
    );
  });

  it('stops at a frame whose CRC does not match', () => {
    const frames = Buffer.concat([handFrame(1, 'a'), handFrame(2, 'b'), handFrame(3, 'c')]);
    const damaged = Buffer.from(frames);
    damaged[frames.length - 1] = 0x7a; // last payload byte of entry 3
    const decoded = decodeFrames(damaged);
    assert.deepEqual(
      decoded.entries.map((e) => e.id),
      [1, 2],
    );
    assert.match(decoded.problem ?? '', /CRC mismatch/);
    for (let cut = 0; cut < frames.length; cut++) {
      const partial = decodeFrames(frames.subarray(0, cut));
      assert.ok(partial.validBytes <= cut, `cut at ${String(cut)}`);
      assert.ok(partial.entries.every((e, i) => e.id === i + 1));
    }
  });

  it('keeps every acknowledged-durable entry when the writing process is killed with SIGKILL', async () => {
    const dir = tempDir();
    const script = join(dir, 'writer.ts');
    const spoolDir = join(dir, 'spool');
    writeFileSync(
      script,
      `import { Spool } from ${JSON.stringify(new URL('./spool.ts', import.meta.url).pathname)};
const { spool } = Spool.open({ dir: ${JSON.stringify(spoolDir)}, maxBytes: 256 * 1024 * 1024, segmentBytes: 64 * 1024 });
let n = 0;
const payload = 'x'.repeat(300);
for (;;) {
  for (let i = 0; i < 50; i++) { n += 1; spool.append(Buffer.from(n + ':' + payload)); }
  await spool.whenDurable();
  process.stdout.write('durable ' + n + '\\n');
}
`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let durable = 0;
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      createInterface({ input: child.stdout }).on('line', (line) => {
        durable = Number(line.split(' ')[1]);
        // Kill while it is writing at full speed, somewhere in the middle of a batch.
        if (durable >= 2000 && child.exitCode === null) {
          child.kill('SIGKILL');
          resolve();
        }
      });
    });
    await new Promise((resolve) => child.once('exit', resolve));
    const { entries, spool } = Spool.open({ dir: spoolDir, maxBytes: 256 * 1024 * 1024 });
    assert.ok(entries.length >= durable, `${String(entries.length)} entries, ${String(durable)} reported durable`);
    entries.forEach((e, i) => {
      assert.equal(e.id, i + 1);
      assert.ok(e.payload.toString().startsWith(`${String(i + 1)}:`));
    });
    const next = spool.append(Buffer.from('after restart'));
    assert.equal(next, entries.length + 1);
    await spool.close();
  });

  it('with durability Written, keeps every entry whenDurable() reported written when the process is killed with SIGKILL', async () => {
    const dir = tempDir();
    const script = join(dir, 'writer.ts');
    const spoolDir = join(dir, 'spool');
    writeFileSync(
      script,
      `import { Spool } from ${JSON.stringify(new URL('./spool.ts', import.meta.url).pathname)};
const { spool } = Spool.open({ dir: ${JSON.stringify(spoolDir)}, maxBytes: 256 * 1024 * 1024, segmentBytes: 64 * 1024, durability: 'Written' });
let n = 0;
const payload = 'x'.repeat(300);
for (;;) {
  for (let i = 0; i < 50; i++) { n += 1; spool.append(Buffer.from(n + ':' + payload)); }
  await spool.whenDurable();
  process.stdout.write('durable ' + n + '\\n');
}
`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let durable = 0;
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      createInterface({ input: child.stdout }).on('line', (line) => {
        durable = Number(line.split(' ')[1]);
        // Kill while it is writing at full speed, somewhere in the middle of a batch.
        if (durable >= 2000 && child.exitCode === null) {
          child.kill('SIGKILL');
          resolve();
        }
      });
    });
    await new Promise((resolve) => child.once('exit', resolve));
    const { entries, spool } = Spool.open({ dir: spoolDir, maxBytes: 256 * 1024 * 1024 });
    assert.ok(entries.length >= durable, `${String(entries.length)} entries, ${String(durable)} reported durable`);
    entries.forEach((e, i) => {
      assert.equal(e.id, i + 1);
      assert.ok(e.payload.toString().startsWith(`${String(i + 1)}:`));
    });
    const next = spool.append(Buffer.from('after restart'));
    assert.equal(next, entries.length + 1);
    await spool.close();
  });
});
