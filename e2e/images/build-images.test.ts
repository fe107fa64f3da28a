// make images without a registry: the same inputs give the same bytes (so the same digests), the archive
// is an OCI layout that also carries Docker's manifest.json, and the images hold what they must and
// nothing they must not (no tests, no dev dependencies, the runtime closure from package-lock.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImages } from '../../images/build-images.ts';
import { runtimeClosure } from '../../images/rootfs.ts';
import type { BundleManifest } from '../../scripts/bundle.ts';
import { EXTERNAL_PACKAGES } from '../../sidecar/scripts/build.ts';
import { REPO_ROOT } from '../harness/tools.ts';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Entries of one file inside a tar archive. */
function readFromTar(archive: string, entry: string): Buffer {
  return execFileSync('tar', ['-xOf', archive, entry], { maxBuffer: 512 * 1024 * 1024 });
}

function listTar(archive: string): string[] {
  return execFileSync('tar', ['-tvf', archive], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
    .split('\n')
    .filter((l) => l !== '');
}

test('building twice from the same inputs gives byte-identical archives', (t) => {
  const first = mkdtempSync(join(tmpdir(), 'chaperone-images-'));
  const second = mkdtempSync(join(tmpdir(), 'chaperone-images-'));
  t.after(() => {
    rmSync(first, { recursive: true, force: true });
    rmSync(second, { recursive: true, force: true });
  });
  const a = buildImages({ out: first, images: ['sidecar', 'pause'] });
  const b = buildImages({ out: second, images: ['sidecar', 'pause'] });
  assert.deepEqual(
    a.map((i) => i.manifestDigest),
    b.map((i) => i.manifestDigest),
  );
  for (const image of ['sidecar', 'pause']) {
    assert.equal(sha256(join(first, `${image}.tar`)), sha256(join(second, `${image}.tar`)), image);
  }
  const [built] = a;
  assert.ok(built);
  // Unchanged inputs: kept, not rebuilt.
  const [again] = buildImages({ out: first, images: ['sidecar'] });
  assert.ok(again);
  assert.equal(again.rebuilt, false);
  assert.equal(again.manifestDigest, built.manifestDigest);

  // The archive: OCI layout with the image's name for containerd, Docker's manifest.json for docker/kind.
  const archive = join(first, 'sidecar.tar');
  const index = JSON.parse(readFromTar(archive, 'index.json').toString()) as {
    manifests: { digest: string; annotations: Record<string, string> }[];
  };
  const [described] = index.manifests;
  assert.ok(described);
  assert.equal(described.digest, built.manifestDigest);
  assert.equal(described.annotations['io.containerd.image.name'], built.ref);
  const docker = JSON.parse(readFromTar(archive, 'manifest.json').toString()) as {
    Config: string;
    RepoTags: string[];
    Layers: string[];
  }[];
  const [entry] = docker;
  assert.ok(entry);
  assert.deepEqual(entry.RepoTags, [built.ref]);
  const config = JSON.parse(readFromTar(archive, entry.Config).toString()) as {
    created: string;
    config: { User: string; Entrypoint: string[] };
    rootfs: { diff_ids: string[] };
  };
  assert.equal(config.created, '1970-01-01T00:00:00Z', 'no build time in the image');
  assert.equal(config.config.User, '65532:65532');
  assert.equal(config.rootfs.diff_ids.length, 2, 'the Node.js runtime layer and the sidecar layer');
  assert.equal(built.configDigest, `sha256:${sha256Buffer(readFromTar(archive, entry.Config))}`);

  // The layers' files: root-owned, one fixed time, what the sidecar runs and nothing of the repo's tests.
  const [runtimeLayer, appLayer] = entry.Layers;
  const layerFile = join(first, 'layer.tar');
  const extract = (entry: string) => {
    execFileSync('sh', ['-c', `tar -xOf "$1" "$2" > "$3"`, 'sh', archive, entry, layerFile]);
    return listTar(layerFile);
  };
  const runtime = extract(runtimeLayer ?? '');
  assert.ok(runtime.some((l) => / usr\/local\/bin\/node$/.test(l)));
  assert.ok(
    runtime.some((l) => /^drwxrwxrwt .* tmp\/$/.test(l)),
    '/tmp is world-writable with the sticky bit',
  );
  assert.ok(
    runtime.every((l) => / 0\/0 /.test(l) && / 1970-01-01 00:00 /.test(l)),
    'root-owned, epoch time',
  );
  const app = extract(appLayer ?? '');
  const paths = app.map((l) => l.split(' ').at(-1) ?? '');
  // The sidecar's bundle, not its sources (sidecar/scripts/build.ts): no .ts file, no workspace inside.
  assert.ok(paths.includes('app/sidecar/chaperone-sidecar.js'));
  assert.ok(
    paths.some((p) => /^app\/sidecar\/chunks\/.+\.js$/.test(p)),
    'the lazily loaded chunks',
  );
  assert.ok(!paths.some((p) => p.startsWith('app/sidecar/') && p.endsWith('.ts')), 'no TypeScript to strip at start');
  assert.ok(!paths.some((p) => p.startsWith('app/api/') || p.startsWith('app/node_modules/@chaperone/')));
  assert.ok(paths.includes('app/node_modules/libpg-query/wasm/libpg-query.wasm'));
  assert.ok(!paths.some((p) => p.endsWith('.test.ts')), 'no tests');
  assert.ok(!paths.some((p) => /node_modules\/(typescript|eslint|@chaperone\/operator)\//.test(p)), 'no dev deps');
  // node_modules holds only the packages the bundle leaves external and what they depend on: exactly the
  // closure package-lock.json gives for them; what is bundled is not shipped again.
  const lock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as Parameters<
    typeof runtimeClosure
  >[0];
  const shippedPackages = new Set(
    paths.flatMap((p) => {
      const match = /^app\/((?:[^/]+\/)*?node_modules\/(?:@[^/]+\/)?[^/@][^/]*)\/package\.json$/.exec(p);
      return match?.[1] === undefined ? [] : [match[1]];
    }),
  );
  assert.deepEqual(
    [...shippedPackages].sort(),
    runtimeClosure(lock, 'sidecar', EXTERNAL_PACKAGES).packages,
    'node_modules: the external packages and their closure',
  );
  for (const bundled of ['@kubernetes/client-node', 'jose', '@open-policy-agent/opa-wasm', 'yaml', 'prom-client']) {
    assert.ok(!shippedPackages.has(`node_modules/${bundled}`), `${bundled} is inside the bundle, not shipped again`);
  }
  // The licences of what the bundle has inside: one directory per bundled package, with its files.
  const manifest = JSON.parse(
    execFileSync('tar', ['-xOf', layerFile, 'app/sidecar/bundle.json'], { encoding: 'utf8' }),
  ) as BundleManifest;
  assert.ok(manifest.bundledPackages.includes('node_modules/@kubernetes/client-node'));
  for (const pkg of manifest.bundledPackages) {
    const { name, version } = JSON.parse(readFileSync(join(REPO_ROOT, pkg, 'package.json'), 'utf8')) as {
      name: string;
      version: string;
    };
    const dir = `app/sidecar/licenses/${name.replace('/', '+')}@${version}/`;
    assert.ok(
      paths.some((p) => p.startsWith(dir) && p.length > dir.length),
      `the licence of ${name}@${version} is shipped`,
    );
  }
  assert.match(
    execFileSync('tar', ['-xOf', layerFile, 'app/sidecar/licenses/jose@6.2.18/LICENSE.md'], { encoding: 'utf8' }),
    /MIT License/,
  );
});

test('the operator image runs its bundle: opa, the bundle and its licences, no node_modules', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'chaperone-images-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  const [built] = buildImages({ out, images: ['operator'] });
  assert.ok(built);
  const archive = join(out, 'operator.tar');
  const [entry] = JSON.parse(readFromTar(archive, 'manifest.json').toString()) as { Layers: string[] }[];
  const appLayer = entry?.Layers[1];
  assert.ok(appLayer !== undefined, 'the Node.js runtime layer and the operator layer');
  const layerFile = join(out, 'layer.tar');
  execFileSync('sh', ['-c', `tar -xOf "$1" "$2" > "$3"`, 'sh', archive, appLayer, layerFile]);
  const paths = listTar(layerFile).map((l) => l.split(' ').at(-1) ?? '');
  assert.ok(paths.includes('usr/local/bin/opa'));
  assert.ok(paths.includes('app/operator/chaperone-operator.js'));
  assert.ok(!paths.some((p) => p.includes('node_modules/')), 'every package is inside the bundle');
  assert.ok(!paths.some((p) => p.endsWith('.ts')), 'no TypeScript');
  assert.ok(paths.some((p) => p.startsWith('app/operator/licenses/@kubernetes+client-node@')));
  // The bundle runs with nothing but itself: its --help from a directory without node_modules.
  const bundleDir = mkdtempSync(join(tmpdir(), 'chaperone-operator-bundle-'));
  t.after(() => rmSync(bundleDir, { recursive: true, force: true }));
  execFileSync('tar', ['-xf', layerFile, '-C', bundleDir, 'app/operator/chaperone-operator.js']);
  const help = execFileSync(process.execPath, [join(bundleDir, 'app/operator/chaperone-operator.js'), '--help'], {
    encoding: 'utf8',
  });
  assert.match(help, /^Usage: chaperone-operator/);
});

function sha256Buffer(buffer: Buffer): string {
  return createHash('sha256').update(buffer).digest('hex');
}

test('the runtime closure follows package-lock.json the way Node.js resolves, workspaces as links', () => {
  const lock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as Parameters<
    typeof runtimeClosure
  >[0];
  const sidecar = runtimeClosure(lock, 'sidecar');
  assert.deepEqual([...sidecar.links], [['node_modules/@chaperone/api', 'api']]);
  for (const needed of [
    'node_modules/libpg-query',
    'node_modules/jose',
    'node_modules/pg-protocol',
    'node_modules/yaml',
    'node_modules/pg', // the evidence store's writer
  ]) {
    assert.ok(sidecar.packages.includes(needed), needed);
  }
  for (const dev of ['node_modules/typescript', 'node_modules/eslint', 'node_modules/node']) {
    assert.ok(!sidecar.packages.includes(dev), dev);
  }
  const operator = runtimeClosure(lock, 'operator');
  // Shared by both workspaces (the operator's certificates, the sidecar's loopback certificate), so hoisted;
  // nested copies are covered by the example below.
  assert.ok(operator.packages.includes('node_modules/@peculiar/x509'), 'the operator needs @peculiar/x509');
  assert.ok(sidecar.packages.includes('node_modules/@peculiar/x509'), 'the sidecar needs @peculiar/x509');
  assert.ok(!operator.packages.includes('node_modules/libpg-query'), 'the operator does not parse SQL');
  // A nested copy wins over the hoisted one for the package that has it (Node.js resolution).
  const fake = {
    packages: {
      w: { dependencies: { a: '1' } },
      'node_modules/a': { version: '1', dependencies: { b: '2' } },
      'node_modules/b': { version: '1' },
      'node_modules/a/node_modules/b': { version: '2' },
    },
  };
  assert.deepEqual(runtimeClosure(fake, 'w').packages, ['node_modules/a', 'node_modules/a/node_modules/b']);
  assert.throws(() => runtimeClosure({ packages: { w: { dependencies: { missing: '1' } } } }, 'w'), /does not have/);
  // A bundle's externals: only those direct dependencies, with everything they need.
  const two = {
    ...fake,
    packages: { ...fake.packages, w: { dependencies: { a: '1', c: '1' } }, 'node_modules/c': {} },
  };
  assert.deepEqual(runtimeClosure(two, 'w', ['a']).packages, ['node_modules/a', 'node_modules/a/node_modules/b']);
  assert.deepEqual(runtimeClosure(two, 'w', []).packages, []);
  const externals = runtimeClosure(lock, 'sidecar', EXTERNAL_PACKAGES).packages;
  for (const needed of [
    'node_modules/libpg-query',
    'node_modules/pg',
    'node_modules/pg-protocol',
    'node_modules/pg-pool',
  ]) {
    assert.ok(externals.includes(needed), needed);
  }
  assert.ok(!externals.includes('node_modules/@kubernetes/client-node'));
});
