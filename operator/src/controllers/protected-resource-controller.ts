// The ProtectedResource controller (docs/operator.md, "ProtectedResource controller").
//
// Two kinds of key share one work queue:
//   * namespace/name of a ProtectedResource: resolve its references and write status. The credential
//     Secret must exist and hold non-empty usernameKey and passwordKey; the CA Secret, when named, must
//     exist and hold PEM certificate(s); the endpoint must be usable (postgres: DNS name or IP and a port
//     in range; http/kubernetes: a URL with scheme https or, explicitly, http). Status gets
//     observedGeneration, credentialVersion (sha256 of the credential values, never the values),
//     lastCheckedTime and Ready True/Resolved or False with SecretNotFound, SecretKeyMissing, InvalidCA or
//     InvalidEndpoint; a Warning Event (reason = condition reason) when the resource becomes not ready.
//   * namespace/:sidecar-rbac (":" cannot occur in an object name): server-side apply the Role and
//     RoleBinding chaperone-sidecar of that namespace while it has ProtectedResources, the binding's
//     subjects being the service accounts of attested pods (a sidecar sealed by the operator that nothing
//     else in the pod can reach; an annotation anyone can write is not enough); delete both when the last
//     resource goes. The Role reads ConfigMaps by name only: the policy set and the namespace's bundles.
//     Both carry an ownerReference (not controller) to every ProtectedResource of the namespace, so the
//     garbage collector removes them too if the operator is not running.
// Secrets are watched and mapped to the resources of their namespace that reference them, pods to their
// namespace's RBAC key, so a created or rotated Secret and a new injected pod are reflected in seconds.
// Nothing is written when nothing changed (lastCheckedTime moves only with a status write).
import { createHash, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import {
  ApiException,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
  type ObjectCache,
  type RbacAuthorizationV1Api,
  type V1OwnerReference,
  type V1Pod,
  type V1PolicyRule,
  type V1Role,
  type V1RoleBinding,
  type V1Secret,
  type RbacV1Subject,
} from '@kubernetes/client-node';
import { API_VERSION, GROUP, type ProtectedResource, type ProtectedResourceStatus } from '@chaperone/api';
import { systemClock, type Clock } from '../controller-runtime/clock.ts';
import { conditionsEqual, findCondition, rfc3339, setCondition } from '../controller-runtime/conditions.ts';
import { patchStatus } from '../controller-runtime/status-patch.ts';
import { Controller } from '../controller-runtime/controller.ts';
import type { EventRecorder } from '../controller-runtime/event-recorder.ts';
import {
  objectKey,
  type ReconcileContext,
  type ReconcileRequest,
  type ReconcileResult,
  type Reconciler,
} from '../controller-runtime/reconcile.ts';
import { InformerSource } from '../controller-runtime/source.ts';
import { cacheOf, customObjectInformer } from '../controller-runtime/custom-object-informer.ts';
import { POLICY_SET_CONFIGMAP, type AccessPolicy } from '@chaperone/api';
import { attestationProblems, injectorNamesIn, type PublicKeys } from '../injection/sealed-pod.ts';
import { ANNOTATION_ALLOWED_NAMESPACES, secretAllows } from '../credentials/credential-delivery.ts';
import type { Logger } from '../observability/logger.ts';
import type { OperatorMetrics } from '../observability/metrics.ts';
import { ACCESS_POLICY_PLURAL, FIELD_MANAGER, LABEL_COMPONENT, LABEL_MANAGED_BY } from './access-policy-controller.ts';
import { policyConfigMapName } from '../policy/bundle-configmap-name.ts';

export const CONTROLLER_NAME = 'protectedresource';
export const PROTECTED_RESOURCE_PLURAL = 'protectedresources';
export const READY = 'Ready';
export const REASON_RESOLVED = 'Resolved';
export const REASON_SECRET_NOT_FOUND = 'SecretNotFound';
export const REASON_SECRET_KEY_MISSING = 'SecretKeyMissing';
export const REASON_INVALID_CA = 'InvalidCA';
export const REASON_INVALID_ENDPOINT = 'InvalidEndpoint';
export const REASON_SECRET_NOT_ALLOWED = 'SecretNotAllowed';
export const REASON_INVALID_MASKING_KEY = 'InvalidMaskingKey';

/** Shortest key of the hash masking strategy: 256 bits, the HMAC-SHA-256 output size (RFC 2104 section 3). */
export const MIN_MASKING_KEY_BYTES = 32;
/** Name of the Role and RoleBinding written in each namespace with ProtectedResources. */
export const SIDECAR_RBAC_NAME = 'chaperone-sidecar';
export const SIDECAR_RBAC_COMPONENT = 'sidecar-rbac';
/** Selects the Roles and RoleBindings this controller writes. */
export const SIDECAR_RBAC_SELECTOR = `${LABEL_MANAGED_BY}=${FIELD_MANAGER},${LABEL_COMPONENT}=${SIDECAR_RBAC_COMPONENT}`;
/** The name part of a namespace's RBAC key. */
export const RBAC_KEY_NAME = ':sidecar-rbac';

/**
 * What the sidecar's service account may do; the same rules as config/rbac/sidecar-role.yaml. No update
 * and no delete on sessions: the sidecar appends (patch) and closes (status) but cannot rewrite history.
 * ConfigMaps are readable by name only: the namespace's policy set and the bundles of its policies. When
 * Sessions are kept in an audit namespace (the operator writes them for the sidecars), the sidecar has no
 * rights on Sessions at all, so nobody acting as its service account can read them.
 */
export function sidecarRules(
  policyNames: readonly string[],
  options: { readonly sessions?: boolean } = {},
): V1PolicyRule[] {
  const configMaps = [POLICY_SET_CONFIGMAP, ...[...policyNames].sort().map(policyConfigMapName)];
  return [
    ...(options.sessions === false
      ? []
      : [
          { apiGroups: [GROUP], resources: ['sessions'], verbs: ['create', 'get', 'list', 'watch', 'patch'] },
          { apiGroups: [GROUP], resources: ['sessions/status'], verbs: ['get', 'patch'] },
        ]),
    { apiGroups: [GROUP], resources: ['approvalrequests'], verbs: ['create', 'get', 'list', 'watch'] },
    // The phase of the requests it holds (Approved, Expired, Cancelled, Abandoned); decisions are the approvers'.
    { apiGroups: [GROUP], resources: ['approvalrequests/status'], verbs: ['get', 'patch'] },
    { apiGroups: [GROUP], resources: ['accesspolicies', 'protectedresources'], verbs: ['get', 'list', 'watch'] },
    { apiGroups: [''], resources: ['configmaps'], resourceNames: configMaps, verbs: ['get', 'list', 'watch'] },
    { apiGroups: [''], resources: ['events'], verbs: ['create'] },
  ];
}

export function rbacKey(namespace: string): string {
  return objectKey(namespace, RBAC_KEY_NAME);
}

/** The outcome of checking a resource's references, before it becomes status. */
export type Resolution =
  | { readonly ready: true; readonly message: string; readonly credentialVersion?: string }
  | { readonly ready: false; readonly reason: string; readonly message: string };

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/i;

/** A host name (RFC 1123, trailing dot allowed) or an IPv4/IPv6 address. */
export function isValidHost(host: string): boolean {
  if (isIP(host) !== 0) return true;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  return name.length > 0 && name.length <= 253 && name.split('.').every((label) => DNS_LABEL.test(label));
}

/** Why the endpoint is unusable, or undefined when it is fine. */
export function endpointProblem(spec: ProtectedResource['spec']): string | undefined {
  const { endpoint } = spec;
  if (spec.type === 'postgres') {
    const host = endpoint.host;
    if (host === undefined || !isValidHost(host))
      return `endpoint.host ${JSON.stringify(host ?? '')} is not a valid DNS name or IP address`;
    const port = endpoint.port ?? 5432;
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      return `endpoint.port ${String(port)} is not between 1 and 65535`;
    return undefined;
  }
  const raw = endpoint.url;
  if (raw === undefined) return `a ${spec.type} resource needs endpoint.url`;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return `endpoint.url ${JSON.stringify(raw)} is not a valid URL`;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:')
    return `endpoint.url ${JSON.stringify(raw)} must use https (or, explicitly, http)`;
  if (url.hostname === '') return `endpoint.url ${JSON.stringify(raw)} has no host`;
  return undefined;
}

function secretValue(secret: V1Secret, key: string): Buffer | undefined {
  const encoded = secret.data?.[key];
  return encoded === undefined ? undefined : Buffer.from(encoded, 'base64');
}

/** sha256 over the credential's keys and values, so sidecars and humans can tell it changed. */
export function credentialVersion(parts: readonly (readonly [string, Buffer])[]): string {
  const hash = createHash('sha256');
  for (const [key, value] of parts) {
    hash.update(`${key}\0${String(value.length)}\0`);
    hash.update(value);
  }
  return `sha256:${hash.digest('hex')}`;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Why the bundle is not a PEM certificate bundle, or undefined when every certificate parses. */
export function caProblem(pem: Buffer): string | undefined {
  const blocks = pem.toString('utf8').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) return 'holds no PEM certificate';
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `certificate ${String(i + 1)} does not parse: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  return undefined;
}

/**
 * Checks every reference of the resource against the Secrets at hand (lookup by name and namespace returns
 * undefined when absent). A credential Secret of another namespace must be in `credentialNamespace` and
 * allow the resource's namespace (annotation chaperone.dev/allowed-namespaces).
 */
export function resolve(
  resource: ProtectedResource,
  lookup: (name: string, namespace: string) => V1Secret | undefined,
  credentialNamespace?: string,
): Resolution {
  const { spec } = resource;
  const namespace = resource.metadata.namespace ?? '';
  const problem = endpointProblem(spec);
  if (problem !== undefined) return { ready: false, reason: REASON_INVALID_ENDPOINT, message: problem };

  let version: string | undefined;
  const parts: [string, Buffer][] = [];
  const credentials = [
    ['credentialSecretRef', spec.credentialSecretRef],
    ['readOnlyCredentialSecretRef', spec.readOnlyCredentialSecretRef],
  ] as const;
  for (const [refField, cred] of credentials) {
    if (cred === undefined) continue;
    // Delivered to attested sidecars from the credential namespace (both credentials alike, a CRD rule).
    const delivered = cred.namespace;
    const secretNamespace = delivered ?? namespace;
    if (delivered !== undefined && delivered !== credentialNamespace) {
      return {
        ready: false,
        reason: REASON_SECRET_NOT_ALLOWED,
        message: `spec.${refField}.namespace ${delivered} is not the operator's credential namespace (${credentialNamespace ?? 'none configured'})`,
      };
    }
    const secret = lookup(cred.name, secretNamespace);
    if (secret !== undefined && delivered !== undefined && !secretAllows(secret, namespace)) {
      return {
        ready: false,
        reason: REASON_SECRET_NOT_ALLOWED,
        message: `Secret ${JSON.stringify(cred.name)} of namespace ${delivered} does not list ${namespace} in its annotation ${ANNOTATION_ALLOWED_NAMESPACES}`,
      };
    }
    if (secret === undefined)
      return {
        ready: false,
        reason: REASON_SECRET_NOT_FOUND,
        message: `Secret ${JSON.stringify(cred.name)} (spec.${refField}) not found in namespace ${secretNamespace}`,
      };
    for (const [field, key] of [
      ['usernameKey', cred.usernameKey],
      ['passwordKey', cred.passwordKey],
    ] as const) {
      const value = secretValue(secret, key);
      if (value === undefined || value.length === 0)
        return {
          ready: false,
          reason: REASON_SECRET_KEY_MISSING,
          message: `Secret ${JSON.stringify(cred.name)} has ${value === undefined ? 'no' : 'an empty'} key ${JSON.stringify(key)} (spec.${refField}.${field})`,
        };
      // The read-only credential's parts are prefixed, so rotating either one changes the version.
      parts.push([refField === 'credentialSecretRef' ? key : `read-only/${key}`, value]);
    }
  }
  if (parts.length > 0) version = credentialVersion(parts);

  const ca = spec.tls?.caSecretRef;
  if (ca !== undefined) {
    const secret = lookup(ca.name, namespace);
    if (secret === undefined)
      return {
        ready: false,
        reason: REASON_SECRET_NOT_FOUND,
        message: `Secret ${JSON.stringify(ca.name)} (spec.tls.caSecretRef) not found in namespace ${namespace}`,
      };
    const pem = secretValue(secret, ca.key);
    if (pem === undefined || pem.length === 0)
      return {
        ready: false,
        reason: REASON_SECRET_KEY_MISSING,
        message: `Secret ${JSON.stringify(ca.name)} has ${pem === undefined ? 'no' : 'an empty'} key ${JSON.stringify(ca.key)} (spec.tls.caSecretRef.key)`,
      };
    const bad = caProblem(pem);
    if (bad !== undefined)
      return {
        ready: false,
        reason: REASON_INVALID_CA,
        message: `key ${JSON.stringify(ca.key)} of Secret ${JSON.stringify(ca.name)} (spec.tls.caSecretRef) ${bad}`,
      };
  }
  const maskingKey = spec.maskingKeySecretRef;
  if (maskingKey !== undefined) {
    // In the credential namespace (delivered with the credential) the key is out of this namespace's editors' reach.
    const keyNamespace = maskingKey.namespace ?? namespace;
    if (maskingKey.namespace !== undefined && maskingKey.namespace !== credentialNamespace) {
      return {
        ready: false,
        reason: REASON_SECRET_NOT_ALLOWED,
        message: `spec.maskingKeySecretRef.namespace ${maskingKey.namespace} is not the operator's credential namespace (${credentialNamespace ?? 'none configured'})`,
      };
    }
    const secret = lookup(maskingKey.name, keyNamespace);
    if (secret !== undefined && maskingKey.namespace !== undefined && !secretAllows(secret, namespace)) {
      return {
        ready: false,
        reason: REASON_SECRET_NOT_ALLOWED,
        message: `Secret ${JSON.stringify(maskingKey.name)} of namespace ${maskingKey.namespace} does not list ${namespace} in its annotation ${ANNOTATION_ALLOWED_NAMESPACES}`,
      };
    }
    if (secret === undefined)
      return {
        ready: false,
        reason: REASON_SECRET_NOT_FOUND,
        message: `Secret ${JSON.stringify(maskingKey.name)} (spec.maskingKeySecretRef) not found in namespace ${keyNamespace}`,
      };
    const key = secretValue(secret, maskingKey.key);
    if (key === undefined || key.length === 0)
      return {
        ready: false,
        reason: REASON_SECRET_KEY_MISSING,
        message: `Secret ${JSON.stringify(maskingKey.name)} has ${key === undefined ? 'no' : 'an empty'} key ${JSON.stringify(maskingKey.key)} (spec.maskingKeySecretRef.key)`,
      };
    // Only the length is told: the key itself is never logged or written into a status.
    if (key.length < MIN_MASKING_KEY_BYTES)
      return {
        ready: false,
        reason: REASON_INVALID_MASKING_KEY,
        message: `key ${JSON.stringify(maskingKey.key)} of Secret ${JSON.stringify(maskingKey.name)} (spec.maskingKeySecretRef) holds ${String(key.length)} bytes; the masking key needs at least ${String(MIN_MASKING_KEY_BYTES)}`,
      };
  }
  const refs = [
    ...new Set([spec.credentialSecretRef?.name, spec.readOnlyCredentialSecretRef?.name, ca?.name, maskingKey?.name]),
  ].filter((n) => n !== undefined);
  return {
    ready: true,
    message: refs.length === 0 ? 'endpoint is valid' : `references resolved: Secret ${refs.join(', Secret ')}`,
    ...(version === undefined ? {} : { credentialVersion: version }),
  };
}

