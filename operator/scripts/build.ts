#!/usr/bin/env node
// Builds the operator as its image runs it: one ES module bundle (esbuild, scripts/bundle.ts) of
// operator/src/bin/chaperone-operator.ts with @chaperone/api and every npm package it uses inside, and the
// licences of those packages. No package stays external: none loads files next to its own code or a native
// binding (opa, which compiles policies, is a program of its own in the image). Like the sidecar's bundle,
// it spares the image the npm dependency set and Node.js its type stripper at start.
//
// Usage: node operator/scripts/build.ts [--out DIR]   (default dist/operator-bundle)
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { REPO, bundleProgram, isMainModule, type Bundle } from '../../scripts/bundle.ts';

/** Default output directory of the bundle. */
export const OPERATOR_BUNDLE_DIR = join(REPO, 'dist', 'operator-bundle');

/** The bundle's entry point (what `node` runs) inside the output directory. */
export const OPERATOR_BUNDLE_ENTRY = 'chaperone-operator.js';

/** npm packages imported from node_modules at run time instead of being bundled: none (see above). */
export const EXTERNAL_PACKAGES: readonly string[] = [];

/** Writes the bundle into `outDir` (emptied first); returns it with the npm packages inside. */
export function buildOperatorBundle(outDir: string = OPERATOR_BUNDLE_DIR): Bundle {
  return bundleProgram({
    name: 'chaperone-operator',
    entry: 'operator/src/bin/chaperone-operator.ts',
    outDir,
    external: EXTERNAL_PACKAGES,
    splitting: false,
  });
}

function main(): void {
  const { values } = parseArgs({ options: { out: { type: 'string' } } });
  const { entry } = buildOperatorBundle(values.out ?? OPERATOR_BUNDLE_DIR);
  console.log(`operator bundle: ${entry}`);
}

if (isMainModule(import.meta.filename)) main();
