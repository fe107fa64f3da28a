// One informer (list + watch + cache) over one of our custom resources, in one namespace or in all: every
// controller and cache of the operator that watches a Chaperone kind builds it here.
import {
  makeInformer,
  type CustomObjectsApi,
  type Informer,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
} from '@kubernetes/client-node';
import { GROUP, VERSION } from '@chaperone/api';

export type CustomObjectInformer = Informer<KubernetesObject> & ObjectCache<KubernetesObject>;

/**
 * An informer over `plural` (of chaperone.dev/v1) in `namespace`, or in every namespace when it is
 * undefined. Not started. Watch events carry plain JSON (timestamps as strings), which is what api's types
 * describe; client-node types metadata as its V1ObjectMeta class, so callers view the cache through
 * `cacheOf`.
 */
export function customObjectInformer(
  kubeConfig: KubeConfig,
  custom: CustomObjectsApi,
  plural: string,
  namespace?: string,
): CustomObjectInformer {
  const base = `/apis/${GROUP}/${VERSION}`;
  return makeInformer<KubernetesObject>(
    kubeConfig,
    namespace === undefined ? `${base}/${plural}` : `${base}/namespaces/${namespace}/${plural}`,
    async () =>
      (namespace === undefined
        ? await custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural })
        : await custom.listNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace,
            plural,
          })) as KubernetesListObject<KubernetesObject>,
  );
}

/** The informer's cache as the api type of its kind (see customObjectInformer). */
export function cacheOf<T>(informer: ObjectCache<KubernetesObject>): ObjectCache<T> {
  return informer as unknown as ObjectCache<T>;
}
