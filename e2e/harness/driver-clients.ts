// Drivers of other languages as child processes (e2e/postgres/drivers/, e2e/masking/drivers/): each runs a
// fixed script that prints one JSON line per step; these helpers run it and read the steps. The drivers
// come from scripts/drivers.sh (`make drivers`), linked under .tools/drivers; when they are missing the
// tests fail, never skip.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './tools.ts';

export const DRIVERS_DIR = join(REPO_ROOT, '.tools', 'drivers');
export const PYTHON = join(DRIVERS_DIR, 'python', 'bin', 'python');
export const PGJDBC_JAR = join(DRIVERS_DIR, 'postgresql.jar');
const CLIENT_TIMEOUT_MS = 120_000;

/** Fails (never skips) when a driver is not installed: a missing driver must not look like a pass. */
export function requireDriver(path: string, what: string): void {
  if (!existsSync(path)) {
    assert.fail(`${what} is not installed (${path} is missing): run scripts/drivers.sh (make drivers) first`);
  }
}

export interface Step {
  readonly step: string;
  readonly ok: boolean;
  readonly sqlstate?: string | null;
  readonly [field: string]: unknown;
}

export interface ClientRun {
  readonly steps: ReadonlyMap<string, Step>;
  readonly order: readonly string[];
  readonly stderr: string;
}

/**
 * Runs a client program to completion and parses its JSON lines. Asynchronous on purpose: spawnSync
 * would block this process's event loop, which also drains the sidecar's log pipes.
 */
export function runClient(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<ClientRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLIENT_TIMEOUT_MS);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const ended = signal === 'SIGKILL' ? `timed out after ${CLIENT_TIMEOUT_MS} ms` : `ended with ${signal ?? code}`;
      if (code !== 0) {
        reject(new Error(`${command} ${args.join(' ')} ${ended}\nstdout:\n${stdout}\nstderr:\n${stderr}`));
        return;
      }
      const steps = new Map<string, Step>();
      const order: string[] = [];
      for (const line of stdout.split('\n')) {
        if (line.trim() === '') continue;
        const step = JSON.parse(line) as Step;
        steps.set(step.step, step);
        order.push(step.step);
      }
      resolve({ steps, order, stderr });
    });
  });
}

/** The step's result, asserting that it ran and succeeded (the message carries the driver's error). */
export function passed(run: ClientRun, name: string): Step {
  const step = run.steps.get(name);
  assert.ok(step, `step ${name} did not run; steps: ${run.order.join(', ')}\nstderr:\n${run.stderr}`);
  assert.equal(step.ok, true, `step ${name} failed: ${JSON.stringify(step)}`);
  return step;
}
