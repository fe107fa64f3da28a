// A real sidecar with a Kubernetes listener in front of the harness API server: its upstream credential is a
// service account token of the test's namespace (bound to the namespace's `admin` ClusterRole, nothing
// cluster-wide), the agent gets a kubeconfig pointing at the sidecar with its own audience-bound token, and
// kubectl is the real one.
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import type { AccessPolicySpec } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubectl } from '../harness/kube.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import { toolPath } from '../harness/tools.ts';

const execFileAsync = promisify(execFile);

export const RESOURCE = 'test-kube';
export const AGENT = 'system:serviceaccount:agents:deploy-bot';

export interface KubeFixture {
  readonly namespace: string;
  readonly sidecar: SidecarProcess;
  /** The agent's token (audience chaperone). */
  readonly agentToken: string;
  /** The sidecar's own upstream token (never to be seen by the agent or in records). */
  readonly sidecarToken: string;
  /** kubeconfig of the agent: the sidecar's address and the agent's token. */
  readonly agentKubeconfig: string;
  /** The sidecar's self-signed serving certificate (the CA of the agent's kubeconfig). */
  readonly servingCertFile: string;
  /** https URL of the sidecar's listener. */
  readonly url: string;
  /** Runs kubectl as the agent; resolves with stdout and stderr and the exit code (never rejects). */
  agent(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Runs kubectl as the cluster admin (to arrange and check state behind the sidecar's back). */
  admin(args: string[], input?: string): Promise<string>;
}

export function kubeconfigFor(server: string, token: string, caFile?: string): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      { name: 'c', cluster: { server, ...(caFile === undefined ? {} : { 'certificate-authority': caFile }) } },
    ],
    users: [{ name: 'u', user: { token } }],
    contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
    'current-context': 'x',
  });
}

export async function runKubectl(
  kubeconfig: string,
  args: string[],
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = execFileAsync(toolPath('kubectl'), ['--kubeconfig', kubeconfig, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (input !== undefined) child.child.stdin?.end(input);
  try {
    const { stdout, stderr } = await child;
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `policies` are made for the test's namespace, which exists only once the fixture created it. */
export async function startKubeFixture(
  t: TestContext,
  policies: (namespace: string) => Record<string, AccessPolicySpec>,
): Promise<KubeFixture> {
  const namespace = await createTestNamespace(t);
  const cp = controlPlaneEnv();
  await kubectl(['create', 'serviceaccount', 'chaperone-sidecar', '-n', namespace]);
  await kubectl([
    'create',
    'rolebinding',
    'chaperone-sidecar',
    '--clusterrole=admin',
    `--serviceaccount=${namespace}:chaperone-sidecar`,
    '-n',
    namespace,
  ]);
  const sidecarToken = (
    await kubectl(['create', 'token', 'chaperone-sidecar', '-n', namespace, '--duration=1h'])
  ).trim();
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const tokenFile = join(dir, 'upstream-token');
  writeFileSync(tokenFile, sidecarToken);
  // The agent's side: its token in a file, the kubeconfig the sidecar writes at start (as in an injected pod).
  const agentTokenFile = join(dir, 'agent-token');
  const agentKubeconfig = join(dir, 'agent.kubeconfig');
  const servingCertFile = join(dir, 'sidecar-serving.crt');
  const sidecar = await spawnSidecar({
    dir,
    policies: policies(namespace),
    listeners: [
      {
        name: RESOURCE,
        type: 'kubernetes',
        listen: '127.0.0.1:0',
        tls: { selfSignedCertFile: servingCertFile },
        agentKubeconfig: { path: agentKubeconfig, tokenFile: agentTokenFile },
        upstream: { url: cp.server, tls: { mode: 'verify-full', caFile: cp.caFile }, tokenFile },
        resource: { namespace: 'default', labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
  });
  t.after(() => sidecar.stop());
  const agentToken = await sidecar.issuer.sign({ sub: AGENT });
  writeFileSync(agentTokenFile, agentToken);
  return {
    namespace,
    sidecar,
    agentToken,
    sidecarToken,
    agentKubeconfig,
    servingCertFile,
    url: `https://${sidecar.host}:${String(sidecar.port)}`,
    agent: (args, input) => runKubectl(agentKubeconfig, args, input),
    admin: (args, input) => kubectl(args, input === undefined ? {} : { input }),
  };
}
