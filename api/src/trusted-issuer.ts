// TrustedIssuer: an issuer whose tokens Chaperone's token exchange accepts as subject or actor tokens,
// and the agent kinds it assigns to their subjects. Owned by the platform team; only objects in the
// exchange's own namespace count (docs/identity.md, Trusted issuers).
import { Type, type Static, StringEnum, Conditions, DateTime } from './schema.ts';
import type { KubernetesObject } from './meta.ts';

export const ISSUER_TYPES = ['kubernetes', 'oidc'] as const;
export type IssuerType = (typeof ISSUER_TYPES)[number];

const kindName = Type.String({
  description: 'An agent kind, for example ci, ai-agent, script or human.',
  maxLength: 63,
  pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$',
});

export const TrustedIssuerSpec = Type.Object(
  {
    issuer: Type.String({
      description: 'The iss claim of the tokens, exactly (the API server: its --service-account-issuer).',
      minLength: 1,
      maxLength: 2048,
    }),
    type: StringEnum(ISSUER_TYPES, {
      description:
        'kubernetes: the cluster service-account issuer, every token checked by a TokenReview; oidc: an OpenID Connect issuer whose keys come from discovery and its JWKS.',
    }),
    audiences: Type.Array(Type.String({ description: 'An audience.', minLength: 1, maxLength: 512 }), {
      description: 'A token is accepted when its aud holds one of these. Default [chaperone].',
      minItems: 1,
      maxItems: 16,
      default: ['chaperone'],
    }),
    oidc: Type.Optional(
      Type.Object(
        {
          discoveryUrl: Type.Optional(
            Type.String({
              description: 'Default <issuer>/.well-known/openid-configuration.',
              maxLength: 2048,
              pattern: '^https://',
            }),
          ),
          jwksUri: Type.Optional(
            Type.String({
              description: 'Skip discovery and fetch the keys here.',
              maxLength: 2048,
              pattern: '^https://',
            }),
          ),
          caBundle: Type.Optional(
            Type.String({
              description: 'PEM CA certificates for discovery and JWKS; default the system roots.',
              maxLength: 65536,
            }),
          ),
          algorithms: Type.Array(Type.String({ description: 'A JWS algorithm.', maxLength: 16 }), {
            description: 'Accepted signature algorithms (asymmetric only). Default RS256, ES256, EdDSA.',
            minItems: 1,
            maxItems: 8,
            default: ['RS256', 'ES256', 'EdDSA'],
            'x-kubernetes-validations': [
              {
                rule: "self.all(a, a != 'none' && !a.startsWith('HS'))",
                message: 'only asymmetric algorithms are allowed',
              },
            ],
          }),
          cacheSeconds: Type.Integer({
            description: 'How long fetched keys are used before they are fetched again. Default 300.',
            minimum: 10,
            maximum: 86400,
            default: 300,
          }),
        },
        { description: 'Where the keys of an oidc issuer come from.' },
      ),
    ),
    kinds: Type.Optional(
      Type.Array(
        Type.Object(
          {
            subject: Type.String({
              description: 'Pattern on the subject; * matches any run of characters.',
              maxLength: 512,
            }),
            kind: kindName,
          },
          { description: 'Subjects matching the pattern get the kind.' },
        ),
        { description: "Agent kinds of this issuer's subjects; the first matching entry wins.", maxItems: 64 },
      ),
    ),
    kindClaim: Type.Optional(
      Type.String({
        description: 'A claim whose string value is the kind, when the issuer itself is trusted to assert kinds.',
        maxLength: 256,
      }),
    ),
  },
  {
    description: 'Desired state of a TrustedIssuer.',
    'x-kubernetes-validations': [
      {
        rule: "self.type != 'oidc' || has(self.oidc)",
        message: 'an oidc issuer needs the oidc section',
        fieldPath: '.oidc',
      },
      {
        rule: "self.type != 'oidc' || self.issuer.startsWith('https://')",
        message: 'an oidc issuer is an https URL',
        fieldPath: '.issuer',
      },
    ],
  },
);
export type TrustedIssuerSpec = Static<typeof TrustedIssuerSpec>;

export const TrustedIssuerStatus = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The .metadata.generation last loaded.', format: 'int64', minimum: 0 }),
    ),
    conditions: Type.Optional(Conditions('Ready: the exchange loaded the issuer (and, for oidc, fetched its keys).')),
    keys: Type.Optional(Type.Integer({ description: 'Number of keys in the last fetched JWKS.', minimum: 0 })),
    lastFetchTime: Type.Optional(DateTime({ description: 'When the keys were last fetched.' })),
  },
  { description: 'Observed state of a TrustedIssuer.' },
);
export type TrustedIssuerStatus = Static<typeof TrustedIssuerStatus>;

export type TrustedIssuer = KubernetesObject<'TrustedIssuer', TrustedIssuerSpec, TrustedIssuerStatus>;
