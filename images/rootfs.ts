#!/usr/bin/env node
// Assembles the file trees of Chaperone's image layers. The same code runs in two places, so both
// produce the same layout: `make images` on this machine (images/build-images.ts, which packs the trees
// into OCI archives without a registry) and the build stage of images/Dockerfile (for users with a
// registry). Only where the inputs come from differs (a Node.js binary, opa, kubectl, psql).
//
// Layers:
//   node-runtime  /usr/local/bin/node and the shared libraries it links, the nonroot user (65532), CA
//                 certificates, /tmp; the base of the operator and sidecar images
//   operator      /usr/local/bin/opa and /app/operator: the operator's bundle (operator/scripts/build.ts)
//   sidecar       /app: the sidecar's bundle (sidecar/scripts/build.ts) in /app/sidecar, and in
//                 /app/node_modules only the npm packages the bundle leaves external and what they need
// A bundle directory carries the licences of the npm packages inside it (scripts/bundle.ts); the
// packages shipped whole carry their own.
//   agent         a small agent image: /bin/sh, psql, kubectl (+ libraries), the nonroot user, CA certificates
//   pause         the node's sandbox image: the static /pause binary (images/pause), local node only
//
// Usage (the Dockerfile's build stage):
//   node images/rootfs.ts --out DIR [--repo DIR] [--node BIN] [--opa BIN] [--kubectl BIN] [--psql BIN]
//        [--shell BIN] [--pause BIN] [--sidecar-bundle DIR] [--operator-bundle DIR] LAYER...
// writes DIR/LAYER for every LAYER named.
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { BUNDLE_MANIFEST, type BundleManifest } from '../scripts/bundle.ts';

export const LAYERS = ['node-runtime', 'operator', 'sidecar', 'agent', 'pause'] as const;
export type LayerName = (typeof LAYERS)[number];

/** The unprivileged user every Chaperone image runs as (the distroless "nonroot" user). */
export const NONROOT_UID = 65532;

/** Where a layer's inputs come from. */
export interface RootfsSources {
  /** Repository root: package-lock.json and the workspace packages (api, operator, sidecar). */
  readonly repo: string;
  readonly node: string;
  readonly opa: string;
  readonly kubectl: string;
  /** The psql binary itself (Debian: /usr/lib/postgresql/N/bin/psql, not the /usr/bin wrapper). */
  readonly psql: string;
  /** A POSIX shell for the agent image (Debian's dash). */
  readonly shell: string;
  /** Small tools for the agent's scripts. */
  readonly coreutils: readonly string[];
  /** The static pause binary (images/pause). */
  readonly pause?: string;
  /** PEM bundle of public CAs. */
  readonly caBundle: string;
  /** The sidecar's bundle directory (sidecar/scripts/build.ts); the sidecar layer needs it. */
  readonly sidecarBundle?: string;
  /** The operator's bundle directory (operator/scripts/build.ts); the operator layer needs it. */
  readonly operatorBundle?: string;
}

/** Default inputs on a Debian machine with the repository's own tools (`make tools`, `make deps`, `make packages`). */
export function defaultSources(repo: string): RootfsSources {
  const tools = process.env.CHAPERONE_TOOLS_BIN ?? join(repo, '.tools', 'bin');
  return {
    repo,
    node: join(repo, 'node_modules', 'node', 'bin', 'node'),
    opa: join(tools, 'opa'),
    kubectl: join(tools, 'kubectl'),
    psql: newestPsql(),
    shell: '/bin/dash',
    coreutils: ['/bin/cat', '/bin/sleep'],
    caBundle: '/etc/ssl/certs/ca-certificates.crt',
  };
}

function newestPsql(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const psql = join(root, v, 'bin', 'psql');
    if (existsSync(psql)) return psql;
  }
  return '/usr/bin/psql';
}

/** Writes the tree of `layer` into `dest` (which must not exist). */
export function assembleLayer(layer: LayerName, dest: string, sources: RootfsSources): void {
  mkdirSync(dest, { recursive: true });
  switch (layer) {
    case 'node-runtime':
      writeBase(dest, sources);
      installBinary(dest, sources.node, '/usr/local/bin/node');
      break;
    case 'operator':
      // libc and the loader come with node-runtime; opa links nothing else (checked below).
      if (sources.operatorBundle === undefined)
        throw new Error('the operator layer needs --operator-bundle DIR (node operator/scripts/build.ts --out DIR)');
      installBinary(dest, sources.opa, '/usr/local/bin/opa', sharedLibraries(sources.node));
      installBundle(dest, sources.repo, 'operator', sources.operatorBundle);
      break;
    case 'sidecar':
      if (sources.sidecarBundle === undefined)
        throw new Error('the sidecar layer needs --sidecar-bundle DIR (node sidecar/scripts/build.ts --out DIR)');
      installBundle(dest, sources.repo, 'sidecar', sources.sidecarBundle);
      break;
    case 'agent':
      writeBase(dest, sources);
      installBinary(dest, sources.shell, '/bin/sh');
      for (const tool of sources.coreutils) installBinary(dest, tool, `/bin/${tool.split('/').pop() ?? tool}`);
      installBinary(dest, sources.psql, '/usr/local/bin/psql');
      installBinary(dest, sources.kubectl, '/usr/local/bin/kubectl');
      break;
    case 'pause':
      if (sources.pause === undefined)
        throw new Error('the pause layer needs --pause BIN (images/pause, built static)');
      if (sharedLibraries(sources.pause).length > 0) throw new Error(`${sources.pause} must be a static binary`);
      installBinary(dest, sources.pause, '/pause');
      break;
  }
}

