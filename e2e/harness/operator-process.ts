// Runs the chaperone-operator binary as a child process against the shared control plane, scoped to one
// test namespace, with its webhooks registered by URL (--webhook-url) under configuration names of its own:
// the operator exactly as it is deployed, its controllers and admission server included, rather than its
// functions called from a test. Stopped (SIGTERM, then SIGKILL) and its webhook configurations and operator
// namespace removed when the test ends.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { controlPlaneEnv } from './env.ts';
import { kubeConfig } from './kube.ts';
import { poll } from './poll.ts';
import { freePort } from './postgres.ts';
import { stopProcess, waitForExit } from './processes.ts';
import { REPO_ROOT } from './tools.ts';

export const OPERATOR_BIN = join(REPO_ROOT, 'operator', 'src', 'bin', 'chaperone-operator.ts');
export const TEST_SIDECAR_IMAGE = 'ghcr.io/chaperone/chaperone-sidecar:test';

export interface OperatorProcessOptions {
  /** The one namespace the operator watches and its webhooks select. */
  readonly namespace: string;
  /** Flags added after the defaults (e.g. --enable-audit-authority). */
  readonly extraArgs?: readonly string[];
}

export interface OperatorProcess {
  readonly process: ChildProcess;
  /** Namespace of the webhook certificate Secret (and the audit authority): created for this operator. */
  readonly operatorNamespace: string;
  readonly webhookPort: number;
  /** http://host:port of /metrics. */
  readonly metricsUrl: string;
  readonly names: { readonly mutating: string; readonly validating: string };
  /** Every log line (JSON) so far. */
  logs(): readonly string[];
  /** SIGTERM; resolves with the exit code. */
  terminate(): Promise<number | null>;
}

export async function startOperatorProcess(t: TestContext, options: OperatorProcessOptions): Promise<OperatorProcess> {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const instance = randomBytes(4).toString('hex');
  const operatorNamespace = `chaperone-system-${instance}`;
  const names = { mutating: `chaperone-pod-injector-${instance}`, validating: `chaperone-pod-validator-${instance}` };
  await core.createNamespace({
    body: { metadata: { name: operatorNamespace, labels: { 'chaperone.dev/test': 'true' } } },
  });
  const webhookPort = await freePort();
  const child = spawn(
    process.execPath,
    [
      OPERATOR_BIN,
      '--kubeconfig',
      controlPlaneEnv().kubeconfig,
      '--namespace',
      options.namespace,
      '--leader-elect',
      '--metrics-bind-address',
      '127.0.0.1:0',
      '--enable-webhooks',
      '--sidecar-image',
      TEST_SIDECAR_IMAGE,
      '--service-account-issuer',
      controlPlaneEnv().issuer,
      '--operator-namespace',
      operatorNamespace,
      '--webhook-host',
      '127.0.0.1',
      '--webhook-port',
      String(webhookPort),
      '--webhook-url',
      `https://127.0.0.1:${String(webhookPort)}`,
      '--mutating-webhook-configuration',
      names.mutating,
      '--validating-webhook-configuration',
      names.validating,
      '--log-level',
      'debug',
      ...(options.extraArgs ?? []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const lines: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => lines.push(line));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) await stopProcess(child);
    await core.deleteNamespace({ name: operatorNamespace }).catch(() => undefined);
    // A stopped operator leaves its configurations (other replicas may serve); the test removes its own.
    await admission.deleteMutatingWebhookConfiguration({ name: names.mutating }).catch(() => undefined);
    await admission.deleteValidatingWebhookConfiguration({ name: names.validating }).catch(() => undefined);
  });
  const started = await poll('the operator to start', () => {
    if (child.exitCode !== null)
      throw new Error(`the operator exited with ${String(child.exitCode)}:\n${lines.join('\n')}`);
    const line = lines.find((l) => l.includes('"msg":"operator started"'));
    return Promise.resolve(line === undefined ? undefined : (JSON.parse(line) as { metrics?: string }));
  }).catch((err: unknown) => {
    throw new Error(`${String(err)}\noperator logs:\n${lines.join('\n')}`, { cause: err });
  });
  return {
    process: child,
    operatorNamespace,
    webhookPort,
    metricsUrl: `http://${started.metrics ?? ''}`,
    names,
    logs: () => lines,
    async terminate() {
      child.kill('SIGTERM');
      await waitForExit(child, 30_000);
      return child.exitCode;
    },
  };
}
