// Operator settings that shape every injected pod. Validated once at start (validateInjectionSettings);
// each option's default is stated next to it and in docs/injection.md.
import type { V1ResourceRequirements } from '@kubernetes/client-node';

export interface InjectionSettings {
  /** Sidecar image. Required; pin it by digest in production. */
  readonly image: string;
  /** Default IfNotPresent. */
  readonly imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** Namespace the operator runs in; never injected. */
  readonly operatorNamespace: string;
  /** `iss` of the API server's service-account tokens (`--service-account-issuer`). Default https://kubernetes.default.svc.cluster.local. */
  readonly issuer: string;
  /** Where the sidecar fetches the API server's JWKS. Default https://kubernetes.default.svc/openid/v1/jwks. */
  readonly jwksUrl: string;
  /** Port of the sidecar's /metrics and /healthz (probes reach it on the pod IP). Default 9091. */
  readonly metricsPort: number;
  /** Lifetime requested for projected tokens, seconds (kubelet refreshes at 80 %). Default 3600. */
  readonly tokenExpirationSeconds: number;
  /** Sidecar resources. Default requests 50m CPU / 64Mi, limit 256Mi memory. */
  readonly resources: V1ResourceRequirements;
  /** UID the sidecar runs as. Default 65532 (distroless nonroot). */
  readonly runAsUser: number;
  /** Sidecar log level. Default info. */
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error';
  /**
   * Bound of the sidecar's audit spool, bytes (audit.spoolMaxBytes): what it holds while the API server is
   * unreachable. The spool's emptyDir gets a sizeLimit 25 % above it. Default 256 MiB.
   */
  readonly auditSpoolMaxBytes: number;
  /** Also print every audit record as JSON lines on the sidecar's stdout (for a log-shipping SIEM). Default false. */
  readonly auditExportJsonLines: boolean;
  /**
   * The audit namespace: sidecars hand their Sessions to the operator, which writes them there (docs/audit.md,
   * "Evidence out of the editors' reach"). Default unset: sidecars write Sessions in their own namespace.
   */
  readonly sessionNamespace?: string;
  /**
   * The credential namespace: ProtectedResources whose credentialSecretRef names it get their credential
   * delivered to attested sidecars instead of a mounted Secret (docs/injection.md). Default unset.
   */
  readonly credentialNamespace?: string;
  /**
   * The evidence store injected sidecars keep records in (ProtectedResource spec.audit.records); needs the
   * credential namespace, from which its writer password is delivered. Default unset: Session objects.
   */
  readonly evidenceStore?: EvidenceStoreSettings;
}

/**
 * The installation's evidence store (docs/evidence-store.md), as the chart's `<release>-evidence-store`
 * ConfigMap describes it: where sidecars append records and as which role. The writer's password and the
 * server's CA are Secrets of the credential namespace, delivered to attested sidecars, never rendered.
 */
export interface EvidenceStoreSettings {
  readonly host: string;
  /** Default 5432. */
  readonly port: number;
  readonly database: string;
  /** The INSERT-only role sidecars log in as. */
  readonly writerUser: string;
  /** Secret of the credential namespace holding the writer's password (key `password`). */
  readonly passwordSecret: string;
  /** Secret of the credential namespace holding the server's CA (key `ca.crt`); unset: only a loopback host. */
  readonly caSecret?: string;
  /** Records per insert and per signed head. Default 4096. */
  readonly batchRecords: number;
}

export const DEFAULT_INJECTION_SETTINGS: Omit<InjectionSettings, 'image' | 'operatorNamespace'> = {
  imagePullPolicy: 'IfNotPresent',
  issuer: 'https://kubernetes.default.svc.cluster.local',
  jwksUrl: 'https://kubernetes.default.svc/openid/v1/jwks',
  metricsPort: 9091,
  tokenExpirationSeconds: 3600,
  resources: { requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '256Mi' } },
  runAsUser: 65532,
  logLevel: 'info',
  auditSpoolMaxBytes: 256 * 1024 * 1024,
  auditExportJsonLines: false,
};

export class InjectionSettingsError extends Error {
  override name = 'InjectionSettingsError';
}

/** Applies defaults and checks every field; throws listing every problem. */
export function validateInjectionSettings(
  input: Partial<InjectionSettings> & Pick<InjectionSettings, 'image' | 'operatorNamespace'>,
): InjectionSettings {
  const settings: InjectionSettings = { ...DEFAULT_INJECTION_SETTINGS, ...input };
  const problems: string[] = [];
  if (settings.image.trim() === '') problems.push('image: required');
  if (settings.operatorNamespace.trim() === '') problems.push('operatorNamespace: required');
  if (!/^https?:\/\//.test(settings.jwksUrl)) problems.push('jwksUrl: must be an http(s) URL');
  if (settings.issuer === '') problems.push('issuer: required');
  if (!Number.isInteger(settings.metricsPort) || settings.metricsPort < 1024 || settings.metricsPort > 65535) {
    problems.push('metricsPort: an integer in 1024..65535');
  }
  // The API server refuses projected tokens shorter than 10 minutes.
  if (!Number.isInteger(settings.tokenExpirationSeconds) || settings.tokenExpirationSeconds < 600) {
    problems.push('tokenExpirationSeconds: an integer >= 600');
  }
  if (!Number.isInteger(settings.runAsUser) || settings.runAsUser < 1) problems.push('runAsUser: a non-root UID');
  // The sidecar's own minimum for audit.spoolMaxBytes.
  if (!Number.isInteger(settings.auditSpoolMaxBytes) || settings.auditSpoolMaxBytes < 64 * 1024) {
    problems.push('auditSpoolMaxBytes: an integer >= 65536');
  }
  const dnsLabel = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
  for (const key of ['sessionNamespace', 'credentialNamespace'] as const) {
    const value = settings[key];
    if (value !== undefined && !dnsLabel.test(value)) problems.push(`${key}: a namespace name`);
  }
  const store = settings.evidenceStore;
  if (store !== undefined) {
    if (settings.credentialNamespace === undefined) {
      problems.push("evidenceStore: needs credentialNamespace (the writer's password is delivered from there)");
    }
    if (store.host.trim() === '') problems.push('evidenceStore.host: required');
    if (!Number.isInteger(store.port) || store.port < 1 || store.port > 65535)
      problems.push('evidenceStore.port: 1..65535');
    const identifier = /^[a-z_][a-z0-9_]{0,62}$/;
    if (!identifier.test(store.database)) problems.push('evidenceStore.database: a plain SQL identifier');
    if (!identifier.test(store.writerUser)) problems.push('evidenceStore.writerUser: a plain SQL identifier');
    const secretName = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
    if (!secretName.test(store.passwordSecret)) problems.push('evidenceStore.passwordSecret: a Secret name');
    if (store.caSecret !== undefined && !secretName.test(store.caSecret)) {
      problems.push('evidenceStore.caSecret: a Secret name');
    }
    if (!Number.isInteger(store.batchRecords) || store.batchRecords < 1 || store.batchRecords > 65536) {
      problems.push('evidenceStore.batchRecords: an integer in 1..65536');
    }
  }
  if (problems.length > 0) throw new InjectionSettingsError(`invalid injection settings: ${problems.join('; ')}`);
  return settings;
}
