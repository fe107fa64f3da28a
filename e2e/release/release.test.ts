// make release's artefacts, checked the way a user and a security team would use them: SHA256SUMS with
// sha256sum, its signature with openssl, the plugin installed by krew from the release manifest and
// archive (and refused with a wrong checksum), the npm package installed with npm and run on the oldest
// Node.js it claims (cli/package.json engines), the packaged chart installed (server dry run) against the
// real API server with its images pinned to the version. Every run goes from a clean environment.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  realpathSync,
  closeSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { fetchNode, nodeFloor, toolsCache } from '../../cli/scripts/build.ts';
import { changelogEntry, ReleaseError } from '../../scripts/release.ts';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { REPO_ROOT, toolPath } from '../harness/tools.ts';
import { buildTrail, createSigner, createTrail } from '../audit/trail-fixture.ts';
import { makeTestRelease, TEST_RELEASE_VERSION } from './test-release.ts';

const VERSION = TEST_RELEASE_VERSION;

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function runIn(
  file: string,
  args: readonly string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { encoding: 'utf8', maxBuffer: 64 << 20, ...options, timeout: 600_000 },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') reject(new Error(`could not run ${file}: ${err.message}`));
        else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
      },
    );
  });
}

/** A command in a clean environment (env -i) with only PATH and HOME. */
function clean(path: string, home: string, cwd: string, args: readonly string[], extra: string[] = []): Promise<Run> {
  return runIn('/usr/bin/env', ['-i', `PATH=${path}`, `HOME=${home}`, ...extra, ...args], { cwd });
}

/** The ELF machine field (0x3e x86-64, 0xb7 aarch64). */
function elfMachine(file: string): number {
  const fd = openSync(file, 'r');
  try {
    const header = Buffer.alloc(20);
    readSync(fd, header, 0, 20, 0);
    assert.equal(header.subarray(0, 4).toString('latin1'), '\x7fELF', `${file} is an ELF file`);
    return header.readUInt16LE(18);
  } finally {
    closeSync(fd);
  }
}

test('CHANGELOG.md entries: the version section, or a clear refusal', () => {
  const changelog =
    '# Changelog\n\n## [Unreleased]\n\n- next\n\n## [1.2.0] - 2026-01-01\n\n- one\n- two\n\n## [1.1.0] - 2025-01-01\n\n- old\n';
  assert.equal(changelogEntry(changelog, '1.2.0'), '- one\n- two');
  assert.equal(changelogEntry(changelog, '1.1.0'), '- old');
  assert.throws(() => changelogEntry(changelog, '1.2'), ReleaseError);
  assert.throws(() => changelogEntry(changelog, '1.3.0'), /CHANGELOG\.md has no entry for 1\.3\.0/);
  assert.throws(() => changelogEntry('## [2.0.0] - x\n\n## [1.0.0]\n- a\n', '2.0.0'), /is empty/);
  // The repository's own changelog parses and has the section a release is cut from.
  assert.match(readFileSync(join(REPO_ROOT, 'CHANGELOG.md'), 'utf8'), /^## \[Unreleased\]$/m);
});

test('one licence, Apache-2.0, declared the same everywhere it is declared', () => {
  const license = readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8');
  assert.match(license, /^\s+Apache License\n\s+Version 2\.0, January 2004\n/);
  assert.match(license, /END OF TERMS AND CONDITIONS/);
  for (const dir of ['.', 'api', 'operator', 'sidecar', 'cli']) {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, dir, 'package.json'), 'utf8')) as { license?: string };
    assert.equal(pkg.license, 'Apache-2.0', `${dir}/package.json`);
  }
  const chart = parse(readFileSync(join(REPO_ROOT, 'charts', 'chaperone', 'Chart.yaml'), 'utf8'));
  assert.equal(chart.annotations['artifacthub.io/license'], 'Apache-2.0');
  const dockerfile = readFileSync(join(REPO_ROOT, 'images', 'Dockerfile'), 'utf8');
  const titles = [...dockerfile.matchAll(/^LABEL org\.opencontainers\.image\.title=/gm)].length;
  const licences = [...dockerfile.matchAll(/^LABEL org\.opencontainers\.image\.licenses="([^"]*)"/gm)].map((m) => m[1]);
  assert.ok(titles > 0);
  assert.deepEqual(licences, Array<string>(titles).fill('Apache-2.0'), 'every image stage is labelled Apache-2.0');
  // krew's index asks for the licence in every platform's files.
  const krew = parse(readFileSync(join(REPO_ROOT, 'cli', 'krew', 'chaperone.yaml'), 'utf8'));
  for (const platform of krew.spec.platforms) {
    assert.ok(
      platform.files.some((f: { from: string }) => f.from === 'LICENSE'),
      platform.selector.matchLabels.arch,
    );
  }
});

