// The sidecar's configuration file (YAML), validated once at start. Every option, its default and its
// meaning is documented in docs/sidecar-config.md; the operator renders this file into injected pods, and
// running the sidecar by hand against any PostgreSQL is supported (docs/standalone.md).
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse } from 'yaml';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { AUDIT_FAILURE_MODES, AUDIT_SPOOL_DURABILITIES, TLS_MODES } from '@chaperone/api';

/** Upper bound of `eventLoops`: a loop is a V8 isolate of its own (tens of MiB). */
export const MAX_EVENT_LOOPS = 16;

const literalUnion = <const T extends readonly string[]>(values: T, description: string) =>
  Type.Union(
    values.map((v: T[number]) => Type.Literal(v)),
    { description },
  );

const HostPort = Type.String({
  description: 'host:port to listen on, e.g. 127.0.0.1:5432.',
  pattern: '^(\\[[0-9a-fA-F:]+\\]|[^:\\s]+):[0-9]{1,5}$',
});

export const PostgresListenerConfig = Type.Object(
  {
    name: Type.String({ description: 'ProtectedResource name; recorded in every audit record.', minLength: 1 }),
    type: Type.Literal('postgres'),
    listen: HostPort,
    /** Client-facing TLS. Without it the listener must be on loopback, because clients send their token as a cleartext password. */
    tls: Type.Optional(
      Type.Object({
        certFile: Type.String({ description: 'PEM certificate for client connections.' }),
        keyFile: Type.String({ description: 'PEM private key for client connections.' }),
      }),
    ),
    upstream: Type.Object({
      host: Type.String({ minLength: 1 }),
      port: Type.Integer({ minimum: 1, maximum: 65535, default: 5432 }),
      database: Type.String({ minLength: 1 }),
      tls: Type.Object(
        {
          mode: literalUnion(TLS_MODES, 'libpq sslmode semantics; default verify-full.'),
          caFile: Type.Optional(Type.String()),
          serverName: Type.Optional(Type.String()),
        },
        { default: { mode: 'verify-full' } },
      ),
      usernameFile: Type.String({ description: 'File holding the upstream user name (mounted Secret key).' }),
      passwordFile: Type.String({
        description: 'File holding the upstream password; re-read for every new upstream connection.',
      }),
      readOnlyUsernameFile: Type.Optional(
        Type.String({
          description:
            'File holding the user name of a least-privilege login (SELECT only): used for sessions whose policies grant no write.',
        }),
      ),
      readOnlyPasswordFile: Type.Optional(
        Type.String({ description: 'File holding the password of the least-privilege login; re-read per connection.' }),
      ),
    }),
    /** The one schema unqualified names resolve to; search_path is pinned to it for every session. */
    searchPath: Type.String({ minLength: 1, maxLength: 63, default: 'public' }),
    resource: Type.Object(
      {
        namespace: Type.String({ default: 'default' }),
        labels: Type.Record(Type.String(), Type.String(), { default: {} }),
      },
      { default: {} },
    ),
    auditFailureMode: literalUnion(AUDIT_FAILURE_MODES, 'FailClosed (default) or FailOpen.'),
    /** Largest frontend message accepted, bytes. Default 64 MiB; PostgreSQL itself allows 1 GiB. */
    maxMessageBytes: Type.Integer({ minimum: 1024, maximum: 1 << 30, default: 64 * 1024 * 1024 }),
    /** How long a client has to finish startup and authentication, ms. Default 10 s. */
    authTimeoutMs: Type.Integer({ minimum: 100, default: 10_000 }),
    /** Largest message accepted before authentication (the password message carries the token), bytes. Default 16 KiB. */
    maxUnauthenticatedMessageBytes: Type.Integer({ minimum: 1024, maximum: 1 << 20, default: 16 * 1024 }),
    /** Connections from one client address that may be in startup or authentication at once. Default 16. */
    maxUnauthenticatedPerSource: Type.Integer({ minimum: 1, default: 16 }),
    /** Client connections open at once; the next one is refused with 53300 (TooManyConnections). Default 256. */
    maxConnections: Type.Integer({ minimum: 1, maximum: 65_535, default: 256 }),
    /**
     * Upstream session reuse (docs/postgres-engine.md): an upstream session whose agent connection ended
     * cleanly is reset with DISCARD ALL and kept for the next agent connection with the same login.
     */
    upstreamReuse: Type.Object(
      {
        enabled: Type.Boolean({ default: true, description: 'Keep reset upstream sessions for reuse. Default true.' }),
        // Per login the pool never holds more sessions than agent connections were open at once (a login
        // happens only when none of its key is parked), so these defaults are the listener's maxConnections:
        // 150 clients that reconnect find their 150 backends (bench/README.md, "150 clients").
        maxParkedPerKey: Type.Integer({
          minimum: 1,
          maximum: 1024,
          default: 256,
          description: 'Parked sessions per login (credential, login kind, startup parameters). Default 256.',
        }),
        maxParked: Type.Integer({
          minimum: 1,
          maximum: 4096,
          default: 256,
          description: 'Parked sessions of this resource in all. Default 256.',
        }),
        idleTimeoutMs: Type.Integer({
          minimum: 100,
          default: 60_000,
          description: 'A session parked this long is closed (PgBouncer server_idle_timeout), ms. Default 60 s.',
        }),
        maxLifetimeMs: Type.Integer({
          minimum: 1000,
          default: 3_600_000,
          description:
            'A session this old (since its login) is closed instead of reused (server_lifetime), ms. Default 1 h.',
        }),
        resetTimeoutMs: Type.Integer({
          minimum: 100,
          default: 5_000,
          description: 'How long DISCARD ALL and the check after it may take before the session is closed, ms.',
        }),
      },
      { default: {}, additionalProperties: false },
    ),
    /**
     * Ceilings of the timeouts of read-only sessions, ms (docs/postgres-engine.md, "Timeouts a read-only
     * session cannot lift"): each session gets the smaller of the database's own value and this one, and
     * no statement of the agent changes them.
     */
    readOnlyTimeouts: Type.Object(
      {
        idleInTransactionSessionTimeoutMs: Type.Integer({
          minimum: 1,
          maximum: 2_147_483_647,
          default: 300_000,
          description:
            'idle_in_transaction_session_timeout at most: an agent transaction idle this long is ended by the server, and its locks with it. Default 5 min.',
        }),
        statementTimeoutMs: Type.Integer({
          minimum: 1,
          maximum: 2_147_483_647,
          default: 600_000,
          description: 'statement_timeout at most (a statement, lock waits included). Default 10 min.',
        }),
        lockTimeoutMs: Type.Optional(
          Type.Integer({
            minimum: 1,
            maximum: 2_147_483_647,
            description:
              "lock_timeout at most. Default none beyond the database's (statement_timeout bounds lock waits).",
          }),
        ),
      },
      { default: {}, additionalProperties: false },
    ),
    /** Result masking (docs/masking.md). */
    masking: Type.Optional(
      Type.Object({
        hashKeyFile: Type.Optional(
          Type.String({
            description:
              'File holding the key of the hash strategy (a mounted Secret key shared by every pod of the resource, so hashed values join across pods). Default: a random key per process.',
          }),
        ),
      }),
    ),
  },
  { additionalProperties: false },
);
export type PostgresListenerConfig = Static<typeof PostgresListenerConfig>;

