// ApprovalRequest: a command held by an approve rule, waiting for human decisions. Created by the sidecar;
// decisions are appended by approvers, whose identity is the one the API server authenticated.
import { Type, type Static, StringEnum, DateTime, Conditions, dnsSubdomain } from './schema.ts';
import { Identity } from './identity.ts';
import { COMMAND_KINDS } from './audit-record.ts';
import type { KubernetesObject } from './meta.ts';

/**
 * Pending until decided; Approved, Denied, Expired (nobody decided in time), Cancelled (the client cancelled
 * the held statement or went away) or Abandoned (the sidecar holding it stopped, so it can never run).
 * Every phase but Pending is final.
 */
export const APPROVAL_PHASES = ['Pending', 'Approved', 'Denied', 'Expired', 'Cancelled', 'Abandoned'] as const;
export type ApprovalPhase = (typeof APPROVAL_PHASES)[number];

/**
 * What one approval may cover for a while instead of one command (docs/approvals.md, "Time-bound grants"):
 * the same normalised statement (fingerprint), the session, or the resource, always for the same requester
 * chain and the same policy rule.
 */
export const GRANT_SCOPES = ['fingerprint', 'session', 'resource'] as const;
export type GrantScope = (typeof GRANT_SCOPES)[number];
/** The longest grant a policy may allow. */
export const MAX_GRANT_SECONDS = 86_400;

/** Label naming the pod whose sidecar filed a request (it marks its leftovers Abandoned after a restart). */
export const APPROVAL_POD_LABEL = 'chaperone.dev/pod';

const sha256Hash = (description: string) =>
  Type.String({ description, maxLength: 80, pattern: '^sha256:[0-9a-f]{64}$' });

export const ApprovalRequestSpec = Type.Object(
  {
    resource: Type.String({ description: 'ProtectedResource the command targets.', ...dnsSubdomain }),
    session: Type.String({ description: 'Session the command belongs to.', ...dnsSubdomain }),
    pod: Type.Optional(
      Type.Object(
        {
          name: Type.String({ description: 'Pod name.', maxLength: 253 }),
          uid: Type.Optional(Type.String({ description: 'Pod UID.', maxLength: 64 })),
        },
        { description: 'The pod whose sidecar holds the command.' },
      ),
    ),
    requester: Identity,
    bindingHash: Type.Optional(
      sha256Hash(
        'sha256 over the canonical form of exactly what runs on approval: resource, session, requester chain, statement text and bound parameters (unmasked). The sidecar runs only a statement with this hash (docs/approvals.md).',
      ),
    ),
    commandId: Type.Optional(
      Type.Integer({ description: 'Command number within the session (as in its audit records).', minimum: 1 }),
    ),
    command: Type.Object(
      {
        kind: StringEnum(COMMAND_KINDS, { description: 'Protocol family.' }),
        text: Type.String({ description: 'The held statement or request line.', maxLength: 16384 }),
        parameters: Type.Optional(
          Type.Array(Type.String({ description: 'A bound parameter (masked as in audit records).', maxLength: 1024 }), {
            description: 'Bound parameters.',
            maxItems: 64,
          }),
        ),
      },
      { description: 'What is waiting.' },
    ),
    policy: Type.Object(
      {
        name: Type.String({ description: 'AccessPolicy that required approval.', maxLength: 256 }),
        rule: Type.String({ description: 'Rule id.', maxLength: 256 }),
        bundleDigest: Type.Optional(Type.String({ description: 'Bundle digest in force.', maxLength: 80 })),
      },
      { description: 'The rule that held the command.' },
    ),
    requiredApprovals: Type.Integer({ description: 'Distinct approvals needed.', minimum: 1, maximum: 10 }),
    approverGroups: Type.Optional(
      Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), {
        description: 'Groups allowed to decide.',
        maxItems: 32,
      }),
    ),
    approvers: Type.Optional(
      Type.Array(Type.String({ description: 'A user name.', maxLength: 256 }), {
        description: 'Users allowed to decide.',
        maxItems: 32,
      }),
    ),
    allowSelfApproval: Type.Boolean({ description: 'Whether the requester chain may approve.', default: false }),
    expiresTime: DateTime({ description: 'When the request expires unanswered.' }),
    grants: Type.Optional(
      Type.Object(
        {
          scopes: Type.Array(StringEnum(GRANT_SCOPES, { description: 'A scope.' }), {
            description: 'Scopes an approver may grant.',
            maxItems: GRANT_SCOPES.length,
          }),
          maxDurationSeconds: Type.Integer({
            description: 'Longest grant an approver may give.',
            minimum: 1,
            maximum: MAX_GRANT_SECONDS,
          }),
        },
        {
          description:
            'Time-bound grants the policy allows: an approver may approve later matching commands for a while (docs/approvals.md). Absent: none.',
        },
      ),
    ),
  },
  {
    description: 'The held command and who may decide it. Immutable.',
    'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'spec is immutable' }],
  },
);
export type ApprovalRequestSpec = Static<typeof ApprovalRequestSpec>;

