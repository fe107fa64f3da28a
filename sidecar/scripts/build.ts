#!/usr/bin/env node
// Builds the sidecar as it runs in its image and in `make bench`: one ES module bundle (esbuild) of
// sidecar/src/bin/chaperone-sidecar.ts with @chaperone/api and the npm packages it uses inside, split into
// chunks at its dynamic imports so that what an idle sidecar does not need (the Kubernetes and HTTP
// engines, the durable audit trail, approvals) is still loaded only when configured or first used.
//
// Why a bundle rather than the .ts sources (bench/README.md, "Footprint"): running .ts makes Node load its
// type stripper (amaro, swc in WebAssembly) at start, and every ES module costs memory of its own
// (TypeBox alone is 247 modules, @chaperone/api builds every schema at import). Measured at rest, same
// configuration: sources 117 MiB RSS, tsc's output 98 MiB, this bundle 82 MiB.
//
// Packages left outside (EXTERNAL_PACKAGES) are imported from node_modules as usual: libpg-query's two
// builds find their .wasm files next to their own code, pg has an optional native binding esbuild cannot
// resolve. The image ships only those (and what they depend on) next to the bundle, with the licences of
// the packages inside it (scripts/bundle.ts). @kubernetes/client-node is bundled (into the chunk of the
// durable trail, policy sets and approvals, which injected pods load): from node_modules it cost 79 MiB at
// import (~870 modules), bundled and tree-shaken 37 MiB.
//
// Usage: node sidecar/scripts/build.ts [--out DIR]   (default dist/sidecar-bundle; `make build` runs it)
// The bundle resolves the external packages from the node_modules above DIR, so DIR must be inside the
// repository (or, in the image, next to /app/node_modules).
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { REPO, bundleProgram, isMainModule, type Bundle } from '../../scripts/bundle.ts';

/** Default output directory of the bundle. */
export const SIDECAR_BUNDLE_DIR = join(REPO, 'dist', 'sidecar-bundle');

/** The bundle's entry point (what `node` runs) inside the output directory. */
export const SIDECAR_BUNDLE_ENTRY = 'chaperone-sidecar.js';

/** npm packages imported from node_modules at run time instead of being bundled (see above). */
export const EXTERNAL_PACKAGES: readonly string[] = ['libpg-query', 'libpg-query-15', 'pg'];

/** Writes the bundle into `outDir` (emptied first, so no chunk of an earlier build is left); returns the entry's path. */
export function bundleSidecar(outDir: string = SIDECAR_BUNDLE_DIR): string {
  return buildSidecarBundle(outDir).entry;
}

/** The bundle and what is inside it (the image builder ships the licences and the external packages). */
export function buildSidecarBundle(outDir: string = SIDECAR_BUNDLE_DIR): Bundle {
  return bundleProgram({
    name: 'chaperone-sidecar',
    entry: 'sidecar/src/bin/chaperone-sidecar.ts',
    outDir,
    external: EXTERNAL_PACKAGES,
    splitting: true,
    // The worker threads' scripts, next to the entry (core/audit/audit-worker-client.ts,
    // core/audit/json-lines-writer.ts and event-loops.ts find them there).
    workers: {
      'audit-worker': 'sidecar/src/core/audit/audit-worker.ts',
      'loop-worker': 'sidecar/src/loop-worker.ts',
      'json-lines-worker': 'sidecar/src/core/audit/json-lines-worker.ts',
    },
  });
}

function main(): void {
  const { values } = parseArgs({ options: { out: { type: 'string' } } });
  const entry = bundleSidecar(values.out ?? SIDECAR_BUNDLE_DIR);
  console.log(`sidecar bundle: ${entry}`);
}

if (isMainModule(import.meta.filename)) main();
