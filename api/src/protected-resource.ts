// ProtectedResource: a target system (PostgreSQL, the Kubernetes API, an HTTP service) that agents reach
// only through the sidecar. Written by the platform team.
import { Type, type Static, StringEnum, Conditions, SecretKeyRef, Duration, DateTime, dnsSubdomain } from './schema.ts';
import type { KubernetesObject } from './meta.ts';

export const RESOURCE_TYPES = ['postgres', 'kubernetes', 'http'] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

export const TLS_MODES = ['disable', 'require', 'verify-ca', 'verify-full'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

export const AUDIT_FAILURE_MODES = ['FailClosed', 'FailOpen'] as const;
export type AuditFailureMode = (typeof AUDIT_FAILURE_MODES)[number];

/**
 * What a statement waits for before it is forwarded when the sidecar spools records (docs/audit-durability.md):
 * `Synced`, its record fdatasync'ed (survives a node crash); `Written`, its record written into the spool file,
 * i.e. handed to the kernel (survives the sidecar's crash, SIGKILL or OOM kill), fdatasync'ed right behind.
 */
/**
 * Where the records of a resource's sessions are kept (docs/evidence-store.md): `SessionObjects`, in the
 * Session objects themselves; `EvidenceStore`, in the installation's evidence store, the Session objects
 * keeping the signed heads.
 */
export const AUDIT_RECORD_STORES = ['SessionObjects', 'EvidenceStore'] as const;
export type AuditRecordStore = (typeof AUDIT_RECORD_STORES)[number];

export const AUDIT_SPOOL_DURABILITIES = ['Synced', 'Written'] as const;
export type AuditSpoolDurability = (typeof AUDIT_SPOOL_DURABILITIES)[number];

/** Default local port the sidecar listens on for each resource type, when `listenPort` is not set. */
export const DEFAULT_LISTEN_PORTS: Readonly<Record<ResourceType, number>> = {
  postgres: 5432,
  kubernetes: 6443,
  http: 8080,
};

const MASKING_KEY_REF = SecretKeyRef(
  "Secret key holding the key of the masking strategy hash (HMAC-SHA-256) of a postgres target: at least 32 bytes, the file's bytes as they are. Every pod of the resource gets the same key, so hashed values are equal across pods and joins on them work. Mounted only into the sidecar, or delivered with a delivered credential; the sidecar reads it at start (rotating it takes a pod restart; hashes from before and after do not join). Without it each sidecar process hashes with a random key of its own. See docs/masking.md.",
  'key',
);

export const ProtectedResourceSpec = Type.Object(
  {
    type: StringEnum(RESOURCE_TYPES, {
      description: 'Protocol of the target: postgres, kubernetes or http. Immutable.',
      'x-kubernetes-validations': [{ rule: 'self == oldSelf', message: 'type is immutable' }],
    }),
    endpoint: Type.Object(
      {
        host: Type.Optional(
          Type.String({ description: 'Host name or IP address of a postgres target.', minLength: 1, maxLength: 253 }),
        ),
        port: Type.Optional(
          Type.Integer({
            description: 'TCP port of a postgres target. Default 5432.',
            minimum: 1,
            maximum: 65535,
            default: 5432,
          }),
        ),
        database: Type.Optional(
          Type.String({
            description: 'Database the sidecar connects to on a postgres target.',
            minLength: 1,
            maxLength: 63,
          }),
        ),
        url: Type.Optional(
          Type.String({
            description: 'Base URL of a kubernetes or http target, for example https://api.example.com.',
            minLength: 1,
            maxLength: 2048,
            'x-kubernetes-validations': [
              { rule: "self.startsWith('https://') || self.startsWith('http://')", message: 'url must be http(s)' },
              { rule: 'isURL(self)', message: 'url must be a valid URL' },
            ],
          }),
        ),
      },
      { description: 'Where the target is reached from the sidecar.' },
    ),
    tls: Type.Optional(
      Type.Object(
        {
          mode: StringEnum(TLS_MODES, {
            description:
              'How the sidecar secures its upstream connection, with libpq sslmode semantics. Default verify-full.',
            default: 'verify-full',
          }),
          caSecretRef: Type.Optional(
            SecretKeyRef('Secret key holding the PEM CA bundle that signs the target certificate.', 'ca.crt'),
          ),
          serverName: Type.Optional(
            Type.String({
              description: 'Name expected in the target certificate, when it differs from the endpoint host.',
              maxLength: 253,
            }),
          ),
        },
        {
          description: 'TLS settings of the upstream connection.',
          'x-kubernetes-validations': [
            {
              rule: "self.mode != 'verify-ca' || has(self.caSecretRef)",
              message: 'verify-ca needs caSecretRef',
              fieldPath: '.caSecretRef',
            },
          ],
        },
      ),
    ),
    credentialSecretRef: Type.Optional(
      Type.Object(
        {
          name: Type.String({ description: 'Name of the Secret.', ...dnsSubdomain }),
          namespace: Type.Optional(
            Type.String({
              description:
                "Namespace of the Secret when it is not this one: the operator's credential namespace, from which the credential is delivered to attested sidecars only (docs/injection.md). The Secret must list this namespace in its annotation chaperone.dev/allowed-namespaces.",
              maxLength: 63,
            }),
          ),
          usernameKey: Type.String({
            description: 'Key holding the user name. Default username.',
            default: 'username',
            maxLength: 253,
          }),
          passwordKey: Type.String({
            description: 'Key holding the password or bearer token. Default password.',
            default: 'password',
            maxLength: 253,
          }),
        },
        {
          description:
            'Secret with the credential the sidecar uses upstream. Mounted only into the sidecar, never into agent containers.',
        },
      ),
    ),
    readOnlyCredentialSecretRef: Type.Optional(
      Type.Object(
        {
          name: Type.String({ description: 'Name of the Secret.', ...dnsSubdomain }),
          namespace: Type.Optional(
            Type.String({
              description:
                "Namespace of the Secret when the credential is delivered: the operator's credential namespace, the same as credentialSecretRef.namespace (a delivered credential and a mounted read-only one do not mix). Delivered to attested sidecars only; the Secret must list this namespace in its annotation chaperone.dev/allowed-namespaces.",
              maxLength: 63,
            }),
          ),
          usernameKey: Type.String({
            description: 'Key holding the user name. Default username.',
            default: 'username',
            maxLength: 253,
          }),
          passwordKey: Type.String({
            description: 'Key holding the password. Default password.',
            default: 'password',
            maxLength: 253,
          }),
        },
        {
          description:
            'Secret with a second, least-privilege credential of a postgres target (a role that may only read, with default_transaction_read_only=on). The sidecar logs in with it for sessions whose effective policies grant no write, so PostgreSQL itself refuses a write the statement analysis missed. Mounted only into the sidecar. See docs/postgres-engine.md.',
        },
      ),
    ),
    maskingKeySecretRef: Type.Optional(
      Type.Object(
        {
          ...MASKING_KEY_REF.properties,
          namespace: Type.Optional(
            Type.String({
              description:
                "Namespace of the Secret when it is not this one: the operator's credential namespace, the same as credentialSecretRef.namespace, so that this namespace's editors cannot read the key (whoever holds it can confirm a guessed value from its hash). Delivered to attested sidecars only; the Secret must list this namespace in its annotation chaperone.dev/allowed-namespaces.",
              maxLength: 63,
            }),
          ),
        },
        { description: MASKING_KEY_REF.description },
      ),
    ),
    searchPath: Type.Optional(
      Type.String({
        description:
          'The one schema unqualified names of a postgres target resolve to. The sidecar pins search_path to it for every session and refuses statements that change it (PostgreSQL 15 does not report search_path changes, so the sidecar cannot follow them). Default public.',
        minLength: 1,
        maxLength: 63,
        'x-kubernetes-validations': [
          { rule: "!self.startsWith('pg_')", message: 'searchPath cannot be a system schema (pg_*)' },
        ],
      }),
    ),
    listenPort: Type.Optional(
      Type.Integer({
        description:
          'Port the sidecar listens on inside the pod (loopback). Default by type: postgres 5432, kubernetes 6443, http 8080.',
        minimum: 1024,
        maximum: 65535,
      }),
    ),
    audit: Type.Object(
      {
        failureMode: StringEnum(AUDIT_FAILURE_MODES, {
          description:
            'What happens when audit records cannot be made durable: FailClosed denies new commands, FailOpen lets them run and records the gap. Default FailClosed (NIST AU-5).',
          default: 'FailClosed',
        }),
        retention: Duration({
          description:
            'How long Session objects of this resource are kept before the retention controller removes them. Default 720h.',
          default: '720h',
        }),
        records: Type.Optional(
          StringEnum(AUDIT_RECORD_STORES, {
            description:
              "Where the records of this resource's sessions are kept: SessionObjects (in the Session objects) or EvidenceStore (in the installation's evidence store; Session objects keep the signed heads). Default: EvidenceStore when the operator has an evidence store configured and the pod's namespace is strict, SessionObjects otherwise. All resources of one pod must agree.",
          }),
        ),
      },
      {
        description: 'Audit settings for sessions on this resource.',
        default: { failureMode: 'FailClosed', retention: '720h' },
      },
    ),
  },
  {
    description: 'Desired state of a ProtectedResource.',
    'x-kubernetes-validations': [
      {
        rule: "self.type != 'postgres' || (has(self.endpoint.host) && has(self.endpoint.database))",
        message: 'a postgres resource needs endpoint.host and endpoint.database',
        fieldPath: '.endpoint',
      },
      {
        rule: "self.type == 'postgres' || has(self.endpoint.url)",
        message: 'a kubernetes or http resource needs endpoint.url',
        fieldPath: '.endpoint',
      },
      {
        rule: "self.type != 'postgres' || !has(self.endpoint.url)",
        message: 'endpoint.url is not used by a postgres resource',
        fieldPath: '.endpoint.url',
      },
      {
        rule: "self.type == 'postgres' || !has(self.readOnlyCredentialSecretRef)",
        message: 'readOnlyCredentialSecretRef is used by a postgres resource only',
        fieldPath: '.readOnlyCredentialSecretRef',
      },
      {
        rule: "self.type == 'postgres' || !has(self.maskingKeySecretRef)",
        message: 'maskingKeySecretRef is used by a postgres resource only',
        fieldPath: '.maskingKeySecretRef',
      },
      {
        rule: '!has(self.readOnlyCredentialSecretRef) || !has(self.credentialSecretRef) || (has(self.readOnlyCredentialSecretRef.__namespace__) ? has(self.credentialSecretRef.__namespace__) && self.credentialSecretRef.__namespace__ == self.readOnlyCredentialSecretRef.__namespace__ : !has(self.credentialSecretRef.__namespace__))',
        message:
          'readOnlyCredentialSecretRef.namespace must be credentialSecretRef.namespace: both credentials are delivered, or both mounted',
        fieldPath: '.readOnlyCredentialSecretRef',
      },
      {
        // `namespace` is a CEL reserved word: the field is `__namespace__` in a rule (as written, `.namespace`
        // would be an untyped value, and comparing two of them costs the API server more than it allows).
        rule: '!has(self.maskingKeySecretRef) || !has(self.maskingKeySecretRef.__namespace__) || (has(self.credentialSecretRef) && has(self.credentialSecretRef.__namespace__) && self.credentialSecretRef.__namespace__ == self.maskingKeySecretRef.__namespace__)',
        message:
          'maskingKeySecretRef.namespace needs a delivered credential from the same namespace (credentialSecretRef.namespace)',
        fieldPath: '.maskingKeySecretRef.namespace',
      },
      {
        rule: "self.type == 'postgres' || !has(self.searchPath)",
        message: 'searchPath is used by a postgres resource only',
        fieldPath: '.searchPath',
      },
      {
        rule: '!has(self.readOnlyCredentialSecretRef) || !has(self.credentialSecretRef) || self.readOnlyCredentialSecretRef.name != self.credentialSecretRef.name || self.readOnlyCredentialSecretRef.usernameKey != self.credentialSecretRef.usernameKey',
        message: 'readOnlyCredentialSecretRef must name another credential than credentialSecretRef',
        fieldPath: '.readOnlyCredentialSecretRef',
      },
      {
        rule: "self.type != 'postgres' || has(self.credentialSecretRef)",
        message: 'a postgres resource needs credentialSecretRef',
        fieldPath: '.credentialSecretRef',
      },
    ],
  },
);
export type ProtectedResourceSpec = Static<typeof ProtectedResourceSpec>;

export const ProtectedResourceStatus = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The .metadata.generation last reconciled.', format: 'int64', minimum: 0 }),
    ),
    conditions: Type.Optional(
      Conditions('Current state: Ready, with reasons such as SecretNotFound or InvalidEndpoint.'),
    ),
    credentialVersion: Type.Optional(
      Type.String({
        description: 'Hash of the credential Secret content last seen, so sidecars can tell when it changed.',
        maxLength: 128,
      }),
    ),
    lastCheckedTime: Type.Optional(DateTime({ description: 'When the reference was last checked.' })),
  },
  { description: 'Observed state of a ProtectedResource.' },
);
export type ProtectedResourceStatus = Static<typeof ProtectedResourceStatus>;

export type ProtectedResource = KubernetesObject<'ProtectedResource', ProtectedResourceSpec, ProtectedResourceStatus>;
