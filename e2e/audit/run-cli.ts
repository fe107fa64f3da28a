// Runs kubectl-chaperone as a child process, as a user would.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../harness/tools.ts';

const BIN = join(REPO_ROOT, 'cli', 'src', 'bin', 'kubectl-chaperone.ts');
export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') {
          reject(new Error(`could not run kubectl-chaperone: ${err.message}`, { cause: err }));
          return;
        }
        resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
      },
    );
  });
}
