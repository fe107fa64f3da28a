// Loads the namespace's signed policy set through the API (docs/policy.md, "Delivery"): the operator
// publishes one ConfigMap per namespace (chaperone-policies) holding a compact JWS that names every
// compiled bundle of the namespace (policy, ConfigMap, digest). The sidecar watches that one ConfigMap
// (its RBAC names it, and the bundle ConfigMaps, by resourceName), and loads a set only when
//   * the JWS verifies with a key pinned in the sidecar's configuration (the operator's),
//   * it is for this namespace, and not older than the set already loaded (no rollback),
//   * every named bundle's bytes hash to the signed digest and its manifest names this namespace's policy.
// Anything else is refused as a whole: the last good set stays in force, the refusal is logged, counted
// and posted as a Warning Event on the pod (an attacker who can edit ConfigMaps cannot weaken policy, and
// someone will notice them trying). A new policy reaches running sidecars as soon as the watch reports
// the new set, without a restart.
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiException, CoreV1Api, KubeConfig, Watch, type V1ConfigMap } from '@kubernetes/client-node';
import type { JWK } from 'jose';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_WASM_FILE,
  POLICY_SET_KEY,
  bundleDigest,
  verifyPolicySet,
  type BundleManifestFile,
  type PolicySet,
} from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import type { PolicyBundle, PolicyEngine } from './policy-engine.ts';

/** API access as the sidecar configuration resolves it (sidecar/src/config.ts). */
export interface ApiAccess {
  readonly kubeconfig?: string;
  readonly server?: string;
  readonly tokenFile?: string;
  readonly caFile?: string;
}

export interface PolicySetSourceOptions {
  readonly configMap: string;
  readonly namespace: string;
  readonly access: ApiAccess;
  readonly trustedKeys: readonly (JWK & { kid?: string })[];
  readonly engine: PolicyEngine;
  readonly logger: Logger;
  /** Full re-read besides the watch, ms. */
  readonly resyncMs: number;
  /** The pod to post Warning Events on (refused sets); none when unknown. */
  readonly pod?: { readonly name: string; readonly uid?: string };
  readonly onReload?: (result: 'success' | 'error' | 'rejected', digests: readonly string[]) => void;
}

export class PolicySetRejected extends Error {
  override name = 'PolicySetRejected';
}

/** A KubeConfig for the configured access; a token file is re-read by client-node every minute. */
export function kubeConfigFor(access: ApiAccess): KubeConfig {
  const kc = new KubeConfig();
  if (access.kubeconfig !== undefined) kc.loadFromFile(access.kubeconfig);
  else if (access.server === undefined) kc.loadFromCluster();
  else {
    kc.loadFromClusterAndUser(
      { name: 'api-server', server: access.server, skipTLSVerify: false, caFile: access.caFile },
      { name: 'service-account', authProvider: { name: 'tokenFile', config: { tokenFile: access.tokenFile } } },
    );
  }
  return kc;
}

function statusCode(err: unknown): number | undefined {
  return err instanceof ApiException ? (err as ApiException<unknown>).code : undefined;
}

/**
 * Checks a policy set and its bundles against what was signed; returns the bundles or throws
 * PolicySetRejected. `fetch` reads a bundle ConfigMap by name; `previous` is the set loaded now.
 */
