// The sidecar stopping while a statement waits for approval (issue 13): the client gets a clean error,
// nothing runs (then or later, even if someone approves afterwards), and the request says Abandoned. A
// SIGTERM abandons held requests on the way out (clients get FATAL 57P01); after a SIGKILL the sidecar's
// next start finds the requests its pod left Pending and abandons them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { runCli } from '../audit/run-cli.ts';
import { testDir } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, requestNamed, startPsql, type ApprovalWorld } from './approval-fixture.ts';

async function phaseOf(world: ApprovalWorld, name: string, phase: string): Promise<void> {
  await poll(`approvalrequest ${name} to be ${phase}`, async () =>
    (await world.request(name)).status?.phase === phase ? true : undefined,
  );
}

test('approvals: a sidecar restart while a statement is held runs nothing and abandons the request', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const dir = join(testDir(t), 'sidecar');

  await t.test(
    'SIGTERM: the client gets FATAL 57P01, the request is Abandoned, a late approval is refused',
    async (t2) => {
      const sidecar = await world.startSidecar(t2, dir);
      const run = startPsql(sidecar.libpqEnv(await world.requesterToken(sidecar)), [
        '-c',
        'INSERT INTO payouts(amount) VALUES (1)',
      ]);
      const name = await requestNamed(run.stderr);
      sidecar.process.kill('SIGTERM');
      assert.equal(await run.exited, 2, run.stderr());
      assert.match(
        run.stderr(),
        /FATAL: {2}57P01: chaperone: the sidecar is shutting down; approval request .* is abandoned and the statement did not run/,
      );
      await sidecar.stop();
      await phaseOf(world, name, 'Abandoned');
      const late = await runCli(['approve', name, '-n', ns, '--kubeconfig', people.dave.kubeconfig]);
      assert.equal(late.code, 1);
      assert.match(late.stderr, /is Abandoned; it can no longer be decided/);
      assert.equal(await world.count('payouts'), 0);
    },
  );

  await t.test('SIGKILL: the next start marks what the pod left Pending as Abandoned; nothing runs', async (t2) => {
    const sidecar = await world.startSidecar(t2, dir);
    const run = startPsql(sidecar.libpqEnv(await world.requesterToken(sidecar)), [
      '-c',
      'INSERT INTO payouts(amount) VALUES (2)',
    ]);
    const name = await requestNamed(run.stderr);
    sidecar.process.kill('SIGKILL');
    assert.equal(await run.exited, 2);
    assert.match(run.stderr(), /server closed the connection unexpectedly|connection to server .* lost/);
    await sidecar.stop();
    assert.equal((await world.request(name)).status?.phase, 'Pending', 'nobody was left to say otherwise');
    // An approval now would find no connection; the restarted sidecar says so in the request first.
    const restarted = await world.startSidecar(t2, dir);
    await phaseOf(world, name, 'Abandoned');
    const condition = (await world.request(name)).status?.conditions?.find((c) => c.type === 'Decided');
    assert.equal(condition?.reason, 'SidecarRestarted');
    const late = await runCli(['approve', name, '-n', ns, '--kubeconfig', people.dave.kubeconfig]);
    assert.equal(late.code, 1);
    assert.equal(await world.count('payouts'), 0);
    // The restarted sidecar holds new statements as before.
    const again = startPsql(restarted.libpqEnv(await world.requesterToken(restarted)), [
      '-c',
      'INSERT INTO payouts(amount) VALUES (3)',
    ]);
    const next = await requestNamed(again.stderr);
    assert.notEqual(next, name);
    assert.equal((await runCli(['approve', next, '-n', ns, '--kubeconfig', people.dave.kubeconfig])).code, 0);
    assert.equal(await again.exited, 0, again.stderr());
    assert.equal(await world.count('payouts'), 1);
  });
});
