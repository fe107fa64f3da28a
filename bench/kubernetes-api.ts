// Latency the Kubernetes engine adds to a GET, and watch events per second, against a real API server: one
// keep-alive HTTPS client alternates the same GET (a ConfigMap) straight to the API server with the sidecar's
// own token and through the sidecar (allow-all policy, JSON-lines audit), so both see the same server state
// and load; p50/p99 of each and of the difference. Then watch throughput: a watch from resourceVersion 0 on
// a namespace of N ConfigMaps delivers N events in a burst, direct and through the sidecar; events per
// second each. Target: p50 added per GET ≤ 1 ms.
//
//   node bench/kubernetes-api.ts [--requests 2000] [--events 1000]
//
// Starts its own control plane (unless CHAPERONE_TEST_KUBECONFIG points at one) and a sidecar, and stops both by PID.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { AccessPolicySpec } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../e2e/harness/control-plane.ts';
import { createRunDirectory, stopProcess } from '../e2e/harness/processes.ts';
import { spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { toolPath } from '../e2e/harness/tools.ts';

export interface KubernetesApiBenchResult {
  readonly requests: number;
  readonly directMs: { readonly p50: number; readonly p99: number };
  readonly sidecarMs: { readonly p50: number; readonly p99: number };
  readonly addedMs: { readonly p50: number; readonly p99: number };
  readonly watch: { readonly events: number; readonly directPerSecond: number; readonly sidecarPerSecond: number };
  readonly targetAddedP50Ms: number;
  readonly met: boolean;
}

const ALLOW_ALL: AccessPolicySpec = {
  resources: { names: ['bench-kube'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

function quantile(samples: readonly number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
}

const round = (n: number) => Math.round(n * 1000) / 1000;

function get(agent: Agent, url: URL, token: string, ca: Buffer): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { agent, ca, headers: { authorization: `Bearer ${token}`, accept: 'application/json' } },
      (res) => {
        res.resume();
        res.once('end', () => {
          if (res.statusCode !== 200) reject(new Error(`GET ${url.pathname}: HTTP ${String(res.statusCode)}`));
          else resolve(performance.now() - started);
        });
      },
    );
    req.once('error', reject);
    req.end();
  });
}

/** Opens a watch and resolves with events per second from the request to the `expected`-th ADDED event. */
function watchEvents(url: URL, token: string, ca: Buffer, expected: number): Promise<number> {
  const started = performance.now();
  return new Promise<number>((resolve, reject) => {
    let seen = 0;
    const req = request(
      url,
      { ca, headers: { authorization: `Bearer ${token}`, accept: 'application/json' } },
      (res) => {
        let pending = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          pending += chunk;
          let nl = pending.indexOf('\n');
          while (nl !== -1) {
            const line = pending.slice(0, nl);
            pending = pending.slice(nl + 1);
            if (line.includes('"ADDED"') && line.includes('bench-cm-')) seen++;
            nl = pending.indexOf('\n');
          }
          if (seen >= expected) {
            resolve((seen * 1000) / (performance.now() - started));
            req.destroy();
          }
        });
      },
    );
    req.once('error', (err: Error) => {
      if (seen < expected) reject(err);
    });
    req.end();
  });
}

