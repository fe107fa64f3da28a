// One authenticated agent session on one protected resource, protocol-neutral: engines turn traffic into
// commands (core/command.ts), this decides them with the policy engine and writes the audit records. It
// never imports an engine. Every decision and every outcome becomes exactly one record, and what a refused
// record means (the resource's audit failure mode, NIST AU-5) is decided here and nowhere else.
import { randomUUID } from 'node:crypto';
import {
  jcs,
  MAX_COMMAND_TEXT,
  type ApprovalDecisionEntry,
  type AuditRecord,
  type KnownMember,
  type CombinedDecision,
  type MaskingInstruction,
  type Identity,
  type PolicyCommand,
  type PolicyIdentity,
  type ResourceType,
  toPolicyIdentity,
} from '@chaperone/api';
import type { PolicyEngine, PolicyRequest } from './policy/policy-engine.ts';
import { AuditUnavailable, type AuditSink } from './audit/audit-sink.ts';
import type { PodChain } from './audit/pod-chain.ts';
import { createValueMasker, PROCESS_HASH_KEY, type ValueMasker } from './masking/mask-value.ts';
import { auditMetrics } from './audit/audit-metrics.ts';
import { RecordChain, type RecordContent } from './audit/record-chain.ts';
import { bindingHashOf, type ApprovalDesk, type HeldCommand, type HoldResult } from './approvals/approval-desk.ts';
import { approvalPending } from './approvals/approval-notice.ts';
import { DeferredApprovals, MAX_DEFERRED_PER_SESSION } from './approvals/deferred-approvals.ts';
import { auditRefusal, type SidecarError } from './errors.ts';
import { listenerCommandMetrics, type ListenerCommandMetrics, type SidecarMetrics } from './observability/metrics.ts';
import {
  CLEAR,
  type AuditClearance,
  type CommandDescription,
  type CommandOutcome,
  type DecidedCommand,
  type RolledBack,
  type SettledClearance,
} from './command.ts';

export type { CommandDescription, CommandOutcome, DecidedCommand } from './command.ts';

/** How a session ended, for its session.end record. */
export interface SessionEnding {
  readonly status: 'success' | 'error' | 'denied';
  /** The SQLSTATE or HTTP status of the error that ended it. */
  readonly code?: string;
}
const ENDED_IN_ORDER: SessionEnding = Object.freeze({ status: 'success' });

/** What the session needs of the policy engine (PolicyEngine; a fixed decider in unit tests). */
export type PolicyDecider = Pick<PolicyEngine, 'decide'>;

export interface ResourceContext {
  readonly name: string;
  readonly namespace: string;
  readonly type: ResourceType;
  readonly labels: Readonly<Record<string, string>>;
}

/** Where the client connects from and what it asked for at startup (session.start, auth.failure). */
export interface ClientSource {
  readonly address: string;
  readonly applicationName: string;
  readonly user: string;
  readonly database: string;
}

export interface AgentSessionOptions {
  readonly policy: PolicyDecider;
  readonly sink: AuditSink;
  /** Links this session's first record to the pod's previous session. */
  readonly podChain: PodChain;
  readonly metrics: SidecarMetrics;
  readonly listener: string;
  readonly resource: ResourceContext;
  readonly pod: { readonly name: string; readonly namespace: string };
  readonly identity: Identity;
  readonly source: ClientSource;
  /**
   * What a refused audit write means (NIST AU-5). FailClosed (default): the constructor throws
   * AuditUnavailable (no session without a trail) and decide() returns the command with a `refused`
   * clearance. FailOpen: the command goes ahead, the lost records are counted and an `audit.gap` record
   * says how many once writing works again.
   */
  readonly auditFailureMode?: 'FailClosed' | 'FailOpen';
  /**
   * Where commands an approve rule holds are filed (core/approvals). Without it an approve decision
   * refuses the command (ApprovalRequired).
   */
  readonly approvals?: ApprovalDesk;
}

/** Whether a command an approve rule decided runs: `run`, exactly once; else it is refused with `error`. */
export type ApprovalVerdict =
  | { readonly run: true; readonly command: DecidedCommand }
  | { readonly run: false; readonly command: DecidedCommand; readonly error: SidecarError };

/** A command held for approval: the filed request, and whether the command runs once it settles. */
export interface HeldForApproval {
  readonly held: HeldCommand;
  /** Never rejects. */
  readonly verdict: Promise<ApprovalVerdict>;
}

/**
 * Exactly what an approval binds to (the text as sent, the parameters as bound), and the normalised command
 * a fingerprint-scoped grant is limited to (default: the description's fingerprint).
 */
