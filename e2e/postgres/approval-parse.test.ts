// The twelfth session's red team of approvals on the extended protocol: a Parse of a statement an approve
// rule matches is forwarded (the server prepares it), and the statement is held at its Bind. What can an
// agent do with that prepared statement while the approval waits, and after it was denied or expired? Raw
// frames through the real sidecar (approvals on, the real API server) to a real PostgreSQL, every attempt
// judged by the server's own state: the rows of the tables, the backend's pg_prepared_statements, a
// sequence and advisory locks (which a rollback does not undo).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, POLICIES, type ApprovalWorld } from '../approvals/approval-fixture.ts';
import { held, requestOf, settled } from './held-wire.ts';
import { authenticatedClient, query, SYNC, type RawClient } from './raw-client.ts';
import { bind, describe, exchange, execute, firstColumns, parse } from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;

/**
 * Calling stamp() needs approval (3 s, then it expires). stamp is IMMUTABLE, as an owner may mark a function
 * wrongly: the planner evaluates it on constant arguments, and its side effects survive a rollback.
 */
const STAMPS: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    { name: 'stamp-calls', decision: 'approve', match: { sql: { functions: ['public.stamp'] } } },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
  approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '3s', allowSelfApproval: false },
};

const OWNER_SQL = `
create sequence stamp_seq;
create function stamp(int) returns int language plpgsql immutable as $$
begin
  perform nextval('stamp_seq');
  perform pg_advisory_lock($1);
  return $1;
end $$;
`;

async function preparedNames(client: RawClient): Promise<string[]> {
  return firstColumns(await exchange(client, query('select name from pg_prepared_statements order by name'), 1));
}

