// How a command an approve rule decided becomes the statement gate's verdict (statement-gate.ts): held until
// its ApprovalRequest settles (the client gets a notice meanwhile), or, for a rule with `wait: false`,
// answered from the identical command's earlier request (core/approvals). Approved, it is planned as an
// allowed command is; refused, the refusal; abandoned (the sidecar stops), the connection ends.
import type { AgentSession, ApprovalVerdict, ExactCommand } from '../../core/agent-session.ts';
import { approvalNotice } from '../../core/approvals/approval-notice.ts';
import type { CommandDescription, DecidedCommand, SettledClearance } from '../../core/command.ts';
import { denial, QUERY_CANCELED, sqlStateOf } from './error-responses.ts';
import type { GateVerdict, RelayVerdict, SettledVerdict } from './gate-verdicts.ts';
import type { UndoFailed } from './response-unit.ts';
import type { ErrorFields, TransactionStatus } from './protocol/backend-messages.ts';

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

/** A run approved at its Bind: the verdict its first Execute runs under (taken by it), and its approval. */
export interface ApprovedRun {
  first: RelayVerdict | undefined;
  readonly approval: DecidedCommand['approval'];
}

/**
 * The portals whose run was approved at their Bind and whose first Execute has not come (statement-gate.ts).
 * Each run gets its outcome however its portal ends: from its Execute, or, closed or bound again, its
 * transaction ended, the connection ended, `cancelled` without the approval (it ran under none: only its
 * planning happened); its Bind failed on the server, that error, under the approval (as when its Execute
 * was pipelined behind the Bind and failed with it).
 */
export class UnrunApprovals<P extends { cleared?: ApprovedRun }> {
  private readonly portals = new Set<P>();
  private readonly session: AgentSession;

  constructor(session: AgentSession) {
    this.session = session;
  }

  /** The portal's Bind was approved and forwarded: `run` is what its first Execute runs under. */
  add(portal: P, run: RelayVerdict): void {
    portal.cleared = { first: run, approval: run.command?.approval };
    if (run.command !== undefined) this.portals.add(portal);
  }

  /** Its first Execute takes the approved run (its outcome comes with the Execute's response). */
  take(portal: P): RelayVerdict | undefined {
    const first = portal.cleared?.first;
    if (portal.cleared !== undefined) portal.cleared.first = undefined;
    this.portals.delete(portal);
    return first;
  }

  /** The run will never be executed: its outcome says so (`why`). */
  end(portal: P, why: string): void {
    const command = this.take(portal)?.command;
    if (command === undefined) return;
    const { approval: _approval, ...unrun } = command;
    this.session.complete(unrun, 'sql', { status: 'cancelled', message: `bound, but ${why}; it did not run` });
  }

  /** What a decided Bind takes back when it fails upstream: its portal (`forget`), and its run (failed). */
  undoingBind(portal: P, forget: () => void): UndoFailed {
    return (error) => {
      forget();
      this.failed(portal, error);
    };
  }

  /**
   * Its Bind did not complete upstream: the server refused it (`error`: a parameter it cannot convert, a
   * cancel), or skipped it after an earlier error of the pipeline (undefined). An Execute that already took
   * the run records that error itself (response-tracker.ts).
   */
  failed(portal: P, error: ErrorFields | undefined): void {
    if (error === undefined) {
      this.end(portal, 'its Bind was skipped after an earlier error in its pipeline');
      return;
    }
    const command = this.take(portal)?.command;
    if (command === undefined) return;
    const status = error.code === QUERY_CANCELED ? 'cancelled' : 'error';
    this.session.complete(command, 'sql', { status, code: error.code, message: error.message });
  }

  /**
   * What a ReadyForQuery ends, for a Sync or Query sent now: idle, the runs waiting now end (`forget` drops
   * their portals). Undefined when none waits.
   */
  endingWithTransaction(forget: (portal: P) => void): ((status: TransactionStatus) => void) | undefined {
    if (this.portals.size === 0) return undefined;
    const bound = [...this.portals];
    return (status) => {
      if (status !== 'I') return;
      for (const portal of bound) {
        if (!this.portals.has(portal)) continue;
        this.end(portal, 'its transaction ended before any Execute');
        forget(portal);
      }
    };
  }

  /** Every run still waiting ends (the connection ends). */
  endAll(why: string): void {
    for (const portal of [...this.portals]) this.end(portal, why);
  }
}
