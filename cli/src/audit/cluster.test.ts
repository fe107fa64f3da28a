// Where the CLI finds its cluster, and what it says when it finds none or the server does not answer: one
// line naming every place it looked (or the server and where its address came from). Through the real
// process (exit code 1, a single stderr line) as well as in process.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClusterAccessError, connect, listSessions, loadKubeConfig, type KubeconfigEnvironment } from './cluster.ts';

const BIN = join(import.meta.dirname, '..', 'bin', 'kubectl-chaperone.ts');

function kubeconfig(server: string, context = 'ctx'): string {
  return [
    'apiVersion: v1',
    'kind: Config',
    `clusters: [{name: c, cluster: {server: "${server}"}}]`,
    'users: [{name: u, user: {token: not-a-real-token}}]',
    `contexts: [{name: ${context}, context: {cluster: c, user: u, namespace: audit}}]`,
    `current-context: ${context}`,
    '',
  ].join('\n');
}

/** A port nothing listens on: bound once by us, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

function withDir(body: (dir: string) => Promise<void> | void): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'chaperone-kubeconfig-'));
    try {
      await body(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function cli(args: readonly string[], env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { env, encoding: 'utf8' }, (err, _stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') reject(new Error(err.message));
      else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stderr });
    });
  });
}

describe('finding the cluster', () => {
  it(
    'nothing found: one error naming --kubeconfig, KUBECONFIG, ~/.kube/config and the in-cluster account',
    withDir((home) => {
      const where: KubeconfigEnvironment = { env: {}, home, inClusterToken: join(home, 'no-token') };
      assert.throws(
        () => loadKubeConfig({}, where),
        (err: unknown) =>
          err instanceof ClusterAccessError &&
          err.message ===
            `no Kubernetes configuration found: no --kubeconfig flag, KUBECONFIG not set, no ${join(home, '.kube', 'config')}, ` +
              'and not in a cluster (KUBERNETES_SERVICE_HOST not set); give --kubeconfig FILE or set KUBECONFIG',
      );
      // In a pod's environment without the token file: it says which part of the in-cluster setup is missing.
      assert.throws(
        () => loadKubeConfig({}, { ...where, env: { KUBERNETES_SERVICE_HOST: '10.0.0.1' } }),
        new RegExp(`and not in a cluster \\(no ${join(home, 'no-token')}\\)`),
      );
    }),
  );

  it(
    'looks in kubectl order and names the source it used',
    withDir((dir) => {
      const home = join(dir, 'home');
      mkdirSync(join(home, '.kube'), { recursive: true });
      writeFileSync(join(home, '.kube', 'config'), kubeconfig('https://home.example:6443'));
      const listed = join(dir, 'listed');
      writeFileSync(listed, kubeconfig('https://listed.example:6443'));
      const flag = join(dir, 'flag');
      writeFileSync(flag, kubeconfig('https://flag.example:6443'));
      const where: KubeconfigEnvironment = { env: {}, home, inClusterToken: join(dir, 'no-token') };

      assert.equal(connect({}, where).server, 'https://home.example:6443');
      assert.equal(connect({}, where).source, join(home, '.kube', 'config'));
      assert.equal(connect({}, where).namespace, 'audit', "the context's namespace");
      // KUBECONFIG wins over ~/.kube/config; a missing file in the list is skipped, as kubectl does.
      const env = { KUBECONFIG: `${join(dir, 'missing')}:${listed}` };
      assert.equal(connect({}, { ...where, env }).server, 'https://listed.example:6443');
      assert.equal(connect({}, { ...where, env }).source, `KUBECONFIG=${join(dir, 'missing')}:${listed}`);
      // --kubeconfig wins over both.
      assert.equal(connect({ kubeconfig: flag }, { ...where, env }).server, 'https://flag.example:6443');

      assert.throws(
        () => connect({ kubeconfig: join(dir, 'nope') }, where),
        /^ClusterAccessError: the kubeconfig .*nope does not exist \(--kubeconfig /,
      );
      assert.throws(
        () => connect({}, { ...where, env: { KUBECONFIG: join(dir, 'nope') } }),
        /no file KUBECONFIG names exists \(KUBECONFIG=.*nope\)/,
      );
      assert.throws(() => connect({ context: 'other' }, where), /context "other" not found in .*\.kube\/config/);
      writeFileSync(join(dir, 'broken'), 'clusters: [');
      assert.throws(() => connect({ kubeconfig: join(dir, 'broken') }, where), /cannot read the kubeconfig .*broken/);
    }),
  );

  it(
    'a server that does not answer: the server, where its address came from, and why',
    withDir(async (dir) => {
      const port = await closedPort();
      const file = join(dir, 'config');
      writeFileSync(file, kubeconfig(`https://127.0.0.1:${String(port)}`));
      const cluster = connect({ kubeconfig: file }, { env: {}, home: dir, inClusterToken: join(dir, 'no-token') });
      await assert.rejects(
        listSessions(cluster),
        (err: unknown) =>
          err instanceof ClusterAccessError &&
          err.message ===
            `cannot reach the Kubernetes API server https://127.0.0.1:${String(port)} (from --kubeconfig ${file}): ` +
              `connect ECONNREFUSED 127.0.0.1:${String(port)}`,
      );
    }),
  );

  it(
    'through the process: exit 1 and a single line on stderr, for every command that reads the cluster',
    withDir(async (dir) => {
      const home = join(dir, 'home');
      mkdirSync(home);
      const env = { PATH: process.env.PATH ?? '', HOME: home };
      for (const args of [
        ['sessions'],
        ['verify', '--all'],
        ['evidence', 'export', '-o', join(dir, 'e.json')],
        ['token', 'log'],
      ]) {
        const none = await cli(args, env);
        assert.equal(none.code, 1, args.join(' '));
        assert.match(
          none.stderr,
          /^error: no Kubernetes configuration found: no --kubeconfig flag, KUBECONFIG not set, no .*\n$/,
        );
      }
      const port = await closedPort();
      writeFileSync(join(dir, 'config'), kubeconfig(`https://127.0.0.1:${String(port)}`));
      for (const args of [['sessions'], ['verify', '--all'], ['token', 'log']]) {
        const down = await cli(args, { ...env, KUBECONFIG: join(dir, 'config') });
        assert.equal(down.code, 1, args.join(' '));
        assert.equal(
          down.stderr,
          `error: cannot reach the Kubernetes API server https://127.0.0.1:${String(port)} (from KUBECONFIG=${join(dir, 'config')}): connect ECONNREFUSED 127.0.0.1:${String(port)}\n`,
        );
      }
    }),
  );
});
