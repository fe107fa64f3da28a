// kubectl-chaperone installed as a user installs it: the single executable copied into an empty directory,
// run through kubectl from a clean environment (env -i: PATH is that directory and kubectl's, HOME a
// fresh directory with a self-contained kubeconfig, the working directory outside the repository). No
// Node.js and no repository file is on that PATH; the commands run against the real API server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { build, DEV_OUT, DEV_SETTINGS, type Platform } from '../../cli/scripts/build.ts';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { REPO_ROOT, toolPath } from '../harness/tools.ts';
import { buildTrail, createSigner, createTrail, lastHash } from '../audit/trail-fixture.ts';

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

test('the single executable works as a kubectl plugin without Node.js or the repository', async (t) => {
  const platform = `${process.platform}-${process.arch}` as Platform;
  const { executables } = await build(DEV_SETTINGS, [platform], DEV_OUT);
  const built = executables.get(platform);
  assert.ok(built !== undefined);

  const root = mkdtempSync(join(tmpdir(), 'chaperone-user-'));
  t.after(() => {
    rmSync(root, { recursive: true, force: true });
  });
  assert.ok(!root.startsWith(REPO_ROOT));
  const bin = join(root, 'bin');
  const home = join(root, 'home');
  const work = join(root, 'work');
  for (const d of [bin, home, join(home, '.kube'), work]) mkdirSync(d);
  copyFileSync(built, join(bin, 'kubectl-chaperone'));
  // kubectl's own directory in the tool cache holds kubectl alone (.tools/bin would also bring opa).
  const kubectlDir = dirname(realpathSync(toolPath('kubectl')));
  const path = `${bin}:${kubectlDir}`;
  for (const dir of [bin, kubectlDir]) assert.ok(!existsSync(join(dir, 'node')), `no node in ${dir}`);
  // A kubeconfig with certificates inline, so nothing is read from the repository's run directory.
  writeFileSync(join(home, '.kube', 'config'), await kubectl(['config', 'view', '--flatten', '--minify', '--raw']));

  const user = (args: readonly string[]): Promise<Run> =>
    new Promise((resolve, reject) => {
      execFile(
        '/usr/bin/env',
        ['-i', `PATH=${path}`, `HOME=${home}`, ...args],
        { cwd: work, encoding: 'utf8', maxBuffer: 64 << 20 },
        (err, stdout, stderr) => {
          if (err !== null && typeof err.code !== 'number')
            reject(new Error(`could not run ${args.join(' ')}: ${err.message}`));
          else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
        },
      );
    });
  const chaperone = (...args: string[]) => user(['kubectl', 'chaperone', ...args]);

  await t.test('the environment has no node and kubectl discovers the plugin', async () => {
    const node = await user(['node', '--version']);
    assert.equal(node.code, 127, 'env finds no node on PATH');
    const list = await user(['kubectl', 'plugin', 'list']);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^${join(bin, 'kubectl-chaperone')}$`, 'm'));
    const version = await chaperone('version');
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, /^kubectl-chaperone 0\.0\.0-dev \(node v24\.\d+\.\d+, linux\//);
  });

  await t.test('usage errors exit 2; --help names the command', async () => {
    const unknown = await chaperone('frobnicate', '--help');
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /^error: unknown command "frobnicate" for "kubectl chaperone"/);
    assert.equal(unknown.stdout, '');
    const help = await chaperone('evidence', 'verify', '--help');
    assert.equal(help.code, 0);
    assert.match(help.stdout, /kubectl chaperone evidence verify FILE/);
  });

  await t.test('no kubeconfig: one line naming where it looked, exit 1', async () => {
    const empty = join(root, 'empty-home');
    mkdirSync(empty);
    const none = await new Promise<Run>((resolve) => {
      execFile(
        '/usr/bin/env',
        ['-i', `PATH=${path}`, `HOME=${empty}`, 'kubectl', 'chaperone', 'sessions'],
        { cwd: work, encoding: 'utf8' },
        (err, stdout, stderr) => {
          resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
        },
      );
    });
    assert.equal(none.code, 1);
    assert.equal(
      none.stderr,
      `error: no Kubernetes configuration found: no --kubeconfig flag, KUBECONFIG not set, no ${join(empty, '.kube', 'config')}, ` +
        'and not in a cluster (KUBERNETES_SERVICE_HOST not set); give --kubeconfig FILE or set KUBECONFIG\n',
    );
  });

  const ns = await createTestNamespace(t);
  const signer = await createSigner();
  const now = Date.now();
  const first = await buildTrail({ name: 'nightly-1', namespace: ns, signer, start: new Date(now - 1_200_000) });
  const second = await buildTrail({
    name: 'nightly-2',
    namespace: ns,
    signer,
    start: new Date(now - 600_000),
    prevHash: lastHash(first),
    recordsPerPart: 3,
    commands: [{ text: 'select 1' }, { text: 'drop table orders', decision: 'deny' }],
  });
  for (const s of [first, second]) await createTrail(kubeConfig(), s);

  await t.test('verify and evidence against the API server', async () => {
    const verified = await chaperone('verify', '--all', '-n', ns);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /nightly-2/);

    const exported = await chaperone('evidence', 'export', '-n', ns, '-o', 'evidence.json');
    assert.equal(exported.code, 0, exported.stdout + exported.stderr);
    assert.match(
      exported.stdout,
      /^wrote evidence\.json: 2 session\(s\), 3 object\(s\), \d+ record\(s\), 1 key\(s\); verified/,
    );
    const checked = await chaperone('evidence', 'verify', 'evidence.json');
    assert.equal(checked.code, 0, checked.stdout + checked.stderr);

    // The executable really verifies: one edited statement in the file, and it says no.
    const file = join(work, 'evidence.json');
    writeFileSync(file, readFileSync(file, 'utf8').replace('drop table orders', 'select 42'));
    const edited = await chaperone('evidence', 'verify', 'evidence.json');
    assert.equal(edited.code, 1, edited.stdout);

    await kubectl(['delete', 'session', 'nightly-2-1', '-n', ns]);
    const cut = await chaperone('verify', 'nightly-2', '-n', ns);
    assert.equal(cut.code, 1, cut.stdout + cut.stderr);
    assert.match(cut.stdout, /continuation-deleted/);
  });

  await t.test(
    'policy test says what it needs, then runs (and policy compile writes bundles) with opa beside the executable',
    async () => {
      for (const name of ['orders-readonly.yaml', 'orders-readonly.cases.yaml']) {
        copyFileSync(join(REPO_ROOT, 'examples', 'policy-tests', name), join(work, name));
      }
      const args = ['policy', 'test', '-f', 'orders-readonly.yaml', '-i', 'orders-readonly.cases.yaml'];
      const missing = await chaperone(...args);
      assert.equal(missing.code, 1);
      assert.match(
        missing.stderr,
        /^error: policy test compiles policies with the opa binary .* none was found: not beside kubectl-chaperone/,
      );

      copyFileSync(realpathSync(toolPath('opa')), join(bin, 'opa'));
      const passed = await chaperone(...args);
      assert.equal(passed.code, 0, passed.stdout + passed.stderr);
      assert.match(passed.stdout, /^CASE +EXPECTED +GOT +RULE +RESULT\n/);
      assert.equal(passed.stderr, '8 passed, 0 failed\n', 'the opa beside it is the pinned version: no warning');

      const compiled = await chaperone('policy', 'compile', '-f', 'orders-readonly.yaml', '-o', 'bundles');
      assert.equal(compiled.code, 0, compiled.stdout + compiled.stderr);
      assert.match(
        compiled.stdout,
        /^POLICY +BUNDLE +DIGEST\nshop\/orders-readonly +bundles\/orders-readonly +sha256:[0-9a-f]{64}\n$/,
      );
      assert.ok(
        readFileSync(join(work, 'bundles', 'orders-readonly', 'policy.wasm'))
          .subarray(0, 4)
          .equals(Buffer.from('\0asm')),
      );
    },
  );
});
