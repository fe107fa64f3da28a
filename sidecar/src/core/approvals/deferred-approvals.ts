// Approvals a client does not wait for (an approve rule with `wait: false`, docs/approvals.md). The command
// is answered at once with ApprovalPending naming the request, which is filed, followed and recorded as a
// held command's is. The identical command sent again on the same session (the same binding hash: exact
// text, exact parameters, session, resource, requester chain) is answered from that request: still pending,
// ApprovalPending again (no second request); approved, it runs, once; refused (denied, expired, withdrawn),
// that refusal, once. Any other command files its own request. Kept per session, as the hash is; the
// session ending withdraws what is still pending, since nothing could run it any more.
import type { SidecarError } from '../errors.ts';
import type { HeldCommand } from './approval-desk.ts';

/** How a filed request settled, for the identical command when it comes again. */
export type DeferredOutcome =
  | { readonly run: true; readonly approval: { readonly request: string; readonly bindingHash: string } }
  | { readonly run: false; readonly error: SidecarError };

/** Requests one session keeps at most (pending, or settled and not yet asked for again). */
export const MAX_DEFERRED_PER_SESSION = 16;

export type DeferredClaim =
  /** The identical command's request is still pending. */
  | { readonly kind: 'pending'; readonly held: HeldCommand }
  /** It settled: this is its outcome, and it is used up. */
  | { readonly kind: 'settled'; readonly outcome: DeferredOutcome }
  /** No request covers it: file one (remember()). */
  | { readonly kind: 'none' }
  /** No request covers it and the session keeps MAX_DEFERRED_PER_SESSION pending ones. */
  | { readonly kind: 'full' };

interface Entry {
  readonly held: HeldCommand;
  outcome: DeferredOutcome | undefined;
}

const NONE: DeferredClaim = Object.freeze({ kind: 'none' });
const FULL: DeferredClaim = Object.freeze({ kind: 'full' });

export class DeferredApprovals {
  /** By binding hash, in filing order. */
  private readonly entries = new Map<string, Entry>();

  /** What answers a command bound to `bindingHash`; see DeferredClaim. */
  claim(bindingHash: string): DeferredClaim {
    const entry = this.entries.get(bindingHash);
    if (entry !== undefined) {
      if (entry.outcome === undefined) return { kind: 'pending', held: entry.held };
      this.entries.delete(bindingHash);
      return { kind: 'settled', outcome: entry.outcome };
    }
    if (this.entries.size < MAX_DEFERRED_PER_SESSION) return NONE;
    // Settled requests nobody came back for make room, oldest first; pending ones do not.
    for (const [hash, e] of this.entries) {
      if (e.outcome === undefined) continue;
      this.entries.delete(hash);
      return NONE;
    }
    return FULL;
  }

  /**
   * Keeps a filed request until the identical command comes again. `outcome` settles it; undefined: it was
   * never filed, and nothing will come back for it.
   */
  remember(held: HeldCommand, outcome: Promise<DeferredOutcome | undefined>): void {
    const entry: Entry = { held, outcome: undefined };
    this.entries.set(held.bindingHash, entry);
    void outcome.then((settled) => {
      if (this.entries.get(held.bindingHash) !== entry) return;
      if (settled === undefined) this.entries.delete(held.bindingHash);
      else entry.outcome = settled;
    });
  }

  /** The session ended: withdraws the requests still pending and forgets the rest. */
  withdrawAll(why: string): void {
    for (const e of this.entries.values()) if (e.outcome === undefined) e.held.cancel(why);
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