/** TLS of an HTTP-speaking engine's upstream (the API server, an HTTP service): libpq-like modes on an https URL. */
const HttpUpstreamTls = Type.Object(
  {
    /** verify-full (default): the certificate chains to caFile (or the system roots) and names the host; verify-ca: chains only; require: encrypted, unverified. disable is for http:// URLs. */
    mode: literalUnion(TLS_MODES, 'Default verify-full.'),
    caFile: Type.Optional(Type.String()),
    serverName: Type.Optional(Type.String()),
  },
  { default: { mode: 'verify-full' } },
);

/**
 * Client-facing TLS of an HTTP-speaking listener: a certificate and key from files, or a self-signed loopback
 * certificate made at every start whose PEM is written to `selfSignedCertFile` (the CA of the agent's
 * kubeconfig; kubectl sends bearer tokens only over TLS).
 */
const AgentFacingTls = Type.Optional(
  Type.Object(
    {
      certFile: Type.Optional(Type.String({ minLength: 1 })),
      keyFile: Type.Optional(Type.String({ minLength: 1 })),
      selfSignedCertFile: Type.Optional(Type.String({ minLength: 1 })),
    },
    { additionalProperties: false },
  ),
);

const ResourceFacts = Type.Object(
  {
    namespace: Type.String({ default: 'default' }),
    labels: Type.Record(Type.String(), Type.String(), { default: {} }),
  },
  { default: {} },
);

/** The Kubernetes API engine (docs/kubernetes-engine.md): a kube-apiserver-compatible endpoint for kubectl and client-go. */
export const KubernetesListenerConfig = Type.Object(
  {
    name: Type.String({ description: 'ProtectedResource name; recorded in every audit record.', minLength: 1 }),
    type: Type.Literal('kubernetes'),
    listen: HostPort,
    /** Client-facing TLS (HTTP/1.1). Without it the listener must be on loopback: agents send their token as a bearer token. */
    tls: AgentFacingTls,
    upstream: Type.Object({
      /** The API server, https://host:port. */
      url: Type.String({ pattern: '^https?://' }),
      tls: HttpUpstreamTls,
      /** File holding the bearer token the sidecar presents (mounted Secret key); re-read every 10 s. */
      tokenFile: Type.String({ minLength: 1 }),
    }),
    /**
     * A kubeconfig for the agent, written at every start once the listener is open: the listener's https
     * address, the serving certificate as CA, and `tokenFile` (the agent's own projected token) as the user.
     */
    agentKubeconfig: Type.Optional(
      Type.Object(
        { path: Type.String({ minLength: 1 }), tokenFile: Type.String({ minLength: 1 }) },
        { additionalProperties: false },
      ),
    ),
    resource: ResourceFacts,
    auditFailureMode: literalUnion(AUDIT_FAILURE_MODES, 'FailClosed (default) or FailOpen.'),
    /** How long a client may take to send a request's headers, ms (slow-header clients). Default 60 s. */
    requestHeadersTimeoutMs: Type.Integer({ minimum: 1000, maximum: 600_000, default: 60_000 }),
    /** How long a client may take to send a whole request, headers and body, ms (slow-body clients). Default 5 min. */
    requestTimeoutMs: Type.Integer({ minimum: 1000, maximum: 3_600_000, default: 300_000 }),
    /** Largest request body accepted (and recorded), bytes. Default 3 MiB, the API server's own limit. */
    maxRequestBodyBytes: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 3 * 1024 * 1024 }),
    /** Largest response the engine holds to mask (Secrets), bytes; larger ones are refused. Default 64 MiB. */
    maxMaskedResponseBytes: Type.Integer({ minimum: 1024, maximum: 1 << 30, default: 64 * 1024 * 1024 }),
  },
  { additionalProperties: false },
);
export type KubernetesListenerConfig = Static<typeof KubernetesListenerConfig>;