test('approvals on the extended protocol: what a prepared, held statement lets an agent do', async (t) => {
  const world: ApprovalWorld = await createApprovalWorld(t);
  const owner = new pg.Client(directPgOptions(world.database));
  await owner.connect();
  await owner.query(OWNER_SQL);
  const sidecar = await world.startSidecar(t, undefined, { ...POLICIES, stamps: STAMPS });
  const token = await world.requesterToken(sidecar);
  const connect = (): Promise<RawClient> => authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
  const stampState = async (): Promise<unknown> => ({
    sequence: (await owner.query('select last_value::text, is_called from stamp_seq')).rows,
    locks: (await owner.query("select count(*)::int as n from pg_locks where locktype = 'advisory' and objid = 4242"))
      .rows,
  });
  const before = await stampState();
  let succeeded = 0;
  const attempts: string[] = [];
  const judge = (name: string, ran: boolean): void => {
    attempts.push(name);
    if (ran) succeeded++;
  };

  // Closed gap (docs/approvals.md, "The extended protocol"): PostgreSQL plans a statement at its Bind, evaluating
  // IMMUTABLE functions on constant arguments and, in custom plans, on the bound parameters. The Bind of a
  // statement that needs approval is now held itself, so stamp() has not run when the request expires
  // (e2e/postgres/approval-bind.test.ts has the whole corpus: STABLE, table writes, portals, drivers).
  await t.test('the Bind of a held statement is not planned before the approval', async () => {
    const client = await connect();
    try {
      const bytes = Buffer.concat([
        parse('s', 'select stamp($1)'),
        bind('', 's', ['4242']),
        describe('P', ''),
        execute(''),
        SYNC,
      ]);
      const h1 = await held(client, bytes);
      const end = await settled(client, h1); // settled first: a client gone while held withdraws the request
      assert.deepEqual(end.codes, ['57014'], `expired: ${end.errors.join('; ')}`);
      // The Parse completed; the Bind's answer is the expiry; Describe and Execute were skipped to the Sync.
      assert.equal(end.types.replace(/N /g, ''), '1 E Z');
      const ran = JSON.stringify(await stampState()) !== JSON.stringify(before);
      judge('planning at Bind runs an immutable function of the held statement', ran);
      assert.ok(!ran, 'stamp() ran at Bind before any approval');
    } finally {
      client.destroy();
    }
  });

  await t.test('a statement prepared, held and expired: SQL EXECUTE, PREPARE reuse, DEALLOCATE', async () => {
    const client = await connect();
    try {
      const h2 = await held(
        client,
        Buffer.concat([
          parse('r1', 'insert into refunds(amount) values ($1)'),
          bind('', 'r1', ['1']),
          execute(''),
          SYNC,
        ]),
      );
      assert.deepEqual((await settled(client, h2)).codes, ['57014']);
      // The server holds the statement: the Parse was forwarded.
      assert.deepEqual(await preparedNames(client), ['r1']);
      for (const sql of [
        'execute r1(1)',
        'explain analyze execute r1(1)',
        'create table copied as execute r1(1)',
        'prepare probe as select 1; execute r1(1)',
      ]) {
        const reply = await exchange(client, query(sql), 1);
        judge(sql, (await world.count('refunds')) !== 0);
        assert.deepEqual(reply.codes, ['42501'], `${sql}: ${reply.errors.join('; ')}`);
      }
      // Describe runs nothing.
      const described = await exchange(client, Buffer.concat([describe('S', 'r1'), SYNC]), 1);
      assert.equal(described.types, 't n Z');
      // PREPARE of the same name fails on the server (42P05), which keeps r1; EXECUTE of it stays refused.
      const reused = await exchange(client, query('prepare r1 as select 1'), 1);
      assert.deepEqual(reused.codes, ['42P05']);
      const afterReuse = await exchange(client, query('execute r1'), 1);
      assert.deepEqual(afterReuse.codes, ['42501'], afterReuse.errors.join('; '));
      judge('PREPARE of the held name, then EXECUTE', (await world.count('refunds')) !== 0);
      // DEALLOCATE drops it; a Bind of the name then fails on the server.
      assert.deepEqual((await exchange(client, query('deallocate r1'), 1)).codes, []);
      assert.deepEqual(await preparedNames(client), []);
      const gone = await exchange(client, Buffer.concat([bind('', 'r1', ['1']), execute(''), SYNC]), 1);
      assert.deepEqual(gone.codes, ['26000'], gone.errors.join('; '));
      assert.equal(await world.count('refunds'), 0);
    } finally {
      client.destroy();
    }
  });

  await t.test('Bind/Execute of the held statement again, named and unnamed: held again, never run', async () => {
    const client = await connect();
    try {
      const h3 = await held(
        client,
        Buffer.concat([
          parse('r2', 'insert into refunds(amount) values ($1)'),
          bind('', 'r2', ['2']),
          execute(''),
          SYNC,
        ]),
      );
      assert.deepEqual((await settled(client, h3)).codes, ['57014']);
      const h4 = await held(client, Buffer.concat([bind('p2', 'r2', ['2']), execute('p2'), SYNC]));
      assert.deepEqual((await settled(client, h4)).codes, ['57014']);
      judge('Bind/Execute of the expired statement on another portal', (await world.count('refunds')) !== 0);
      const h5 = await held(
        client,
        Buffer.concat([parse('', 'insert into refunds(amount) values ($1)'), bind('', '', ['3']), execute(''), SYNC]),
      );
      assert.deepEqual((await settled(client, h5)).codes, ['57014']);
      const h6 = await held(client, Buffer.concat([bind('', '', ['3']), execute(''), SYNC]));
      assert.deepEqual((await settled(client, h6)).codes, ['57014']);
      judge('Bind/Execute of the expired unnamed statement', (await world.count('refunds')) !== 0);
      assert.equal(await world.count('refunds'), 0);
    } finally {
      client.destroy();
    }
  });

  await t.test('messages pipelined after the held Bind, and sent while it waits, run only after it', async () => {
    const client = await connect();
    try {
      const h7 = await held(
        client,
        Buffer.concat([
          parse('r3', 'insert into refunds(amount) values ($1)'),
          bind('', 'r3', ['4']),
          execute(''),
          bind('p3', 'r3', ['4']),
          execute('p3'),
          parse('', 'select pg_advisory_lock(7001)'),
          bind('', ''),
          execute(''),
          SYNC,
        ]),
      );
      // While it waits: a Query that would take a lock the owner can see.
      client.write(query('select pg_advisory_lock(7002)'));
      await new Promise((resolve) => setTimeout(resolve, 500));
      const locks = async (): Promise<number> =>
        Number(
          (
            await owner.query(
              "select count(*) as n from pg_locks where locktype = 'advisory' and objid in (7001, 7002)",
            )
          ).rows[0]?.n,
        );
      const early = await locks();
      judge('messages after the held Bind reach the server before it settles', early !== 0);
      assert.equal(early, 0, 'nothing after the held statement ran while it waited');
      const end = await settled(client, h7, 2); // the pipeline's Sync, then the Query sent meanwhile
      assert.ok(end.codes.length > 0 && end.codes.every((c) => c === '57014'), end.errors.join('; '));
      await poll('the Query sent while the statement waited, after it', async () =>
        (await locks()) === 1 ? true : undefined,
      );
      judge('the pipelined Bind/Execute of the held statement after it expired', (await world.count('refunds')) !== 0);
      assert.equal(await world.count('refunds'), 0);
    } finally {
      client.destroy();
    }
  });

  await t.test('denied by a person: the prepared statement stays refused to SQL EXECUTE', async () => {
    const client = await connect();
    try {
      const h8 = await held(
        client,
        Buffer.concat([
          parse('d1', 'insert into payouts(amount) values ($1)'),
          bind('', 'd1', ['9']),
          execute(''),
          SYNC,
        ]),
      );
      const name = requestOf(client, h8);
      assert.equal(
        (await runCli(['deny', name, '-n', world.ns, '--kubeconfig', world.people.carol.kubeconfig])).code,
        0,
      );
      assert.deepEqual((await settled(client, h8)).codes, ['42501']);
      const reply = await exchange(client, query('execute d1(9)'), 1);
      assert.deepEqual(reply.codes, ['42501']);
      judge('SQL EXECUTE of the denied statement', (await world.count('payouts')) !== 0);
      assert.equal(await world.count('payouts'), 0);
    } finally {
      client.destroy();
    }
  });

  await t.test(
    'a client gone while its statement is held: the withdrawal is recorded before the session end',
    async () => {
      const client = await connect();
      const requested = (): string[] =>
        sidecar
          .records()
          .filter((r) => r.record.type === 'approval.requested')
          .map((r) => r.session.sessionId);
      const earlier = new Set(requested());
      await held(
        client,
        Buffer.concat([parse('', 'insert into refunds(amount) values ($1)'), bind('', '', ['8']), execute(''), SYNC]),
      );
      const session = await poll('the request on the trail', () =>
        Promise.resolve(requested().find((id) => !earlier.has(id))),
      );
      client.destroy();
      const types = await poll('the session end on the trail', () => {
        const mine = sidecar.records().filter((r) => r.session.sessionId === session);
        return Promise.resolve(mine.some((r) => r.record.type === 'session.end') ? mine : undefined);
      });
      // Before, session.end was written at once and the withdrawal's approval.decided after it: the API server
      // refused every later append of the session ("no record may follow session.end"), left in the spool.
      assert.equal(types.at(-1)?.record.type, 'session.end', types.map((r) => r.record.type).join(' '));
      const decided = types.find((r) => r.record.type === 'approval.decided');
      assert.match(JSON.stringify(decided?.record ?? {}), /Cancelled/);
      assert.equal(await world.count('refunds'), 0);
    },
  );

  await owner.end();
  t.diagnostic(`${String(succeeded)} of ${String(attempts.length)} attempts ran something before or without approval`);
  assert.equal(succeeded, 0, attempts.join('; '));
  assert.doesNotMatch(sidecar.logs(), /no record may follow session\.end/);
});
