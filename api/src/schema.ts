// Schema builders for CustomResourceDefinitions. The CRD YAML in crds/ is generated from these schemas and
// the TypeScript types are inferred from the same values (TypeBox `Static`), so the two cannot drift.
// Only constructs valid in a Kubernetes structural schema are produced: no `const`, no `anyOf` of
// literals, maps as `additionalProperties`.
import { Type, type Static, type TSchema, type TUnsafe, type SchemaOptions } from '@sinclair/typebox';

export { Type, type Static, type TSchema };

export interface CelRule {
  readonly rule: string;
  readonly message?: string;
  readonly messageExpression?: string;
  readonly fieldPath?: string;
  readonly reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
  readonly optionalOldSelf?: boolean;
}

/** Options every builder accepts; `description` is mandatory so every field is documented. */
export interface FieldOptions extends SchemaOptions {
  description: string;
  'x-kubernetes-validations'?: readonly CelRule[];
}

/** A string restricted to the given values. */
export function StringEnum<const T extends readonly string[]>(values: T, options: FieldOptions): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ ...options, type: 'string', enum: [...values] });
}

/** A map of string keys to string values (labels, annotations, parameters). */
export function StringMap(options: FieldOptions): TUnsafe<Record<string, string>> {
  return Type.Unsafe<Record<string, string>>({ ...options, type: 'object', additionalProperties: { type: 'string' } });
}

/** An object whose content the API server keeps without validating it (used for opaque payloads only). */
export function OpaqueObject(options: FieldOptions): TUnsafe<Record<string, unknown>> {
  return Type.Unsafe<Record<string, unknown>>({
    ...options,
    type: 'object',
    'x-kubernetes-preserve-unknown-fields': true,
  });
}

/** An RFC 3339 timestamp, as Kubernetes stores `metav1.Time`. */
export function DateTime(options: FieldOptions): TUnsafe<string> {
  return Type.Unsafe<string>({ ...options, type: 'string', format: 'date-time' });
}

/** A Go duration such as `90s`, `15m` or `720h`. */
export function Duration(options: FieldOptions & { default?: string }): TUnsafe<string> {
  return Type.Unsafe<string>({ ...options, type: 'string', pattern: '^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$' });
}

/** The standard `metav1.Condition` schema, as used by every Kubernetes API that has conditions. */
export const Condition = Type.Object(
  {
    type: Type.String({
      description: 'Type of condition in CamelCase, for example Ready.',
      maxLength: 316,
      pattern:
        '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$',
    }),
    status: StringEnum(['True', 'False', 'Unknown'], {
      description: 'Status of the condition: True, False or Unknown.',
    }),
    observedGeneration: Type.Optional(
      Type.Integer({
        description: 'The .metadata.generation the condition was set for.',
        minimum: 0,
        format: 'int64',
      }),
    ),
    lastTransitionTime: DateTime({ description: 'Last time the condition changed from one status to another.' }),
    reason: Type.String({
      description: 'Programmatic identifier for the last transition, in CamelCase.',
      maxLength: 1024,
      minLength: 1,
      pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
    }),
    message: Type.String({ description: 'Human-readable details about the last transition.', maxLength: 32768 }),
  },
  { description: 'A condition in the standard Kubernetes form.' },
);
export type Condition = Static<typeof Condition>;

export function Conditions(description: string) {
  return Type.Array(Condition, {
    description,
    maxItems: 16,
    'x-kubernetes-list-type': 'map',
    'x-kubernetes-list-map-keys': ['type'],
  });
}

/** Reference to a key of a Secret in the same namespace. */
export function SecretKeyRef(description: string, defaultKey?: string) {
  return Type.Object(
    {
      name: Type.String({ description: 'Name of the Secret, in the namespace of the referring object.', ...dnsLabel }),
      key: Type.String({
        description: 'Key within the Secret.',
        minLength: 1,
        maxLength: 253,
        pattern: '^[-._a-zA-Z0-9]+$',
        ...(defaultKey === undefined ? {} : { default: defaultKey }),
      }),
    },
    { description },
  );
}

/** A DNS-1123 subdomain name, the form of most Kubernetes object names. */
export const dnsSubdomain = {
  minLength: 1,
  maxLength: 253,
  pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$',
} as const;

/** A DNS-1123 label, the form of names that end up in other names or environment variables. */
export const dnsLabel = { minLength: 1, maxLength: 63, pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' } as const;

/** Walks a schema and yields the JSON path of every property that lacks a description. */
export function* undocumentedFields(schema: unknown, path = ''): Generator<string> {
  if (typeof schema !== 'object' || schema === null) return;
  const s = schema as { properties?: Record<string, unknown>; items?: unknown; additionalProperties?: unknown };
  for (const [name, child] of Object.entries(s.properties ?? {})) {
    const childPath = `${path}.${name}`;
    if (typeof (child as { description?: unknown }).description !== 'string') yield childPath;
    yield* undocumentedFields(child, childPath);
  }
  if (s.items !== undefined) yield* undocumentedFields(s.items, `${path}[]`);
  if (typeof s.additionalProperties === 'object') yield* undocumentedFields(s.additionalProperties, `${path}{}`);
}
