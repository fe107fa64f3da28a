// Audit truth at rollback: a statement inside a transaction block is recorded `success` when it completes;
// when the block is rolled back (ROLLBACK, ROLLBACK TO SAVEPOINT, a COMMIT the server turned into a rollback,
// the client leaving inside the block) the record of what ended it names the commands it undid. The server's
// own tables say what happened; the records (JSON lines) are read back and compared with them.
import { carriesCommandOutcome, type AuditRecord } from '@chaperone/api';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';

const SCHEMA = `
  create table item (id int primary key, note text not null);
  insert into item select g, 'seed' from generate_series(1, 5) g;
`;

interface Trail {
  /** The command id of the one command whose text is `text`. */
  id(text: string): number;
  outcome(text: string): NonNullable<AuditRecord['outcome']>;
  records: AuditRecord[];
}

function trail(records: AuditRecord[]): Trail {
  const id = (text: string): number => {
    const decided = records.filter((r) => r.type === 'command.decision' && r.command?.text === text);
    assert.equal(decided.length, 1, `one decision record for ${text}, got ${String(decided.length)}`);
    const found = decided[0]?.command?.id;
    assert.ok(found !== undefined);
    return found;
  };
  return {
    id,
    outcome(text) {
      const n = id(text);
      const found = records.filter((r) => carriesCommandOutcome(r) && r.command?.id === n);
      assert.equal(found.length, 1, `one outcome record for ${text}, got ${String(found.length)}`);
      const outcome = found[0]?.outcome;
      assert.ok(outcome !== undefined);
      return outcome;
    },
    records,
  };
}

async function setUp(t: TestContext): Promise<{
  client: pg.Client;
  items: () => Promise<string[]>;
  records: () => Promise<Trail>;
}> {
  const database = await createTestDatabase(t, SCHEMA);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:writer' });
  const items = async (): Promise<string[]> => {
    const direct = new pg.Client(directPgOptions(database));
    await direct.connect();
    const rows = (await direct.query<{ r: string }>("select id || ':' || note as r from item order by id")).rows;
    await direct.end();
    return rows.map((r) => r.r);
  };
  const records = async (): Promise<Trail> => trail((await sidecar.settledRecords()).map((r) => r.record));
  return { client, items, records };
}

const SEED = ['1:seed', '2:seed', '3:seed', '4:seed', '5:seed'];

test('BEGIN; DELETE; UPDATE (extended); ROLLBACK: the ROLLBACK names both; COMMIT adds nothing', async (t) => {
  const { client, items, records } = await setUp(t);
  const del = 'delete from item where id <= 3';
  const upd = 'update item set note = $1 where id = 5';
  await client.query('begin');
  assert.equal((await client.query(del)).rowCount, 3);
  assert.equal((await client.query(upd, ['changed'])).rowCount, 1); // Parse/Bind/Execute/Sync
  await client.query('rollback');
  assert.deepEqual(await items(), SEED, 'the server undid both');

  // The control: a committed block keeps every outcome `success` and names nothing.
  const ins = "insert into item values (6, 'kept')";
  await client.query('begin');
  await client.query(ins);
  await client.query('commit');
  assert.deepEqual(await items(), [...SEED, '6:kept']);
  await client.end();

  const trail = await records();
  assert.equal(trail.outcome(del).status, 'success', 'recorded when it completed');
  assert.equal(trail.outcome(upd).status, 'success');
  assert.deepEqual(trail.outcome('rollback'), {
    ...trail.outcome('rollback'),
    status: 'success',
    rolledBack: { commands: 2, first: trail.id(del), last: trail.id(upd) },
  });
  assert.equal(trail.outcome(ins).status, 'success');
  assert.equal(trail.outcome('commit').status, 'success');
  const naming = trail.records.filter((r) => r.outcome?.rolledBack !== undefined);
  assert.equal(naming.length, 1, 'only the ROLLBACK names undone commands');
});

test('a COMMIT after an error is a rollback: its outcome names the INSERT that was undone', async (t) => {
  const { client, items, records } = await setUp(t);
  const ok = "insert into item values (7, 'lost')";
  const dup = "insert into item values (1, 'duplicate')";
  await client.query('begin');
  await client.query(ok);
  await assert.rejects(client.query(dup), { code: '23505' });
  const answered = await client.query('commit');
  assert.equal(answered.command, 'ROLLBACK', 'the server answered COMMIT with ROLLBACK');
  assert.deepEqual(await items(), SEED);
  await client.end();

  const trail = await records();
  assert.equal(trail.outcome(ok).status, 'success');
  assert.equal(trail.outcome(dup).code, '23505');
  const commit = trail.outcome('commit');
  assert.equal(commit.status, 'success');
  assert.deepEqual(commit.rolledBack, { commands: 1, first: trail.id(ok), last: trail.id(ok) });
});

test('ROLLBACK TO SAVEPOINT names the commands since the savepoint; the COMMIT after it names none', async (t) => {
  const { client, items, records } = await setUp(t);
  const kept = "insert into item values (8, 'kept')";
  const undone = "update item set note = 'undone' where id = 2";
  const undoneToo = "insert into item values (9, 'undone')";
  await client.query('begin');
  await client.query(kept);
  await client.query('savepoint s1');
  await client.query(undone);
  await client.query('savepoint s2');
  await client.query(undoneToo);
  await client.query('rollback to savepoint s1');
  await client.query('commit');
  assert.deepEqual(await items(), [...SEED, '8:kept']);
  await client.end();

  const trail = await records();
  assert.deepEqual(trail.outcome('rollback to savepoint s1').rolledBack, {
    commands: 2,
    first: trail.id(undone),
    last: trail.id(undoneToo),
  });
  assert.equal(trail.outcome('commit').rolledBack, undefined, 'the commit kept what the savepoint did not undo');
  assert.equal(trail.outcome(kept).status, 'success');
});

test('a client that leaves inside a transaction: session.end names what the server rolled back', async (t) => {
  const { client, items, records } = await setUp(t);
  const del = 'delete from item where id = 4';
  await client.query('begin');
  await client.query(del);
  await client.end(); // Terminate inside the block
  assert.deepEqual(await items(), SEED, 'the server rolled the DELETE back');

  const trail = await records();
  const end = trail.records.filter((r) => r.type === 'session.end');
  assert.equal(end.length, 1);
  assert.deepEqual(end[0]?.outcome?.rolledBack, { commands: 1, first: trail.id(del), last: trail.id(del) });
  assert.equal(trail.outcome(del).status, 'success');
});
