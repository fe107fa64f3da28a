// The order in which policy test looks for opa, on real files in a temporary directory.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findOpa, OpaNotFoundError } from './opa.ts';

const root = mkdtempSync(join(tmpdir(), 'find-opa-'));
after(() => {
  rmSync(root, { recursive: true, force: true });
});

function dir(name: string, opa: 'executable' | 'not-executable' | 'none' = 'executable'): string {
  const d = join(root, name);
  mkdirSync(d, { recursive: true });
  if (opa !== 'none') {
    writeFileSync(join(d, 'opa'), '#!/bin/sh\n');
    chmodSync(join(d, 'opa'), opa === 'executable' ? 0o755 : 0o644);
  }
  return d;
}

describe('findOpa', () => {
  const beside = dir('beside');
  const onPath = dir('on-path');
  const repo = dir('repo');
  const empty = dir('empty', 'none');
  const notExecutable = dir('not-executable', 'not-executable');

  it('--opa, then CHAPERONE_OPA, then beside the executable, then PATH, then the repository', () => {
    const env = { PATH: `${empty}:${onPath}`, CHAPERONE_OPA: join(onPath, 'opa') };
    const all = { env, executableDir: beside, repositoryOpa: join(repo, 'opa') };
    assert.deepEqual(findOpa({ ...all, flag: join(repo, 'opa') }), { path: join(repo, 'opa'), from: '--opa' });
    assert.deepEqual(findOpa(all), { path: join(onPath, 'opa'), from: 'CHAPERONE_OPA' });
    const noEnv = { ...all, env: { PATH: env.PATH } };
    assert.deepEqual(findOpa(noEnv), { path: join(beside, 'opa'), from: 'beside kubectl-chaperone' });
    assert.deepEqual(findOpa({ ...noEnv, executableDir: empty }), { path: join(onPath, 'opa'), from: 'PATH' });
    assert.deepEqual(findOpa({ ...noEnv, executableDir: empty, env: { PATH: empty } }), {
      path: join(repo, 'opa'),
      from: 'repository',
    });
  });

  it('skips files that are not executable, and relative PATH entries', () => {
    const found = findOpa({ env: { PATH: `:opa-dir:${notExecutable}:${onPath}` }, executableDir: notExecutable });
    assert.deepEqual(found, { path: join(onPath, 'opa'), from: 'PATH' });
  });

  it('an explicit opa that is not executable is an error, not a reason to look elsewhere', () => {
    for (const search of [
      { flag: join(notExecutable, 'opa'), env: { PATH: onPath } },
      { env: { PATH: onPath, CHAPERONE_OPA: join(empty, 'opa') } },
    ]) {
      assert.throws(() => findOpa(search), OpaNotFoundError);
    }
  });

  it('says where it looked when there is none', () => {
    assert.throws(
      () => findOpa({ env: { PATH: empty }, executableDir: empty }),
      (err: Error) =>
        err instanceof OpaNotFoundError &&
        err.message.includes(`not beside kubectl-chaperone (${empty})`) &&
        err.message.includes('not on PATH') &&
        err.message.includes('--opa PATH or CHAPERONE_OPA'),
    );
  });
});
