// The CustomResourceDefinitions, built from the schemas in this package. `npm run generate` writes
// them to crds/; a test fails when the files and this code disagree.
import { stringify } from 'yaml';
import { Type, type TSchema } from './schema.ts';
import { GROUP, VERSION } from './meta.ts';
import { ProtectedResourceSpec, ProtectedResourceStatus } from './protected-resource.ts';
import { AccessPolicySpec, AccessPolicyStatus } from './access-policy.ts';
import { SESSION_OBJECT_RULES, SessionSpec, SessionStatus } from './session.ts';
import { ApprovalRequestSpec, ApprovalRequestStatus } from './approval-request.ts';
import { TrustedIssuerSpec, TrustedIssuerStatus } from './trusted-issuer.ts';
import { DelegationPolicySpec, DelegationPolicyStatus } from './delegation-policy.ts';
import { TokenExchangeLogSpec, TokenExchangeLogStatus } from './token-exchange-log.ts';

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description: string;
  priority?: number;
}

interface KindDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: TSchema;
  status: TSchema;
  columns: PrinterColumn[];
  specRequired?: boolean;
  /** CEL rules over the whole object (spec and status together). */
  rules?: readonly { readonly rule: string; readonly message: string }[];
}

const readyColumn: PrinterColumn = {
  name: 'Ready',
  type: 'string',
  jsonPath: '.status.conditions[?(@.type=="Ready")].status',
  description: 'Whether the object is ready.',
};
const reasonColumn: PrinterColumn = {
  name: 'Reason',
  type: 'string',
  jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
  description: 'Reason of the Ready condition.',
};
const ageColumn: PrinterColumn = {
  name: 'Age',
  type: 'date',
  jsonPath: '.metadata.creationTimestamp',
  description: 'Time since creation.',
};

