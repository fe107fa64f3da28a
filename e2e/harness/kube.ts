// Kubernetes helpers for tests: clients for the shared control plane, a fresh namespace per test, CRDs.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { controlPlaneEnv } from './env.ts';
import { REPO_ROOT, toolPath } from './tools.ts';

const execFileAsync = promisify(execFile);

export function kubeConfig(): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(controlPlaneEnv().kubeconfig);
  return kc;
}

/** Runs the real kubectl against the shared control plane; resolves with stdout, rejects with stderr. */
export async function kubectl(args: string[], options: { input?: string; kubeconfig?: string } = {}): Promise<string> {
  const kubeconfig = options.kubeconfig ?? controlPlaneEnv().kubeconfig;
  const child = execFileAsync(toolPath('kubectl'), ['--kubeconfig', kubeconfig, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (options.input !== undefined) {
    child.child.stdin?.end(options.input);
  }
  const { stdout } = await child;
  return stdout;
}

/** Applies the CRDs in crds/ and waits until every one is Established. */
export async function applyCrds(kubeconfig: string): Promise<void> {
  const dir = join(REPO_ROOT, 'crds');
  await kubectl(['apply', '--server-side', '--force-conflicts', '-f', dir], { kubeconfig });
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', '-f', dir], { kubeconfig });
}

/**
 * Creates a namespace unique to this test and deletes it when the test ends. The namespace name is
 * derived from the test name so failures are easy to trace in the API server.
 */
export async function createTestNamespace(t: TestContext, labels: Record<string, string> = {}): Promise<string> {
  const base =
    t.name
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 40) || 'test';
  const name = `${base}-${randomBytes(3).toString('hex')}`;
  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
  await core.createNamespace({ body: { metadata: { name, labels: { 'chaperone.dev/test': 'true', ...labels } } } });
  t.after(async () => {
    await core.deleteNamespace({ name }).catch(() => undefined);
  });
  return name;
}

/** The Kubernetes Status object of a failed API call, or undefined when the error is something else. */
export function statusOf(err: unknown): k8s.V1Status | undefined {
  if (err instanceof k8s.ApiException) {
    const body: unknown = err.body;
    if (typeof body === 'string') {
      try {
        return JSON.parse(body) as k8s.V1Status;
      } catch {
        return undefined;
      }
    }
    return body as k8s.V1Status;
  }
  return undefined;
}
