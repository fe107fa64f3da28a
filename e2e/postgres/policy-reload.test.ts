// A running sidecar with an open connection switches to an edited policy as soon as it reports loading it,
// without dropping the connection; decision records name the policy, the rule and the bundle digest in force.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { READ_ONLY, startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { poll } from '../harness/poll.ts';

const WRITER: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [{ name: 'writes-too', decision: 'allow', match: { sql: { statementKinds: ['select', 'insert', 'ddl'] } } }],
  defaultDecision: 'deny',
};

test('an edited policy takes effect on a live session once loaded, and the connection survives', async (t) => {
  const database = await createTestDatabase(t, 'create table notes (n int)');
  const sidecar = await startTestSidecar(t, { policies: { team: WRITER }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'x' });
  await c.connect();
  try {
    const pid = (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
    await c.query('insert into notes values (1)');

    const newDigest = await writePolicyBundle(sidecar.bundleDir, 'team', READ_ONLY);
    // The sidecar says when it has loaded the edited bundle; from then on its decisions follow it.
    await poll('the sidecar to load the edited bundle', () =>
      Promise.resolve(
        sidecar
          .logs()
          .split('\n')
          .some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(newDigest))
          ? true
          : undefined,
      ),
    );
    await assert.rejects(c.query('insert into notes values (2)'), { code: '42501' });
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
