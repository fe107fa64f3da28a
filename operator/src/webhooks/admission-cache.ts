// What the pod webhooks need to know, kept in memory by three informers (Namespaces, ProtectedResources,
// AccessPolicies) so a review costs map lookups, not API calls. An object the informer has not seen yet
// (created a moment before the pod) is fetched once with a GET, so a fresh namespace never gets a wrong
// answer; that is the only API call on the admission path.
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  makeInformer,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
  type V1Namespace,
} from '@kubernetes/client-node';
import { GROUP, VERSION, type AccessPolicy, type ProtectedResource } from '@chaperone/api';
import { cacheOf, customObjectInformer } from '../controller-runtime/custom-object-informer.ts';
import type { Logger } from '../observability/logger.ts';

export interface AdmissionLookups {
  namespaceLabels(namespace: string): Promise<Readonly<Record<string, string>>>;
  protectedResource(namespace: string, name: string): Promise<ProtectedResource | undefined>;
  /** Every ProtectedResource of the namespace the cache holds. */
  protectedResources(namespace: string): readonly ProtectedResource[];
  /** Names of the namespace's AccessPolicies covering any of `resources` (by name or label selector). */
  policiesCovering(namespace: string, resources: readonly ProtectedResource[]): string[];
}

export interface AdmissionCache extends AdmissionLookups {
  stop(): Promise<void>;
}

const PR_PLURAL = 'protectedresources';
const AP_PLURAL = 'accesspolicies';

function code(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

export function policyCovers(policy: AccessPolicy, resource: ProtectedResource): boolean {
  const { names, selector } = policy.spec.resources;
  if (names?.includes(resource.metadata.name ?? '') === true) return true;
  if (selector === undefined) return false;
  const labels = resource.metadata.labels ?? {};
  return Object.entries(selector.matchLabels).every(([k, v]) => labels[k] === v);
}

export async function startAdmissionCache(options: {
  kubeConfig: KubeConfig;
  logger: Logger;
}): Promise<AdmissionCache> {
  const { kubeConfig, logger } = options;
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const namespaces = makeInformer<V1Namespace>(kubeConfig, '/api/v1/namespaces', () => core.listNamespace());
  const resources = customObjectInformer(kubeConfig, custom, PR_PLURAL);
  const policies = customObjectInformer(kubeConfig, custom, AP_PLURAL);
  let stopped = false;
  const informers: [string, Informer<KubernetesObject>][] = [
    ['namespaces', namespaces],
    ['protectedresources', resources],
    ['accesspolicies', policies],
  ];
  for (const [name, informer] of informers) {
    // A watch that fails is restarted (client-node stops an informer on error).
    informer.on('error', (err: unknown) => {
      if (stopped) return;
      logger.warn('admission cache watch failed; restarting', { informer: name, error: err });
      setTimeout(() => {
        if (!stopped)
          informer
            .start()
            .catch((e: unknown) => logger.error('admission cache restart failed', { informer: name, error: e }));
      }, 1000).unref();
    });
  }
  await Promise.all(informers.map(([, i]) => i.start()));

  const prCache = cacheOf<ProtectedResource>(resources);
  const apCache = cacheOf<AccessPolicy>(policies);

  return {
    async namespaceLabels(namespace) {
      const cached = namespaces.get(namespace);
      if (cached !== undefined) return cached.metadata?.labels ?? {};
      const fetched = await core.readNamespace({ name: namespace });
      return fetched.metadata?.labels ?? {};
    },
    async protectedResource(namespace, name) {
      const cached = prCache.get(name, namespace);
      if (cached !== undefined) return cached;
      try {
        return (await custom.getNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          plural: PR_PLURAL,
          namespace,
          name,
        })) as ProtectedResource;
      } catch (err) {
        if (code(err) === 404) return undefined;
        throw err;
      }
    },
    protectedResources: (namespace) => prCache.list(namespace),
    policiesCovering(namespace, wanted) {
      return apCache
        .list(namespace)
        .filter((p) => wanted.some((r) => policyCovers(p, r)))
        .map((p) => p.metadata.name ?? '')
        .sort();
    },
    async stop() {
      stopped = true;
      await Promise.all(informers.map(([, i]) => i.stop()));
    },
  };
}