export async function verifiedBundles(
  jws: string,
  options: {
    readonly namespace: string;
    readonly trustedKeys: readonly (JWK & { kid?: string })[];
    readonly previous?: PolicySet;
    readonly cached: (digest: string) => PolicyBundle | undefined;
    readonly fetch: (configMap: string) => Promise<V1ConfigMap | undefined>;
  },
): Promise<{ set: PolicySet; bundles: PolicyBundle[] }> {
  let set: PolicySet;
  try {
    set = verifyPolicySet(jws, options.trustedKeys);
  } catch (err) {
    throw new PolicySetRejected(`the policy set is not signed by the operator: ${(err as Error).message}`);
  }
  if (set.namespace !== options.namespace) {
    throw new PolicySetRejected(`the policy set was signed for namespace ${set.namespace}, not ${options.namespace}`);
  }
  if (options.previous !== undefined && Date.parse(set.issuedAt) < Date.parse(options.previous.issuedAt)) {
    throw new PolicySetRejected(
      `the policy set was issued at ${set.issuedAt}, before the one in force (${options.previous.issuedAt}): a rollback`,
    );
  }
  const bundles: PolicyBundle[] = [];
  for (const entry of set.policies) {
    const cached = options.cached(entry.digest);
    if (cached !== undefined && cached.manifest.policy === `${set.namespace}/${entry.name}`) {
      bundles.push(cached);
      continue;
    }
    const cm = await options.fetch(entry.configMap);
    const wasm = cm?.binaryData?.[BUNDLE_WASM_FILE];
    const manifestText = cm?.data?.[BUNDLE_MANIFEST_FILE];
    if (wasm === undefined || manifestText === undefined) {
      throw new PolicySetRejected(`bundle ConfigMap ${entry.configMap} of policy ${entry.name} is missing or empty`);
    }
    let file: BundleManifestFile;
    try {
      file = JSON.parse(manifestText) as BundleManifestFile;
    } catch {
      throw new PolicySetRejected(`bundle ConfigMap ${entry.configMap}: ${BUNDLE_MANIFEST_FILE} is not JSON`);
    }
    const bytes = Buffer.from(wasm, 'base64');
    if (bundleDigest(bytes, file.manifest) !== entry.digest) {
      throw new PolicySetRejected(
        `bundle ConfigMap ${entry.configMap} does not hold the bundle the operator signed for policy ${entry.name} (${entry.digest})`,
      );
    }
    if (file.manifest.policy !== `${set.namespace}/${entry.name}`) {
      throw new PolicySetRejected(
        `bundle ConfigMap ${entry.configMap} holds policy ${file.manifest.policy}, not ${set.namespace}/${entry.name}`,
      );
    }
    bundles.push({ wasm: bytes, manifest: file.manifest, digest: entry.digest });
  }
  return { set, bundles };
}

export class PolicySetSource {
  private readonly options: PolicySetSourceOptions;
  private readonly core: CoreV1Api;
  private readonly watcher: Watch;
  private current: PolicySet | undefined;
  private bundles = new Map<string, PolicyBundle>();
  private lastJws: string | undefined;
  private loaded = false;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private abort: AbortController | undefined;
  private resync: NodeJS.Timeout | undefined;
  private lastAlert = '';
  /** Versions delivered by the watch, not yet considered. */
  private readonly observed: (V1ConfigMap | null)[] = [];

  constructor(options: PolicySetSourceOptions) {
    this.options = options;
    const kc = kubeConfigFor(options.access);
    this.core = kc.makeApiClient(CoreV1Api);
    this.watcher = new Watch(kc);
  }

  /** Loads the set once (awaited: the sidecar serves on what it got, denying everything without a set) and watches. */
  async start(): Promise<void> {
    await this.check();
    void this.watchLoop();
    this.resync = setInterval(() => void this.check(), this.options.resyncMs);
    this.resync.unref();
  }

  /** Whether a change arrived while reading (then read again), unless stopped. */
  private rerun(): boolean {
    return this.again && !this.stopped;
  }