export interface ExactCommand {
  readonly text: string;
  readonly parameters: readonly string[];
  readonly normalized?: string;
}

/** A counted decision as approval.decided records it. */
function recordedDecision(
  d: ApprovalDecisionEntry,
): NonNullable<NonNullable<AuditRecord['approval']>['decisions']>[number] {
  return {
    approver: d.approver.username,
    ...(d.approver.uid === undefined ? {} : { uid: d.approver.uid }),
    ...(d.approver.groups === undefined ? {} : { groups: d.approver.groups.slice(0, 64) }),
    decision: d.decision,
    time: d.time,
    ...(d.comment === undefined ? {} : { comment: d.comment.slice(0, 1024) }),
  };
}

/** The policy view of an identity: subject, acting party, the whole verified chain and its depth. */
export function policyIdentity(identity: Identity): PolicyIdentity {
  return toPolicyIdentity(identity);
}

/** Cuts text to at most `max` UTF-8 bytes without splitting a character. */
export function truncateUtf8(text: string, max = MAX_COMMAND_TEXT): { text: string; truncated: boolean } {
  if (text.length <= max / 4 || Buffer.byteLength(text) <= max) return { text, truncated: false };
  const buf = Buffer.from(text).subarray(0, max);
  // Drop a trailing partial character (continuation bytes 10xxxxxx and its lead byte).
  let end = buf.length;
  while (end > 0 && ((buf[end - 1] ?? 0) & 0xc0) === 0x80) end--;
  if (end > 0 && ((buf[end - 1] ?? 0) & 0x80) !== 0) end--;
  return { text: buf.subarray(0, end).toString('utf8'), truncated: true };
}

/** A frozen array is immutable and can be shared by records; anything else is copied. */
function ownCopy(values: readonly string[]): string[] {
  return Object.isFrozen(values) ? (values as string[]) : [...values];
}

/** One masker per masking list (decisions are cached, so the list object repeats). */
const maskers = new WeakMap<readonly MaskingInstruction[], ValueMasker | undefined>();

/**
 * The bound parameters as recorded: masked where the decision's masking rules cover them
 * (core/masking/mask-value.ts says how), as they are otherwise.
 */
function maskParameters(parameters: readonly string[], decision: CombinedDecision): string[] {
  if (decision.masking.length === 0) return [...parameters];
  let masker = maskers.get(decision.masking);
  if (!maskers.has(decision.masking)) {
    masker = createValueMasker(decision.masking, PROCESS_HASH_KEY);
    maskers.set(decision.masking, masker);
  }
  return masker === undefined ? [...parameters] : parameters.map((p) => (p === 'NULL' ? p : masker.mask(p)));
}

/** Detector-only maskers per masking list, for free text where no column can be named. */
const textMaskers = new WeakMap<readonly MaskingInstruction[], ValueMasker | undefined>();

/**
 * A request body as recorded: what the decision's detectors find is masked. Column (field) rules name
 * structure the core cannot see in free text; the engine masks those fields before it hands the body over
 * (the HTTP engine's JSON fields, the Kubernetes engine's Secret values).
 */
export function maskText(text: string, decision: CombinedDecision): string {
  if (decision.masking.length === 0) return text;
  let masker = textMaskers.get(decision.masking);
  if (!textMaskers.has(decision.masking)) {
    const detectorsOnly = decision.masking.filter((m) => m.detectors.length > 0).map((m) => ({ ...m, columns: [] }));
    masker = createValueMasker(detectorsOnly, PROCESS_HASH_KEY);
    textMaskers.set(decision.masking, masker);
  }
  return masker === undefined ? text : masker.mask(text);
}

/** A decision as its records show it, with its canonical text (see decisionMember). */
interface DecisionMember {
  readonly source: CombinedDecision;
  /** The source's reasons when the member was made: it is reused only while they are still these. */
  readonly reasons: readonly string[];
  readonly known: KnownMember & { readonly value: NonNullable<AuditRecord['decision']> };
  /** The same without bundleDigest: for a decision whose policy's digest an earlier record of the session names. */
  readonly knownWithoutDigest: KnownMember & { readonly value: NonNullable<AuditRecord['decision']> };
}

/** Decisions repeat (the policy engine's cache returns the same object): their record member is made once. */
const decisionMembers = new WeakMap<CombinedDecision, DecisionMember>();

/**
 * The `decision` member of a decision record, frozen, and its canonical text. Made again whenever a field
 * the record shows differs from when it was made, so a changed decision object can never be recorded with
 * an old text.
 */
