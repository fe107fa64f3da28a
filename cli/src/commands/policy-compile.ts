// kubectl chaperone policy compile -f POLICY.yaml -o DIR: compiles AccessPolicies with opa exactly as the
// operator does and writes each as a bundle directory DIR/NAME/{policy.wasm, manifest.json}, the layout a
// standalone sidecar's `policies.bundleDir` reads (docs/standalone.md). Each file is written to a temporary
// name and renamed into place, wasm before manifest: the sidecar checks a bundle's bytes against the
// manifest's digest, so a read between the two renames is refused and the previous bundle stays in force.
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BUNDLE_MANIFEST_FILE, BUNDLE_WASM_FILE } from '@chaperone/api';
import { compilePolicyFiles, PolicyTestInputError } from './policy-test.ts';
import type { CommandIo } from '../audit/cluster.ts';
import { executableDir, findOpa, OpaNotFoundError, opaVersionWarning, repositoryOpa } from '../opa.ts';
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

export const POLICY_COMPILE_USAGE = `Usage:
  kubectl chaperone policy compile -f POLICY.yaml -o DIR [--opa PATH]

Compiles AccessPolicies with opa, as the operator does, into bundle directories DIR/NAME (policy.wasm,
manifest.json) for a standalone sidecar's policies.bundleDir. Exit 0: written; 1: a policy does not
compile (nothing is written then) or a file cannot be read; 2: usage.

Flags:
  -f, --filename FILE   AccessPolicy YAML (repeatable; multi-document files and v1 Lists allowed)
  -o, --output DIR      where the bundle directories go
      --opa PATH        the opa binary (default: $CHAPERONE_OPA, else opa beside kubectl-chaperone,
                        else opa on PATH)
`;

/** kubectl chaperone policy compile: flags in, exit code out. */
export async function run(args: string[], io: CommandIo): Promise<number> {
  const usage = (message: string): number => {
    io.stderr.write(`error: ${message}\n\n${POLICY_COMPILE_USAGE}`);
    return 2;
  };
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        filename: { type: 'string', short: 'f', multiple: true },
        output: { type: 'string', short: 'o' },
        opa: { type: 'string' },
      },
    }));
  } catch (err) {
    return usage((err as Error).message);
  }
  const { filename, output } = values;
  if (filename === undefined || filename.length === 0) return usage('policy compile needs -f POLICY.yaml');
  if (output === undefined) return usage('policy compile needs -o DIR');
  try {
    const opa = findOpa({
      flag: values.opa,
      env: process.env,
      executableDir: executableDir(),
      repositoryOpa: repositoryOpa(),
    });
    io.stderr.write(await opaVersionWarning(opa));
    const outcome = await runPolicyCompile({ policyFiles: filename, outputDir: output, opaPath: opa.path });
    io.stdout.write(outcome.stdout);
    io.stderr.write(outcome.stderr);
    return outcome.exitCode;
  } catch (err) {
    if (err instanceof PolicyTestInputError || err instanceof OpaNotFoundError) {
      io.stderr.write(`error: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