/** The HTTP engine (docs/http-engine.md): a reverse proxy for one HTTP API. */
export const HttpListenerConfig = Type.Object(
  {
    name: Type.String({ description: 'ProtectedResource name; recorded in every audit record.', minLength: 1 }),
    type: Type.Literal('http'),
    listen: HostPort,
    /** Client-facing TLS. Without it the listener must be on loopback: agents send their token as a bearer token. */
    tls: AgentFacingTls,
    upstream: Type.Object({
      /** Base URL of the API; request paths are appended to its path. */
      url: Type.String({ pattern: '^https?://' }),
      tls: HttpUpstreamTls,
      /** The credential the sidecar adds to every request; the agent never sees it. */
      credential: Type.Optional(
        Type.Object(
          {
            /** Header carrying it. Default authorization. */
            header: Type.String({ minLength: 1, default: 'authorization' }),
            /** Written before the file's value. Default `Bearer `. */
            prefix: Type.String({ default: 'Bearer ' }),
            /** File holding the value (mounted Secret key); re-read every 10 s. */
            valueFile: Type.String({ minLength: 1 }),
          },
          { additionalProperties: false },
        ),
      ),
    }),
    resource: ResourceFacts,
    auditFailureMode: literalUnion(AUDIT_FAILURE_MODES, 'FailClosed (default) or FailOpen.'),
    /** How long a client may take to send a request's headers, ms (slow-header clients). Default 60 s. */
    requestHeadersTimeoutMs: Type.Integer({ minimum: 1000, maximum: 600_000, default: 60_000 }),
    /** How long a client may take to send a whole request, headers and body, ms (slow-body clients). Default 5 min. */
    requestTimeoutMs: Type.Integer({ minimum: 1000, maximum: 3_600_000, default: 300_000 }),
    /** Largest request body accepted (and recorded), bytes. Default 10 MiB. */
    maxRequestBodyBytes: Type.Integer({ minimum: 1024, maximum: 1 << 30, default: 10 * 1024 * 1024 }),
    /** Largest JSON response held to mask, bytes; larger ones are refused. Default 16 MiB. */
    maxMaskedResponseBytes: Type.Integer({ minimum: 1024, maximum: 1 << 30, default: 16 * 1024 * 1024 }),
  },
  { additionalProperties: false },
);
export type HttpListenerConfig = Static<typeof HttpListenerConfig>;

const LISTENER_SCHEMAS = {
  postgres: PostgresListenerConfig,
  kubernetes: KubernetesListenerConfig,
  http: HttpListenerConfig,
} as const;

function listenerSchema(listener: unknown): (typeof LISTENER_SCHEMAS)[keyof typeof LISTENER_SCHEMAS] | undefined {
  const type = (listener as { type?: unknown } | null)?.type;
  return typeof type === 'string' && Object.hasOwn(LISTENER_SCHEMAS, type)
    ? LISTENER_SCHEMAS[type as keyof typeof LISTENER_SCHEMAS]
    : undefined;
}

/** TypeBox applies no defaults inside a union, so each listener gets the defaults of the engine its type names. */
function defaultListeners(document: unknown): unknown {
  const listeners = (document as { listeners?: unknown } | null)?.listeners;
  if (!Array.isArray(listeners)) return document;
  for (const [i, l] of listeners.entries()) {
    const schema = listenerSchema(l);
    if (schema !== undefined) listeners[i] = Value.Default(schema, l);
  }
  return document;
}

/** One listener: the resource it protects and how, per engine (`type`). */
export const ListenerConfig = Type.Union([PostgresListenerConfig, KubernetesListenerConfig, HttpListenerConfig]);
export type ListenerConfig = PostgresListenerConfig | KubernetesListenerConfig | HttpListenerConfig;

export const TrustedIssuerConfig = Type.Object(
  {
    issuer: Type.String({ minLength: 1, description: 'Expected iss claim.' }),
    jwksUrl: Type.Optional(
      Type.String({ description: 'JWKS URL (https), fetched and cached; refetched on unknown kid.' }),
    ),
    jwksFile: Type.Optional(
      Type.String({ description: 'JWKS file, re-read when it changes (checked at most once a second).' }),
    ),
    jwksCaFile: Type.Optional(Type.String({ description: 'CA bundle for the JWKS URL.' })),
    jwksCa: Type.Optional(Type.String({ minLength: 1, description: 'CA bundle for the JWKS URL, inline PEM.' })),
    tokenExchange: Type.Optional(
      Type.Boolean({
        description:
          "Chaperone's token exchange: its tokens name the subject's original issuer and the exchange that issued them (docs/identity.md). Default false.",
      }),
    ),
    serviceAccounts: Type.Optional(
      Type.Boolean({
        description:
          "The cluster's service-account issuer: only its tokens (and the exchange's) may name system: subjects, and its service accounts get their groups. Default false: such a token of this issuer is refused.",
      }),
    ),
    agentKind: Type.Optional(
      Type.Boolean({
        description:
          "This issuer assigns agent kinds: its chaperone.dev/agent-kind claim is believed (policies match on it). Default false: a token of this issuer that carries the claim is refused. The exchange's kinds are always believed.",
      }),
    ),
    jwksBearerTokenFile: Type.Optional(
      Type.String({ description: 'Token sent when fetching the JWKS (the API server may require authentication).' }),
    ),
    audiences: Type.Array(Type.String(), { minItems: 1, default: ['chaperone'] }),
    algorithms: Type.Array(Type.String(), { minItems: 1, default: ['RS256', 'ES256', 'EdDSA'] }),
  },
  { additionalProperties: false },
);
export type TrustedIssuerConfig = Static<typeof TrustedIssuerConfig>;

