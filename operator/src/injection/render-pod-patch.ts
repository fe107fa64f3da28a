// The injector: (pod, namespace, ProtectedResources, policies, settings) → a minimal RFC 6902 patch, a
// refusal, or nothing. Pure and synchronous, so the admission hot path is a map lookup plus this function.
//
// Ensure-semantics: every operation is emitted only when the pod lacks what it adds, so a second call on
// the patched pod (reinvocationPolicy IfNeeded) returns an empty patch, and containers that a later webhook
// added still get the agent environment. docs/injection.md explains each piece and why.
import { createHash } from 'node:crypto';
import type {
  V1Container,
  V1EnvVar,
  V1Pod,
  V1Volume,
  V1VolumeMount,
  V1VolumeProjection,
} from '@kubernetes/client-node';
import type { AuditRecordStore, ProtectedResource, StatementSigner } from '@chaperone/api';
import { SEAL_ANNOTATION } from '@chaperone/api';
import {
  AGENT_IDENTITY_DIR,
  AGENT_KUBECONFIG_FILE,
  AGENT_LOOPBACK_TLS_DIR,
  AGENT_TOKEN_AUDIENCE,
  AGENT_TOKEN_FILE,
  ALWAYS_EXCLUDED_NAMESPACES,
  ANNOTATION_AGENT_KUBECONFIG,
  ANNOTATION_INJECT,
  ANNOTATION_INJECTED,
  ANNOTATION_RESOURCES,
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_STRICT,
  SIDECAR_API_ACCESS_DIR,
  SIDECAR_AUDIT_DIR,
  SIDECAR_CONFIG_FILE,
  SIDECAR_CONFIG_PATH,
  SIDECAR_CONTAINER,
  SIDECAR_CREDENTIALS_DIR,
  SIDECAR_EVIDENCE_DIR,
  SIDECAR_POD_ENV,
  VOLUME_AGENT_IDENTITY,
  VOLUME_AUDIT,
  VOLUME_CONFIG,
  VOLUME_CREDENTIALS,
  VOLUME_EVIDENCE_CREDENTIALS,
  VOLUME_LOOPBACK_TLS,
  VOLUME_SIDECAR_API_ACCESS,
} from './constants.ts';
import {
  agentContainers,
  credentialSecretNames,
  isAutomountTokenVolume,
  isolationViolations,
  strictViolations,
} from './inspect-pod.ts';
import { pointer, type JsonPatchOperation } from './json-patch.ts';
import { injectorNamesIn, sealPod, sealProblems, sidecarIsolationProblems, type PublicKeys } from './sealed-pod.ts';
import {
  SIDECAR_ENGINES,
  credentialPaths,
  isDelivered,
  listenPortOf,
  renderAgentKubeconfig,
  renderSidecarConfigYaml,
  type OperatorEndpoint,
  type SignerCertificationEndpoint,
  type TokenExchangeEndpoint,
} from './render-sidecar-config.ts';
import type { InjectionSettings } from './settings.ts';

export interface InjectionInput {
  readonly pod: V1Pod;
  readonly namespace: string;
  readonly namespaceLabels: Readonly<Record<string, string>>;
  /** The pod's ProtectedResources, resolved from its annotation, in annotation order. */
  readonly resources: readonly ProtectedResource[];
  readonly settings: InjectionSettings;
  /** Rendered into the sidecar config when the operator certifies signer keys. */
  readonly signerCertification?: SignerCertificationEndpoint;
  /** Rendered into the sidecar config (a trusted issuer) when the operator runs the token exchange. */
  readonly tokenExchange?: TokenExchangeEndpoint;
  /** The operator's HTTPS server: the Session proxy and credential delivery, when the settings use them. */
  readonly operatorEndpoint?: OperatorEndpoint;
  /** The operator's key: it seals the rendered sidecar (annotation chaperone.dev/seal). */
  readonly signer: StatementSigner;
  /**
   * The operator's public keys: a pod that already carries a seal is recognised as injected only when the
   * seal verifies with them, and the sidecar is told to trust policy sets signed by them.
   */
  readonly operatorKeys: PublicKeys;
}

export type InjectionResult =
  | { readonly kind: 'skip'; readonly reason: string }
  | { readonly kind: 'patch'; readonly patch: JsonPatchOperation[]; readonly warnings: string[] }
  | { readonly kind: 'deny'; readonly code: number; readonly message: string };

