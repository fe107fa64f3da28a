// Process bookkeeping shared by the harness: where a run keeps its state, how servers it started are
// found again, and how servers left behind by a run that was killed (SIGKILL, OOM) are removed.
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every harness run keeps its servers' state under this root, one directory per run named after its pid. */
export const RUN_ROOT = join(tmpdir(), 'chaperone-test-runs');

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Creates the state directory of this run, after removing what earlier, dead runs left behind. */
export function createRunDirectory(): string {
  reapDeadRuns();
  const dir = join(RUN_ROOT, `run-${process.pid}-${Date.now()}`);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(join(dir, 'owner.pid'), String(process.pid));
  return dir;
}

/** Records a server process so a later run can end it if this run dies without cleaning up. */
export function recordServer(runDir: string, name: string, pid: number): void {
  writeFileSync(join(runDir, `${name}.server-pid`), String(pid));
}

function reapDeadRuns(): void {
  if (!existsSync(RUN_ROOT)) return;
  for (const entry of readdirSync(RUN_ROOT)) {
    const dir = join(RUN_ROOT, entry);
    let owner: number;
    try {
      owner = Number(readFileSync(join(dir, 'owner.pid'), 'utf8'));
    } catch {
      continue;
    }
    if (Number.isInteger(owner) && owner > 0 && isAlive(owner)) continue;
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.server-pid'))) {
      const pid = Number(readFileSync(join(dir, file), 'utf8'));
      // Only servers this harness started are recorded here; the pid file is removed when they stop cleanly.
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Resolves when the process exits, or rejects after `ms`. */
export function waitForExit(child: ChildProcess, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`process ${String(child.pid)} did not exit within ${ms} ms`));
    }, ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Sends SIGTERM, then SIGKILL if the process is still there after `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  try {
    await waitForExit(child, graceMs);
  } catch {
    child.kill('SIGKILL');
    await waitForExit(child, 5_000);
  }
}
