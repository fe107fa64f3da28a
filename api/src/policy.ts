// The contract between compiled AccessPolicy bundles and the sidecar that evaluates them
// (docs/policy.md). Each AccessPolicy compiles to one WebAssembly module with the entrypoint
// POLICY_ENTRYPOINT; the sidecar evaluates every bundle that applies to its resource and combines the
// results with combineDecisions (deny beats approve beats allow).
import type { GrantScope } from './approval-request.ts';
import { currentActor, type Actor, type Identity } from './identity.ts';
import type { Decision, MaskingStrategy, ContentDetector, StatementKind, UntraceableAction } from './access-policy.ts';
import type { ResourceType } from './protected-resource.ts';

/** Version of the input document; bumped on incompatible change. */
export const POLICY_INPUT_VERSION = 1;
/** Rego entrypoint every bundle exports (package chaperone.policy, rule `result`). */
export const POLICY_ENTRYPOINT = 'chaperone/policy/result';
/** Package a raw Rego module of an AccessPolicy must declare. */
export const CUSTOM_REGO_PACKAGE = 'chaperone.custom';

/**
 * Who is asking, as policy sees it. `subject` is the party on whose behalf the session runs (the top of
 * the chain); `actor` is the party acting now; `chain` every actor, current first. Policies may use every
 * earlier actor, not only the current one: Chaperone goes past RFC 8693 §4.1, which calls prior actors
 * informational only, because it verified the whole chain at every hop (docs/policy.md, Delegation).
 */
export interface PolicyIdentity {
  readonly subject: string;
  readonly issuer: string;
  readonly groups: readonly string[];
  /** Agent kind of the subject (assigned by the token exchange, or the chaperone.dev/agent-kind claim), if any. */
  readonly kind?: string;
  /** The party acting now: chain[0], or the subject itself when nothing was delegated. */
  readonly actor: Actor;
  /** Actors acting for the subject, the current actor first, then each earlier one. */
  readonly chain: readonly Actor[];
  /** chain.length, for rules on delegation depth. */
  readonly depth: number;
  /** Scopes the token was narrowed to; absent when it was not narrowed (it then carries every scope). */
  readonly scopes?: readonly string[];
  /** Resource URIs the token was narrowed to; absent when it was not narrowed. */
  readonly resources?: readonly string[];
}

/** The policy view of a verified identity. */
export function toPolicyIdentity(identity: Identity): PolicyIdentity {
  const chain = identity.chain ?? [];
  return {
    subject: identity.subject,
    issuer: identity.issuer,
    groups: identity.groups ?? [],
    ...(identity.kind === undefined ? {} : { kind: identity.kind }),
    actor: currentActor(identity),
    chain,
    depth: chain.length,
    ...(identity.scopes === undefined ? {} : { scopes: identity.scopes }),
    ...(identity.resources === undefined ? {} : { resources: identity.resources }),
  };
}

export interface SqlStatementFacts {
  readonly kind: StatementKind;
  /** schema.table of every relation referenced (unqualified names get the session's first search_path schema, default public). */
  readonly relations: readonly string[];
  /** schema.name of every function called (pg_catalog for built-ins). */
  readonly functions: readonly string[];
  /** True when the statement can change data, schema, sessions or the server (writes, nextval, DO, ...). */
  readonly sideEffects: boolean;
}

export interface SqlCommand {
  readonly type: 'sql';
  /** Every statement of the command (a simple query may carry several); each is decided. */
  readonly statements: readonly SqlStatementFacts[];
}

export interface KubernetesCommand {
  readonly type: 'kubernetes';
  readonly verb: string;
  readonly apiGroup: string;
  readonly resource: string;
  readonly subresource: string;
  readonly namespace: string;
  readonly name: string;
  /**
   * The path of a non-resource request (`/healthz`, `/metrics`, `/apis`), '' for resource requests. Rules
   * with `nonResourceURLs` match only non-resource requests; other kubernetes rules only resource requests.
   */
  readonly nonResourcePath: string;
}

export interface HttpCommand {
  readonly type: 'http';
  readonly method: string;
  /** Normalised as the upstream reads it (docs/http-engine.md), without the query. */
  readonly path: string;
  /** The upstream's host name (lower case): the agent's Host header is not forwarded. */
  readonly host: string;
  /**
   * Query parameters, every reading of each one: repeated names, and `+` or a second percent-decoding
   * where upstreams differ, give several values; allow rules need all of them to match, deny any one.
   */
  readonly query: Readonly<Record<string, readonly string[]>>;
  /** Forwarded request headers (lower-case names; the agent's credentials never among them). */
  readonly headers: Readonly<Record<string, readonly string[]>>;
}

export type PolicyCommand = SqlCommand | KubernetesCommand | HttpCommand;

export interface ZonedTime {
  /** Mon..Sun */
  readonly weekday: string;
  /** Minutes since local midnight, 0..1439. */
  readonly minute: number;
}

