// Time-bound grants, end to end and all real: `kubectl chaperone approve NAME --for D --scope S` by people
// with client certificates on the real API server, psql and node-postgres through the real sidecar. A grant
// lets later matching commands run without a new request, each recorded with the grant's request and
// approvers; it is limited by its scope (statement fingerprint, session, resource), ends on expiry, with its
// session (session scope) and on `kubectl chaperone revoke`; admission refuses grants the policy does not
// allow, self-approval and revocations by outsiders; 2-of-N grants the narrowest of what both asked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type AccessPolicySpec, type AuditRecord } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { listSessions, verifySessions } from '../audit/durability-helpers.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { connectAgent } from '../harness/agent-client.ts';
import type { TestIdentity } from '../harness/identities.ts';
import { statusOf } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { PLURAL, createApprovalWorld, requestNamed, startPsql, type ApprovalWorld } from './approval-fixture.ts';

const grantingPolicy = (
  table: string,
  requiredApprovals: number,
  scopes: ('fingerprint' | 'session' | 'resource')[],
): AccessPolicySpec => ({
  resources: { names: ['test-db'] },
  rules: [
    {
      name: `${table}-writes`,
      decision: 'approve',
      match: { sql: { statementKinds: ['insert', 'update', 'delete'], relations: [`public.${table}`] } },
    },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
  approval: {
    approverGroups: ['dba'],
    requiredApprovals,
    timeout: '10m',
    allowSelfApproval: false,
    grants: { scopes, maxDuration: '30m' },
  },
});

const POLICIES: Record<string, AccessPolicySpec> = {
  payouts: grantingPolicy('payouts', 1, ['fingerprint', 'resource']),
  transfers: grantingPolicy('transfers', 2, ['fingerprint', 'session', 'resource']),
  // No grants: every approval covers one command.
  refunds: {
    ...grantingPolicy('refunds', 1, ['resource']),
    approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '10m', allowSelfApproval: false },
  },
};

const cli = (who: TestIdentity, args: string[]) => runCli([...args, '--kubeconfig', who.kubeconfig]);

async function requestNames(world: ApprovalWorld): Promise<string[]> {
  const list = (await world.custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: world.ns,
    plural: PLURAL,
  })) as { items: { metadata: { name: string } }[] };
  return list.items.map((i) => i.metadata.name).filter((n) => !n.startsWith('probe-'));
}

async function refused(call: Promise<unknown>): Promise<k8s.V1Status> {
  try {
    await call;
  } catch (err) {
    const status = statusOf(err);
    if (status !== undefined) return status;
    throw err;
  }
  throw new Error('the call was expected to be refused, and it succeeded');
}

