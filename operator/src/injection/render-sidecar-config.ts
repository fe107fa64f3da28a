// Renders the sidecar's YAML configuration (docs/sidecar-config.md, sidecar/src/config.ts) for one pod from
// its ProtectedResources. Pure: every path it names is a mount the pod patch creates in the sidecar only.
import { stringify } from 'yaml';
import {
  CREDENTIAL_DELIVERY_PATH,
  DEFAULT_LISTEN_PORTS,
  POLICY_SET_CONFIGMAP,
  SESSION_PROXY_PATH,
  type ProtectedResource,
  type ResourceType,
} from '@chaperone/api';
import {
  AGENT_IDENTITY_DIR,
  AGENT_LOOPBACK_TLS_DIR,
  AGENT_TOKEN_FILE,
  SIDECAR_API_ACCESS_DIR,
  SIDECAR_AUDIT_DIR,
  SIDECAR_CREDENTIALS_DIR,
  SIDECAR_EVIDENCE_DIR,
} from './constants.ts';
import type { PublicKeys } from './sealed-pod.ts';
import type { InjectionSettings } from './settings.ts';

/** Resource types the sidecar has an engine for today; the others are refused or skipped with a warning. */
export const SIDECAR_ENGINES: readonly ResourceType[] = ['postgres', 'kubernetes', 'http'];

export function listenPortOf(resource: ProtectedResource): number {
  return resource.spec.listenPort ?? DEFAULT_LISTEN_PORTS[resource.spec.type];
}

/** Files of one resource inside the sidecar's credentials volume (projected from Secrets). */
export function credentialPaths(resourceName: string): {
  username: string;
  password: string;
  readOnlyUsername: string;
  readOnlyPassword: string;
  maskingKey: string;
  ca: string;
} {
  return {
    username: `${resourceName}/username`,
    password: `${resourceName}/password`,
    readOnlyUsername: `${resourceName}/read-only/username`,
    readOnlyPassword: `${resourceName}/read-only/password`,
    maskingKey: `${resourceName}/masking-key`,
    ca: `${resourceName}/ca.crt`,
  };
}

/**
 * The certificate of a kubernetes listener's self-signed loopback TLS: written by the sidecar at every start
 * into the loopback-TLS volume, which agents mount read-only; the CA of the agents' kubeconfig.
 */
export function loopbackCertPath(resourceName: string): string {
  return `${AGENT_LOOPBACK_TLS_DIR}/${resourceName}.crt`;
}

/** The upstream TLS of a resource as the sidecar reads it (libpq-like modes; `disable` for http:// URLs). */
function upstreamTls(resource: ProtectedResource): Record<string, string> {
  const spec = resource.spec;
  const plain = spec.type !== 'postgres' && (spec.endpoint.url ?? '').startsWith('http://');
  return {
    mode: plain ? 'disable' : (spec.tls?.mode ?? 'verify-full'),
    ...(spec.tls?.caSecretRef === undefined
      ? {}
      : { caFile: `${SIDECAR_CREDENTIALS_DIR}/${credentialPaths(resource.metadata.name ?? '').ca}` }),
    ...(spec.tls?.serverName === undefined ? {} : { serverName: spec.tls.serverName }),
  };
}

/** The engine-specific part of a listener: where and how the sidecar reaches the target, with which credential. */
function targetOf(resource: ProtectedResource): Record<string, unknown> {
  const name = resource.metadata.name ?? '';
  const spec = resource.spec;
  const paths = credentialPaths(name);
  const credential = `${SIDECAR_CREDENTIALS_DIR}/${paths.password}`;
  switch (spec.type) {
    case 'postgres':
      return {
        upstream: {
          host: spec.endpoint.host ?? '',
          port: spec.endpoint.port ?? 5432,
          database: spec.endpoint.database ?? '',
          tls: upstreamTls(resource),
          usernameFile: `${SIDECAR_CREDENTIALS_DIR}/${paths.username}`,
          passwordFile: credential,
          // The least-privilege login for sessions whose policies grant no write (render-pod-patch.ts mounts it).
          ...(spec.readOnlyCredentialSecretRef === undefined
            ? {}
            : {
                readOnlyUsernameFile: `${SIDECAR_CREDENTIALS_DIR}/${paths.readOnlyUsername}`,
                readOnlyPasswordFile: `${SIDECAR_CREDENTIALS_DIR}/${paths.readOnlyPassword}`,
              }),
        },
        ...(spec.searchPath === undefined ? {} : { searchPath: spec.searchPath }),
        // The key of the hash strategy, one for every pod of the resource (render-pod-patch.ts mounts it).
        ...(spec.maskingKeySecretRef === undefined
          ? {}
          : { masking: { hashKeyFile: `${SIDECAR_CREDENTIALS_DIR}/${paths.maskingKey}` } }),
      };
    case 'kubernetes':
      // kubectl sends a bearer token only over TLS: a self-signed loopback certificate, made at every start,
      // whose PEM the agents' kubeconfig (renderAgentKubeconfig) names as its CA.
      return {
        tls: { selfSignedCertFile: loopbackCertPath(name) },
        upstream: { url: spec.endpoint.url ?? '', tls: upstreamTls(resource), tokenFile: credential },
      };
    case 'http':
      return {
        upstream: {
          url: spec.endpoint.url ?? '',
          tls: upstreamTls(resource),
          ...(spec.credentialSecretRef === undefined ? {} : { credential: { valueFile: credential } }),
        },
      };
  }
}

