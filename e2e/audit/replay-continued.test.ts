// A process that dies after creating a session's next part and before writing the earlier part's
// `Continued` status (the status write failed, or never came) leaves that part without a status, or with a
// stale one. The next process's writer finds it when it reads the session's parts (replay) and marks it
// `Continued`: with counters counted from the records up to that part, as every part's status is (verify's
// `status-mismatch`), not with whatever the part's status said. Before the twelfth session it copied the
// part's status counters, all zeros when there was none: `kubectl chaperone verify` then failed the session
// (found by durability-replay-large.test.ts). Real SessionWriter, real API server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KubernetesSessionStore, type SessionStore } from '../../sidecar/src/core/audit/session-store.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { listSessions, verifySessions } from './durability-helpers.ts';
import { HandChain, replayOrigin, replayWriter, testSigningKey, type RecordContent } from './replay-fixture.ts';
import { runCli } from './run-cli.ts';

test('replay: a part left without its Continued status by a dead process gets the counters of its records', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const key = await testSigningKey(t);
  const origin = replayOrigin(namespace, '7e91c0de-0000-4000-8000-0000000c0417');
  const chain = new HandChain((seq) => `2026-12-06T02:00:00.${String(seq).padStart(6, '0')}Z`);
  const { records } = chain;
  const add = (content: RecordContent) => chain.add(content);
  add({ type: 'session.start', identity: { subject: 'system:serviceaccount:ci:runner', issuer: 'https://issuer' } });
  for (let i = 1; i <= 9; i++) {
    add({
      type: 'command.decision',
      command: { id: i, kind: 'sql', text: `select ${String(i)}` },
      decision: { result: i === 3 ? 'deny' : 'allow', rule: 'r' },
    });
  }
  add({ type: 'session.end', outcome: { status: 'success', message: 'client disconnected' } });

  const real = new KubernetesSessionStore({ kubeconfig, namespace });
  // The first process: its records reach Kubernetes, its status writes never do (it dies before them).
  const withoutStatus: SessionStore = {
    namespace,
    listParts: (id) => real.listParts(id),
    create: (s) => real.create(s),
    append: (...args) => real.append(...args),
    patchStatus: () => Promise.reject(new Error('killed before the status write')),
    event: () => Promise.resolve(),
  };
  const writer = (store: SessionStore) =>
    replayWriter(t, namespace, key, { store, maxRecordsPerPart: 4, backoffInitialMs: 50, backoffMaxMs: 100 });
  const first = writer(withoutStatus);
  first.start();
  // Records 1..6: part 0 (1..4) and part 1 (5..6) are created, part 0's Continued status write fails.
  records.slice(0, 6).forEach((r, i) => first.enqueue(i + 1, origin, r));
  for (let i = 0; i < 100; i++) {
    const parts = await listSessions(kubeconfig, namespace);
    if (parts.length === 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await first.stop();
  const before = await listSessions(kubeconfig, namespace);
  assert.deepEqual(
    before.map((p) => [p.spec.part, p.status?.phase]),
    [
      [0, undefined],
      [1, undefined],
    ],
    'parts 0 and 1 written, neither status',
  );

  // The next process replays the spool: every record again, the session's end among them.
  const second = writer(real);
  second.start();
  records.forEach((r, i) => second.enqueue(i + 1, origin, r, true));
  assert.equal(await second.flush(60_000), true, 'every record written');

  const parts = await listSessions(kubeconfig, namespace);
  const [v] = await verifySessions(parts, namespace, { podLinks: false });
  assert.ok(v !== undefined);
  assert.deepEqual(
    v.parts.map((p) => [p.status?.phase, p.status?.counters]),
    [
      ['Continued', { commands: 3, allowed: 2, denied: 1, held: 0, errors: 0 }],
      ['Continued', { commands: 7, allowed: 6, denied: 1, held: 0, errors: 0 }],
      ['Closed', { commands: 9, allowed: 8, denied: 1, held: 0, errors: 0 }],
    ],
    "each part's counters count the session up to it",
  );
  const verify = await runCli(['verify', '--all', '-n', namespace], { KUBECONFIG: kubeconfig });
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});