/**
 * How the sidecar reaches the API server: a kubeconfig file, or in-cluster access (server from
 * KUBERNETES_SERVICE_HOST/PORT, the service-account token and CA) with each part overridable.
 */
const apiAccessFields = {
  /** Kubeconfig file; excludes server, tokenFile and caFile. */
  kubeconfig: Type.Optional(Type.String({ minLength: 1 })),
  /** API server URL; default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT. */
  server: Type.Optional(Type.String({ pattern: '^https?://' })),
  /** Bearer token file, re-read every minute (the kubelet rotates projected tokens); default in-cluster. */
  tokenFile: Type.Optional(Type.String({ minLength: 1 })),
  /** CA bundle of the API server; default in-cluster. */
  caFile: Type.Optional(Type.String({ minLength: 1 })),
};

/** How the sidecar trusts and authenticates to an operator endpoint. */
const operatorTrustFields = {
  /** CA bundle of the operator's serving certificate (file, or `ca` inline PEM); default the system roots. */
  caFile: Type.Optional(Type.String({ minLength: 1 })),
  ca: Type.Optional(Type.String({ minLength: 1 })),
  /** The pod-bound token to present; default the in-cluster token. */
  tokenFile: Type.Optional(Type.String({ minLength: 1 })),
};

export const SidecarConfig = Type.Object(
  {
    /** The pod written into every audit record; empty fields are taken from POD_ENV (downward API). */
    pod: Type.Object(
      {
        namespace: Type.String({ default: '' }),
        name: Type.String({ default: '' }),
        uid: Type.String({ default: '' }),
      },
      { default: {} },
    ),
    listeners: Type.Array(ListenerConfig, { minItems: 1 }),
    policy: Type.Object(
      {
        /** Directory of compiled bundles (`<key>.wasm` + `<key>.manifest.json`), watched and hot-reloaded. Standalone use. */
        bundleDir: Type.Optional(Type.String()),
        /**
         * The namespace's signed policy set through the API (what injected sidecars use, docs/policy.md
         * "Delivery"): the ConfigMap is watched, the bundles it names are fetched, and a set is loaded only
         * when signed by one of `trustedKeys`, for this namespace, and newer than the one loaded.
         */
        kubernetes: Type.Optional(
          Type.Object(
            {
              /** Name of the policy-set ConfigMap. Default chaperone-policies. */
              configMap: Type.String({ minLength: 1, default: 'chaperone-policies' }),
              /** Namespace of the ConfigMap; default the pod's namespace. */
              namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
              ...apiAccessFields,
              /** Full re-read in addition to the watch, seconds. Default 300. */
              resyncSeconds: Type.Integer({ minimum: 5, default: 300 }),
            },
            { additionalProperties: false },
          ),
        ),
        /** Ed25519 public JWKs (with kid) of the operator; required with `kubernetes`. */
        trustedKeys: Type.Optional(
          Type.Array(
            Type.Object({
              kty: Type.Literal('OKP'),
              crv: Type.Literal('Ed25519'),
              x: Type.String({ minLength: 43, maxLength: 43 }),
              kid: Type.String({ minLength: 1 }),
            }),
            { minItems: 1 },
          ),
        ),
        /** How often the bundle directory is re-checked, ms. Default 1000. */
        pollIntervalMs: Type.Integer({ minimum: 100, default: 1000 }),
        /** Decision cache entries per listener. Default 10000; 0 disables caching. */
        decisionCacheSize: Type.Integer({ minimum: 0, default: 10_000 }),
      },
      { additionalProperties: false },
    ),
    identity: Type.Object({
      issuers: Type.Array(TrustedIssuerConfig, { minItems: 1 }),
      clockToleranceSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 5 }),
    }),
    audit: Type.Object(
      {
        /** `-` for stdout, else a file path; records are JSON lines. The sink when `spoolDir` is unset. */
        path: Type.String({ default: '-' }),
        /**
         * Directory of the durable spool. When set, records are group-committed to it before a command is
         * forwarded and written into Session objects (docs/audit-durability.md). Default unset: JSON lines only.
         */
        spoolDir: Type.Optional(Type.String({ minLength: 1 })),
        /** Bound of the spool, bytes; a full spool refuses records (FailClosed resources deny). Default 256 MiB. */
        spoolMaxBytes: Type.Integer({ minimum: 64 * 1024, default: 256 * 1024 * 1024 }),
        /**
         * What a statement waits for before it is forwarded (docs/audit-durability.md): `Synced` (default), its
         * record fdatasync'ed, surviving a node crash; `Written`, its record written into the spool file,
         * surviving the sidecar's crash (SIGKILL, OOM kill) but not the node's; fdatasync'ed right behind.
         */
        spoolDurability: Type.Union(
          AUDIT_SPOOL_DURABILITIES.map((v) => Type.Literal(v)),
          { description: 'Synced (default) or Written.', default: 'Synced' },
        ),
        /** Time between writes of spooled records into Session objects, ms. Default 1000. */
        flushIntervalMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 1000 }),
        /** With `spoolDir`: also write every record as JSON lines to `path` (an export for a SIEM). Default false. */
        exportJsonLines: Type.Boolean({ default: false }),
        /**
         * Where Session objects are written (needed with `spoolDir`): a kubeconfig file, or in-cluster access
         * (server from KUBERNETES_SERVICE_HOST/PORT, the service-account token and CA) with each part overridable.
         */
        kubernetes: Type.Optional(
          Type.Object(
            {
              ...apiAccessFields,
              /** Namespace of the Session objects; default the pod's namespace. */
              namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
            },
            { additionalProperties: false },
          ),
        ),
        /**
         * Keep records in an evidence store instead of in Session objects, which then carry only signed heads
         * and status (docs/evidence-store.md). With `spoolDir` only. Default unset: records in Session objects.
         */
        evidenceStore: Type.Optional(
          Type.Object(
            {
              postgres: Type.Object(
                {
                  host: Type.String({ minLength: 1 }),
                  /** Default 5432. */
                  port: Type.Integer({ minimum: 1, maximum: 65535, default: 5432 }),
                  database: Type.String({ minLength: 1 }),
                  /** The store's writer role (INSERT only). */
                  user: Type.String({ minLength: 1 }),
                  /** File with the writer role's password (a Secret key mounted into the sidecar alone). */
                  passwordFile: Type.Optional(Type.String({ minLength: 1 })),
                  /** CA bundle of the server's certificate; TLS with verify-full when set. */
                  caFile: Type.Optional(Type.String({ minLength: 1 })),
                  /** Name the server's certificate must carry; default host. */
                  serverName: Type.Optional(Type.String({ minLength: 1 })),
                },
                { additionalProperties: false },
              ),
              /** Records per insert, each batch covered by one head written to its Session. Default 4096. */
              batchRecords: Type.Integer({ minimum: 1, maximum: 65_536, default: 4096 }),
              /**
               * Shortest time between two signed head (and status) writes of one session, ms; records are
               * inserted every flush interval meanwhile (docs/evidence-store.md). Default 5000.
               */
              headIntervalMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 5000 }),
            },
            { additionalProperties: false },
          ),
        ),
        /** Ed25519 private JWK that signs chain heads; generated when absent. Default `<spoolDir>/signing-key.jwk`. */
        signingKeyFile: Type.Optional(Type.String({ minLength: 1 })),
        /**
         * Write Sessions through the operator instead of the API server (docs/audit.md, "Evidence out of the
         * editors' reach"): the operator attests the sidecar and writes into the audit namespace named by
         * audit.kubernetes.namespace, where the agents' editors (and this sidecar's account) have no rights.
         */
        operator: Type.Optional(
          Type.Object(
            {
              /** https URL of POST /audit/v1/sessions on the operator's webhook Service. */
              url: Type.String({ pattern: '^https://' }),
              ...operatorTrustFields,
            },
            { additionalProperties: false },
          ),
        ),
        /**
         * The operator's signer certification endpoint (docs/audit.md, Trust model). With `spoolDir`: the
         * sidecar asks it to certify the signing key before serving, and keeps asking in the background.
         */
        certification: Type.Optional(
          Type.Object(
            {
              /** https URL of POST /audit/v1/certify on the operator's webhook Service. */
              url: Type.String({ pattern: '^https://' }),
              /** CA bundle of the operator's serving certificate (file, or `ca` inline PEM); default the system roots. */
              caFile: Type.Optional(Type.String({ minLength: 1 })),
              ca: Type.Optional(Type.String({ minLength: 1 })),
              /** The pod-bound token to present; default audit.kubernetes.tokenFile, else the in-cluster token. */
              tokenFile: Type.Optional(Type.String({ minLength: 1 })),
              /** How long start-up waits for the certificate before serving without it. Default 10. */
              waitSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 10 }),
            },
            { additionalProperties: false },
          ),
        ),
      },
      { default: {}, additionalProperties: false },
    ),
    /**
     * Delivered credentials (docs/injection.md): the operator hands the listed resources' credentials to this
     * sidecar after attesting it; they are written under `dir` (`<resource>/username|password|ca.crt`), where
     * the listeners' usernameFile/passwordFile/caFile point, and refreshed every `refreshSeconds`. With
     * `evidenceStore`, the evidence store's writer password and CA too, into `evidenceStore.dir`
     * (`password`, `ca.crt`), where audit.evidenceStore.postgres.passwordFile/caFile point.
     */
    credentials: Type.Optional(
      Type.Object(
        {
          /** https URL of POST /credentials/v1/fetch on the operator's webhook Service. */
          url: Type.String({ pattern: '^https://' }),
          ...operatorTrustFields,
          dir: Type.String({ minLength: 1 }),
          /** Resources whose credential is delivered; may be empty when only the evidence store's is. */
          resources: Type.Array(Type.String({ minLength: 1 })),
          evidenceStore: Type.Optional(
            Type.Object({ dir: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
          ),
          /** Default 60. */
          refreshSeconds: Type.Integer({ minimum: 5, default: 60 }),
          /** How long start-up waits for the credentials. Default 30. */
          waitSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 30 }),
        },
        { additionalProperties: false },
      ),
    ),
    /**
     * Holding commands for approval (docs/approvals.md): approve decisions file an ApprovalRequest in
     * `kubernetes.namespace` (default the pod's) with this access (the sidecar's own pod-bound token), and
     * the command waits on its connection for the decisions. Without this section approve rules refuse
     * (ApprovalRequired).
     */
    approvals: Type.Optional(
      Type.Object(
        {
          kubernetes: Type.Object(
            {
              ...apiAccessFields,
              /** Namespace of the ApprovalRequests; default the pod's namespace. */
              namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
            },
            { additionalProperties: false, default: {} },
          ),
        },
        { additionalProperties: false },
      ),
    ),
    metrics: Type.Object(
      {
        /** host:port of the Prometheus endpoint; empty disables it. Default 127.0.0.1:9090. */
        listen: Type.String({ default: '127.0.0.1:9090' }),
      },
      { default: {} },
    ),
    /**
     * Event loops serving the listeners from the start: the main thread plus `eventLoops - 1` worker threads,
     * each accepting on the same ports (SO_REUSEPORT) (docs/sidecar-event-loops.md). Set, it pins that many
     * (1: one loop, never more); unset, one loop starts and more start when it is busy (lazyEventLoops).
     */
    eventLoops: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_EVENT_LOOPS })),
    /**
     * With `eventLoops` unset: further loops started when the main loop is busy and stopped after they have
     * had no connection for a while (docs/sidecar-event-loops.md, "Lazily started loops"). Off, one loop, where
     * a second loop is refused (the durable spool, approvals, ...).
     */
    lazyEventLoops: Type.Object(
      {
        /** Loops at most, the main thread's included; 1 turns lazy loops off. Default 2. */
        max: Type.Integer({ minimum: 1, maximum: MAX_EVENT_LOOPS, default: 2 }),
        /** Open connections (every listener, every loop) from which a further loop may start. Default 32. */
        startAtConnections: Type.Integer({ minimum: 1, default: 32 }),
        /**
         * A burst of logins starts a further loop at once: this many connections accepted by the main loop within
         * half a second, with at least `startAtConnections` open (the logins are the load). 0: only the
         * utilisation sample starts one. Default 16.
         */
        startOnLogins: Type.Integer({ minimum: 0, default: 16 }),
        /** The main loop's utilisation over the last half second from which a further loop starts. Default 0.5. */
        busyUtilisation: Type.Number({ minimum: 0, maximum: 1, default: 0.5 }),
        /** A lazily started loop with no connection for this long is stopped; 0 keeps it. Default 60. */
        stopAfterIdleSeconds: Type.Integer({ minimum: 0, default: 60 }),
      },
      { additionalProperties: false, default: {} },
    ),
    log: Type.Object(
      { level: literalUnion(['debug', 'info', 'warn', 'error'] as const, 'Default info.') },
      { default: { level: 'info' } },
    ),
  },
  { additionalProperties: false },
);
export type SidecarConfig = Static<typeof SidecarConfig>;

