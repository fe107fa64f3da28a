// The thirteenth session's red team of approvals at Bind. PostgreSQL plans a statement at its Bind: the
// planner evaluates IMMUTABLE functions on constant arguments, in custom plans on the bound parameters too,
// and STABLE ones for selectivity estimates. A function an owner marked wrongly, with side effects, ran
// before anyone approved while the sidecar held statements at their Execute and forwarded the Bind. Each
// attack is raw frames through the real sidecar (approvals on, the real API server) to a real PostgreSQL,
// judged on the server's own state: the rows stamp_write() inserts, committed by the client's Sync. Then the
// pipeline state after a held Bind (Describe of the portal, Flush, named portals, several Binds), a later
// Execute of an approved portal (no second request), and the outcome of a command whose client went away
// while it was held, read from the verified trail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec, AuditRecord } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { listSessions, verifySessions } from '../audit/durability-helpers.ts';
import { controlPlaneEnv, directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, POLICIES, type ApprovalWorld } from '../approvals/approval-fixture.ts';
import { held, heldAndDecided, requestOf, settled } from './held-wire.ts';
import { authenticatedClient, query, SYNC, type RawClient } from './raw-client.ts';
import { bind, close, describe, exchange, execute, FLUSH, parse } from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;

/** Calls of stamp() and stable_stamp() need approval (3 s, then they expire). */
const STAMPS: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'stamp-calls',
      decision: 'approve',
      match: { sql: { functions: ['public.stamp', 'public.stable_stamp'] } },
    },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
  approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '3s', allowSelfApproval: false },
};

/**
 * stamp_write() inserts a row; stamp() (IMMUTABLE) and stable_stamp() (STABLE) call it, as functions an
 * owner marked wrongly would. A non-volatile PL/pgSQL function may not write itself, but may call a volatile
 * one that does. The targets have statistics, so the planner estimates `id = stable_stamp(n)` by calling it.
 */
const OWNER_SQL = `
create table stamp_log (id serial primary key, arg int not null);
create function stamp_write(int) returns void language sql volatile as $$ insert into stamp_log(arg) values ($1) $$;
create function stamp(int) returns int language plpgsql immutable as $$ begin perform stamp_write($1); return $1; end $$;
create function stable_stamp(int) returns int language plpgsql stable as $$ begin perform stamp_write($1); return $1; end $$;
create table stamp_targets (id int primary key);
insert into stamp_targets select generate_series(1, 100);
analyze stamp_targets;
`;

/** The attacks: each pipeline ends with a Sync, which commits what planning wrote. */
const ATTACKS: readonly { readonly name: string; readonly bytes: Buffer }[] = [
  {
    name: 'IMMUTABLE on a constant argument, Bind then Sync (no Execute)',
    bytes: Buffer.concat([parse('', 'select stamp(4201)'), bind('', ''), SYNC]),
  },
  {
    name: 'IMMUTABLE in a custom plan on a bound parameter, Describe of the portal, Sync',
    bytes: Buffer.concat([parse('', 'select stamp($1)'), bind('', '', ['4202']), describe('P', ''), SYNC]),
  },
  {
    name: 'STABLE evaluated for a selectivity estimate, Bind then Sync',
    bytes: Buffer.concat([parse('', 'select id from stamp_targets where id = stable_stamp(4203)'), bind('', ''), SYNC]),
  },
  {
    name: 'IMMUTABLE, full pipeline (Parse, Bind, Describe, Execute, Sync): refused Execute',
    bytes: Buffer.concat([parse('', 'select stamp($1)'), bind('', '', ['4204']), describe('P', ''), execute(''), SYNC]),
  },
  {
    name: 'a named portal of a named statement, Bind then Sync',
    bytes: Buffer.concat([parse('n1', 'select stamp($1)'), bind('p1', 'n1', ['4205']), SYNC]),
  },
  {
    name: 'several Binds of one prepared statement before the Sync',
    bytes: Buffer.concat([
      parse('n2', 'select stamp($1)'),
      bind('a', 'n2', ['4206']),
      bind('b', 'n2', ['4207']),
      bind('', 'n2', ['4208']),
      SYNC,
    ]),
  },
  {
    name: 'the Bind and an allowed statement in one pipeline, Sync',
    bytes: Buffer.concat([
      parse('', 'select stamp($1)'),
      bind('', '', ['4209']),
      parse('x', 'select 1'),
      bind('x', 'x'),
      execute('x'),
      SYNC,
    ]),
  },
];