export function isStrictNamespace(labels: Readonly<Record<string, string>>): boolean {
  return labels[LABEL_STRICT] === 'true';
}

/** Whether the injector looks at this pod at all: opted in, and not in a namespace it never touches. */
export function injectionRequested(pod: V1Pod, namespace: string, settings: InjectionSettings): boolean {
  if (ALWAYS_EXCLUDED_NAMESPACES.includes(namespace) || namespace === settings.operatorNamespace) return false;
  return pod.metadata?.annotations?.[ANNOTATION_INJECT] === 'true';
}

const deny = (code: number, message: string): InjectionResult => ({ kind: 'deny', code, message });

export function renderPodPatch(input: InjectionInput): InjectionResult {
  const { pod, namespace, settings } = input;
  if (ALWAYS_EXCLUDED_NAMESPACES.includes(namespace) || namespace === settings.operatorNamespace) {
    return { kind: 'skip', reason: `namespace ${namespace} is never injected` };
  }
  if (!injectionRequested(pod, namespace, settings)) {
    return { kind: 'skip', reason: `annotation ${ANNOTATION_INJECT} is not "true"` };
  }
  const strict = isStrictNamespace(input.namespaceLabels);
  const warnings: string[] = [];
  if (strict) {
    const problems = strictViolations(pod);
    if (problems.length > 0) {
      return deny(
        403,
        `chaperone strict mode (namespace label ${LABEL_STRICT}=true) refuses this pod: ${problems.join('; ')}`,
      );
    }
  }
  if (input.resources.length === 0) {
    return deny(
      400,
      `annotation ${ANNOTATION_INJECT} is "true" but ${ANNOTATION_RESOURCES} names no ProtectedResource`,
    );
  }

  const ports = new Map<number, string>([[settings.metricsPort, 'the sidecar metrics endpoint']]);
  for (const r of input.resources) {
    const port = listenPortOf(r);
    const taken = ports.get(port);
    if (taken !== undefined) {
      return deny(
        400,
        `ProtectedResource ${r.metadata.name ?? ''} listens on port ${String(port)}, already used by ${taken}; set a distinct spec.listenPort`,
      );
    }
    ports.set(port, `ProtectedResource ${r.metadata.name ?? ''}`);
  }
  const served = input.resources.filter((r) => SIDECAR_ENGINES.includes(r.spec.type));
  for (const r of input.resources) {
    if (!SIDECAR_ENGINES.includes(r.spec.type)) {
      warnings.push(
        `chaperone: ProtectedResource ${r.metadata.name ?? ''} is of type ${r.spec.type}, which this sidecar version does not serve yet; agents are pointed at it but nothing listens`,
      );
    }
  }
  if (served.length === 0) {
    return deny(
      400,
      `none of the ProtectedResources ${input.resources.map((r) => r.metadata.name ?? '').join(', ')} has a type this sidecar serves (${SIDECAR_ENGINES.join(', ')})`,
    );
  }

  const delivered = served.filter(isDelivered);
  if (delivered.length > 0) {
    const wrong = delivered.filter((r) => r.spec.credentialSecretRef?.namespace !== settings.credentialNamespace);
    if (wrong.length > 0) {
      return deny(
        400,
        `ProtectedResource ${wrong.map((r) => r.metadata.name ?? '').join(', ')} names a credential Secret of another namespace, and the operator delivers credentials only from ${settings.credentialNamespace ?? '(no credential namespace configured)'}`,
      );
    }
    const readOnly = delivered.filter(
      (r) =>
        r.spec.readOnlyCredentialSecretRef !== undefined &&
        r.spec.readOnlyCredentialSecretRef.namespace !== settings.credentialNamespace,
    );
    if (readOnly.length > 0) {
      return deny(
        400,
        `ProtectedResource ${readOnly.map((r) => r.metadata.name ?? '').join(', ')} has a delivered credential and a read-only one outside the credential namespace ${settings.credentialNamespace ?? '(none configured)'}: both are delivered from it or both mounted`,
      );
    }
    if (delivered.length !== served.length) {
      return deny(
        400,
        `the pod's ProtectedResources mix delivered credentials (${delivered.map((r) => r.metadata.name ?? '').join(', ')}) with mounted ones; use one kind per pod`,
      );
    }
  }
  const records = recordStore(served, settings, strict);
  if ('problem' in records) return deny(records.code, records.problem);
  const evidenceStore = records.store === 'EvidenceStore';
  if (
    (delivered.length > 0 || evidenceStore || settings.sessionNamespace !== undefined) &&
    input.operatorEndpoint === undefined
  ) {
    return deny(500, 'chaperone: the operator endpoint for the Session proxy and credential delivery is not known');
  }

  // The injector's own output (re-invocation, or a copy of an injected pod) carries a seal that verifies;
  // anything else that uses the injector's names is a pod trying to bring its own "sidecar".
  const reserved = injectorNamesIn(pod);
  const sealed = reserved.length > 0 ? sealProblems(pod, namespace, input.operatorKeys) : [];
  const alreadyInjected = reserved.length > 0 && sealed.length === 0;
  if (reserved.length > 0 && !alreadyInjected) {
    return deny(
      403,
      `chaperone: the pod sets ${reserved.join(', ')}, which only the injector may set (${sealed.join('; ')})`,
    );
  }

  const automountVolumes = new Set((pod.spec?.volumes ?? []).filter(isAutomountTokenVolume).map((v) => v.name));
  const isolation = isolationViolations(pod, credentialSecretNames(input.resources), automountVolumes);
  if (isolation.length > 0) {
    if (strict) return deny(403, `chaperone strict mode refuses this pod: ${isolation.join('; ')}`);
    warnings.push(...isolation.map((p) => `chaperone: ${p}`));
  }

  const ops: JsonPatchOperation[] = [];
  const kubernetesResources = input.resources.filter((r) => r.spec.type === 'kubernetes');
  const kubernetesResource = kubernetesResources.length > 0;

  // 1. No API-server token for agents: drop the automounted volume and its mounts, and turn automount off.
  removeAutomountVolumes(pod, automountVolumes, ops);
  if (pod.spec?.automountServiceAccountToken !== false) {
    ops.push({
      op: pod.spec?.automountServiceAccountToken === undefined ? 'add' : 'replace',
      path: '/spec/automountServiceAccountToken',
      value: false,
    });
  }

  // 2. Agents: the identity volume, and env pointing every client at the sidecar.
  const agentEnv = renderAgentEnv(input.resources);
  const agentMounts: V1VolumeMount[] = [
    { name: VOLUME_AGENT_IDENTITY, mountPath: AGENT_IDENTITY_DIR, readOnly: true },
    // The CA of the kubeconfig: the sidecar's loopback certificate (public; read-only, see sealed-pod.ts).
    ...(kubernetesResource ? [{ name: VOLUME_LOOPBACK_TLS, mountPath: AGENT_LOOPBACK_TLS_DIR, readOnly: true }] : []),
  ];
  for (const { list, index, container } of agentContainers(pod)) {
    ensureEnv(container, pointer('spec', list, index), agentEnv, ops);
    for (const mount of agentMounts) ensureMount(container, pointer('spec', list, index), mount, ops);
  }

  // 3. Volumes (only those missing) and, unless present, the sidecar itself, its annotations and the seal.
  const volumes: V1Volume[] = [agentIdentityVolume(settings, kubernetesResource)];
  if (alreadyInjected) {
    const attestation = sidecarIsolationProblems(pod);
    if (attestation.length > 0) {
      if (strict) return deny(403, `chaperone strict mode refuses this pod: ${attestation.join('; ')}`);
      warnings.push(`chaperone: this pod's sidecar cannot be attested (${attestation.join('; ')})`);
    }
    ensureVolumes(pod, volumes, automountVolumes, ops);
    return { kind: 'patch', patch: ops, warnings };
  }
  const annotations: Record<string, string> = {};
  const configYaml = renderSidecarConfigYaml({
    namespace,
    podName: pod.metadata?.name ?? '',
    resources: served,
    settings,
    operatorKeys: input.operatorKeys,
    ...(input.signerCertification === undefined ? {} : { signerCertification: input.signerCertification }),
    ...(input.tokenExchange === undefined ? {} : { tokenExchange: input.tokenExchange }),
    ...(input.operatorEndpoint === undefined ? {} : { operatorEndpoint: input.operatorEndpoint }),
    evidenceStore,
  });
  annotations[ANNOTATION_SIDECAR_CONFIG] = configYaml;
  if (kubernetesResource) {
    annotations[ANNOTATION_AGENT_KUBECONFIG] = renderAgentKubeconfig(namespace, kubernetesResources);
  }
  annotations[ANNOTATION_INJECTED] = injectionHash(annotations, settings);
  const sidecarVolumes = [
    configVolume(),
    credentialsVolume(served),
    sidecarApiAccessVolume(settings),
    auditVolume(settings),
    ...(kubernetesResource ? [loopbackTlsVolume()] : []),
    ...(evidenceStore ? [{ name: VOLUME_EVIDENCE_CREDENTIALS, emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } }] : []),
  ];
  volumes.push(...sidecarVolumes);
  const sidecar = sidecarContainer(settings, {
    deliveredCredentials: delivered.length > 0,
    loopbackTls: kubernetesResource,
    evidenceStore,
  });
  // The seal: what the operator rendered, exactly as the API server stores it (the renderer writes the
  // server's defaults out), signed with the operator's key. Everything that trusts a sidecar checks it.
  annotations[SEAL_ANNOTATION] = sealPod(
    { metadata: { annotations }, spec: { containers: [], initContainers: [sidecar], volumes: sidecarVolumes } },
    namespace,
    input.signer,
  );

  // Whether the finished pod will be attested: no other container may reach the sidecar.
  const attestation = sidecarIsolationProblems(predictInjected(pod, automountVolumes, volumes, sidecar));
  if (attestation.length > 0) {
    if (strict) return deny(403, `chaperone strict mode refuses this pod: ${attestation.join('; ')}`);
    warnings.push(
      `chaperone: this pod's sidecar cannot be attested (${attestation.join('; ')}); the operator will not certify its key, accept its Sessions or deliver credentials to it`,
    );
  }

  ensureVolumes(pod, volumes, automountVolumes, ops);
  ensureAnnotations(pod, annotations, ops);
  // First, so the proxy is up (startup probe) before any agent init container runs.
  ops.push(
    pod.spec?.initContainers === undefined
      ? { op: 'add', path: '/spec/initContainers', value: [sidecar] }
      : { op: 'add', path: '/spec/initContainers/0', value: sidecar },
  );
  return { kind: 'patch', patch: ops, warnings };
}

