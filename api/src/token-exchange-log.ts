// TokenExchangeLog: the exchange records of one operator replica's stream, written by that replica. Like
// Session objects they are bounded: a stream continues in linked parts. Records are append-only (CEL) and
// hash-chained; the head is signed with the exchange's signing key (docs/identity.md, Evidence).
import { Type, type Static, StringEnum, DateTime, dnsSubdomain } from './schema.ts';
import { ExchangeRecord } from './token-exchange.ts';
import type { KubernetesObject } from './meta.ts';

/** Hard cap on records in one TokenExchangeLog object. */
export const EXCHANGE_LOG_MAX_RECORDS = 256;
/** Label carrying the stream id on every part, for listing a stream. */
export const EXCHANGE_STREAM_LABEL = 'chaperone.dev/exchange-stream';

const immutable = [{ rule: 'self == oldSelf', message: 'is immutable' }] as const;

export const TokenExchangeLogSpec = Type.Object(
  {
    stream: Type.String({
      description: 'Identifier of the replica stream every part of this log shares.',
      maxLength: 64,
      'x-kubernetes-validations': immutable,
    }),
    part: Type.Integer({
      description: 'Index of this object within the stream, from 0.',
      minimum: 0,
      'x-kubernetes-validations': immutable,
    }),
    previousPart: Type.Optional(
      Type.String({
        description: 'Name of the TokenExchangeLog this one continues.',
        ...dnsSubdomain,
        'x-kubernetes-validations': immutable,
      }),
    ),
    issuer: Type.String({
      description: 'iss of the exchange that wrote the stream.',
      maxLength: 2048,
      'x-kubernetes-validations': immutable,
    }),
    replica: Type.String({
      description: 'Operator replica that writes the stream.',
      maxLength: 253,
      'x-kubernetes-validations': immutable,
    }),
    startTime: DateTime({ description: 'When this part was started.', 'x-kubernetes-validations': immutable }),
    records: Type.Array(ExchangeRecord, {
      description: 'Exchange records, append-only, ordered by seq.',
      maxItems: EXCHANGE_LOG_MAX_RECORDS,
      'x-kubernetes-list-type': 'atomic',
      'x-kubernetes-validations': [
        {
          rule: 'size(self) >= size(oldSelf) && oldSelf.all(i, r, self[i] == r)',
          message: 'records are append-only: existing records cannot be changed, removed or reordered',
        },
        {
          // The same one-pass forms as the Session records' rules (api/src/session.ts).
          rule: 'self.all(i, r, r.seq == self[0].seq + i)',
          message: 'records must be ordered by seq with no gaps',
        },
      ],
    }),
    head: Type.Optional(
      Type.Object(
        {
          seq: Type.Integer({ description: 'seq of the last record covered.', minimum: 0 }),
          hash: Type.String({ description: 'hash of that record.', maxLength: 80 }),
          signature: Type.String({
            description: 'Compact JWS by the exchange signing key over the head (docs/identity.md).',
            maxLength: 4096,
          }),
          keyId: Type.String({ description: 'kid of the signing key.', maxLength: 128 }),
        },
        { description: 'Signed head of the stream at the last write.' },
      ),
    ),
  },
  { description: 'One part of a replica stream of exchange records.' },
);
export type TokenExchangeLogSpec = Static<typeof TokenExchangeLogSpec>;

export const EXCHANGE_LOG_PHASES = ['Active', 'Continued', 'Closed'] as const;

export const TokenExchangeLogStatus = Type.Object(
  {
    phase: StringEnum(EXCHANGE_LOG_PHASES, {
      description: 'Active while the replica appends; Continued when a later part took over; Closed at shutdown.',
    }),
  },
  { description: 'Observed state of the log part.' },
);
export type TokenExchangeLogStatus = Static<typeof TokenExchangeLogStatus>;

export type TokenExchangeLog = KubernetesObject<'TokenExchangeLog', TokenExchangeLogSpec, TokenExchangeLogStatus>;

/** The signed payload of a log head (JWS payload: this JSON with keys in this order). */
export interface ExchangeLogHead {
  readonly typ: typeof EXCHANGE_LOG_HEAD_TYPE;
  readonly stream: string;
  /** namespace/name of the part the head was written to. */
  readonly object: string;
  readonly seq: number;
  readonly hash: string;
  readonly signedAt: string;
}
export const EXCHANGE_LOG_HEAD_TYPE = 'chaperone.dev/exchange-log-head/v1';

export function canonicalExchangeLogHead(head: ExchangeLogHead): string {
  return JSON.stringify({
    hash: head.hash,
    object: head.object,
    seq: head.seq,
    signedAt: head.signedAt,
    stream: head.stream,
    typ: head.typ,
  });
}
