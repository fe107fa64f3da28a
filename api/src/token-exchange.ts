// Chaperone's token exchange (RFC 8693) as the operator serves it and sidecars and the CLI consume it:
// the protocol constants, the claims of the tokens it issues, resource URIs, and the exchange record, the
// tamper-evident evidence of every issued token (docs/identity.md).
import { createHash } from 'node:crypto';
import { Type, type Static } from './schema.ts';
import { Actor } from './identity.ts';
import { jcs } from './jcs.ts';

/** RFC 8693 §2.1 grant type. */
export const TOKEN_EXCHANGE_GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:token-exchange';

/** RFC 8693 §3 token type identifiers the exchange accepts (every one must be a JWT); it issues JWT. */
export const TOKEN_TYPES = {
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  idToken: 'urn:ietf:params:oauth:token-type:id_token',
} as const;
export const ACCEPTED_TOKEN_TYPES: readonly string[] = Object.values(TOKEN_TYPES);

/** Path prefix of the exchange on the operator's HTTPS server; the issuer URL ends with it. */
export const TOKEN_EXCHANGE_BASE_PATH = '/identity/v1';
export const TOKEN_EXCHANGE_PATHS = {
  token: `${TOKEN_EXCHANGE_BASE_PATH}/token`,
  jwks: `${TOKEN_EXCHANGE_BASE_PATH}/jwks`,
  discovery: `${TOKEN_EXCHANGE_BASE_PATH}/.well-known/openid-configuration`,
} as const;

/** Claims of issued tokens beyond the registered ones (iss, sub, aud, exp, nbf, iat, jti, act, may_act, scope). */
export const CLAIMS = {
  /** Agent kind of the subject (top level) or of an actor (inside act). */
  agentKind: 'chaperone.dev/agent-kind',
  /** Issuer that authenticated the subject: iss is the exchange itself. */
  subjectIssuer: 'chaperone.dev/subject-issuer',
  /** Resource URIs the token is narrowed to (absent: not narrowed). */
  resources: 'chaperone.dev/resources',
  /** {id, record}: this token's exchange record (its jti and the record's hash). */
  exchange: 'chaperone.dev/exchange',
} as const;

/** Extension request parameters (RFC 6749 §3.x: servers ignore parameters they do not know). */
export const EXTENSION_PARAMETERS = {
  /** Lifetime asked for, in seconds; refused when it would outlive the parent or the allowed maximum. */
  requestedLifetime: 'requested_lifetime',
  /** JSON object {"sub", "iss"?}: only that party may be the next actor on the issued token (its may_act claim). */
  mayAct: 'may_act',
} as const;

/**
 * Error codes of the token endpoint: RFC 6749 §5.2 and RFC 8693 §2.2.2, plus the two RFC 6749 §4.1.2.1
 * codes for a server that cannot answer (evidence cannot be written, an issuer's keys cannot be fetched).
 */
export const OAUTH_ERRORS = [
  'invalid_request',
  'invalid_client',
  'invalid_grant',
  'unauthorized_client',
  'unsupported_grant_type',
  'invalid_scope',
  'invalid_target',
  'server_error',
  'temporarily_unavailable',
] as const;
export type OAuthErrorCode = (typeof OAUTH_ERRORS)[number];

/**
 * The error body of a refused exchange: the RFC 6749 fields plus `chaperone_reason`, a stable
 * machine-readable reason (docs/identity.md lists them).
 */
export interface TokenExchangeError {
  readonly error: OAuthErrorCode;
  readonly error_description: string;
  readonly chaperone_reason: string;
}

/** The success body (RFC 8693 §2.2.1). */
export interface TokenExchangeResponse {
  readonly access_token: string;
  readonly issued_token_type: string;
  readonly token_type: 'N_A';
  readonly expires_in: number;
  readonly scope?: string;
}

const RESOURCE_URI_PREFIX = 'urn:chaperone:resource:';

/** The resource URI (RFC 8707 `resource`) of a ProtectedResource: urn:chaperone:resource:<namespace>:<name>. */
export function resourceUri(namespace: string, name: string): string {
  return `${RESOURCE_URI_PREFIX}${namespace}:${name}`;
}

/** namespace and name of a resource URI, or undefined when it is not one. */
export function parseResourceUri(uri: string): { namespace: string; name: string } | undefined {
  if (!uri.startsWith(RESOURCE_URI_PREFIX)) return undefined;
  const [namespace, name, ...rest] = uri.slice(RESOURCE_URI_PREFIX.length).split(':');
  if (namespace === undefined || name === undefined || rest.length > 0 || namespace === '' || name === '') {
    return undefined;
  }
  return { namespace, name };
}

/** Where a party of an exchange came from: its subject, issuer, kind and the hash of the token that proved it. */
export const ExchangeParty = Type.Object(
  {
    issuer: Type.String({ description: 'Issuer that authenticated the party.', maxLength: 2048 }),
    kind: Type.Optional(Type.String({ description: 'Agent kind assigned to the party.', maxLength: 63 })),
    subject: Type.String({ description: 'Subject of the party.', maxLength: 512 }),
    tokenHash: Type.String({ description: 'sha256 of the token presented for the party.', maxLength: 80 }),
  },
  { description: 'A party of an exchange as authenticated from its token.' },
);
export type ExchangeParty = Static<typeof ExchangeParty>;

