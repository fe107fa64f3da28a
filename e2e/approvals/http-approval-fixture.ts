// The HTTP engine's side of the approval tests: a real HTTP server on loopback that records what reaches
// it, the real sidecar in front of it filing ApprovalRequests with the world's pod-bound token, and curl
// through it (one process, one connection, so one agent session, per request).
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import type { ApprovalWorld } from './approval-fixture.ts';

export interface ReceivedRequest {
  readonly method: string;
  readonly url: string;
  readonly body: string;
}

export interface HttpApprovalTarget {
  readonly sidecar: SidecarProcess;
  /** What reached the upstream, in order. */
  readonly received: ReceivedRequest[];
}

/**
 * Starts the upstream (answering 201 with `reply`) and the sidecar with one HTTP listener `name` enforcing
 * `policies` in the world's namespace; both stop when the test ends.
 */
export async function startHttpApprovalTarget(
  t: TestContext,
  world: ApprovalWorld,
  name: string,
  policies: Record<string, AccessPolicySpec>,
  reply = '{"ok":true}',
): Promise<HttpApprovalTarget> {
  const { ns, pod } = world;
  const received: ReceivedRequest[] = [];
  const upstream = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ method: req.method ?? '', url: req.url ?? '', body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(reply);
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        upstream.closeAllConnections();
        upstream.close(() => resolve());
      }),
  );
  const address = upstream.address();
  if (address === null || typeof address === 'string') throw new Error('no address');

  const dir = join(testDir(t), 'http-sidecar');
  mkdirSync(dir, { recursive: true });
  const podToken = join(dir, 'pod-token');
  writeFileSync(podToken, await kubeletToken(pod, undefined));
  const cp = controlPlaneEnv();
  const sidecar = await spawnSidecar({
    dir,
    policies,
    policyNamespace: ns,
    listeners: [
      {
        name,
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: { url: `http://127.0.0.1:${String(address.port)}`, tls: { mode: 'disable' } },
        resource: { namespace: ns, labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
    pod: { namespace: ns, name: pod.metadata?.name ?? '', uid: pod.metadata?.uid ?? '' },
    approvals: { kubernetes: { server: cp.server, tokenFile: podToken, caFile: cp.caFile, namespace: ns } },
    logLevel: 'debug',
  });
  t.after(() => sidecar.stop());
  return { sidecar, received };
}

/** curl `method` `url` with a JSON `body` and the bearer `token`: its answer once it exits, or kill it. */
export function curl(
  url: string,
  token: string,
  method: string,
  body: string,
): { done: Promise<{ body: string; status: number }>; kill: () => void } {
  const child = spawn(
    'curl',
    [
      '-sS',
      '-X',
      method,
      '-H',
      `Authorization: Bearer ${token}`,
      '-H',
      'Content-Type: application/json',
      '--data-binary',
      body,
      '-w',
      '\n%{http_code}',
      url,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const done = new Promise<{ body: string; status: number }>((resolve) => {
    child.once('close', () => {
      const i = out.lastIndexOf('\n');
      resolve({ body: out.slice(0, i), status: Number(out.slice(i + 1)) });
    });
  });
  return { done, kill: () => child.kill('SIGKILL') };
}
