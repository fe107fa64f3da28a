// psql through the sidecar: identity token as password, allowed reads, denied writes (42501) that leave
// the session usable, and PostgreSQL's own failed-transaction semantics after a denial inside BEGIN.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';

function psql(env: NodeJS.ProcessEnv, script: string) {
  const r = spawnSync('psql', ['-X', '-A', '-t', '-v', 'VERBOSITY=verbose'], { env, input: script, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('psql: allowed read, denied write with 42501 naming the rule, and the session stays usable', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:report' });
  const r = psql(sidecar.libpqEnv(token), "select 40 + 2;\ncreate table t_psql (id int);\nselect 'still here';\n");
  assert.match(r.stdout, /^42$/m);
  assert.match(r.stderr, /ERROR:\s+42501: chaperone: permission denied by policy default\/read-only, rule default/);
  assert.match(r.stdout, /^still here$/m);
});

test('psql: a denial inside a transaction block aborts the transaction like any PostgreSQL error', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:report' });
  const r = psql(
    sidecar.libpqEnv(token),
    'begin;\nselect 1;\ndelete from pg_class;\nselect 2;\nrollback;\nselect 3;\n',
  );
  assert.match(r.stderr, /42501/);
  assert.match(r.stderr, /25P02: current transaction is aborted/);
  assert.doesNotMatch(r.stdout, /^2$/m);
  assert.match(r.stdout, /^3$/m);
});
