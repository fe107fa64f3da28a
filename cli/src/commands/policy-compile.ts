// kubectl chaperone policy compile -f POLICY.yaml -o DIR: compiles AccessPolicies with opa exactly as the
// operator does and writes each as a bundle directory DIR/NAME/{policy.wasm, manifest.json}, the layout a
// standalone sidecar's `policies.bundleDir` reads (docs/standalone.md). Each file is written to a temporary
// name and renamed into place, wasm before manifest: the sidecar checks a bundle's bytes against the
// manifest's digest, so a read between the two renames is refused and the previous bundle stays in force.
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BUNDLE_MANIFEST_FILE, BUNDLE_WASM_FILE } from '@chaperone/api';
import { compilePolicyFiles } from './policy-test.ts';
import { formatTable } from '../table.ts';

export interface PolicyCompileOptions {
  readonly policyFiles: readonly string[];
  readonly outputDir: string;
  readonly opaPath?: string;
}

export interface PolicyCompileOutcome {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

function writeAtomically(path: string, data: string | Uint8Array): void {
  const temporary = `${path}.tmp-${String(process.pid)}`;
  writeFileSync(temporary, data);
  renameSync(temporary, path);
}

/** Compiles every policy and writes the bundles; nothing is written when any policy fails to compile. */
export async function runPolicyCompile(options: PolicyCompileOptions): Promise<PolicyCompileOutcome> {
  const { compiled, errors } = await compilePolicyFiles(options.policyFiles, options.opaPath);
  if (errors.length > 0) {
    return { exitCode: 1, stdout: '', stderr: `${errors.map((e) => `error: ${e}`).join('\n')}\n` };
  }
  if (compiled.length === 0) return { exitCode: 1, stdout: '', stderr: 'error: no AccessPolicy in the files\n' };
  const names = new Set<string>();
  for (const c of compiled) {
    if (names.has(c.name)) {
      return {
        exitCode: 1,
        stdout: '',
        stderr: `error: two AccessPolicies are named ${c.name}; bundle directories are named after the policy\n`,
      };
    }
    names.add(c.name);
  }
  const rows: string[][] = [];
  for (const c of compiled) {
    const dir = join(options.outputDir, c.name);
    mkdirSync(dir, { recursive: true });
    writeAtomically(join(dir, BUNDLE_WASM_FILE), c.bundle.wasm);
    writeAtomically(
      join(dir, BUNDLE_MANIFEST_FILE),
      `${JSON.stringify({ manifest: c.bundle.manifest, digest: c.bundle.digest })}\n`,
    );
    rows.push([`${c.namespace}/${c.name}`, dir, c.bundle.digest]);
  }
  return { exitCode: 0, stdout: formatTable(['POLICY', 'BUNDLE', 'DIGEST'], rows), stderr: '' };
}
