// An HTTP request held for approval (core/approvals) by the Kubernetes and HTTP engines: what the approval is
// bound to (the method, the exact URL as sent, the headers that change how the body is read, and the exact
// body bytes), and the wait itself, withdrawn when the client goes away. The request body is already read:
// once approved it is forwarded exactly once, as it was bound.
import type { IncomingMessage } from 'node:http';
import type { AgentSession, ApprovalVerdict } from '../../core/agent-session.ts';
import type { CommandDescription, DecidedCommand } from '../../core/command.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { ClientWatch } from './http-exchange.ts';

/** Headers that change what the upstream does with the same body bytes (a patch type, an encoding). */
const BOUND_HEADERS = ['content-type', 'content-encoding'] as const;

/**
 * What an approval of this request binds to: the text is the method and the URL exactly as received; the
 * parameters are the body-shaping headers and the body (base64), so that any other body or patch type is
 * another command that needs its own approval.
 */
export function exactRequest(
  req: Pick<IncomingMessage, 'method' | 'url' | 'headers'>,
  body: Buffer | undefined,
): { readonly text: string; readonly parameters: readonly string[] } {
  const parameters = BOUND_HEADERS.map((name) => {
    const value = req.headers[name];
    return `${name}: ${Array.isArray(value) ? value.join(', ') : (value ?? '')}`;
  });
  parameters.push(`body: ${(body ?? Buffer.alloc(0)).toString('base64')}`);
  return { text: `${req.method ?? ''} ${req.url ?? ''}`, parameters };
}

/** Whether an approve decision can be held here: approvals are enabled and the rule says how. */
export function holdable(session: AgentSession, decided: DecidedCommand): boolean {
  return decided.decision.decision === 'approve' && session.holdsForApproval && decided.decision.approval !== undefined;
}

/**
 * Holds the request until its ApprovalRequest settles (or, for a `wait: false` rule, answers at once:
 * AgentSession.requestApproval) and says whether it may be forwarded. The client closing the connection
 * meanwhile cancels the request; a client gone before the hold begins (while the decision record became
 * durable) files nothing. Never rejects.
 */
export async function awaitApproval(
  session: AgentSession,
  decided: DecidedCommand,
  description: CommandDescription,
  exact: { readonly text: string; readonly parameters: readonly string[] },
  client: ClientWatch,
  logger: Logger,
): Promise<ApprovalVerdict> {
  if (client.gone()) {
    const message =
      'chaperone: the client closed the connection before the request was held; no approval request was filed and it was not forwarded';
    return { run: false, command: decided, error: { id: 'ApprovalCancelled', message } };
  }
  // The approver sees the body too (as recorded: masked), not only the request line.
  const shown =
    description.body === undefined || description.body === ''
      ? description
      : { ...description, text: `${description.text}\n${description.body}` };
  if (decided.decision.approval?.wait === false) return session.requestApproval(decided, shown, exact);
  const { held, verdict } = session.holdForApproval(decided, shown, exact);
  const stopWatching = client.onGone(() => held.cancel('client disconnected'));
  void held.filed.then((filed) => {
    if (filed) {
      logger.info('request held for approval', {
        approvalRequest: `${held.namespace}/${held.name}`,
        bindingHash: held.bindingHash,
        expiresTime: held.expiresTime,
      });
    }
  });
  const settled = await verdict;
  stopWatching();
  return settled;
}
