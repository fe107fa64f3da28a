// Commands an agent pipelines behind a refused one, up to its Sync: the sidecar's substitute fails on the
// server, which skips them, so none of them runs. They are still attempts, and the trail keeps them: each is
// decided and recorded `cancelled` (one refused on its own account `denied`), and none is filed for approval
// or held (docs/postgres-engine.md, "Commands skipped behind a refusal"). Raw frames through the real sidecar
// (approvals on, the real API server) to a real PostgreSQL; judged on the server's state, the ApprovalRequest
// objects and the verified trail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { carriesCommandOutcome } from '@chaperone/api';
import type { AuditRecord } from '@chaperone/api';
import { listSessions, verifySessions } from '../audit/durability-helpers.ts';
import { controlPlaneEnv, directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, POLICIES } from '../approvals/approval-fixture.ts';
import { authenticatedClient, query, SYNC, TERMINATE } from './raw-client.ts';
import { bind, exchange, execute, parse } from './protocol-wire.ts';
import { ALLOWED, DENIED, GUARD, PAYOUT, TIMEOUT_MS } from './refusal-fixture.ts';

test('commands pipelined behind a refusal are decided and recorded cancelled, never filed', async (t) => {
  const world = await createApprovalWorld(t);
  const owner = new pg.Client(directPgOptions(world.database));
  await owner.connect();
  const sidecar = await world.startSidecar(t, undefined, { payouts: POLICIES.payouts!, guard: GUARD });
  const token = await world.requesterToken(sidecar);
  const state = async (): Promise<unknown> => ({
    accounts: (await owner.query('select id, owner from accounts order by id')).rows,
    payouts: await world.count('payouts'),
  });
  const before = await state();
  const requestsBefore = (await world.requests()).length;

  const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
  try {
    // One write: the denied Parse, its Bind and Execute, then an allowed statement and an approve-rule one.
    const end = await exchange(
      client,
      Buffer.concat([
        parse('', DENIED),
        bind('', ''),
        execute(''),
        parse('a', ALLOWED),
        bind('pa', 'a'),
        execute('pa'),
        parse('h', PAYOUT),
        bind('ph', 'h', ['77']),
        execute('ph'),
        SYNC,
      ]),
      1,
    );
    assert.deepEqual(end.codes, ['42501'], end.errors.join('; '));
    assert.equal(end.types, 'E Z', 'the refusal, then everything skipped to the Sync');
    // The session goes on.
    const after = await exchange(client, query('select 1'), 1);
    assert.deepEqual(after.codes, [], after.errors.join('; '));
    client.write(TERMINATE);
  } finally {
    await client.untilClosed(TIMEOUT_MS).catch(() => undefined);
    client.destroy();
  }

  assert.deepEqual(await state(), before, 'nothing of the pipeline ran');
  await owner.end(); // before the world's teardown drops the database under it

  // The verified trail of the session, once it ended.
  const records = await poll('the session, ended, on the trail', async () => {
    const sessions = await listSessions(controlPlaneEnv().kubeconfig, world.ns);
    for (const verified of await verifySessions(sessions, world.ns)) {
      const mine = verified.records.some((r) => r.type === 'command.decision' && r.command?.text === DENIED);
      if (mine && verified.records.some((r) => r.type === 'session.end')) return verified.records;
    }
    return undefined;
  });
  const outcomeOf = (decision: AuditRecord): AuditRecord['outcome'] =>
    records.find((r) => carriesCommandOutcome(r) && r.command?.id === decision.command?.id)?.outcome;
  const decided = (text: string): { result: string | undefined; status: string | undefined }[] =>
    records
      .filter((r) => r.type === 'command.decision' && r.command?.text === text)
      .map((r) => ({ result: r.decision?.result, status: outcomeOf(r)?.status }));
  // Refused at its Parse, and its Execute refused again with the Parse's reason (the server skipped it): the
  // sidecar's own deny, not what this policy's catch-all says of kind `other`, the kind it is recorded as.
  assert.deepEqual(decided(DENIED), [
    { result: 'deny', status: 'denied' },
    { result: 'deny', status: 'denied' },
  ]);
  assert.deepEqual(decided(ALLOWED), [{ result: 'allow', status: 'cancelled' }]);
  assert.deepEqual(decided(PAYOUT), [{ result: 'approve', status: 'cancelled' }]);
  // Outcomes in the order the client sent the commands: the refusal's own (known when the server's error for
  // its substitute arrives) before those of the commands skipped behind it (known when they were sent).
  const outcomesAt = [DENIED, ALLOWED, PAYOUT].flatMap((text) =>
    records
      .filter((r) => r.type === 'command.decision' && r.command?.text === text)
      .map((d) => records.findIndex((r) => carriesCommandOutcome(r) && r.command?.id === d.command?.id)),
  );
  assert.deepEqual(
    outcomesAt,
    outcomesAt.toSorted((a, b) => a - b),
    'outcomes in client order',
  );
  const skipped = records.find((r) => r.type === 'command.decision' && r.command?.text === PAYOUT);
  assert.deepEqual(skipped?.command?.parameters, ['77'], 'decided with what it was bound to');
  assert.equal(
    records.filter((r) => r.type.startsWith('approval.')).length,
    0,
    'nothing behind the refusal was filed for approval',
  );
  assert.equal((await world.requests()).length, requestsBefore, 'no ApprovalRequest for a command that cannot run');
});
