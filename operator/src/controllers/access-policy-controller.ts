// The AccessPolicy controller: compiles each policy with OPA into a WebAssembly bundle and publishes it
// as a ConfigMap that sidecars mount (docs/policy.md, "Delivery"; docs/operator.md).
//
// Reconcile (level-based, keyed by namespace/name):
//   1. read the policy from the informer cache; gone or being deleted → nothing to do (the ConfigMap is
//      owned by the policy, so the garbage collector removes it);
//   2. compile (memoised by namespace, name and spec, so resyncs do not run opa again);
//   3. success → server-side apply ConfigMap chaperone-policy-<name> (binaryData policy.wasm, data
//      manifest.json, controller ownerReference) unless the cache already holds that digest, then write
//      status (observedGeneration, bundle, Ready=True Compiled) unless it already says exactly that;
//      The ConfigMap counts as published only when its bytes hash to the digest: one overwritten in place
//      (same digest annotation, other bundle) is put back, with a Warning Event BundleRestored;
//   4. failure → status Ready=False CompileFailed with the first error's line and column in the message
//      and every error in status.errors, a Warning Event CompileFailed, and a TerminalError (no retry until
//      the policy changes). The last good ConfigMap is left alone: sidecars keep enforcing the last
//      policy that compiled rather than losing every rule of a resource because of a typo.
// An unchanged policy therefore costs no writes at all, which keeps resyncs cheap.
// A second kind of key, namespace/:policy-set, publishes the namespace's signed policy set (policy-set.ts),
// what injected sidecars load; every policy change and every change to that ConfigMap enqueues it.
import { createHash } from 'node:crypto';
import {
  ApiException,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
  type ObjectCache,
  type V1ConfigMap,
} from '@kubernetes/client-node';
import {
  API_VERSION,
  BUNDLE_MANIFEST_FILE,
  BUNDLE_WASM_FILE,
  POLICY_SET_CONFIGMAP,
  bundleDigest,
  type AccessPolicy,
  type AccessPolicyStatus,
  type BundleManifestFile,
  type PolicySetEntry,
  type StatementSigner,
} from '@chaperone/api';
import type { JWK } from 'jose';
import {
  compilePolicy,
  type CompileOptions,
  type CompileProblem,
  type CompileResult,
} from '../policy/compile-policy.ts';
import type { PolicySource } from '../policy/render-rego.ts';
import { policyConfigMapName } from '../policy/bundle-configmap-name.ts';
import { systemClock, type Clock } from '../controller-runtime/clock.ts';
import { conditionsEqual, findCondition, rfc3339, setCondition } from '../controller-runtime/conditions.ts';
import { patchStatus } from '../controller-runtime/status-patch.ts';
import { Controller } from '../controller-runtime/controller.ts';
import type { EventRecorder } from '../controller-runtime/event-recorder.ts';
import {
  TerminalError,
  objectKey,
  type ReconcileContext,
  type ReconcileRequest,
  type ReconcileResult,
  type Reconciler,
} from '../controller-runtime/reconcile.ts';
import { InformerSource, keyOfObject, keyOfOwner } from '../controller-runtime/source.ts';
import { cacheOf, customObjectInformer } from '../controller-runtime/custom-object-informer.ts';
import type { Logger } from '../observability/logger.ts';
import type { OperatorMetrics } from '../observability/metrics.ts';
import { POLICY_SET_COMPONENT, POLICY_SET_KEY_NAME, PolicySetPublisher } from './policy-set.ts';

export const CONTROLLER_NAME = 'accesspolicy';
export const FIELD_MANAGER = 'chaperone-operator';
export const ACCESS_POLICY_PLURAL = 'accesspolicies';
export const READY = 'Ready';
export const REASON_COMPILED = 'Compiled';
export const REASON_COMPILE_FAILED = 'CompileFailed';
export const REASON_BUNDLE_TOO_LARGE = 'BundleTooLarge';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const LABEL_COMPONENT = 'app.kubernetes.io/component';
export const LABEL_POLICY = 'chaperone.dev/policy';
export const ANNOTATION_DIGEST = 'chaperone.dev/bundle-digest';
export const ANNOTATION_POLICY = 'chaperone.dev/policy';
export const REASON_BUNDLE_RESTORED = 'BundleRestored';
/** Selects the ConfigMaps this controller writes: one per policy, and each namespace's policy set. */
export const BUNDLE_SELECTOR = `${LABEL_MANAGED_BY}=${FIELD_MANAGER},${LABEL_COMPONENT} in (policy-bundle,${POLICY_SET_COMPONENT})`;
/**
 * Largest bundle (wasm plus manifest.json) published. The API server rejects ConfigMaps whose data and
 * binaryData exceed 1 MiB; the rest is headroom for metadata.
 */