/**
 * Where the records of the pod's sessions go (ProtectedResource spec.audit.records): unset means the evidence
 * store when the installation has one and the namespace is strict (its writer credential is delivered to
 * attested sidecars only), Session objects otherwise. The sidecar keeps one trail, so the resources of one
 * pod must agree; a resource that asks for the store where it cannot be had is refused, never downgraded.
 */
export function recordStore(
  resources: readonly ProtectedResource[],
  settings: InjectionSettings,
  strict: boolean,
): { store: AuditRecordStore } | { problem: string; code: number } {
  const fallback: AuditRecordStore =
    settings.evidenceStore !== undefined && strict ? 'EvidenceStore' : 'SessionObjects';
  const chosen = new Map<AuditRecordStore, string[]>();
  for (const r of resources) {
    const store = r.spec.audit.records ?? fallback;
    chosen.set(store, [...(chosen.get(store) ?? []), r.metadata.name ?? '']);
  }
  if (chosen.size > 1) {
    const list = [...chosen].map(([store, names]) => `${names.join(', ')}: ${store}`).join('; ');
    return {
      code: 400,
      problem: `the pod's ProtectedResources keep their records in different places (${list}); a sidecar keeps one trail`,
    };
  }
  const store = [...chosen.keys()][0] ?? 'SessionObjects';
  if (store === 'EvidenceStore') {
    const names = chosen.get(store)?.join(', ') ?? '';
    if (settings.evidenceStore === undefined) {
      return {
        code: 400,
        problem: `ProtectedResource ${names} keeps its records in the evidence store (spec.audit.records), and the operator has none configured`,
      };
    }
    if (!strict) {
      return {
        code: 403,
        problem: `ProtectedResource ${names} keeps its records in the evidence store, whose writer credential is delivered only into strict namespaces (label ${LABEL_STRICT}=true)`,
      };
    }
  }
  return { store };
}