function decisionMember(decision: CombinedDecision): DecisionMember {
  const memo = decisionMembers.get(decision);
  if (memo !== undefined && sameRecordedFields(memo, decision)) return memo;
  // In the sorted key order of the canonical form (see record()).
  const result = {} as NonNullable<AuditRecord['decision']>;
  if (decision.bundleDigest !== '') result.bundleDigest = decision.bundleDigest;
  if (decision.policy !== '') result.policy = decision.policy;
  if (decision.reasons.length > 0) {
    result.reasons = Object.freeze(decision.reasons.slice(0, 16).map((r) => r.slice(0, 1024))) as string[];
  }
  result.result = decision.decision;
  result.rule = decision.rule;
  Object.freeze(result);
  const known = { key: 'decision', value: result, text: jcs(result) ?? '{}' };
  const { bundleDigest: _named, ...rest } = result;
  const withoutDigest = Object.freeze(rest);
  const knownWithoutDigest = { key: 'decision', value: withoutDigest, text: jcs(withoutDigest) ?? '{}' };
  const made = { source: decision, reasons: [...decision.reasons], known, knownWithoutDigest };
  decisionMembers.set(decision, made);
  return made;
}

function sameRecordedFields(memo: DecisionMember, d: CombinedDecision): boolean {
  const v = memo.known.value;
  if ((v.bundleDigest ?? '') !== d.bundleDigest || (v.policy ?? '') !== d.policy) return false;
  if (v.result !== d.decision || v.rule !== d.rule || memo.reasons.length !== d.reasons.length) return false;
  for (let i = 0; i < d.reasons.length; i++) if (memo.reasons[i] !== d.reasons[i]) return false;
  return true;
}

/** A record waiting to be written, the member whose text its maker keeps, and when it happened (if not now). */
interface QueuedRecord {
  readonly content: RecordContent;
  readonly known: KnownMember | undefined;
  readonly time: bigint | undefined;
  /**
   * Set when `content` is a command.outcome whose `outcome` is first to be merged into the decision record
   * `seq` (RecordChain.amendLast); `content` is written only when that cannot be done.
   */
  readonly amends?: number;
}

/** The last decision written to a sink that can merge its outcome into it later (AuditSink.amend). */
interface WrittenDecision {
  readonly id: number;
  readonly seq: number;
}

/** A decision record held for its command's outcome (deferrable sinks, see AgentSession.record). */
interface HeldDecision extends QueuedRecord {
  readonly id: number;
  /** heldDecisions.round when it was held. */
  readonly round: number;
}

/**
 * Decisions held for their outcome are written alone when the outcome has not come within one to two
 * rounds of HELD_DECISION_MS (a long statement, or a client that never reads its result), so a running
 * command's decision is not kept out of the file for long. One timer for every session, armed only while
 * some session holds a decision.
 */
const HELD_DECISION_MS = 50;
const heldDecisions = {
  round: 0,
  sessions: new Set<AgentSession>(),
  timer: undefined as NodeJS.Timeout | undefined,
};

function watchHeldDecision(session: AgentSession): void {
  heldDecisions.sessions.add(session);
  heldDecisions.timer ??= setTimeout(releaseStaleDecisions, HELD_DECISION_MS).unref();
}

function releaseStaleDecisions(): void {
  heldDecisions.timer = undefined;
  const round = heldDecisions.round;
  heldDecisions.round += 1;
  for (const session of heldDecisions.sessions) {
    if (!session.releaseHeldDecision(round)) heldDecisions.sessions.delete(session);
  }
  if (heldDecisions.sessions.size > 0)
    heldDecisions.timer = setTimeout(releaseStaleDecisions, HELD_DECISION_MS).unref();
}

export class AgentSession {
  readonly id = randomUUID();
  readonly identity: Identity;
  private readonly records: RecordChain;
  readonly counters = { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 };
  private readonly options: AgentSessionOptions;
  private readonly policyId: PolicyIdentity;
  private readonly resourceView: {
    name: string;
    namespace: string;
    type: ResourceType;
    labels: Readonly<Record<string, string>>;
  };
  private readonly metrics: ListenerCommandMetrics;
  /** The policy input's `session` member, outside and inside a transaction block (built once). */
  private readonly sessionFacts: readonly [PolicyRequest['session'], PolicyRequest['session']];
  private ended = false;
  /** Records whose writing waits until the engine's current step is done (see writeSoon). */
  private readonly soon: QueuedRecord[] = [];
  /** Per policy, the bundle digest the session's records named last (see record()). */
  private readonly namedDigests = new Map<string, string>();
  /** The newest decision, held for its outcome (deferrable sinks only); older than anything else unwritten. */
  private held: HeldDecision | undefined;
  /** The newest decision written to an amending sink (durable spool), while its outcome may still join it. */
  private written: WrittenDecision | undefined;
  private soonScheduled = false;
  /** Records refused by the sink and not yet reported in an audit.gap record. */
  private lost = 0;
  private lostReason = '';
  /** Requests filed for approve rules with wait: false, until their command comes again. */
  private readonly deferred = new DeferredApprovals();