export const KINDS: readonly KindDefinition[] = [
  {
    kind: 'ProtectedResource',
    plural: 'protectedresources',
    singular: 'protectedresource',
    shortNames: ['pres'],
    description:
      'A target system (PostgreSQL, the Kubernetes API, an HTTP service) that agents reach only through the Chaperone sidecar, which alone holds its credential.',
    spec: ProtectedResourceSpec,
    status: ProtectedResourceStatus,
    columns: [
      { name: 'Type', type: 'string', jsonPath: '.spec.type', description: 'Protocol of the target.' },
      {
        name: 'Endpoint',
        type: 'string',
        jsonPath: '.spec.endpoint.host',
        description: 'Host of a postgres target.',
      },
      {
        name: 'URL',
        type: 'string',
        jsonPath: '.spec.endpoint.url',
        description: 'URL of an http or kubernetes target.',
        priority: 1,
      },
      { name: 'Audit', type: 'string', jsonPath: '.spec.audit.failureMode', description: 'Audit failure mode.' },
      readyColumn,
      reasonColumn,
      ageColumn,
    ],
  },
  {
    kind: 'AccessPolicy',
    plural: 'accesspolicies',
    singular: 'accesspolicy',
    shortNames: ['apol'],
    description:
      'Who may do what on which ProtectedResources: ordered allow, deny and approve rules, approval requirements and result masking, compiled to WebAssembly by the operator.',
    spec: AccessPolicySpec,
    status: AccessPolicyStatus,
    columns: [
      {
        name: 'Default',
        type: 'string',
        jsonPath: '.spec.defaultDecision',
        description: 'Decision when no rule matches.',
      },
      readyColumn,
      reasonColumn,
      {
        name: 'Digest',
        type: 'string',
        jsonPath: '.status.bundle.digest',
        description: 'Compiled bundle digest.',
        priority: 1,
      },
      ageColumn,
    ],
  },
  {
    kind: 'Session',
    plural: 'sessions',
    singular: 'session',
    shortNames: ['csess'],
    description:
      'The tamper-evident audit trail of one agent session through a Chaperone sidecar: identity with its delegation chain and hash-chained, signed records.',
    spec: SessionSpec,
    status: SessionStatus,
    rules: SESSION_OBJECT_RULES,
    columns: [
      { name: 'Identity', type: 'string', jsonPath: '.spec.identity.subject', description: 'Verified subject.' },
      {
        name: 'Actor',
        type: 'string',
        jsonPath: '.spec.identity.chain[0].subject',
        description: 'Current actor of a delegated identity (the whole chain is in spec.identity.chain).',
      },
      { name: 'Resource', type: 'string', jsonPath: '.spec.resource.name', description: 'ProtectedResource used.' },
      { name: 'Part', type: 'integer', jsonPath: '.spec.part', description: 'Continuation index.', priority: 1 },
      { name: 'Commands', type: 'integer', jsonPath: '.status.counters.commands', description: 'Commands decided.' },
      { name: 'Denied', type: 'integer', jsonPath: '.status.counters.denied', description: 'Commands denied.' },
      { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'Session phase.' },
      { name: 'Pod', type: 'string', jsonPath: '.spec.pod.name', description: 'Pod of the sidecar.', priority: 1 },
      ageColumn,
    ],
  },
  {
    kind: 'ApprovalRequest',
    plural: 'approvalrequests',
    singular: 'approvalrequest',
    shortNames: ['areq'],
    description:
      'A command held by an approve rule of an AccessPolicy, waiting for decisions from approvers as authenticated by the API server.',
    spec: ApprovalRequestSpec,
    status: ApprovalRequestStatus,
    columns: [
      { name: 'Requester', type: 'string', jsonPath: '.spec.requester.subject', description: 'Who asked.' },
      { name: 'Resource', type: 'string', jsonPath: '.spec.resource', description: 'ProtectedResource.' },
      {
        name: 'Rule',
        type: 'string',
        jsonPath: '.spec.policy.rule',
        description: 'Rule that held the command.',
        priority: 1,
      },
      {
        name: 'Phase',
        type: 'string',
        jsonPath: '.status.phase',
        description: 'Pending, Approved, Denied, Expired, Cancelled, Abandoned.',
      },
      // A string, not a date: kubectl prints a date in the future as <invalid>.
      { name: 'Expires', type: 'string', jsonPath: '.spec.expiresTime', description: 'Expiry (RFC 3339).' },
      ageColumn,
    ],
  },
  {
    kind: 'TrustedIssuer',
    plural: 'trustedissuers',
    singular: 'trustedissuer',
    shortNames: ['tiss'],
    description:
      "An issuer whose tokens Chaperone's token exchange accepts (the cluster's service-account issuer, an external OIDC issuer), and the agent kinds it assigns. Read only from the exchange's namespace.",
    spec: TrustedIssuerSpec,
    status: TrustedIssuerStatus,
    columns: [
      { name: 'Issuer', type: 'string', jsonPath: '.spec.issuer', description: 'iss of the tokens.' },
      { name: 'Type', type: 'string', jsonPath: '.spec.type', description: 'kubernetes or oidc.' },
      { name: 'Keys', type: 'integer', jsonPath: '.status.keys', description: 'Keys last fetched.', priority: 1 },
      readyColumn,
      reasonColumn,
      ageColumn,
    ],
  },
  {
    kind: 'DelegationPolicy',
    plural: 'delegationpolicies',
    singular: 'delegationpolicy',
    shortNames: ['dpol'],
    description:
      "Who may act for whom through Chaperone's token exchange (RFC 8693), how deep a delegation chain may grow and what a delegated token may carry. Read only from the exchange's namespace.",
    spec: DelegationPolicySpec,
    status: DelegationPolicyStatus,
    columns: [readyColumn, reasonColumn, ageColumn],
  },
  {
    kind: 'TokenExchangeLog',
    plural: 'tokenexchangelogs',
    singular: 'tokenexchangelog',
    shortNames: ['txlog'],
    description:
      'Tamper-evident evidence of issued tokens: the hash-chained exchange records of one operator replica, with a signed head.',
    spec: TokenExchangeLogSpec,
    status: TokenExchangeLogStatus,
    columns: [
      { name: 'Replica', type: 'string', jsonPath: '.spec.replica', description: 'Operator replica.' },
      { name: 'Part', type: 'integer', jsonPath: '.spec.part', description: 'Continuation index.' },
      { name: 'Head', type: 'integer', jsonPath: '.spec.head.seq', description: 'seq of the last record written.' },
      { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'Log phase.' },
      ageColumn,
    ],
  },
];

/** Builds the apiextensions.k8s.io/v1 CustomResourceDefinition object of one kind. */
export function customResourceDefinition(def: KindDefinition): Record<string, unknown> {
  const schema = Type.Object(
    {
      apiVersion: Type.Optional(Type.String({ description: 'Versioned schema of this representation of an object.' })),
      kind: Type.Optional(Type.String({ description: 'REST resource this object represents.' })),
      // The API server allows no description (nor anything but name/generateName rules) on metadata.
      metadata: Type.Optional(Type.Unsafe({ type: 'object' })),
      spec: def.spec,
      status: Type.Optional(def.status),
    },
    {
      description: def.description,
      ...(def.rules === undefined ? {} : { 'x-kubernetes-validations': def.rules.map((r) => ({ ...r })) }),
    },
  );
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${def.plural}.${GROUP}`,
      labels: { 'app.kubernetes.io/part-of': 'chaperone' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: ['chaperone'],
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: def.columns,
          schema: { openAPIV3Schema: toPlainJson(schema) },
        },
      ],
    },
  };
}

// TypeBox marks schemas with symbol keys; a JSON round trip keeps only what the API server sees.
function toPlainJson(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value)) as unknown;
}

/** The YAML text of a CRD as committed in crds/. */
export function renderCrdYaml(crd: Record<string, unknown>): string {
  return `# Generated by \`npm run generate\` from api/src. Do not edit.\n${stringify(crd, { lineWidth: 0 })}`;
}