export interface PolicyInput {
  readonly version: typeof POLICY_INPUT_VERSION;
  readonly identity: PolicyIdentity;
  readonly resource: {
    readonly name: string;
    readonly namespace: string;
    readonly type: ResourceType;
    readonly labels: Readonly<Record<string, string>>;
  };
  readonly command: PolicyCommand;
  readonly session: {
    readonly id: string;
    readonly applicationName: string;
    readonly clientAddress: string;
    readonly inTransaction: boolean;
  };
  readonly time: {
    readonly unixMillis: number;
    /** Local weekday and minute in every time zone the bundle's manifest lists (always UTC). */
    readonly zones: Readonly<Record<string, ZonedTime>>;
  };
}

export interface MaskingInstruction {
  /** policy/rule that asked for it. */
  readonly rule: string;
  readonly columns: readonly string[];
  readonly detectors: readonly ContentDetector[];
  readonly strategy: MaskingStrategy;
  /** PostgreSQL type names whose result columns are masked. Absent: none. */
  readonly types?: readonly string[];
  /** partial: characters kept at the end. Absent: 4. */
  readonly keepLast?: number;
  /** fixed: the text written in text-like columns. Absent: the empty string. */
  readonly value?: string;
  /** A result column whose lineage cannot be proven. Absent: redact. */
  readonly untraceable?: UntraceableAction;
  /** Deny predicates, joins, grouping and ordering on masked columns. Absent: false. */
  readonly denyPredicates?: boolean;
}

export interface ApprovalRequirement {
  readonly approverGroups: readonly string[];
  readonly approvers: readonly string[];
  readonly requiredApprovals: number;
  readonly timeoutSeconds: number;
  readonly allowSelfApproval: boolean;
  /**
   * false when the approve rule that decided says `wait: false`: the command is not held on its connection;
   * it is answered at once and an identical retry runs once approved. Absent: the command waits.
   */
  readonly wait?: boolean;
  /**
   * Time-bound grants approvers may give instead of approving one command (docs/approvals.md): the scopes
   * allowed and the longest duration. Absent: none.
   */
  readonly grants?: { readonly scopes: readonly GrantScope[]; readonly maxSeconds: number };
}

/** What one compiled policy returns for one input. */
export interface PolicyResult {
  /** False when the policy's subjects do not cover the identity; such a result is ignored. */
  readonly applicable: boolean;
  readonly decision: Decision;
  /** Rule id that decided, or "default" when no rule matched, or "rego" for the raw module. */
  readonly rule: string;
  readonly reasons: readonly string[];
  readonly message?: string;
  readonly approval?: ApprovalRequirement;
  readonly masking: readonly MaskingInstruction[];
}

/** The sidecar's decision after combining every applicable policy. */
export interface CombinedDecision {
  readonly decision: Decision;
  /** namespace/name of the deciding policy ("" when no policy applied). */
  readonly policy: string;
  readonly rule: string;
  readonly bundleDigest: string;
  readonly reasons: readonly string[];
  readonly message?: string;
  readonly approval?: ApprovalRequirement;
  readonly masking: readonly MaskingInstruction[];
}

export interface EvaluatedPolicy {
  /** namespace/name */
  readonly policy: string;
  readonly bundleDigest: string;
  readonly result: PolicyResult;
}

const STRICTNESS: Readonly<Record<Decision, number>> = { allow: 0, approve: 1, deny: 2 };

/**
 * Combines the results of every policy on a resource: deny beats approve beats allow; with no
 * applicable policy the answer is deny (rule "no-policy"). Ties keep the first policy in the order given
 * (callers sort by policy name so the result is deterministic). Masking is the union over allowing and
 * approving policies, because every policy's masking must hold for the data it lets through.
 */
export function combineDecisions(evaluated: readonly EvaluatedPolicy[]): CombinedDecision {
  const applicable = evaluated.filter((e) => e.result.applicable);
  const first = applicable[0];
  if (first === undefined) {
    return {
      decision: 'deny',
      policy: '',
      rule: 'no-policy',
      bundleDigest: '',
      reasons: ['no AccessPolicy covers this identity on this resource'],
      masking: [],
    };
  }
  let winner = first;
  for (const e of applicable) {
    if (STRICTNESS[e.result.decision] > STRICTNESS[winner.result.decision]) winner = e;
  }
  const masking =
    winner.result.decision === 'deny'
      ? []
      : applicable.filter((e) => e.result.decision !== 'deny').flatMap((e) => e.result.masking);
  return {
    decision: winner.result.decision,
    policy: winner.policy,
    rule: winner.result.rule,
    bundleDigest: winner.bundleDigest,
    reasons: winner.result.reasons,
    ...(winner.result.message === undefined ? {} : { message: winner.result.message }),
    ...(winner.result.approval === undefined ? {} : { approval: winner.result.approval }),
    masking,
  };
}
