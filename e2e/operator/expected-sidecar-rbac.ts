// The sidecar's Role, written out by hand rather than imported from the controller: what an injected
// sidecar may do in its namespace (docs/injection.md). Tests compare the Role the ProtectedResource
// controller creates against this, so widening the controller's rules fails them until this changes too.
export const EXPECTED_SIDECAR_RULES = [
  { apiGroups: ['chaperone.dev'], resources: ['sessions'], verbs: ['create', 'get', 'list', 'watch', 'patch'] },
  { apiGroups: ['chaperone.dev'], resources: ['sessions/status'], verbs: ['get', 'patch'] },
  { apiGroups: ['chaperone.dev'], resources: ['approvalrequests'], verbs: ['create', 'get', 'list', 'watch'] },
  {
    apiGroups: ['chaperone.dev'],
    resources: ['accesspolicies', 'protectedresources'],
    verbs: ['get', 'list', 'watch'],
  },
  { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create'] },
];
