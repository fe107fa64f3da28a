// One esbuild bundle of a program (the sidecar's and the operator's, sidecar/scripts/build.ts and
// operator/scripts/build.ts), as its image runs it: ES modules, Node.js 24, @chaperone/api and every npm
// package the program imports inside, except the packages it names as external (they stay in node_modules
// and the image ships them with their own files).
//
// The bundle directory also holds the licences of the npm packages inside it (licenses/NAME@VERSION/),
// copied from each package's own LICENSE/NOTICE files: the bundle is a copy of their code, which MIT,
// ISC, BSD and Apache-2.0 let us distribute only with their notices. esbuild's `legalComments: 'eof'`
// keeps the /*! @license */ comments too, but most packages have none; the files are what counts.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import * as esbuild from 'esbuild';

export const REPO = join(import.meta.dirname, '..');

/** Where the licences of the bundled packages go inside a bundle directory. */
export const LICENSES_DIR = 'licenses';

/**
 * What a bundle directory says about itself (BUNDLE_MANIFEST inside it): its entry file, the npm packages
 * it leaves external (the image ships them and what they depend on) and those it has inside.
 */
export interface BundleManifest {
  readonly entry: string;
  readonly external: readonly string[];
  readonly bundledPackages: readonly string[];
}

export const BUNDLE_MANIFEST = 'bundle.json';

export interface BundleOptions {
  /** Name of the entry's output file without `.js` (e.g. `chaperone-sidecar`). */
  readonly name: string;
  /** The program's entry point, relative to the repository. */
  readonly entry: string;
  readonly outDir: string;
  /** npm packages left in node_modules (imported at run time from the node_modules above outDir). */
  readonly external: readonly string[];
  /** Split into chunks at dynamic imports (loaded only when first used). */
  readonly splitting: boolean;
  /** Further entry points (worker threads' scripts), by output name, relative to the repository. */
  readonly workers?: Readonly<Record<string, string>>;
}

export interface Bundle {
  /** The entry file's absolute path (what `node` runs). */
  readonly entry: string;
  /** The npm packages inside the bundle, as their directories relative to the repository (lock paths). */
  readonly bundledPackages: readonly string[];
}

/** Writes the bundle and its licences into `outDir` (emptied first, so nothing of an earlier build is left). */
export function bundleProgram(options: BundleOptions): Bundle {
  rmSync(options.outDir, { recursive: true, force: true });
  const result = esbuild.buildSync({
    entryPoints: {
      [options.name]: join(REPO, options.entry),
      ...Object.fromEntries(Object.entries(options.workers ?? {}).map(([name, entry]) => [name, join(REPO, entry)])),
    },
    // Paths in the bundle's comments (and the metafile) are relative to the repository, wherever the build runs from.
    absWorkingDir: REPO,
    bundle: true,
    splitting: options.splitting,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    outdir: options.outDir,
    chunkNames: 'chunks/[name]-[hash]',
    external: [...options.external],
    // CommonJS packages inside an ES module bundle call require() for Node's built-in modules.
    banner: {
      js: "import { createRequire as __chaperoneCreateRequire } from 'node:module';\nconst require = __chaperoneCreateRequire(import.meta.url);",
    },
    legalComments: 'eof',
    logLevel: 'warning',
    metafile: true,
  });
  const bundledPackages = packagesOf(Object.keys(result.metafile.inputs));
  writeLicenses(bundledPackages, join(options.outDir, LICENSES_DIR));
  const manifest: BundleManifest = { entry: `${options.name}.js`, external: options.external, bundledPackages };
  writeFileSync(join(options.outDir, BUNDLE_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  return { entry: join(options.outDir, manifest.entry), bundledPackages };
}

/** The package directories (`node_modules/a`, `node_modules/@s/b/node_modules/c`) of bundled input files. */
export function packagesOf(inputs: readonly string[]): string[] {
  const packages = new Set<string>();
  for (const input of inputs) {
    const at = input.lastIndexOf('node_modules/');
    if (at === -1) continue; // our own sources (workspaces)
    const rest = input.slice(at + 'node_modules/'.length).split('/');
    const name = rest[0]?.startsWith('@') === true ? rest.slice(0, 2).join('/') : rest[0];
    if (name !== undefined && name !== '') packages.add(`${input.slice(0, at)}node_modules/${name}`);
  }
  return [...packages].sort();
}

const LICENSE_FILE = /^(licen[cs]e|copying|notice)([._-].*)?$/i;

/** licenses/NAME@VERSION/ with each package's licence and notice files (or its declared licence when it ships none). */
function writeLicenses(packages: readonly string[], dir: string): void {
  for (const pkg of packages) {
    const manifest = JSON.parse(readFileSync(join(REPO, pkg, 'package.json'), 'utf8')) as {
      name: string;
      version: string;
      license?: string;
    };
    const target = join(dir, `${manifest.name.replace('/', '+')}@${manifest.version}`);
    mkdirSync(target, { recursive: true });
    const files = existsSync(join(REPO, pkg)) ? readdirSync(join(REPO, pkg)).filter((f) => LICENSE_FILE.test(f)) : [];
    for (const file of files) copyFileSync(join(REPO, pkg, file), join(target, file));
    if (files.length === 0) {
      writeFileSync(
        join(target, 'LICENSE'),
        `${manifest.name}@${manifest.version} is licensed under ${manifest.license ?? 'an undeclared licence'} ` +
          `(its package.json); the package ships no licence file.\n`,
      );
    }
  }
}

/** Whether `filename` (a module's `import.meta.filename`) is the program node was started with. */
export function isMainModule(filename: string): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(filename);
  } catch {
    return false;
  }
}
