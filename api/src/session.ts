// Session: the audit trail of one client session, written by the sidecar. Records are bounded per object;
// a long session continues in linked objects (part 1, 2, ...). See docs/audit.md.
import { Type, type Static, StringEnum, DateTime, dnsSubdomain } from './schema.ts';
import { Identity } from './identity.ts';
import { AuditRecord, carriesCommandOutcome } from './audit-record.ts';
import { RESOURCE_TYPES } from './protected-resource.ts';
import { EVIDENCE_STORE_TYPES } from './evidence-store.ts';
import type { KubernetesObject } from './meta.ts';

/** Hard cap on records in one Session object; the writer also keeps the object under SESSION_MAX_BYTES. */
export const SESSION_MAX_RECORDS = 256;
/** The writer starts a continuation object before a Session's serialized size passes this (etcd allows 1.5 MiB). */
export const SESSION_MAX_BYTES = 512 * 1024;

const immutable = [{ rule: 'self == oldSelf', message: 'is immutable' }] as const;

export const SessionSpec = Type.Object(
  {
    sessionId: Type.String({
      description: 'Identifier shared by every part of one client session.',
      maxLength: 64,
      'x-kubernetes-validations': immutable,
    }),
    part: Type.Integer({
      description: 'Index of this object within the session, from 0.',
      minimum: 0,
      'x-kubernetes-validations': immutable,
    }),
    previousPart: Type.Optional(
      Type.String({
        description: 'Name of the Session object this one continues.',
        ...dnsSubdomain,
        'x-kubernetes-validations': immutable,
      }),
    ),
    pod: Type.Object(
      {
        name: Type.String({ description: 'Pod name.', ...dnsSubdomain }),
        namespace: Type.Optional(
          Type.String({
            description:
              'Pod namespace, when the Session is kept in another namespace (an audit namespace, docs/audit.md).',
            maxLength: 63,
          }),
        ),
        uid: Type.Optional(Type.String({ description: 'Pod UID.', maxLength: 64 })),
        container: Type.Optional(Type.String({ description: 'Agent container, when known.', maxLength: 63 })),
      },
      { description: 'Pod whose sidecar wrote this session.', 'x-kubernetes-validations': immutable },
    ),
    resource: Type.Object(
      {
        name: Type.String({ description: 'ProtectedResource name.', ...dnsSubdomain }),
        type: StringEnum(RESOURCE_TYPES, { description: 'ProtectedResource type.' }),
      },
      { description: 'ProtectedResource the session used.', 'x-kubernetes-validations': immutable },
    ),
    identity: { ...Identity, 'x-kubernetes-validations': immutable },
    startTime: DateTime({ description: 'When the session started.', 'x-kubernetes-validations': immutable }),
    // An atomic list (not a map-list): the API server's validation ratcheting treats map-lists as
    // unordered sets, so a reordering of records would skip these rules. Atomic lists compare in order.
    records: Type.Array(AuditRecord, {
      description: 'Audit records, append-only, ordered by seq.',
      maxItems: SESSION_MAX_RECORDS,
      'x-kubernetes-list-type': 'atomic',
      // These rules run on every write of a Session (status patches included) over up to 256 records, and
      // they were most of the API server's CPU in a flush: each is one pass over the list. Two-variable
      // comprehensions (Kubernetes 1.33+, docs/install.md) give the index without building lists; the
      // earlier form (two maps, isSorted, distinct, two filters) made the same decisions, but distinct
      // compares every pair of seqs.
      'x-kubernetes-validations': [
        {
          // Element-wise equality of the old prefix (every field of every record), one pass.
          rule: 'size(self) >= size(oldSelf) && oldSelf.all(i, r, self[i] == r)',
          message: 'records are append-only: existing records cannot be changed, removed or reordered',
        },
        {
          // seq[i] == seq[0] + i: ascending, no duplicate and no gap, in one pass (an empty list passes).
          rule: 'self.all(i, r, r.seq == self[0].seq + i)',
          message: 'records must be ordered by seq with no gaps',
        },
        {
          // A closed session stays closed: a session.end may only be the last record, so there is at most
          // one and nothing follows it (an append after it is refused).
          rule: "self.all(i, r, r.type != 'session.end' || i == size(self) - 1)",
          message: 'no record may follow session.end: a closed session stays closed',
        },
      ],
    }),
    signer: Type.Optional(
      Type.Object(
        {
          keyId: Type.String({ description: 'Identifier of the signing key (kid of the JWK).', maxLength: 256 }),
          publicKey: Type.String({
            description: 'The Ed25519 public key of the writing sidecar as a JSON Web Key (JSON text).',
            maxLength: 1024,
          }),
          certificate: Type.Optional(
            Type.String({
              description:
                'Compact JWS by the operator binding keyId and publicKey to the pod (docs/audit.md, Trust model).',
              maxLength: 8192,
            }),
          ),
        },
        { description: "The key that signs this session's chain heads.", 'x-kubernetes-validations': immutable },
      ),
    ),
    store: Type.Optional(
      Type.Object(
        {
          type: StringEnum(EVIDENCE_STORE_TYPES, { description: 'Kind of evidence store.' }),
          location: Type.String({
            description: 'Where the store is (host:port/database for postgres); never a credential.',
            maxLength: 512,
          }),
        },
        {
          description:
            "The evidence store holding this session's records (docs/evidence-store.md); the object then keeps no records, only the signed head.",
          'x-kubernetes-validations': immutable,
        },
      ),
    ),
    head: Type.Optional(
      Type.Object(
        {
          seq: Type.Integer({ description: 'seq of the last record covered.', minimum: 0 }),
          hash: Type.String({ description: 'hash of that record.', maxLength: 80 }),
          signature: Type.String({
            description: 'Compact JWS (EdDSA) over the head; see docs/audit.md.',
            maxLength: 4096,
          }),
          keyId: Type.String({ description: 'Identifier of the signing key.', maxLength: 256 }),
        },
        { description: 'Signed chain head at the last flush.' },
      ),
    ),
  },
  {
    description: 'Identity of the session and its records.',
    'x-kubernetes-validations': [
      {
        rule: '!has(self.store) || size(self.records) == 0',
        message: 'a session kept in an evidence store has no records in the object',
      },
      {
        rule: 'has(self.store) == has(oldSelf.store)',
        message: 'store cannot be added or removed',
      },
    ],
  },
);
export type SessionSpec = Static<typeof SessionSpec>;