  constructor(options: AgentSessionOptions) {
    this.options = options;
    this.identity = options.identity;
    this.policyId = policyIdentity(options.identity);
    this.resourceView = { ...options.resource };
    this.metrics = listenerCommandMetrics(options.metrics, options.listener);
    const session = (inTransaction: boolean): PolicyRequest['session'] =>
      Object.freeze({
        id: this.id,
        applicationName: options.source.applicationName,
        clientAddress: options.source.address,
        inTransaction,
      });
    this.sessionFacts = [session(false), session(true)];
    this.records = new RecordChain(
      options.sink,
      {
        sessionId: this.id,
        resource: options.resource.name,
        resourceType: options.resource.type,
        namespace: options.pod.namespace,
        pod: options.pod.name,
      },
      options.podChain,
      { identity: options.identity },
    );
    const refusal = this.write({ type: 'session.start', source: { ...options.source } }, true);
    // FailClosed: no session without a trail.
    if (refusal !== undefined) throw refusal;
  }

  /** Records refused so far and not yet reported in an audit.gap record (FailOpen). */
  get lostRecords(): number {
    return this.lost;
  }

  /**
   * Decides a command against every loaded policy and records the decision. The result says whether the
   * command may run as far as the audit trail is concerned (`audit`); the engine acts on that and on the
   * decision and never looks at the failure mode itself.
   */
  decide(description: CommandDescription, facts: { inTransaction: boolean }): DecidedCommand {
    const startedAt = performance.now();
    return this.record(description, this.evaluate(description, facts), startedAt);
  }

  /**
   * Decides without recording: for checks whose effect is recorded later (a Parse is recorded when its
   * statement executes, or when it is denied).
   */
  evaluate(description: CommandDescription, facts: { inTransaction: boolean }): CombinedDecision {
    const startedAt = performance.now();
    const decision = this.options.policy.decide(
      {
        identity: this.policyId,
        resource: this.resourceView,
        command: description.command,
        session: this.sessionFacts[facts.inTransaction ? 1 : 0],
      },
      description.fingerprint,
    );
    this.metrics.decisionSeconds.observe((performance.now() - startedAt) / 1e3);
    return decision;
  }

  /** Records a decision made by evaluate() and counts it; `audit` as for decide(). */
  record(description: CommandDescription, decision: CombinedDecision, startedAt = performance.now()): DecidedCommand {
    this.metrics.statements[decision.decision].inc();
    this.counters.commands += 1;
    if (decision.decision === 'allow') this.counters.allowed += 1;
    else if (decision.decision === 'deny') this.counters.denied += 1;
    else this.counters.held += 1;

