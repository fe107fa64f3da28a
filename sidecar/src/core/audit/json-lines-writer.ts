// JSON-lines audit records sealed and written off the event loop (docs/audit.md, "JSON lines"; bench/README.md,
// "150 clients"). At 150 clients the main thread is the sidecar's serial stage, and sealing a record (its JCS
// text, SHA-256, the compact line) was ~15 µs of it per statement. The JSON-lines sink makes nothing wait for
// its records, so the chain can be kept elsewhere: RecordChain hands each record's members (seq and time
// assigned, no prevHash, no hash) to this sink, which posts them, batched, to one worker thread
// (json-lines-worker.ts). The worker keeps every session's link and the pod chain's head, seals each record
// exactly as RecordChain does (sealLinked) and writes the lines as JsonLinesSink does: the file is
// byte-for-byte what the sink on the main thread wrote.
//
// With more than one event loop (docs/sidecar-event-loops.md), every loop's sink posts to the same worker
// over a MessagePort of its own: one writer, one pod chain head, a session's records in order.
import { closeSync, existsSync, openSync } from 'node:fs';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import type { AuditRecord, KnownMember, UnhashedRecord } from '@chaperone/api';
import { jcs } from '@chaperone/api/audit-seal';
import { AuditUnavailable, type AuditSink, type RecordOrigin, type SealedText } from './audit-sink.ts';
import { ENTRY_MEMBERS, ENTRY_SEALED, ENTRY_SLOTS } from './json-lines-protocol.ts';

/** A record's members as RecordChain builds them: everything but the link and the hash. */
export type RecordMembers = Omit<UnhashedRecord, 'prevHash'>;

/**
 * How long records wait on the event loop before they go to the worker in one message, ms: each message
 * wakes the worker thread, which costs the posting thread a system call (the audit worker's lesson,
 * audit-worker-client.ts). Lines reach the file within about this plus the writer's 10 ms batch.
 */
const POST_INTERVAL_MS = 20;
/** Records after which a message goes at once, so that no message grows large. */
const POST_MAX_RECORDS = 1024;

/** To the worker, from a sink (its Worker or a loop's MessagePort). */
export type ToJsonLinesWorker =
  | {
      readonly type: 'records';
      readonly entries: unknown[];
      /** Sessions whose chains are gone (no record of theirs can follow): their links are dropped. */
      readonly released: number[];
    }
  | { readonly type: 'flush'; readonly id: number }
  /**
   * A record this sink could neither hand over nor seal (its canonical text cannot be computed): the worker
   * writes what came before it and fails, which stops the sidecar (exit 70). Only its seq, never its content.
   */
  | { readonly type: 'unsealable'; readonly seq: number | undefined }
  /** From the main thread: a loop's port (its records come on it). */
  | { readonly type: 'connect'; readonly port: MessagePort }
  | { readonly type: 'close'; readonly id: number };

/** From the worker, to the sink that asked. */
export type FromJsonLinesWorker =
  { readonly type: 'flushed'; readonly id: number } | { readonly type: 'closed'; readonly id: number };

/** workerData of the JSON-lines worker. */
export interface JsonLinesWorkerData {
  /** The file the lines are appended to (opened by the main thread, which closes it), or 1 (standard output). */
  readonly fd: number;
}

/** Where a sink's messages go and its answers come from: the worker itself, or a loop's port to it. */
interface Channel {
  postMessage(message: ToJsonLinesWorker, transfer?: readonly MessagePort[]): void;
  on(event: 'message', listener: (message: FromJsonLinesWorker) => void): unknown;
}

/**
 * The worker's script: next to this module in the sources; in the sidecar's bundle (sidecar/scripts/build.ts)
 * an entry of its own at the bundle's root, this module being in a chunk.
 */
function workerScript(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL('./json-lines-worker.ts', here);
  for (const candidate of ['./json-lines-worker.js', '../json-lines-worker.js']) {
    const url = new URL(candidate, here);
    if (existsSync(url)) return url;
  }
  throw new Error(`the JSON-lines worker's script is not next to ${here}`);
}

/**
 * The main thread's handle on the worker: opens the file, starts the worker with the first message for it
 * (an idle sidecar has no thread for it: a worker's isolate is ~17 MiB of RSS, bench/README.md), gives event
 * loops their ports to it, and stops it. It is also the main thread's sink's Channel.
 */
class JsonLinesWorker implements Channel {
  private worker: Worker | undefined;
  private readonly listeners: ((message: FromJsonLinesWorker) => void)[] = [];
  private closing = false;
  private readonly fd: number;
  private readonly onFailure: (err: Error) => void;
  /** The main thread's own sink (its event loop's records). */
  readonly sink: JsonLinesWriter;