export const EXCHANGE_RECORD_VERSION = 1;

const hashString = (description: string) =>
  Type.String({ description, maxLength: 80, pattern: '^sha256:[0-9a-f]{64}$' });

/**
 * One issued token, as evidence: who exchanged what for whom, with which narrowing, under which rule.
 * Hash-chained like audit records (sha256 over the JCS form without `hash`); the issued token carries
 * `id` and `hash`, so a Session that verified the token points at exactly this record.
 */
export const ExchangeRecord = Type.Object(
  {
    v: Type.Integer({ description: 'Record format version.', minimum: 1, maximum: 1 }),
    seq: Type.Integer({ description: 'Position in the log stream, from 1, contiguous across parts.', minimum: 1 }),
    time: Type.String({ description: 'UTC time of the exchange, RFC 3339 with milliseconds.', maxLength: 32 }),
    id: Type.String({ description: 'jti of the issued token.', maxLength: 128 }),
    subject: ExchangeParty,
    actor: Type.Optional(ExchangeParty),
    parent: Type.Object(
      {
        tokenHash: hashString('sha256 of the subject token.'),
        exchangeId: Type.Optional(
          Type.String({ description: 'jti of the subject token when the exchange issued it.', maxLength: 128 }),
        ),
        exchangeRecord: Type.Optional(hashString('Hash of the exchange record of the subject token.')),
        expiresAt: Type.String({ description: 'When the subject token expires, RFC 3339.', maxLength: 32 }),
      },
      { description: 'The subject token this one was derived from.' },
    ),
    chain: Type.Array(Actor, {
      description: 'Actors of the issued token, the current actor first.',
      maxItems: 16,
    }),
    audiences: Type.Array(Type.String({ description: 'An audience.', maxLength: 512 }), {
      description: 'aud of the issued token.',
      maxItems: 16,
    }),
    resources: Type.Optional(
      Type.Array(Type.String({ description: 'A resource URI.', maxLength: 512 }), {
        description: 'Resources of the issued token; absent means not narrowed.',
        maxItems: 64,
      }),
    ),
    scopes: Type.Optional(
      Type.Array(Type.String({ description: 'A scope.', maxLength: 256 }), {
        description: 'Scopes of the issued token; absent means not narrowed.',
        maxItems: 64,
      }),
    ),
    mayAct: Type.Optional(
      Type.Object(
        {
          issuer: Type.Optional(Type.String({ description: 'iss the next actor must have.', maxLength: 2048 })),
          subject: Type.String({ description: 'sub the next actor must have.', maxLength: 512 }),
        },
        { description: 'may_act of the issued token.' },
      ),
    ),
    issuedAt: Type.String({ description: 'iat of the issued token, RFC 3339.', maxLength: 32 }),
    expiresAt: Type.String({ description: 'exp of the issued token, RFC 3339.', maxLength: 32 }),
    rule: Type.String({
      description: 'namespace/policy/rule of the DelegationPolicy rule that allowed it, or "narrow" (no new actor).',
      maxLength: 512,
    }),
    replica: Type.String({ description: 'Operator replica that issued the token.', maxLength: 253 }),
    keyId: Type.String({ description: 'kid of the key that signed the issued token.', maxLength: 128 }),
    prevHash: hashString('Hash of the previous record of the stream (zeros for the first).'),
    hash: hashString('sha256 over the canonical form of this record without the hash field.'),
  },
  { description: 'Evidence of one issued token. Immutable once written.' },
);
export type ExchangeRecord = Static<typeof ExchangeRecord>;
export type UnhashedExchangeRecord = Omit<ExchangeRecord, 'hash'>;

/** sha256 over the JCS form of the record without `hash`. */
export function hashExchangeRecord(record: UnhashedExchangeRecord | ExchangeRecord): string {
  const { hash: _hash, ...rest } = record as ExchangeRecord;
  const text = jcs(rest);
  if (text === undefined) throw new Error('exchange record cannot be canonicalized');
  return `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

export interface ExchangeChainProblem {
  readonly seq: number;
  readonly problem: 'hash-mismatch' | 'broken-link' | 'seq-gap';
  readonly detail: string;
}

/** Checks hashes, links and seq continuity of one stream's records, in order. */
export function verifyExchangeChain(
  records: readonly ExchangeRecord[],
  prevHash?: string,
  prevSeq?: number,
): ExchangeChainProblem[] {
  const problems: ExchangeChainProblem[] = [];
  let expectedPrev = prevHash;
  let expectedSeq = prevSeq === undefined ? undefined : prevSeq + 1;
  for (const r of records) {
    if (expectedSeq !== undefined && r.seq !== expectedSeq) {
      problems.push({
        seq: r.seq,
        problem: 'seq-gap',
        detail: `expected seq ${String(expectedSeq)}, found ${String(r.seq)}`,
      });
    }
    const computed = hashExchangeRecord(r);
    if (computed !== r.hash) {
      problems.push({ seq: r.seq, problem: 'hash-mismatch', detail: `record does not match its hash (${computed})` });
    }
    if (expectedPrev !== undefined && r.prevHash !== expectedPrev) {
      problems.push({ seq: r.seq, problem: 'broken-link', detail: `prevHash does not match ${expectedPrev}` });
    }
    expectedPrev = r.hash;
    expectedSeq = r.seq + 1;
  }
  return problems;
}