    const id = this.records.nextCommandId();
    const { text, truncated } = truncateUtf8(description.text);
    // Built field by field rather than with conditional spreads (this runs for every statement), in the
    // sorted key order of the canonical form, so the chain serialises it with one JSON.stringify.
    const command = {} as NonNullable<AuditRecord['command']>;
    let bodyTruncated = false;
    if (description.body !== undefined) {
      const body = truncateUtf8(maskText(description.body, decision));
      command.body = body.text;
      bodyTruncated = body.truncated;
    }
    command.id = id;
    command.kind = description.command.type;
    if (description.parameters !== undefined) command.parameters = maskParameters(description.parameters, decision);
    // Frozen arrays (the engine shares them between statements) go into the record as they are.
    if (description.relations !== undefined) {
      const relations = description.relations;
      command.relations = relations.length > 64 ? relations.slice(0, 64) : ownCopy(relations);
    }
    if (description.requestId !== undefined) command.requestId = description.requestId;
    if (description.statementKinds !== undefined) command.statementKinds = ownCopy(description.statementKinds);
    command.text = text;
    if (truncated || bodyTruncated) command.truncated = true;
    // Format 3: the bundle digest is named by the first decision of its policy in the session (and again
    // when a reload changes it); later decisions of that policy under the same bundle leave it out.
    const member = decisionMember(decision);
    let result = member.known;
    if (decision.bundleDigest !== '') {
      if (this.namedDigests.get(decision.policy) === decision.bundleDigest) result = member.knownWithoutDigest;
      else this.namedDigests.set(decision.policy, decision.bundleDigest);
    }
    const content: RecordContent = { command, decision: result.value, type: 'command.decision' };
    if (this.options.sink.deferrable) {
      // Nothing to wait for and nothing can be refused: the record is made after the command is on its way,
      // and it waits for the command's outcome to be one record with it (format 3; see complete()).
      this.releaseHeld();
      this.held = { content, known: result, time: this.records.now(), id, round: heldDecisions.round };
      watchHeldDecision(this);
      return { id, decision, startedAt, recorded: true, audit: CLEAR };
    }
    const refusal = this.write(content, true, result);
    if (refusal !== undefined) {
      // Not written: the next decision names its digest again.
      this.namedDigests.clear();
      return { id, decision, startedAt, recorded: false, audit: this.refuse(refusal) };
    }
    // The durable spool: the decision is written (and durable) before the command runs, and its outcome
    // replaces it by one merged record if the sink has not passed it on by then (complete()).
    if (this.options.sink.amend !== undefined) this.written = { id, seq: this.records.lastSeq };
    return { id, decision, startedAt, recorded: true, audit: this.clearance() };
  }

  /**
   * Once the record is written: clear now, or when the sink's group commit settles (FailOpen forgives a
   * failed one). Never rejects: a commit that fails in any way leaves the record not durable.
   */
  private clearance(): AuditClearance {
    const durable = this.options.sink.whenDurable();
    if (durable === undefined) return CLEAR;
    return {
      state: 'pending',
      settled: durable.then(
        (): SettledClearance => CLEAR,
        (err: unknown): SettledClearance => {
          if (this.options.auditFailureMode === 'FailOpen') return CLEAR;
          return this.refuse(
            err instanceof AuditUnavailable
              ? err
              : new AuditUnavailable('disk-error', 'the audit record could not be made durable', { cause: err }),
          );
        },
      ),
    };
  }

  private refuse(error: AuditUnavailable): SettledClearance {
    this.metrics.statements.error.inc();
    return { state: 'refused', error };
  }

  /** Whether approve decisions hold commands for approval here (an approval desk is configured). */
  get holdsForApproval(): boolean {
    return this.options.approvals !== undefined;
  }

  /**
   * Holds a command decided `approve`: files an ApprovalRequest bound to exactly `exact` (the text as sent,
   * the parameters as bound), records `approval.requested` once it is filed and `approval.decided` when it
   * settles, and says whether the command may run. A FailClosed resource runs it only when the
   * approval.decided record is durable.
   */
  holdForApproval(command: DecidedCommand, description: CommandDescription, exact: ExactCommand): HeldForApproval {
    const desk = this.options.approvals;
    const approval = command.decision.approval;
    if (desk === undefined || approval === undefined) throw new Error('holdForApproval without an approval desk');
    const granted = this.underGrant(desk, command, description, exact);
    if (granted !== undefined) return granted;
    const kind = description.command.type;
    const shownParameters =
      description.parameters === undefined ? undefined : maskParameters(description.parameters, command.decision);
    const held = desk.hold({
      resource: { name: this.resourceView.name, namespace: this.resourceView.namespace },
      session: this.id,
      requester: this.identity,
      commandId: command.id,
      kind,
      exact,
      normalized: exact.normalized ?? description.fingerprint,
      shown: {
        text: truncateUtf8(description.text).text,
        ...(shownParameters === undefined ? {} : { parameters: shownParameters }),
      },
      decision: command.decision,
      approval,
    });
    const binding = { request: held.name, bindingHash: held.bindingHash };
    void held.filed.then((filed) => {
      if (!filed) return;
      const { text, truncated } = truncateUtf8(description.text);
      const recorded: NonNullable<AuditRecord['command']> = { id: command.id, kind };
      if (shownParameters !== undefined) recorded.parameters = shownParameters;
      recorded.text = text;
      if (truncated) recorded.truncated = true;
      this.write({
        type: 'approval.requested',
        command: recorded,
        approval: {
          ...binding,
          phase: 'Pending',
          requiredApprovals: held.requiredApprovals,
          expiresTime: held.expiresTime,
        },
      });
    });
    const verdict = held.result.then(async (result) => this.approvalSettled(command, kind, held, result));
    return { held, verdict };
  }