/** The process environment, as far as the configuration reads it. */
export type ConfigEnvironment = Readonly<Record<string, string | undefined>>;

/**
 * Downward-API variables that fill `pod.*` where the file leaves it empty: at admission the injector knows
 * no generateName'd pod's name and no pod's uid, so it sets these on the sidecar container instead.
 */
export const POD_ENV = { namespace: 'POD_NAMESPACE', name: 'POD_NAME', uid: 'POD_UID' } as const;

/** In-cluster API access: the kubelet sets these variables and projects the token and CA (as client-go reads them). */
export const IN_CLUSTER = {
  hostEnv: 'KUBERNETES_SERVICE_HOST',
  portEnv: 'KUBERNETES_SERVICE_PORT',
  tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
  caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
} as const;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function parseHostPort(value: string): { host: string; port: number } {
  const i = value.lastIndexOf(':');
  const host = value.slice(0, i).replace(/^\[|\]$/g, '');
  return { host, port: Number(value.slice(i + 1)) };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

/**
 * Validates a parsed configuration document, applying defaults, including those only the environment
 * knows (POD_ENV, the in-cluster API server). Throws ConfigError listing every problem.
 */
export function validateConfig(document: unknown, env: ConfigEnvironment = {}): SidecarConfig {
  const withDefaults = Value.Default(SidecarConfig, defaultListeners(structuredClone(document ?? {})));
  const errors = [...Value.Errors(SidecarConfig, withDefaults)].flatMap((e) => {
    // A listener that fits no engine's schema: say what is wrong with it for the engine its type names.
    const listener = /^\/listeners\/(\d+)$/.exec(e.path);
    if (listener === null) return [`${e.path || '/'}: ${e.message}`];
    const value: unknown = (withDefaults as { listeners: unknown[] }).listeners[Number(listener[1])];
    const schema = listenerSchema(value);
    if (schema === undefined) return [`${e.path}/type: must be one of ${Object.keys(LISTENER_SCHEMAS).join(', ')}`];
    return [...Value.Errors(schema, value)].map((inner) => `${e.path}${inner.path}: ${inner.message}`);
  });
  if (errors.length > 0) throw new ConfigError(`invalid configuration:\n  ${errors.join('\n  ')}`);
  const config = withDefaults as SidecarConfig;
  const problems: string[] = [];
  for (const key of ['namespace', 'name', 'uid'] as const) {
    if (config.pod[key] === '') config.pod[key] = env[POD_ENV[key]] ?? '';
  }
  const names = new Set<string>();
  for (const [i, l] of config.listeners.entries()) {
    if (names.has(l.name)) problems.push(`/listeners/${i}/name: duplicate listener ${l.name}`);
    names.add(l.name);
    const { host, port } = parseHostPort(l.listen);
    if (port > 65535) problems.push(`/listeners/${i}/listen: port out of range`);
    if (l.tls === undefined && !isLoopback(host)) {
      problems.push(
        `/listeners/${i}/listen: ${host} is not loopback and no tls is set; clients send their token as a password, so off-loopback listeners need TLS`,
      );
    }
    if (l.upstream.tls.mode === 'verify-ca' && l.upstream.tls.caFile === undefined) {
      problems.push(`/listeners/${i}/upstream/tls: verify-ca needs caFile`);
    }
    if (
      l.type === 'postgres' &&
      (l.upstream.readOnlyUsernameFile === undefined) !== (l.upstream.readOnlyPasswordFile === undefined)
    ) {
      problems.push(`/listeners/${i}/upstream: set both readOnlyUsernameFile and readOnlyPasswordFile, or neither`);
    }
    if (l.type === 'postgres' && l.searchPath.startsWith('pg_')) {
      problems.push(`/listeners/${i}/searchPath: a system schema (pg_*) cannot be the pinned schema`);
    }
    if (l.type !== 'postgres' && l.tls !== undefined) {
      const files = l.tls.certFile !== undefined && l.tls.keyFile !== undefined;
      const generated = l.tls.selfSignedCertFile !== undefined;
      if (files === generated || (!files && (l.tls.certFile !== undefined || l.tls.keyFile !== undefined))) {
        problems.push(`/listeners/${i}/tls: set certFile and keyFile, or selfSignedCertFile`);
      }
      if (generated && !isLoopback(host)) {
        problems.push(
          `/listeners/${i}/tls/selfSignedCertFile: a self-signed certificate names loopback addresses only`,
        );
      }
    }
    if (l.type === 'kubernetes' && l.agentKubeconfig !== undefined && l.tls === undefined) {
      problems.push(`/listeners/${i}/agentKubeconfig: needs tls (kubectl sends tokens only over TLS)`);
    }
    if (l.type !== 'postgres') {
      const https = l.upstream.url.startsWith('https://');
      if (https === (l.upstream.tls.mode === 'disable')) {
        problems.push(
          `/listeners/${i}/upstream: tls.mode disable goes with an http:// url, the other modes with https://`,
        );
      }
    }
  }
  for (const [i, issuer] of config.identity.issuers.entries()) {
    if ((issuer.jwksUrl === undefined) === (issuer.jwksFile === undefined)) {
      problems.push(`/identity/issuers/${i}: set exactly one of jwksUrl and jwksFile`);
    }
    if (issuer.jwksCa !== undefined && issuer.jwksCaFile !== undefined) {
      problems.push(`/identity/issuers/${i}: set at most one of jwksCa and jwksCaFile`);
    }
    if (issuer.algorithms.some((a) => a.toLowerCase() === 'none' || a.startsWith('HS'))) {
      problems.push(`/identity/issuers/${i}/algorithms: only asymmetric algorithms are allowed`);
    }
  }
  if (
    config.credentials !== undefined &&
    config.credentials.resources.length === 0 &&
    config.credentials.evidenceStore === undefined
  ) {
    problems.push('/credentials: names no resource and no evidenceStore: nothing to deliver');
  }
  if (config.audit.evidenceStore !== undefined && config.audit.spoolDir === undefined) {
    problems.push('/audit/evidenceStore: needs audit.spoolDir (records reach the store through the spool)');
  }
  const storeHost = config.audit.evidenceStore?.postgres.host;
  if (storeHost !== undefined && config.audit.evidenceStore?.postgres.caFile === undefined && !isLoopback(storeHost)) {
    problems.push(
      `/audit/evidenceStore/postgres/caFile: ${storeHost} is not loopback; the store is reached over TLS only`,
    );
  }
  if (config.audit.spoolDir !== undefined) {
    const namespace = config.audit.kubernetes?.namespace ?? config.pod.namespace;
    if (namespace === '') {
      problems.push(
        `/audit/kubernetes/namespace: set it (or pod.namespace, or ${POD_ENV.namespace}) when audit.spoolDir is set`,
      );
    }
    // Sessions name the pod whose sidecar wrote them, and admission checks it against the writer's token.
    if (config.pod.name === '') {
      problems.push(`/pod/name: set it (or ${POD_ENV.name}) when audit.spoolDir is set`);
    }
    const resolved = resolveApiAccess(config.audit.kubernetes ?? {}, env, '/audit/kubernetes');
    if (typeof resolved === 'string') problems.push(resolved);
    else config.audit.kubernetes = resolved;
  }
  const approvals = config.approvals;
  if (approvals !== undefined) {
    approvals.kubernetes.namespace ??= config.pod.namespace === '' ? undefined : config.pod.namespace;
    if (approvals.kubernetes.namespace === undefined) {
      problems.push(`/approvals/kubernetes/namespace: set it (or pod.namespace, or ${POD_ENV.namespace})`);
    }
    // Requests name the pod whose sidecar holds them (it marks its leftovers Abandoned after a restart).
    if (config.pod.name === '') problems.push(`/pod/name: set it (or ${POD_ENV.name}) when approvals are enabled`);
    const resolved = resolveApiAccess(approvals.kubernetes, env, '/approvals/kubernetes');
    if (typeof resolved === 'string') problems.push(resolved);
    else approvals.kubernetes = resolved;
  }
  if (config.eventLoops !== undefined && config.eventLoops > 1) {
    problems.push(...eventLoopProblems(config, config.eventLoops));
  }
  const policy = config.policy;
  if ((policy.bundleDir === undefined) === (policy.kubernetes === undefined)) {
    problems.push('/policy: set exactly one of bundleDir and kubernetes');
  }
  if (policy.kubernetes !== undefined) {
    if (policy.trustedKeys === undefined) {
      problems.push('/policy/trustedKeys: required with policy.kubernetes (policy sets are loaded only when signed)');
    }
    policy.kubernetes.namespace ??= config.pod.namespace === '' ? undefined : config.pod.namespace;
    if (policy.kubernetes.namespace === undefined) {
      problems.push(`/policy/kubernetes/namespace: set it (or pod.namespace, or ${POD_ENV.namespace})`);
    }
    const resolved = resolveApiAccess(policy.kubernetes, env, '/policy/kubernetes');
    if (typeof resolved === 'string') problems.push(resolved);
    else policy.kubernetes = resolved;
  } else if (policy.trustedKeys !== undefined) {
    problems.push('/policy/trustedKeys: applies to policy.kubernetes only');
  }
  if (problems.length > 0) throw new ConfigError(`invalid configuration:\n  ${problems.join('\n  ')}`);
  return config;
}

/**
 * What more than one event loop does not support yet (docs/sidecar-event-loops.md, "What is built"): refused
 * at start rather than run with per-pod state that only one loop would see.
 */
function eventLoopProblems(config: SidecarConfig, loops: number): string[] {
  const problems: string[] = [];
  const unsupported = (path: string, what: string) =>
    problems.push(`/eventLoops: more than one event loop does not support ${what} yet (${path}); set eventLoops: 1`);
  if (config.audit.spoolDir !== undefined) unsupported('audit.spoolDir', 'the durable audit spool');
  if (config.approvals !== undefined) unsupported('approvals', 'approvals');
  if (config.credentials !== undefined) unsupported('credentials', 'delivered credentials');
  if (config.policy.kubernetes !== undefined) unsupported('policy.kubernetes', 'policy sets from Kubernetes');
  for (const [i, l] of config.listeners.entries()) {
    if (l.type !== 'postgres') {
      unsupported(`listeners/${String(i)}`, `${l.type} listeners`);
      continue;
    }
    // Split into equal shares per loop (perLoopLimits): each loop needs one. maxUnauthenticatedPerSource is
    // counted across loops instead (core/source-counts.ts).
    const shared = {
      'upstreamReuse/maxParkedPerKey': l.upstreamReuse.maxParkedPerKey,
      'upstreamReuse/maxParked': l.upstreamReuse.maxParked,
    };
    for (const [key, value] of Object.entries(shared)) {
      if (value < loops) {
        problems.push(
          `/listeners/${String(i)}/${key}: at least eventLoops (${String(loops)}); every loop gets an equal share`,
        );
      }
    }
  }
  return problems;
}

/** How many event loops serve: `eager` from the start, up to `max` started lazily (docs/sidecar-event-loops.md). */
export interface EventLoopPlan {
  readonly eager: number;
  readonly max: number;
  /** With `eventLoops` unset and lazy loops off: why (what a second loop does not support yet). */
  readonly lazyOffBecause: readonly string[];
}

/** The loops a validated configuration runs: `eventLoops` pins; unset, lazy loops where a second is allowed. */
export function eventLoopPlan(config: SidecarConfig): EventLoopPlan {
  if (config.eventLoops !== undefined) return { eager: config.eventLoops, max: config.eventLoops, lazyOffBecause: [] };
  const max = config.lazyEventLoops.max;
  if (max === 1) return { eager: 1, max: 1, lazyOffBecause: ['lazyEventLoops.max is 1'] };
  const problems = eventLoopProblems(config, max);
  return problems.length === 0 ? { eager: 1, max, lazyOffBecause: [] } : { eager: 1, max: 1, lazyOffBecause: problems };
}

/**
 * The configuration one of `loops` running loops runs with: the per-listener bounds a loop counts by itself
 * (parked upstream sessions) split into equal shares, rounded down, so the sidecar never holds more than
 * configured. maxConnections (ResourceListener) and maxUnauthenticatedPerSource (core/source-counts.ts)
 * are counted across loops instead and stay whole.
 */
export function perLoopLimits(config: SidecarConfig, loops = eventLoopPlan(config).max): SidecarConfig {
  const n = loops;
  if (n === 1) return config;
  return {
    ...config,
    listeners: config.listeners.map((l) =>
      l.type !== 'postgres'
        ? l
        : {
            ...l,
            upstreamReuse: {
              ...l.upstreamReuse,
              maxParkedPerKey: Math.floor(l.upstreamReuse.maxParkedPerKey / n),
              maxParked: Math.floor(l.upstreamReuse.maxParked / n),
            },
          },
    ),
  };
}

/**
 * Lazily started loops (eventLoopPlan): the main loop runs with `live`, a copy of the configuration whose
 * listeners its engines keep; its shares of the bounds are set here whenever the number of running loops
 * changes (the whole bound while it runs alone).
 */
export function setLoopShares(live: SidecarConfig, config: SidecarConfig, loops: number): void {
  const shares = perLoopLimits(config, loops);
  for (const [i, l] of live.listeners.entries()) {
    const share = shares.listeners[i];
    if (l.type !== 'postgres' || share?.type !== 'postgres') continue;
    l.upstreamReuse.maxParkedPerKey = share.upstreamReuse.maxParkedPerKey;
    l.upstreamReuse.maxParked = share.upstreamReuse.maxParked;
  }
}

/** API access completed: a kubeconfig, or server, tokenFile and caFile with in-cluster defaults; or a problem. */
function resolveApiAccess<T extends { kubeconfig?: string; server?: string; tokenFile?: string; caFile?: string }>(
  access: T,
  env: ConfigEnvironment,
  path: string,
): T | string {
  if (access.kubeconfig !== undefined) {
    const others = (['server', 'tokenFile', 'caFile'] as const).filter((k) => access[k] !== undefined);
    return others.length === 0 ? access : `${path}: kubeconfig excludes ${others.join(', ')}`;
  }
  let server = access.server;
  if (server === undefined) {
    const host = env[IN_CLUSTER.hostEnv] ?? '';
    const port = env[IN_CLUSTER.portEnv] ?? '';
    if (host === '' || port === '') {
      return `${path}/server: not set, and ${IN_CLUSTER.hostEnv}/${IN_CLUSTER.portEnv} are not in the environment; outside a pod, set server or kubeconfig`;
    }
    server = `https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  }
  return {
    ...access,
    server,
    tokenFile: access.tokenFile ?? IN_CLUSTER.tokenFile,
    caFile: access.caFile ?? IN_CLUSTER.caFile,
  };
}

export function loadConfig(path: string, env: ConfigEnvironment = process.env): SidecarConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read configuration ${path}: ${(err as Error).message}`, { cause: err });
  }
  return validateConfig(parse(text), env);
}
