// DelegationPolicy: who may act for whom through Chaperone's token exchange, how deep a chain may grow,
// and the most a delegated token may carry (audiences, resources, scopes, lifetime). Owned by the platform
// team; only objects in the exchange's own namespace count (docs/identity.md, Delegation rules).
import { Type, type Static, Conditions, Duration, dnsSubdomain } from './schema.ts';
import type { KubernetesObject } from './meta.ts';

const patterns = (description: string, maxItems = 32) =>
  Type.Optional(
    Type.Array(Type.String({ description: 'A pattern; * matches any run of characters.', maxLength: 512 }), {
      description,
      maxItems,
    }),
  );

export const PartyMatcher = Type.Object(
  {
    issuer: Type.Optional(
      Type.String({ description: 'Issuer that authenticated the party (exact).', maxLength: 2048 }),
    ),
    subject: Type.Optional(
      Type.String({ description: 'Pattern on the subject; * matches any run of characters.', maxLength: 512 }),
    ),
    kinds: Type.Optional(
      Type.Array(Type.String({ description: 'An agent kind.', maxLength: 63 }), {
        description: 'The party has one of these agent kinds.',
        maxItems: 16,
      }),
    ),
  },
  { description: 'A party of an exchange. All set fields must match; an empty matcher matches every party.' },
);
export type PartyMatcher = Static<typeof PartyMatcher>;

export const DelegationRule = Type.Object(
  {
    name: Type.String({ description: 'Rule id, unique within the policy; exchange records name it.', ...dnsSubdomain }),
    from: Type.Array(PartyMatcher, {
      description:
        'Who may delegate: the current actor of the subject token, or its subject when it has no actor. One match is enough.',
      minItems: 1,
      maxItems: 32,
    }),
    to: Type.Array(PartyMatcher, {
      description: 'Who may become the new actor (the party of the actor_token). One match is enough.',
      minItems: 1,
      maxItems: 32,
    }),
    subjects: Type.Optional(
      Type.Array(PartyMatcher, {
        description: 'Restricts the subject at the top of the chain (the sub claim). Default: any.',
        maxItems: 32,
      }),
    ),
    maxDepth: Type.Integer({
      description: 'Longest chain (number of actors) a token issued under this rule may carry. Default 1.',
      minimum: 1,
      maximum: 16,
      default: 1,
    }),
    maxLifetime: Duration({
      description: 'Longest lifetime of a token issued under this rule. Default 15m.',
      default: '15m',
    }),
    audiences: Type.Array(Type.String({ description: 'An audience.', maxLength: 512 }), {
      description: 'Audiences a token issued under this rule may name. Default [chaperone].',
      minItems: 1,
      maxItems: 16,
      default: ['chaperone'],
    }),
    resources: patterns(
      'Resource URIs (urn:chaperone:resource:<namespace>:<name>) a token issued under this rule may name; when set, the request must name its resources. Default: any.',
      64,
    ),
    scopes: patterns(
      'Scopes a token issued under this rule may carry; when set, the request must name its scopes. Default: any.',
      64,
    ),
  },
  { description: 'One delegation rule: the first rule (by policy name, then order) that matches decides.' },
);
export type DelegationRule = Static<typeof DelegationRule>;

export const DelegationPolicySpec = Type.Object(
  {
    rules: Type.Array(DelegationRule, {
      description: 'Delegation rules; names are unique.',
      maxItems: 128,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['name'],
    }),
  },
  { description: 'Desired state of a DelegationPolicy.' },
);
export type DelegationPolicySpec = Static<typeof DelegationPolicySpec>;

export const DelegationPolicyStatus = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The .metadata.generation last loaded.', format: 'int64', minimum: 0 }),
    ),
    conditions: Type.Optional(Conditions('Ready: the exchange loaded the rules.')),
  },
  { description: 'Observed state of a DelegationPolicy.' },
);
export type DelegationPolicyStatus = Static<typeof DelegationPolicyStatus>;

export type DelegationPolicy = KubernetesObject<'DelegationPolicy', DelegationPolicySpec, DelegationPolicyStatus>;