/** The pod as it will be stored, as far as the attestation checks look: automount gone, volumes and sidecar in. */
function predictInjected(pod: V1Pod, automount: ReadonlySet<string>, volumes: V1Volume[], sidecar: V1Container): V1Pod {
  const predicted = structuredClone(pod);
  predicted.spec ??= { containers: [] };
  const spec = predicted.spec;
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
    c.volumeMounts = (c.volumeMounts ?? []).filter((m) => !automount.has(m.name));
  }
  spec.initContainers = [sidecar, ...(spec.initContainers ?? [])];
  spec.volumes = [...(spec.volumes ?? []).filter((v) => !automount.has(v.name)), ...volumes];
  spec.automountServiceAccountToken = false;
  return predicted;
}

/** Env of agent containers. The first postgres resource gets the libpq variables; every one gets a CHAPERONE_ entry. */
export function renderAgentEnv(resources: readonly ProtectedResource[]): V1EnvVar[] {
  const env: V1EnvVar[] = [{ name: 'CHAPERONE_TOKEN_FILE', value: `${AGENT_IDENTITY_DIR}/${AGENT_TOKEN_FILE}` }];
  env.push({
    name: 'CHAPERONE_RESOURCES',
    value: resources.map((r) => `${r.metadata.name ?? ''}=127.0.0.1:${String(listenPortOf(r))}`).join(','),
  });
  const pg = resources.find((r) => r.spec.type === 'postgres');
  if (pg !== undefined) {
    env.push(
      { name: 'PGHOST', value: '127.0.0.1' },
      { name: 'PGPORT', value: String(listenPortOf(pg)) },
      // The hop is loopback inside the pod; the sidecar speaks TLS upstream.
      { name: 'PGSSLMODE', value: 'disable' },
      { name: 'PGUSER', value: 'agent' },
      { name: 'PGDATABASE', value: pg.spec.endpoint.database ?? '' },
    );
  }
  if (resources.some((r) => r.spec.type === 'kubernetes')) {
    env.push({ name: 'KUBECONFIG', value: `${AGENT_IDENTITY_DIR}/${AGENT_KUBECONFIG_FILE}` });
  }
  return env;
}

