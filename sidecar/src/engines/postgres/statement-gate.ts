// The one gate every SQL-carrying client message passes (Query, Parse, Bind, Execute, FunctionCall):
// analyse → describe → decide and record (AgentSession) → a verdict the connection applies:
// - forward: send the client's frame as it is;
// - substitute: send a message that fails in the upstream instead, and our Denial in place of its error
//   (so responses keep pipeline order and PostgreSQL's own failed-transaction semantics hold);
// - hold: wait for a promise that settles into one of the others (the audit trail's group commit; an
//   approval, core/approvals: the request is filed and the client gets a notice while it waits);
// - end: the connection ends with a FATAL error (the sidecar stopped while a command was held).
// It keeps the session state the analysis depends on (prepared statements, portals, SQL-level PREPAREs);
// search_path is pinned (analysis/session-state.ts), never tracked from forwarded statements, and every
// statement the session's pins forbid is refused before policy (settingRefusal). No sockets: tested on its own.
import type { AgentSession } from '../../core/agent-session.ts';
import {
  builtInDecision,
  type CommandDescription,
  type DecidedCommand,
  type SettledClearance,
} from '../../core/command.ts';
import { auditRefusal, policyRefusal } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { resolveSqlExecute, type AnalyzedStatement } from './analysis/analyze-sql.ts';
import { pinnedSearchPath, settingRefusal, type SessionPins } from './analysis/session-state.ts';
import type { SqlAnalyzer } from './analysis/sql-analyzer.ts';
import {
  answerApproval,
  holdForApproval,
  UnrunApprovals,
  type ApprovalRun,
  type ApprovedRun,
} from './approval-verdicts.ts';
import { denial, type Denial } from './error-responses.ts';
import type { TransactionStatus } from './protocol/backend-messages.ts';
import type { UndoFailed } from './response-unit.ts';

import type { Bind, Parse } from './protocol/frontend-messages.ts';
import { auditParameters, describeRefused, describeStatements, withParameterTypes } from './sql-command.ts';
import { transactionControl } from './transaction-log.ts';
import type { MaskingVerdict, ResultMasking } from './masking/result-masking.ts';
import {
  approvalInFailedTransaction,
  exactParameters,
  FORWARD,
  prepareAgainForApproval,
  ruleOf,
  sameDecision,
  unknownPortal,
  protocolStatementRefusal,
  uncertainRefusal,
  undeclaredCursor,
  type GateVerdict,
  type RelayVerdict,
  type SettledVerdict,
} from './gate-verdicts.ts';

export { substituteFrame } from './substitute-frames.ts';
export type { GateVerdict, RelayVerdict, SettledVerdict } from './gate-verdicts.ts';

interface PreparedStatement {
  readonly text: string;
  readonly analysis: readonly AnalyzedStatement[] | undefined;
  /** Our denial when the statement was refused at Parse; every use of it fails upstream. */
  readonly refusal?: Denial;
  /** An approve rule matched at Parse: Binds keep the exact parameters, which an approval is bound to. */
  readonly mayHold?: boolean;
}

interface Portal {
  readonly statement: PreparedStatement;
  readonly params: readonly string[];
  /** Its row shape, for result masking. */
  readonly shape: PortalShape;
  /** The exact bound parameters, kept only for statements that may be held for approval. */
  readonly exact: readonly string[] | undefined;
  /**
   * Decided at its Bind (a statement that may be held): `first`, the verdict its first Execute runs under
   * (taken by it); `approval`, the approval later Executes of the portal, the same run, are covered by.
   */
  cleared?: ApprovedRun;
  /** Refused at its Bind (policy, an approver, an expiry): its Execute is that command, decided once already. */
  refusedAtBind?: boolean;
}