/** Names of the Secrets a resource references. */
export function referencedSecrets(resource: ProtectedResource): string[] {
  const names = [
    resource.spec.credentialSecretRef?.name,
    resource.spec.readOnlyCredentialSecretRef?.name,
    resource.spec.tls?.caSecretRef?.name,
    resource.spec.maskingKeySecretRef?.name,
  ];
  return names.filter((n) => n !== undefined);
}

/** Same status apart from lastCheckedTime, which alone never warrants a write. */
function statusEqual(a: ProtectedResourceStatus | undefined, b: ProtectedResourceStatus): boolean {
  return (
    a?.observedGeneration === b.observedGeneration &&
    a?.credentialVersion === b.credentialVersion &&
    conditionsEqual(a?.conditions, b.conditions)
  );
}

function isStatus(err: unknown, code: number): boolean {
  return err instanceof ApiException && (err as ApiException<unknown>).code === code;
}

const RBAC_LABELS = {
  'app.kubernetes.io/name': 'chaperone',
  [LABEL_MANAGED_BY]: FIELD_MANAGER,
  [LABEL_COMPONENT]: SIDECAR_RBAC_COMPONENT,
};

function ownerReferences(resources: readonly ProtectedResource[]): V1OwnerReference[] {
  return resources
    .map((r) => ({
      apiVersion: API_VERSION,
      kind: 'ProtectedResource',
      name: r.metadata.name ?? '',
      uid: r.metadata.uid ?? '',
    }))
    .sort((a, b) => a.uid.localeCompare(b.uid));
}