export interface RenderSidecarConfigInput {
  readonly namespace: string;
  /** Pod name when known at admission; empty for generateName'd pods (the sidecar then reads POD_NAME). */
  readonly podName: string;
  /** Resources the sidecar has an engine for, in annotation order. */
  readonly resources: readonly ProtectedResource[];
  readonly settings: InjectionSettings;
  /** The operator's public keys, pinned as the only signers of policy sets the sidecar accepts. */
  readonly operatorKeys: PublicKeys;
  /** The operator's signer certification endpoint and the CA of its serving certificate, when it runs one. */
  readonly signerCertification?: SignerCertificationEndpoint;
  /** The operator's token exchange (docs/identity.md), whose delegated tokens the sidecar then accepts. */
  readonly tokenExchange?: TokenExchangeEndpoint;
  /** The operator's HTTPS server, for the Session proxy and credential delivery when settings ask for them. */
  readonly operatorEndpoint?: OperatorEndpoint;
  /**
   * Keep records in the installation's evidence store (settings.evidenceStore; resolved by the pod patch from
   * the resources' spec.audit.records): its location in audit.evidenceStore, its writer credential delivered.
   */
  readonly evidenceStore?: boolean;
}

export interface TokenExchangeEndpoint {
  readonly issuer: string;
  readonly jwksUrl: string;
  readonly caPem: string;
}

export interface SignerCertificationEndpoint {
  readonly url: string;
  readonly caPem: string;
}

/** Where sidecars reach the operator's HTTPS server, and its CA (the Session proxy, credential delivery). */
export interface OperatorEndpoint {
  readonly baseUrl: string;
  readonly caPem: string;
}

/** Whether the resource's credential is delivered by the operator (a Secret of another namespace). */
export function isDelivered(resource: ProtectedResource): boolean {
  return resource.spec.credentialSecretRef?.namespace !== undefined;
}

