// The local audit spool: an append-only log of framed entries in segment files, made durable by group
// commit (one fdatasync per batch; appends made while a batch is being synced join the next one) and
// bounded in size. With durability `Written`, `whenDurable()` waits only until the pending frames are
// written into the file (one write per event-loop turn for all of them, on the event loop, no thread-pool
// round trip); the fdatasync still runs behind (at most one every `writtenSyncIntervalMs`), and writes go on
// while it runs. Entries are deleted a whole segment at a time once acknowledged (they are in Kubernetes).
// After a crash, `Spool.open` returns every unacknowledged entry and truncates a torn tail write.
//
// Frame: u32 payload length | u32 CRC-32 of (id, payload) | u32 id high | u32 id low | payload.
// Ids are explicit and contiguous from 1 across the spool's life; the acknowledged id lives in `ack`.
// See docs/audit-durability.md.
import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  fsync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { AuditSpoolDurability as SpoolDurability } from '@chaperone/api';
import { AuditUnavailable } from './audit-sink.ts';

export const FRAME_HEADER_BYTES = 16;
/** Largest payload accepted; a length above this in a header marks the frame as corrupt. */
export const MAX_ENTRY_BYTES = 16 * 1024 * 1024;
const SEGMENT_PREFIX = 'segment-';
const SEGMENT_SUFFIX = '.log';
const ACK_FILE = 'ack';
/**
 * The `ack` file is rewritten at most this often (ms), and always before a segment is deleted: it only spares
 * a replay from re-sending delivered entries, and rewriting it (write + rename) on every acknowledgement
 * cost the sidecar ~1 ms of a busy event loop per batch stored (bench/README.md).
 */
const ACK_FILE_INTERVAL_MS = 1000;
/**
 * The frames appended in one event-loop turn are encoded straight into one buffer, which the commit writes
 * with one writeSync and then reuses: no Buffer per payload, per frame and per batch (bench/README.md). It
 * starts this large and is dropped back to it after a batch that made it grow past PENDING_KEEP_BYTES.
 */
const PENDING_INITIAL_BYTES = 64 * 1024;
const PENDING_KEEP_BYTES = 1024 * 1024;

export interface SpoolOptions {
  /** Directory of the segment files; created if missing. One spool per directory. */
  readonly dir: string;
  /** Bound on the bytes of unacknowledged entries (segments on disk plus pending batches). */
  readonly maxBytes: number;
  /** Segment size at which a new segment starts. Default min(16 MiB, maxBytes / 8). */
  readonly segmentBytes?: number;
  /** Bytes only `priority` appends may use (outcome and end records). Default maxBytes / 16. */
  readonly reserveBytes?: number;
  /** How long after a failed write appends keep failing with `disk-error` before the next try, ms. Default 1000. */
  readonly writeRetryMs?: number;
  /**
   * What `whenDurable()` waits for: `Synced`, the entry's batch written and fdatasync'ed (survives a node
   * crash); `Written`, the entry written into the segment file (survives the process's crash), synced behind.
   * Default `Synced`.
   */
  readonly durability?: SpoolDurability;
  /**
   * With `Written`: the least time between the starts of two background fdatasyncs, ms (what a crash of the
   * node may lose grows by as much). Default 20. Back to back, a sync per batch cost the sidecar ~20 µs of
   * CPU per statement in the kernel at 2,500 statements/s (bench/README.md); nobody waits for them.
   */
  readonly writtenSyncIntervalMs?: number;
  /** Called after each batch is durable, with its size and how long the fdatasync took (seconds). */
  readonly onCommit?: (entries: number, bytes: number, syncSeconds: number) => void;
  /** Called when a write or fsync fails. */
  readonly onError?: (err: Error) => void;
  /**
   * Called with the frames of every write (encoded as in the segment files, in id order), just before they
   * are written; a view valid during the call only. Also with frames a failed sync discards: whoever reads
   * them sees every entry appended (the audit worker thread, docs/audit-durability.md "Threads").
   */
  readonly onFrames?: (frames: Buffer) => void;
}