/**
 * The service accounts of the attested pods, sorted and unique: pods whose sidecar the operator sealed and
 * that nothing else in the pod can reach. Without the operator's keys nothing is attested.
 */
export function attestedServiceAccounts(pods: readonly V1Pod[], publicKeys: PublicKeys | undefined): string[] {
  const names = new Set<string>();
  if (publicKeys === undefined) return [];
  for (const pod of pods) {
    if (injectorNamesIn(pod).length === 0) continue;
    if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
    if (attestationProblems(pod, pod.metadata?.namespace ?? '', publicKeys).length > 0) continue;
    names.add(pod.spec?.serviceAccountName ?? 'default');
  }
  return [...names].sort();
}

export function sidecarRole(
  namespace: string,
  resources: readonly ProtectedResource[],
  policyNames: readonly string[] = [],
  options: { readonly sessions?: boolean } = {},
): V1Role {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: {
      name: SIDECAR_RBAC_NAME,
      namespace,
      labels: RBAC_LABELS,
      ownerReferences: ownerReferences(resources),
    },
    rules: sidecarRules(policyNames, options),
  };
}

export function sidecarRoleBinding(
  namespace: string,
  resources: readonly ProtectedResource[],
  serviceAccounts: readonly string[],
): V1RoleBinding {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: {
      name: SIDECAR_RBAC_NAME,
      namespace,
      labels: RBAC_LABELS,
      ownerReferences: ownerReferences(resources),
    },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: SIDECAR_RBAC_NAME },
    subjects: serviceAccounts.map((name): RbacV1Subject => ({ kind: 'ServiceAccount', name, namespace })),
  };
}