  /** `onFailure`: the worker failed (an exception, an exit nobody asked for); called once. */
  constructor(path: string, onFailure: (err: Error) => void) {
    // Opened here, at start: a file that cannot be opened fails the sidecar's start, not its first session.
    this.fd = path === '-' ? 1 : openSync(path, 'a');
    this.onFailure = onFailure;
    this.sink = new JsonLinesWriter(this, this);
  }

  private started(): Worker {
    if (this.worker !== undefined) return this.worker;
    const worker = new Worker(workerScript(), { workerData: { fd: this.fd } satisfies JsonLinesWorkerData });
    this.worker = worker;
    let failedOnce = false;
    const fail = (err: Error): void => {
      if (failedOnce || this.closing) return;
      failedOnce = true;
      this.sink.fail(err);
      this.onFailure(err);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      fail(new Error(`the JSON-lines audit worker thread exited (code ${String(code)})`));
    });
    for (const listener of this.listeners) worker.on('message', listener);
    return worker;
  }

  postMessage(message: ToJsonLinesWorker, transfer?: readonly MessagePort[]): void {
    this.started().postMessage(message, transfer);
  }

  on(_event: 'message', listener: (message: FromJsonLinesWorker) => void): void {
    this.listeners.push(listener);
    this.worker?.on('message', listener);
  }

  /** Whether the worker runs (the sink has handed it something). */
  get running(): boolean {
    return this.worker !== undefined;
  }

  /** A port for another event loop's JsonLinesWriter (JsonLinesWriter.overPort in that loop's thread). */
  connect(): MessagePort {
    const { port1, port2 } = new MessageChannel();
    this.postMessage({ type: 'connect', port: port1 }, [port1]);
    return port2;
  }

  /** After the sink's close: every line is written; the worker is stopped and the file closed. */
  async stop(): Promise<void> {
    this.closing = true;
    await this.worker?.terminate();
    if (this.fd !== 1) closeSync(this.fd);
  }
}

/**
 * The sink an event loop writes JSON lines through (AuditSink): records go to the worker as members
 * (writeMembers) or sealed (write), batched per POST_INTERVAL_MS; flush() and close() wait for the worker.
 */
export class JsonLinesWriter implements AuditSink {
  readonly deferrable = true;
  private readonly channel: Channel;
  /** The main thread's sink: the worker it stops once the file is closed. A loop's sink has none. */
  private readonly worker: JsonLinesWorker | undefined;
  private readonly keys = new WeakMap<RecordOrigin, number>();
  private nextKey = 1;
  private entries: unknown[] = [];
  private released: number[] = [];
  private timer: NodeJS.Timeout | undefined;
  private nextId = 1;
  private readonly waiting = new Map<number, () => void>();
  private closed = false;
  private failure: Error | undefined;
  /** A session whose chain is collected can have no more records: the worker may drop its link. */
  private readonly chains = new FinalizationRegistry<number>((key) => {
    if (this.closed) return;
    this.released.push(key);
    this.timer ??= setTimeout(this.post, POST_INTERVAL_MS);
  });

  /** Made by open() (the main thread) and overPort() (a loop). */
  constructor(channel: Channel, worker?: JsonLinesWorker) {
    this.channel = channel;
    this.worker = worker;
    // Every answer (flushed, closed) lets the one who asked go on.
    channel.on('message', (message: FromJsonLinesWorker) => {
      this.waiting.get(message.id)?.();
      this.waiting.delete(message.id);
    });
  }

  /**
   * The main thread's sink, writing to `path` (a file appended to, or `-` for standard output; opened now,
   * throws if it cannot be). The worker thread starts with the first record. `onFailure`: the worker failed
   * (an exception, an exit nobody asked for), once; records are refused from then on.
   */
  static open(path: string, onFailure: (err: Error) => void): JsonLinesWriter {
    return new JsonLinesWorker(path, onFailure).sink;
  }

  /** A loop's sink over the port the main thread's sink gave it (connect()). */
  static overPort(port: MessagePort): JsonLinesWriter {
    return new JsonLinesWriter(port);
  }

  /** For another event loop (the main thread's sink only): a port to the worker, for overPort() in its thread. */
  connect(): MessagePort {
    if (this.worker === undefined) throw new Error("only the main thread's JSON-lines sink connects loops");
    return this.worker.connect();
  }

  /** The worker failed: records are refused from now on, and whoever waits for it is let go. */
  fail(err: Error): void {
    this.failure = err;
    for (const done of this.waiting.values()) done();
    this.waiting.clear();
  }

