// The client messages of an authenticated session (postgres-connection.ts does the sockets): every
// SQL-carrying message goes through the statement gate, whose verdict (forward, substitute, hold) is applied
// here, and the response tracker is told what the upstream will answer. A held command (the audit trail's
// group commit, or an approval: approval-wait.ts) stops the relay until it settles; what the client sends
// meanwhile is handled, in order, afterwards. A command that never ran because its connection ended while it
// was held gets its outcome here, before the session's end (docs/approvals.md).
import type { AgentSession } from '../../core/agent-session.ts';
import type { SidecarError } from '../../core/errors.ts';
import type { ApprovalWait } from './approval-wait.ts';
import { sqlStateOf } from './error-responses.ts';
import type { ResponseTracker, UndoFailed, UnitKind } from './response-tracker.ts';
import { substituteFrame, type GateVerdict, type RelayVerdict, type SettledVerdict } from './statement-gate.ts';
import type { StatementGate } from './statement-gate.ts';
import type { FrontendMessage } from './protocol/frontend-messages.ts';
import { ProtocolViolation } from './protocol/protocol-violation.ts';
import type { LeasedUpstream } from './upstream-reuse.ts';

/** What the upstream answers a gated message with, and what replaces it when it is refused. */
type GatedMessage = 'Query' | 'Parse' | 'Bind' | 'Execute' | 'FunctionCall';
const UNIT_OF: Readonly<Record<GatedMessage, UnitKind>> = {
  Query: 'query',
  Parse: 'parse',
  Bind: 'bind',
  Execute: 'execute',
  FunctionCall: 'query',
};

/** What the relay needs of its connection. */
export interface RelayHost {
  readonly gate: StatementGate;
  readonly tracker: ResponseTracker;
  readonly lease: LeasedUpstream;
  readonly session: AgentSession;
  readonly approvalWait: ApprovalWait;
  /** Queues bytes for the upstream; they leave together when the drain loop (or a held step) ends. */
  forward(frame: Buffer): void;
  flushUpstream(): void;
  /** Starts an approval wait for a held verdict (approval-wait.ts); returns the frame to forward later. */
  beginWait(verdict: Extract<GateVerdict, { action: 'hold' }>, frame: Buffer): Buffer;
  isClosed(): boolean;
  fatal(error: SidecarError): void;
  close(reason: string): void;
  /** Whether the upstream stream is at a frame boundary (for handing the session back at Terminate). */
  readonly atFrameBoundary: boolean;
}

export class SessionRelay {
  private readonly host: RelayHost;

  constructor(host: RelayHost) {
    this.host = host;
  }

  /** Returns a promise when a verdict is on hold (the statement waits for its audit record or an approval). */
  handle(msg: FrontendMessage): Promise<void> | undefined {
    const { gate, tracker, lease } = this.host;
    // After an extended-protocol error the upstream discards everything until Sync: nothing is decided (but
    // see behindRefusal).
    const discarding = tracker.discardingUntilSync;
    // Behind the sidecar's own refusal it knows the upstream skips to the Sync: decided for the record only.
    const behindRefusal = tracker.refusedUntilSync;
    // A Sync the tracker holds back (one the server may or may not answer mid-COPY) is not forwarded, and
    // ends no exchange upstream.
    const syncForwarded = msg.type === 'Sync' && tracker.sync();
    // Its ReadyForQuery may end the transaction, and with it portals approved at their Bind and not run.
    if (syncForwarded) tracker.atReady(gate.endedWithTransaction());
    if (msg.type !== 'Sync' || syncForwarded) lease.noteClientMessage(msg.type);
    switch (msg.type) {
      case 'Query':
        if (behindRefusal) {
          this.skipped(gate.query(msg.query), 'Query');
          return;
        }
        if (!discarding) return this.apply(gate.query(msg.query), 'Query', msg.frame);
        this.host.forward(substituteFrame('Query'));
        return;
      case 'Parse':
        if (behindRefusal) {
          this.skipped(gate.parseMessage(msg), 'Parse', msg.name);
          return;
        }
        if (!discarding) return this.apply(gate.parseMessage(msg), 'Parse', msg.frame, msg.name);
        this.host.forward(substituteFrame('Parse', msg.name));
        return;
      case 'Execute':
        if (behindRefusal) {
          this.skipped(gate.execute(msg.portal), 'Execute');
          return;
        }
        if (!discarding) return this.apply(gate.execute(msg.portal), 'Execute', msg.frame);
        this.host.forward(substituteFrame('Execute'));
        return;
      case 'FunctionCall':
        // Discarded upstream like a Query: no response is expected (else the Sync's would be taken for it).
        if (behindRefusal) {
          this.skipped(gate.functionCall(msg.functionOid), 'FunctionCall');
          return;
        }
        if (!discarding) return this.apply(gate.functionCall(msg.functionOid), 'FunctionCall', msg.frame);
        this.host.forward(substituteFrame('FunctionCall'));
        return;
      case 'Bind': {
        if (behindRefusal) {
          const skipped = gate.bindMessage(msg); // never decided behind a refusal: its Execute is
          this.host.tracker.skippedBehindRefusal(skipped.undo);
          this.skipped(skipped.decided, 'Bind');
          return;
        }
        // Discarded upstream: never the client's Bind, which the server plans (fails closed if that were wrong).
        if (discarding) {
          this.host.forward(substituteFrame('Bind'));
          return;
        }
        const bound = gate.bindMessage(msg);
        if (bound.decided !== undefined) return this.apply(bound.decided, 'Bind', msg.frame, undefined, bound.undo);
        this.host.forward(msg.frame);
        tracker.expectUndoable('bind', bound.undo); // a refused Bind leaves no portal the sidecar knows
        return;
      }
      case 'Describe':
        this.host.forward(msg.frame);
        if (!discarding) tracker.expect('describe', undefined, undefined, undefined, gate.describe(msg.kind, msg.name));
        return;
      case 'Close':
        this.host.forward(msg.frame);
        if (!discarding) tracker.expectUndoable('close', gate.close(msg.kind, msg.name)); // else skipped upstream
        return;
      case 'Sync':
        if (syncForwarded) this.host.forward(msg.frame);
        return;
      case 'CopyDone':
      case 'CopyFail':
        this.host.forward(msg.frame);
        tracker.copyEnd();
        return;
      case 'CopyData':
        this.host.forward(msg.frame);
        tracker.copyData();
        return;
      case 'Flush':
        this.host.forward(msg.frame);
        return;
      case 'Terminate':
        // An idle upstream session stays open for the next agent connection, after its reset.
        if (!lease.handBack(tracker, this.host.approvalWait.active, this.host.atFrameBoundary)) {
          this.host.forward(msg.frame);
          this.host.flushUpstream();
        }
        this.host.close('client terminated the session');
        return;
      default:
        throw new ProtocolViolation(`unexpected ${msg.type} message during a session`);
    }
  }

