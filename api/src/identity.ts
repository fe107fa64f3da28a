// The caller of a command as the sidecar established it from a verified token. In RFC 8693 terms the
// `subject` is the party on whose behalf everything happens (the top of the chain: a CI job, a person),
// and `chain` lists the actors acting for it, the current actor first, then each earlier one (the `act`
// claim, then its `act`, ...). Tokens from Chaperone's token exchange also say which resources and
// scopes they were narrowed to and which exchange created them (docs/identity.md).
import { Type, type Static, StringMap } from './schema.ts';

export const Actor = Type.Object(
  {
    issuer: Type.Optional(Type.String({ description: 'Issuer that authenticated this actor.', maxLength: 2048 })),
    kind: Type.Optional(
      Type.String({
        description: 'Agent kind of this actor (ci, ai-agent, script, human), as the platform team assigned it.',
        maxLength: 63,
      }),
    ),
    subject: Type.String({ description: 'Subject (sub claim) of this actor.', maxLength: 512 }),
  },
  { description: 'One actor of a delegation chain.' },
);
export type Actor = Static<typeof Actor>;

export const ExchangeLink = Type.Object(
  {
    id: Type.String({
      description: 'Identifier (jti) of the token, the id of the exchange record that issued it.',
      maxLength: 128,
    }),
    record: Type.String({
      description: 'sha256 of the exchange record that issued the token (docs/identity.md, Evidence).',
      maxLength: 80,
    }),
  },
  { description: 'The token exchange that issued the presented token.' },
);
export type ExchangeLink = Static<typeof ExchangeLink>;

export const Identity = Type.Object(
  {
    chain: Type.Optional(
      Type.Array(Actor, {
        description: 'Actors acting for the subject, the current actor first, then each earlier one (nested act).',
        maxItems: 16,
      }),
    ),
    claims: Type.Optional(StringMap({ description: 'Selected extra claims (pod name, pod uid) as strings.' })),
    exchange: Type.Optional(ExchangeLink),
    groups: Type.Optional(
      Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), {
        description: 'Groups asserted by the token.',
        maxItems: 64,
      }),
    ),
    issuer: Type.String({
      description:
        'Issuer that authenticated the subject (for exchanged tokens, the issuer of the original subject token).',
      maxLength: 2048,
    }),
    kind: Type.Optional(Type.String({ description: 'Agent kind of the subject.', maxLength: 63 })),
    resources: Type.Optional(
      Type.Array(Type.String({ description: 'A resource URI.', maxLength: 512 }), {
        description: 'Resources the token was narrowed to; absent means not narrowed.',
        maxItems: 64,
      }),
    ),
    scopes: Type.Optional(
      Type.Array(Type.String({ description: 'A scope.', maxLength: 256 }), {
        description: 'Scopes the token was narrowed to; absent means not narrowed.',
        maxItems: 64,
      }),
    ),
    subject: Type.String({
      description: 'Subject (sub claim): the party on whose behalf the session runs.',
      maxLength: 512,
    }),
    tokenHash: Type.Optional(
      Type.String({
        description: 'sha256 of the presented token, so a session can be tied to a token without storing it.',
        maxLength: 80,
      }),
    ),
  },
  { description: 'Who issued the commands, as verified from their token.' },
);
export type Identity = Static<typeof Identity>;

/** The party acting now: the current actor of a delegated identity, the subject itself otherwise. */
export function currentActor(identity: Pick<Identity, 'subject' | 'issuer' | 'kind' | 'chain'>): Actor {
  const first = identity.chain?.[0];
  if (first !== undefined) return first;
  return {
    issuer: identity.issuer,
    ...(identity.kind === undefined ? {} : { kind: identity.kind }),
    subject: identity.subject,
  };
}