export interface StatementGateOptions {
  readonly analyzer: SqlAnalyzer;
  readonly session: AgentSession;
  /** Where the upstream's transaction status is kept (the response tracker): policy input `inTransaction`. */
  readonly upstream: {
    readonly transactionStatus: TransactionStatus;
    readonly pendingStatements: number;
    /** A refusal's substitute failed the pipeline up to the client's Sync: what follows is decided, never run. */
    readonly refusedUntilSync?: boolean;
  };
  readonly logger: Logger;
  /** What the sidecar enforces on this session: the pinned schema, the read-only guard. */
  readonly pins: SessionPins;
  /** Result masking of this connection (masking/result-masking.ts); without it nothing is masked. */
  readonly masking?: ResultMasking;
  /** Told every analysed statement, allowed or not (upstream reuse looks for what a reset cannot undo). */
  readonly onAnalysed?: (statements: readonly AnalyzedStatement[]) => void;
}

/** The portal an Execute runs, as result masking needs it (its row shape). */
interface PortalShape {
  readonly portal: string;
  readonly statement: string;
  readonly resultFormats: readonly number[];
}

export class StatementGate {
  private readonly analyzer: SqlAnalyzer;
  private readonly agentSession: AgentSession;
  private readonly upstream: StatementGateOptions['upstream'];
  private readonly logger: Logger;
  private readonly statements = new Map<string, PreparedStatement>();
  private readonly portals = new Map<string, Portal>();
  private readonly masking: ResultMasking | undefined;
  /** SQL-level PREPARE name → analysed inner statement, so EXECUTE name is decided as what it runs. */
  private readonly sqlPrepared = new Map<string, AnalyzedStatement>();
  /**
   * Statement names (one namespace on the server for Parse and PREPARE) whose last Parse, PREPARE, Close or
   * DEALLOCATE the upstream refused or skipped: it may hold an older statement of that name, or none. Every
   * use is refused until the name is parsed, prepared, closed or deallocated again.
   */
  private readonly uncertain = new Set<string>();
  /**
   * Cursors DECLAREd through this gate. FETCH and MOVE of any other portal are refused: a portal bound by the
   * protocol would run its statement without the decision every Execute gets (an approval, a policy reload).
   */
  private readonly cursors = new Set<string>();
  /** Portals approved at their Bind whose first Execute has not come: each gets an outcome however it ends. */
  private readonly unrun: UnrunApprovals<Portal>;
  private readonly pins: SessionPins;
  private readonly searchPath: readonly string[];
  private readonly onAnalysed: StatementGateOptions['onAnalysed'];

  constructor(options: StatementGateOptions) {
    this.analyzer = options.analyzer;
    this.agentSession = options.session;
    this.upstream = options.upstream;
    this.logger = options.logger;
    this.pins = options.pins;
    // Frozen: the analyzer keys its cache on the array's text, kept per (unchangeable) array.
    this.searchPath = Object.freeze(pinnedSearchPath(options.pins));
    this.masking = options.masking;
    this.onAnalysed = options.onAnalysed;
    this.unrun = new UnrunApprovals(options.session);
  }

  /** What a Describe's unit does with the RowDescription it gets: remembers the row shape for masking. */
  describe(kind: 'S' | 'P', name: string): ((rowDescription: Buffer) => void) | undefined {
    const masking = this.masking;
    return masking?.describing(kind, name);
  }

  /** A simple Query: the whole string is decided at once; any refusal refuses all of it. */
  query(text: string): GateVerdict {
    const statements = this.analyse(text);
    if (isDenial(statements)) return this.refuse(text, statements);
    if (statements.length === 0) return FORWARD; // empty query: EmptyQueryResponse, nothing to decide
    const description = describeStatements(text, statements);
    return this.decide(this.agentSession.decide(description, this.facts()), statements, description, {
      text,
      parameters: NO_PARAMETERS,
    });
  }