export const MAX_BUNDLE_BYTES = 1_000_000;
const MAX_STATUS_ERRORS = 32;
const MAX_ERROR_MESSAGE = 4096;
const COMPILE_CACHE_SIZE = 512;

/** The desired ConfigMap for a compiled policy, as the object server-side apply receives. */
export function bundleConfigMap(
  policy: AccessPolicy,
  compiled: { readonly wasm: Uint8Array; readonly digest: string; readonly manifest: BundleManifestFile['manifest'] },
): V1ConfigMap {
  const name = policy.metadata.name ?? '';
  const namespace = policy.metadata.namespace ?? '';
  const manifestFile: BundleManifestFile = { manifest: compiled.manifest, digest: compiled.digest };
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: policyConfigMapName(name),
      namespace,
      labels: {
        [LABEL_MANAGED_BY]: FIELD_MANAGER,
        [LABEL_COMPONENT]: 'policy-bundle',
        // Label values stop at 63 characters; longer names are only in the annotation.
        ...(name.length <= 63 ? { [LABEL_POLICY]: name } : {}),
      },
      annotations: { [ANNOTATION_DIGEST]: compiled.digest, [ANNOTATION_POLICY]: `${namespace}/${name}` },
      ownerReferences: [
        {
          apiVersion: API_VERSION,
          kind: 'AccessPolicy',
          name,
          uid: policy.metadata.uid ?? '',
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    data: { [BUNDLE_MANIFEST_FILE]: `${JSON.stringify(manifestFile)}\n` },
    binaryData: { [BUNDLE_WASM_FILE]: Buffer.from(compiled.wasm).toString('base64') },
  };
}

/** Bytes the bundle takes in the ConfigMap (wasm plus manifest.json), what status.bundle.sizeBytes reports. */
export function bundleSize(configMap: V1ConfigMap): number {
  let size = 0;
  for (const v of Object.values(configMap.data ?? {})) size += Buffer.byteLength(v);
  for (const v of Object.values(configMap.binaryData ?? {})) size += Buffer.from(v, 'base64').length;
  return size;
}

function where(problem: CompileProblem): string {
  if (problem.line === undefined) return '';
  return problem.column === undefined ? `line ${problem.line}: ` : `line ${problem.line}, column ${problem.column}: `;
}

/**
 * The Ready=False message: the first error with its line and column and OPA's code and message, how many
 * more there are, and what sidecars enforce meanwhile.
 */
export function compileFailureMessage(errors: readonly CompileProblem[], lastGoodDigest: string | undefined): string {
  const first = errors[0];
  const head =
    first === undefined
      ? 'compilation failed'
      : `${where(first)}${first.code === undefined ? '' : `${first.code}: `}${first.message}`;
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more; see status.errors)` : '';
  const keep =
    lastGoodDigest === undefined
      ? '; no bundle is published for this policy'
      : `; sidecars keep the last good bundle ${lastGoodDigest}`;
  return `${head}${more}${keep}`;
}

/** status.errors entries, bounded as the CRD schema requires. */
export function statusErrors(errors: readonly CompileProblem[]): NonNullable<AccessPolicyStatus['errors']> {
  return errors.slice(0, MAX_STATUS_ERRORS).map((e) => ({
    message: e.message.length > MAX_ERROR_MESSAGE ? `${e.message.slice(0, MAX_ERROR_MESSAGE - 3)}...` : e.message,
    ...(e.line === undefined ? {} : { line: e.line }),
    ...(e.column === undefined ? {} : { column: e.column }),
    ...(e.code === undefined ? {} : { code: e.code.slice(0, 128) }),
  }));
}

/** True when the two statuses say the same thing (timestamps included), so no write is needed. */
export function statusEqual(a: AccessPolicyStatus | undefined, b: AccessPolicyStatus): boolean {
  const bundle = (s: AccessPolicyStatus | undefined) =>
    s?.bundle === undefined
      ? ''
      : JSON.stringify([s.bundle.digest, s.bundle.configMapName, s.bundle.sizeBytes, s.bundle.compiledTime]);
  const errors = (s: AccessPolicyStatus | undefined) => JSON.stringify(statusErrors(s?.errors ?? []));
  return (
    a?.observedGeneration === b.observedGeneration &&
    bundle(a) === bundle(b) &&
    errors(a) === errors(b) &&
    conditionsEqual(a?.conditions, b.conditions)
  );
}

/** Whether the ConfigMap holds exactly the bundle with this digest (annotation, manifest and bytes). */
export function holdsBundle(configMap: V1ConfigMap, digest: string): boolean {
  if (configMap.metadata?.annotations?.[ANNOTATION_DIGEST] !== digest) return false;
  const wasm = configMap.binaryData?.[BUNDLE_WASM_FILE];
  const manifestText = configMap.data?.[BUNDLE_MANIFEST_FILE];
  if (wasm === undefined || manifestText === undefined) return false;
  try {
    const file = JSON.parse(manifestText) as BundleManifestFile;
    return file.digest === digest && bundleDigest(Buffer.from(wasm, 'base64'), file.manifest) === digest;
  } catch {
    return false;
  }
}

function isControlledBy(configMap: V1ConfigMap, policy: AccessPolicy): boolean {
  return (
    configMap.metadata?.ownerReferences?.some((r) => r.controller === true && r.uid === policy.metadata.uid) ?? false
  );
}

function isStatus(err: unknown, code: number): boolean {
  return err instanceof ApiException && (err as ApiException<unknown>).code === code;
}

export interface AccessPolicyReconcilerOptions {
  readonly custom: CustomObjectsApi;
  readonly core: CoreV1Api;
  readonly policies: ObjectCache<AccessPolicy>;
  readonly configMaps: ObjectCache<V1ConfigMap>;
  readonly events: EventRecorder;
  readonly metrics?: OperatorMetrics;
  /** Default compilePolicy with compileOptions. */
  readonly compile?: (source: PolicySource) => Promise<CompileResult>;
  readonly compileOptions?: CompileOptions;
  readonly clock?: Clock;
  /** The operator's key: signs each namespace's policy set. Without it no set is published. */
  readonly signer?: StatementSigner;
  /** The operator's public keys, to recognise its own sets. */
  readonly publicKeys?: readonly (JWK & { kid?: string })[];
}

export class AccessPolicyReconciler implements Reconciler {
  private readonly options: AccessPolicyReconcilerOptions;
  private readonly clock: Clock;
  private readonly compiled = new Map<string, CompileResult>();
  /**
   * resourceVersion each policy had when this controller last wrote its status. While the cache still
   * shows that version it has not seen the write; reconciling from it would write stale status again.
   */
  private readonly writtenOver = new Map<string, string>();

  private readonly policySets: PolicySetPublisher | undefined;

  constructor(options: AccessPolicyReconcilerOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
    this.policySets =
      options.signer === undefined
        ? undefined
        : new PolicySetPublisher({
            core: options.core,
            policies: options.policies,
            configMaps: options.configMaps,
            signer: options.signer,
            publicKeys: options.publicKeys ?? [],
            events: options.events,
            fieldManager: FIELD_MANAGER,
            labels: { [LABEL_MANAGED_BY]: FIELD_MANAGER, [LABEL_COMPONENT]: POLICY_SET_COMPONENT },
            published: (policy) => this.publishedEntry(policy),
            now: () => this.clock.now(),
            onTampered: () => this.options.metrics?.tamperedConfigMaps.inc({ kind: 'policy-set' }),
          });
  }

  async reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | undefined> {
    if (request.name === POLICY_SET_KEY_NAME) {
      const requeueAfterMs = await this.policySets?.reconcile(request.namespace, context);
      return requeueAfterMs === undefined ? undefined : { requeueAfterMs };
    }
    const key = objectKey(request.namespace, request.name);
    const policy = this.options.policies.get(request.name, request.namespace);
    if (policy === undefined) {
      this.writtenOver.delete(key);
      context.logger.debug('policy is gone; its ConfigMap is garbage-collected');
      return undefined;
    }
    if (policy.metadata.deletionTimestamp !== undefined) return undefined;
    const resourceVersion = policy.metadata.resourceVersion ?? '';
    if (this.writtenOver.get(key) === resourceVersion) {
      // The watch event for our own write re-enqueues the key; the requeue is a safety net.
      context.logger.debug('cache has not caught up with the last status write');
      return { requeueAfterMs: 2000 };
    }
    this.writtenOver.delete(key);
    const result = await this.compile(policy, context);
    if (!result.ok) return this.reconcileFailure(policy, result.errors, context);
    return this.reconcileSuccess(policy, result, context);
  }

  private async compile(policy: AccessPolicy, context: ReconcileContext): Promise<CompileResult> {
    const source: PolicySource = {
      namespace: policy.metadata.namespace ?? '',
      name: policy.metadata.name ?? '',
      spec: policy.spec,
    };
    const cacheKey = createHash('sha256').update(JSON.stringify(source)).digest('hex');
    const hit = this.compiled.get(cacheKey);
    if (hit !== undefined) {
      // Refresh the entry's position: Map iteration order is insertion order, the oldest is evicted.
      this.compiled.delete(cacheKey);
      this.compiled.set(cacheKey, hit);
      return hit;
    }
    const started = performance.now();
    const compile = this.options.compile ?? ((s: PolicySource) => compilePolicy(s, this.options.compileOptions));
    const result = await compile(source);
    const seconds = (performance.now() - started) / 1000;
    this.options.metrics?.policyCompiles.inc({ result: result.ok ? 'success' : 'failure' });
    this.options.metrics?.policyCompileSeconds.observe(seconds);
    context.logger.info(result.ok ? 'policy compiled' : 'policy failed to compile', {
      generation: policy.metadata.generation,
      ...(result.ok ? { digest: result.digest } : { errors: result.errors.length }),
      durationMs: Math.round(seconds * 1000),
    });
    this.compiled.set(cacheKey, result);
    if (this.compiled.size > COMPILE_CACHE_SIZE) {
      const oldest = this.compiled.keys().next();
      if (oldest.done !== true) this.compiled.delete(oldest.value);
    }
    return result;
  }

  private async reconcileSuccess(
    policy: AccessPolicy,
    compiled: Extract<CompileResult, { ok: true }>,
    context: ReconcileContext,
  ): Promise<ReconcileResult | undefined> {
    const namespace = policy.metadata.namespace ?? '';
    const generation = policy.metadata.generation ?? 0;
    const status = policy.status;
    const desired = bundleConfigMap(policy, compiled);
    const configMapName = desired.metadata?.name ?? '';
    const sizeBytes = bundleSize(desired);
    const now = new Date(this.clock.now());
    if (sizeBytes > MAX_BUNDLE_BYTES) {
      const message = `the compiled bundle is ${sizeBytes} bytes, more than the ${MAX_BUNDLE_BYTES} a ConfigMap can carry${
        status?.bundle === undefined ? '' : `; sidecars keep the last good bundle ${status.bundle.digest}`
      }`;
      await this.writeStatus(policy, {
        ...(status?.bundle === undefined ? {} : { bundle: status.bundle }),
        observedGeneration: generation,
        conditions: setCondition(
          status?.conditions,
          { type: READY, status: 'False', reason: REASON_BUNDLE_TOO_LARGE, message, observedGeneration: generation },
          now,
        ),
      });
      throw new TerminalError(message);
    }

    if (!(await this.isPublished(namespace, configMapName, compiled.digest, policy))) {
      await this.options.core.patchNamespacedConfigMap(
        { name: configMapName, namespace, body: desired, fieldManager: FIELD_MANAGER, force: true },
        setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
      );
      context.logger.info('bundle published', { configMap: configMapName, digest: compiled.digest, sizeBytes });
    }

    const previousDigest = status?.bundle?.digest;
    const next: AccessPolicyStatus = {
      observedGeneration: generation,
      bundle: {
        digest: compiled.digest,
        configMapName,
        sizeBytes,
        // Kept while the digest is unchanged, so re-reconciling an unchanged policy writes nothing.
        compiledTime:
          previousDigest === compiled.digest && status?.bundle !== undefined
            ? status.bundle.compiledTime
            : rfc3339(now),
      },
      conditions: setCondition(
        status?.conditions,
        {
          type: READY,
          status: 'True',
          reason: REASON_COMPILED,
          message: `compiled to ${compiled.digest}; published in ConfigMap ${configMapName}`,
          observedGeneration: generation,
        },
        now,
      ),
    };
    if (!statusEqual(status, next)) {
      await this.writeStatus(policy, next);
      if (previousDigest !== compiled.digest) {
        await this.options.events.record(
          policy,
          'Normal',
          REASON_COMPILED,
          `compiled to ${compiled.digest} (${sizeBytes} bytes); published in ConfigMap ${configMapName}`,
        );
      }
    }
    return undefined;
  }

  private async reconcileFailure(
    policy: AccessPolicy,
    errors: readonly CompileProblem[],
    context: ReconcileContext,
  ): Promise<never> {
    const generation = policy.metadata.generation ?? 0;
    const status = policy.status;
    const lastGood = status?.bundle?.digest;
    const message = compileFailureMessage(errors, lastGood);
    const next: AccessPolicyStatus = {
      observedGeneration: generation,
      // The bundle still describes what the ConfigMap holds: the last good compile.
      ...(status?.bundle === undefined ? {} : { bundle: status.bundle }),
      conditions: setCondition(
        status?.conditions,
        { type: READY, status: 'False', reason: REASON_COMPILE_FAILED, message, observedGeneration: generation },
        new Date(this.clock.now()),
      ),
      errors: statusErrors(errors),
    };
    if (!statusEqual(status, next)) {
      await this.writeStatus(policy, next);
      await this.options.events.record(policy, 'Warning', REASON_COMPILE_FAILED, message);
    } else {
      context.logger.debug('compile failure already reported');
    }
    throw new TerminalError(`policy does not compile: ${message}`);
  }

  /**
   * Whether the policy's ConfigMap holds this bundle (bytes included). The cache is consulted first; when
   * it disagrees, a live read rules out a stale cache. A ConfigMap of this policy that claims the digest
   * but holds other bytes was overwritten by someone else: it is reported, and then rewritten.
   */
  private async isPublished(namespace: string, name: string, digest: string, policy: AccessPolicy): Promise<boolean> {
    const cached = this.options.configMaps.get(name, namespace);
    if (cached !== undefined && isControlledBy(cached, policy) && holdsBundle(cached, digest)) return true;
    let live: V1ConfigMap;
    try {
      live = await this.options.core.readNamespacedConfigMap({ name, namespace });
    } catch (err) {
      if (isStatus(err, 404)) return false;
      throw err;
    }
    if (isControlledBy(live, policy) && holdsBundle(live, digest)) return true;
    const claimed = policy.status?.bundle?.digest;
    if (
      claimed !== undefined &&
      live.metadata?.annotations?.[ANNOTATION_DIGEST] === claimed &&
      !holdsBundle(live, claimed)
    ) {
      this.options.metrics?.tamperedConfigMaps.inc({ kind: 'policy-bundle' });
      await this.options.events.record(
        policy,
        'Warning',
        REASON_BUNDLE_RESTORED,
        `ConfigMap ${namespace}/${name} no longer held the bundle ${claimed} the operator published; it is being restored (sidecars load only bundles the signed policy set names)`,
      );
    }
    return false;
  }

  /** The policy's published bundle as a policy-set entry, when its ConfigMap holds the digest in its status. */
  private async publishedEntry(policy: AccessPolicy): Promise<PolicySetEntry | undefined> {
    const digest = policy.status?.bundle?.digest;
    const name = policy.status?.bundle?.configMapName;
    const namespace = policy.metadata.namespace ?? '';
    if (digest === undefined || name === undefined) return undefined;
    const entry = { name: policy.metadata.name ?? '', configMap: name, digest };
    const cached = this.options.configMaps.get(name, namespace);
    if (cached !== undefined && isControlledBy(cached, policy) && holdsBundle(cached, digest)) return entry;
    try {
      const live = await this.options.core.readNamespacedConfigMap({ name, namespace });
      return isControlledBy(live, policy) && holdsBundle(live, digest) ? entry : undefined;
    } catch (err) {
      if (isStatus(err, 404)) return undefined;
      throw err;
    }
  }

  /**
   * Merge-patches the status subresource with the resourceVersion the status was computed from as a
   * precondition: a conflict means the policy changed meanwhile, and the retry computes from the new one.
   */
  private async writeStatus(policy: AccessPolicy, status: AccessPolicyStatus): Promise<void> {
    // null deletes a field in a merge patch: a recovered policy drops its old errors.
    const resourceVersion = await patchStatus({
      custom: this.options.custom,
      plural: ACCESS_POLICY_PLURAL,
      fieldManager: FIELD_MANAGER,
      object: policy,
      status: { ...status, bundle: status.bundle ?? null, errors: status.errors ?? null },
    });
    this.writtenOver.set(objectKey(policy.metadata.namespace ?? '', policy.metadata.name ?? ''), resourceVersion);
  }
}

/** Reads the Ready condition of a policy (for tools and tests). */
export function readyCondition(policy: AccessPolicy): ReturnType<typeof findCondition> {
  return findCondition(policy.status?.conditions, READY);
}

export interface AccessPolicyControllerOptions {
  readonly kubeConfig: KubeConfig;
  /** Watch one namespace; undefined watches all. */
  readonly namespace?: string;
  readonly logger: Logger;
  readonly metrics: OperatorMetrics;
  readonly events: EventRecorder;
  readonly custom: CustomObjectsApi;
  readonly core: CoreV1Api;
  readonly workers?: number;
  readonly resyncPeriodMs?: number;
  readonly reconcileTimeoutMs?: number;
  readonly compileOptions?: CompileOptions;
  readonly clock?: Clock;
  /** The operator's key and public keys: each namespace's policy set is signed with it. */
  readonly signer?: StatementSigner;
  readonly publicKeys?: readonly (JWK & { kid?: string })[];
}

/** The key of a namespace's policy set in the queue. */
export function policySetKey(namespace: string): string {
  return objectKey(namespace, POLICY_SET_KEY_NAME);
}

/**
 * The controller with its two watches: AccessPolicies (For) and the bundle ConfigMaps it owns (Owns,
 * selected by label), so a ConfigMap deleted or edited by hand is put back at once.
 */
export function createAccessPolicyController(options: AccessPolicyControllerOptions): Controller {
  const { kubeConfig, namespace, custom, core, logger } = options;
  const policyInformer = customObjectInformer(kubeConfig, custom, ACCESS_POLICY_PLURAL, namespace);
  const configMapInformer = makeInformer<V1ConfigMap>(
    kubeConfig,
    namespace === undefined ? '/api/v1/configmaps' : `/api/v1/namespaces/${namespace}/configmaps`,
    () =>
      namespace === undefined
        ? core.listConfigMapForAllNamespaces({ labelSelector: BUNDLE_SELECTOR })
        : core.listNamespacedConfigMap({ namespace, labelSelector: BUNDLE_SELECTOR }),
    BUNDLE_SELECTOR,
  );
  const sourceLogger = logger.child({ controller: CONTROLLER_NAME });
  const policies = new InformerSource({
    name: 'accesspolicies',
    informer: policyInformer,
    primary: true,
    map: (obj) => [
      ...keyOfObject(obj),
      ...(options.signer === undefined ? [] : [policySetKey(obj.metadata?.namespace ?? '')]),
    ],
    logger: sourceLogger,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  const configMaps = new InformerSource({
    name: 'configmaps',
    informer: configMapInformer,
    map: (cm) =>
      cm.metadata?.name === POLICY_SET_CONFIGMAP
        ? options.signer === undefined
          ? []
          : [policySetKey(cm.metadata.namespace ?? '')]
        : keyOfOwner(API_VERSION, 'AccessPolicy')(cm),
    logger: sourceLogger,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  const reconciler = new AccessPolicyReconciler({
    custom,
    core,
    policies: cacheOf<AccessPolicy>(policyInformer),
    configMaps: configMapInformer,
    events: options.events,
    metrics: options.metrics,
    ...(options.compileOptions === undefined ? {} : { compileOptions: options.compileOptions }),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.signer === undefined ? {} : { signer: options.signer }),
    ...(options.publicKeys === undefined ? {} : { publicKeys: options.publicKeys }),
  });
  return new Controller({
    name: CONTROLLER_NAME,
    reconciler,
    sources: [policies, configMaps],
    logger,
    metrics: options.metrics,
    ...(options.workers === undefined ? {} : { workers: options.workers }),
    ...(options.resyncPeriodMs === undefined ? {} : { resyncPeriodMs: options.resyncPeriodMs }),
    ...(options.reconcileTimeoutMs === undefined ? {} : { reconcileTimeoutMs: options.reconcileTimeoutMs }),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
}
