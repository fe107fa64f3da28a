// What a proxy subresource reaches (docs/policy.md, "Requests that are also another command"). Pure.
//
// - nodes/proxy reaches the kubelet's API with the API server's own, fully trusted client certificate. Each
//   kubelet path is read as what it does: a pod endpoint is the pod command (exec, attach, ...), `/pods`
//   is a read of every pod spec on the node (a cluster-wide list of pods), and the node endpoints are the
//   subresources the kubelet itself authorizes them as (`nodes/stats`, `nodes/metrics`, `nodes/log`, ...,
//   pkg/kubelet/server/auth.go). Any other kubelet path (`/debug/pprof`, `/debug/flags/v`, `/`) is
//   refused: the engine cannot say what it does.
// - The object a proxy names may carry a scheme and a port (`https:name:8443`, utilnet.SplitSchemeNamePort):
//   the request is also decided with the plain name, so a rule naming the pod, Service or node covers
//   every spelling of it.

import type { KubernetesCommand } from '@chaperone/api';

export interface ImpliedCommand {
  readonly command: KubernetesCommand;
  /** Why the request is also this command (the decision's first reason when it is the strictest). */
  readonly why: string;
}

/** A core-group pod command, filled in per kubelet path. */
const POD: KubernetesCommand = {
  type: 'kubernetes',
  verb: '',
  apiGroup: '',
  resource: 'pods',
  subresource: '',
  namespace: '',
  name: '',
  nonResourcePath: '',
};

/** Resources whose `proxy` subresource forwards the rest of the path to a backend. */
const PROXIED_RESOURCES: ReadonlySet<string> = new Set(['pods', 'services', 'nodes']);

/**
 * The kubelet's endpoints that act on one pod's containers (pkg/kubelet/server/server.go), each path
 * `/<endpoint>/<namespace>/<pod>/...`, with the pod subresource nearest in effect: run (a command, its
 * output in the answer) and checkpoint (a copy of the container's memory) are exec.
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
 * The node subresource the kubelet authorizes each of its paths as (its own RBAC vocabulary); pod
 * endpoints other than checkpoint are `nodes/proxy` there, which the request already is.
 */
const KUBELET_NODE_SUBRESOURCES: ReadonlyMap<string, string> = new Map([
  ['stats', 'stats'],
  ['metrics', 'metrics'],
  ['logs', 'log'],
  ['spec', 'spec'],
  ['configz', 'configz'],
  ['healthz', 'healthz'],
  ['pods', 'pods'],
  ['runningpods', 'pods'],
  ['checkpoint', 'checkpoint'],
]);

/** Kubelet paths whose answer holds the spec of every pod on the node (environment, volumes, images). */
const KUBELET_POD_LISTS: ReadonlySet<string> = new Set(['pods', 'runningpods']);

/**
 * The name in a proxy target `[scheme:]name[:port]` as the API server splits it (utilnet.SplitSchemeNamePort):
 * undefined when the API server would refuse it (an unknown scheme, more than three parts, an empty name).
 */
export function proxyTargetName(id: string): string | undefined {
  const parts = id.split(':');
  let name: string | undefined;
  let scheme = '';
  if (parts.length === 1 || parts.length === 2) name = parts[0];
  else if (parts.length === 3) {
    scheme = parts[0] ?? '';
    name = parts[1];
  }
  if (name === undefined || name === '') return undefined;
  if (scheme !== '' && scheme !== 'http' && scheme !== 'https') return undefined;
  return name;
}

/** The path a proxy request sends on (its segments), or undefined when `command` is no proxy. */
function proxiedPath(command: KubernetesCommand, parts: readonly string[]): readonly string[] | undefined {
  if (command.nonResourcePath !== '' || command.apiGroup !== '') return undefined;
  if (!PROXIED_RESOURCES.has(command.resource) || parts[0] !== command.resource) return undefined;
  // /<resource>/<name>/proxy/<path> (the subresource), or /proxy/<resource>/<name>/<path> (the legacy verb,
  // its prefix already taken off the parts).
  if (command.subresource === 'proxy') return parts.slice(3);
  if (command.verb === 'proxy') return parts.slice(2);
  return undefined;
}

/**
 * Why the API server must not see a proxy request at all, or undefined: a target the API server cannot
 * split, or a kubelet path that is none of the kubelet's known endpoints. `parts` are RequestInfo.parts;
 * a self-review has none and is never refused here.
 */
export function proxyRefusal(command: KubernetesCommand, parts: readonly string[]): string | undefined {
  const path = proxiedPath(command, parts);
  if (path === undefined) return undefined;
  if (proxyTargetName(command.name) === undefined) {
    return `proxy target ${JSON.stringify(command.name)} is not [scheme:]name[:port]`;
  }
  if (command.resource !== 'nodes') return undefined;
  const endpoint = (path[0] ?? '').toLowerCase();
  if (KUBELET_POD_ENDPOINTS.has(endpoint) || KUBELET_NODE_SUBRESOURCES.has(endpoint)) return undefined;
  return `nodes/proxy to the kubelet path /${path.join('/')}: not an endpoint the sidecar can decide (pod endpoints, pods, runningpods, stats, metrics, logs, spec, configz, healthz, checkpoint)`;
}

/** The commands a proxy request also is (see the head of this file); [] for anything else. */
export function proxyCommands(command: KubernetesCommand, parts: readonly string[]): ImpliedCommand[] {
  const path = proxiedPath(command, parts);
  if (path === undefined) return [];
  const implied: ImpliedCommand[] = [];
  const name = proxyTargetName(command.name) ?? command.name;
  if (name !== command.name) {
    implied.push({
      command: { ...command, name },
      why: `${command.resource}/proxy to ${command.name}: decided as the ${command.resource} named ${name}`,
    });
  }
  if (command.resource !== 'nodes') return implied;
  const endpoint = (path[0] ?? '').toLowerCase();
  const onPod = KUBELET_POD_ENDPOINTS.get(endpoint);
  if (onPod !== undefined) {
    const namespace = path[1] ?? '';
    const pod = path[2] ?? '';
    implied.push({
      command: { ...POD, verb: onPod.verb, subresource: onPod.subresource, namespace, name: pod },
      why: `nodes/proxy to the kubelet's ${path[0] ?? ''} of pod ${namespace}/${pod}: decided as ${onPod.verb} pods/${onPod.subresource}`,
    });
  }
  if (KUBELET_POD_LISTS.has(endpoint)) {
    implied.push({
      command: { ...POD, verb: 'list' },
      why: `nodes/proxy to the kubelet's /${path[0] ?? ''}: the spec of every pod on node ${name}, decided as list pods in every namespace`,
    });
  }
  const subresource = KUBELET_NODE_SUBRESOURCES.get(endpoint);
  if (subresource !== undefined) {
    // The legacy verb `proxy` carries no method; the API server no longer serves that prefix (404).
    const verb = command.verb === 'proxy' ? 'get' : command.verb;
    implied.push({
      command: { ...command, verb, subresource, namespace: '', name },
      why: `nodes/proxy to the kubelet's /${path.join('/')}: decided as the kubelet authorizes it, ${verb} nodes/${subresource}`,
    });
  }
  return implied;
}