export async function runKubernetesApiBench(
  options: { requests?: number; events?: number } = {},
): Promise<KubernetesApiBenchResult> {
  const requests = options.requests ?? 2000;
  const events = options.events ?? 1000;
  let controlPlane: ControlPlane | undefined;
  let kubeconfig = process.env.CHAPERONE_TEST_KUBECONFIG;
  let server = process.env.CHAPERONE_TEST_API_SERVER;
  let caFile = process.env.CHAPERONE_TEST_API_CA;
  const dir = createRunDirectory();
  if (kubeconfig === undefined || server === undefined || caFile === undefined) {
    controlPlane = await startControlPlane(dir);
    ({ kubeconfig, server, caFile } = controlPlane);
  }
  const adminConfig = kubeconfig;
  const kubectl = (...args: string[]) =>
    execFileSync(toolPath('kubectl'), ['--kubeconfig', adminConfig, ...args], { encoding: 'utf8' });
  const namespace = `chaperone-bench-kube-${Date.now().toString(36)}`;
  let sidecar: SidecarProcess | undefined;
  try {
    kubectl('create', 'namespace', namespace);
    kubectl('create', 'serviceaccount', 'sidecar', '-n', namespace);
    kubectl(
      'create',
      'rolebinding',
      'sidecar',
      '--clusterrole=admin',
      `--serviceaccount=${namespace}:sidecar`,
      '-n',
      namespace,
    );
    kubectl('create', 'configmap', 'target', '--from-literal=k=v', '-n', namespace);
    const upstreamToken = kubectl('create', 'token', 'sidecar', '-n', namespace, '--duration=1h').trim();
    const sidecarDir = join(dir, 'sidecar');
    mkdirSync(sidecarDir, { recursive: true });
    writeFileSync(join(sidecarDir, 'upstream-token'), upstreamToken);
    const servingCert = join(sidecarDir, 'serving.crt');
    sidecar = await spawnSidecar({
      dir: sidecarDir,
      policies: { all: ALLOW_ALL },
      logLevel: 'warn',
      listeners: [
        {
          name: 'bench-kube',
          type: 'kubernetes',
          listen: '127.0.0.1:0',
          tls: { selfSignedCertFile: servingCert },
          upstream: {
            url: server,
            tls: { mode: 'verify-full', caFile },
            tokenFile: join(sidecarDir, 'upstream-token'),
          },
          auditFailureMode: 'FailClosed',
        },
      ],
    });
    const agentToken = await sidecar.issuer.sign({ sub: 'bench-agent' }, { expiresIn: 3600 });
    const apiCa = readFileSync(caFile);
    const sidecarCa = readFileSync(servingCert);
    const path = `/api/v1/namespaces/${namespace}/configmaps/target`;
    const directUrl = new URL(path, server);
    const sidecarUrl = new URL(path, `https://127.0.0.1:${String(sidecar.port)}`);
    const directAgent = new Agent({ keepAlive: true, maxSockets: 1 });
    const sidecarAgent = new Agent({ keepAlive: true, maxSockets: 1 });
    // Warm both paths (connections, token verification, decision cache) before measuring.
    for (let i = 0; i < 100; i++) {
      await get(directAgent, directUrl, upstreamToken, apiCa);
      await get(sidecarAgent, sidecarUrl, agentToken, sidecarCa);
    }
    const direct: number[] = [];
    const through: number[] = [];
    const added: number[] = [];
    for (let i = 0; i < requests; i++) {
      const d = await get(directAgent, directUrl, upstreamToken, apiCa);
      const s = await get(sidecarAgent, sidecarUrl, agentToken, sidecarCa);
      direct.push(d);
      through.push(s);
      added.push(s - d);
    }
    directAgent.destroy();
    sidecarAgent.destroy();

    // Watch throughput: N objects exist, then a watch from resourceVersion 0 delivers them as N ADDED
    // events in one burst; events per second from the request to the last event, direct and then through
    // the sidecar (which parses nothing for ConfigMaps and streams the bytes as they come).
    const manifest = Array.from({ length: events }, (_, i) => ({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: `bench-cm-${String(i)}`, namespace },
      data: { i: String(i) },
    }));
    execFileSync(toolPath('kubectl'), ['--kubeconfig', adminConfig, 'create', '-f', '-'], {
      input: JSON.stringify({ apiVersion: 'v1', kind: 'List', items: manifest }),
      stdio: ['pipe', 'ignore', 'inherit'],
    });
    const watchPath = `/api/v1/namespaces/${namespace}/configmaps?watch=true&resourceVersion=0`;
    const directPerSecond = await watchEvents(new URL(watchPath, server), upstreamToken, apiCa, events);
    const sidecarPerSecond = await watchEvents(
      new URL(watchPath, `https://127.0.0.1:${String(sidecar.port)}`),
      agentToken,
      sidecarCa,
      events,
    );
    const addedP50 = quantile(added, 0.5);
    return {
      requests,
      directMs: { p50: round(quantile(direct, 0.5)), p99: round(quantile(direct, 0.99)) },
      sidecarMs: { p50: round(quantile(through, 0.5)), p99: round(quantile(through, 0.99)) },
      addedMs: { p50: round(addedP50), p99: round(quantile(added, 0.99)) },
      watch: { events, directPerSecond: Math.round(directPerSecond), sidecarPerSecond: Math.round(sidecarPerSecond) },
      targetAddedP50Ms: 1,
      met: addedP50 <= 1,
    };
  } finally {
    await sidecar?.stop();
    try {
      kubectl('delete', 'namespace', namespace, '--wait=false');
    } catch {
      // The control plane may be gone already.
    }
    if (controlPlane !== undefined) await stopProcess(controlPlane.process, 10_000);
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { requests: { type: 'string' }, events: { type: 'string' } } });
  const result = await runKubernetesApiBench({
    ...(values.requests === undefined ? {} : { requests: Number(values.requests) }),
    ...(values.events === undefined ? {} : { events: Number(values.events) }),
  });
  console.log(JSON.stringify(result, null, 2));
}
