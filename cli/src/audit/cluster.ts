// How the audit commands reach the cluster: kubeconfig loaded like kubectl does (--kubeconfig, then
// KUBECONFIG, then ~/.kube/config; --context; namespace from -n or the context), and the reads they need.
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, parseGoDuration, type ProtectedResource, type Session } from '@chaperone/api';

/** Where command output goes; process.stdout and process.stderr fit. */
export interface CommandIo {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

/** The values of CLUSTER_OPTIONS as parseArgs returns them. */
export interface ClusterFlags {
  readonly kubeconfig?: string | undefined;
  readonly context?: string | undefined;
  readonly namespace?: string | undefined;
  readonly 'all-namespaces'?: boolean | undefined;
}

/** parseArgs option descriptors shared by every command that talks to the cluster. */
export const CLUSTER_OPTIONS = {
  kubeconfig: { type: 'string' },
  context: { type: 'string' },
  namespace: { type: 'string', short: 'n' },
  'all-namespaces': { type: 'boolean', short: 'A' },
} as const;

export interface Cluster {
  readonly kc: k8s.KubeConfig;
  /** undefined with -A. */
  readonly namespace: string | undefined;
  readonly custom: k8s.CustomObjectsApi;
}

export function connect(flags: ClusterFlags): Cluster {
  const kc = new k8s.KubeConfig();
  if (flags.kubeconfig !== undefined) kc.loadFromFile(flags.kubeconfig);
  else kc.loadFromDefault();
  if (flags.context !== undefined) kc.setCurrentContext(flags.context);
  const contextNamespace = kc.getContextObject(kc.getCurrentContext())?.namespace;
  const namespace = flags['all-namespaces'] === true ? undefined : (flags.namespace ?? contextNamespace ?? 'default');
  return { kc, namespace, custom: kc.makeApiClient(k8s.CustomObjectsApi) };
}

interface ListResult<T> {
  items?: T[];
  metadata?: { continue?: string };
}

async function listAll<T>(cluster: Cluster, plural: string): Promise<T[]> {
  const items: T[] = [];
  let cont: string | undefined;
  do {
    const page = (
      cluster.namespace === undefined
        ? await cluster.custom.listClusterCustomObject({
            group: GROUP,
            version: VERSION,
            plural,
            limit: 500,
            _continue: cont,
          })
        : await cluster.custom.listNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace: cluster.namespace,
            plural,
            limit: 500,
            _continue: cont,
          })
    ) as ListResult<T>;
    items.push(...(page.items ?? []));
    cont = page.metadata?.continue === '' ? undefined : page.metadata?.continue;
  } while (cont !== undefined);
  return items;
}

export function listSessions(cluster: Cluster): Promise<Session[]> {
  return listAll<Session>(cluster, 'sessions');
}

/** Retention per resource (namespace/name → ms), from ProtectedResources the caller may read; empty if none. */
export async function retentionByResource(cluster: Cluster): Promise<Map<string, number>> {
  const result = new Map<string, number>();
  let resources: ProtectedResource[];
  try {
    resources = await listAll<ProtectedResource>(cluster, 'protectedresources');
  } catch {
    return result; // Not readable: verification treats every missing session as deleted.
  }
  for (const r of resources) {
    try {
      result.set(`${r.metadata.namespace ?? ''}/${r.metadata.name ?? ''}`, parseGoDuration(r.spec.audit.retention));
    } catch {
      // A malformed retention cannot excuse a missing session.
    }
  }
  return result;
}

/** Message of a failed API call, with the Status message when the API server sent one. */
export function describeError(err: unknown): string {
  if (err instanceof k8s.ApiException) {
    const body: unknown = err.body;
    let message: string | undefined;
    try {
      const parsed = (typeof body === 'string' ? JSON.parse(body) : body) as { message?: string } | undefined;
      message = parsed?.message;
    } catch {
      message = undefined;
    }
    return `API server returned ${err.code}${message === undefined ? '' : `: ${message}`}`;
  }
  return err instanceof Error ? err.message : String(err);
}