function injectionHash(annotations: Record<string, string>, settings: InjectionSettings): string {
  const h = createHash('sha256');
  h.update(settings.image).update('\0');
  for (const key of Object.keys(annotations).sort())
    h.update(key)
      .update('\0')
      .update(annotations[key] ?? '')
      .update('\0');
  return h.digest('hex').slice(0, 16);
}

function removeAutomountVolumes(pod: V1Pod, names: ReadonlySet<string>, ops: JsonPatchOperation[]): void {
  if (names.size === 0) return;
  for (const list of ['initContainers', 'containers'] as const) {
    for (const [ci, c] of (pod.spec?.[list] ?? []).entries()) {
      const mounts = c.volumeMounts ?? [];
      for (let mi = mounts.length - 1; mi >= 0; mi--) {
        if (names.has(mounts[mi]?.name ?? ''))
          ops.push({ op: 'remove', path: pointer('spec', list, ci, 'volumeMounts', mi) });
      }
    }
  }
  const volumes = pod.spec?.volumes ?? [];
  for (let vi = volumes.length - 1; vi >= 0; vi--) {
    if (names.has(volumes[vi]?.name ?? '')) ops.push({ op: 'remove', path: pointer('spec', 'volumes', vi) });
  }
}

function ensureEnv(
  container: V1Container,
  base: string,
  desired: readonly V1EnvVar[],
  ops: JsonPatchOperation[],
): void {
  const existing = container.env;
  if (existing === undefined) {
    ops.push({ op: 'add', path: `${base}/env`, value: desired });
    return;
  }
  for (const want of desired) {
    const i = existing.findIndex((e) => e.name === want.name);
    const have = existing[i];
    if (have === undefined) ops.push({ op: 'add', path: `${base}/env/-`, value: want });
    else if (have.value !== want.value || have.valueFrom !== undefined) {
      ops.push({ op: 'replace', path: `${base}/env/${String(i)}`, value: want });
    }
  }
}

function ensureMount(container: V1Container, base: string, mount: V1VolumeMount, ops: JsonPatchOperation[]): void {
  const mounts = container.volumeMounts;
  if (mounts?.some((m) => m.name === mount.name) === true) return;
  // An array emptied by the removals above still exists, so appending is right then too.
  if (mounts === undefined) ops.push({ op: 'add', path: `${base}/volumeMounts`, value: [mount] });
  else ops.push({ op: 'add', path: `${base}/volumeMounts/-`, value: mount });
}

