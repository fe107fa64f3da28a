// Writes the status subresource of a chaperone.dev object the way every controller here must: a JSON
// merge patch carrying the resourceVersion the status was computed from, so a conflict (the object changed
// meanwhile) fails the write and the retry computes from the new object.
import { PatchStrategy, setHeaderOptions, type CustomObjectsApi } from '@kubernetes/client-node';
import { GROUP, VERSION, type ObjectMeta } from '@chaperone/api';

export interface StatusPatch {
  readonly custom: CustomObjectsApi;
  readonly plural: string;
  readonly fieldManager: string;
  readonly object: { readonly metadata: ObjectMeta };
  /** The new status; fields set to null are deleted (merge-patch semantics). */
  readonly status: Record<string, unknown>;
}

/** Patches the status; resolves with the resourceVersion the patch was conditioned on. */
export async function patchStatus(patch: StatusPatch): Promise<string> {
  const { namespace = '', name = '', resourceVersion = '' } = patch.object.metadata;
  await patch.custom.patchNamespacedCustomObjectStatus(
    {
      group: GROUP,
      version: VERSION,
      plural: patch.plural,
      namespace,
      name,
      fieldManager: patch.fieldManager,
      body: { metadata: { resourceVersion }, status: patch.status },
    },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
  return resourceVersion;
}