test('make release refuses without a version, with a malformed one, and without a changelog entry', async () => {
  const noVersion = await runIn('make', ['-s', 'release'], { cwd: REPO_ROOT });
  assert.equal(noVersion.code, 2);
  assert.match(noVersion.stderr, /make release needs VERSION=x\.y\.z/);
  const script = join(REPO_ROOT, 'scripts', 'release.ts');
  const malformed = await runIn(process.execPath, [script, '--version', 'v1.0'], { cwd: REPO_ROOT });
  assert.equal(malformed.code, 2);
  assert.match(malformed.stderr, /VERSION must be semantic/);
  const unlisted = await runIn(process.execPath, [script, '--version', '99.0.0', '--allow-dirty'], { cwd: REPO_ROOT });
  assert.equal(unlisted.code, 2);
  assert.match(unlisted.stderr, /CHANGELOG\.md has no entry for 99\.0\.0/);
});

test('the release artefacts install and verify as users use them', { timeout: 1_200_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'chaperone-release-'));
  t.after(() => {
    rmSync(root, { recursive: true, force: true });
  });
  const home = join(root, 'home');
  const work = join(root, 'work');
  for (const d of [home, join(home, '.kube'), work]) mkdirSync(d, { recursive: true });
  writeFileSync(join(home, '.kube', 'config'), await kubectl(['config', 'view', '--flatten', '--minify', '--raw']));
  const key = join(root, 'signing-key.pem');
  assert.equal((await runIn('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', key])).code, 0);

  const made = await makeTestRelease(root, { signingKey: key });
  assert.equal(made.exitCode, 0, made.stderr);
  const out = made.outDir;
  const amd64 = `kubectl-chaperone_${VERSION}_linux_amd64.tar.gz`;
  const arm64 = `kubectl-chaperone_${VERSION}_linux_arm64.tar.gz`;
  const chart = `chaperone-${VERSION}.tgz`;
  const npmPackage = `chaperone-cli-${VERSION}.tgz`;
  const kubectlDir = dirname(realpathSync(toolPath('kubectl')));

  await t.test('SHA256SUMS covers every artefact and its Ed25519 signature verifies', async () => {
    const sums = readFileSync(join(out, 'SHA256SUMS'), 'utf8');
    const listed = sums
      .trim()
      .split('\n')
      .map((l) => l.split('  ')[1]);
    assert.deepEqual(
      listed,
      [
        'BUILD-INFO.json',
        'RELEASE-NOTES.md',
        'THIRD_PARTY_NOTICES.md',
        chart,
        npmPackage,
        'chaperone-krew.yaml',
        amd64,
        arm64,
        `chaperone-operator_${VERSION}_linux_amd64.tar`,
        `chaperone-sidecar_${VERSION}_linux_amd64.tar`,
      ].sort(),
    );
    const check = await runIn('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: out });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const signature = join(root, 'SHA256SUMS.sig.raw');
    writeFileSync(signature, Buffer.from(readFileSync(join(out, 'SHA256SUMS.sig'), 'utf8'), 'base64'));
    const verify = (file: string) =>
      runIn('openssl', [
        'pkeyutl',
        '-verify',
        '-pubin',
        '-inkey',
        join(out, 'SHA256SUMS.pub'),
        '-rawin',
        '-in',
        file,
        '-sigfile',
        signature,
      ]);
    const good = await verify(join(out, 'SHA256SUMS'));
    assert.equal(good.code, 0, good.stdout + good.stderr);
    assert.match(good.stdout, /Signature Verified Successfully/);
    const forged = join(root, 'SHA256SUMS.forged');
    writeFileSync(forged, sums.replace(/^[0-9a-f]{64}/, '0'.repeat(64)));
    assert.notEqual((await verify(forged)).code, 0, 'an edited SHA256SUMS does not verify');
  });

  await t.test('notes, build info and notices say what is inside', () => {
    const notes = readFileSync(join(out, 'RELEASE-NOTES.md'), 'utf8');
    assert.match(
      notes,
      new RegExp(`^# Chaperone ${VERSION.replace(/\./g, '\\.')}\n\n- A release made by the release test\\.\n`),
    );
    assert.match(notes, new RegExp(`chaperone-operator_${VERSION.replace(/\./g, '\\.')}_linux_amd64\\.tar`));
    const info = JSON.parse(readFileSync(join(out, 'BUILD-INFO.json'), 'utf8'));
    assert.equal(info.version, VERSION);
    for (const image of ['operator', 'sidecar']) {
      assert.equal(info.images[image].ref, `ghcr.io/chaperone/chaperone-${image}:${VERSION}`);
      assert.match(info.images[image].manifestDigest, /^sha256:[0-9a-f]{64}$/);
      // The archive is an OCI layout whose index names the image as the packaged chart does.
      const archive = join(out, `chaperone-${image}_${VERSION}_linux_amd64.tar`);
      const index = JSON.parse(execFileSync('tar', ['-xOf', archive, 'index.json'], { encoding: 'utf8' }));
      assert.equal(index.manifests[0].digest, info.images[image].manifestDigest);
      assert.equal(index.manifests[0].annotations['io.containerd.image.name'], info.images[image].ref);
    }
    assert.match(info.commit, /^[0-9a-f]{40}$/);
    const notices = readFileSync(join(out, 'THIRD_PARTY_NOTICES.md'), 'utf8');
    for (const name of [
      'Node.js',
      'Open Policy Agent',
      '@kubernetes/client-node',
      'jose',
      'yaml',
      '@open-policy-agent/opa-wasm',
    ]) {
      assert.ok(notices.includes(`## ${name} `), `notices name ${name}`);
    }
  });

  await t.test('the archives hold the executable and a static opa of their architecture', async () => {
    for (const [archive, machine] of [
      [amd64, 0x3e],
      [arm64, 0xb7],
    ] as const) {
      const dir = join(root, `unpacked-${machine}`);
      mkdirSync(dir);
      assert.equal((await runIn('tar', ['-xzf', join(out, archive), '-C', dir])).code, 0);
      const listing = await runIn('tar', ['-tzvf', join(out, archive)]);
      assert.deepEqual(
        listing.stdout
          .trim()
          .split('\n')
          .map((l) => l.split(/\s+/).slice(-1)[0]),
        ['LICENSE', 'THIRD_PARTY_NOTICES.md', 'kubectl-chaperone', 'opa'],
      );
      assert.match(listing.stdout, /^-rwxr-xr-x 0\/0 .* kubectl-chaperone$/m);
      assert.equal(readFileSync(join(dir, 'LICENSE'), 'utf8'), readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8'));
      for (const file of ['kubectl-chaperone', 'opa'])
        assert.equal(elfMachine(join(dir, file)), machine, `${archive}: ${file}`);
      // The single-executable blob is in, and the fuse that makes node run it is flipped.
      const executable = readFileSync(join(dir, 'kubectl-chaperone'));
      assert.ok(executable.includes('NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2:1'), `${archive}: fuse flipped`);
      assert.ok(executable.includes(`version: "${VERSION}"`), `${archive}: carries its version`);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  await t.test('the arm64 executable runs (qemu-user) against the API server, with its arm64 opa', async (st) => {
    const qemu = '/usr/bin/qemu-aarch64-static';
    const sysroot = join(toolsCache(), 'arm64-sysroot', 'root');
    assert.ok(existsSync(qemu) && existsSync(join(sysroot, 'lib', 'ld-linux-aarch64.so.1')), 'run make packages');
    const dir = join(root, 'arm64');
    mkdirSync(dir);
    assert.equal((await runIn('tar', ['-xzf', join(out, arm64), '-C', dir])).code, 0);
    // No binfmt_misc here: the arm64 opa runs through qemu from a wrapper the executable is pointed at.
    const opa = join(dir, 'opa-under-qemu');
    writeFileSync(opa, `#!/bin/sh\nexec ${qemu} ${join(dir, 'opa')} "$@"\n`, { mode: 0o755 });
    const arm = (...args: string[]) =>
      clean(kubectlDir, home, work, [qemu, '-L', sysroot, join(dir, 'kubectl-chaperone'), ...args]);
    const version = await arm('version');
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, /\(node v24\.\d+\.\d+, linux\/arm64, commit [0-9a-f]{12}\)/);

    for (const name of ['orders-readonly.yaml', 'orders-readonly.cases.yaml']) {
      writeFileSync(join(work, name), readFileSync(join(REPO_ROOT, 'examples', 'policy-tests', name)));
    }
    const tested = await arm(
      'policy',
      'test',
      '-f',
      'orders-readonly.yaml',
      '-i',
      'orders-readonly.cases.yaml',
      '--opa',
      opa,
    );
    assert.equal(tested.code, 0, tested.stdout + tested.stderr);
    assert.equal(tested.stderr, '8 passed, 0 failed\n');

    const ns = await createTestNamespace(st);
    await createTrail(
      kubeConfig(),
      await buildTrail({ name: 'arm64-read', namespace: ns, signer: await createSigner() }),
    );
    const verified = await arm('verify', '--all', '-n', ns);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /arm64-read/);
  });

  await t.test('krew installs the plugin from the manifest and archive; kubectl finds it', async () => {
    const manifest = parse(readFileSync(join(out, 'chaperone-krew.yaml'), 'utf8'));
    assert.equal(manifest.spec.version, `v${VERSION}`);
    const linux = manifest.spec.platforms.find((p: any) => p.selector.matchLabels.arch === 'amd64');
    assert.equal(linux.uri, `https://downloads.example.com/chaperone/${amd64}`);
    const krewRoot = join(root, 'krew');
    const path = `${join(krewRoot, 'bin')}:${dirname(realpathSync(toolPath('krew')))}:${kubectlDir}`;
    const krew = (manifestFile: string) =>
      clean(
        path,
        home,
        work,
        ['krew', 'install', `--manifest=${manifestFile}`, `--archive=${join(out, amd64)}`],
        [`KREW_ROOT=${krewRoot}`],
      );

    // A manifest whose checksum does not match the archive is refused.
    const wrong = join(root, 'wrong-krew.yaml');
    writeFileSync(wrong, readFileSync(join(out, 'chaperone-krew.yaml'), 'utf8').replace(linux.sha256, '0'.repeat(64)));
    const refused = await krew(wrong);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /checksum does not match/);

    const installed = await krew(join(out, 'chaperone-krew.yaml'));
    assert.equal(installed.code, 0, installed.stdout + installed.stderr);
    const list = await clean(path, home, work, ['kubectl', 'plugin', 'list']);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^${join(krewRoot, 'bin', 'kubectl-chaperone')}$`, 'm'));
    const version = await clean(path, home, work, ['kubectl', 'chaperone', 'version']);
    assert.match(
      version.stdout,
      new RegExp(
        `^kubectl-chaperone ${VERSION.replace(/\./g, '\\.')} \\(node v24\\.\\d+\\.\\d+, linux/x64, commit [0-9a-f]{12}\\)`,
      ),
    );

    // policy test finds the opa krew put beside the executable (the release's static build, no warning).
    for (const name of ['orders-readonly.yaml', 'orders-readonly.cases.yaml']) {
      writeFileSync(join(work, name), readFileSync(join(REPO_ROOT, 'examples', 'policy-tests', name)));
    }
    const tested = await clean(path, home, work, [
      'kubectl',
      'chaperone',
      'policy',
      'test',
      '-f',
      'orders-readonly.yaml',
      '-i',
      'orders-readonly.cases.yaml',
    ]);
    assert.equal(tested.code, 0, tested.stdout + tested.stderr);
    assert.equal(tested.stderr, '8 passed, 0 failed\n');
  });

  await t.test('the npm package runs on the oldest Node.js its engines allow, against the API server', async (st) => {
    const floor = nodeFloor();
    const node = await fetchNode('linux-x64', floor);
    const prefix = join(root, 'npm-global');
    const install = await runIn('npm', [
      'install',
      '--global',
      '--prefix',
      prefix,
      '--no-audit',
      '--no-fund',
      join(out, npmPackage),
    ]);
    assert.equal(install.code, 0, install.stderr);
    const packaged = JSON.parse(
      readFileSync(join(prefix, 'lib', 'node_modules', '@chaperone', 'cli', 'package.json'), 'utf8'),
    );
    assert.equal(packaged.version, VERSION);
    assert.equal(packaged.dependencies, undefined, 'everything is bundled');
    assert.equal(packaged.license, 'Apache-2.0');
    assert.equal(
      readFileSync(join(prefix, 'lib', 'node_modules', '@chaperone', 'cli', 'LICENSE'), 'utf8'),
      readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8'),
    );
    const path = `${join(prefix, 'bin')}:${dirname(node)}:${kubectlDir}`;
    const version = await clean(path, home, work, ['kubectl', 'chaperone', 'version']);
    assert.equal(version.code, 0, version.stderr);
    assert.match(
      version.stdout,
      new RegExp(`^kubectl-chaperone ${VERSION.replace(/\./g, '\\.')} \\(node v${floor.replace(/\./g, '\\.')},`),
    );

    const ns = await createTestNamespace(st);
    const signer = await createSigner();
    await createTrail(kubeConfig(), await buildTrail({ name: 'npm-installed', namespace: ns, signer }));
    const verified = await clean(path, home, work, ['kubectl', 'chaperone', 'verify', '--all', '-n', ns]);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /npm-installed/);
  });

  await t.test('the packaged chart pins its images to the version and installs (server dry run)', async (st) => {
    const helm = toolPath('helm');
    const shown = parse((await runIn(helm, ['show', 'chart', join(out, chart)])).stdout);
    assert.equal(shown.version, VERSION);
    assert.equal(shown.appVersion, VERSION);
    assert.equal(shown.annotations['artifacthub.io/license'], 'Apache-2.0');
    const chartLicense = await runIn('tar', ['-xzOf', join(out, chart), 'chaperone/LICENSE']);
    assert.equal(chartLicense.stdout, readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8'));
    const values = parse((await runIn(helm, ['show', 'values', join(out, chart)])).stdout);
    assert.equal(values.image.tag, VERSION);
    assert.equal(values.sidecarImage.tag, VERSION);

    const ns = await createTestNamespace(st);
    const release = 'chaperone';
    const kubeconfig = join(home, '.kube', 'config');
    const dryRun = await runIn(helm, [
      'install',
      release,
      join(out, chart),
      '--namespace',
      ns,
      '--kubeconfig',
      kubeconfig,
      '--dry-run=server',
      '--set',
      `watchNamespace=${ns}`,
    ]);
    assert.equal(dryRun.code, 0, dryRun.stderr);
    const rendered = parseAllDocuments(dryRun.stdout.slice(dryRun.stdout.indexOf('---')))
      .map((d) => d.toJS())
      .filter((d) => d !== null);
    const deployment = rendered.find((d: any) => d.kind === 'Deployment');
    const container = deployment.spec.template.spec.containers[0];
    assert.match(container.image, new RegExp(`:${VERSION.replace(/\./g, '\\.')}$`));
    assert.ok(
      container.args.some((a: string) => a === `--sidecar-image=ghcr.io/chaperone/chaperone-sidecar:${VERSION}`),
    );
    // The API server accepts every object the packaged chart renders.
    const manifests = join(root, 'rendered.yaml');
    writeFileSync(manifests, dryRun.stdout.slice(dryRun.stdout.indexOf('---')).replace(/\nNOTES:[\s\S]*$/, '\n'));
    await kubectl(['apply', '--dry-run=server', '-n', ns, '-f', manifests]);
  });
});
