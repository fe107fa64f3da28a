// The caller of a command as the sidecar established it from a verified token: the current subject and
// the delegation chain of actors (RFC 8693 `act` claims), outermost last.
import { Type, type Static, StringMap } from './schema.ts';

export const Actor = Type.Object(
  {
    subject: Type.String({ description: 'Subject (sub claim) of this actor.', maxLength: 512 }),
    issuer: Type.Optional(Type.String({ description: 'Issuer of the token that named this actor.', maxLength: 2048 })),
    kind: Type.Optional(
      Type.String({ description: 'Agent kind claimed for this actor, e.g. ci or ai-agent.', maxLength: 63 }),
    ),
  },
  { description: 'One link of a delegation chain.' },
);
export type Actor = Static<typeof Actor>;

export const Identity = Type.Object(
  {
    subject: Type.String({ description: 'Current subject (sub claim) of the verified token.', maxLength: 512 }),
    issuer: Type.String({ description: 'Issuer (iss claim) of the verified token.', maxLength: 2048 }),
    groups: Type.Optional(
      Type.Array(Type.String({ description: 'A group.', maxLength: 256 }), {
        description: 'Groups asserted by the token.',
        maxItems: 64,
      }),
    ),
    kind: Type.Optional(Type.String({ description: 'Agent kind of the current subject.', maxLength: 63 })),
    chain: Type.Optional(
      Type.Array(Actor, {
        description: 'Actors that delegated to the subject, nearest first (the act claim, then its act, ...).',
        maxItems: 16,
      }),
    ),
    tokenHash: Type.Optional(
      Type.String({
        description: 'sha256 of the presented token, so a session can be tied to a token without storing it.',
        maxLength: 80,
      }),
    ),
    claims: Type.Optional(StringMap({ description: 'Selected extra claims (pod name, pod uid) as strings.' })),
  },
  { description: 'Who issued the commands, as verified from their token.' },
);
export type Identity = Static<typeof Identity>;