export interface SpoolEntry {
  readonly id: number;
  /** A view into the segment read at open; valid as long as the caller keeps it. */
  readonly payload: Buffer;
}

export interface SpoolOpenResult {
  readonly spool: Spool;
  /** Every unacknowledged entry found on disk, in id order. */
  readonly entries: SpoolEntry[];
  /** What replay had to repair (torn tail truncated, corrupt frames), for the log. */
  readonly repairs: string[];
}

interface Segment {
  readonly base: number;
  readonly path: string;
  /** Last id written into the segment (base - 1 when empty). */
  last: number;
  /** Bytes written into the segment. */
  bytes: number;
}

/** The fdatasync in flight: the batch it settles, the last id it covers, the file it syncs. */
interface Sync {
  readonly batch: Batch;
  readonly throughId: number;
  readonly fd: number;
  readonly bytes: number;
}

interface Batch {
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

function newBatch(): Batch {
  let resolve: () => void = () => undefined;
  let reject: (err: unknown) => void = () => undefined;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A batch nobody awaits must not become an unhandled rejection; awaiting callers still see the error.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

export function encodeFrame(id: number, payload: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  payload.copy(frame, FRAME_HEADER_BYTES);
  sealFrame(frame, 0, id, payload.length);
  return frame;
}

/** Writes the header of the frame at `offset` of `buf` whose `length` payload bytes follow the header already. */
function sealFrame(buf: Buffer, offset: number, id: number, length: number): void {
  buf.writeUInt32BE(length, offset);
  buf.writeUInt32BE(Math.floor(id / 0x1_0000_0000), offset + 8);
  buf.writeUInt32BE(id >>> 0, offset + 12);
  const end = offset + FRAME_HEADER_BYTES + length;
  buf.writeUInt32BE(crc32(buf.subarray(offset + 8, end)), offset + 4);
}

/**
 * Decodes the frames of one segment; stops at the first incomplete or corrupt frame and reports where.
 * `checkCrc` false: frames this process encoded a moment ago, not read from a file (the audit worker's).
 */
export function decodeFrames(
  data: Buffer,
  checkCrc = true,
): { entries: SpoolEntry[]; validBytes: number; problem?: string } {
  const entries: SpoolEntry[] = [];
  let offset = 0;
  while (offset < data.length) {
    if (data.length - offset < FRAME_HEADER_BYTES) {
      return { entries, validBytes: offset, problem: `incomplete frame header at ${String(offset)}` };
    }
    const length = data.readUInt32BE(offset);
    if (length > MAX_ENTRY_BYTES) {
      return {
        entries,
        validBytes: offset,
        problem: `implausible frame length ${String(length)} at ${String(offset)}`,
      };
    }
    const end = offset + FRAME_HEADER_BYTES + length;
    if (end > data.length) {
      return { entries, validBytes: offset, problem: `incomplete frame at ${String(offset)}` };
    }
    if (checkCrc && crc32(data.subarray(offset + 8, end)) !== data.readUInt32BE(offset + 4)) {
      return { entries, validBytes: offset, problem: `CRC mismatch at ${String(offset)}` };
    }
    const id = data.readUInt32BE(offset + 8) * 0x1_0000_0000 + data.readUInt32BE(offset + 12);
    entries.push({ id, payload: data.subarray(offset + FRAME_HEADER_BYTES, end) });
    offset = end;
  }
  return { entries, validBytes: offset };
}

function segmentName(base: number): string {
  return `${SEGMENT_PREFIX}${String(base).padStart(16, '0')}${SEGMENT_SUFFIX}`;
}

export class Spool {
  readonly dir: string;
  readonly maxBytes: number;
  private readonly segmentBytes: number;
  private readonly reserveBytes: number;
  private readonly writeRetryMs: number;
  private readonly durability: SpoolDurability;
  private readonly onCommit: SpoolOptions['onCommit'];
  private readonly onError: SpoolOptions['onError'];
  private readonly onFrames: SpoolOptions['onFrames'];
  /** Closed segments, oldest first; the active one is separate. */
  private readonly segments: Segment[] = [];
  private active: Segment | undefined;
  private activeFd = -1;
  private nextId: number;
  private acked: number;
  /** Highest id fdatasync'ed, and highest written into a segment file. */
  private durable: number;
  private written: number;
  /** Bytes written since the last sync started (reported by onCommit). */
  private writtenBytes = 0;
  private used = 0;
  /** The frames appended and not yet written: `pendingBytes` bytes of `pending`, `pendingCount` frames. */
  private pending = Buffer.allocUnsafe(PENDING_INITIAL_BYTES);
  private pendingBytes = 0;
  private pendingCount = 0;
  /** Settled by the next sync to start: it covers everything appended before it starts. */
  private pendingBatch: Batch | undefined;
  /** With `Written`: settled when the pending frames are written (the next commit). */
  private writeBatch: Batch | undefined;
  private syncing: Sync | undefined;
  /** A segment file was created since the last sync started: the directory needs an fsync too. */
  private dirDirty = false;
  /** Files of segments rolled over while a sync on them ran: closed when it ends. */
  private retiredFds: number[] = [];
  private scheduled = false;
  private writeFailedUntil = 0;
  private readonly writtenSyncIntervalMs: number;
  /** With `Written`: when the last background sync started (performance.now()), and the timer of the next. */
  private syncStartedAt = -Infinity;
  private syncTimer: NodeJS.Timeout | undefined;
  /** The id the `ack` file holds, and when it was written (Date.now()). */
  private ackFileId: number;
  private ackFileAt = 0;
  /** Acknowledged segments to delete, and the work writing the `ack` file and deleting them (one at a time). */
  private deleting: Segment[] = [];
  private ackWork: Promise<void> | undefined;
  private ackAgain = false;
  private syncFailed: Error | undefined;
  private closed = false;

  private constructor(options: SpoolOptions, nextId: number, acked: number) {
    this.dir = options.dir;
    this.maxBytes = options.maxBytes;
    this.segmentBytes = options.segmentBytes ?? Math.min(16 * 1024 * 1024, Math.floor(options.maxBytes / 8));
    this.reserveBytes = options.reserveBytes ?? Math.floor(options.maxBytes / 16);
    this.writeRetryMs = options.writeRetryMs ?? 1000;
    this.durability = options.durability ?? 'Synced';
    this.writtenSyncIntervalMs = options.writtenSyncIntervalMs ?? 20;
    this.onCommit = options.onCommit;
    this.onError = options.onError;
    this.onFrames = options.onFrames;
    this.nextId = nextId;
    this.acked = acked;
    this.ackFileId = acked;
    this.durable = nextId - 1;
    this.written = nextId - 1;
  }

  /** Opens (or creates) the spool in `options.dir` and reads back every unacknowledged entry. */
  static open(options: SpoolOptions): SpoolOpenResult {
    mkdirSync(options.dir, { recursive: true, mode: 0o700 });
    let acked = 0;
    try {
      const text = readFileSync(join(options.dir, ACK_FILE), 'utf8').trim();
      if (/^[0-9]+$/.test(text)) acked = Number(text);
    } catch {
      // No acknowledgement yet.
    }
    const names = readdirSync(options.dir)
      .filter((n) => n.startsWith(SEGMENT_PREFIX) && n.endsWith(SEGMENT_SUFFIX))
      .sort();
    const entries: SpoolEntry[] = [];
    const repairs: string[] = [];
    const kept: Segment[] = [];
    let maxId = acked;
    for (const name of names) {
      const path = join(options.dir, name);
      const base = Number(name.slice(SEGMENT_PREFIX.length, -SEGMENT_SUFFIX.length));
      const data = readFileSync(path);
      const decoded = decodeFrames(data);
      if (decoded.problem !== undefined) {
        // A torn tail (the process died mid-write) or damage: keep what verifies, cut the rest off.
        repairs.push(`${name}: ${decoded.problem}; truncated ${String(data.length - decoded.validBytes)} bytes`);
        const fd = openSync(path, 'r+');
        try {
          ftruncateSync(fd, decoded.validBytes);
        } finally {
          closeSync(fd);
        }
      }
      let last = base - 1;
      for (const e of decoded.entries) {
        if (e.id <= maxId && e.id > acked) {
          repairs.push(`${name}: entry ${String(e.id)} out of order; skipped`);
          continue;
        }
        last = Math.max(last, e.id);
        if (e.id > acked) {
          if (e.id !== maxId + 1) repairs.push(`${name}: entries ${String(maxId + 1)}..${String(e.id - 1)} missing`);
          entries.push(e);
        }
        maxId = Math.max(maxId, e.id);
      }
      if (last <= acked) {
        unlinkSync(path);
        continue;
      }
      kept.push({ base, path, last, bytes: decoded.validBytes });
    }
    const spool = new Spool(options, maxId + 1, acked);
    for (const s of kept) {
      spool.segments.push(s);
      spool.used += s.bytes;
    }
    return { spool, entries, repairs };
  }

  /** Bytes of unacknowledged entries, on disk and pending. */
  get usedBytes(): number {
    return this.used;
  }

  /** Highest id known to be on durable storage. */
  get durableId(): number {
    return this.durable;
  }

  /** Highest id appended so far. */
  get lastId(): number {
    return this.nextId - 1;
  }

  get acknowledgedId(): number {
    return this.acked;
  }

  /**
   * Appends one entry to the current batch and returns its id. `priority` entries may use the reserve
   * kept back from ordinary ones, so the outcome of a command already let through can still be recorded.
   * Throws AuditUnavailable (`spool-full`, `disk-error`, `closed`) when the entry cannot be accepted.
   */
  append(payload: Buffer, priority = false): number {
    const id = this.reserve(payload.length, priority);
    payload.copy(this.pending, this.pendingBytes + FRAME_HEADER_BYTES);
    return this.appended(id, payload.length);
  }

  /** append() of `text` in UTF-8, encoded straight into the pending frames. */
  appendText(text: string, priority = false): number {
    const length = Buffer.byteLength(text);
    const id = this.reserve(length, priority);
    const written = this.pending.write(text, this.pendingBytes + FRAME_HEADER_BYTES, length, 'utf8');
    return this.appended(id, written);
  }

  /** Checks that an entry of `length` bytes can be taken, makes room for its frame and returns its id. */
  private reserve(length: number, priority: boolean): number {
    if (this.closed) throw new AuditUnavailable('closed', 'audit spool is closed');
    if (this.syncFailed !== undefined) {
      throw new AuditUnavailable('disk-error', `audit spool cannot sync: ${this.syncFailed.message}`);
    }
    if (this.writeFailedUntil !== 0) {
      if (Date.now() < this.writeFailedUntil) {
        throw new AuditUnavailable('disk-error', 'audit spool write failed recently');
      }
      this.writeFailedUntil = 0;
    }
    const size = FRAME_HEADER_BYTES + length;
    if (length > MAX_ENTRY_BYTES) throw new AuditUnavailable('disk-error', 'audit entry too large');
    const limit = priority ? this.maxBytes : this.maxBytes - this.reserveBytes;
    if (this.used + size > limit) {
      throw new AuditUnavailable(
        'spool-full',
        `audit spool is full (${String(this.used)} of ${String(this.maxBytes)} bytes unacknowledged)`,
      );
    }
    const need = this.pendingBytes + size;
    if (need > this.pending.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, this.pending.length * 2));
      this.pending.copy(grown, 0, 0, this.pendingBytes);
      this.pending = grown;
    }
    return this.nextId;
  }

