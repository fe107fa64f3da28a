// The audit record: one event of a session, hash-chained to the one before it. Version 3 (written now): the
// session's identity and where it runs (session id, resource, pod) are on its session.start record only, and
// every later record is bound to it by the chain; version 2 (still verified) had no `session` member, version 1
// repeated the identity on every record. Field meanings, the canonical form and the chain are specified in
// docs/audit.md.
import { Type, type Static, StringEnum } from './schema.ts';
import { Identity } from './identity.ts';
import { RESOURCE_TYPES } from './protected-resource.ts';

export const AUDIT_RECORD_VERSION = 3;
/** Record format versions a verifier accepts. */
export const AUDIT_RECORD_VERSIONS = [1, 2, 3] as const;

export const AUDIT_EVENT_TYPES = [
  'session.start',
  'session.end',
  'command.decision',
  'command.outcome',
  'approval.requested',
  'approval.decided',
  'auth.failure',
  'policy.loaded',
  'audit.gap',
] as const;
export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

export const COMMAND_KINDS = ['sql', 'kubernetes', 'http'] as const;
export const OUTCOME_STATUSES = ['success', 'error', 'denied', 'cancelled'] as const;

/** Longest statement text kept in a record; longer text is cut and `truncated` set (the hash covers the cut text). */
export const MAX_COMMAND_TEXT = 8192;

const hashString = (description: string) =>
  Type.String({ description, maxLength: 80, pattern: '^sha256:[0-9a-f]{64}$' });