  /**
   * Parse: a forbidden statement is never prepared. Only a refusal is recorded here; an allowed statement is
   * decided again and recorded at each Execute, with its parameters, so a policy change reaches it too.
   */
  parse(name: string, text: string, paramTypes: readonly number[] = []): RelayVerdict {
    this.masking?.rebound('S', name);
    this.masking?.forgetPrepared(name);
    this.sqlPrepared.delete(name);
    this.uncertain.delete(name);
    const statements = withParameterTypes(this.analyse(text), paramTypes);
    if (isDenial(statements)) {
      this.statements.set(name, { text, analysis: undefined, refusal: statements });
      return this.refuse(text, statements);
    }
    if (statements.length > 0) {
      const description = describeStatements(text, statements);
      const decision = this.agentSession.evaluate(description, this.facts());
      if (decision.decision === 'approve' && this.agentSession.holdsForApproval) {
        // Held at each Execute, with the parameters bound then; nothing is recorded until it is.
        this.statements.set(name, { text, analysis: statements, mayHold: true });
        return { action: 'forward', command: undefined, undo: this.uncertainFrom(name) };
      }
      if (decision.decision !== 'allow') {
        const command = this.agentSession.record(description, decision);
        const refusal = denial(policyRefusal(decision));
        this.statements.set(name, { text, analysis: statements, refusal });
        return { action: 'substitute', command, denial: refusal };
      }
    }
    this.statements.set(name, { text, analysis: statements });
    return { action: 'forward', command: undefined, undo: this.uncertainFrom(name) };
  }

  parseMessage(msg: Parse): RelayVerdict {
    return this.parse(msg.name, msg.query, msg.paramTypes);
  }

  /** Taken back when a Parse, PREPARE, Close or DEALLOCATE of `name` did not complete upstream. */
  private uncertainFrom(name: string): () => void {
    return () => {
      this.uncertain.add(name);
      this.sqlPrepared.delete(name);
      this.masking?.forgetPrepared(name);
    };
  }

  /**
   * Bind: remembers which statement (and which parameters) a portal runs. Returns what to take back when the
   * Bind fails upstream: the portal is then not what the sidecar took it to be (an older one may be open).
   */
  bind(msg: Bind): () => void {
    // Protocol-level Bind may name a statement created by SQL PREPARE: it is decided as what it holds.
    const sqlPrepared = this.sqlPrepared.get(msg.statement);
    const statement = this.uncertain.has(msg.statement)
      ? { text: `BIND ${JSON.stringify(msg.statement)}`, analysis: undefined, refusal: uncertainRefusal(msg.statement) }
      : (this.statements.get(msg.statement) ??
        (sqlPrepared === undefined ? undefined : { text: sqlPrepared.text, analysis: [sqlPrepared] }));
    this.portalGone(msg.portal);
    this.masking?.rebound('P', msg.portal, msg.statement);
    this.cursors.delete(msg.portal); // one namespace: FETCH of this name now reads a protocol portal
    if (statement === undefined) this.portals.delete(msg.portal);
    else {
      this.portals.set(msg.portal, {
        statement,
        params: auditParameters(msg),
        shape: { portal: msg.portal, statement: msg.statement, resultFormats: msg.resultFormats },
        exact: statement.mayHold === true ? exactParameters(msg) : undefined,
      });
    }
    return () => this.portals.delete(msg.portal);
  }

  /**
   * Bind of a statement an approve rule matched at Parse: decided here, with its parameters, because
   * PostgreSQL plans at Bind (the planner runs IMMUTABLE functions on constants and bound values): the Bind
   * waits for the approval, or is refused, and with it everything after it. Any other Bind is forwarded and
   * its portal remembered; `undo` takes the portal back when the Bind fails upstream (UnrunApprovals.failed).
   */
  bindMessage(msg: Bind): { readonly undo: UndoFailed; readonly decided?: GateVerdict } {
    const forget = this.bind(msg);
    const portal = this.portals.get(msg.portal);
    // Behind a refusal nothing is planned: its Execute is decided (for the record) instead.
    if (portal?.statement.mayHold !== true || portal.exact === undefined || this.skippedUpstream)
      return { undo: forget };
    const undo = this.unrun.undoingBind(portal, forget);
    const { text, analysis = [] } = portal.statement;
    const description = describeStatements(text, analysis, portal.params);
    const command = this.agentSession.decide(description, this.facts());
    const exact = { text, parameters: portal.exact };
    const verdict = this.decide(command, analysis, description, exact, portal.shape);
    const clear = (settled: SettledVerdict): SettledVerdict => {
      if (settled.action === 'forward') this.unrun.add(portal, settled);
      else portal.refusedAtBind = true;
      return settled;
    };
    if (verdict.action !== 'hold') return { undo, decided: clear(verdict) as RelayVerdict };
    return { undo, decided: { ...verdict, until: verdict.until.then(clear) } };
  }