function ensureVolumes(pod: V1Pod, wanted: V1Volume[], removed: ReadonlySet<string>, ops: JsonPatchOperation[]): void {
  const existing = pod.spec?.volumes;
  const missing = wanted.filter((w) => existing?.some((v) => v.name === w.name && !removed.has(v.name)) !== true);
  if (missing.length === 0) return;
  if (existing === undefined) {
    ops.push({ op: 'add', path: '/spec/volumes', value: missing });
    return;
  }
  for (const v of missing) ops.push({ op: 'add', path: '/spec/volumes/-', value: v });
}

function ensureAnnotations(pod: V1Pod, wanted: Record<string, string>, ops: JsonPatchOperation[]): void {
  const existing = pod.metadata?.annotations;
  if (Object.keys(wanted).length === 0) return;
  if (existing === undefined) {
    ops.push({ op: 'add', path: '/metadata/annotations', value: wanted });
    return;
  }
  for (const [key, value] of Object.entries(wanted)) {
    if (existing[key] !== value) ops.push({ op: 'add', path: pointer('metadata', 'annotations', key), value });
  }
}

function fieldOfAnnotation(key: string): string {
  return `metadata.annotations['${key}']`;
}

function agentIdentityVolume(settings: InjectionSettings, withKubeconfig: boolean): V1Volume {
  const sources: V1VolumeProjection[] = [
    {
      serviceAccountToken: {
        audience: AGENT_TOKEN_AUDIENCE,
        expirationSeconds: settings.tokenExpirationSeconds,
        path: AGENT_TOKEN_FILE,
      },
    },
  ];
  if (withKubeconfig) {
    sources.push({
      downwardAPI: {
        items: [
          { path: AGENT_KUBECONFIG_FILE, fieldRef: { fieldPath: fieldOfAnnotation(ANNOTATION_AGENT_KUBECONFIG) } },
        ],
      },
    });
  }
  return { name: VOLUME_AGENT_IDENTITY, projected: { sources, defaultMode: 0o444 } };
}

function configVolume(): V1Volume {
  return {
    name: VOLUME_CONFIG,
    downwardAPI: {
      items: [
        {
          path: SIDECAR_CONFIG_FILE,
          fieldRef: { apiVersion: 'v1', fieldPath: fieldOfAnnotation(ANNOTATION_SIDECAR_CONFIG) },
        },
      ],
      defaultMode: 0o444,
    },
  };
}

function credentialsVolume(resources: readonly ProtectedResource[]): V1Volume {
  // Delivered credentials are written by the sidecar itself into memory; nothing comes from a Secret here.
  if (resources.some(isDelivered))
    return { name: VOLUME_CREDENTIALS, emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } };
  const sources: V1VolumeProjection[] = [];
  for (const r of resources) {
    const name = r.metadata.name ?? '';
    const paths = credentialPaths(name);
    const ref = r.spec.credentialSecretRef;
    if (ref !== undefined) {
      // Kubernetes and HTTP credentials are one bearer token or header value (the password key); a username
      // key is not asked for (a projected Secret item whose key is missing keeps the pod from starting).
      const items =
        r.spec.type === 'postgres'
          ? [
              { key: ref.usernameKey, path: paths.username },
              { key: ref.passwordKey, path: paths.password },
            ]
          : [{ key: ref.passwordKey, path: paths.password }];
      sources.push({ secret: { name: ref.name, items } });
    }
    const readOnly = r.spec.readOnlyCredentialSecretRef;
    if (readOnly !== undefined) {
      sources.push({
        secret: {
          name: readOnly.name,
          items: [
            { key: readOnly.usernameKey, path: paths.readOnlyUsername },
            { key: readOnly.passwordKey, path: paths.readOnlyPassword },
          ],
        },
      });
    }
    const maskingKey = r.spec.maskingKeySecretRef;
    if (maskingKey !== undefined) {
      sources.push({ secret: { name: maskingKey.name, items: [{ key: maskingKey.key, path: paths.maskingKey }] } });
    }
    const ca = r.spec.tls?.caSecretRef;
    if (ca !== undefined) sources.push({ secret: { name: ca.name, items: [{ key: ca.key, path: paths.ca }] } });
  }
  // The sidecar runs as a non-root UID without a pod-wide fsGroup, so files must be world-readable inside
  // the one container that mounts them; no agent container mounts this volume.
  return { name: VOLUME_CREDENTIALS, projected: { sources, defaultMode: 0o444 } };
}

