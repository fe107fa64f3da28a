// Runtime check of what a compiled policy returned. A bundle is code from outside the sidecar's build;
// anything that does not have the PolicyResult shape becomes a deny with a reason, never a crash.
import {
  CONTENT_DETECTORS,
  DECISIONS,
  GRANT_SCOPES,
  MASKING_STRATEGIES,
  MAX_GRANT_SECONDS,
  UNTRACEABLE_ACTIONS,
} from '@chaperone/api';
import type { ApprovalRequirement, MaskingInstruction, PolicyResult } from '@chaperone/api';

const decisions: ReadonlySet<unknown> = new Set(DECISIONS);
const strategies: ReadonlySet<unknown> = new Set(MASKING_STRATEGIES);
const detectors: ReadonlySet<unknown> = new Set(CONTENT_DETECTORS);
const untraceable: ReadonlySet<unknown> = new Set(UNTRACEABLE_ACTIONS);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isStringArray(v: unknown): v is string[] {
  if (!Array.isArray(v)) return false;
  for (const x of v) if (typeof x !== 'string') return false;
  return true;
}

function isApproval(v: unknown): v is ApprovalRequirement {
  return (
    isRecord(v) &&
    isStringArray(v.approverGroups) &&
    isStringArray(v.approvers) &&
    Number.isInteger(v.requiredApprovals) &&
    typeof v.timeoutSeconds === 'number' &&
    v.timeoutSeconds >= 0 &&
    typeof v.allowSelfApproval === 'boolean' &&
    (v.wait === undefined || typeof v.wait === 'boolean') &&
    (v.grants === undefined || isGrants(v.grants))
  );
}

const grantScopes: ReadonlySet<unknown> = new Set(GRANT_SCOPES);

function isGrants(v: unknown): boolean {
  return (
    isRecord(v) &&
    Array.isArray(v.scopes) &&
    v.scopes.every((s) => grantScopes.has(s)) &&
    typeof v.maxSeconds === 'number' &&
    Number.isInteger(v.maxSeconds) &&
    v.maxSeconds >= 1 &&
    v.maxSeconds <= MAX_GRANT_SECONDS
  );
}

function isMasking(v: unknown): v is MaskingInstruction {
  if (!isRecord(v) || typeof v.rule !== 'string' || !isStringArray(v.columns) || !strategies.has(v.strategy))
    return false;
  if (!Array.isArray(v.detectors)) return false;
  for (const d of v.detectors) if (!detectors.has(d)) return false;
  if (v.types !== undefined && !isStringArray(v.types)) return false;
  if (v.keepLast !== undefined && (typeof v.keepLast !== 'number' || !Number.isInteger(v.keepLast) || v.keepLast < 0))
    return false;
  if (v.value !== undefined && typeof v.value !== 'string') return false;
  if (v.untraceable !== undefined && !untraceable.has(v.untraceable)) return false;
  if (v.denyPredicates !== undefined && typeof v.denyPredicates !== 'boolean') return false;
  return true;
}

/** Returns the result when it has the PolicyResult shape, else a description of what is wrong. */
export function checkPolicyResult(v: unknown): PolicyResult | string {
  if (!isRecord(v)) return 'result is not an object';
  if (typeof v.applicable !== 'boolean') return 'result.applicable is not a boolean';
  if (!decisions.has(v.decision)) return 'result.decision is not allow, deny or approve';
  if (typeof v.rule !== 'string') return 'result.rule is not a string';
  if (!isStringArray(v.reasons)) return 'result.reasons is not a list of strings';
  if (v.message !== undefined && typeof v.message !== 'string') return 'result.message is not a string';
  if (v.decision === 'approve' && !isApproval(v.approval))
    return 'result.approval is missing or malformed for an approve decision';
  if (v.approval !== undefined && !isApproval(v.approval)) return 'result.approval is malformed';
  if (!Array.isArray(v.masking)) return 'result.masking is not a list';
  for (const m of v.masking) if (!isMasking(m)) return 'result.masking holds a malformed instruction';
  return v as unknown as PolicyResult;
}

/** The result a policy stands for when it could not be evaluated: it applies, and it denies. */
export function failedResult(rule: string, reason: string): PolicyResult {
  return { applicable: true, decision: 'deny', rule, reasons: [reason], masking: [] };
}