  /**
   * A command an approve rule with `wait: false` decided: never held. The request filed earlier for the
   * identical command answers it (core/approvals/deferred-approvals.ts): still pending, ApprovalPending;
   * approved, it runs (once; the command carries the approval); refused, that refusal. Otherwise a request is
   * filed and recorded as for a held command (holdForApproval), and the answer, once it is filed, is
   * ApprovalPending naming it. Never rejects.
   */
  async requestApproval(
    command: DecidedCommand,
    description: CommandDescription,
    exact: ExactCommand,
  ): Promise<ApprovalVerdict> {
    const desk = this.options.approvals;
    const granted = desk === undefined ? undefined : this.underGrant(desk, command, description, exact);
    if (granted !== undefined) return granted.verdict;
    const bindingHash = bindingHashOf({
      resource: { name: this.resourceView.name, namespace: this.resourceView.namespace },
      session: this.id,
      requester: this.identity,
      kind: description.command.type,
      exact,
    });
    const earlier = this.deferred.claim(bindingHash);
    switch (earlier.kind) {
      case 'pending': {
        if (await earlier.held.filed) {
          return { run: false, command, error: approvalPending(earlier.held, command.decision, true) };
        }
        // Its request could not be filed after all: the same refusal (ApprovalUnavailable).
        const result = await earlier.held.result;
        if (result.state === 'refused') return { run: false, command, error: result.error };
        return { run: false, command, error: { id: 'ApprovalUnavailable', message: 'chaperone: no approval request' } };
      }
      case 'settled': {
        const outcome = earlier.outcome;
        if (!outcome.run) return { run: false, command, error: outcome.error };
        return { run: true, command: { ...command, approval: outcome.approval } };
      }
      case 'full':
        return {
          run: false,
          command,
          error: {
            id: 'ApprovalUnavailable',
            message: `chaperone: this session already has ${String(MAX_DEFERRED_PER_SESSION)} approval requests pending; the statement did not run and no request was filed`,
            hint: 'Wait for the pending requests to be decided, or send their statements again once approved.',
          },
        };
      case 'none':
        break;
    }
    const { held, verdict } = this.holdForApproval(command, description, exact);
    this.deferred.remember(
      held,
      Promise.all([held.filed, verdict]).then(([filed, v]) => {
        if (!filed) return undefined;
        if (!v.run) return { run: false, error: v.error };
        return { run: true, approval: v.command.approval ?? { request: held.name, bindingHash: held.bindingHash } };
      }),
    );
    if (await held.filed) return { run: false, command, error: approvalPending(held, command.decision, false) };
    return verdict; // not filed: ApprovalUnavailable
  }

  /**
   * A command a live time-bound grant covers (core/approvals/approval-grants.ts): not held, no request filed.
   * Its approval.decided record names the grant's request, the approvers whose decisions made the grant and
   * the grant, bound to this command's own hash; it runs once that record is durable (FailClosed). Undefined
   * when no grant covers it.
   */
  private underGrant(
    desk: ApprovalDesk,
    command: DecidedCommand,
    description: CommandDescription,
    exact: ExactCommand,
  ): HeldForApproval | undefined {
    const approval = command.decision.approval;
    if (approval === undefined || desk.grants.size === 0) return undefined;
    const resource = { name: this.resourceView.name, namespace: this.resourceView.namespace };
    const grant = desk.grants.find({
      resource,
      requester: this.identity,
      policy: command.decision.policy,
      rule: command.decision.rule,
      session: this.id,
      normalized: exact.normalized ?? description.fingerprint,
      allowed: approval.grants,
    });
    if (grant === undefined) return undefined;
    desk.countGranted();
    const kind = description.command.type;
    const binding = {
      request: grant.request,
      bindingHash: bindingHashOf({ resource, session: this.id, requester: this.identity, kind, exact }),
    };
    const decisions = grant.decisions.map((d) => recordedDecision(d));
    const tally = {
      state: 'approved' as const,
      counted: grant.decisions,
      ignored: [],
      approvals: grant.decisions.length,
      required: grant.decisions.length,
    };
    const held: HeldCommand = {
      name: grant.request,
      namespace: desk.options.store.namespace,
      bindingHash: binding.bindingHash,
      expiresTime: grant.expiresTime,
      requiredApprovals: approval.requiredApprovals,
      filed: Promise.resolve(false),
      result: Promise.resolve({ state: 'approved', tally, grant }),
      cancel: () => undefined,
    };
    const verdict = (async (): Promise<ApprovalVerdict> => {
      const refusal = this.write(
        {
          type: 'approval.decided',
          command: { id: command.id, kind },
          approval: {
            ...binding,
            phase: 'Approved',
            ...(decisions.length === 0 ? {} : { decisions }),
            grant: { scopes: [...grant.scopes], expiresTime: grant.expiresTime },
          },
        },
        true,
      );
      if (refusal !== undefined) return { run: false, command, error: auditRefusal(refusal) };
      const clearance = this.clearance();
      const settled = clearance.state === 'pending' ? await clearance.settled : clearance;
      if (settled.state === 'refused') return { run: false, command, error: auditRefusal(settled.error) };
      return { run: true, command: { ...command, approval: binding } };
    })();
    return { held, verdict };
  }

