// The operator's seal over an injected sidecar, and the checks that make a pod "attested": its sidecar is
// exactly what the injector rendered (the seal verifies against the operator's key and the container,
// its volumes and the injector's annotations still hash to the sealed digest), and no other container of
// the pod can reach the sidecar's files, process or tokens. Certification, Session admission, the
// sidecars' RoleBinding, the Session proxy and credential delivery all ask `attestationProblems`; the
// webhooks refuse what would break it. docs/audit.md ("Trust model") and docs/injection.md ("Sealed pods").
import type { V1Container, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { JWK } from 'jose';
import {
  jcs,
  SEAL_ANNOTATION,
  podSealDigest,
  signPodSeal,
  verifyPodSeal,
  type SealedParts,
  type StatementSigner,
} from '@chaperone/api';
import {
  AGENT_TOKEN_AUDIENCE,
  ANNOTATION_AGENT_KUBECONFIG,
  ANNOTATION_INJECTED,
  ANNOTATION_SIDECAR_CONFIG,
  SIDECAR_CONTAINER,
  VOLUME_AGENT_IDENTITY,
  VOLUME_AUDIT,
  VOLUME_CONFIG,
  VOLUME_CREDENTIALS,
  VOLUME_EVIDENCE_CREDENTIALS,
  VOLUME_LOOPBACK_TLS,
  VOLUME_POLICIES,
  VOLUME_SIDECAR_API_ACCESS,
} from './constants.ts';
import {
  containerSecurityProblems,
  everyContainer,
  type AnyContainer,
  namespaceSharingProblems,
  volumeProblems,
} from './pod-security.ts';

export type PublicKeys = readonly (JWK & { kid?: string })[];

/** Annotations only the injector writes; a pod that brings its own is refused unless its seal verifies. */
export const INJECTOR_ANNOTATIONS: readonly string[] = [
  ANNOTATION_INJECTED,
  ANNOTATION_SIDECAR_CONFIG,
  ANNOTATION_AGENT_KUBECONFIG,
  SEAL_ANNOTATION,
];
/** Volume names only the injector creates. */
export const INJECTOR_VOLUMES: readonly string[] = [
  VOLUME_CONFIG,
  VOLUME_CREDENTIALS,
  VOLUME_POLICIES,
  VOLUME_SIDECAR_API_ACCESS,
  VOLUME_AGENT_IDENTITY,
  VOLUME_AUDIT,
  VOLUME_LOOPBACK_TLS,
  VOLUME_EVIDENCE_CREDENTIALS,
];

/** Names the pod uses that belong to the injector: the sidecar container, its volumes and annotations. */
export function injectorNamesIn(pod: V1Pod): string[] {
  const found: string[] = [];
  for (const { container, label } of everyContainer(pod)) {
    if (container.name === SIDECAR_CONTAINER) found.push(label);
  }
  for (const v of pod.spec?.volumes ?? []) if (INJECTOR_VOLUMES.includes(v.name)) found.push(`volume ${v.name}`);
  for (const key of Object.keys(pod.metadata?.annotations ?? {})) {
    if (INJECTOR_ANNOTATIONS.includes(key)) found.push(`annotation ${key}`);
  }
  return found;
}

/** The one sidecar container (an init container), or why there is not exactly one. */
export function findSidecar(pod: V1Pod): { container: V1Container } | { problem: string } {
  const all = everyContainer(pod).filter((c) => c.container.name === SIDECAR_CONTAINER);
  if (all.length === 0) return { problem: `the pod has no ${SIDECAR_CONTAINER}` };
  if (all.length > 1) return { problem: `the pod has ${String(all.length)} containers named ${SIDECAR_CONTAINER}` };
  const [only] = all;
  if (only?.list !== 'initContainers') return { problem: `${SIDECAR_CONTAINER} is not an init container` };
  return { container: only.container };
}

/**
 * What the seal covers: the sidecar container without resources (in-place resize may change them), the
 * volumes it mounts (sorted by name) and the injector's annotations. Undefined when there is no single
 * sidecar or it mounts a volume the pod does not have.
 */
export function sealedParts(pod: V1Pod, sidecar: V1Container): SealedParts | undefined {
  const { resources: _resources, resizePolicy: _resizePolicy, ...container } = sidecar;
  const volumesByName = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  const names = [...new Set((sidecar.volumeMounts ?? []).map((m) => m.name))].sort();
  const volumes: V1Volume[] = [];
  for (const name of names) {
    const v = volumesByName.get(name);
    if (v === undefined) return undefined;
    volumes.push(v);
  }
  const annotations: Record<string, string> = {};
  for (const key of [ANNOTATION_SIDECAR_CONFIG, ANNOTATION_AGENT_KUBECONFIG]) {
    const value = pod.metadata?.annotations?.[key];
    if (value !== undefined) annotations[key] = value;
  }
  // A JSON round trip: client-node model objects and plain JSON then hash alike.
  return JSON.parse(JSON.stringify({ container, volumes, annotations })) as SealedParts;
}

/** Signs the seal of a pod the injector has just completed (its sidecar, volumes and annotations in place). */
export function sealPod(pod: V1Pod, namespace: string, signer: StatementSigner): string {
  const sidecar = findSidecar(pod);
  if ('problem' in sidecar) throw new Error(`cannot seal: ${sidecar.problem}`);
  const parts = sealedParts(pod, sidecar.container);
  if (parts === undefined) throw new Error('cannot seal: the sidecar mounts a volume the pod does not have');
  return signPodSeal({ namespace, digest: podSealDigest(parts) }, signer);
}

/** Why the pod's sidecar is not the one the operator sealed (empty when it is). */
export function sealProblems(pod: V1Pod, namespace: string, keys: PublicKeys): string[] {
  const jws = pod.metadata?.annotations?.[SEAL_ANNOTATION];
  if (jws === undefined) return [`the pod carries no operator seal (annotation ${SEAL_ANNOTATION})`];
  const sidecar = findSidecar(pod);
  if ('problem' in sidecar) return [sidecar.problem];
  let seal;
  try {
    seal = verifyPodSeal(jws, keys);
  } catch (err) {
    return [`the seal does not verify with the operator's key: ${(err as Error).message}`];
  }
  if (seal.namespace !== namespace) return [`the seal was issued for namespace ${seal.namespace}, not ${namespace}`];
  const parts = sealedParts(pod, sidecar.container);
  if (parts === undefined) return [`${SIDECAR_CONTAINER} mounts a volume the pod does not have`];
  if (podSealDigest(parts) !== seal.digest) {
    return [
      `${SIDECAR_CONTAINER}, its volumes or the injector's annotations differ from what the operator rendered and sealed`,
    ];
  }
  return [];
}

/** Projected service-account token audiences of a volume ('' for the API server's own). */
function tokenAudiences(volume: V1Volume): string[] {
  return (volume.projected?.sources ?? [])
    .filter((s) => s.serviceAccountToken !== undefined)
    .map((s) => s.serviceAccountToken?.audience ?? '');
}

/**
 * Whether any container but the sidecar could reach the sidecar's files, process or tokens, or hold a
 * token other than the agents' audience-bound one (empty when none can). Synchronous; with the seal check
 * it decides whether the operator trusts the pod's sidecar.
 */
export function sidecarIsolationProblems(pod: V1Pod): string[] {
  const problems: string[] = [...namespaceSharingProblems(pod), ...volumeProblems(pod)];
  const sidecar = findSidecar(pod);
  if ('problem' in sidecar) return [sidecar.problem, ...problems];
  if (pod.spec?.automountServiceAccountToken !== false) {
    problems.push('automountServiceAccountToken is not false on a pod with the sidecar');
  }
  for (const { container, label } of everyContainer(pod)) {
    if (container !== sidecar.container) problems.push(...otherContainerProblems(pod, container, label));
  }
  return problems;
}

/**
 * Why one container other than the sidecar could reach the sidecar (its files, processes, tokens) or the
 * node, or hold a token other than the agents' audience-bound one. Empty when it cannot.
 */
export function otherContainerProblems(pod: V1Pod, container: AnyContainer, label: string): string[] {
  const problems = containerSecurityProblems(container, label);
  if ('targetContainerName' in container && container.targetContainerName === SIDECAR_CONTAINER) {
    problems.push(`${label} targets ${SIDECAR_CONTAINER} (it would share its processes and files)`);
  }
  const sidecar = findSidecar(pod);
  const sidecarVolumes = new Set('problem' in sidecar ? [] : (sidecar.container.volumeMounts ?? []).map((m) => m.name));
  const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  for (const mount of container.volumeMounts ?? []) {
    // The loopback certificates are public (the CA of the agents' kubeconfig); read-only, an agent can read
    // them and nothing else. Writable, it could plant a symlink the sidecar would write through.
    if (mount.name === VOLUME_LOOPBACK_TLS && mount.readOnly === true) continue;
    if (sidecarVolumes.has(mount.name)) {
      problems.push(`${label} mounts ${mount.name}, a volume of ${SIDECAR_CONTAINER}`);
      continue;
    }
    const volume = volumes.get(mount.name);
    const foreign = volume === undefined ? [] : tokenAudiences(volume).filter((a) => a !== AGENT_TOKEN_AUDIENCE);
    if (foreign.length > 0) {
      problems.push(
        `${label} mounts volume ${mount.name} with a service-account token for audience ${foreign
          .map((a) => (a === '' ? '(the API server)' : JSON.stringify(a)))
          .join(', ')}; agents may hold only the "${AGENT_TOKEN_AUDIENCE}" token`,
      );
    }
  }
  return problems;
}

/** Seal and isolation together: empty when the operator may trust this pod's sidecar. */
export function attestationProblems(pod: V1Pod, namespace: string, keys: PublicKeys): string[] {
  return [...sealProblems(pod, namespace, keys), ...sidecarIsolationProblems(pod)];
}

/** What an update changed that it may not change in an injected pod: the injector's annotations, the sidecar, its volumes. */
export function sealedPartsChanged(before: V1Pod, after: V1Pod): string[] {
  const changed: string[] = [];
  for (const key of INJECTOR_ANNOTATIONS) {
    if (before.metadata?.annotations?.[key] !== after.metadata?.annotations?.[key]) {
      changed.push(`annotation ${key} is set by the injector and cannot change`);
    }
  }
  const a = findSidecar(before);
  const b = findSidecar(after);
  if ('problem' in a) return changed;
  if ('problem' in b) return [...changed, `${SIDECAR_CONTAINER} cannot be removed or duplicated`];
  const partsBefore = sealedParts(before, a.container);
  const partsAfter = sealedParts(after, b.container);
  if (jcs(partsBefore?.container ?? null) !== jcs(partsAfter?.container ?? null)) {
    const imageBefore = a.container.image ?? '';
    const imageAfter = b.container.image ?? '';
    changed.push(
      imageBefore === imageAfter
        ? `${SIDECAR_CONTAINER} is sealed by the operator and cannot change`
        : `${SIDECAR_CONTAINER} is sealed by the operator: its image cannot change (${imageBefore} → ${imageAfter})`,
    );
  }
  if (jcs(partsBefore?.volumes ?? null) !== jcs(partsAfter?.volumes ?? null)) {
    changed.push(`the volumes of ${SIDECAR_CONTAINER} are sealed by the operator and cannot change`);
  }
  return changed;
}
