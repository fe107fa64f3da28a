// Links the sessions of one pod into one chain: the first record of a session takes as its prevHash the
// hash of the first record of the session that started before it in the same pod (GENESIS_HASH for the
// pod's first session). So every session but the pod's newest is named by its successor, and deleting a
// whole session leaves a link that resolves to nothing (docs/audit.md, "Sessions of one pod").
//
// The head survives sidecar restarts in a small file next to the spool (an emptyDir outlives container
// restarts, not the pod). It is replaced by rename, not fsynced: after a crash of the whole node the next
// session may link one session further back, which hides nothing the signed heads do not already show.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { GENESIS_HASH } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';

/** The pod a chain belongs to; a head file left by another pod is ignored. */
export interface PodChainOwner {
  readonly namespace: string;
  readonly name: string;
  readonly uid?: string;
}

interface HeadFile {
  readonly pod: string;
  readonly hash: string;
}

const HASH = /^sha256:[0-9a-f]{64}$/;
/** Length of a head's text (`sha256:` and 64 hex digits), ASCII. */
const HEAD_LENGTH = 71;

/**
 * A pod chain's head in memory shared by the sidecar's event loops (worker threads): an Int32 lock word,
 * then the head's ASCII text. Every loop's PodChain.shared over one buffer links its sessions into one chain.
 */
export function sharedPodChainHead(): SharedArrayBuffer {
  const buffer = new SharedArrayBuffer(4 + HEAD_LENGTH);
  new Uint8Array(buffer, 4).set(Buffer.from(GENESIS_HASH, 'latin1'));
  return buffer;
}

/** The head text and lock of a shared head (sharedPodChainHead). */
class SharedHead {
  private readonly lockWord: Int32Array;
  private readonly text: Buffer;
  constructor(buffer: SharedArrayBuffer) {
    this.lockWord = new Int32Array(buffer, 0, 1);
    this.text = Buffer.from(buffer, 4, HEAD_LENGTH);
  }
  /** Held only while a session's first record is sealed (microseconds), so waiting is rare and short. */
  lock(): void {
    while (Atomics.compareExchange(this.lockWord, 0, 0, 1) !== 0) Atomics.wait(this.lockWord, 0, 1, 1);
  }
  unlock(): void {
    Atomics.store(this.lockWord, 0, 0);
    Atomics.notify(this.lockWord, 0, 1);
  }
  get value(): string {
    return this.text.toString('latin1');
  }
  set value(hash: string) {
    this.text.write(hash, 'latin1');
  }
}

function ownerKey(owner: PodChainOwner): string {
  return `${owner.namespace}/${owner.name}/${owner.uid ?? ''}`;
}

export class PodChain {
  private current: string;
  private readonly sharedHead: SharedHead | undefined;
  private readonly file: string | undefined;
  private readonly owner: string;
  private readonly logger: Logger | undefined;

  private constructor(
    owner: PodChainOwner,
    head: string,
    file: string | undefined,
    logger: Logger | undefined,
    shared?: SharedArrayBuffer,
  ) {
    this.owner = ownerKey(owner);
    this.current = head;
    this.file = file;
    this.logger = logger;
    this.sharedHead = shared === undefined ? undefined : new SharedHead(shared);
  }

  /** A chain whose head is in `buffer` (sharedPodChainHead), shared with the other event loops; in memory only. */
  static shared(owner: PodChainOwner, buffer: SharedArrayBuffer): PodChain {
    return new PodChain(owner, GENESIS_HASH, undefined, undefined, buffer);
  }

  /** A chain kept in memory only (JSON-lines sink, tests): it starts at GENESIS_HASH. */
  static inMemory(owner: PodChainOwner): PodChain {
    return new PodChain(owner, GENESIS_HASH, undefined, undefined);
  }

  /** A chain whose head is kept in `file`; an absent, unreadable or foreign file starts at GENESIS_HASH. */
  static open(owner: PodChainOwner, file: string, logger: Logger): PodChain {
    let head = GENESIS_HASH;
    try {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as Partial<HeadFile>;
      if (saved.pod === ownerKey(owner) && typeof saved.hash === 'string' && HASH.test(saved.hash)) head = saved.hash;
      else logger.warn('pod chain head belongs to another pod or is malformed; starting at genesis', { file });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        logger.warn('pod chain head unreadable; starting at genesis', { file, error: err });
    }
    return new PodChain(owner, head, file, logger);
  }

  /** The prevHash of the next session's first record. */
  get head(): string {
    return this.sharedHead?.value ?? this.current;
  }

  /**
   * Links a session's first record: `seal` gets the head as its prevHash, writes the record and returns its
   * hash, the new head. One step for every event loop sharing the head: two sessions never link to the same
   * predecessor. When `seal` throws (the sink refused the record) the head stays.
   */
  linkSession(seal: (head: string) => string): void {
    const shared = this.sharedHead;
    if (shared === undefined) {
      this.advance(seal(this.current));
      return;
    }
    shared.lock();
    try {
      shared.value = seal(shared.value);
    } finally {
      shared.unlock();
    }
  }

  /** Called with the hash of a session's first record once the sink has accepted it. */
  advance(hash: string): void {
    if (this.sharedHead !== undefined) {
      this.linkSession(() => hash);
      return;
    }
    this.current = hash;
    if (this.file === undefined) return;
    const body: HeadFile = { pod: this.owner, hash };
    try {
      writeFileSync(`${this.file}.tmp`, JSON.stringify(body));
      renameSync(`${this.file}.tmp`, this.file);
    } catch (err) {
      // The chain in memory is still right; only a restart would start one session further back.
      this.logger?.error('could not save the pod chain head', { file: this.file, error: err });
    }
  }
}