  /** The portal `name` is bound again or closed: a command approved at its Bind that no Execute ran ends. */
  private portalGone(name: string): void {
    const portal = this.portals.get(name);
    if (portal !== undefined) this.unrun.end(portal, 'its portal was bound again or closed before any Execute');
  }

  /**
   * At a Sync or Query: what its ReadyForQuery ends. Idle ('I'), the transaction ended and with it every
   * portal bound before (PostgreSQL's portals of the protocol never outlive their transaction): the commands
   * approved at their Bind among them that no Execute ran end, and their portals are forgotten (an Execute
   * of one is refused as unknown, as the server would fail it). Undefined when there is none (the usual case).
   */
  endedWithTransaction(): ((status: TransactionStatus) => void) | undefined {
    const unrun = this.unrun.endingWithTransaction((portal) => {
      if (this.portals.get(portal.shape.portal) === portal) this.portals.delete(portal.shape.portal);
    });
    // A catalogue change of this connection is read again for every session once committed.
    return this.masking?.settling(unrun) ?? unrun;
  }

  /** The connection ends: commands approved at their Bind that no Execute ran end with it. */
  connectionEnded(): void {
    this.unrun.endAll('the connection ended before any Execute');
  }

  /** Execute: decided (again) as the portal's statement with its bound parameters. */
  execute(portalName: string): GateVerdict {
    const portal = this.portals.get(portalName);
    if (portal === undefined) {
      // A portal not seen bound (a cursor of SQL DECLARE) has no analysis to decide on: fail closed.
      return this.refuse(`EXECUTE PORTAL ${JSON.stringify(portalName)}`, unknownPortal());
    }
    const statement = portal.statement;
    // Refused at Parse: the upstream may hold an older statement of that name, so refused again, same reason.
    if (statement.refusal !== undefined) {
      const rule = statement.refusal.id === 'UncertainStatement' ? undefined : 'refused-at-parse';
      return this.refuse(statement.text, statement.refusal, rule);
    }
    // Refused at its Bind: the server skips this Execute behind the Bind's error (up to the Sync, when the
    // portal is forgotten), and the command is on the record once, as the Bind's.
    if (portal.refusedAtBind === true) return { action: 'substitute', command: undefined, denial: undefined };
    const analysis = statement.analysis;
    if (analysis === undefined || analysis.length === 0) return FORWARD; // empty statement: EmptyQueryResponse
    const description = describeStatements(statement.text, analysis, portal.params);
    const exact = portal.exact === undefined ? undefined : { text: statement.text, parameters: portal.exact };
    // Behind a refusal the portal's approved run is not taken: the server skips this Execute.
    const cleared = this.skippedUpstream ? undefined : portal.cleared;
    const first = cleared?.first;
    if (first !== undefined && cleared !== undefined) {
      const now = this.agentSession.evaluate(description, this.facts());
      if (first.command === undefined || sameDecision(now, first.command.decision)) {
        return this.unrun.take(portal) ?? first; // the command decided (and approved) at the Bind
      }
      // What decides it changed since the Bind was approved (a policy reload, the transaction state): the
      // approved run ends unrun, and the Execute is decided as a command of its own, under what is in force.
      this.unrun.end(portal, 'the policy in force changed before its Execute, which was decided again');
      portal.cleared = undefined;
      return this.decide(this.agentSession.record(description, now), analysis, description, exact, portal.shape);
    }
    const command = this.agentSession.decide(description, this.facts());
    // Another Execute of a portal approved at its Bind continues that one run (PostgreSQL runs a portal once:
    // more rows of it, or an error), covered by its approval: no second request for it.
    if (command.decision.decision === 'approve' && cleared?.approval !== undefined) {
      return this.cleared({ ...command, approval: cleared.approval }, analysis, portal.shape);
    }
    return this.decide(command, analysis, description, exact, portal.shape);
  }

