// The sidecar is killed with SIGKILL in the middle of a session and started again on the same spool
// directory: it replays its spool, writes what Kubernetes does not have yet, skips what it has, and marks
// the dead session Abandoned. Every statement the client saw answered has exactly one decision record
// there: none lost to the kill, none written twice by the replay.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { waitForExit } from '../harness/processes.ts';
import { lastStatus, listSessions, startAuditSidecar, verifySessions, waitFor } from './durability-helpers.ts';

test('durable audit: after SIGKILL mid-session the restarted sidecar flushes its spool without duplicates', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const dir = testDir(t);
  const first = await startAuditSidecar(t, { kubeconfig, namespace, dir, flushIntervalMs: 300 });
  const token = await first.issuer.sign({ sub: 'system:serviceaccount:ci:killed' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: first.host, port: first.port, user: 'agent', password: token, database: 'a' });
  c.on('error', () => undefined);
  await c.connect();
  // Every statement is distinct, so the trail can be checked statement by statement.
  const answered: string[] = [];
  const client = (async () => {
    for (let i = 0; ; i++) {
      const text = `select ${String(i)} as n`;
      try {
        await c.query(text);
      } catch {
        return;
      }
      answered.push(text);
    }
  })();
  // Kill once statements flow and some records are in Kubernetes (the spool has acknowledged them).
  const spool = join(dir, 'audit', 'spool');
  await waitFor('statements flowing and records acknowledged', () =>
    Promise.resolve(answered.length >= 700 && existsSync(join(spool, 'ack')) ? true : undefined),
  );
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  await client;

  // The spool's acknowledgement file is only an optimisation (docs/audit-durability.md): remove it, as a
  // crash between a Session write and the acknowledgement would leave it behind, so the replay re-sends
  // records Kubernetes already has and the writer must skip every one of them.
  rmSync(join(spool, 'ack'));
  const second = await startAuditSidecar(t, { kubeconfig, namespace, dir, flushIntervalMs: 300 });
  const sessions = await waitFor('the dead session marked Abandoned', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.some((s) => s.status?.phase === 'Abandoned') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, namespace); // every seq exactly once, chain and heads verify
  assert.ok(v !== undefined);
  const decisions = v.records.filter((r) => r.type === 'command.decision');
  const recorded = new Map<string, number>();
  for (const r of decisions) recorded.set(r.command?.text ?? '', (recorded.get(r.command?.text ?? '') ?? 0) + 1);
  const notOnce = answered.filter((text) => recorded.get(text) !== 1);
  assert.deepEqual(
    notOnce.map((text) => `${text}: ${String(recorded.get(text) ?? 0)} decision records`),
    [],
    'every answered statement is in the trail exactly once',
  );
  assert.deepEqual(
    [...recorded].filter(([, n]) => n !== 1),
    [],
    'no statement is recorded twice',
  );
  // The client waits for each answer: at most the one statement in flight at the kill is recorded unanswered.
  assert.ok(
    decisions.length - answered.length <= 1,
    `${String(decisions.length)} decisions, ${String(answered.length)} answered`,
  );
  const outcomes = v.records.filter((r) => r.type === 'command.outcome').map((r) => r.command?.id);
  assert.equal(new Set(outcomes).size, outcomes.length, 'no outcome is recorded twice');
  const ids = new Set(decisions.map((r) => r.command?.id));
  assert.ok(
    outcomes.every((id) => ids.has(id)),
    'every outcome follows its decision',
  );
  assert.equal(v.records[0]?.type, 'session.start');
  assert.ok(!v.records.some((r) => r.type === 'session.end'), 'nobody ended the session');
  assert.match(
    second.logs(),
    /"msg":"audit records already in Kubernetes skipped"/,
    'the replay met records already written',
  );
  const status = lastStatus(v);
  assert.equal(status.phase, 'Abandoned');
  assert.equal(status.endTime, v.records.at(-1)?.time);
  assert.equal(status.counters.commands, decisions.length);
});
