// Names shared by the injector, the validating webhook, the webhook registration and the docs
// (docs/injection.md). Changing one is a breaking change for pods already injected.

/** Pod annotation opting the pod in: "true" injects the sidecar. */
export const ANNOTATION_INJECT = 'chaperone.dev/inject';
/** Pod annotation naming the ProtectedResources of the pod's namespace, comma-separated: "orders-db,reports". */
export const ANNOTATION_RESOURCES = 'chaperone.dev/resources';
/** Set by the injector: a short hash of what was injected. Its presence means "already injected". */
export const ANNOTATION_INJECTED = 'chaperone.dev/injected';
/** Set by the injector: the sidecar's YAML configuration, projected into the sidecar as a file. */
export const ANNOTATION_SIDECAR_CONFIG = 'chaperone.dev/sidecar-config';
/** Set by the injector when a kubernetes resource is named: the agents' kubeconfig, pointing at the sidecar. */
export const ANNOTATION_AGENT_KUBECONFIG = 'chaperone.dev/agent-kubeconfig';

/** Namespace label selecting namespaces the mutating webhook is called for. */
export const LABEL_INJECTION = 'chaperone.dev/injection';
export const LABEL_INJECTION_ENABLED = 'enabled';
/** Namespace label turning on strict mode: "true". */
export const LABEL_STRICT = 'chaperone.dev/strict';

export const SIDECAR_CONTAINER = 'chaperone-sidecar';

export const VOLUME_CONFIG = 'chaperone-config';
export const VOLUME_CREDENTIALS = 'chaperone-credentials';
export const VOLUME_POLICIES = 'chaperone-policies';
export const VOLUME_SIDECAR_API_ACCESS = 'chaperone-sidecar-api-access';
export const VOLUME_AGENT_IDENTITY = 'chaperone-agent-identity';
export const VOLUME_AUDIT = 'chaperone-audit';
/**
 * The certificates of the sidecar's loopback TLS listeners (kubernetes resources): written by the sidecar,
 * mounted read-only by agents (the CA of their kubeconfig). The one volume both sides mount; public data only.
 */
export const VOLUME_LOOPBACK_TLS = 'chaperone-loopback-tls';

/** The evidence store's writer password and CA, delivered by the operator: memory, the sidecar's alone. */
export const VOLUME_EVIDENCE_CREDENTIALS = 'chaperone-evidence-credentials';

/** Everything the sidecar reads lives under these paths; the agent never has them mounted. */
export const SIDECAR_CONFIG_DIR = '/etc/chaperone/config';
export const SIDECAR_CONFIG_FILE = 'sidecar.yaml';
/** The path the sidecar is started with (a subPath mount of the config volume). */
export const SIDECAR_CONFIG_PATH = '/etc/chaperone/sidecar.yaml';
export const SIDECAR_CREDENTIALS_DIR = '/etc/chaperone/credentials';
export const SIDECAR_POLICIES_DIR = '/etc/chaperone/policies';
/** Where VOLUME_EVIDENCE_CREDENTIALS is mounted (`password`, `ca.crt`). */
export const SIDECAR_EVIDENCE_DIR = '/etc/chaperone/evidence';
/** The standard in-cluster path, so the sidecar's Kubernetes client finds its token, CA and namespace. */
export const SIDECAR_API_ACCESS_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
/** The audit spool, Session writer state and the signing key: writable, and the sidecar's alone. */
export const SIDECAR_AUDIT_DIR = '/var/lib/chaperone/audit';
/**
 * Downward-API env of the sidecar container, read by the sidecar where its config leaves `pod.*` empty
 * (POD_ENV in sidecar/src/config.ts): a generateName'd pod has no name at admission, and no pod a uid.
 */
export const SIDECAR_POD_ENV: Readonly<Record<string, string>> = {
  POD_NAME: 'metadata.name',
  POD_NAMESPACE: 'metadata.namespace',
  POD_UID: 'metadata.uid',
};

/** Agent side: the audience-bound identity token and, for kubernetes resources, the kubeconfig. */
export const AGENT_IDENTITY_DIR = '/var/run/secrets/chaperone';
export const AGENT_TOKEN_FILE = 'token';
export const AGENT_KUBECONFIG_FILE = 'kubeconfig';
/** Where VOLUME_LOOPBACK_TLS is mounted, in the sidecar (writable) and in agents (read-only). */
export const AGENT_LOOPBACK_TLS_DIR = '/var/run/chaperone/loopback-tls';

/** Audience of agent tokens: the API server rejects them, the sidecar accepts them. */
export const AGENT_TOKEN_AUDIENCE = 'chaperone';

/** Namespaces never touched, whatever their labels say. */
export const ALWAYS_EXCLUDED_NAMESPACES: readonly string[] = ['kube-system', 'kube-public', 'kube-node-lease'];
