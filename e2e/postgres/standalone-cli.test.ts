// The standalone tools against real files: `kubectl chaperone policy compile` writes bundles (real opa)
// that a real sidecar loads from its bundle directory, and `kubectl chaperone audit verify` checks the
// JSON-lines audit file that sidecar wrote, then finds an edited record, a removed record and a reordered
// pair, and notes a file cut after a session's last record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { testDir } from '../harness/env.ts';
import { REPO_ROOT } from '../harness/tools.ts';

const CLI = join(REPO_ROOT, 'cli', 'src', 'bin', 'kubectl-chaperone.ts');

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const POLICY = `apiVersion: chaperone.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: cli-readonly
spec:
  resources:
    names: [test-db]
  rules:
    - name: reads
      decision: allow
      match:
        sql:
          statementKinds: [select]
          sideEffects: false
  defaultDecision: deny
`;

test('policy compile feeds a standalone sidecar; audit verify checks the file it writes and finds tampering', async (t) => {
  const database = await createTestDatabase(t, 'create table t (id int); insert into t values (1), (2);');
  // No bundle yet: the sidecar denies everything until `policy compile` writes one.
  const sidecar = await startTestSidecar(t, { policies: {}, database });
  const policyFile = join(`${testDir(t)}-files`, 'policy.yaml');
  spawnSync('mkdir', ['-p', join(`${testDir(t)}-files`)]);
  writeFileSync(policyFile, POLICY);

  const broken = join(`${testDir(t)}-files`, 'broken.yaml');
  writeFileSync(
    broken,
    `${POLICY.replace('cli-readonly', 'broken')}  rego: |\n    package chaperone.custom\n\n    deny contains msg if {\n      msg := \n    }\n`,
  );
  const refused = cli('policy', 'compile', '-f', broken, '-o', sidecar.bundleDir);
  assert.equal(refused.status, 1, refused.stderr);
  assert.match(refused.stderr, /AccessPolicy default\/broken/);

  const compiled = cli('policy', 'compile', '-f', policyFile, '-o', sidecar.bundleDir);
  assert.equal(compiled.status, 0, compiled.stderr);
  assert.match(compiled.stdout, /^POLICY\s+BUNDLE\s+DIGEST\n/);
  assert.match(compiled.stdout, /default\/cli-readonly\s+\S+cli-readonly\s+sha256:[0-9a-f]{64}/);
  const manifest = JSON.parse(readFileSync(join(sidecar.bundleDir, 'cli-readonly', 'manifest.json'), 'utf8')) as {
    digest: string;
  };
  assert.match(manifest.digest, /^sha256:/);

  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:reader' });
  // Poll until the sidecar has loaded the bundle (it polls its directory every 200 ms).
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await client.query('select count(*) from t').then(
      () => true,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error('the compiled bundle was not loaded');
    await new Promise((r) => setTimeout(r, 100));
  }
  await assert.rejects(client.query('delete from t'), /permission denied by policy default\/cli-readonly/);
  await client.end();
  await sidecar.settledRecords();
  const ends = () => sidecar.records().filter((r) => r.record.type === 'session.end').length;
  const until = Date.now() + 10_000;
  while (ends() < 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));

  const verified = cli('audit', 'verify', sidecar.auditFile);
  assert.equal(verified.status, 0, verified.stdout + verified.stderr);
  assert.match(verified.stdout, /records in 1 sessions, verified/);
  assert.match(verified.stdout, /SESSION\s+POD\s+RESOURCE\s+RECORDS\s+ENDED\s+RESULT/);
  const json = cli('audit', 'verify', sidecar.auditFile, '-o', 'json');
  const report = JSON.parse(json.stdout) as { verified: boolean; records: number; sessions: { ended?: string }[] };
  assert.equal(report.verified, true);
  assert.ok(report.records >= 4);
  assert.equal(report.sessions[0]?.ended, 'success');

  const lines = readFileSync(sidecar.auditFile, 'utf8').trimEnd().split('\n');
  const dir = `${testDir(t)}-files`;
  const variant = (name: string, l: readonly string[]): string => {
    const file = join(dir, name);
    writeFileSync(file, `${l.join('\n')}\n`);
    return file;
  };
  const denial = lines.findIndex((l) => l.includes('"result":"deny"'));
  assert.ok(denial > 0, 'the denial is in the file');
  const edited = lines.map((l, i) => (i === denial ? l.replace('"result":"deny"', '"result":"allow"') : l));
  const editedRun = cli('audit', 'verify', variant('edited.jsonl', edited));
  assert.equal(editedRun.status, 1);
  assert.match(editedRun.stdout, new RegExp(`error: line ${String(denial + 1)} session \\S+ seq \\d+: hash-mismatch`));

  const removed = lines.filter((_, i) => i !== denial);
  const removedRun = cli('audit', 'verify', variant('removed.jsonl', removed));
  assert.equal(removedRun.status, 1);
  assert.match(removedRun.stdout, /seq-gap/);
  // Compact lines (record format 3) leave the link out: the next record hashed it, so its hash no longer matches.
  assert.match(removedRun.stdout, new RegExp(`error: line ${String(denial + 1)} session \\S+ seq \\d+: hash-mismatch`));

  const swapped = [...lines];
  [swapped[1], swapped[2]] = [lines[2] ?? '', lines[1] ?? ''];
  const swappedRun = cli('audit', 'verify', variant('swapped.jsonl', swapped));
  assert.equal(swappedRun.status, 1);
  assert.match(swappedRun.stdout, /seq-order/);

  const cut = cli('audit', 'verify', variant('cut.jsonl', lines.slice(0, -1)));
  assert.equal(cut.status, 0, 'a cut end is a note, not an alteration');
  assert.match(cut.stdout, /note: session \S+: no-session-end/);

  const garbage = cli('audit', 'verify', variant('garbage.jsonl', [...lines, 'not json']));
  assert.equal(garbage.status, 1);
  assert.match(garbage.stdout, new RegExp(`error: line ${String(lines.length + 1)}: malformed-line`));
  assert.equal(cli('audit', 'verify').status, 2);
  assert.equal(cli('audit', 'verify', join(dir, 'missing.jsonl')).status, 1);
});
