// The name of the ConfigMap that carries an AccessPolicy's compiled bundle. Shared by the AccessPolicy
// controller, which writes it, and the injector, which mounts it into sidecars.
import { createHash } from 'node:crypto';

export const CONFIGMAP_PREFIX = 'chaperone-policy-';

/** chaperone-policy-<name>; names too long for that get a truncated name plus a hash, still unique. */
export function policyConfigMapName(policyName: string): string {
  const name = `${CONFIGMAP_PREFIX}${policyName}`;
  if (name.length <= 253) return name;
  const hash = createHash('sha256').update(policyName).digest('hex').slice(0, 10);
  return `${name.slice(0, 253 - 11).replace(/[.-]+$/, '')}-${hash}`;
}
