// How a parent process mints a child token: `kubectl chaperone token exchange` and the plain curl call of
// docs/identity.md, both against the real exchange; refusals as exit codes and messages; `token log
// --verify` over the records they created.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLAIMS } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { startExchangeFixture } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld } from './identity-fixture.ts';

function run(file: string, args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: typeof err?.code === 'number' ? err.code : err === null ? 0 : -1, stdout, stderr });
    });
  });
}

test('kubectl chaperone token exchange, the documented curl call, token log --verify', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  const dir = join(testDir(t), 'tokens');
  mkdirSync(dir, { recursive: true });
  const files = {
    ci: join(dir, 'ci.token'),
    agent: join(dir, 'agent.token'),
  };
  writeFileSync(files.ci, `${await world.ciToken()}\n`);
  writeFileSync(files.agent, await world.agents.sign({ sub: 'agent:report-writer' }));
  const env = { KUBECONFIG: controlPlaneEnv().kubeconfig };

  let child = '';
  await t.test('the CLI prints the child token alone, ready for PGPASSWORD', async () => {
    const r = await runCli(
      [
        'token',
        'exchange',
        '--url',
        ex.issuer,
        '--cacert',
        ex.caFile,
        '--subject-token-file',
        files.ci,
        '--actor-token-file',
        files.agent,
        '--resource',
        `${world.namespace}/orders-db`,
        '--scope',
        'db:read',
        '--lifetime',
        '300',
      ],
      env,
    );
    assert.equal(r.code, 0, r.stderr);
    child = r.stdout.trim();
    assert.equal(child.split('.').length, 3);
    const claims = claimsOf(child);
    assert.equal((claims.act as { sub: string }).sub, 'agent:report-writer');
    assert.deepEqual(claims[CLAIMS.resources], [world.resource('orders-db')], 'NAMESPACE/NAME became the resource URI');
    assert.equal(claims.scope, 'db:read');
    assert.equal(r.stdout, `${child}\n`, 'one line: the token and nothing else');
  });

  await t.test('a refusal exits 1 and says what the exchange said', async () => {
    writeFileSync(join(dir, 'child.token'), child);
    const r = await runCli(
      [
        'token',
        'exchange',
        '--url',
        ex.issuer,
        '--cacert',
        ex.caFile,
        '--subject-token-file',
        join(dir, 'child.token'),
        '--scope',
        'db:read db:write',
      ],
      env,
    );
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(
      r.stderr,
      /error: the token exchange refused \(HTTP 400\): invalid_scope: scope "db:write" is not among the subject token's scopes \(db:read\): a child token can only narrow \[scope-widened\]/,
    );
    const usage = await runCli(['token', 'exchange', '--url', ex.issuer], env);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--subject-token-file is required/);
  });

  await t.test('the curl call of docs/identity.md works as written', async () => {
    // docs/identity.md, "Minting a child token with curl" (the same parameters, from files).
    const r = await run('curl', [
      '--silent',
      '--show-error',
      '--fail-with-body',
      '--cacert',
      ex.caFile,
      `${ex.issuer}/token`,
      '--data-urlencode',
      'grant_type=urn:ietf:params:oauth:grant-type:token-exchange',
      '--data-urlencode',
      `subject_token@${files.ci}`,
      '--data-urlencode',
      'subject_token_type=urn:ietf:params:oauth:token-type:jwt',
      '--data-urlencode',
      `actor_token@${files.agent}`,
      '--data-urlencode',
      'actor_token_type=urn:ietf:params:oauth:token-type:jwt',
      '--data-urlencode',
      `resource=urn:chaperone:resource:${world.namespace}:orders-db`,
      '--data-urlencode',
      'scope=db:read',
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const body = JSON.parse(r.stdout) as { access_token: string; issued_token_type: string; token_type: string };
    assert.equal(body.token_type, 'N_A');
    assert.equal((claimsOf(body.access_token).act as { sub: string }).sub, 'agent:report-writer');
  });

  await t.test('token log lists every exchange and --verify checks chains and signed heads', async () => {
    const r = await runCli(['token', 'log', '--exchange-namespace', ex.namespace, '--verify'], env);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0] ?? '', /^TIME\s+ID\s+SUBJECT\s+ACTOR\s+DEPTH\s+RULE\s+RESOURCES\s+SCOPES\s+EXPIRES$/);
    const rows = lines.filter((l) => l.includes('agent:report-writer (ai-agent)'));
    assert.equal(rows.length, 2, 'the CLI exchange and the curl exchange');
    assert.match(
      lines.at(-1) ?? '',
      /^verified: 2 records in 1 streams; chains intact, heads signed by published keys$/,
    );
  });

  await t.test('a deleted log part: the exchange goes on in a new part, and --verify reports the hole', async () => {
    for (const log of await ex.logs()) {
      await ex.custom.deleteNamespacedCustomObject({
        group: 'chaperone.dev',
        version: 'v1alpha1',
        namespace: ex.namespace,
        plural: 'tokenexchangelogs',
        name: log.metadata.name ?? '',
      });
    }
    const after = await ex.exchange(await world.ciToken(), { resources: [world.resource('orders-db')] });
    assert.equal(claimsOf(after).sub, `system:serviceaccount:${world.namespace}:ci-runner`);
    const r = await runCli(['token', 'log', '--exchange-namespace', ex.namespace, '--verify'], env);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /PROBLEM\s+stream [0-9a-f]+: part 0 is missing/);
    assert.match(r.stdout, /PROBLEM\s+stream [0-9a-f]+: records before seq 3 are missing/);
  });
});
