// `make release` for tests: scripts/release.ts run for one test version with a throwaway changelog entry and
// signing key, into a directory of the caller. Test files that need release artefacts (release.test.ts, the
// story on real pods) run it under one lock on the shared work directory, so the second one reuses what
// the first built (executables, opa, images) instead of racing it.
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { REPO_ROOT, toolPath } from '../harness/tools.ts';

export const TEST_RELEASE_VERSION = '0.0.0-test.1';

export interface TestRelease {
  readonly outDir: string;
  readonly version: string;
  readonly exitCode: number;
  readonly stderr: string;
  /** The packaged chart. */
  readonly chart: string;
  /** kubectl-chaperone_VERSION_linux_{amd64,arm64}.tar.gz */
  readonly cliArchive: { readonly amd64: string; readonly arm64: string };
  /** The image archives of this machine's architecture. */
  readonly images: { readonly operator: string; readonly sidecar: string };
}

function run(file: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { cwd: REPO_ROOT, env, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 1_800_000 },
      (err, _stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') reject(new Error(`could not run ${file}: ${err.message}`));
        else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stderr });
      },
    );
  });
}

/**
 * Makes the release of TEST_RELEASE_VERSION into root/release (root must exist). With a signing key (a PEM
 * Ed25519 private key) SHA256SUMS is signed. The result says how the script exited; callers assert on it.
 */
export async function makeTestRelease(root: string, options: { signingKey?: string } = {}): Promise<TestRelease> {
  const version = TEST_RELEASE_VERSION;
  const outDir = join(root, 'release');
  const changelog = join(root, 'CHANGELOG.md');
  writeFileSync(changelog, `# Changelog\n\n## [${version}] - 2026-12-04\n\n- A release made by the release test.\n`);
  const workDir = join(REPO_ROOT, 'dist', 'release', '.work', version);
  mkdirSync(workDir, { recursive: true });
  const made = await run(
    'flock',
    [
      join(workDir, '..', `${version}.lock`),
      process.execPath,
      join(REPO_ROOT, 'scripts', 'release.ts'),
      '--version',
      version,
      '--out',
      outDir,
      '--changelog',
      changelog,
      ...(options.signingKey === undefined ? [] : ['--signing-key', options.signingKey]),
      '--allow-dirty',
      '--base-url',
      'https://downloads.example.com/chaperone',
    ],
    { ...process.env, PATH: `${dirname(toolPath('helm'))}:${process.env.PATH ?? ''}` },
  );
  const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
  return {
    outDir,
    version,
    exitCode: made.code,
    stderr: made.stderr,
    chart: join(outDir, `chaperone-${version}.tgz`),
    cliArchive: {
      amd64: join(outDir, `kubectl-chaperone_${version}_linux_amd64.tar.gz`),
      arm64: join(outDir, `kubectl-chaperone_${version}_linux_arm64.tar.gz`),
    },
    images: {
      operator: join(outDir, `chaperone-operator_${version}_linux_${arch}.tar`),
      sidecar: join(outDir, `chaperone-sidecar_${version}_linux_${arch}.tar`),
    },
  };
}
