// The protocol-neutral command: what an engine makes of one unit of traffic (a SQL string, an Execute, an
// HTTP request) for the core to decide and record, and what the core hands back. Engines build a
// CommandDescription, AgentSession.decide returns a DecidedCommand, the engine reports a CommandOutcome.
import type { CombinedDecision, PolicyCommand } from '@chaperone/api';
import type { AuditUnavailable } from './audit/audit-sink.ts';

export interface CommandDescription {
  readonly command: PolicyCommand;
  /** Stable key of what the decision depends on (the analysed facts), for the decision cache. */
  readonly fingerprint: string;
  /** Text recorded (cut to MAX_COMMAND_TEXT bytes). */
  readonly text: string;
  readonly parameters?: readonly string[];
  /** The protocol's id of the request (a Kubernetes Audit-ID), recorded to tie the record to the target's logs. */
  readonly requestId?: string;
  /** Request body recorded with the decision (cut to MAX_COMMAND_TEXT bytes, masked by the decision's masking rules). */
  readonly body?: string;
  readonly statementKinds?: readonly string[];
  readonly relations?: readonly string[];
}

/**
 * Whether a decided command may run as far as the audit trail is concerned (NIST AU-5). The session
 * decides it once, from the sink's answer and the resource's audit failure mode; engines only act on it.
 * - `clear`: the decision record is durable (or the sink has no durability of its own, or the resource is
 *   FailOpen and the record was lost, which an `audit.gap` record will say);
 * - `pending`: the record is waiting for the sink's group commit; `settled` says which of the other two;
 * - `refused`: FailClosed and the record cannot be made durable: the command must not run.
 */
export type AuditClearance =
  | { readonly state: 'clear' }
  | { readonly state: 'pending'; readonly settled: Promise<SettledClearance> }
  | { readonly state: 'refused'; readonly error: AuditUnavailable };

export type SettledClearance = Exclude<AuditClearance, { state: 'pending' }>;

/** The clearance of every command whose record needs no wait; shared, so the hot path allocates nothing for it. */
export const CLEAR: SettledClearance = Object.freeze({ state: 'clear' });

export interface DecidedCommand {
  /** Shared by the command's decision and outcome records. */
  readonly id: number;
  readonly decision: CombinedDecision;
  /** performance.now() when the command was decided (a number: no BigInt per statement), ms. */
  readonly startedAt: number;
  /** False when the decision record was refused (FailClosed): the command has no trail, so no outcome is recorded. */
  readonly recorded: boolean;
  readonly audit: AuditClearance;
  /** The approval a held command ran under (its outcome record names it). */
  readonly approval?: { readonly request: string; readonly bindingHash: string };
}

/**
 * A decision the sidecar makes itself, not a policy (`policy` ""): a refusal before or outside policy, Kubernetes
 * discovery, self-reviews. Recorded like any other; `rule` names why, `reasons` say it.
 */
export function builtInDecision(decision: 'allow' | 'deny', rule: string, reason: string): CombinedDecision {
  return { decision, policy: '', rule, bundleDigest: '', reasons: [reason], masking: [] };
}

export interface CommandOutcome {
  readonly status: 'success' | 'error' | 'denied' | 'cancelled';
  /** The protocol's own code (a SQLSTATE, an HTTP status). */
  readonly code?: string;
  readonly message?: string;
  readonly rows?: number;
  /** Result values masked, per column and strategy (counts only, never a value). */
  readonly masked?: readonly MaskedCount[];
  /** On a rollback's outcome: the commands recorded `success` whose work it undid (docs/audit.md). */
  readonly rolledBack?: RolledBack;
}

/** Commands recorded `success` that a rollback undid: how many, and the first and last command id. */
export interface RolledBack {
  readonly commands: number;
  readonly first: number;
  readonly last: number;
}

export interface MaskedCount {
  readonly column: string;
  readonly rule: string;
  readonly strategy: string;
  readonly count: number;
}