  private check(): void {
    if (this.closed) throw new AuditUnavailable('closed', 'the JSON-lines audit sink is closed');
    if (this.failure !== undefined)
      throw new AuditUnavailable('disk-error', 'the JSON-lines audit writer failed', { cause: this.failure });
  }

  /** The session's key, and its origin when this is its first record here. */
  private keyOf(session: RecordOrigin): [number, RecordOrigin | null] {
    const key = this.keys.get(session);
    if (key !== undefined) return [key, null];
    const made = this.nextKey++;
    this.keys.set(session, made);
    this.chains.register(session, made);
    return [made, session];
  }

  /**
   * Seals off this thread (RecordChain): `members` in seq order per session, the session's first one
   * linking to the pod chain's head. `known`'s text replaces its member (nothing to clone of it).
   */
  writeMembers(session: RecordOrigin, members: RecordMembers, known: KnownMember | undefined): void {
    this.check();
    const [key, origin] = this.keyOf(session);
    const record = members as unknown as Record<string, unknown>;
    if (known !== undefined && record[known.key] === known.value) {
      record[known.key] = undefined;
      this.entries.push(ENTRY_MEMBERS, key, origin, members, known.key, known.text);
    } else {
      this.entries.push(ENTRY_MEMBERS, key, origin, members, null, null);
    }
    this.schedule();
  }

  /** A record sealed already: written as it is, and the session's chain continues from it. */
  write(session: RecordOrigin, record: AuditRecord, sealed?: SealedText): void {
    this.check();
    const [key, origin] = this.keyOf(session);
    this.entries.push(ENTRY_SEALED, key, origin, record, sealed?.canonical ?? null, sealed?.compact ?? null);
    this.schedule();
  }

  private schedule(): void {
    if (this.entries.length >= POST_MAX_RECORDS * ENTRY_SLOTS) this.post();
    else this.timer ??= setTimeout(this.post, POST_INTERVAL_MS);
  }

  private readonly post = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.entries.length === 0 && this.released.length === 0) return;
    const message: ToJsonLinesWorker = { type: 'records', entries: this.entries, released: this.released };
    this.entries = [];
    this.released = [];
    try {
      this.channel.postMessage(message);
    } catch (err) {
      if (!(err instanceof DOMException && err.name === 'DataCloneError')) throw err;
      // A member structured clone cannot copy (a function, a symbol): its canonical text parsed back is
      // the same record to seal (JCS drops what JSON has no form for, as it did here).
      const entries = message.entries;
      for (let i = 0; i < entries.length; i += ENTRY_SLOTS) {
        const at = i + 3;
        try {
          structuredClone(entries[at]);
        } catch {
          try {
            entries[at] = JSON.parse(jcs(entries[at]) ?? '{}');
          } catch {
            // Nor has it a canonical text (a bigint, a cycle besides): it cannot be sealed. Fail closed as
            // the worker does for such a record: the records before it go, then the worker is told to fail.
            this.unsealable({ ...message, entries: entries.slice(0, i) }, entries[at]);
            return;
          }
        }
      }
      this.channel.postMessage(message);
    }
  };

  /**
   * Hands over `before` (the records before an unsealable one) and has the worker fail after writing them;
   * this sink refuses records from now on. The main thread learns of it from the worker (onFailure).
   */
  private unsealable(before: ToJsonLinesWorker & { type: 'records' }, record: unknown): void {
    const seq = (record as { seq?: unknown } | null)?.seq;
    try {
      this.channel.postMessage(before);
      this.channel.postMessage({ type: 'unsealable', seq: typeof seq === 'number' ? seq : undefined });
    } finally {
      this.fail(new Error(`a JSON-lines audit record (seq ${String(seq)}) cannot be sealed`));
    }
  }

  whenDurable(): undefined {
    return undefined;
  }

  private ask(make: (id: number) => ToJsonLinesWorker): Promise<void> {
    this.post();
    // Nothing handed over yet (the worker starts with the first record), or the worker failed.
    if (this.failure !== undefined || this.worker?.running === false) return Promise.resolve();
    const id = this.nextId++;
    return new Promise<void>((resolve) => {
      this.waiting.set(id, resolve);
      this.channel.postMessage(make(id));
    });
  }

  /** Resolves once every record written so far is sealed and handed to the file. */
  flush(): Promise<void> {
    return this.ask((id) => ({ type: 'flush', id }));
  }

  /**
   * Writes what is left; then a loop's port is closed, and the main thread's sink has the worker close the
   * file (after every loop's sink closed, sidecar.ts) and stops it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    if (this.worker === undefined) {
      (this.channel as MessagePort).close();
      return;
    }
    await this.ask((id) => ({ type: 'close', id }));
    await this.worker.stop();
  }
}
