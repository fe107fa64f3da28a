// The verdicts the statement gate gives the connection (statement-gate.ts), and the refusals it makes of
// names the sidecar cannot vouch for: what crosses from the gate to the connection and the response tracker.
import type { CombinedDecision } from '@chaperone/api';
import type { ClientNotice } from '../../core/approvals/approval-notice.ts';
import type { DecidedCommand } from '../../core/command.ts';
import type { SidecarError } from '../../core/errors.ts';
import { denial, type Denial } from './error-responses.ts';
import type { Bind } from './protocol/frontend-messages.ts';
import type { ResultRewriter } from './masking/row-masker.ts';
import type { TransactionControl } from './transaction-log.ts';

/**
 * What the connection relays at once: the frame, or a failing substitute with our denial. `undo` (for the
 * response tracker's onFailure): what the gate assumed the forwarded message did to the names of statements,
 * portals and cursors, taken back when the upstream refuses or skips it.
 */
export type RelayVerdict =
  /** `rows`: the result masking of the command's response, when its decision masks anything. */
  | {
      readonly action: 'forward';
      readonly command: DecidedCommand | undefined;
      readonly rows?: ResultRewriter;
      readonly undo?: () => void;
      /** What the command does to the transaction, for the rollback records (transaction-log.ts). */
      readonly control?: TransactionControl;
    }
  /** `denial` undefined: the upstream's own error for the substitute is what the client should see. */
  | {
      readonly action: 'substitute';
      readonly command: DecidedCommand | undefined;
      readonly denial: Denial | undefined;
    };

/** What a hold settles into: a relay verdict, or the end of the connection (the sidecar stopped meanwhile). */
export type SettledVerdict =
  RelayVerdict | { readonly action: 'end'; readonly command: DecidedCommand | undefined; readonly error: SidecarError };

export type GateVerdict =
  | RelayVerdict
  | {
      readonly action: 'hold';
      readonly until: Promise<SettledVerdict>;
      /**
       * A hold for approval: the notice for the client once the request is filed (undefined when it could not
       * be; the refusal follows), and how a cancel request withdraws it.
       */
      readonly approval?: { readonly notice: Promise<ClientNotice | undefined>; cancel(why: string): void };
    };

/** An approval hold binds to the bytes that run; bound parameters as format-tagged hex, NULL as NULL. */
export function exactParameters(bind: Bind): string[] {
  return bind.params.map((p, i) => {
    if (p === null) return 'NULL';
    const format = bind.paramFormats.length === 1 ? bind.paramFormats[0] : bind.paramFormats[i];
    return `${format === 1 ? 'binary' : 'text'}:${p.toString('hex')}`;
  });
}

/** Forward, with no decided command (an empty query, a Parse decided again at Execute). */
export const FORWARD: RelayVerdict = Object.freeze({ action: 'forward', command: undefined });

export function undeclaredCursor(name: string): Denial {
  return denial({
    id: 'UnknownPortal',
    message: `chaperone: FETCH or MOVE of ${JSON.stringify(name)}, which was not declared as a cursor through the sidecar (a portal bound by the protocol, or a DECLARE that failed), is not allowed`,
  });
}

export function uncertainRefusal(name: string): Denial {
  return denial({
    id: 'UncertainStatement',
    message: `chaperone: prepared statement ${JSON.stringify(name)} may not be what the sidecar saw prepared (its last Parse, PREPARE, Close or DEALLOCATE failed or was skipped); close or deallocate it and prepare it again`,
  });
}

/**
 * SQL EXECUTE of a name a protocol Parse prepared is not decided as that statement (only SQL PREPAREs are
 * resolved), so it would run whatever the name holds under a decision made without it: refused. A policy
 * reloaded since the Parse reaches Bind/Execute, which is decided again as the statement it runs.
 */
export function protocolStatementRefusal(name: string): Denial {
  return denial({
    id: 'ProtocolStatementExecute',
    message: `chaperone: EXECUTE of ${JSON.stringify(name)}, a statement prepared by a protocol Parse, is not allowed; run it with Bind/Execute`,
  });
}

/** An Execute of a portal the sidecar did not see bound: it has no analysis to decide on. */
export function unknownPortal(): Denial {
  return denial({
    id: 'UnknownPortal',
    message: 'chaperone: executing a portal the sidecar did not see bound is not allowed',
  });
}

/** A statement an approve rule decided in a failed transaction block: the server would ignore it. */
export function approvalInFailedTransaction(): Denial {
  const message =
    'chaperone: current transaction is aborted, commands ignored until end of transaction block; the statement needs approval and was not filed for it';
  return denial({ id: 'ApprovalInFailedTransaction', message });
}

/** A statement prepared while no approve rule matched it: its parameters were not kept exactly. */
export function prepareAgainForApproval(decision: CombinedDecision): Denial {
  return denial({
    id: 'ApprovalRequired',
    message: `chaperone: statement requires approval (policy ${decision.policy}, rule ${decision.rule}); prepare it again so that it can be held`,
  });
}

/** The rule a refusal before policy is recorded under: its catalogue id in kebab case (`UnknownPortal`: `unknown-portal`). */
export function ruleOf(refusal: Denial): string {
  return refusal.id.replace(/[A-Z]/g, (c, at: number) => (at === 0 ? '' : '-') + c.toLowerCase());
}

/** Whether two decisions came from the same rule of the same policy bundle. */
export function sameDecision(a: CombinedDecision, b: CombinedDecision): boolean {
  return a.decision === b.decision && a.policy === b.policy && a.rule === b.rule && a.bundleDigest === b.bundleDigest;
}
