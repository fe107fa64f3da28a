// What a client is told while its command waits for approval: which request holds it, how many approvals it
// needs by when, and the command that approves it. Engines send it in their protocol (a PostgreSQL
// NoticeResponse; a header or a Status message for HTTP engines).
import type { CombinedDecision } from '@chaperone/api';
import type { SidecarError } from '../errors.ts';
import type { HeldCommand } from './approval-desk.ts';

/** A message for the client that is not an error. Starts with `chaperone:` like the errors. */
export interface ClientNotice {
  readonly message: string;
  readonly detail?: string;
  readonly hint?: string;
}

export function approvalNotice(held: HeldCommand, decision: CombinedDecision): ClientNotice {
  const needed = held.requiredApprovals === 1 ? '1 approval' : `${String(held.requiredApprovals)} approvals`;
  return {
    message: `chaperone: statement held for approval: ApprovalRequest ${held.namespace}/${held.name} (policy ${decision.policy}, rule ${decision.rule}) needs ${needed} before ${held.expiresTime}`,
    detail: `The statement runs once, on this connection, when approved; it is bound to ${held.bindingHash}.`,
    hint: `An approver runs: kubectl chaperone approve ${held.name} -n ${held.namespace}  (or deny). Cancel the statement to withdraw the request.`,
  };
}

/**
 * The answer to a command an approve rule with `wait: false` decided (ApprovalPending): the request that
 * covers it and what to do. `again`: the identical command came again while its request is still pending.
 */
export function approvalPending(held: HeldCommand, decision: CombinedDecision, again: boolean): SidecarError {
  const needed = held.requiredApprovals === 1 ? '1 approval' : `${String(held.requiredApprovals)} approvals`;
  return {
    id: 'ApprovalPending',
    message: `chaperone: statement ${again ? 'still waits' : 'needs'} approval: ApprovalRequest ${held.namespace}/${held.name} (policy ${decision.policy}, rule ${decision.rule}) needs ${needed} before ${held.expiresTime}; it did not run`,
    detail: `Once approved, the identical statement (same text and parameters) sent again on this session runs once; the approval is bound to ${held.bindingHash}.`,
    hint: `An approver runs: kubectl chaperone approve ${held.name} -n ${held.namespace}  (or deny). Then send the statement again.`,
  };
}