  /** Close of a statement ('S', also one SQL PREPAREd) or portal ('P'); returns what to take back if it fails. */
  close(kind: 'S' | 'P', name: string): (() => void) | undefined {
    this.masking?.rebound(kind, name);
    if (kind === 'P') {
      this.portalGone(name);
      this.portals.delete(name);
      return undefined;
    }
    this.statements.delete(name);
    this.sqlPrepared.delete(name);
    this.masking?.forgetPrepared(name);
    this.uncertain.delete(name);
    return this.uncertainFrom(name);
  }

  /** The fast-path interface calls any function by OID, out of sight of statement analysis: refused and recorded. */
  functionCall(functionOid: number): RelayVerdict {
    return this.refuse(
      `FUNCTION CALL ${String(functionOid)}`,
      denial({ id: 'FastPathRefused', message: 'chaperone: the fast-path function call interface is not allowed' }),
    );
  }

  // ---- internals -------------------------------------------------------------------------------

  /** The upstream skips this message: it follows a refusal in the client's pipeline, before its Sync. */
  private get skippedUpstream(): boolean {
    return this.upstream.refusedUntilSync === true;
  }

  private facts(): { inTransaction: boolean } {
    return this.upstream.transactionStatus === 'I' ? NOT_IN_TRANSACTION : IN_TRANSACTION;
  }

  /**
   * The verdict for a decided command: refused by the audit trail, by policy, held for approval, or cleared
   * (now or later). `exact` is what an approval binds to (undefined: the parameters were not kept); `portal`
   * the row shape result masking needs (an Execute).
   */
  private decide(
    command: DecidedCommand,
    statements: readonly AnalyzedStatement[],
    description: CommandDescription,
    exact: { readonly text: string; readonly parameters: readonly string[] } | undefined,
    portal?: PortalShape,
  ): GateVerdict {
    const audit = command.audit;
    if (audit.state === 'refused') return this.auditRefused(command, audit);
    if (this.skippedUpstream && command.decision.decision !== 'deny') {
      // Skipped upstream behind a refusal: decided for the record only (the relay records it `cancelled`),
      // never held, filed for approval or planned for masking, for a command that cannot run.
      return { action: 'substitute', command, denial: undefined };
    }
    if (command.decision.decision === 'approve' && this.agentSession.holdsForApproval) {
      // In a failed transaction block the server would ignore the statement: so do we, with its error (25P02),
      // filing no request for it. (Transaction control, which the server does run there, is held as usual.)
      if (this.upstream.transactionStatus === 'E' && !statements.some((s) => s.transaction !== undefined)) {
        return { action: 'substitute', command, denial: approvalInFailedTransaction() };
      }
      if (exact === undefined || command.decision.approval === undefined) {
        // A statement prepared while no approve rule matched it: its parameters were not kept exactly.
        return { action: 'substitute', command, denial: prepareAgainForApproval(command.decision) };
      }
      // A fingerprint-scoped grant covers the same statements up to their constants (libpg-query fingerprints).
      const bound = { ...exact, normalized: statements.map((s) => s.fingerprint).join(';') };
      const approving: ApprovalRun = {
        session: this.agentSession,
        run: (approved) => this.settle(approved, CLEAR, statements, portal),
        refused: (refused, clearance) => this.auditRefused(refused, clearance),
      };
      if (command.decision.approval.wait === false) return answerApproval(approving, command, description, bound);
      return holdForApproval(approving, command, description, bound);
    }
    if (command.decision.decision !== 'allow') {
      return { action: 'substitute', command, denial: denial(policyRefusal(command.decision)) };
    }
    return this.cleared(command, statements, portal);
  }