/** Whether the live object already carries what we would apply (labels, owners and the payload). */
function upToDate<T extends { metadata?: { labels?: Record<string, string>; ownerReferences?: V1OwnerReference[] } }>(
  live: T | undefined,
  desired: T,
  payload: (o: T) => unknown,
): boolean {
  if (live === undefined) return false;
  const labelsOk = Object.entries(RBAC_LABELS).every(([k, v]) => live.metadata?.labels?.[k] === v);
  const owners = (o: T) => JSON.stringify((o.metadata?.ownerReferences ?? []).map((r) => r.uid).sort());
  return (
    labelsOk && owners(live) === owners(desired) && JSON.stringify(payload(live)) === JSON.stringify(payload(desired))
  );
}

const rulesOf = (role: V1Role) =>
  (role.rules ?? []).map((r) => ({
    apiGroups: r.apiGroups ?? [],
    resources: r.resources ?? [],
    ...(r.resourceNames === undefined ? {} : { resourceNames: r.resourceNames }),
    verbs: r.verbs,
  }));
const bindingOf = (binding: V1RoleBinding) => ({
  roleRef: { apiGroup: binding.roleRef.apiGroup, kind: binding.roleRef.kind, name: binding.roleRef.name },
  subjects: (binding.subjects ?? []).map((s) => ({ kind: s.kind, name: s.name, namespace: s.namespace })),
});

