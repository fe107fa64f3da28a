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

function ownerKey(owner: PodChainOwner): string {
  return `${owner.namespace}/${owner.name}/${owner.uid ?? ''}`;
}

export class PodChain {
  private current: string;
  private readonly file: string | undefined;
  private readonly owner: string;
  private readonly logger: Logger | undefined;

  private constructor(owner: PodChainOwner, head: string, file: string | undefined, logger: Logger | undefined) {
    this.owner = ownerKey(owner);
    this.current = head;
    this.file = file;
    this.logger = logger;
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
    return this.current;
  }

  /** Called with the hash of a session's first record once the sink has accepted it. */
  advance(hash: string): void {
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