  /** The connection ends: what the gate holds that never ran gets its outcome (before the session's end). */
  connectionEnded(): void {
    this.host.gate.connectionEnded();
  }

  /**
   * Applies the gate's verdict on one message: forwards it or its substitute, or waits for a held one.
   * `undo`: what to take back when a forwarded Bind fails upstream (its portal).
   */
  private apply(
    verdict: GateVerdict,
    type: GatedMessage,
    frame: Buffer,
    name?: string,
    undo?: UndoFailed,
  ): Promise<void> | undefined {
    if (verdict.action === 'hold') {
      const held = this.host.beginWait(verdict, frame);
      return verdict.until.then((settled) => {
        if (this.host.isClosed()) {
          // Only an approval's withdrawal holds the session's end until this is recorded (approval-wait.ts).
          if (verdict.approval !== undefined) this.neverRan(settled);
        } else if (settled.action === 'end') this.host.fatal(settled.error);
        else this.applySettled(settled, type, held, name, undo); // sent by the drain that resumes the client
      });
    }
    this.applySettled(verdict, type, frame, name, undo);
    return undefined;
  }

  private applySettled(
    verdict: RelayVerdict,
    type: GatedMessage,
    frame: Buffer,
    name?: string,
    undo?: UndoFailed,
  ): void {
    const tracker = this.host.tracker;
    if (verdict.action === 'forward') {
      this.host.forward(frame);
      if (type === 'Bind') {
        // The Bind of a command decided at Bind: its outcome comes with its Execute (the gate hands the verdict
        // to it). A Bind failing upstream fails that Execute, which the tracker records with the Bind's error.
        tracker.expectUndoable('bind', undo);
        return;
      }
      tracker.expect(UNIT_OF[type], verdict.command, undefined, verdict.rows, undefined, verdict.control);
      tracker.onFailure(verdict.undo);
      if (type === 'Query') tracker.atReady(this.host.gate.endedWithTransaction());
    } else {
      this.host.forward(substituteFrame(type, name));
      tracker.expect(UNIT_OF[type], verdict.command, verdict.denial);
      if (type === 'Query') tracker.atReady(this.host.gate.endedWithTransaction());
      // No portal: the substitute binds none. Taken back at the Sync, so that the Execute skipped behind this
      // refusal is decided as the statement it names.
      if (type === 'Bind' && tracker.refusedUntilSync) tracker.skippedBehindRefusal(undo);
      else if (type === 'Bind') undo?.();
    }
  }

  /**
   * A message behind the sidecar's refusal, up to the client's Sync: the upstream skips it (its substitute is
   * sent, failing closed), so it never runs. Its command is on the record all the same, as an attempt:
   * `cancelled`, or `denied` when it is refused on its own account (an Execute of the refused statement).
   * What the gate assumed it did to names is taken back at the Sync (the tracker runs the undo).
   */
  private skipped(verdict: GateVerdict | undefined, type: GatedMessage, name?: string): void {
    this.host.forward(substituteFrame(type, name));
    // The gate never holds a command behind a refusal (statement-gate.ts, decide).
    if (verdict?.action === 'hold') throw new Error(`a ${type} behind a refusal was held`);
    if (verdict?.action === 'forward') this.host.tracker.skippedBehindRefusal(verdict.undo);
    const command = verdict?.command;
    if (command === undefined) return;
    const refusal = verdict?.action === 'substitute' ? verdict.denial : undefined;
    // After the refusal's own outcome (the tracker keeps it until the upstream's error for it arrives).
    this.host.tracker.skippedOutcome(
      command,
      refusal === undefined
        ? { status: 'cancelled', message: 'skipped behind a refusal in its pipeline (up to the Sync); it did not run' }
        : { status: 'denied', code: refusal.code },
    );
  }

  /**
   * The connection ended while the command was held (the client went away, which withdrew its request): it
   * never ran. Its outcome says so — `cancelled`, with the refusal's SQLSTATE (57014 for a withdrawal) — and
   * is written before the session's end (approval-wait.ts calls that end after this). An abandoned command
   * (`end`) got its outcome from the gate.
   */
  private neverRan(settled: SettledVerdict): void {
    const command = settled.command;
    if (command === undefined || settled.action === 'end') return;
    const code = settled.action === 'substitute' && settled.denial !== undefined ? settled.denial.code : undefined;
    this.host.session.complete(command, 'sql', {
      status: 'cancelled',
      code: code ?? sqlStateOf('ApprovalCancelled'),
      message: 'the connection ended while the command was held; it did not run',
    });
  }
}