export const ApprovalDecision = Type.Object(
  {
    approver: Type.Object(
      {
        username: Type.String({ description: 'User name as authenticated by the API server.', maxLength: 256 }),
        uid: Type.Optional(
          Type.String({ description: 'User UID as authenticated by the API server.', maxLength: 256 }),
        ),
        groups: Type.Optional(
          Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), {
            description: 'Groups.',
            maxItems: 64,
          }),
        ),
      },
      { description: 'Who decided; admission checks it equals the requesting user.' },
    ),
    decision: StringEnum(['approve', 'deny'], { description: 'approve or deny.' }),
    time: DateTime({ description: 'When.' }),
    comment: Type.Optional(Type.String({ description: 'Why.', maxLength: 1024 })),
    grant: Type.Optional(
      Type.Object(
        {
          scope: StringEnum(GRANT_SCOPES, { description: 'What later commands the approval covers.' }),
          durationSeconds: Type.Integer({
            description: 'For how long, from the approval.',
            minimum: 1,
            maximum: MAX_GRANT_SECONDS,
          }),
        },
        {
          description:
            'approve only: the approver also approves later matching commands for a while, within spec.grants. The grant is made only when every counted approval asks for one; it is the narrowest of them.',
        },
      ),
    ),
  },
  { description: 'One approver decision.' },
);

/** Who acted, as the API server authenticated them (admission checks it). */
const AuthenticatedUser = (description: string) =>
  Type.Object(
    {
      username: Type.String({ description: 'User name as authenticated by the API server.', maxLength: 256 }),
      uid: Type.Optional(Type.String({ description: 'User UID as authenticated by the API server.', maxLength: 256 })),
      groups: Type.Optional(
        Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), { description: 'Groups.', maxItems: 64 }),
      ),
    },
    { description },
  );

/** The grant the sidecar made from the approving decisions, and how it ended (written by the sidecar only). */
export const ApprovalGrant = Type.Object(
  {
    scopes: Type.Array(StringEnum(GRANT_SCOPES, { description: 'A scope.' }), {
      description:
        'The scopes asked for by the approvers; a command must be within every one (the narrowest combination).',
      maxItems: GRANT_SCOPES.length,
    }),
    session: Type.Optional(
      Type.String({ description: 'The session it is limited to (scope session).', maxLength: 253 }),
    ),
    fingerprint: Type.Optional(
      Type.String({
        description: 'sha256 of the normalised statement it is limited to (scope fingerprint).',
        maxLength: 80,
      }),
    ),
    startTime: DateTime({ description: 'When the sidecar saw the approval.' }),
    expiresTime: DateTime({ description: 'When it ends at the latest.' }),
    approvers: Type.Array(Type.String({ description: 'A user name.', maxLength: 256 }), {
      description: 'The approvers whose decisions made it.',
      maxItems: 32,
    }),
    endTime: Type.Optional(DateTime({ description: 'When it ended.' })),
    endReason: Type.Optional(
      StringEnum(['Expired', 'Revoked', 'SessionEnded', 'SidecarStopped', 'Withdrawn'], {
        description: 'Why it ended.',
      }),
    ),
  },
  { description: 'A time-bound grant (docs/approvals.md).' },
);
export type ApprovalGrant = Static<typeof ApprovalGrant>;

export const ApprovalRevocation = Type.Object(
  {
    revokedBy: AuthenticatedUser('Who revoked it; admission checks it equals the requesting user.'),
    time: DateTime({ description: 'When.' }),
    comment: Type.Optional(Type.String({ description: 'Why.', maxLength: 1024 })),
  },
  { description: 'The grant was revoked (kubectl chaperone revoke). Set once.' },
);

export const ApprovalRequestStatus = Type.Object(
  {
    phase: StringEnum(APPROVAL_PHASES, { description: 'Pending until decided, expired or cancelled.' }),
    decisions: Type.Optional(
      Type.Array(ApprovalDecision, {
        description: 'Decisions, append-only.',
        maxItems: 32,
        'x-kubernetes-validations': [
          { rule: 'size(self) >= size(oldSelf) && oldSelf.all(o, o in self)', message: 'decisions are append-only' },
        ],
      }),
    ),
    conditions: Type.Optional(Conditions('Conditions of the request.')),
    grant: Type.Optional(ApprovalGrant),
    revocation: Type.Optional(ApprovalRevocation),
  },
  { description: 'Observed state of the request.' },
);
export type ApprovalRequestStatus = Static<typeof ApprovalRequestStatus>;

export type ApprovalRequest = KubernetesObject<'ApprovalRequest', ApprovalRequestSpec, ApprovalRequestStatus>;