  private async approvalSettled(
    command: DecidedCommand,
    kind: PolicyCommand['type'],
    held: HeldCommand,
    result: HoldResult,
  ): Promise<ApprovalVerdict> {
    const binding = { request: held.name, bindingHash: held.bindingHash };
    const filed = await held.filed;
    const tally = result.tally;
    const decisions = (tally?.counted ?? []).map((d) => recordedDecision(d));
    const phase = result.state === 'approved' ? 'Approved' : result.phase;
    const grant = result.state === 'approved' ? result.grant : undefined;
    if (filed) {
      const refusal = this.write(
        {
          type: 'approval.decided',
          command: { id: command.id, kind },
          approval: {
            ...binding,
            phase,
            ...(decisions.length === 0 ? {} : { decisions }),
            ...(grant === undefined ? {} : { grant: { scopes: [...grant.scopes], expiresTime: grant.expiresTime } }),
          },
        },
        result.state === 'approved',
      );
      if (refusal !== undefined) return { run: false, command, error: auditRefusal(refusal) };
    }
    if (result.state !== 'approved') return { run: false, command, error: result.error };
    const clearance = this.clearance();
    const settled = clearance.state === 'pending' ? await clearance.settled : clearance;
    if (settled.state === 'refused') return { run: false, command, error: auditRefusal(settled.error) };
    return { run: true, command: { ...command, approval: binding } };
  }

  /** Records how a decided command ended. */
  complete(command: DecidedCommand, kind: PolicyCommand['type'], outcome: CommandOutcome): void {
    // A command whose decision record was refused has no trail to continue.
    if (!command.recorded) return;
    if (outcome.status === 'error') this.counters.errors += 1;
    // In the sorted key order of the canonical form (see record()).
    const recorded = {} as NonNullable<AuditRecord['outcome']>;
    if (outcome.code !== undefined) recorded.code = outcome.code;
    recorded.durationMicros = Math.round((performance.now() - command.startedAt) * 1000);
    if (outcome.masked !== undefined && outcome.masked.length > 0) {
      recorded.masked = outcome.masked.slice(0, 64).map((m) => ({
        column: m.column.slice(0, 512),
        count: m.count,
        rule: m.rule.slice(0, 512),
        strategy: m.strategy,
      }));
    }
    if (outcome.message !== undefined) recorded.message = outcome.message.slice(0, 1024);
    if (outcome.rolledBack !== undefined) recorded.rolledBack = { ...outcome.rolledBack };
    if (outcome.rows !== undefined) recorded.rows = outcome.rows;
    recorded.status = outcome.status;
    // An outcome gates nothing: it is recorded once the engine has passed the response on. When its
    // decision is still held (nothing else was recorded since), the two are one record: the decision's
    // record with the outcome in it, at the decision's time.
    const held = this.held;
    if (held !== undefined && held.id === command.id && command.approval === undefined) {
      this.held = undefined;
      // A held content is always record()'s decision (command, decision, type): built as one literal in
      // the canonical key order rather than copied by a spread.
      const content = held.content;
      this.writeSoon(
        { command: content.command, decision: content.decision, outcome: recorded, type: content.type },
        held.known,
        held.time,
      );
      return;
    }
    const alone: RecordContent =
      command.approval === undefined
        ? { command: { id: command.id, kind }, outcome: recorded, type: 'command.outcome' }
        : { approval: command.approval, command: { id: command.id, kind }, outcome: recorded, type: 'command.outcome' };
    const written = this.written;
    if (written !== undefined && written.id === command.id && command.approval === undefined) {
      // Its decision is written and durable; if nothing was recorded since and the sink still has it, the
      // two become one record (writeQueued), or else the outcome is a record of its own.
      this.written = undefined;
      this.queueSoon({ content: alone, known: undefined, time: undefined, amends: written.seq });
      return;
    }
    this.writeSoon(alone);
  }

