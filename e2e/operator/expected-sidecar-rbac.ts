// The sidecar's Role, written out by hand rather than imported from the controller: what an injected
// sidecar may do in its namespace (docs/injection.md). Tests compare the Role the ProtectedResource
// controller creates against this, so widening the controller's rules fails them until this changes too.
// ConfigMaps are readable by name only: the namespace's signed policy set and the bundle of each
// AccessPolicy of the namespace (`policies`).
export function expectedSidecarRules(policies: readonly string[] = []) {
  return [
    { apiGroups: ['chaperone.dev'], resources: ['sessions'], verbs: ['create', 'get', 'list', 'watch', 'patch'] },
    { apiGroups: ['chaperone.dev'], resources: ['sessions/status'], verbs: ['get', 'patch'] },
    { apiGroups: ['chaperone.dev'], resources: ['approvalrequests'], verbs: ['create', 'get', 'list', 'watch'] },
    { apiGroups: ['chaperone.dev'], resources: ['approvalrequests/status'], verbs: ['get', 'patch'] },
    {
      apiGroups: ['chaperone.dev'],
      resources: ['accesspolicies', 'protectedresources'],
      verbs: ['get', 'list', 'watch'],
    },
    {
      apiGroups: [''],
      resources: ['configmaps'],
      resourceNames: ['chaperone-policies', ...[...policies].sort().map((p) => `chaperone-policy-${p}`)],
      verbs: ['get', 'list', 'watch'],
    },
    { apiGroups: [''], resources: ['events'], verbs: ['create'] },
  ];
}

/** The Role without any AccessPolicy in the namespace (what config/rbac/sidecar-role.yaml shows). */
export const EXPECTED_SIDECAR_RULES = expectedSidecarRules();
