// How a command an approve rule decided becomes the statement gate's verdict (statement-gate.ts): held until
// its ApprovalRequest settles (the client gets a notice meanwhile), or, for a rule with `wait: false`,
// answered from the identical command's earlier request (core/approvals). Approved, it is planned as an
// allowed command is; refused, the refusal; abandoned (the sidecar stops), the connection ends.
import type { AgentSession, ApprovalVerdict, ExactCommand } from '../../core/agent-session.ts';
import { approvalNotice } from '../../core/approvals/approval-notice.ts';
import type { CommandDescription, DecidedCommand, SettledClearance } from '../../core/command.ts';
import { denial, sqlStateOf } from './error-responses.ts';
import type { GateVerdict, RelayVerdict, SettledVerdict } from './gate-verdicts.ts';

/** What the gate lends an approval: the session, and how an approved or audit-refused command is answered. */
export interface ApprovalRun {
  readonly session: AgentSession;
  /** An approved command: planned as an allowed one is (its result masked by the decision's rules). */
  run(command: DecidedCommand): RelayVerdict | Promise<RelayVerdict>;
  /** The audit trail refused the command's decision record. */
  refused(command: DecidedCommand, clearance: Extract<SettledClearance, { state: 'refused' }>): RelayVerdict;
}

/** Files the approval request, holds the command until it settles, then runs it once or refuses it. */
export function holdForApproval(
  approving: ApprovalRun,
  command: DecidedCommand,
  description: CommandDescription,
  exact: ExactCommand,
): GateVerdict {
  const { held, verdict } = approving.session.holdForApproval(command, description, exact);
  const until = recorded(command).then(async (clearance): Promise<SettledVerdict> => {
    if (clearance.state === 'refused') {
      held.cancel('the audit trail refused the decision record');
      await verdict;
      return approving.refused(command, clearance);
    }
    return approvalVerdict(approving, await verdict);
  });
  return {
    action: 'hold',
    until,
    approval: {
      notice: held.filed.then((filed) => (filed ? approvalNotice(held, command.decision) : undefined)),
      cancel: (why) => {
        held.cancel(why);
      },
    },
  };
}

/**
 * An approve rule with wait: false: the command is not held for people. Once its decision record is
 * durable, the session answers it from the identical command's earlier request or files one
 * (AgentSession.requestApproval): it runs, or is refused (ApprovalPending naming the request, or how that
 * request ended).
 */
export function answerApproval(
  approving: ApprovalRun,
  command: DecidedCommand,
  description: CommandDescription,
  exact: ExactCommand,
): GateVerdict {
  const until = recorded(command).then(async (clearance): Promise<SettledVerdict> => {
    if (clearance.state === 'refused') return approving.refused(command, clearance);
    return approvalVerdict(approving, await approving.session.requestApproval(command, description, exact));
  });
  return { action: 'hold', until };
}

/** When the command's decision record is durable (or refused). */
function recorded(command: DecidedCommand): Promise<SettledClearance> {
  const audit = command.audit;
  return audit.state === 'pending' ? audit.settled : Promise.resolve(audit);
}

/** Approved: run; abandoned (the sidecar stops): its outcome, and the connection ends; else refused. */
function approvalVerdict(approving: ApprovalRun, settled: ApprovalVerdict): SettledVerdict | Promise<SettledVerdict> {
  if (settled.run) return approving.run(settled.command);
  if (settled.error.id === 'ApprovalAbandoned') {
    approving.session.complete(settled.command, 'sql', {
      status: 'cancelled',
      code: sqlStateOf('ApprovalAbandoned'),
      message: settled.error.message,
    });
    return { action: 'end', command: settled.command, error: settled.error };
  }
  return { action: 'substitute', command: settled.command, denial: denial(settled.error) };
}
