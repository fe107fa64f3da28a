// Runs the kubectl-chaperone binary (real opa, real sidecar engine) on examples/policy-tests/.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { formatTable } from '../table.ts';

const REPO = join(import.meta.dirname, '..', '..', '..');
const BIN = join(REPO, 'cli/src/bin/kubectl-chaperone.ts');
const POLICY = join(REPO, 'examples/policy-tests/orders-readonly.yaml');
const CASES = join(REPO, 'examples/policy-tests/orders-readonly.cases.yaml');

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { encoding: 'utf8' }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : Number(error.code), stdout, stderr });
    });
  });
}

function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'policy-test-'));
  return fn(dir).finally(() => {
    rmSync(dir, { recursive: true, force: true });
  });
}

describe('kubectl chaperone policy test', () => {
  it('passes every case of the example and prints a kubectl-style table', async () => {
    const { code, stdout, stderr } = await run(['policy', 'test', '-f', POLICY, '-i', CASES]);
    assert.equal(code, 0, stderr);
    const lines = stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^CASE +EXPECTED +GOT +RULE +RESULT$/);
    assert.equal(lines.length, 9);
    assert.match(lines[1] ?? '', /^ci-reads-orders +allow \(reads\) +allow +reads +PASS$/);
    assert.match(
      stdout,
      /refund-in-office-hours +approve \(refunds-need-approval\) +approve +refunds-need-approval +PASS/,
    );
    assert.match(stdout, /pg-sleep-blocked-by-rego +deny \(rego\) +deny +rego +PASS/);
    assert.equal(stderr, '8 passed, 0 failed\n');
  });

  it('exits 1 and marks the case FAIL when an expectation does not hold', async () => {
    await withTempDir(async (dir) => {
      const cases = readFileSync(CASES, 'utf8').replace(
        /(- name: ci-drops-a-table[\s\S]*?)expect: deny/,
        '$1expect: allow',
      );
      const file = join(dir, 'cases.yaml');
      writeFileSync(file, cases);
      const { code, stdout, stderr } = await run(['policy', 'test', '-f', POLICY, '-i', file]);
      assert.equal(code, 1);
      assert.match(stdout, /ci-drops-a-table +allow \(deny-ddl\) +deny +deny-ddl +FAIL/);
      assert.equal(stderr, '7 passed, 1 failed\n');
    });
  });

  it('a wrong rule is a failure even when the decision matches', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'cases.yaml');
      writeFileSync(
        file,
        [
          'defaults: { identity: { subject: "system:serviceaccount:ci:x" }, resource: { name: orders-db } }',
          'cases:',
          '  - { name: wrong-rule, command: { type: sql, statements: [{ kind: delete, relations: [public.orders] }] }, expect: deny, rule: deny-ddl }',
          '',
        ].join('\n'),
      );
      const { code, stdout } = await run(['policy', 'test', '-f', POLICY, '-i', file, '-o', 'json']);
      assert.equal(code, 1);
      const report = JSON.parse(stdout);
      assert.equal(report.kind, 'PolicyTestReport');
      assert.equal(report.results[0].decision, 'deny');
      assert.equal(report.results[0].rule, 'default');
      assert.equal(report.results[0].passed, false);
    });
  });

  it('-o json and -o yaml give the full report', async () => {
    const json = await run(['policy', 'test', '-f', POLICY, '-i', CASES, '-o', 'json']);
    assert.equal(json.code, 0);
    const report = JSON.parse(json.stdout);
    assert.deepEqual(report.summary, { passed: 8, failed: 0 });
    assert.equal(report.policies[0].name, 'shop/orders-readonly');
    assert.match(report.policies[0].digest, /^sha256:[0-9a-f]{64}$/);
    const ddl = report.results.find((r: any) => r.name === 'ci-drops-a-table');
    assert.equal(ddl.message, 'Schema changes go through migrations, not agents.');
    assert.equal(ddl.policy, 'shop/orders-readonly');
    const yaml = await run(['policy', 'test', '-f', POLICY, '-i', CASES, '-o', 'yaml']);
    assert.equal(yaml.code, 0);
    assert.deepEqual(parse(yaml.stdout), report);
  });

  it('reports a policy that does not compile with its line and column, and exits 1', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'policy.yaml');
      writeFileSync(
        file,
        readFileSync(POLICY, 'utf8').replace(
          '\tsome s in input.command.statements',
          '\tsome s in input.command.statements ===',
        ),
      );
      const { code, stdout, stderr } = await run(['policy', 'test', '-f', file, '-i', CASES]);
      assert.equal(code, 1);
      assert.equal(stdout, '');
      assert.match(stderr, /^error: AccessPolicy shop\/orders-readonly: line 4, column \d+: rego_parse_error: /);
    });
  });

  it('rejects bad usage with exit code 2 and bad input files with exit code 1', async () => {
    assert.equal((await run(['policy', 'test', '-i', CASES])).code, 2);
    assert.equal((await run(['policy', 'test', '-f', POLICY, '-i', CASES, '-o', 'wide'])).code, 2);
    assert.equal((await run(['frobnicate'])).code, 2);
    const help = await run(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /policy test -f POLICY\.yaml -i CASES\.yaml/);
    const missing = await run(['policy', 'test', '-f', join(REPO, 'no-such-file.yaml'), '-i', CASES]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^error: cannot read /);
    const notCases = await run(['policy', 'test', '-f', POLICY, '-i', POLICY]);
    assert.equal(notCases.code, 1);
    assert.match(notCases.stderr, /expected a list of cases/);
  });
});

describe('formatTable', () => {
  it('pads columns to the widest cell plus three spaces, without trailing spaces', () => {
    assert.equal(
      formatTable(
        ['NAME', 'X'],
        [
          ['a', '1'],
          ['longer', ''],
        ],
      ),
      'NAME     X\na        1\nlonger\n',
    );
  });
});
