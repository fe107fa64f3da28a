// The commands a request is also decided as, beyond its own RequestInfo, because it does what they name
// (docs/policy.md, "Kubernetes"). Its decision is the strictest of them all: a deny or approve rule on what
// the request really does cannot be passed by spelling it as something an allow rule covers. Pure.
//
// - A proxy (pods, services, nodes) is also decided with the plain name of its target, and nodes/proxy as
//   what the kubelet path does (kubelet-paths.ts): RBAC's `get nodes/proxy` lets a WebSocket GET to
//   /exec/... run a command in any pod on the node, and /pods return every pod spec on it.
// - The Namespace object is cluster-scoped, but the API server's RequestInfo puts /api/v1/namespaces/<ns> in
//   namespace <ns>, so a namespace-wide rule would cover deleting the namespace or relabelling it (lifting
//   its pod-security level). Such a request is also decided with namespace "" (as any cluster-scoped one).

import type { KubernetesCommand } from '@chaperone/api';
import { proxyCommands, type ImpliedCommand } from './kubelet-paths.ts';

export type { ImpliedCommand } from './kubelet-paths.ts';

/**
 * The commands `command` also is. `parts` are its path segments after the namespace (RequestInfo.parts),
 * from which the path of a proxy request is read; a self-review has none.
 */
export function impliedCommands(command: KubernetesCommand, parts: readonly string[] = []): ImpliedCommand[] {
  const implied: ImpliedCommand[] = [];
  if (command.nonResourcePath !== '' || command.apiGroup !== '') return implied;
  if (command.resource === 'namespaces' && command.namespace !== '') {
    implied.push({
      command: { ...command, namespace: '' },
      why: 'the Namespace object is cluster-scoped: decided as outside the namespace it names',
    });
  }
  implied.push(...proxyCommands(command, parts));
  return implied;
}