  /** A command that may run: once its decision record is durable, with its result masking planned. */
  private cleared(
    command: DecidedCommand,
    statements: readonly AnalyzedStatement[],
    portal?: PortalShape,
  ): GateVerdict {
    const audit = command.audit;
    if (audit.state === 'refused') return this.auditRefused(command, audit);
    if (audit.state === 'clear') {
      const settled = this.settle(command, audit, statements, portal);
      // Masking waits for the relations it must look up in the catalogue: the command is held meanwhile.
      return settled instanceof Promise ? { action: 'hold', until: settled } : settled;
    }
    return {
      action: 'hold',
      until: audit.settled.then((settled) => this.settle(command, settled, statements, portal)),
    };
  }

  private auditRefused(command: DecidedCommand, audit: Extract<SettledClearance, { state: 'refused' }>): RelayVerdict {
    this.logger.warn('statement denied: audit trail unavailable', {
      sessionId: this.agentSession.id,
      reason: audit.error.reason,
    });
    return { action: 'substitute', command, denial: denial(auditRefusal(audit.error)) };
  }

  private settle(
    command: DecidedCommand,
    audit: SettledClearance,
    statements: readonly AnalyzedStatement[],
    portal?: PortalShape,
  ): RelayVerdict | Promise<RelayVerdict> {
    if (audit.state === 'refused') return this.auditRefused(command, audit);
    const masking = this.masking;
    const control = transactionControl(statements);
    if (masking === undefined) {
      const undo = this.noteAllowed(statements);
      if (control !== undefined)
        return { action: 'forward', command, control, ...(undo === undefined ? {} : { undo }) };
      return undo === undefined ? { action: 'forward', command } : { action: 'forward', command, undo };
    }
    const apply = (v: MaskingVerdict): RelayVerdict => {
      if (v.kind === 'deny') {
        return {
          action: 'substitute',
          command,
          denial: denial({ id: 'MaskingRefused', message: `chaperone: ${v.reason}` }),
        };
      }
      const undo = this.noteAllowed(statements);
      return {
        action: 'forward',
        command,
        ...(v.kind === 'rows' ? { rows: v.rewriter } : {}),
        ...(undo === undefined ? {} : { undo }),
        ...(control === undefined ? {} : { control }),
      };
    };
    // No statement of this connection is in flight and no transaction is open: whatever it changed in the
    // catalogue is committed (or rolled back) and visible to the catalogue connection. The Bind and Describe
    // a driver pipelines ahead of this Execute run nothing.
    const settled = this.upstream.pendingStatements === 0 && this.upstream.transactionStatus === 'I';
    const planned = masking.plan(statements, command.decision.masking, this.searchPath, portal, settled);
    return planned instanceof Promise
      ? planned.then(apply, (): RelayVerdict => apply({ kind: 'deny', reason: 'result masking could not be planned' }))
      : apply(planned);
  }

  /**
   * Records a command refused before policy (unparsable text, a forbidden setting, an unknown portal, the
   * Execute of a statement refused at Parse): the sidecar's own `deny`, naming the refusal, never what policy
   * says of kind `other` (a catch-all allow would put `allow` on the record of a command that was refused).
   */
  private refuse(text: string, refusal: Denial, rule = ruleOf(refusal)): RelayVerdict {
    // Refused either way; when the record itself is refused (FailClosed) the command just has no trail.
    const decision = builtInDecision('deny', rule, refusal.message);
    return {
      action: 'substitute',
      command: this.agentSession.record(describeRefused(text), decision),
      denial: refusal,
    };
  }