export const SESSION_PHASES = ['Active', 'Continued', 'Closed', 'Abandoned'] as const;

export const SessionStatus = Type.Object(
  {
    phase: StringEnum(SESSION_PHASES, {
      description:
        'Active while open; Continued when a later part took over; Closed at the end; Abandoned if the sidecar vanished.',
    }),
    endTime: Type.Optional(DateTime({ description: 'When the session (or this part) ended.' })),
    counters: Type.Object(
      {
        commands: Type.Integer({ description: 'Commands decided.', minimum: 0, default: 0 }),
        allowed: Type.Integer({ description: 'Commands allowed.', minimum: 0, default: 0 }),
        denied: Type.Integer({ description: 'Commands denied.', minimum: 0, default: 0 }),
        held: Type.Integer({ description: 'Commands held for approval.', minimum: 0, default: 0 }),
        errors: Type.Integer({ description: 'Commands that failed upstream.', minimum: 0, default: 0 }),
      },
      { description: 'Counts over the whole session up to this part.' },
    ),
  },
  {
    description: 'Observed state of the session.',
    'x-kubernetes-validations': [
      {
        rule: "oldSelf.phase == 'Active' || self.phase == oldSelf.phase",
        message: 'phase Continued, Closed and Abandoned are final: a session does not go back',
      },
      {
        rule: '!has(oldSelf.endTime) || (has(self.endTime) && self.endTime == oldSelf.endTime)',
        message: 'endTime is immutable once set',
      },
    ],
  },
);

/** Rules over the whole Session object (spec and status together). */
export const SESSION_OBJECT_RULES = [
  { rule: '!has(oldSelf.status) || has(self.status)', message: 'status cannot be removed once written' },
] as const;
export type SessionStatus = Static<typeof SessionStatus>;

export type Session = KubernetesObject<'Session', SessionSpec, SessionStatus>;

/**
 * Adds one record to a session's counters (status.counters): what the writer counts and what verifiers
 * recount from the records. Decisions count commands and their result; failed outcomes count errors.
 */
export function countRecord(
  counters: SessionStatus['counters'],
  record: Pick<AuditRecord, 'type'> & {
    readonly decision?: Pick<NonNullable<AuditRecord['decision']>, 'result'>;
    readonly outcome?: Pick<NonNullable<AuditRecord['outcome']>, 'status'>;
  },
): void {
  if (record.type === 'command.decision') {
    counters.commands += 1;
    const result = record.decision?.result;
    if (result === 'allow') counters.allowed += 1;
    else if (result === 'deny') counters.denied += 1;
    else if (result === 'approve') counters.held += 1;
  }
  // A decision record with its outcome in it (format 3, JSON lines) counts as both.
  if (carriesCommandOutcome(record) && record.outcome?.status === 'error') {
    counters.errors += 1;
  }
}
