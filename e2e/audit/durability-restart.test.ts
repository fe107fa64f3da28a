// The sidecar is killed with SIGKILL in the middle of a session and started again on the same spool
// directory: it replays its spool, writes what Kubernetes does not have yet, skips what it has, and marks
// the dead session Abandoned. Every statement the client saw answered has its decision record there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
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
  let answered = 0;
  const client = (async () => {
    for (let i = 0; ; i++) {
      try {
        await c.query(`select ${String(i)} as n`);
      } catch {
        return;
      }
      answered += 1;
    }
  })();
  await waitFor('statements flowing', () => Promise.resolve(answered >= 700 ? true : undefined));
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  await client;

  await startAuditSidecar(t, { kubeconfig, namespace, dir, flushIntervalMs: 300 });
  const sessions = await waitFor('the dead session marked Abandoned', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.some((s) => s.status?.phase === 'Abandoned') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, namespace); // every seq exactly once, chain and heads verify
  assert.ok(v !== undefined);
  const decisions = v.records.filter((r) => r.type === 'command.decision').length;
  assert.ok(decisions >= answered, `${String(decisions)} decisions recorded, ${String(answered)} statements answered`);
  assert.equal(v.records[0]?.type, 'session.start');
  assert.ok(!v.records.some((r) => r.type === 'session.end'), 'nobody ended the session');
  const status = lastStatus(v);
  assert.equal(status.phase, 'Abandoned');
  assert.equal(status.endTime, v.records.at(-1)?.time);
  assert.equal(status.counters.commands, decisions);
});
