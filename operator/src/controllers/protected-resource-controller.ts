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
//     subjects being the service accounts of injected pods; delete both when the last resource goes.
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
  type KubernetesListObject,
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
import { API_VERSION, GROUP, VERSION, type ProtectedResource, type ProtectedResourceStatus } from '@chaperone/api';
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
import { ANNOTATION_INJECTED } from '../injection/constants.ts';
import type { Logger } from '../observability/logger.ts';
import type { OperatorMetrics } from '../observability/metrics.ts';
import { FIELD_MANAGER, LABEL_COMPONENT, LABEL_MANAGED_BY } from './access-policy-controller.ts';

export const CONTROLLER_NAME = 'protectedresource';
export const PROTECTED_RESOURCE_PLURAL = 'protectedresources';
export const READY = 'Ready';
export const REASON_RESOLVED = 'Resolved';
export const REASON_SECRET_NOT_FOUND = 'SecretNotFound';
export const REASON_SECRET_KEY_MISSING = 'SecretKeyMissing';
export const REASON_INVALID_CA = 'InvalidCA';
export const REASON_INVALID_ENDPOINT = 'InvalidEndpoint';
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
 */
export const SIDECAR_RULES: readonly V1PolicyRule[] = [
  { apiGroups: [GROUP], resources: ['sessions'], verbs: ['create', 'get', 'list', 'watch', 'patch'] },
  { apiGroups: [GROUP], resources: ['sessions/status'], verbs: ['get', 'patch'] },
  { apiGroups: [GROUP], resources: ['approvalrequests'], verbs: ['create', 'get', 'list', 'watch'] },
  { apiGroups: [GROUP], resources: ['accesspolicies', 'protectedresources'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create'] },
];

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

/** Checks every reference of the resource against the Secrets at hand (lookup returns undefined when absent). */
export function resolve(resource: ProtectedResource, lookup: (name: string) => V1Secret | undefined): Resolution {
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
    const secret = lookup(cred.name);
    if (secret === undefined)
      return {
        ready: false,
        reason: REASON_SECRET_NOT_FOUND,
        message: `Secret ${JSON.stringify(cred.name)} (spec.${refField}) not found in namespace ${namespace}`,
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
    const secret = lookup(ca.name);
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
  const refs = [...new Set([spec.credentialSecretRef?.name, spec.readOnlyCredentialSecretRef?.name, ca?.name])].filter(
    (n) => n !== undefined,
  );
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

/** The service accounts of the injected pods (the injector's annotation present), sorted and unique. */
export function injectedServiceAccounts(pods: readonly V1Pod[]): string[] {
  const names = new Set<string>();
  for (const pod of pods) {
    if (pod.metadata?.annotations?.[ANNOTATION_INJECTED] === undefined) continue;
    if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
    names.add(pod.spec?.serviceAccountName ?? 'default');
  }
  return [...names].sort();
}

export function sidecarRole(namespace: string, resources: readonly ProtectedResource[]): V1Role {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: {
      name: SIDECAR_RBAC_NAME,
      namespace,
      labels: RBAC_LABELS,
      ownerReferences: ownerReferences(resources),
    },
    rules: SIDECAR_RULES.map((r) => ({ apiGroups: r.apiGroups ?? [], resources: r.resources ?? [], verbs: r.verbs })),
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
  (role.rules ?? []).map((r) => ({ apiGroups: r.apiGroups ?? [], resources: r.resources ?? [], verbs: r.verbs }));
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
  readonly roles: ObjectCache<V1Role>;
  readonly roleBindings: ObjectCache<V1RoleBinding>;
  readonly events: EventRecorder;
  readonly clock?: Clock;
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

    const resolution = resolve(resource, (name) => this.options.secrets.get(name, request.namespace));
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
    const role = sidecarRole(namespace, resources);
    const accounts = injectedServiceAccounts(this.options.pods.list(namespace));
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
}

/**
 * The controller with its watches: ProtectedResources (For, plus their namespace's RBAC key), Secrets
 * (mapped to the resources referencing them), pods (mapped to their namespace's RBAC key), and the Roles
 * and RoleBindings it writes (selected by label), so a binding edited or deleted by hand is put back.
 */
export function createProtectedResourceController(options: ProtectedResourceControllerOptions): Controller {
  const { kubeConfig, namespace, custom, core, rbac, logger } = options;
  const base = `/apis/${GROUP}/${VERSION}`;
  const path = (group: string, plural: string) =>
    namespace === undefined ? `${group}/${plural}` : `${group}/namespaces/${namespace}/${plural}`;
  const resourceInformer = makeInformer<KubernetesObject>(
    kubeConfig,
    path(base, PROTECTED_RESOURCE_PLURAL),
    async () =>
      (namespace === undefined
        ? await custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PROTECTED_RESOURCE_PLURAL })
        : await custom.listNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace,
            plural: PROTECTED_RESOURCE_PLURAL,
          })) as KubernetesListObject<KubernetesObject>,
  );
  const resources = resourceInformer as unknown as ObjectCache<ProtectedResource>;
  const secretInformer = makeInformer<V1Secret>(kubeConfig, path('/api/v1', 'secrets'), () =>
    namespace === undefined ? core.listSecretForAllNamespaces() : core.listNamespacedSecret({ namespace }),
  );
  const podInformer = makeInformer<V1Pod>(kubeConfig, path('/api/v1', 'pods'), () =>
    namespace === undefined ? core.listPodForAllNamespaces() : core.listNamespacedPod({ namespace }),
  );
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
    new InformerSource({
      name: 'pods',
      informer: podInformer,
      map: (pod) => (pod.metadata?.annotations?.[ANNOTATION_INJECTED] === undefined ? [] : [rbacKey(ns(pod))]),
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
    roles: roleInformer,
    roleBindings: roleBindingInformer,
    events: options.events,
    ...clock,
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