/** /etc/passwd and /etc/group with root and nonroot, the CA bundle, and a world-writable /tmp. */
function writeBase(dest: string, sources: RootfsSources): void {
  mkdirSync(join(dest, 'etc', 'ssl', 'certs'), { recursive: true });
  writeFileSync(
    join(dest, 'etc', 'passwd'),
    `root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:${NONROOT_UID}:${NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n`,
  );
  writeFileSync(join(dest, 'etc', 'group'), `root:x:0:\nnonroot:x:${NONROOT_UID}:\n`);
  copyFileSync(sources.caBundle, join(dest, 'etc', 'ssl', 'certs', 'ca-certificates.crt'));
  mkdirSync(join(dest, 'tmp'));
  chmodSync(join(dest, 'tmp'), 0o1777);
  mkdirSync(join(dest, 'home', 'nonroot'), { recursive: true });
}

/** The shared libraries `binary` loads, as absolute paths (ldd's view), including the dynamic loader. */
export function sharedLibraries(binary: string): string[] {
  let out: string;
  try {
    out = execFileSync('ldd', [binary], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    // ldd exits 1 for static binaries ("not a dynamic executable").
    const stdout = (err as { stdout?: string }).stdout ?? '';
    const stderr = (err as { stderr?: string }).stderr ?? '';
    if (/not a dynamic executable|statically linked/.test(stdout + stderr)) return [];
    throw err;
  }
  if (/statically linked/.test(out)) return [];
  const libraries: string[] = [];
  for (const line of out.split('\n')) {
    const arrow = /=>\s+(\/\S+)/.exec(line);
    const bare = /^\s*(\/\S+)\s+\(/.exec(line);
    const path = arrow?.[1] ?? bare?.[1];
    if (path !== undefined) libraries.push(path);
    else if (/=>\s+not found/.test(line)) throw new Error(`${binary}: ${line.trim()}`);
  }
  return libraries.sort();
}

/** Copies `source` to `target` inside `dest` (mode 0755) with every shared library it needs not in `provided`. */
function installBinary(dest: string, source: string, target: string, provided: readonly string[] = []): void {
  const path = join(dest, target);
  mkdirSync(dirname(path), { recursive: true });
  copyFileSync(realpathSync(source), path);
  chmodSync(path, 0o755);
  for (const library of sharedLibraries(source)) {
    if (provided.includes(library)) continue;
    const libraryTarget = join(dest, library);
    if (existsSync(libraryTarget)) continue;
    mkdirSync(dirname(libraryTarget), { recursive: true });
    copyFileSync(realpathSync(library), libraryTarget);
    chmodSync(libraryTarget, 0o755);
  }
}

interface LockPackage {
  readonly version?: string;
  readonly link?: boolean;
  readonly resolved?: string;
  readonly dependencies?: Record<string, string>;
  readonly optionalDependencies?: Record<string, string>;
  readonly peerDependencies?: Record<string, string>;
  readonly peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

/**
 * What `workspace` needs at run time, by package-lock.json: the lock paths of every npm package in its
 * dependency closure (resolved the way Node.js does, from the depending package's directory upwards) and
 * the workspace packages it links (lock paths `node_modules/@chaperone/api` → `api`).
 */
export function runtimeClosure(
  lock: { packages: Record<string, LockPackage> },
  workspace: string,
  /** Follow only these direct dependencies of the workspace (a bundle's externals); default all. */
  only?: readonly string[],
): { packages: string[]; links: Map<string, string> } {
  const packages = new Set<string>();
  const links = new Map<string, string>();
  const seen = new Set<string>();
  const visit = (path: string): void => {
    if (seen.has(path)) return;
    seen.add(path);
    const entry = lock.packages[path];
    if (entry === undefined) throw new Error(`package-lock.json has no entry ${path}`);
    const optionalPeers = entry.peerDependenciesMeta ?? {};
    const names =
      path === workspace && only !== undefined
        ? only
        : [
            ...Object.keys(entry.dependencies ?? {}),
            ...Object.keys(entry.optionalDependencies ?? {}),
            ...Object.keys(entry.peerDependencies ?? {}).filter((n) => optionalPeers[n]?.optional !== true),
          ];
    for (const name of names) {
      const resolved = resolveInLock(lock, path, name);
      if (resolved === undefined) {
        if (entry.optionalDependencies?.[name] !== undefined) continue; // not installed on this platform
        throw new Error(`${path === '' ? 'the root' : path} depends on ${name}, which package-lock.json does not have`);
      }
      const target = lock.packages[resolved];
      if (target?.link === true && target.resolved !== undefined) {
        links.set(resolved, target.resolved);
        visit(target.resolved);
      } else {
        packages.add(resolved);
        visit(resolved);
      }
    }
  };
  visit(workspace);
  return { packages: [...packages].sort(), links };
}

function resolveInLock(
  lock: { packages: Record<string, LockPackage> },
  from: string,
  name: string,
): string | undefined {
  let dir = from;
  for (;;) {
    const candidate = dir === '' ? `node_modules/${name}` : `${dir}/node_modules/${name}`;
    if (lock.packages[candidate] !== undefined) return candidate;
    if (dir === '') return undefined;
    const cut = dir.lastIndexOf('/node_modules/');
    dir = cut === -1 ? '' : dir.slice(0, cut);
  }
}

/** Files that never run: tests, type declarations, source maps. */
function shipped(path: string): boolean {
  return !/\.test(-helpers)?\.ts$|\.d\.[cm]?ts$|\.map$/.test(path);
}

/**
 * /app/<workspace>: the workspace's bundle directory (its JavaScript, chunks, licences and manifest), and
 * /app/node_modules: the npm packages the bundle leaves external, with their closure by package-lock.json
 * (resolved from the workspace, as Node.js resolves the bundle's imports from /app/<workspace>).
 */
function installBundle(dest: string, repo: string, workspace: string, bundle: string): void {
  const lock = JSON.parse(readFileSync(join(repo, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockPackage>;
  };
  const manifest = JSON.parse(readFileSync(join(bundle, BUNDLE_MANIFEST), 'utf8')) as BundleManifest;
  const app = join(dest, 'app');
  const { packages, links } = runtimeClosure(lock, workspace, manifest.external);
  if (links.size > 0)
    throw new Error(`${workspace}'s bundle leaves workspace packages external: ${[...links.keys()].join(', ')}`);
  cpSync(bundle, join(app, workspace), { recursive: true, filter: shipped });
  for (const pkg of packages) {
    const from = join(repo, pkg);
    if (!existsSync(from)) throw new Error(`${pkg} is not installed; run \`npm ci\``);
    // Nested copies (node_modules/a/node_modules/b, sidecar/node_modules/c) are packages of the closure of
    // their own, shipped at the same place, so Node.js resolves them from /app as it does in the repository.
    cpSync(from, join(app, pkg), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => relative(from, src).split('/')[0] !== 'node_modules' && shipped(src),
    });
  }
}

function main(): void {
  const { values, positionals } = parseArgs({
    options: {
      out: { type: 'string' },
      repo: { type: 'string' },
      node: { type: 'string' },
      opa: { type: 'string' },
      kubectl: { type: 'string' },
      psql: { type: 'string' },
      shell: { type: 'string' },
      pause: { type: 'string' },
      'sidecar-bundle': { type: 'string' },
      'operator-bundle': { type: 'string' },
    },
    allowPositionals: true,
  });
  if (values.out === undefined || positionals.length === 0) {
    console.error('usage: node images/rootfs.ts --out DIR [--repo DIR] [--node BIN] ... LAYER...');
    process.exit(2);
  }
  const repo = values.repo ?? join(import.meta.dirname, '..');
  const defaults = defaultSources(repo);
  const sources: RootfsSources = {
    ...defaults,
    ...(values.node === undefined ? {} : { node: values.node }),
    ...(values.opa === undefined ? {} : { opa: values.opa }),
    ...(values.kubectl === undefined ? {} : { kubectl: values.kubectl }),
    ...(values.psql === undefined ? {} : { psql: values.psql }),
    ...(values.shell === undefined ? {} : { shell: values.shell }),
    ...(values.pause === undefined ? {} : { pause: values.pause }),
    ...(values['sidecar-bundle'] === undefined ? {} : { sidecarBundle: values['sidecar-bundle'] }),
    ...(values['operator-bundle'] === undefined ? {} : { operatorBundle: values['operator-bundle'] }),
  };
  for (const layer of positionals) {
    if (!(LAYERS as readonly string[]).includes(layer)) {
      console.error(`rootfs: unknown layer ${layer} (${LAYERS.join(', ')})`);
      process.exit(2);
    }
    const dest = join(values.out, layer);
    rmSync(dest, { recursive: true, force: true });
    assembleLayer(layer as LayerName, dest, sources);
  }
}

if (runAsProgram()) main();

/** Whether this file is the program node was started with (not a module imported by another). */
function runAsProgram(): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(import.meta.filename);
  } catch {
    // argv[1] is not a path (a glob given to node --test, for example)
    return false;
  }
}