  /**
   * Records the end of the session and how it ended: `success` when the client or the sidecar closed it in
   * order, `error` when it broke (a protocol violation, the upstream lost), `denied` when the sidecar ended
   * it as a refusal; `code` is the error's SQLSTATE or HTTP status. `rolledBack`: the session ended inside a
   * transaction, which the server rolls back, undoing these commands recorded `success`.
   */
  end(reason: string, how: SessionEnding = ENDED_IN_ORDER, rolledBack?: RolledBack): void {
    if (this.ended) return;
    this.ended = true;
    this.deferred.withdrawAll('the session ended before the statement was sent again');
    this.options.approvals?.grants.endSession(this.id);
    const outcome = {} as NonNullable<AuditRecord['outcome']>;
    if (how.code !== undefined) outcome.code = how.code;
    outcome.message = reason.slice(0, 1024);
    if (rolledBack !== undefined) outcome.rolledBack = { ...rolledBack };
    outcome.status = how.status;
    this.write({ type: 'session.end', outcome });
  }

  /**
   * Queues a record to be written when the engine's current synchronous step returns (a microtask): by then
   * the bytes it forwarded are handed to the socket, so hashing and formatting the record add nothing to the
   * command's latency. Order is kept: every immediate write first writes what is queued.
   */
  private writeSoon(content: RecordContent, known?: KnownMember, time?: bigint): void {
    this.queueSoon({ content, known, time });
  }

  private queueSoon(queued: QueuedRecord): void {
    this.releaseHeld();
    this.soon.push(queued);
    if (this.soonScheduled) return;
    this.soonScheduled = true;
    queueMicrotask(this.writeQueued);
  }

  /** Queues the held decision, if any, to be written alone (something else is recorded after it). */
  private releaseHeld(): void {
    const held = this.held;
    if (held === undefined) return;
    this.held = undefined;
    this.soon.push(held);
    if (this.soonScheduled) return;
    this.soonScheduled = true;
    queueMicrotask(this.writeQueued);
  }

  /**
   * For the held-decision timer only: writes the held decision alone if it was held in `round` or before;
   * returns whether a decision is still held.
   */
  releaseHeldDecision(round: number): boolean {
    const held = this.held;
    if (held === undefined) return false;
    if (held.round > round) return true;
    this.releaseHeld();
    return false;
  }

  private readonly writeQueued = (): void => {
    this.soonScheduled = false;
    for (let queued = this.soon.shift(); queued !== undefined; queued = this.soon.shift()) {
      try {
        const amends = queued.amends;
        if (amends === undefined) this.writeNow(queued.content, false, queued.known, queued.time);
        else if (
          this.lost > 0 ||
          queued.content.outcome === undefined ||
          !this.records.amendLast(amends, queued.content.outcome)
        )
          this.writeNow(queued.content);
      } catch (err) {
        // Not the engine's step any more, so nothing can fail closed here: count it as a lost record.
        this.lose(err instanceof Error ? err.message : String(err));
      }
    }
  };

  /**
   * Writes one record. A refused write (AuditUnavailable) is returned when `gate` is set (the record gates
   * a command) and the resource is FailClosed, and thrown for the session.start record then; otherwise it is
   * counted as lost and reported by an audit.gap record before the next record that can be written.
   */
  private write(content: RecordContent, gate = false, known?: KnownMember): AuditUnavailable | undefined {
    this.releaseHeld();
    if (this.soon.length > 0) this.writeQueued();
    return this.writeNow(content, gate, known);
  }

  private writeNow(
    content: RecordContent,
    gate = false,
    known?: KnownMember,
    time?: bigint,
  ): AuditUnavailable | undefined {
    const failOpen = this.options.auditFailureMode === 'FailOpen';
    try {
      if (this.lost > 0) {
        this.records.record({ type: 'audit.gap', gap: { lostRecords: this.lost, reason: this.lostReason } });
        this.metrics.auditRecords.inc();
        this.lost = 0;
        this.lostReason = '';
      }
      this.records.record(content, known, time);
      this.metrics.auditRecords.inc();
      return undefined;
    } catch (err) {
      if (!(err instanceof AuditUnavailable)) throw err;
      if (gate && !failOpen) return err;
      this.lose(`${err.reason}: ${err.message}`);
      return undefined;
    }
  }

  private lose(reason: string): void {
    // A lost record may have been the one naming a bundle digest: name them again.
    this.namedDigests.clear();
    this.lost += 1;
    this.lostReason = reason.slice(0, 1024);
    auditMetrics(this.options.metrics.registry).lostRecords.inc({ listener: this.options.listener });
  }
}
