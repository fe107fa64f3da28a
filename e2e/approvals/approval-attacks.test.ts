// Attacks on held statements (issue 13), each against the real API server, sidecar and PostgreSQL, each
// ending with the row count proving the held statement did not run: decisions with a forged author, uid
// or groups; rewriting or removing a decision; the requester (or an actor of its chain) approving under
// another's name or marking its request Approved; replaying an approved request for the identical
// statement sent again in the same session; deleting the pending request (the client gets 58000).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type ApprovalRequest } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import type { TestIdentity } from '../harness/identities.ts';
import { statusOf } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { PLURAL, createApprovalWorld, requestNamed, startPsql } from './approval-fixture.ts';

const MERGE = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

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

test('approvals: attacks on a held statement are refused and it never runs unapproved', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const sidecar = await world.startSidecar(t);
  const env = sidecar.libpqEnv(await world.requesterToken(sidecar));
  const status = (who: TestIdentity, name: string, body: unknown) =>
    who.kc
      .makeApiClient(k8s.CustomObjectsApi)
      .patchNamespacedCustomObjectStatus(
        { group: GROUP, version: VERSION, namespace: ns, plural: PLURAL, name, body },
        MERGE,
      );
  const decisionsOf = async (name: string) => (await world.request(name)).status?.decisions ?? [];
  const decision = (username: string, extra: Record<string, unknown> = {}) => ({
    approver: { username, ...extra },
    decision: 'approve',
    time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  });

  const run = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (500)']);
  const name = await requestNamed(run.stderr);

  await t.test(
    'forged decisions: another name, another uid, groups not held, the chain under a third name',
    async () => {
      const cases: [TestIdentity, unknown, RegExp][] = [
        [people.mallory, decision('carol@example.com', { groups: ['dba'] }), /as the API server authenticated them/],
        [people.mallory, decision('mallory@example.com', { groups: ['dba'] }), /groups the API server authenticated/],
        [people.carol, decision('carol@example.com', { uid: 'someone-else', groups: ['dba'] }), /uid/],
        [people.alice, decision('erin@example.com', { groups: ['dba'] }), /as the API server authenticated them/],
        [people.bob, decision('dave@example.com', { groups: ['dba'] }), /as the API server authenticated them/],
      ];
      for (const [who, d, why] of cases) {
        const r = await refused(status(who, name, { status: { phase: 'Pending', decisions: [d] } }));
        assert.equal(r.code, 403, `${who.user}: ${r.message ?? ''}`);
        assert.match(r.message ?? '', why);
      }
      assert.deepEqual(await decisionsOf(name), []);
      assert.equal(run.exitCode(), null);
      assert.equal(await world.count('payouts'), 0);
    },
  );

  await t.test('a decision once made cannot be rewritten or removed', async () => {
    // On the 2-of-N table one real approval leaves the statement held, so there is a decision to tamper with.
    const quorum = startPsql(env, ['-c', 'INSERT INTO transfers(amount) VALUES (9)']);
    const quorumName = await requestNamed(quorum.stderr);
    assert.equal((await runCli(['approve', quorumName, '-n', ns, '--kubeconfig', people.dave.kubeconfig])).code, 0);
    const [made] = await decisionsOf(quorumName);
    assert.ok(made !== undefined);
    // Rewriting dave's approval as erin's second vote, or removing it, is refused (append-only).
    const rewritten = await refused(
      status(people.dave, quorumName, {
        status: { decisions: [{ ...made, approver: { ...made.approver, username: 'erin@example.com' } }] },
      }),
    );
    assert.ok(rewritten.code === 422 || rewritten.code === 403, String(rewritten.code));
    const removed = await refused(status(people.dave, quorumName, { status: { decisions: [] } }));
    assert.equal(removed.code, 422);
    assert.match(removed.message ?? '', /decisions are append-only/);
    assert.equal(quorum.exitCode(), null, '1 of 2: still held');
    assert.equal(await world.count('transfers'), 0);
    assert.equal((await runCli(['deny', quorumName, '-n', ns, '--kubeconfig', people.erin.kubeconfig])).code, 0);
    assert.equal(await quorum.exited, 1);
    assert.equal(await world.count('transfers'), 0);
  });

  await t.test('the requester and its chain: no approving in their own name, no phase edits', async () => {
    for (const who of [people.bob, people.alice]) {
      const self = await refused(
        status(who, name, { status: { decisions: [decision(who.user, { groups: ['dba'] })] } }),
      );
      assert.equal(self.code, 403);
      assert.match(self.message ?? '', /allowSelfApproval is false/);
      const phase = await refused(status(who, name, { status: { phase: 'Approved' } }));
      assert.equal(phase.code, 403);
    }
    assert.equal((await world.request(name)).status?.phase, 'Pending');
    assert.equal(await world.count('payouts'), 0);
  });

  await t.test('replay: the identical statement sent again in the same session needs its own approval', async () => {
    const session = startPsql(
      env,
      ['-f', '-'],
      'INSERT INTO payouts(amount) VALUES (500);\nINSERT INTO payouts(amount) VALUES (500);\n',
    );
    const first = await requestNamed(session.stderr);
    const firstRequest: ApprovalRequest = await world.request(first);
    assert.equal((await runCli(['approve', first, '-n', ns, '--kubeconfig', people.carol.kubeconfig])).code, 0);
    const second = await requestNamed(session.stderr, session.stderr().indexOf(first) + first.length);
    assert.notEqual(second, first);
    const secondRequest = await world.request(second);
    assert.equal(secondRequest.spec.session, firstRequest.spec.session);
    assert.equal(
      secondRequest.spec.bindingHash,
      firstRequest.spec.bindingHash,
      'the same statement, session and chain',
    );
    await poll('the first approved statement to have run', async () =>
      (await world.count('payouts')) === 1 ? true : undefined,
    );
    assert.equal((await world.request(second)).status?.phase, 'Pending', 'the earlier approval is used up');
    assert.equal(await world.count('payouts'), 1);
    assert.equal((await runCli(['deny', second, '-n', ns, '--kubeconfig', people.carol.kubeconfig])).code, 0);
    await session.exited;
    assert.match(session.stderr(), /ERROR: {2}42501: chaperone: approval request .* was denied/);
    assert.equal(await world.count('payouts'), 1);
  });

  await t.test('deleting the pending request does not release it: the client gets 58000', async () => {
    await world.custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: PLURAL,
      name,
    });
    assert.equal(await run.exited, 1);
    assert.match(
      run.stderr(),
      new RegExp(
        `ERROR: {2}58000: chaperone: approval request ${name} was deleted while pending; the statement did not run`,
      ),
    );
    assert.equal(await world.count('payouts'), 1, 'only the replay test’s approved row');
  });
});