test('time-bound grants: one approval covers later matching commands for a while, and no more', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const sidecar = await world.startSidecar(t, undefined, POLICIES);
  const token = await world.requesterToken(sidecar);
  const env = sidecar.libpqEnv(token);
  const psql = async (sql: string) => {
    const run = startPsql(env, ['-c', sql]);
    return { run, code: await run.exited };
  };
  const connect = async () => {
    const client = await connectAgent(sidecar, { token });
    const notices: string[] = [];
    client.on('notice', (n) => notices.push(n.message ?? ''));
    return { client, notices };
  };
  let fingerprintGrant = '';

  await t.test('fingerprint: the same statement up to its constants runs in later sessions unheld', async () => {
    const held = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (1)']);
    const name = await requestNamed(held.stderr);
    fingerprintGrant = name;
    const request = await world.request(name);
    assert.deepEqual(request.spec.grants, { scopes: ['fingerprint', 'resource'], maxDurationSeconds: 1800 });
    // Beyond what the policy allows, or a scope it does not list: refused by the CLI and by admission.
    const tooLong = await cli(people.carol, ['approve', name, '-n', ns, '--for', '2h']);
    assert.equal(tooLong.code, 1);
    assert.match(tooLong.stderr, /at most 1800s/);
    const direct = people.carol.kc.makeApiClient(k8s.CustomObjectsApi);
    const forged = (grant: object) =>
      direct.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: PLURAL,
          name,
          body: {
            status: {
              decisions: [
                {
                  approver: { username: 'carol@example.com', groups: ['dba'] },
                  decision: 'approve',
                  time: '2026-12-05T04:00:00Z',
                  grant,
                },
              ],
            },
          },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    assert.match((await refused(forged({ scope: 'resource', durationSeconds: 7200 }))).message ?? '', /at most 1800s/);
    assert.match(
      (await refused(forged({ scope: 'session', durationSeconds: 60 }))).message ?? '',
      /scopes fingerprint, resource/,
    );
    // The requester asking for a grant on its own command: refused as any self-approval.
    const self = await cli(people.bob, ['approve', name, '-n', ns, '--for', '10m']);
    assert.equal(self.code, 1);
    assert.match(self.stderr, /requested this command/);
    assert.equal(await world.count('payouts'), 0);

    const ok = await cli(people.carol, ['approve', name, '-n', ns, '--for', '10m', '--scope', 'fingerprint']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /granting fingerprint for 600s/);
    assert.equal(await held.exited, 0, held.stderr());
    const granted = await poll(
      'the grant in the request status',
      async () => (await world.request(name)).status?.grant,
    );
    assert.deepEqual(granted.scopes, ['fingerprint']);
    assert.deepEqual(granted.approvers, ['carol@example.com']);
    assert.match(granted.fingerprint ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.equal(granted.endReason, undefined);

    // A new session, other constants: runs at once, no notice, no new request.
    const before = await requestNames(world);
    const again = await psql('INSERT INTO payouts(amount) VALUES (2)');
    assert.equal(again.code, 0, again.run.stderr());
    assert.doesNotMatch(again.run.stderr(), /held for approval/);
    assert.equal(await world.count('payouts'), 2);
    assert.deepEqual(await requestNames(world), before);

    // Another statement on the same table (not the fingerprint): held for a request of its own.
    const other = startPsql(env, ['-c', "INSERT INTO payouts(amount, note) VALUES (3, 'x')"]);
    const otherName = await requestNamed(other.stderr);
    assert.notEqual(otherName, name);
    assert.equal((await cli(people.carol, ['deny', otherName, '-n', ns])).code, 0);
    assert.equal(await other.exited, 1);
    assert.equal(await world.count('payouts'), 2);
  });

  await t.test('revoke: an outsider cannot; an approver can, and the next command is held again', async () => {
    const outsider = await cli(people.mallory, ['revoke', fingerprintGrant, '-n', ns]);
    assert.equal(outsider.code, 1);
    assert.match(outsider.stderr, /may not revoke this grant/);
    const revoked = await cli(people.dave, ['revoke', fingerprintGrant, '-n', ns, '--comment', 'enough']);
    assert.equal(revoked.code, 0, revoked.stderr);
    await poll('the grant to end as Revoked', async () =>
      (await world.request(fingerprintGrant)).status?.grant?.endReason === 'Revoked' ? true : undefined,
    );
    const again = (await world.request(fingerprintGrant)).status;
    assert.equal(again?.revocation?.revokedBy.username, 'dave@example.com');
    assert.equal(again.phase, 'Approved');
    const twice = await cli(people.carol, ['revoke', fingerprintGrant, '-n', ns]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /revoked already by dave@example\.com/);

    const held = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (4)']);
    const name = await requestNamed(held.stderr);
    assert.notEqual(name, fingerprintGrant);
    held.signal('SIGINT');
    await held.exited;
    assert.equal(await world.count('payouts'), 2);
  });

  await t.test('2-of-N, session scope: the narrowest of both asks, only in that session, ended with it', async () => {
    const { client, notices } = await connect();
    const first = client.query('INSERT INTO transfers(amount) VALUES (10)');
    const name = await requestNamed(() => notices.join('\n'));
    assert.equal((await cli(people.carol, ['approve', name, '-n', ns, '--for', '20m', '--scope', 'session'])).code, 0);
    assert.equal((await cli(people.dave, ['approve', name, '-n', ns, '--for', '5m', '--scope', 'resource'])).code, 0);
    await first;
    const grant = await poll('the grant', async () => (await world.request(name)).status?.grant);
    assert.deepEqual(grant.scopes, ['session', 'resource']);
    assert.equal(Date.parse(grant.expiresTime) - Date.parse(grant.startTime), 300_000);
    assert.deepEqual(grant.approvers, ['carol@example.com', 'dave@example.com']);

    // Same session, another statement of the rule: runs unheld.
    const noticesBefore = notices.length;
    await client.query('UPDATE transfers SET amount = 11 WHERE amount = 10');
    await client.query('INSERT INTO transfers(amount) VALUES (12)');
    assert.equal(notices.length, noticesBefore);
    assert.equal(await world.count('transfers'), 2);
    // Another session: held.
    const other = startPsql(env, ['-c', 'INSERT INTO transfers(amount) VALUES (13)']);
    const otherName = await requestNamed(other.stderr);
    assert.notEqual(otherName, name);
    other.signal('SIGINT');
    await other.exited;

    await client.end();
    await poll('the session grant to end with its session', async () =>
      (await world.request(name)).status?.grant?.endReason === 'SessionEnded' ? true : undefined,
    );
    assert.equal(await world.count('transfers'), 2);
  });

  await t.test('a policy without grants refuses --for; a grant ends on expiry', async () => {
    const held = startPsql(env, ['-c', 'INSERT INTO refunds(amount) VALUES (1)']);
    const name = await requestNamed(held.stderr);
    const refusedGrant = await cli(people.carol, ['approve', name, '-n', ns, '--for', '10m']);
    assert.equal(refusedGrant.code, 1);
    assert.match(refusedGrant.stderr, /allows no grant/);
    assert.equal((await cli(people.carol, ['approve', name, '-n', ns])).code, 0);
    assert.equal(await held.exited, 0);
    assert.equal((await world.request(name)).status?.grant, undefined);

    const short = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (5)']);
    const shortName = await requestNamed(short.stderr);
    assert.equal(
      (await cli(people.carol, ['approve', shortName, '-n', ns, '--for', '2s', '--scope', 'resource'])).code,
      0,
    );
    assert.equal(await short.exited, 0);
    await poll('the grant to expire', async () =>
      (await world.request(shortName)).status?.grant?.endReason === 'Expired' ? true : undefined,
    );
    const after = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (6)']);
    const afterName = await requestNamed(after.stderr);
    assert.notEqual(afterName, shortName);
    after.signal('SIGINT');
    await after.exited;
    assert.equal(await world.count('payouts'), 3);
  });

  await t.test('each command run under a grant is in the trail with the grant and its approvers', async () => {
    const admin = controlPlaneEnv().kubeconfig;
    const records = await poll('the granted statements in the trail', async () => {
      const all = (await listSessions(admin, ns)).flatMap((s) => s.spec.records);
      const underGrant = all.filter(
        (r: AuditRecord) => r.type === 'approval.decided' && r.approval?.grant !== undefined,
      );
      // payouts (the approval that made it, and the run in a later session), transfers (the approval and two runs).
      return underGrant.length >= 5 ? all : undefined;
    });
    const decided = records.filter((r) => r.type === 'approval.decided' && r.approval?.request === fingerprintGrant);
    assert.equal(decided.length, 2, 'the approval and one command under its grant');
    for (const d of decided) {
      assert.deepEqual(d.approval?.grant?.scopes, ['fingerprint']);
      assert.deepEqual(
        d.approval.decisions?.map((x) => x.approver),
        ['carol@example.com'],
      );
    }
    const [made, used] = decided;
    assert.notEqual(made?.approval?.bindingHash, used?.approval?.bindingHash, 'each bound to its own command');
    // The granted command's outcome names the grant's request and its own binding hash.
    const outcome = records.find(
      (r) => r.type === 'command.outcome' && r.approval?.bindingHash === used?.approval?.bindingHash,
    );
    assert.equal(outcome?.approval?.request, fingerprintGrant);
    assert.equal(outcome.outcome?.status, 'success');
    await verifySessions(await listSessions(admin, ns), ns);
  });
});
