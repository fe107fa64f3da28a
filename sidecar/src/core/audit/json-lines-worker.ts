// The JSON-lines audit worker thread (json-lines-writer.ts): keeps each session's link and the pod chain's
// head, seals the records the event loops hand over (sealLinked, as RecordChain does on its own thread for
// the other sinks) and writes their lines through a JsonLinesSink into the one file. Started by
// JsonLinesWorker; never imported by the main thread. A record it cannot seal (its canonical text cannot be
// computed: a bigint, a cycle) ends the thread once the lines before it are written: the main thread learns
// of it as of any failure of this thread and stops the sidecar (exit 70, docs/audit.md "JSON lines").
import { createWriteStream } from 'node:fs';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type { AuditRecord, KnownMember } from '@chaperone/api';
import { GENESIS_HASH, sealLinked } from '@chaperone/api/audit-seal';
import { JsonLinesSink, type RecordOrigin } from './audit-sink.ts';
import type {
  FromJsonLinesWorker,
  JsonLinesWorkerData,
  RecordMembers,
  ToJsonLinesWorker,
} from './json-lines-writer.ts';
import { ENTRY_MEMBERS, ENTRY_SLOTS } from './json-lines-protocol.ts';

const parent = parentPort;
if (parent === null) throw new Error('json-lines-worker.ts runs as a worker thread (json-lines-writer.ts)');
const { fd } = workerData as JsonLinesWorkerData;
// The main thread opened the file and closes it after `closed`.
const lines = new JsonLinesSink(createWriteStream('', { fd, autoClose: false }));

/** A session's chain so far: its origin (what JsonLinesSink keys its line prefix by) and its last hash. */
interface Link {
  readonly origin: RecordOrigin;
  prevHash: string;
}

/** The prevHash of the next session's first record (in memory, as PodChain.inMemory: JSON lines have no head file). */
let podHead = GENESIS_HASH;
/** The member a record's known text stands for (json-lines-writer.ts replaces it by undefined to post it). */
const STAND_IN = Object.freeze({});

/** A record that could not be sealed or written; its message names the record's seq, never its content. */
class UnsealableRecord extends Error {
  override name = 'UnsealableRecord';
}

/** Set once the thread is failing: nothing more is written. */
let failing = false;

/**
 * Fails the thread: the lines written so far reach the file, then the error is thrown outside any handler,
 * so that the Worker's `error` event tells the main thread (json-lines-writer.ts).
 */
function failThread(err: UnsealableRecord): void {
  if (failing) return;
  failing = true;
  const rethrow = (): void => {
    setImmediate(() => {
      throw err;
    });
  };
  lines.flush().then(rethrow, rethrow);
}

/** Seals and writes one sender's records, in the order it posted them. */
function writeRecords(links: Map<number, Link>, entries: unknown[], released: number[]): void {
  for (let i = 0; i < entries.length; i += ENTRY_SLOTS) {
    try {
      writeEntry(links, entries, i);
    } catch (err) {
      const seq = (entries[i + 3] as { seq?: unknown } | null)?.seq;
      throw new UnsealableRecord(
        `a JSON-lines audit record (seq ${typeof seq === 'number' ? String(seq) : '?'}) cannot be sealed or written: ` +
          `${(err as Error).name}, its canonical text cannot be computed`,
      );
    }
  }
  for (const key of released) links.delete(key);
}

/** Seals (or takes as sealed) and writes the record at `entries[i]`. */
function writeEntry(links: Map<number, Link>, entries: unknown[], i: number): void {
  const key = entries[i + 1] as number;
  const origin = entries[i + 2] as RecordOrigin | null;
  let link = links.get(key);
  const first = origin !== null;
  if (first) {
    link = { origin, prevHash: podHead };
    links.set(key, link);
  }
  if (link === undefined) throw new Error(`JSON-lines audit record of an unknown session (key ${String(key)})`);
  if (entries[i] === ENTRY_MEMBERS) {
    const members = entries[i + 3] as RecordMembers;
    const knownKey = entries[i + 4] as string | null;
    let known: KnownMember[] | undefined;
    if (knownKey !== null) {
      (members as unknown as Record<string, unknown>)[knownKey] = STAND_IN;
      known = [{ key: knownKey, value: STAND_IN, text: entries[i + 5] as string }];
    }
    // As RecordChain: the session's own earlier hashes need no check (`ownHash`), the pod head's is ours too.
    const sealed = sealLinked(members, link.prevHash, known, !first);
    lines.write(link.origin, sealed.record, sealed);
    link.prevHash = sealed.record.hash;
  } else {
    const record = entries[i + 3] as AuditRecord;
    const canonical = entries[i + 4] as string | null;
    const compact = entries[i + 5] as string | null;
    lines.write(link.origin, record, canonical === null || compact === null ? undefined : { canonical, compact });
    link.prevHash = record.hash;
  }
  if (first) podHead = link.prevHash;
}

/** Serves one sender: the main thread (parentPort) or an event loop's port. */
function serve(port: MessagePort): void {
  const links = new Map<number, Link>();
  const reply = (message: FromJsonLinesWorker): void => {
    port.postMessage(message);
  };
  port.on('message', (message: ToJsonLinesWorker) => {
    if (failing) return;
    switch (message.type) {
      case 'records':
        try {
          writeRecords(links, message.entries, message.released);
        } catch (err) {
          if (!(err instanceof UnsealableRecord)) throw err;
          failThread(err);
        }
        return;
      case 'unsealable':
        failThread(
          new UnsealableRecord(
            `a JSON-lines audit record (seq ${String(message.seq)}) cannot be sealed: its event loop could not compute its canonical text`,
          ),
        );
        return;
      case 'flush':
        void lines.flush().then(() => {
          reply({ type: 'flushed', id: message.id });
        });
        return;
      case 'connect':
        serve(message.port);
        return;
      case 'close':
        void lines.close().then(() => {
          reply({ type: 'closed', id: message.id });
        });
        return;
    }
  });
}

serve(parent);