  /** The frame of entry `id` (its payload in place after the header) is complete: seals and counts it. */
  private appended(id: number, length: number): number {
    const size = FRAME_HEADER_BYTES + length;
    sealFrame(this.pending, this.pendingBytes, id, length);
    this.nextId = id + 1;
    this.pendingBytes += size;
    this.pendingCount += 1;
    this.used += size;
    this.schedule();
    return id;
  }

  /**
   * Resolves when every entry appended so far is durable in the spool's durability (rejects with
   * AuditUnavailable if that failed); undefined when nothing is waiting, so callers on the fast path
   * allocate nothing. `Written`: when the pending entries are written into the file (the commit at the end
   * of this event-loop turn writes everything appended in it at once).
   */
  whenDurable(): Promise<void> | undefined {
    if (this.durability === 'Synced') return this.whenSynced();
    if (this.pendingCount === 0) return undefined;
    this.writeBatch ??= newBatch();
    return this.writeBatch.promise;
  }

  /** Resolves when every entry appended so far is fdatasync'ed (whatever the durability); undefined when it is. */
  whenSynced(): Promise<void> | undefined {
    // After a failed sync nothing more becomes durable; the failure was reported to the waiters then.
    if (this.syncFailed !== undefined) return undefined;
    if (this.pendingCount > 0 || this.written > Math.max(this.durable, this.syncing?.throughId ?? 0)) {
      this.pendingBatch ??= newBatch();
      return this.pendingBatch.promise;
    }
    return this.syncing?.batch.promise;
  }

