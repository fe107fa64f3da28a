// A running sidecar with an open connection switches to an edited policy as soon as it reports loading it,
// without dropping the connection; decision records name the policy, the rule and the bundle digest in force.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decisionBundleDigests, type AccessPolicySpec } from '@chaperone/api';
import { READ_ONLY, startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
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
  const c = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:agent' });
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

    const records = (await sidecar.settledRecords()).map((r) => r.record);
    // Format 3: a policy's first decision in the session names its digest, later ones under the same bundle
    // leave it out; the first decision after the reload names the new one.
    const digests = decisionBundleDigests(records);
    const lastDeny = records.findLast((r) => r.type === 'command.decision' && r.decision?.result === 'deny');
    assert.equal(lastDeny?.decision?.policy, 'default/team');
    assert.equal(lastDeny.decision.rule, 'default');
    assert.equal(lastDeny.decision.bundleDigest, newDigest, 'named by the first decision under it');
    const firstAllow = records.find((r) => r.command?.text === 'insert into notes values (1)');
    assert.equal(firstAllow?.decision?.rule, 'writes-too');
    assert.equal(firstAllow.decision.bundleDigest, undefined, 'named by the select before it');
    const inForce = digests[records.indexOf(firstAllow)];
    assert.match(inForce ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.notEqual(inForce, newDigest);
  } finally {
    await c.end();
  }
});