test('approvals at Bind: planning a held statement runs nothing before the approval', async (t) => {
  const world: ApprovalWorld = await createApprovalWorld(t);
  const owner = new pg.Client(directPgOptions(world.database));
  await owner.connect();
  await owner.query(OWNER_SQL);
  const sidecar = await world.startSidecar(t, undefined, { ...POLICIES, stamps: STAMPS });
  const token = await world.requesterToken(sidecar);
  const connect = (): Promise<RawClient> => authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
  const stamped = async (): Promise<number[]> =>
    (await owner.query<{ arg: number }>('select arg from stamp_log order by id')).rows.map((r) => r.arg);
  const approve = async (name: string): Promise<void> => {
    const run = await runCli(['approve', name, '-n', world.ns, '--kubeconfig', world.people.carol.kubeconfig]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
  };
  const deny = async (name: string): Promise<void> => {
    const run = await runCli(['deny', name, '-n', world.ns, '--kubeconfig', world.people.carol.kubeconfig]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
  };

  await t.test('the attack corpus: nothing of a held Bind is planned before the approval', async () => {
    const ran: string[] = [];
    const answers: string[] = [];
    for (const attack of ATTACKS) {
      const client = await connect();
      try {
        // Held, then expired (3 s): the pipeline's ReadyForQuery comes after that.
        const end = await exchange(client, attack.bytes, 1);
        // Judged first, on the server: what stamp_write() inserted and the Sync committed.
        if ((await stamped()).length > 0) ran.push(attack.name);
        await owner.query('truncate stamp_log');
        // Expired (57014), answered in the Bind's place; whatever followed it up to the Sync was skipped.
        answers.push(`${attack.name}: ${end.codes.join(',')}`);
        // The session goes on: the next statement runs.
        const after = await exchange(client, query('select 1'), 1);
        assert.deepEqual(after.codes, [], `${attack.name}: ${after.errors.join('; ')}`);
      } finally {
        client.destroy();
      }
    }
    t.diagnostic(`${String(ran.length)} of ${String(ATTACKS.length)} attacks ran stamp_write() before approval`);
    assert.deepEqual(ran, [], 'planning ran a side effect of a held statement');
    assert.deepEqual(
      answers,
      ATTACKS.map((a) => `${a.name}: 57014`),
    );
  });

  await t.test('Flush after a held Bind: the notice, then the refusal, without a Sync', async () => {
    const client = await connect();
    try {
      const mark = await held(client, Buffer.concat([parse('', 'select stamp($1)'), bind('', '', ['4210']), FLUSH]));
      // The client waits on its Flush: the expiry reaches it (the substitute and the Flush were forwarded).
      await exchange(client, Buffer.alloc(0), 0, 'E');
      const end = await exchange(client, Buffer.concat([describe('P', ''), execute(''), SYNC]), 1);
      const all = await settled(client, mark);
      assert.deepEqual(all.codes, ['57014'], all.errors.join('; '));
      assert.equal(end.types, 'Z', 'Describe and Execute after the failed Bind were skipped to the Sync');
      assert.deepEqual(await stamped(), []);
    } finally {
      client.destroy();
    }
  });

  await t.test('approved at Bind: Bind, Describe, Execute run once, in order', async () => {
    const client = await connect();
    try {
      const before = await world.count('payouts');
      const pipeline = Buffer.concat([
        parse('', 'insert into payouts(amount) values ($1) returning amount'),
        bind('', '', ['31']),
        describe('P', ''),
        execute(''),
        SYNC,
      ]);
      const { reply: end } = await heldAndDecided(client, pipeline, approve, async () => {
        // Nothing of the statement reached the server: no portal exists to describe there yet.
        assert.equal(await world.count('payouts'), before);
      });
      assert.deepEqual(end.codes, [], end.errors.join('; '));
      assert.equal(end.types.replace(/N /g, ''), '1 2 T D C Z');
      assert.equal(await world.count('payouts'), before + 1);
    } finally {
      client.destroy();
    }
  });

  await t.test('denied at Bind: 42501 in the Bind’s place, the pipeline skipped to its Sync', async () => {
    const client = await connect();
    try {
      const before = await world.count('payouts');
      const pipeline = Buffer.concat([
        parse('d', 'insert into payouts(amount) values ($1)'),
        bind('dp', 'd', ['32']),
        describe('P', 'dp'),
        execute('dp'),
        SYNC,
      ]);
      const { reply: end } = await heldAndDecided(client, pipeline, deny);
      assert.deepEqual(end.codes, ['42501'], end.errors.join('; '));
      assert.equal(end.types.replace(/N /g, ''), '1 E Z');
      // The portal does not exist on the server: executing it fails there (34000), and the sidecar refuses it.
      const again = await exchange(client, Buffer.concat([execute('dp'), SYNC]), 1);
      assert.equal(again.codes.length, 1, again.errors.join('; '));
      assert.equal(await world.count('payouts'), before);
    } finally {
      client.destroy();
    }
  });

  await t.test('a later Execute of an approved portal runs under its approval: one request', async () => {
    const client = await connect();
    try {
      const before = await world.count('payouts');
      const requestsBefore = (await world.requests()).length;
      // Two rows returned one at a time: the INSERT runs at the first Execute, the second fetches the rest.
      const mark = await held(
        client,
        Buffer.concat([
          parse('', 'insert into payouts(amount) values ($1), ($1) returning amount'),
          bind('', '', ['33']),
          execute('', 1),
          execute('', 1),
          SYNC,
        ]),
      );
      const first = requestOf(client, mark);
      await approve(first);
      // A second request, if one were filed for the second Execute, is denied so that the test ends.
      const second = await poll('the pipeline to end, or a second request', async () => {
        if ((await world.requests()).length > requestsBefore + 1) return 'filed';
        return client.received.subarray(mark.offset).includes(Buffer.from('Z\x00\x00\x00\x05')) ? 'none' : undefined;
      });
      if (second === 'filed') {
        for (const r of await world.requests()) if (r.status?.phase === 'Pending') await deny(r.metadata.name ?? '');
      }
      const end = await settled(client, mark);
      assert.equal(second, 'none', 'the later Execute of the approved portal filed a request of its own');
      assert.equal((await world.requests()).length, requestsBefore + 1);
      assert.deepEqual(end.codes, [], end.errors.join('; '));
      // The second Execute's row, and PortalSuspended: the server cannot know that no row is left.
      assert.equal(end.types.replace(/N /g, ''), '1 2 D s D s Z');
      assert.equal(await world.count('payouts'), before + 2);
      // Both Executes are on the trail under the one approval.
      const outcomes = await poll('both outcomes on the trail', async () => {
        const found = (await sidecar.settledRecords()).filter(
          (r) => r.record.outcome !== undefined && r.record.approval?.request === first,
        );
        return found.length >= 2 ? found : undefined;
      });
      assert.deepEqual(
        outcomes.map((o) => o.record.outcome?.status),
        ['success', 'success'],
      );
    } finally {
      client.destroy();
    }
  });

  await t.test('approved at Bind, its portal closed before any Execute: an outcome that it did not run', async () => {
    const client = await connect();
    try {
      const before = await world.count('payouts');
      const pipeline = Buffer.concat([
        parse('', 'insert into payouts(amount) values ($1)'),
        bind('c', '', ['35']),
        close('P', 'c'),
        SYNC,
      ]);
      const { request: name, reply: end } = await heldAndDecided(client, pipeline, approve);
      assert.deepEqual(end.codes, [], end.errors.join('; '));
      assert.equal(end.types.replace(/N /g, ''), '1 2 3 Z');
      assert.equal(await world.count('payouts'), before);
      // Command ids count within a session: the outcome is looked up in the request's session.
      const requested = (await sidecar.settledRecords()).find(
        (r) => r.record.type === 'approval.requested' && r.record.approval?.request === name,
      );
      const outcome = await poll('the outcome of the unexecuted command', async () =>
        (await sidecar.settledRecords()).find(
          (r) =>
            r.session.sessionId === requested?.session.sessionId &&
            r.record.type === 'command.outcome' &&
            r.record.command?.id === requested.record.command?.id,
        ),
      );
      assert.equal(outcome.record.outcome?.status, 'cancelled');
      assert.equal(outcome.record.approval, undefined, 'it ran under no approval');
    } finally {
      client.destroy();
    }
  });

  await t.test('a client gone while held: its command has an outcome, before session.end', async () => {
    const client = await connect();
    const mark = await held(
      client,
      Buffer.concat([parse('', 'insert into payouts(amount) values ($1)'), bind('', '', ['34']), execute(''), SYNC]),
    );
    const name = requestOf(client, mark);
    client.destroy();
    const admin = controlPlaneEnv().kubeconfig;
    const records = await poll('the session end of the withdrawn command on the trail', async () => {
      const sessions = await listSessions(admin, world.ns);
      const all = sessions.flatMap((s) => s.spec.records);
      const requested = all.find((r) => r.type === 'approval.requested' && r.approval?.request === name);
      if (requested === undefined) return undefined;
      const id = sessions.find((s) => s.spec.records.includes(requested))?.spec.sessionId;
      const verified = (await verifySessions(sessions, world.ns)).find((s) => s.sessionId === id);
      return verified?.records.some((r) => r.type === 'session.end') === true ? verified.records : undefined;
    });
    const commandId = records.find((r) => r.type === 'approval.requested')?.command?.id;
    const mine = records.filter((r: AuditRecord) => r.command?.id === commandId || r.type === 'session.end');
    assert.deepEqual(
      mine.map((r) => r.type),
      ['command.decision', 'approval.requested', 'approval.decided', 'command.outcome', 'session.end'],
    );
    const [, , decided, outcome] = mine;
    assert.equal(decided?.approval?.phase, 'Cancelled');
    assert.equal(outcome?.outcome?.status, 'cancelled');
    assert.equal(outcome.outcome.code, '57014');
    assert.equal(outcome.approval, undefined, 'it ran under no approval');
  });
  await owner.end();
});