export function renderSidecarConfig(input: RenderSidecarConfigInput): Record<string, unknown> {
  const { settings } = input;
  const tokenFile = `${SIDECAR_API_ACCESS_DIR}/token`;
  const operator = input.operatorEndpoint;
  const delivered = input.resources.filter(isDelivered).map((r) => r.metadata.name ?? '');
  const store = input.evidenceStore === true ? settings.evidenceStore : undefined;
  return {
    pod: { namespace: input.namespace, name: input.podName, uid: '' },
    listeners: input.resources.map((r) => ({
      name: r.metadata.name ?? '',
      type: r.spec.type,
      listen: `127.0.0.1:${String(listenPortOf(r))}`,
      ...targetOf(r),
      resource: { namespace: input.namespace, labels: { ...(r.metadata.labels ?? {}) } },
      auditFailureMode: r.spec.audit.failureMode,
    })),
    // Policies arrive through the API: the namespace's signed policy set (one ConfigMap, watched, readable
    // by name only) and the bundles it names, verified against the operator's keys pinned here.
    policy: {
      kubernetes: {
        configMap: POLICY_SET_CONFIGMAP,
        tokenFile: `${SIDECAR_API_ACCESS_DIR}/token`,
        caFile: `${SIDECAR_API_ACCESS_DIR}/ca.crt`,
      },
      trustedKeys: input.operatorKeys.map((k) => ({ kty: k.kty, crv: k.crv, x: k.x, kid: k.kid })),
    },
    identity: {
      issuers: [
        {
          issuer: settings.issuer,
          jwksUrl: settings.jwksUrl,
          jwksCaFile: `${SIDECAR_API_ACCESS_DIR}/ca.crt`,
          jwksBearerTokenFile: `${SIDECAR_API_ACCESS_DIR}/token`,
          // The API server's issuer: the one that names service accounts.
          serviceAccounts: true,
          audiences: ['chaperone'],
          algorithms: ['RS256', 'ES256'],
        },
        ...(input.tokenExchange === undefined
          ? []
          : [
              {
                issuer: input.tokenExchange.issuer,
                jwksUrl: input.tokenExchange.jwksUrl,
                jwksCa: input.tokenExchange.caPem,
                tokenExchange: true,
                audiences: ['chaperone'],
                algorithms: ['ES256'],
              },
            ]),
      ],
    },
    // The durable trail: records are spooled in the sidecar's emptyDir and written into Session objects
    // with the sidecar's own pod-bound token (admission checks that token against spec.pod.name). The
    // server is in-cluster, from the kubelet's KUBERNETES_SERVICE_HOST/PORT; the files are named so that
    // every path the sidecar reads is in this config.
    audit: {
      spoolDir: SIDECAR_AUDIT_DIR,
      spoolMaxBytes: settings.auditSpoolMaxBytes,
      kubernetes: {
        tokenFile,
        caFile: `${SIDECAR_API_ACCESS_DIR}/ca.crt`,
        ...(settings.sessionNamespace === undefined ? {} : { namespace: settings.sessionNamespace }),
      },
      // In an audit namespace the operator writes the Sessions, after attesting this sidecar.
      ...(settings.sessionNamespace === undefined || operator === undefined
        ? {}
        : { operator: { url: `${operator.baseUrl}${SESSION_PROXY_PATH}`, ca: operator.caPem, tokenFile } }),
      ...(settings.auditExportJsonLines ? { exportJsonLines: true, path: '-' } : {}),
      // Records in the evidence store as its INSERT-only writer, whose password and CA the operator delivers
      // (credentials.evidenceStore below) into the sidecar's own memory volume: never in this config or env.
      ...(store === undefined
        ? {}
        : {
            evidenceStore: {
              postgres: {
                host: store.host,
                port: store.port,
                database: store.database,
                user: store.writerUser,
                passwordFile: `${SIDECAR_EVIDENCE_DIR}/password`,
                ...(store.caSecret === undefined ? {} : { caFile: `${SIDECAR_EVIDENCE_DIR}/ca.crt` }),
              },
              batchRecords: store.batchRecords,
              ...(store.headIntervalMs === undefined ? {} : { headIntervalMs: store.headIntervalMs }),
            },
          }),
      // The same pod-bound token proves the pod to the operator (TokenReview) when it certifies the key.
      ...(input.signerCertification === undefined
        ? {}
        : {
            certification: {
              url: input.signerCertification.url,
              ca: input.signerCertification.caPem,
              tokenFile: `${SIDECAR_API_ACCESS_DIR}/token`,
            },
          }),
    },
    // Approve rules hold commands: requests are filed in the pod's namespace (where its approvers work) with
    // the sidecar's pod-bound token, whose Role allows exactly that (docs/approvals.md).
    approvals: { kubernetes: { tokenFile, caFile: `${SIDECAR_API_ACCESS_DIR}/ca.crt` } },
    // Credentials of another namespace, and the evidence store's, are delivered by the operator into the
    // sidecar's memory volumes.
    ...((delivered.length === 0 && store === undefined) || operator === undefined
      ? {}
      : {
          credentials: {
            url: `${operator.baseUrl}${CREDENTIAL_DELIVERY_PATH}`,
            ca: operator.caPem,
            tokenFile,
            dir: SIDECAR_CREDENTIALS_DIR,
            resources: delivered,
            ...(store === undefined ? {} : { evidenceStore: { dir: SIDECAR_EVIDENCE_DIR } }),
          },
        }),
    // Probes come from the kubelet on the pod IP, so /healthz cannot be loopback-only.
    metrics: { listen: `0.0.0.0:${String(settings.metricsPort)}` },
    log: { level: settings.logLevel },
  };
}

export function renderSidecarConfigYaml(input: RenderSidecarConfigInput): string {
  return stringify(renderSidecarConfig(input));
}

/**
 * The agents' kubeconfig for a kubernetes resource: the sidecar's loopback listener over TLS (its self-signed
 * certificate as the CA; kubectl sends bearer tokens only over TLS) and the agent's own audience-bound token
 * (re-read by kubectl and client-go on every request, so rotation just works). No cluster credential.
 */
export function renderAgentKubeconfig(namespace: string, resources: readonly ProtectedResource[]): string {
  const names = resources.map((r) => r.metadata.name ?? '');
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: resources.map((r) => ({
      name: r.metadata.name ?? '',
      cluster: {
        server: `https://127.0.0.1:${String(listenPortOf(r))}`,
        'certificate-authority': loopbackCertPath(r.metadata.name ?? ''),
      },
    })),
    users: [{ name: 'agent', user: { tokenFile: `${AGENT_IDENTITY_DIR}/${AGENT_TOKEN_FILE}` } }],
    // One context per resource, named after it; the first named in the pod's annotation is current.
    contexts: names.map((name) => ({ name, context: { cluster: name, user: 'agent', namespace } })),
    'current-context': names[0] ?? '',
  });
}
