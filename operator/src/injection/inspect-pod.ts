// Read-only questions about a pod spec, shared by the injector and the validating webhook: which
// containers are agents, which volumes carry an API-server token or a target credential, what strict
// mode refuses. Pure functions over the pod as the AdmissionReview carries it.
import type { V1Container, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { ProtectedResource } from '@chaperone/api';
import { AGENT_TOKEN_AUDIENCE, ANNOTATION_RESOURCES, SIDECAR_CONTAINER } from './constants.ts';
import { containerSecurityProblems, namespaceSharingProblems, volumeProblems } from './pod-security.ts';

export type ContainerList = 'containers' | 'initContainers';

export interface AgentContainer {
  readonly list: ContainerList;
  readonly index: number;
  readonly container: V1Container;
}

/** Every container and init container except the sidecar: all of them are treated as agents. */
export function agentContainers(pod: V1Pod): AgentContainer[] {
  const out: AgentContainer[] = [];
  for (const list of ['initContainers', 'containers'] as const) {
    for (const [index, container] of (pod.spec?.[list] ?? []).entries()) {
      if (container.name !== SIDECAR_CONTAINER) out.push({ list, index, container });
    }
  }
  return out;
}

export function hasSidecar(pod: V1Pod): boolean {
  return [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].some(
    (c) => c.name === SIDECAR_CONTAINER,
  );
}

const RESOURCE_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** Names in the `chaperone.dev/resources` annotation, de-duplicated in order, or a message saying what is wrong. */
export function requestedResourceNames(pod: V1Pod): { names: string[] } | { error: string } {
  const raw = pod.metadata?.annotations?.[ANNOTATION_RESOURCES] ?? '';
  const names: string[] = [];
  for (const part of raw.split(',')) {
    const name = part.trim();
    if (name === '') continue;
    if (name.length > 253 || !RESOURCE_NAME.test(name)) {
      return { error: `annotation ${ANNOTATION_RESOURCES}: "${name}" is not a valid ProtectedResource name` };
    }
    if (!names.includes(name)) names.push(name);
  }
  return { names };
}

/** A projected service-account token for the API server itself (no audience, or an empty one). */
export function carriesApiServerToken(volume: V1Volume): boolean {
  return (volume.projected?.sources ?? []).some(
    (s) => s.serviceAccountToken !== undefined && (s.serviceAccountToken.audience ?? '') === '',
  );
}

/**
 * The volume the ServiceAccount admission plugin adds before webhooks run (`kube-api-access-<random>`):
 * the injector removes it, since it sets automountServiceAccountToken to false and gives the token to
 * the sidecar alone.
 */
export function isAutomountTokenVolume(volume: V1Volume): boolean {
  return volume.name.startsWith('kube-api-access-') && carriesApiServerToken(volume);
}

/** Names of the Secrets holding the targets' credentials and masking keys (no agent container may mount them). */
export function credentialSecretNames(resources: readonly ProtectedResource[]): Set<string> {
  const names = new Set<string>();
  for (const r of resources) {
    if (r.spec.credentialSecretRef !== undefined) names.add(r.spec.credentialSecretRef.name);
    if (r.spec.readOnlyCredentialSecretRef !== undefined) names.add(r.spec.readOnlyCredentialSecretRef.name);
    const key = r.spec.maskingKeySecretRef;
    if (key !== undefined && key.namespace === undefined) names.add(key.name); // else in the credential namespace
  }
  return names;
}

function secretsOfVolume(volume: V1Volume): string[] {
  const out: string[] = [];
  if (volume.secret?.secretName !== undefined) out.push(volume.secret.secretName);
  for (const s of volume.projected?.sources ?? []) if (s.secret?.name !== undefined) out.push(s.secret.name);
  return out;
}

/**
 * Ways an agent container could reach a target credential or an API-server token: mounts of such
 * volumes, env from such Secrets. `ignoreVolumes` lists volumes the injector is about to remove;
 * `checkApiTokens` is false for pods without the sidecar, which keep the ordinary automounted token.
 */
export function isolationViolations(
  pod: V1Pod,
  credentialSecrets: ReadonlySet<string>,
  ignoreVolumes: ReadonlySet<string> = new Set(),
  checkApiTokens = true,
): string[] {
  const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  const problems: string[] = [];
  for (const { container } of agentContainers(pod)) {
    for (const mount of container.volumeMounts ?? []) {
      const volume = volumes.get(mount.name);
      if (volume === undefined || ignoreVolumes.has(volume.name)) continue;
      const secrets = secretsOfVolume(volume).filter((s) => credentialSecrets.has(s));
      if (secrets.length > 0) {
        problems.push(
          `container ${container.name} mounts volume ${volume.name} with credential Secret ${secrets.join(', ')}; only ${SIDECAR_CONTAINER} may hold target credentials`,
        );
      }
      if (checkApiTokens && carriesApiServerToken(volume)) {
        problems.push(
          `container ${container.name} mounts volume ${volume.name} with an API-server service-account token; agents get only the audience "${AGENT_TOKEN_AUDIENCE}" token`,
        );
      }
    }
    for (const env of container.env ?? []) {
      const secret = env.valueFrom?.secretKeyRef?.name;
      if (secret !== undefined && credentialSecrets.has(secret)) {
        problems.push(`container ${container.name} reads credential Secret ${secret} into env ${env.name}`);
      }
    }
    for (const from of container.envFrom ?? []) {
      const secret = from.secretRef?.name;
      if (secret !== undefined && credentialSecrets.has(secret)) {
        problems.push(`container ${container.name} loads credential Secret ${secret} with envFrom`);
      }
    }
  }
  return problems;
}

/**
 * What strict mode refuses in any pod: every way one container of the pod could read another's files or
 * memory, or leave the pod's own network namespace (the sidecar's listeners are on the pod's loopback).
 * Allow-lists (pod-security.ts): volume types, capabilities and security-context values.
 */
export function strictViolations(pod: V1Pod): string[] {
  const problems = [...namespaceSharingProblems(pod), ...volumeProblems(pod)];
  for (const { container } of agentContainers(pod)) {
    problems.push(...containerSecurityProblems(container, `container ${container.name}`));
  }
  return problems;
}
