// What a pod may contain so that no container of it can reach another container's files, memory or
// tokens: allow-lists, not deny-lists (docs/injection.md, "Sealed pods"). The lists follow the Kubernetes
// Pod Security Standards: the volume types of the "restricted" profile and the capabilities and security
// context values of the "baseline" profile. Pure functions over the pod as the AdmissionReview carries it.
import type { V1Container, V1EphemeralContainer, V1Pod, V1Volume } from '@kubernetes/client-node';

/** Volume sources a pod may use (PSS restricted, plus `image`): none of them reaches the node's files. */
export const ALLOWED_VOLUME_SOURCES: readonly string[] = [
  'configMap',
  'csi',
  'downwardAPI',
  'emptyDir',
  'ephemeral',
  'image',
  'persistentVolumeClaim',
  'projected',
  'secret',
];

/** Capabilities a container may add (PSS baseline): the runtime's default set, nothing that crosses containers. */
export const ALLOWED_CAPABILITIES: readonly string[] = [
  'AUDIT_WRITE',
  'CHOWN',
  'DAC_OVERRIDE',
  'FOWNER',
  'FSETID',
  'KILL',
  'MKNOD',
  'NET_BIND_SERVICE',
  'SETFCAP',
  'SETGID',
  'SETPCAP',
  'SETUID',
  'SYS_CHROOT',
];

export type AnyContainer = V1Container | V1EphemeralContainer;

/** The volume source fields set on `volume` (normally one). */
export function volumeSources(volume: V1Volume): string[] {
  return Object.entries(volume)
    .filter(([key, value]) => key !== 'name' && value !== undefined && value !== null)
    .map(([key]) => key);
}

/** Volumes whose source is not on the allow-list (hostPath, gitRepo, nfs, iscsi, ...). */
export function volumeProblems(pod: V1Pod): string[] {
  const problems: string[] = [];
  for (const v of pod.spec?.volumes ?? []) {
    const sources = volumeSources(v);
    const refused = sources.filter((s) => !ALLOWED_VOLUME_SOURCES.includes(s));
    if (sources.includes('hostPath')) {
      problems.push(`volume ${v.name} is a hostPath (node files, including other pods' volumes)`);
    } else if (refused.length > 0) {
      problems.push(
        `volume ${v.name} uses ${refused.join(', ')}; allowed volume types are ${ALLOWED_VOLUME_SOURCES.join(', ')}`,
      );
    }
  }
  return problems;
}

/** Pod-level settings that share a namespace with the node or between containers. */
export function namespaceSharingProblems(pod: V1Pod): string[] {
  const spec = pod.spec;
  const problems: string[] = [];
  if (spec?.shareProcessNamespace === true) {
    problems.push('shareProcessNamespace is true (agents could read the sidecar credentials through /proc)');
  }
  if (spec?.hostPID === true)
    problems.push('hostPID is true (agents could read the sidecar credentials through /proc)');
  if (spec?.hostIPC === true) problems.push('hostIPC is true');
  if (spec?.hostNetwork === true) {
    problems.push("hostNetwork is true (the sidecar's loopback listeners would be reachable from the whole node)");
  }
  if (spec?.securityContext?.windowsOptions?.hostProcess === true) problems.push('the pod is a Windows host process');
  return problems;
}

const bare = (cap: string) => cap.toUpperCase().replace(/^CAP_/, '');

/**
 * A container's security context against the baseline allow-list: not privileged, only the default
 * capabilities, default /proc mount, no host process, no unconfined seccomp or AppArmor profile.
 * `label` names the container in messages ("container agent", "ephemeral container debugger").
 */
export function containerSecurityProblems(container: AnyContainer, label: string): string[] {
  const sc = container.securityContext;
  const problems: string[] = [];
  if (sc?.privileged === true) problems.push(`${label} is privileged`);
  for (const cap of sc?.capabilities?.add ?? []) {
    if (!ALLOWED_CAPABILITIES.includes(bare(cap))) {
      problems.push(`${label} adds capability ${cap} (allowed: ${ALLOWED_CAPABILITIES.join(', ')})`);
    }
  }
  if (sc?.procMount !== undefined && sc.procMount !== 'Default')
    problems.push(`${label} uses procMount ${sc.procMount}`);
  if (sc?.windowsOptions?.hostProcess === true) problems.push(`${label} is a Windows host process`);
  if (sc?.seccompProfile?.type === 'Unconfined') problems.push(`${label} runs without seccomp (Unconfined)`);
  if (sc?.appArmorProfile?.type === 'Unconfined') problems.push(`${label} runs without AppArmor (Unconfined)`);
  return problems;
}

/** Every container of the pod with its list and a label for messages. */
export function everyContainer(
  pod: V1Pod,
): { list: 'initContainers' | 'containers' | 'ephemeralContainers'; container: AnyContainer; label: string }[] {
  return [
    ...(pod.spec?.initContainers ?? []).map((c) => ({
      list: 'initContainers' as const,
      container: c,
      label: `container ${c.name}`,
    })),
    ...(pod.spec?.containers ?? []).map((c) => ({
      list: 'containers' as const,
      container: c,
      label: `container ${c.name}`,
    })),
    ...(pod.spec?.ephemeralContainers ?? []).map((c) => ({
      list: 'ephemeralContainers' as const,
      container: c,
      label: `ephemeral container ${c.name}`,
    })),
  ];
}