export interface ProtectedResourceReconcilerOptions {
  readonly custom: CustomObjectsApi;
  readonly rbac: RbacAuthorizationV1Api;
  readonly resources: ObjectCache<ProtectedResource>;
  readonly secrets: ObjectCache<V1Secret>;
  readonly pods: ObjectCache<V1Pod>;
  readonly policies: ObjectCache<AccessPolicy>;
  readonly roles: ObjectCache<V1Role>;
  readonly roleBindings: ObjectCache<V1RoleBinding>;
  readonly events: EventRecorder;
  readonly clock?: Clock;
  /** The operator's public keys: pods are attested against them. */
  readonly publicKeys?: PublicKeys;
  /** Whether sidecars write Sessions in their own namespace (default) rather than through the operator. */
  readonly sessionsInPodNamespace?: boolean;
  /** The credential namespace and its Secrets (delivered credentials), when configured. */
  readonly credentialNamespace?: string;
  readonly credentialSecrets?: ObjectCache<V1Secret>;
}

export class ProtectedResourceReconciler implements Reconciler {
  private readonly options: ProtectedResourceReconcilerOptions;
  private readonly clock: Clock;
  /** resourceVersion each resource had when its status was last written (see the AccessPolicy controller). */
  private readonly writtenOver = new Map<string, string>();

  constructor(options: ProtectedResourceReconcilerOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  async reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | undefined> {
    if (request.name === RBAC_KEY_NAME) {
      await this.reconcileRbac(request.namespace, context);
      return undefined;
    }
    const key = objectKey(request.namespace, request.name);
    const resource = this.options.resources.get(request.name, request.namespace);
    if (resource === undefined) {
      this.writtenOver.delete(key);
      return undefined;
    }
    if (resource.metadata.deletionTimestamp !== undefined) return undefined;
    const resourceVersion = resource.metadata.resourceVersion ?? '';
    if (this.writtenOver.get(key) === resourceVersion) {
      context.logger.debug('cache has not caught up with the last status write');
      return { requeueAfterMs: 2000 };
    }
    this.writtenOver.delete(key);

    const resolution = resolve(
      resource,
      (name, namespace) =>
        namespace === this.options.credentialNamespace
          ? this.options.credentialSecrets?.get(name, namespace)
          : this.options.secrets.get(name, namespace),
      this.options.credentialNamespace,
    );
    const generation = resource.metadata.generation ?? 0;
    const status = resource.status;
    const now = new Date(this.clock.now());
    const conditions = setCondition(
      status?.conditions,
      resolution.ready
        ? {
            type: READY,
            status: 'True',
            reason: REASON_RESOLVED,
            message: resolution.message,
            observedGeneration: generation,
          }
        : {
            type: READY,
            status: 'False',
            reason: resolution.reason,
            message: resolution.message,
            observedGeneration: generation,
          },
      now,
    );
    // The credential version survives a transient problem elsewhere (a bad CA) only when it was computed.
    const version = resolution.ready ? resolution.credentialVersion : undefined;
    const next: ProtectedResourceStatus = {
      observedGeneration: generation,
      conditions,
      ...(version === undefined ? {} : { credentialVersion: version }),
      lastCheckedTime: rfc3339(now),
    };
    if (statusEqual(status, next)) return undefined;

    await this.writeStatus(resource, next);
    const before = findCondition(status?.conditions, READY);
    context.logger.info('status updated', {
      ready: resolution.ready,
      reason: resolution.ready ? REASON_RESOLVED : resolution.reason,
      credentialChanged: status?.credentialVersion !== version,
    });
    if (!resolution.ready && (before?.status !== 'False' || before.reason !== resolution.reason)) {
      await this.options.events.record(resource, 'Warning', resolution.reason, resolution.message);
    } else if (resolution.ready && before?.status === 'False') {
      await this.options.events.record(resource, 'Normal', REASON_RESOLVED, resolution.message);
    }
    return undefined;
  }

  private async writeStatus(resource: ProtectedResource, status: ProtectedResourceStatus): Promise<void> {
    // null deletes the field in a merge patch: an unresolved credential has no version.
    const resourceVersion = await patchStatus({
      custom: this.options.custom,
      plural: PROTECTED_RESOURCE_PLURAL,
      fieldManager: FIELD_MANAGER,
      object: resource,
      status: { ...status, credentialVersion: status.credentialVersion ?? null },
    });
    this.writtenOver.set(objectKey(resource.metadata.namespace ?? '', resource.metadata.name ?? ''), resourceVersion);
  }

  private async reconcileRbac(namespace: string, context: ReconcileContext): Promise<void> {
    const { rbac } = this.options;
    const resources = this.options.resources.list(namespace).filter((r) => r.metadata.deletionTimestamp === undefined);
    const liveRole = this.options.roles.get(SIDECAR_RBAC_NAME, namespace);
    const liveBinding = this.options.roleBindings.get(SIDECAR_RBAC_NAME, namespace);
    if (resources.length === 0) {
      for (const [live, remove] of [
        [liveBinding, () => rbac.deleteNamespacedRoleBinding({ name: SIDECAR_RBAC_NAME, namespace })],
        [liveRole, () => rbac.deleteNamespacedRole({ name: SIDECAR_RBAC_NAME, namespace })],
      ] as const) {
        if (live === undefined) continue;
        try {
          await remove();
        } catch (err) {
          if (!isStatus(err, 404)) throw err;
        }
      }
      if (liveRole !== undefined || liveBinding !== undefined) context.logger.info('sidecar RBAC removed');
      return;
    }
    const policies = this.options.policies.list(namespace).map((p) => p.metadata.name ?? '');
    const role = sidecarRole(namespace, resources, policies, {
      sessions: this.options.sessionsInPodNamespace ?? true,
    });
    const accounts = attestedServiceAccounts(this.options.pods.list(namespace), this.options.publicKeys);
    const binding = sidecarRoleBinding(namespace, resources, accounts);
    const apply = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);
    if (!upToDate(liveRole, role, rulesOf)) {
      await rbac.patchNamespacedRole(
        { name: SIDECAR_RBAC_NAME, namespace, body: role, fieldManager: FIELD_MANAGER, force: true },
        apply,
      );
      context.logger.info('sidecar Role applied');
    }
    if (!upToDate(liveBinding, binding, bindingOf)) {
      await rbac.patchNamespacedRoleBinding(
        { name: SIDECAR_RBAC_NAME, namespace, body: binding, fieldManager: FIELD_MANAGER, force: true },
        apply,
      );
      context.logger.info('sidecar RoleBinding applied', { serviceAccounts: accounts });
    }
  }
}