  private isStopped(): boolean {
    return this.stopped;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.resync);
    this.abort?.abort();
  }

  /** The set in force (undefined before the first good one). */
  policySet(): PolicySet | undefined {
    return this.current;
  }

  /**
   * Re-reads the ConfigMap now; concurrent calls share one read and a change during it causes one more.
   * Versions the watch delivered are considered first, each in order, so a set that was written and
   * replaced a moment later is still looked at (and refused, and reported) rather than skipped.
   */
  check(observed?: V1ConfigMap | null): Promise<void> {
    if (observed !== undefined) this.observed.push(observed);
    if (this.running !== undefined) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        for (let next = this.observed.shift(); next !== undefined; next = this.observed.shift()) {
          await this.reload(next).catch((err: unknown) => {
            this.options.logger.warn('policy set check failed; keeping the policies in force', { error: err });
          });
        }
        await this.reload().catch((err: unknown) => {
          this.options.logger.warn('policy set read failed; keeping the policies in force', { error: err });
        });
      } while (this.rerun());
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async readConfigMap(name: string): Promise<V1ConfigMap | undefined> {
    try {
      return await this.core.readNamespacedConfigMap({ namespace: this.options.namespace, name });
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw err;
    }
  }

  /** Considers `given` (a watched version; null when deleted), or else the ConfigMap as it is now. */
  private async reload(given?: V1ConfigMap | null): Promise<void> {
    const { logger } = this.options;
    const cm = given === undefined ? await this.readConfigMap(this.options.configMap) : (given ?? undefined);
    const jws = cm?.data?.[POLICY_SET_KEY];
    if (jws === undefined) {
      if (!this.loaded) {
        // No policy compiled in this namespace yet: deny everything until one is.
        await this.options.engine.replaceBundles([]);
        this.loaded = true;
        logger.warn('no policy set published for this namespace yet; every command is denied', {
          configMap: `${this.options.namespace}/${this.options.configMap}`,
        });
        this.options.onReload?.('success', []);
      } else if (this.current !== undefined) {
        this.reject(`ConfigMap ${this.options.configMap} is gone or holds no ${POLICY_SET_KEY}`);
      }
      return;
    }
    if (jws === this.lastJws) return;
    let result: { set: PolicySet; bundles: PolicyBundle[] };
    try {
      result = await verifiedBundles(jws, {
        namespace: this.options.namespace,
        trustedKeys: this.options.trustedKeys,
        ...(this.current === undefined ? {} : { previous: this.current }),
        cached: (digest) => this.bundles.get(digest),
        fetch: (name) => this.readConfigMap(name),
      });
    } catch (err) {
      if (!(err instanceof PolicySetRejected)) throw err;
      if (!this.loaded) {
        await this.options.engine.replaceBundles([]);
        this.loaded = true;
      }
      this.reject(err.message);
      return;
    }
    await this.options.engine.replaceBundles(result.bundles);
    this.current = result.set;
    this.lastJws = jws;
    this.loaded = true;
    this.lastAlert = '';
    this.bundles = new Map(result.bundles.map((b) => [b.digest, b]));
    const statuses = this.options.engine.bundles();
    const failed = statuses.filter((s) => s.error !== undefined);
    for (const f of failed) logger.error('policy bundle failed to load', { policy: f.policy, error: f.error });
    logger.info('policy bundles loaded', {
      issuedAt: result.set.issuedAt,
      bundles: statuses.map((s) => ({ policy: s.policy, digest: s.digest })),
    });
    this.options.onReload?.(
      failed.length === 0 ? 'success' : 'error',
      statuses.map((s) => s.digest),
    );
  }

  /** Keeps the policies in force, and says so: log, metric, and a Warning Event on the pod (once per reason). */
  private reject(reason: string): void {
    const inForce = this.current === undefined ? 'none (every command is denied)' : this.current.issuedAt;
    this.options.logger.error('policy set refused; keeping the last good policies', {
      reason,
      inForce,
    });
    this.options.onReload?.('rejected', [...this.bundles.keys()]);
    if (reason === this.lastAlert) return;
    this.lastAlert = reason;
    void this.postEvent(
      `Refused the policy set in ConfigMap ${this.options.configMap}: ${reason}. Policies in force: ${inForce}.`,
    );
  }

  private async postEvent(message: string): Promise<void> {
    const pod = this.options.pod;
    if (pod === undefined || pod.name === '') return;
    const now = new Date();
    await this.core
      .createNamespacedEvent({
        namespace: this.options.namespace,
        body: {
          metadata: { generateName: `${pod.name.slice(0, 200)}.`, namespace: this.options.namespace },
          involvedObject: {
            kind: 'Pod',
            apiVersion: 'v1',
            namespace: this.options.namespace,
            name: pod.name,
            ...(pod.uid === undefined || pod.uid === '' ? {} : { uid: pod.uid }),
          },
          type: 'Warning',
          reason: 'PolicySetRejected',
          message: message.slice(0, 1024),
          source: { component: 'chaperone-sidecar', host: pod.name },
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
          reportingComponent: 'chaperone-sidecar',
          reportingInstance: pod.name,
        },
      })
      .catch((err: unknown) => this.options.logger.warn('could not post the PolicySetRejected Event', { error: err }));
  }

  /** Watches the one ConfigMap (field selector on its name: what resourceNames RBAC allows) and re-reads on change. */
  private async watchLoop(): Promise<void> {
    let delay = 1000;
    while (!this.stopped) {
      const ended = new Promise<void>((resolve) => {
        this.watcher
          .watch(
            `/api/v1/namespaces/${this.options.namespace}/configmaps`,
            { fieldSelector: `metadata.name=${this.options.configMap}`, allowWatchBookmarks: false },
            (phase: string, object: V1ConfigMap) => {
              delay = 1000;
              void this.check(phase === 'DELETED' ? null : object);
            },
            (err: unknown) => {
              if (err !== null && err !== undefined && !this.stopped) {
                this.options.logger.debug('policy set watch ended', { error: err });
              }
              resolve();
            },
          )
          .then(
            (abort) => {
              this.abort = abort;
            },
            (err: unknown) => {
              this.options.logger.debug('policy set watch failed to start', { error: err });
              resolve();
            },
          );
      });
      await ended;
      if (this.isStopped()) return;
      // Whatever happened while the watch was down is picked up by a read before watching again.
      await this.check();
      await sleep(delay);
      delay = Math.min(delay * 2, 30_000);
    }
  }
}