  /** The statements of a text, or the denial of a text that must not reach the upstream. */
  private analyse(text: string): readonly AnalyzedStatement[] | Denial {
    const analysis = this.analyzer.analyze(text, this.searchPath);
    if (!analysis.ok) {
      // Fail closed: a statement the sidecar cannot parse is never forwarded.
      return denial({
        id: 'Unanalysable',
        message: `chaperone: statement not analysable: ${analysis.error.message}`,
        ...(analysis.error.position === undefined ? {} : { position: analysis.error.position }),
      });
    }
    this.onAnalysed?.(analysis.statements);
    let declared: Set<string> | undefined; // cursors DECLAREd earlier in this string (rare: made when needed)
    for (const s of analysis.statements) {
      if (s.executes !== undefined && this.uncertain.has(s.executes)) return uncertainRefusal(s.executes);
      if (s.executes !== undefined && this.statements.has(s.executes)) return protocolStatementRefusal(s.executes);
      if (s.declares !== undefined) (declared ??= new Set()).add(s.declares);
      if (s.fetches !== undefined && !this.cursors.has(s.fetches) && declared?.has(s.fetches) !== true) {
        return undeclaredCursor(s.fetches);
      }
      const pinned = s.setting !== undefined || s.configures !== undefined || s.transaction === 'begin';
      if (!pinned && s.holdsCursor !== true) continue;
      const refusal = settingRefusal(s, this.pins);
      if (refusal !== undefined) return denial({ id: 'SettingRefused', message: `chaperone: ${refusal}` });
    }
    // Most strings run no EXECUTE: the analysis is used as it is (the same array for the same analysis,
    // which lets describeStatements reuse what it derived from it).
    if (!analysis.statements.some((s) => s.executes !== undefined)) return analysis.statements;
    return analysis.statements.map((s) => this.resolveSqlExecute(s));
  }

  /**
   * EXECUTE name is decided as the statement PREPARE name stored together with the EXECUTE's own argument
   * expressions (which run too); unknown names keep kind `execute`.
   */
  private resolveSqlExecute(s: AnalyzedStatement): AnalyzedStatement {
    if (s.executes === undefined) return s;
    return resolveSqlExecute(s, this.sqlPrepared.get(s.executes));
  }

  /**
   * Tracks session state the analysis depends on, once a statement is allowed to run: as if it completes.
   * Returns what to take back when the Query fails (a statement of the string errs: the PREPARE or DEALLOCATE
   * may have failed, or not run at all, and a DECLARE may have met a cursor of that name).
   */
  private noteAllowed(statements: readonly AnalyzedStatement[]): (() => void) | undefined {
    const names: string[] = [];
    const cursors: string[] = [];
    for (const s of statements) {
      if (s.prepares !== undefined) {
        // One namespace with protocol-level statements: a name in use fails in the server (42P05).
        this.statements.delete(s.prepares);
        this.uncertain.delete(s.prepares);
        this.sqlPrepared.set(s.prepares, s);
        names.push(s.prepares);
      }
      if (s.deallocates !== undefined) {
        const dropped =
          s.deallocates === '*'
            ? [...this.sqlPrepared.keys(), ...this.statements.keys(), ...this.uncertain].filter((n) => n !== '')
            : [s.deallocates];
        for (const name of dropped) {
          this.sqlPrepared.delete(name);
          this.statements.delete(name);
          this.uncertain.delete(name);
          this.masking?.forgetPrepared(name);
        }
        names.push(...dropped);
      }
      // DECLARE and CLOSE name portals too: a portal the sidecar saw bound is not what such a name runs now.
      if (s.declares !== undefined) {
        this.portals.delete(s.declares);
        this.cursors.add(s.declares);
        cursors.push(s.declares);
      }
      if (s.closes === '*') {
        this.portals.clear();
        this.cursors.clear();
      } else if (s.closes !== undefined) {
        this.portals.delete(s.closes);
        this.cursors.delete(s.closes);
      }
    }
    if (names.length === 0 && cursors.length === 0) return undefined;
    return () => {
      for (const name of names) this.uncertainFrom(name)();
      for (const cursor of cursors) {
        this.cursors.delete(cursor);
        this.masking?.forgetCursor(cursor);
      }
    };
  }
}

const NO_PARAMETERS: readonly string[] = Object.freeze([]);
const CLEAR: SettledClearance = Object.freeze({ state: 'clear' });

const IN_TRANSACTION = Object.freeze({ inTransaction: true });
const NOT_IN_TRANSACTION = Object.freeze({ inTransaction: false });

function isDenial(analysed: readonly AnalyzedStatement[] | Denial): analysed is Denial {
  return !Array.isArray(analysed);
}
