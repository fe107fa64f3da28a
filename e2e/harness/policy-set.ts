// Publishes AccessPolicies the way the operator's AccessPolicy controller does, for tests that run the
// webhooks and a sidecar without the controllers: each policy compiled by the real OPA into its bundle
// ConfigMap, and the namespace's policy set (chaperone-policies) signed with the operator's key. The
// objects are the operator's own renderings (bundleConfigMap, signPolicySet), so what the sidecar reads is
// what it would read in a cluster.
import * as k8s from '@kubernetes/client-node';
import {
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  signPolicySet,
  statementSigner,
  type AccessPolicy,
  type PolicySetEntry,
} from '@chaperone/api';
import type { JWK } from 'jose';
import { bundleConfigMap } from '../../operator/src/controllers/access-policy-controller.ts';
import { compilePolicy } from '../../operator/src/policy/compile-policy.ts';

async function upsert(core: k8s.CoreV1Api, namespace: string, body: k8s.V1ConfigMap): Promise<void> {
  const name = body.metadata?.name ?? '';
  try {
    const live = await core.readNamespacedConfigMap({ namespace, name });
    const replacement = structuredClone(body);
    replacement.metadata = structuredClone(body.metadata) ?? {};
    replacement.metadata.resourceVersion = live.metadata?.resourceVersion ?? '';
    await core.replaceNamespacedConfigMap({ namespace, name, body: replacement });
  } catch (err) {
    if (!(err instanceof k8s.ApiException && err.code === 404)) throw err;
    await core.createNamespacedConfigMap({ namespace, body });
  }
}

/**
 * Compiles and publishes `policies` (live AccessPolicy objects: their uids own the bundle ConfigMaps) and
 * signs the namespace's policy set naming exactly them. Returns the entries of the set.
 */
export async function publishPolicySet(
  core: k8s.CoreV1Api,
  namespace: string,
  policies: readonly AccessPolicy[],
  key: { readonly privateJwk: JWK & { kid: string } },
  options: { readonly issuedAt?: Date } = {},
): Promise<PolicySetEntry[]> {
  const entries: PolicySetEntry[] = [];
  for (const policy of policies) {
    const name = policy.metadata.name ?? '';
    const compiled = await compilePolicy({ namespace, name, spec: policy.spec });
    if (!compiled.ok) throw new Error(`policy ${name} does not compile: ${JSON.stringify(compiled.errors)}`);
    const cm = bundleConfigMap(policy, compiled);
    await upsert(core, namespace, cm);
    entries.push({ name, configMap: cm.metadata?.name ?? '', digest: compiled.digest });
  }
  entries.sort((a, b) => a.name.localeCompare(b.name));
  const jws = signPolicySet(
    { namespace, issuedAt: (options.issuedAt ?? new Date()).toISOString(), policies: entries },
    statementSigner(key.privateJwk),
  );
  await upsert(core, namespace, {
    metadata: { name: POLICY_SET_CONFIGMAP, namespace },
    data: { [POLICY_SET_KEY]: jws },
  });
  return entries;
}
