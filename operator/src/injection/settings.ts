// Operator settings that shape every injected pod. Validated once at start (validateInjectionSettings);
// each option's default is stated next to it and in docs/injection.md.
import type { V1ResourceRequirements } from '@kubernetes/client-node';

export interface InjectionSettings {
  /** Sidecar image. Required; pin it by digest in production. */
  readonly image: string;
  /** Pull policy of the sidecar image. Default IfNotPresent (pin the image by digest, or use Always with a moving tag). */
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
  /**
   * Sidecar resources: requests and limits of cpu, memory, ephemeral-storage. Default requests 50m CPU /
   * 96Mi, limit 256Mi memory (no CPU limit: throttling a proxy adds latency to every statement).
   */
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
  /** Shortest time between two signed head writes of one session, ms (0: every flush). Default the sidecar's, 5000. */
  readonly headIntervalMs?: number;
}

export const DEFAULT_INJECTION_SETTINGS: Omit<InjectionSettings, 'image' | 'operatorNamespace'> = {
  imagePullPolicy: 'IfNotPresent',
  issuer: 'https://kubernetes.default.svc.cluster.local',
  jwksUrl: 'https://kubernetes.default.svc/openid/v1/jwks',
  metricsPort: 9091,
  tokenExpirationSeconds: 3600,
  resources: { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: '256Mi' } },
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
  if (!IMAGE_PULL_POLICIES.includes(settings.imagePullPolicy)) {
    problems.push(`imagePullPolicy: one of ${IMAGE_PULL_POLICIES.join(', ')}`);
  }
  problems.push(...resourceProblems(settings.resources));
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
    const headInterval = store.headIntervalMs;
    if (headInterval !== undefined && (!Number.isInteger(headInterval) || headInterval < 0 || headInterval > 60_000)) {
      problems.push('evidenceStore.headIntervalMs: an integer in 0..60000');
    }
  }
  if (problems.length > 0) throw new InjectionSettingsError(`invalid injection settings: ${problems.join('; ')}`);
  return settings;
}

export const IMAGE_PULL_POLICIES: readonly InjectionSettings['imagePullPolicy'][] = ['Always', 'IfNotPresent', 'Never'];

/** Resource names the sidecar's requests and limits may set. */
const SIDECAR_RESOURCE_NAMES = ['cpu', 'memory', 'ephemeral-storage'] as const;

/**
 * The least memory limit accepted for the sidecar: at rest it is ~82 MiB resident and its SQL parser and
 * first session add ~19 MiB (docs/install.md, "Memory"), so a lower limit gets it OOM-killed at the first
 * statement rather than refused here. The default, 256Mi, is what the tests run.
 */
export const SIDECAR_MIN_MEMORY_LIMIT = 128 * 1024 * 1024;

const QUANTITY = /^(\d+(?:\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;
const QUANTITY_FACTORS: Readonly<Record<string, number>> = {
  '': 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A Kubernetes quantity (`50m`, `256Mi`, `0.5`) as a number of base units, or undefined when it is not one. */
export function parseQuantity(text: string): number | undefined {
  const match = QUANTITY.exec(text);
  if (match === null) return undefined;
  return Number(match[1]) * (QUANTITY_FACTORS[match[2] ?? ''] ?? Number.NaN);
}

/**
 * What is wrong with the sidecar's resources, checked at start so that a bad value is the operator's
 * error rather than every injected pod's (the API server would refuse the pod the webhook patched).
 */
function resourceProblems(resources: V1ResourceRequirements): string[] {
  const problems: string[] = [];
  const amounts: Record<'requests' | 'limits', Map<string, number>> = { requests: new Map(), limits: new Map() };
  for (const [key, list] of Object.entries(resources as Record<string, unknown>)) {
    if (key !== 'requests' && key !== 'limits') {
      problems.push(`resources.${key}: only requests and limits are set`);
      continue;
    }
    if (typeof list !== 'object' || list === null) {
      problems.push(`resources.${key}: a map of resource names to quantities`);
      continue;
    }
    for (const [name, value] of Object.entries(list as Record<string, unknown>)) {
      if (!(SIDECAR_RESOURCE_NAMES as readonly string[]).includes(name)) {
        problems.push(`resources.${key}.${name}: one of ${SIDECAR_RESOURCE_NAMES.join(', ')}`);
        continue;
      }
      const amount = typeof value === 'string' ? parseQuantity(value) : undefined;
      if (amount === undefined) problems.push(`resources.${key}.${name}: a quantity such as 100m or 256Mi`);
      else amounts[key].set(name, amount);
    }
  }
  for (const [name, limit] of amounts.limits) {
    const request = amounts.requests.get(name);
    if (request !== undefined && request > limit) {
      problems.push(`resources.requests.${name}: must not exceed resources.limits.${name}`);
    }
  }
  const memory = amounts.limits.get('memory');
  if (memory !== undefined && memory < SIDECAR_MIN_MEMORY_LIMIT) {
    problems.push('resources.limits.memory: at least 128Mi (the sidecar needs ~100 MiB once its first session ran)');
  }
  return problems;
}