/** The sidecar's loopback certificates (public), in memory: written at every start, read by agents. */
function loopbackTlsVolume(): V1Volume {
  return { name: VOLUME_LOOPBACK_TLS, emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } };
}

function sidecarApiAccessVolume(settings: InjectionSettings): V1Volume {
  return {
    name: VOLUME_SIDECAR_API_ACCESS,
    projected: {
      defaultMode: 0o444,
      sources: [
        { serviceAccountToken: { expirationSeconds: settings.tokenExpirationSeconds, path: 'token' } },
        { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
        {
          downwardAPI: {
            items: [{ path: 'namespace', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } }],
          },
        },
      ],
    },
  };
}

/**
 * The audit spool. An emptyDir survives container restarts (the spool replays what was not yet in a
 * Session), not the pod. Its sizeLimit is 25 % above the spool bound, which counts only unacknowledged
 * records: a partly acknowledged segment (at most 1/8 of the bound), the signing key and small state files
 * come on top, and exceeding the limit gets the pod evicted.
 */
function auditVolume(settings: InjectionSettings): V1Volume {
  const mebibytes = Math.ceil((settings.auditSpoolMaxBytes * 1.25) / (1024 * 1024));
  return { name: VOLUME_AUDIT, emptyDir: { sizeLimit: `${String(mebibytes)}Mi` } };
}

/**
 * The sidecar container. Every field the API server would default is written out, so that the stored
 * container equals the rendered one byte for byte (JCS) and the seal over it can be checked as is.
 */
export function sidecarContainer(
  settings: InjectionSettings,
  options: {
    readonly deliveredCredentials?: boolean;
    readonly loopbackTls?: boolean;
    readonly evidenceStore?: boolean;
  } = {},
): V1Container {
  const probe = {
    httpGet: { path: '/healthz', port: settings.metricsPort, scheme: 'HTTP' },
    timeoutSeconds: 1,
    successThreshold: 1,
  };
  return {
    name: SIDECAR_CONTAINER,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    args: ['--config', SIDECAR_CONFIG_PATH],
    env: Object.entries(SIDECAR_POD_ENV).map(([name, fieldPath]) => ({
      name,
      valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath } },
    })),
    restartPolicy: 'Always',
    ports: [{ name: 'chaperone-mtr', containerPort: settings.metricsPort, protocol: 'TCP' }],
    startupProbe: { ...probe, periodSeconds: 1, failureThreshold: 60 },
    readinessProbe: { ...probe, periodSeconds: 5, failureThreshold: 3 },
    // /healthz answers whenever the event loop runs: this restarts only a sidecar wedged for a minute (its
    // agent's connections are lost then anyway; the spool keeps the records). Generous, so that a loaded node
    // does not restart a working proxy.
    livenessProbe: { ...probe, timeoutSeconds: 5, periodSeconds: 10, failureThreshold: 6 },
    resources: settings.resources,
    terminationMessagePath: '/dev/termination-log',
    terminationMessagePolicy: 'File',
    securityContext: {
      runAsNonRoot: true,
      runAsUser: settings.runAsUser,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    volumeMounts: [
      { name: VOLUME_CONFIG, mountPath: SIDECAR_CONFIG_PATH, subPath: SIDECAR_CONFIG_FILE, readOnly: true },
      // Writable only when the sidecar writes the credentials the operator delivers.
      {
        name: VOLUME_CREDENTIALS,
        mountPath: SIDECAR_CREDENTIALS_DIR,
        // (false is the API server's zero value: it is not stored, so it is not rendered either.)
        ...(options.deliveredCredentials === true ? {} : { readOnly: true }),
      },
      { name: VOLUME_SIDECAR_API_ACCESS, mountPath: SIDECAR_API_ACCESS_DIR, readOnly: true },
      { name: VOLUME_AUDIT, mountPath: SIDECAR_AUDIT_DIR },
      ...(options.loopbackTls === true ? [{ name: VOLUME_LOOPBACK_TLS, mountPath: AGENT_LOOPBACK_TLS_DIR }] : []),
      ...(options.evidenceStore === true
        ? [{ name: VOLUME_EVIDENCE_CREDENTIALS, mountPath: SIDECAR_EVIDENCE_DIR }]
        : []),
    ],
  };
}
