// A running sidecar with an open connection switches to an edited policy within seconds without
// dropping the connection; decision records name the policy, the rule and the bundle digest in force.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { READ_ONLY, startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';

const WRITER: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [{ name: 'writes-too', decision: 'allow', match: { sql: { statementKinds: ['select', 'insert', 'ddl'] } } }],
  defaultDecision: 'deny',
};

test('an edited policy takes effect on a live session within 5 s, and the connection survives', async (t) => {
  const database = await createTestDatabase(t, 'create table notes (n int)');
  const sidecar = await startTestSidecar(t, { policies: { team: WRITER }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'x' });
  await c.connect();
  try {
    const pid = (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
    await c.query('insert into notes values (1)');

    const newDigest = await writePolicyBundle(sidecar.bundleDir, 'team', READ_ONLY);
    const changedAt = Date.now();
    let deniedAfterMs: number | undefined;
    while (Date.now() - changedAt < 5000) {
      try {
        await c.query('insert into notes values (2)');
      } catch (err) {
        assert.equal((err as { code?: string }).code, '42501');
        deniedAfterMs = Date.now() - changedAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(deniedAfterMs !== undefined, 'the edited policy did not take effect within 5 s');
    // Same backend: the connection was never dropped.
    assert.equal((await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid, pid);

    const decisions = (await sidecar.settledRecords()).filter((r) => r.record.type === 'command.decision');
    const lastDeny = decisions.findLast((r) => r.record.decision?.result === 'deny');
    assert.equal(lastDeny?.record.decision?.policy, 'default/team');
    assert.equal(lastDeny.record.decision.rule, 'default');
    assert.equal(lastDeny.record.decision.bundleDigest, newDigest);
    const firstAllow = decisions.find((r) => r.record.command?.text === 'insert into notes values (1)');
    assert.equal(firstAllow?.record.decision?.rule, 'writes-too');
    assert.notEqual(firstAllow.record.decision.bundleDigest, newDigest);
  } finally {
    await c.end();
  }
});
