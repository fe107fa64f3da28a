// What a sidecar loads before its first session (issue 20, idle memory): a PostgreSQL-only sidecar with
// JSON-lines audit must not load the Kubernetes client (@kubernetes/client-node, ~40 MiB at rest), the
// Kubernetes and HTTP engines, or the SQL parser (libpg-query's WebAssembly, loaded by the first session).
// The approvals merge once imported the Kubernetes client at start for every sidecar; this keeps it out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { postgresEnv, testDir } from '../harness/env.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { poll } from '../harness/poll.ts';

const MODULE_TRACE = join(REPO_ROOT, 'e2e', 'harness', 'module-trace.ts');

function loaded(traceFile: string): string[] {
  return readFileSync(traceFile, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
}

const matching = (urls: readonly string[], part: string) => urls.filter((u) => u.includes(part));

test('a PostgreSQL sidecar at rest has not loaded the Kubernetes client, the other engines or the SQL parser; its first session loads the parser', async (t) => {
  const pg = postgresEnv();
  const dir = testDir(t);
  const traceFile = join(dir, 'modules.txt');
  const sidecar = await spawnSidecar({
    dir,
    upstream: { port: pg.port, database: pg.database, user: pg.user, password: pg.password, caFile: pg.caFile },
    nodeArgs: ['--import', MODULE_TRACE],
    env: { ...process.env, CHAPERONE_MODULE_TRACE: traceFile },
    logLevel: 'info',
  });
  t.after(() => sidecar.stop());

  const atRest = loaded(traceFile);
  // The trace works: the sidecar's own modules and its policy runtime are in it.
  assert.ok(matching(atRest, '/sidecar/src/engines/postgres/').length > 0, 'the PostgreSQL engine is loaded');
  assert.ok(matching(atRest, '@open-policy-agent/opa-wasm').length > 0, 'the policy runtime is loaded');
  for (const absent of [
    '/node_modules/@kubernetes/client-node/',
    '/node_modules/libpg-query',
    '/sidecar/src/engines/kubernetes/',
    '/sidecar/src/engines/http/',
    '/sidecar/src/core/approvals/approval-requests',
    '/sidecar/src/core/policy/policy-set-source',
  ]) {
    assert.deepEqual(matching(atRest, absent), [], `${absent} is not loaded at rest`);
  }

  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:first-session' });
  const psql = spawnSync('psql', ['-X', '-A', '-t', '-c', 'SELECT 40 + 2'], {
    env: sidecar.libpqEnv(token),
    encoding: 'utf8',
  });
  assert.equal(psql.status, 0, psql.stderr);
  assert.equal(psql.stdout.trim(), '42');
  const afterSession = await poll('the SQL parser loaded by the first session', () => {
    const urls = loaded(traceFile);
    return Promise.resolve(matching(urls, '/node_modules/libpg-query').length > 0 ? urls : undefined);
  });
  assert.deepEqual(matching(afterSession, '/node_modules/@kubernetes/client-node/'), []);
});
