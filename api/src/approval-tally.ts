// What an ApprovalRequest's decisions add up to, and what exactly an approval is bound to
// (docs/approvals.md). The sidecar runs a held command only on its own tally of the decisions, never on
// the request's `status.phase` (which anyone allowed to write status could set); the CLI shows the same
// tally. Admission already refuses ineligible decisions; the tally re-checks them so that a missing or
// mis-bound admission policy fails closed instead of open.
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import {
  GRANT_SCOPES,
  type ApprovalRequestSpec,
  type ApprovalRequestStatus,
  type GrantScope,
} from './approval-request.ts';
import type { Identity } from './identity.ts';

export type ApprovalDecisionEntry = NonNullable<ApprovalRequestStatus['decisions']>[number];

/** Exactly what runs when a held command is approved; its hash is the request's spec.bindingHash. */
export interface ApprovalBinding {
  readonly resource: { readonly namespace: string; readonly name: string };
  /** The agent session (Session id) the command is held in. */
  readonly session: string;
  /** The requester as verified: subject, issuer and every actor of its chain. */
  readonly requester: Pick<Identity, 'subject' | 'issuer' | 'chain'>;
  readonly command: {
    readonly kind: string;
    /** The statement text exactly as the client sent it (never cut). */
    readonly text: string;
    /** Bound parameters exactly as sent (format-tagged, not masked, not cut); none for a simple query. */
    readonly parameters: readonly string[];
  };
}

/** sha256 over the RFC 8785 canonical JSON of the binding, as `sha256:<hex>`. */
export function approvalBindingHash(binding: ApprovalBinding): string {
  const canonical = canonicalize({
    command: { kind: binding.command.kind, parameters: [...binding.command.parameters], text: binding.command.text },
    requester: {
      chain: (binding.requester.chain ?? []).map((a) => ({ issuer: a.issuer ?? '', subject: a.subject })),
      issuer: binding.requester.issuer,
      subject: binding.requester.subject,
    },
    resource: { name: binding.resource.name, namespace: binding.resource.namespace },
    session: binding.session,
  });
  if (canonical === undefined) throw new Error('approval binding cannot be canonicalized');
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

/** The requester and every actor of its chain: none of them may approve unless allowSelfApproval. */
export function requesterParties(requester: Pick<Identity, 'subject' | 'chain'>): string[] {
  return [requester.subject, ...(requester.chain ?? []).map((a) => a.subject)];
}

export interface IgnoredDecision {
  readonly decision: ApprovalDecisionEntry;
  readonly reason: string;
}

export interface ApprovalTally {
  /** approved: enough distinct eligible approvers; denied: an eligible approver denied; else pending. */
  readonly state: 'pending' | 'approved' | 'denied';
  /** The first decision of each eligible approver, in the order made. */
  readonly counted: readonly ApprovalDecisionEntry[];
  /** Decisions that do not count, and why. */
  readonly ignored: readonly IgnoredDecision[];
  /** Distinct eligible approvers who approved. */
  readonly approvals: number;
  readonly required: number;
}

type TallySpec = Pick<
  ApprovalRequestSpec,
  'requester' | 'approvers' | 'approverGroups' | 'allowSelfApproval' | 'requiredApprovals'
>;

/** Why a decision by this approver does not count, or undefined when it does. */
function ineligible(spec: TallySpec, d: ApprovalDecisionEntry, parties: readonly string[]): string | undefined {
  const username = d.approver.username;
  if (username === '') return 'no approver named';
  if (!spec.allowSelfApproval && parties.includes(username)) return 'the requester or an actor of its chain';
  const approvers = spec.approvers ?? [];
  const groups = spec.approverGroups ?? [];
  // Nobody designated: nobody can approve (fail closed; the policy schema requires one of the two).
  if (approvers.length === 0 && groups.length === 0) return 'the request names no approvers';
  if (approvers.includes(username)) return undefined;
  // Groups as the API server authenticated them (admission checks the decision's groups against userInfo).
  if ((d.approver.groups ?? []).some((g) => groups.includes(g))) return undefined;
  return 'neither a named approver nor in an approver group';
}

/**
 * Counts decisions: each approver once (the first decision; the same person twice counts once), only
 * eligible approvers, any eligible deny ends it, and `requiredApprovals` distinct approvals approve it.
 */
export function tallyDecisions(spec: TallySpec, decisions: readonly ApprovalDecisionEntry[] = []): ApprovalTally {
  const parties = requesterParties(spec.requester);
  const seen = new Set<string>();
  const counted: ApprovalDecisionEntry[] = [];
  const ignored: IgnoredDecision[] = [];
  let approvals = 0;
  let denied = false;
  for (const d of decisions) {
    const why = ineligible(spec, d, parties);
    if (why !== undefined) {
      ignored.push({ decision: d, reason: why });
      continue;
    }
    if (seen.has(d.approver.username)) {
      ignored.push({ decision: d, reason: 'this approver decided already' });
      continue;
    }
    seen.add(d.approver.username);
    counted.push(d);
    if (d.decision === 'deny') denied = true;
    else approvals += 1;
  }
  const required = Math.max(1, spec.requiredApprovals);
  const state = denied ? 'denied' : approvals >= required ? 'approved' : 'pending';
  return { state, counted, ignored, approvals, required };
}

/** What an approved request grants beyond its own command (docs/approvals.md, "Time-bound grants"). */
export interface GrantTerms {
  /** Every scope asked for: a later command must be within each (fingerprint and session narrow it). */
  readonly scopes: readonly GrantScope[];
  readonly durationSeconds: number;
  /** The approvers whose decisions made it, in the order counted. */
  readonly approvers: readonly string[];
}

/**
 * The grant an approved tally makes, or undefined: only when the request's spec allows grants and every
 * counted approval asks for one within them (an approver who approved just the one command is not made to
 * approve more); the narrowest combination of what they asked (every scope applies; the shortest
 * duration, capped by the spec).
 */
export function grantOf(spec: Pick<ApprovalRequestSpec, 'grants'>, tally: ApprovalTally): GrantTerms | undefined {
  const allowed = spec.grants;
  if (tally.state !== 'approved' || allowed === undefined) return undefined;
  const approving = tally.counted.filter((d) => d.decision === 'approve');
  if (approving.length === 0) return undefined;
  const scopes = new Set<GrantScope>();
  let duration = allowed.maxDurationSeconds;
  for (const d of approving) {
    const asked = d.grant;
    if (asked === undefined || !allowed.scopes.includes(asked.scope)) return undefined;
    scopes.add(asked.scope);
    duration = Math.min(duration, asked.durationSeconds);
  }
  if (!(duration >= 1)) return undefined;
  return {
    scopes: GRANT_SCOPES.filter((s) => scopes.has(s)),
    durationSeconds: Math.floor(duration),
    approvers: approving.map((d) => d.approver.username),
  };
}
