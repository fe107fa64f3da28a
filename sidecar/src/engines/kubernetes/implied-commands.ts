// The commands a request is also decided as, beyond its own RequestInfo, because it does what they name
// (docs/policy.md, "Kubernetes"). Its decision is the strictest of them all: a deny or approve rule on what
// the request really does cannot be passed by spelling it as something an allow rule covers. Pure.
//
// - nodes/proxy reaches the kubelet's API, whose pod endpoints act on a pod's containers: RBAC's
//   `get nodes/proxy` lets a WebSocket GET to /exec/... run a command in any pod on the node. Such a request
//   is also the pod command it runs (`create pods/exec` in the pod's namespace, ...).
// - The Namespace object is cluster-scoped, but the API server's RequestInfo puts /api/v1/namespaces/<ns> in
//   namespace <ns>, so a namespace-wide rule would cover deleting the namespace or relabelling it (lifting
//   its pod-security level). Such a request is also decided with namespace "" (as any cluster-scoped one).

import type { KubernetesCommand } from '@chaperone/api';

export interface ImpliedCommand {
  readonly command: KubernetesCommand;
  /** Why the request is also this command (the decision's first reason when it is the strictest). */
  readonly why: string;
}

/**
 * The kubelet's endpoints that act on one pod's containers (pkg/kubelet/server/server.go), each path
 * `/<endpoint>/<namespace>/<pod>/...`, with the pod subresource nearest in effect: run (a command, its
 * output in the answer) and checkpoint (a copy of the container's memory) are exec. Matched in any case
 * (the kubelet's router is case-sensitive; reading more spellings only refuses more).
 */
const KUBELET_POD_ENDPOINTS: ReadonlyMap<string, { readonly verb: string; readonly subresource: string }> = new Map([
  ['exec', { verb: 'create', subresource: 'exec' }],
  ['run', { verb: 'create', subresource: 'exec' }],
  ['checkpoint', { verb: 'create', subresource: 'exec' }],
  ['attach', { verb: 'create', subresource: 'attach' }],
  ['portforward', { verb: 'create', subresource: 'portforward' }],
  ['containerlogs', { verb: 'get', subresource: 'log' }],
]);

/**
 * The commands `command` also is. `parts` are its path segments after the namespace (RequestInfo.parts),
 * from which the kubelet path of a nodes/proxy request is read; a self-review has none.
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
  if (command.resource === 'nodes' && parts[0] === 'nodes') {
    // /nodes/<name>/proxy/<kubelet path> (the subresource), or /proxy/nodes/<name>/<kubelet path> (the
    // legacy verb, its prefix already taken off the parts).
    const kubeletPath =
      command.subresource === 'proxy' ? parts.slice(3) : command.verb === 'proxy' ? parts.slice(2) : undefined;
    const endpoint = KUBELET_POD_ENDPOINTS.get((kubeletPath?.[0] ?? '').toLowerCase());
    if (kubeletPath !== undefined && endpoint !== undefined) {
      const namespace = kubeletPath[1] ?? '';
      const pod = kubeletPath[2] ?? '';
      implied.push({
        command: {
          type: 'kubernetes',
          verb: endpoint.verb,
          apiGroup: '',
          resource: 'pods',
          subresource: endpoint.subresource,
          namespace,
          name: pod,
          nonResourcePath: '',
        },
        why: `nodes/proxy to the kubelet's ${kubeletPath[0] ?? ''} of pod ${namespace}/${pod}: decided as ${endpoint.verb} pods/${endpoint.subresource}`,
      });
    }
  }
  return implied;
}