  /**
   * Marks every entry up to `id` as delivered; whole segments at or below it are deleted. Their space counts
   * as free at once; the `ack` file and the deletions are done on libuv's threads (whenAcknowledged()): a
   * rename and the unlink of a 16 MiB segment each held the event loop for milliseconds (bench/README.md).
   */
  acknowledge(id: number): void {
    const upTo = Math.min(id, this.durable);
    if (upTo <= this.acked) return;
    this.acked = upTo;
    let deletes = false;
    while (this.segments.length > 0 && (this.segments[0]?.last ?? Infinity) <= upTo) {
      const s = this.segments.shift();
      if (s === undefined) break;
      this.used -= s.bytes;
      this.deleting.push(s);
      deletes = true;
    }
    const active = this.active;
    if (
      active !== undefined &&
      active.last <= upTo &&
      this.syncing === undefined &&
      this.pendingCount === 0 &&
      active.bytes > 0
    ) {
      // Everything in the active segment is delivered: drop it so its space comes back now.
      closeSync(this.activeFd);
      this.activeFd = -1;
      this.active = undefined;
      this.used -= active.bytes;
      this.deleting.push(active);
      deletes = true;
    }
    if (deletes || Date.now() - this.ackFileAt >= ACK_FILE_INTERVAL_MS) this.startAckWork();
  }