export interface ProtectedResourceControllerOptions {
  readonly kubeConfig: KubeConfig;
  /** Watch one namespace; undefined watches all. */
  readonly namespace?: string;
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  readonly events: EventRecorder;
  readonly custom: CustomObjectsApi;
  readonly core: CoreV1Api;
  readonly rbac: RbacAuthorizationV1Api;
  readonly workers?: number;
  readonly resyncPeriodMs?: number;
  readonly reconcileTimeoutMs?: number;
  readonly clock?: Clock;
  readonly publicKeys?: PublicKeys;
  readonly sessionsInPodNamespace?: boolean;
  /** Delivered credentials live here (watched too, so a rotation or a changed allow-list shows at once). */
  readonly credentialNamespace?: string;
}

/**
 * The controller with its watches: ProtectedResources (For, plus their namespace's RBAC key), Secrets
 * (mapped to the resources referencing them), pods (mapped to their namespace's RBAC key), and the Roles
 * and RoleBindings it writes (selected by label), so a binding edited or deleted by hand is put back.
 */
export function createProtectedResourceController(options: ProtectedResourceControllerOptions): Controller {
  const { kubeConfig, namespace, custom, core, rbac, logger } = options;
  const path = (group: string, plural: string) =>
    namespace === undefined ? `${group}/${plural}` : `${group}/namespaces/${namespace}/${plural}`;
  const resourceInformer = customObjectInformer(kubeConfig, custom, PROTECTED_RESOURCE_PLURAL, namespace);
  const resources = cacheOf<ProtectedResource>(resourceInformer);
  const secretInformer = makeInformer<V1Secret>(kubeConfig, path('/api/v1', 'secrets'), () =>
    namespace === undefined ? core.listSecretForAllNamespaces() : core.listNamespacedSecret({ namespace }),
  );
  const credentialNamespace = options.credentialNamespace;
  const credentialSecretInformer =
    credentialNamespace === undefined
      ? undefined
      : makeInformer<V1Secret>(kubeConfig, `/api/v1/namespaces/${credentialNamespace}/secrets`, () =>
          core.listNamespacedSecret({ namespace: credentialNamespace }),
        );
  const podInformer = makeInformer<V1Pod>(kubeConfig, path('/api/v1', 'pods'), () =>
    namespace === undefined ? core.listPodForAllNamespaces() : core.listNamespacedPod({ namespace }),
  );
  const policyInformer = customObjectInformer(kubeConfig, custom, ACCESS_POLICY_PLURAL, namespace);
  const rbacBase = '/apis/rbac.authorization.k8s.io/v1';
  const roleInformer = makeInformer<V1Role>(
    kubeConfig,
    path(rbacBase, 'roles'),
    () =>
      namespace === undefined
        ? rbac.listRoleForAllNamespaces({ labelSelector: SIDECAR_RBAC_SELECTOR })
        : rbac.listNamespacedRole({ namespace, labelSelector: SIDECAR_RBAC_SELECTOR }),
    SIDECAR_RBAC_SELECTOR,
  );
  const roleBindingInformer = makeInformer<V1RoleBinding>(
    kubeConfig,
    path(rbacBase, 'rolebindings'),
    () =>
      namespace === undefined
        ? rbac.listRoleBindingForAllNamespaces({ labelSelector: SIDECAR_RBAC_SELECTOR })
        : rbac.listNamespacedRoleBinding({ namespace, labelSelector: SIDECAR_RBAC_SELECTOR }),
    SIDECAR_RBAC_SELECTOR,
  );
  const sourceLogger = logger.child({ controller: CONTROLLER_NAME });
  const clock = options.clock === undefined ? {} : { clock: options.clock };
  const ns = (obj: KubernetesObject) => obj.metadata?.namespace ?? '';
  const sources = [
    new InformerSource({
      name: PROTECTED_RESOURCE_PLURAL,
      informer: resourceInformer,
      primary: true,
      map: (obj) => [objectKey(ns(obj), obj.metadata?.name ?? ''), rbacKey(ns(obj))],
      logger: sourceLogger,
      ...clock,
    }),
    new InformerSource({
      name: 'secrets',
      informer: secretInformer,
      map: (secret) =>
        resources
          .list(ns(secret))
          .filter((r) => referencedSecrets(r).includes(secret.metadata?.name ?? ''))
          .map((r) => objectKey(ns(secret), r.metadata.name ?? '')),
      logger: sourceLogger,
      ...clock,
    }),
    ...(credentialSecretInformer === undefined
      ? []
      : [
          new InformerSource({
            name: 'credential-secrets',
            informer: credentialSecretInformer,
            // Resources of every watched namespace may name a Secret of the credential namespace.
            map: (secret: V1Secret) =>
              resources
                .list()
                .filter(
                  (r) =>
                    (r.spec.credentialSecretRef?.namespace === credentialNamespace &&
                      r.spec.credentialSecretRef?.name === secret.metadata?.name) ||
                    (r.spec.readOnlyCredentialSecretRef?.namespace === credentialNamespace &&
                      r.spec.readOnlyCredentialSecretRef?.name === secret.metadata?.name) ||
                    (r.spec.maskingKeySecretRef?.namespace === credentialNamespace &&
                      r.spec.maskingKeySecretRef?.name === secret.metadata?.name),
                )
                .map((r) => objectKey(r.metadata.namespace ?? '', r.metadata.name ?? '')),
            logger: sourceLogger,
            ...clock,
          }),
        ]),
    new InformerSource({
      name: 'pods',
      informer: podInformer,
      map: (pod) => (injectorNamesIn(pod).length === 0 ? [] : [rbacKey(ns(pod))]),
      logger: sourceLogger,
      ...clock,
    }),
    new InformerSource({
      name: 'accesspolicies',
      informer: policyInformer,
      map: (policy) => [rbacKey(ns(policy))],
      logger: sourceLogger,
      ...clock,
    }),
    new InformerSource({
      name: 'roles',
      informer: roleInformer,
      map: (role) => [rbacKey(ns(role))],
      logger: sourceLogger,
      ...clock,
    }),
    new InformerSource({
      name: 'rolebindings',
      informer: roleBindingInformer,
      map: (binding) => [rbacKey(ns(binding))],
      logger: sourceLogger,
      ...clock,
    }),
  ];
  const reconciler = new ProtectedResourceReconciler({
    custom,
    rbac,
    resources,
    secrets: secretInformer,
    pods: podInformer,
    policies: cacheOf<AccessPolicy>(policyInformer),
    roles: roleInformer,
    roleBindings: roleBindingInformer,
    events: options.events,
    ...clock,
    ...(options.publicKeys === undefined ? {} : { publicKeys: options.publicKeys }),
    ...(options.sessionsInPodNamespace === undefined ? {} : { sessionsInPodNamespace: options.sessionsInPodNamespace }),
    ...(credentialNamespace === undefined ? {} : { credentialNamespace }),
    ...(credentialSecretInformer === undefined ? {} : { credentialSecrets: credentialSecretInformer }),
  });
  return new Controller({
    name: CONTROLLER_NAME,
    reconciler,
    sources,
    logger,
    metrics: options.metrics,
    ...(options.workers === undefined ? {} : { workers: options.workers }),
    ...(options.resyncPeriodMs === undefined ? {} : { resyncPeriodMs: options.resyncPeriodMs }),
    ...(options.reconcileTimeoutMs === undefined ? {} : { reconcileTimeoutMs: options.reconcileTimeoutMs }),
    ...clock,
  });
}