export const AuditRecord = Type.Object(
  {
    v: Type.Integer({
      description:
        'Record format version: 3 (identity and session on session.start only), 2 (identity on session.start only) or 1 (identity on every record).',
      minimum: 1,
      maximum: 3,
    }),
    seq: Type.Integer({
      description: 'Position in the session, from 1, contiguous across continuation objects.',
      minimum: 1,
    }),
    time: Type.String({
      description: 'UTC time of the event with microseconds, e.g. 2026-11-27T10:00:00.000001Z.',
      maxLength: 32,
      pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$',
    }),
    type: StringEnum(AUDIT_EVENT_TYPES, { description: 'Event type.' }),
    identity: Type.Optional(Identity),
    session: Type.Optional(
      Type.Object(
        {
          sessionId: Type.String({ description: 'The session id (Session spec.sessionId).', maxLength: 64 }),
          resource: Type.String({ description: 'The ProtectedResource the session is on.', maxLength: 253 }),
          resourceType: StringEnum(RESOURCE_TYPES, { description: 'Its type.' }),
          namespace: Type.String({ description: "The sidecar's pod namespace.", maxLength: 63 }),
          pod: Type.String({ description: "The sidecar's pod.", maxLength: 253 }),
        },
        {
          description:
            'Where the session runs, on session.start (version 3): bound by the chain to every record of the session.',
        },
      ),
    ),
    source: Type.Optional(
      Type.Object(
        {
          address: Type.Optional(
            Type.String({ description: 'Client address as seen by the sidecar.', maxLength: 128 }),
          ),
          applicationName: Type.Optional(Type.String({ description: 'Client application name.', maxLength: 256 })),
          user: Type.Optional(
            Type.String({ description: 'User name the client asked for (recorded, never trusted).', maxLength: 256 }),
          ),
          database: Type.Optional(Type.String({ description: 'Database the client asked for.', maxLength: 256 })),
        },
        { description: 'Where the session came from, on session.start.' },
      ),
    ),
    command: Type.Optional(
      Type.Object(
        {
          id: Type.Integer({
            description: 'Command number within the session, shared by its decision and outcome.',
            minimum: 1,
          }),
          kind: StringEnum(COMMAND_KINDS, { description: 'Protocol family of the command.' }),
          requestId: Type.Optional(
            Type.String({
              description:
                "The protocol's own id of the request, shared with the target's logs: the Kubernetes API server's Audit-ID, an HTTP request's X-Request-Id.",
              maxLength: 128,
            }),
          ),
          body: Type.Optional(
            Type.String({
              description:
                'Request body of a mutating Kubernetes or HTTP request (cut to 8192 bytes; Secret values and what masking rules cover are masked); on decision records.',
              maxLength: 16384,
            }),
          ),
          text: Type.Optional(
            Type.String({
              description: 'Statement or request line as sent (cut to 8192 bytes); on decision and approval records.',
              maxLength: 16384,
            }),
          ),
          truncated: Type.Optional(Type.Boolean({ description: 'Whether text was cut.' })),
          parameters: Type.Optional(
            Type.Array(
              Type.String({
                description: 'A parameter value (masked where a masking rule covers it).',
                maxLength: 1024,
              }),
              {
                description: 'Bound parameters of an extended-protocol statement; null values are the string "NULL".',
                maxItems: 64,
              },
            ),
          ),
          statementKinds: Type.Optional(
            Type.Array(Type.String({ description: 'A statement kind.', maxLength: 32 }), {
              description: 'Kinds of the statements in the command.',
              maxItems: 64,
            }),
          ),
          relations: Type.Optional(
            Type.Array(Type.String({ description: 'A schema-qualified relation.', maxLength: 256 }), {
              description: 'Relations the command references.',
              maxItems: 64,
            }),
          ),
        },
        { description: 'The command, on command.* and approval.* events.' },
      ),
    ),
    decision: Type.Optional(
      Type.Object(
        {
          result: StringEnum(['allow', 'deny', 'approve'], { description: 'What the policy decided.' }),
          policy: Type.Optional(
            Type.String({ description: 'AccessPolicy (namespace/name) that decided.', maxLength: 256 }),
          ),
          rule: Type.Optional(Type.String({ description: 'Rule id that decided.', maxLength: 256 })),
          bundleDigest: Type.Optional(hashString('Digest of the policy bundle in force.')),
          reasons: Type.Optional(
            Type.Array(Type.String({ description: 'A reason.', maxLength: 1024 }), {
              description: 'Why.',
              maxItems: 16,
            }),
          ),
          approval: Type.Optional(
            Type.String({ description: 'ApprovalRequest name, when one was involved.', maxLength: 253 }),
          ),
        },
        { description: 'The policy decision, on command.decision.' },
      ),
    ),
    outcome: Type.Optional(
      Type.Object(
        {
          status: StringEnum(OUTCOME_STATUSES, { description: 'How the command ended.' }),
          code: Type.Optional(Type.String({ description: 'SQLSTATE or HTTP status code.', maxLength: 16 })),
          message: Type.Optional(Type.String({ description: 'Error message, if any.', maxLength: 1024 })),
          rows: Type.Optional(Type.Integer({ description: 'Rows returned or affected.', minimum: 0 })),
          masked: Type.Optional(
            Type.Array(
              Type.Object(
                {
                  column: Type.String({
                    description: 'The result column (its label, and the masked source column when known).',
                    maxLength: 512,
                  }),
                  rule: Type.String({ description: 'policy/rule that masked it.', maxLength: 512 }),
                  strategy: Type.String({ description: 'Strategy applied (or detect, untraceable).', maxLength: 32 }),
                  count: Type.Integer({ description: 'Values masked in this column.', minimum: 0 }),
                },
                { description: 'Masked values of one result column: counts only, never a value.' },
              ),
              { description: 'What result masking replaced, per column and strategy.', maxItems: 64 },
            ),
          ),
          durationMicros: Type.Optional(
            Type.Integer({ description: 'Time from forward to completion, µs.', minimum: 0 }),
          ),
          rolledBack: Type.Optional(
            Type.Object(
              {
                commands: Type.Integer({ description: 'How many commands it undid.', minimum: 1 }),
                first: Type.Integer({ description: 'Id of the first command it undid.', minimum: 1 }),
                last: Type.Integer({ description: 'Id of the last command it undid.', minimum: 1 }),
              },
              {
                description:
                  'On the outcome of a ROLLBACK, ROLLBACK TO SAVEPOINT or a COMMIT the server rolled back, and on session.end inside a transaction: the commands of this session recorded success whose work it undid (those between first and last not undone by an earlier rollback record).',
              },
            ),
          ),
        },
        { description: 'The result, on command.outcome.' },
      ),
    ),
    approval: Type.Optional(
      Type.Object(
        {
          request: Type.String({ description: 'ApprovalRequest name (in the pod namespace).', maxLength: 253 }),
          bindingHash: hashString('Hash of exactly what runs on approval (the request spec.bindingHash).'),
          phase: Type.Optional(
            StringEnum(['Pending', 'Approved', 'Denied', 'Expired', 'Cancelled', 'Abandoned', 'Withdrawn'], {
              description:
                'Pending on approval.requested; how it ended on approval.decided (Withdrawn: the request was deleted or replaced while pending).',
            }),
          ),
          requiredApprovals: Type.Optional(Type.Integer({ description: 'Distinct approvals needed.', minimum: 1 })),
          expiresTime: Type.Optional(Type.String({ description: 'When the request expires.', maxLength: 32 })),
          decisions: Type.Optional(
            Type.Array(
              Type.Object(
                {
                  approver: Type.String({
                    description: 'User name as the API server authenticated it.',
                    maxLength: 256,
                  }),
                  uid: Type.Optional(Type.String({ description: 'User UID, when known.', maxLength: 256 })),
                  groups: Type.Optional(
                    Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), {
                      description: 'Groups the decision was counted under.',
                      maxItems: 64,
                    }),
                  ),
                  decision: StringEnum(['approve', 'deny'], { description: 'approve or deny.' }),
                  time: Type.String({ description: 'When the approver decided.', maxLength: 32 }),
                  comment: Type.Optional(Type.String({ description: 'Why.', maxLength: 1024 })),
                },
                { description: 'One counted decision.' },
              ),
              { description: 'The decisions that counted (distinct approvers), on approval.decided.', maxItems: 32 },
            ),
          ),
          grant: Type.Optional(
            Type.Object(
              {
                scopes: Type.Array(
                  Type.String({ description: 'A scope: fingerprint, session or resource.', maxLength: 16 }),
                  {
                    description: 'What later commands it covers (every scope applies).',
                    maxItems: 3,
                  },
                ),
                expiresTime: Type.String({ description: 'When it ends at the latest.', maxLength: 32 }),
              },
              {
                description:
                  "A time-bound grant: made by this approval (approval.decided of the approved command), or the grant a command ran under (approval.decided of that command, whose decisions are the grant's).",
              },
            ),
          ),
        },
        {
          description: 'The approval a command was held for, on approval.* records and the outcome of a held command.',
        },
      ),
    ),
    gap: Type.Optional(
      Type.Object(
        {
          lostRecords: Type.Integer({ description: 'How many records could not be made durable.', minimum: 0 }),
          reason: Type.String({ description: 'Why.', maxLength: 1024 }),
        },
        { description: 'A hole in the trail under FailOpen, on audit.gap.' },
      ),
    ),
    prevHash: hashString('Hash of the previous record (of the previous session of the pod, for seq 1).'),
    hash: hashString('sha256 over the canonical form of this record without the hash field.'),
  },
  { description: 'One audit record. Immutable once written.' },
);
export type AuditRecord = Static<typeof AuditRecord>;

/**
 * Whether a record says how a command ended: a command.outcome, or a command.decision with its outcome in it
 * (format 3 writes one record per statement to JSON lines when the outcome follows before the decision is
 * written, docs/audit.md).
 */
export function carriesCommandOutcome(record: Pick<AuditRecord, 'type'> & { readonly outcome?: unknown }): boolean {
  return record.outcome !== undefined && (record.type === 'command.outcome' || record.type === 'command.decision');
}

/**
 * The bundle digest each record's decision was made under (undefined for records without a decision): the
 * digest it names, or, in format 3, where a decision leaves it out, the one the latest earlier decision of
 * the same policy in the session named. `records`: one session's records in seq order.
 */
export function decisionBundleDigests(records: readonly AuditRecord[]): (string | undefined)[] {
  const named = new Map<string, string>();
  return records.map((r) => {
    const d = r.decision;
    if (d === undefined) return undefined;
    const policy = d.policy ?? '';
    if (d.bundleDigest !== undefined) named.set(policy, d.bundleDigest);
    return d.bundleDigest ?? named.get(policy);
  });
}
