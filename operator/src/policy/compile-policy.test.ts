import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import type { AccessPolicySpec } from '@chaperone/api';
import { gunzipSync } from 'node:zlib';
import { compilePolicy, defaultOpaPath, hostBuiltins, readTarEntry } from './compile-policy.ts';
import type { CompileProblem, CompileResult } from './compile-policy.ts';
import { globToRegex, renderRego } from './render-rego.ts';

function spec(partial: Partial<AccessPolicySpec> = {}): AccessPolicySpec {
  return {
    resources: { names: ['db'] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    defaultDecision: 'deny',
    ...partial,
  };
}

function compile(s: AccessPolicySpec, workDir?: string): Promise<CompileResult> {
  return compilePolicy({ namespace: 'team', name: 'p', spec: s }, workDir === undefined ? {} : { workDir });
}

function errorsOf(r: CompileResult): readonly CompileProblem[] {
  if (r.ok) assert.fail('expected a compile failure');
  return r.errors;
}

describe('compilePolicy', () => {
  it('reports a Rego syntax error at the line and column of the user module', async () => {
    const rego = [
      'package chaperone.custom',
      '',
      'deny contains msg if {',
      '\tmsg := "x"',
      '\tinput.a ==',
      '}',
      '',
    ].join('\n');
    const errors = errorsOf(await compile(spec({ rego })));
    assert.equal(errors.length, 1);
    assert.deepEqual({ ...errors[0] }, { message: 'unexpected } token', code: 'rego_parse_error', line: 6, column: 1 });
  });

  it('reports strict-mode errors in the user module with their position', async () => {
    const rego = [
      '# comment',
      'package chaperone.custom',
      '',
      'deny contains "x" if {',
      '\tunused := 1',
      '\tinput.a == 1',
      '}',
      '',
    ].join('\n');
    const errors = errorsOf(await compile(spec({ rego })));
    assert.equal(errors[0]?.code, 'rego_compile_error');
    assert.match(errors[0].message, /unused/);
    assert.equal(errors[0].line, 5);
    assert.equal(errors[0].column, 2);
  });

  it('rejects a raw module without a package', async () => {
    const errors = errorsOf(await compile(spec({ rego: 'deny contains "x" if true\n' })));
    assert.equal(errors[0]?.code, 'chaperone_package_error');
    assert.match(errors[0].message, /package chaperone\.custom/);
    assert.equal(errors[0].line, 1);
  });

  it('rejects a raw module with another package, naming its line', async () => {
    const errors = errorsOf(
      await compile(spec({ rego: '# my rules\n\n  package chaperone.policy\n\nresult := {}\n' })),
    );
    assert.equal(errors[0]?.code, 'chaperone_package_error');
    assert.match(errors[0].message, /found "package chaperone.policy"/);
    assert.equal(errors[0].line, 3);
    assert.equal(errors[0].column, 3);
  });

  it('rejects builtins the Wasm runtime cannot run, at their position', async () => {
    const rego =
      'package chaperone.custom\n\ndeny contains "x" if {\n\tr := http.send({"method": "get", "url": "http://x"})\n\tr.status_code == 200\n}\n';
    const errors = errorsOf(await compile(spec({ rego })));
    assert.equal(errors[0]?.code, 'chaperone_unsupported_builtin');
    assert.match(errors[0].message, /http\.send/);
    assert.equal(errors[0].line, 4);
    assert.equal(errors[0].column, 7);
  });

  it('rejects approve rules without an approval section and unknown time zones', async () => {
    const errors = errorsOf(
      await compile(
        spec({
          rules: [
            { name: 'a', decision: 'approve', match: {} },
            {
              name: 'b',
              decision: 'allow',
              match: {},
              when: { timeWindows: [{ start: '09:00', end: '10:00', timeZone: 'Mars/Olympus' }] },
            },
          ],
        }),
      ),
    );
    assert.deepEqual(errors.map((e) => e.code).sort(), ['invalid_time_zone', 'missing_approval']);
  });

  it('rejects wait on a rule that does not approve', async () => {
    const errors = errorsOf(
      await compile(spec({ rules: [{ name: 'reads', decision: 'allow', wait: false, match: {} }] })),
    );
    assert.deepEqual(
      errors.map((e) => [e.code, e.message]),
      [['wait_without_approve', 'rule "reads": wait applies to approve rules only']],
    );
  });

  it('rejects reserved rule names', async () => {
    const errors = errorsOf(await compile(spec({ rules: [{ name: 'default', decision: 'allow', match: {} }] })));
    assert.equal(errors[0]?.code, 'reserved_rule_name');
  });

  it('produces the same digest for the same spec and a different one otherwise; cleans its temp dir', async () => {
    const workDir = await mkdtemp(join(tmpdir(), 'chaperone-compile-test-'));
    const s = spec({
      rules: [
        {
          name: 'w',
          decision: 'allow',
          match: {},
          when: { timeWindows: [{ start: '09:00', end: '17:00', timeZone: 'Asia/Tokyo' }] },
        },
      ],
    });
    const [a, b, c] = await Promise.all([compile(s, workDir), compile(s, workDir), compile(spec(), workDir)]);
    assert.ok(a.ok && b.ok && c.ok);
    assert.match(a.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(a.digest, b.digest);
    assert.ok(a.wasm.equals(b.wasm));
    assert.notEqual(a.digest, c.digest);
    assert.deepEqual(a.manifest, {
      timeZones: ['Asia/Tokyo'],
      policy: 'team/p',
      entrypoint: 'chaperone/policy/result',
      rawRego: false,
    });
    assert.ok(a.opaMillis > 0);
    assert.deepEqual(await readdir(workDir), []);
    await rm(workDir, { recursive: true });
  });

  it('yields wasm that loads, needs no host builtins and keeps hostile strings as data', async () => {
    const hostile = 'x"} else := true\n# \\ \u2028 ${x} \ud800';
    const r = await compile(
      spec({ rules: [{ name: 'all', decision: 'deny', match: { http: { paths: [hostile] } }, message: hostile }] }),
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(await hostBuiltins(r.wasm), []);
    const policy = await loadPolicy(r.wasm);
    const input = {
      version: 1,
      identity: { subject: 's', issuer: 'i', groups: [], actor: { subject: 's' }, chain: [], depth: 0 },
      resource: { name: 'db', namespace: 'team', type: 'http', labels: {} },
      command: { type: 'http', method: 'GET', path: hostile.toWellFormed() },
      session: { id: '', applicationName: '', clientAddress: '', inTransaction: false },
      time: { unixMillis: 0, zones: {} },
    };
    const rs = policy.evaluate(input) as [{ result: { decision: string; message: string } }];
    assert.equal(rs[0].result.decision, 'deny');
    assert.equal(rs[0].result.message, hostile.toWellFormed());
  });

  it('renders deterministically', () => {
    const s = spec({ subjects: [{ groups: ['b', 'a', 'a*'] }] });
    assert.equal(
      renderRego({ namespace: 'n', name: 'p', spec: s }).rego,
      renderRego({ namespace: 'n', name: 'p', spec: s }).rego,
    );
  });
});

describe('globToRegex', () => {
  const cases: [string, 'plain' | 'path', string, boolean][] = [
    ['public.*', 'plain', 'public.users', true],
    ['public.*', 'plain', 'publicXusers', false],
    ['a*b*c', 'plain', 'a-b-c', true],
    ['/v1/*', 'path', '/v1/x', true],
    ['/v1/*', 'path', '/v1/x/y', false],
    ['/v1/**', 'path', '/v1', true],
    ['/v1/**', 'path', '/v1x', false],
    ['/a/**/b', 'path', '/a/b', true],
    ['/a/**/b', 'path', '/a/x/y/b', true],
    ['/a/**/b', 'path', '/a/xb', false],
    ['/a**', 'path', '/abc/d', true],
    ['/(x)+', 'path', '/(x)+', true],
  ];
  // The expressions run inside OPA: with RE2 in `opa eval` (Go) and with the RE2 build inside the Wasm module
  // the sidecar evaluates; both are asked, not JavaScript's regular expressions.
  const input = { cases: cases.map(([pattern, mode, value]) => ({ regex: globToRegex(pattern, mode), value })) };
  const module = 'package glob\n\nmatches := [regex.match(c.regex, c.value) | some c in input.cases]\n';
  const expected = cases.map((c) => c[3]);
  const names = cases.map(
    ([pattern, mode, value, want]) => `${pattern} (${mode}) ${want ? 'matches' : 'does not match'} ${value}`,
  );
  const inOpa = async (): Promise<{ go: boolean[]; wasm: boolean[] }> => {
    const dir = await mkdtemp(join(tmpdir(), 'chaperone-glob-'));
    try {
      await writeFile(join(dir, 'glob.rego'), module);
      await writeFile(join(dir, 'input.json'), JSON.stringify(input));
      const opa = defaultOpaPath();
      const evaluated = JSON.parse(
        execFileSync(
          opa,
          ['eval', '--format', 'json', '--data', 'glob.rego', '--input', 'input.json', 'data.glob.matches'],
          {
            cwd: dir,
            encoding: 'utf8',
          },
        ),
      ) as { result: { expressions: { value: boolean[] }[] }[] };
      execFileSync(
        opa,
        ['build', '--target', 'wasm', '--entrypoint', 'glob/matches', '--output', 'b.tar.gz', 'glob.rego'],
        {
          cwd: dir,
        },
      );
      const wasm = readTarEntry(gunzipSync(await readFile(join(dir, 'b.tar.gz'))), '/policy.wasm');
      assert.ok(wasm !== undefined);
      const policy = await loadPolicy(wasm);
      const result = policy.evaluate(input) as { result: boolean[] }[];
      return { go: evaluated.result[0]?.expressions[0]?.value ?? [], wasm: result[0]?.result ?? [] };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };
  it('every case, evaluated by OPA itself (Go and Wasm)', async () => {
    const { go, wasm } = await inOpa();
    const wrong = (got: boolean[]) => names.filter((_, i) => got[i] !== expected[i]);
    assert.deepEqual(wrong(go), [], 'opa eval');
    assert.deepEqual(wrong(wasm), [], 'the Wasm module, as the sidecar evaluates it');
  });
});
