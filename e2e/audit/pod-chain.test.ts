// The sessions of one pod form one hash chain, also across a restart of the sidecar on the same spool
// directory (an emptyDir outlives container restarts), so deleting a whole session from the API server is
// found by `kubectl chaperone verify` without any earlier export.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { GENESIS_HASH, type Session } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubectl } from '../harness/kube.ts';
import type { SidecarProcess } from '../harness/sidecar-process.ts';
import { listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';
import { runCli } from './run-cli.ts';

function runPsql(sidecar: SidecarProcess, token: string, sql: string): void {
  const r = spawnSync('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1'], {
    env: sidecar.libpqEnv(token),
    input: sql,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
}

test('sessions of one pod are chained, across a sidecar restart; a deleted session is found by verify', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);

  const first = await startAuditSidecar(t, { kubeconfig, namespace, dir });
  const token = await first.issuer.sign({ sub: 'system:serviceaccount:ci:chained' }, { expiresIn: 3600 });
  runPsql(first, token, 'select 1;\n');
  runPsql(first, token, 'select 2;\n');
  await waitFor('two closed sessions', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 2 && list.every((s) => s.status?.phase === 'Closed') ? true : undefined;
  });
  await first.stop();

  const second = await startAuditSidecar(t, { kubeconfig, namespace, dir });
  runPsql(
    second,
    await second.issuer.sign({ sub: 'system:serviceaccount:ci:chained' }, { expiresIn: 3600 }),
    'select 3;\n',
  );
  const sessions = await waitFor('three closed sessions', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 3 && list.every((s) => s.status?.phase === 'Closed') ? list : undefined;
  });

  // One chain in start order: genesis → s1 → s2 → s3 (verifySessions checks the pod's links too).
  const verified = await verifySessions(sessions, namespace);
  const ordered = [...verified].sort((a, b) => (a.records[0]?.time ?? '').localeCompare(b.records[0]?.time ?? ''));
  assert.deepEqual(
    ordered.map((v) => v.records[0]?.prevHash),
    [GENESIS_HASH, ordered[0]?.records[0]?.hash, ordered[1]?.records[0]?.hash],
    'each session links to the first record of the one before, the restart included',
  );

  const cli = (...args: string[]) => runCli(args, { KUBECONFIG: kubeconfig });
  const clean = await cli('verify', '--all', '-n', namespace);
  assert.equal(clean.code, 0, clean.stdout + clean.stderr);

  // An admin deletes the middle session (the CRD allows deletion; in a cluster the admission policy
  // leaves it to the retention controller, which an admin can remove first).
  const middle = ordered[1]?.parts[0] as Session;
  const last = ordered[2]?.parts[0] as Session;
  await kubectl(['delete', 'session', middle.metadata.name ?? '', '-n', namespace]);
  const found = await cli('verify', '--all', '-n', namespace, '-o', 'json');
  assert.equal(found.code, 1, found.stdout + found.stderr);
  const problems = (JSON.parse(found.stdout) as { problems: { kind: string; object: string; detail: string }[] })
    .problems;
  const missing = problems.find((p) => p.kind === 'session-missing');
  assert.equal(missing?.object, `${namespace}/${last.metadata.name ?? ''}`, JSON.stringify(problems));
  assert.match(missing.detail, /a whole session was deleted/);
});