  /** Resolves once the `ack` file and the segment deletions of every acknowledge() so far are done. */
  async whenAcknowledged(): Promise<void> {
    while (this.ackWork !== undefined) await this.ackWork;
  }

  private startAckWork(): void {
    if (this.ackWork !== undefined) {
      this.ackAgain = true;
      return;
    }
    this.ackAgain = false;
    this.ackWork = this.ackFileAndDeletions().finally(() => {
      this.ackWork = undefined;
      // Acknowledged meanwhile: once more, with what came in.
      if (this.ackAgain) this.startAckWork();
    });
  }

  /** The `ack` file, then the segments it covers (never the other way round). */
  private async ackFileAndDeletions(): Promise<void> {
    const deleting = this.deleting;
    this.deleting = [];
    // Before any segment goes: a replay must never find the ack file behind a deleted segment's entries.
    await this.writeAckFile();
    for (const s of deleting) {
      await unlink(s.path).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.onError?.(err as Error);
      });
    }
  }

  private async writeAckFile(): Promise<void> {
    const acked = this.acked;
    if (acked <= this.ackFileId) return;
    try {
      const tmp = join(this.dir, `${ACK_FILE}.tmp`);
      await writeFile(tmp, `${String(acked)}\n`);
      await rename(tmp, join(this.dir, ACK_FILE));
      this.ackFileId = acked;
      this.ackFileAt = Date.now();
    } catch (err) {
      // Only an optimisation: without it replay re-sends entries the writer then skips as already present.
      this.onError?.(err as Error);
    }
  }

  /** Waits for pending batches and closes the files. Appends after this throw `closed`. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.syncTimer !== undefined) {
      // Closing does not wait out the interval between background syncs.
      clearTimeout(this.syncTimer);
      this.syncTimer = undefined;
      this.syncStartedAt = -Infinity;
      this.commit();
    }
    for (let b = this.whenSynced(); b !== undefined; b = this.whenSynced()) {
      await b.catch(() => undefined);
    }
    this.startAckWork();
    await this.whenAcknowledged();
    if (this.activeFd >= 0) closeSync(this.activeFd);
    this.activeFd = -1;
  }

  private schedule(): void {
    if (this.scheduled) return;
    // `Synced` writes a batch only when its sync can start; `Written` writes while a sync runs.
    if (this.durability === 'Synced' && this.syncing !== undefined) return;
    this.scheduled = true;
    setImmediate(this.commit);
  }

  /**
   * Writes the pending frames into the active segment with one write (rolling over to a new segment at a
   * batch boundary) and returns undefined, or fails their batch and returns the error.
   */
  private writePending(): AuditUnavailable | undefined {
    const bytes = this.pendingBytes;
    const lastId = this.nextId - 1;
    const firstId = lastId - this.pendingCount + 1;
    // Written synchronously below, so the buffer can take the next turn's frames once this returns.
    const data = this.pending.subarray(0, bytes);
    this.onFrames?.(data);
    this.pendingBytes = 0;
    this.pendingCount = 0;
    if (this.pending.length > PENDING_KEEP_BYTES) this.pending = Buffer.allocUnsafe(PENDING_INITIAL_BYTES);
    let startOffset = 0;
    try {
      if (this.active !== undefined && this.active.bytes > 0 && this.active.bytes + bytes > this.segmentBytes) {
        this.retireActive();
      }
      if (this.active === undefined) {
        const path = join(this.dir, segmentName(firstId));
        this.activeFd = openSync(path, 'a', 0o600);
        this.active = { base: firstId, path, last: firstId - 1, bytes: statSync(path).size };
        // A new segment's directory entry must be durable too, or a crash could lose the whole file.
        this.dirDirty = true;
      }
      const segment = this.active;
      startOffset = segment.bytes;
      let done = 0;
      while (done < data.length) done += writeSync(this.activeFd, data, done);
      segment.bytes += bytes;
      segment.last = lastId;
    } catch (err) {
      return this.failWrite(err as Error, bytes, startOffset);
    }
    this.written = lastId;
    this.writtenBytes += bytes;
    return undefined;
  }

  /** Closes the active segment (after a sync of what the running sync may not cover) and keeps it for deletion. */
  private retireActive(): void {
    const active = this.active;
    if (active === undefined) return;
    if (this.written > this.durable) {
      // Writes a running sync may not cover are in this file (only with `Written`): sync them now, once a
      // segment. Earlier segments were synced when they rolled over, so everything written is durable.
      const started = process.hrtime.bigint();
      this.syncNow();
      this.onCommit?.(this.written - this.durable, this.writtenBytes, Number(process.hrtime.bigint() - started) / 1e9);
      this.durable = this.written;
      this.writtenBytes = 0;
    }
    // A running sync still uses the file: close it when that sync ends.
    if (this.syncing !== undefined && this.syncing.fd === this.activeFd) this.retiredFds.push(this.activeFd);
    else closeSync(this.activeFd);
    this.activeFd = -1;
    this.segments.push(active);
    this.active = undefined;
  }

  /** One group commit: write what is pending, then one fdatasync for everything written so far. */
  private readonly commit = (): void => {
    this.scheduled = false;
    if (this.pendingCount > 0 && (this.durability === 'Written' || this.syncing === undefined)) {
      const written = this.writeBatch;
      this.writeBatch = undefined;
      const failed = this.writePending();
      if (failed !== undefined) {
        written?.reject(failed);
        return;
      }
      written?.resolve();
    }
    if (this.syncing !== undefined) return;
    if (this.written <= this.durable || this.activeFd < 0) {
      // Nothing to sync (or the last segment was dropped by acknowledge(), its entries all delivered).
      this.durable = this.written;
      const batch = this.pendingBatch;
      this.pendingBatch = undefined;
      batch?.resolve();
      return;
    }
    if (this.durability === 'Written') {
      // Nobody waits for this sync: start it no sooner than the interval after the last one.
      const wait = this.syncStartedAt + this.writtenSyncIntervalMs - performance.now();
      if (wait > 0 && !this.closed) {
        this.syncTimer ??= setTimeout(() => {
          this.syncTimer = undefined;
          this.commit();
        }, wait);
        return;
      }
      this.syncStartedAt = performance.now();
    }
    const batch = this.pendingBatch ?? newBatch();
    this.pendingBatch = undefined;
    const sync: Sync = { batch, throughId: this.written, fd: this.activeFd, bytes: this.writtenBytes };
    this.syncing = sync;
    this.writtenBytes = 0;
    const syncDir = this.dirDirty;
    this.dirDirty = false;
    const started = process.hrtime.bigint();
    fdatasync(sync.fd, (err) => {
      if (err !== null) {
        this.failSync(err);
        return;
      }
      const finish = () => {
        // A roll-over during the sync may have made more durable already (retireActive).
        const entries = sync.throughId - this.durable;
        this.durable = Math.max(this.durable, sync.throughId);
        this.syncing = undefined;
        this.closeRetired();
        if (entries > 0) this.onCommit?.(entries, sync.bytes, Number(process.hrtime.bigint() - started) / 1e9);
        batch.resolve();
        if (this.pendingCount > 0 || this.written > this.durable) this.commit();
      };
      if (!syncDir) {
        finish();
        return;
      }
      let dirFd: number;
      try {
        dirFd = openSync(this.dir, 'r');
      } catch (dirErr) {
        this.failSync(dirErr as Error);
        return;
      }
      fsync(dirFd, (dirErr) => {
        closeSync(dirFd);
        if (dirErr !== null) this.failSync(dirErr);
        else finish();
      });
    });
  };

  /** fdatasync of the active segment on the event loop (only when one rolls over behind a running sync). */
  private syncNow(): void {
    try {
      fdatasyncSync(this.activeFd);
    } catch (err) {
      this.syncFailed = err as Error;
      throw err;
    }
  }

  private closeRetired(): void {
    for (const fd of this.retiredFds) closeSync(fd);
    this.retiredFds = [];
  }

  private failWrite(err: Error, bytes: number, startOffset: number): AuditUnavailable {
    // Cut a partial write back off so the segment stays a clean sequence of frames; the batch is lost.
    if (this.activeFd >= 0) {
      try {
        ftruncateSync(this.activeFd, startOffset);
      } catch {
        // The replay's torn-tail check covers it.
      }
    }
    this.used -= bytes;
    this.writeFailedUntil = Date.now() + this.writeRetryMs;
    this.onError?.(err);
    const failure = new AuditUnavailable('disk-error', `audit spool write failed: ${err.message}`, { cause: err });
    // Entries appended before it may already be written; those wait for the next sync as usual.
    const batch = this.pendingBatch;
    this.pendingBatch = undefined;
    batch?.reject(failure);
    return failure;
  }

  private failSync(err: Error): void {
    // After a failed fsync the page cache can no longer be trusted (the kernel may have dropped the
    // dirty pages); the spool refuses everything from now on.
    this.syncFailed = err;
    const sync = this.syncing;
    this.syncing = undefined;
    this.closeRetired();
    this.onError?.(err);
    sync?.batch.reject(new AuditUnavailable('disk-error', `audit spool fsync failed: ${err.message}`, { cause: err }));
    this.failPending(err);
  }

  private failPending(err: Error): void {
    const written = this.writeBatch;
    this.writeBatch = undefined;
    written?.reject(new AuditUnavailable('disk-error', `audit spool fsync failed: ${err.message}`, { cause: err }));
    const batch = this.pendingBatch;
    if (this.pendingBytes > 0) this.onFrames?.(this.pending.subarray(0, this.pendingBytes));
    this.used -= this.pendingBytes;
    this.pendingBytes = 0;
    this.pendingCount = 0;
    this.pendingBatch = undefined;
    batch?.reject(new AuditUnavailable('disk-error', `audit spool write failed: ${err.message}`, { cause: err }));
  }
}
