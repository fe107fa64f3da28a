// Real identities for tests, the way a cluster admin hands them out: X.509 client certificates signed by
// the control plane's client CA (its pki/ca.key), one per user, with the user's name as CN and its groups
// as O. Each identity comes as a kubeconfig file (for kubectl) and a client-node KubeConfig. A node
// identity (system:node:<name>, group system:nodes) is what a kubelet authenticates as: with it a test
// requests the pod-bound tokens a kubelet would project into a pod bound to that node, since the Node
// authorizer and NodeRestriction let a node mint tokens only for pods scheduled on it.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { issueClientCertificate } from '../../operator/src/certificates/certificate-authority.ts';
import { stringify } from 'yaml';
import { controlPlaneEnv, ENV } from './env.ts';

export interface TestIdentity {
  readonly user: string;
  readonly groups: readonly string[];
  /** A kubeconfig file authenticating as this identity (for kubectl --kubeconfig). */
  readonly kubeconfig: string;
  readonly kc: k8s.KubeConfig;
}

/** Connection details of a control plane (default: the shared one of this run). */
export interface ControlPlaneAccess {
  readonly server: string;
  readonly caFile: string;
}

const cache = new Map<string, Promise<TestIdentity>>();

/** A client-certificate identity for `user` in `groups`, signed by the control plane's CA. */
export function clientIdentity(
  user: string,
  groups: readonly string[] = [],
  cp: ControlPlaneAccess = controlPlaneEnv(),
): Promise<TestIdentity> {
  const key = `${cp.server}|${user}|${groups.join(',')}`;
  let identity = cache.get(key);
  if (identity === undefined) {
    identity = issue(user, groups, cp);
    cache.set(key, identity);
  }
  return identity;
}

async function issue(user: string, groups: readonly string[], cp: ControlPlaneAccess): Promise<TestIdentity> {
  const caPem = readFileSync(cp.caFile, 'utf8');
  const { certPem, keyPem } = await issueClientCertificate({
    ca: { certPem: caPem, keyPem: readFileSync(join(dirname(cp.caFile), 'ca.key'), 'utf8') },
    user,
    groups,
    lifetimeMs: 24 * 3_600_000,
    now: new Date(),
  });
  const dir = join(process.env[ENV.runDir] ?? dirname(dirname(cp.caFile)), 'identities');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${user.replace(/[^a-zA-Z0-9.-]+/g, '_')}-${randomBytes(3).toString('hex')}.kubeconfig`);
  const b64 = (text: string) => Buffer.from(text).toString('base64');
  writeFileSync(
    file,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'test', cluster: { server: cp.server, 'certificate-authority-data': b64(caPem) } }],
      users: [{ name: user, user: { 'client-certificate-data': b64(certPem), 'client-key-data': b64(keyPem) } }],
      contexts: [{ name: 'test', context: { cluster: 'test', user } }],
      'current-context': 'test',
    }),
    { mode: 0o600 },
  );
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(file);
  return { user, groups, kubeconfig: file, kc };
}

/** The identity a kubelet on `nodeName` authenticates as. */
export function nodeIdentity(nodeName: string, cp?: ControlPlaneAccess): Promise<TestIdentity> {
  return clientIdentity(`system:node:${nodeName}`, ['system:nodes'], cp);
}

/**
 * A token bound to `pod`, requested as the kubelet of the pod's node does for a projected
 * serviceAccountToken source (the pod must be bound to that node). Audience '' or undefined: the API
 * server's own.
 */
export async function kubeletToken(
  pod: k8s.V1Pod,
  audience: string | undefined,
  cp?: ControlPlaneAccess,
): Promise<string> {
  const nodeName = pod.spec?.nodeName;
  if (nodeName === undefined || nodeName === '') throw new Error('the pod is not bound to a node');
  const node = await nodeIdentity(nodeName, cp);
  const core = node.kc.makeApiClient(k8s.CoreV1Api);
  let last: unknown;
  // NodeRestriction reads the pod from its informer, which may not have seen a pod bound a moment ago.
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      const token = await core.createNamespacedServiceAccountToken({
        namespace: pod.metadata?.namespace ?? '',
        name: pod.spec?.serviceAccountName ?? 'default',
        body: {
          spec: {
            audiences: audience === undefined || audience === '' ? [] : [audience],
            expirationSeconds: 3600,
            boundObjectRef: {
              apiVersion: 'v1',
              kind: 'Pod',
              name: pod.metadata?.name ?? '',
              uid: pod.metadata?.uid ?? '',
            },
          },
        },
      });
      const value = token.status?.token;
      if (value === undefined) throw new Error('TokenRequest returned no token');
      return value;
    } catch (err) {
      last = err;
      if (!(err instanceof k8s.ApiException) || (err.code !== 403 && err.code !== 404)) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw last instanceof Error ? last : new Error(String(last));
}

/** Binds an unscheduled pod to a node, as the scheduler would (pods/binding), and returns it as stored. */
export async function bindPod(core: k8s.CoreV1Api, pod: k8s.V1Pod, nodeName: string): Promise<k8s.V1Pod> {
  const namespace = pod.metadata?.namespace ?? '';
  const name = pod.metadata?.name ?? '';
  if (pod.spec?.nodeName === undefined || pod.spec.nodeName === '') {
    await core.createNamespacedBinding({
      namespace,
      body: { metadata: { name }, target: { apiVersion: 'v1', kind: 'Node', name: nodeName } },
    });
  }
  return core.readNamespacedPod({ namespace, name });
}

/**
 * Creates the Node `name` that pods of a test are bound to, deleted when the test ends. It must exist: the
 * pod garbage collector deletes a pod bound to a missing Node after ~40 s, and with it every token bound to
 * the pod (a sidecar's requests then fail with 401). No kubelet runs for it, so it is tainted NoSchedule
 * (nothing else is scheduled there); the node lifecycle controller marks it unreachable after its grace
 * period, and pods without a toleration are evicted 300 s later (tolerate every taint to outlive that).
 */
export async function createTestNode(
  core: k8s.CoreV1Api,
  t: TestContext,
  name: string,
  labels: Record<string, string> = {},
): Promise<string> {
  await core.createNode({
    body: {
      metadata: { name, labels },
      spec: { taints: [{ key: 'chaperone.dev/test-node', effect: 'NoSchedule' }] },
    },
  });
  // A private control plane may be gone by then, with its Nodes.
  t.after(() =>
    core.deleteNode({ name }).then(
      () => undefined,
      () => undefined,
    ),
  );
  return name;
}
