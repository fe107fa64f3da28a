// How the audit commands reach the cluster: kubeconfig loaded like kubectl does (--kubeconfig, then
// KUBECONFIG, then ~/.kube/config, then in-cluster; --context; namespace from -n or the context; a clear
// one-line error when none is found or the server does not answer), and the reads they need.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
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
  /** The API server's URL and where the configuration came from, for messages. */
  readonly server: string;
  readonly source: string;
}

/**
 * No usable configuration, or the API server did not answer: the message is one line naming what was
 * looked for or tried. Commands print it as `error: MESSAGE` and exit 1.
 */
export class ClusterAccessError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ClusterAccessError';
  }
}

/** Where a pod's service account token is (the in-cluster configuration). */
export const IN_CLUSTER_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** What loadKubeConfig looks at; the process's own by default (tests give their own). */
export interface KubeconfigEnvironment {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly home: string;
  readonly inClusterToken: string;
}

const processEnvironment = (): KubeconfigEnvironment => ({
  env: process.env,
  home: homedir(),
  inClusterToken: IN_CLUSTER_TOKEN,
});

function readKubeconfigFile(kc: k8s.KubeConfig, file: string, source: string): void {
  try {
    kc.loadFromFile(file);
  } catch (err) {
    throw new ClusterAccessError(`cannot read the kubeconfig ${file} (${source}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * The kubeconfig as kubectl finds it, in its order: --kubeconfig FILE, then the files KUBECONFIG lists
 * (merged; missing ones skipped, as kubectl does), then ~/.kube/config, then the pod's service account
 * (in a cluster). Unlike the client library, which falls back to http://localhost:8080, nothing found is
 * an error that names every place looked at.
 */
export function loadKubeConfig(
  flags: Pick<ClusterFlags, 'kubeconfig'>,
  where: KubeconfigEnvironment = processEnvironment(),
): { kc: k8s.KubeConfig; source: string } {
  const kc = new k8s.KubeConfig();
  if (flags.kubeconfig !== undefined) {
    const source = `--kubeconfig ${flags.kubeconfig}`;
    if (!existsSync(flags.kubeconfig))
      throw new ClusterAccessError(`the kubeconfig ${flags.kubeconfig} does not exist (${source})`);
    readKubeconfigFile(kc, flags.kubeconfig, source);
    return { kc, source };
  }
  const listed = (where.env.KUBECONFIG ?? '').split(delimiter).filter((f) => f !== '');
  if (listed.length > 0) {
    const source = `KUBECONFIG=${listed.join(delimiter)}`;
    const present = listed.filter((f) => existsSync(f));
    const [first, ...rest] = present;
    if (first === undefined) throw new ClusterAccessError(`no file KUBECONFIG names exists (${source})`);
    readKubeconfigFile(kc, first, source);
    for (const file of rest) {
      const more = new k8s.KubeConfig();
      readKubeconfigFile(more, file, source);
      kc.mergeConfig(more);
    }
    return { kc, source };
  }
  const homeConfig = join(where.home, '.kube', 'config');
  if (existsSync(homeConfig)) {
    readKubeconfigFile(kc, homeConfig, homeConfig);
    return { kc, source: homeConfig };
  }
  const host = where.env.KUBERNETES_SERVICE_HOST;
  if (host !== undefined && host !== '' && existsSync(where.inClusterToken)) {
    kc.loadFromCluster();
    return { kc, source: 'in-cluster service account' };
  }
  throw new ClusterAccessError(
    `no Kubernetes configuration found: no --kubeconfig flag, KUBECONFIG not set, no ${homeConfig}, ` +
      `and not in a cluster (${host === undefined || host === '' ? 'KUBERNETES_SERVICE_HOST not set' : `no ${where.inClusterToken}`}); ` +
      'give --kubeconfig FILE or set KUBECONFIG',
  );
}

export function connect(flags: ClusterFlags, where?: KubeconfigEnvironment): Cluster {
  const { kc, source } = loadKubeConfig(flags, where);
  if (flags.context !== undefined) {
    if (kc.getContextObject(flags.context) === null)
      throw new ClusterAccessError(`context "${flags.context}" not found in ${source}`);
    kc.setCurrentContext(flags.context);
  }
  const current = kc.getCurrentContext();
  if (kc.getContextObject(current) === null && source !== 'in-cluster service account')
    throw new ClusterAccessError(`${source} sets no current context; pass --context NAME`);
  const server = kc.getCurrentCluster()?.server;
  if (server === undefined || server === '')
    throw new ClusterAccessError(`the context "${current}" in ${source} names no cluster with a server`);
  const contextNamespace = kc.getContextObject(current)?.namespace;
  const namespace = flags['all-namespaces'] === true ? undefined : (flags.namespace ?? contextNamespace ?? 'default');
  return { kc, namespace, custom: kc.makeApiClient(k8s.CustomObjectsApi), server, source };
}

/**
 * A request that got no HTTP answer (connection refused, name not resolved, TLS failure, timeout)
 * becomes a ClusterAccessError naming the server and where its address came from; API errors pass.
 */
export function unreachable(cluster: Pick<Cluster, 'server' | 'source'>, err: unknown): unknown {
  if (err instanceof k8s.ApiException || err instanceof ClusterAccessError) return err;
  const reason = rootCause(err);
  return new ClusterAccessError(
    `cannot reach the Kubernetes API server ${cluster.server} (from ${cluster.source}): ${reason}`,
    {
      cause: err,
    },
  );
}

function rootCause(err: unknown): string {
  let e: unknown = err;
  // fetch errors carry the socket's error as their cause.
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
}

interface ListResult<T> {
  items?: T[];
  metadata?: { continue?: string };
}

async function listAll<T>(cluster: Cluster, plural: string): Promise<T[]> {
  const items: T[] = [];
  let cont: string | undefined;
  do {
    const request =
      cluster.namespace === undefined
        ? cluster.custom.listClusterCustomObject({
            group: GROUP,
            version: VERSION,
            plural,
            limit: 500,
            _continue: cont,
          })
        : cluster.custom.listNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace: cluster.namespace,
            plural,
            limit: 500,
            _continue: cont,
          });
    const page = (await request.catch((err: unknown) => {
      throw unreachable(cluster, err);
    })) as ListResult<T>;
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
