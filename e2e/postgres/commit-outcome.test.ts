// Audit truth at commit: a statement that completed but whose implicit transaction did not commit (a
// deferred foreign key checked at Sync or at the end of a simple-query string, an error later in the same
// extended batch) did not happen, and its outcome record must say so, with the SQLSTATE that undid it. The
// server's own tables say what happened; the records (JSON lines) are read back and compared with them.
import { carriesCommandOutcome, type AuditRecord } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { authenticatedClient, cstr, errorFields, i16, i32, msg, parseBackend, SYNC } from './raw-client.ts';

const WAIT = 10_000;

const SCHEMA = `
  create table parent (id int primary key);
  create table child (
    id serial primary key,
    note text not null,
    parent_id int not null references parent (id) deferrable initially deferred
  );
  insert into parent values (1);
`;

/** The outcome of the one command whose statement text is `text`. */
function outcomeOf(records: AuditRecord[], text: string): NonNullable<AuditRecord['outcome']> {
  const decided = records.filter((r) => r.type === 'command.decision' && r.command?.text === text);
  assert.equal(decided.length, 1, `one decision record for ${text}, got ${String(decided.length)}`);
  const id = decided[0]?.command?.id;
  const found = records.filter((r) => carriesCommandOutcome(r) && r.command?.id === id);
  assert.equal(found.length, 1, `one outcome record for ${text}, got ${String(found.length)}`);
  const outcome = found[0]?.outcome;
  assert.ok(outcome !== undefined);
  return outcome;
}

test('a commit that fails at Sync or at the end of a Query string: the outcome says the write did not happen', async (t) => {
  const database = await createTestDatabase(t, SCHEMA);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:writer' });
  const notes = async (): Promise<string[]> => {
    const direct = new pg.Client(directPgOptions(database));
    await direct.connect();
    const rows = (await direct.query<{ note: string }>('select note from child order by note')).rows;
    await direct.end();
    return rows.map((r) => r.note);
  };

  // Extended protocol (node-postgres sends Parse/Bind/Describe/Execute/Sync): the INSERT completes, the
  // deferred check fails in the commit at Sync.
  const extendedBad = 'insert into child (note, parent_id) values ($1, $2)';
  await assert.rejects(client.query(extendedBad, ['extended-orphan', 999]), { code: '23503' });
  // The same statement with a parent commits: the control.
  const extendedGood = 'insert into child (note, parent_id) values ($1, 1)';
  await client.query(extendedGood, ['extended-ok']);
  // Simple protocol: a two-statement string is one implicit transaction, committed after its last statement.
  const simpleBad = "insert into child (note, parent_id) values ('simple-orphan', 998); select 1";
  await assert.rejects(client.query(simpleBad), { code: '23503' });
  assert.deepEqual(await notes(), ['extended-ok'], 'the server kept only the committed row');

  await client.end();
  const records = (await sidecar.settledRecords()).map((r) => r.record);
  const bad = outcomeOf(records, extendedBad);
  assert.equal(bad.status, 'error', 'the failed commit is not a success');
  assert.equal(bad.code, '23503');
  assert.doesNotMatch(bad.message ?? '', /999/, 'the record names the cause, not the values');
  const good = outcomeOf(records, extendedGood);
  assert.equal(good.status, 'success');
  assert.equal(good.rows, 1);
  const simple = outcomeOf(records, simpleBad);
  assert.equal(simple.status, 'error');
  assert.equal(simple.code, '23503');
});

test('an error later in an extended batch rolls back the Executes before it: their outcome says so', async (t) => {
  const database = await createTestDatabase(t, SCHEMA);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:writer' });
  const c = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => c.destroy());
  const first = "insert into child (note, parent_id) values ('pipelined', 1)";
  const second = 'select 1 / 0';
  const run = (sql: string): Buffer[] => [
    msg('P', cstr(''), cstr(sql), i16(0)),
    msg('B', cstr(''), cstr(''), i16(0), i16(0), i16(0)),
    msg('E', cstr(''), i32(0)),
  ];
  c.write(Buffer.concat([...run(first), ...run(second), SYNC]));
  const done = await c.until(
    () => parseBackend(c.received, 0, true).messages.filter((m) => m.type === 'Z').length >= 2,
    WAIT,
  );
  assert.ok(done, 'the batch was answered');
  const answered = parseBackend(c.received, 0, true).messages;
  assert.ok(
    answered.some((m) => m.type === 'C'),
    'the INSERT completed before the error',
  );
  assert.deepEqual(
    answered.filter((m) => m.type === 'E').map((m) => errorFields(m.body).code),
    ['22012'],
  );
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  const kept = (await direct.query('select * from child')).rowCount;
  await direct.end();
  assert.equal(kept, 0, 'the server rolled the INSERT back');

  const records = (await sidecar.settledRecords()).map((r) => r.record);
  const inserted = outcomeOf(records, first);
  assert.equal(inserted.status, 'error', 'a rolled-back INSERT is not a success');
  assert.equal(inserted.code, '22012', 'the SQLSTATE that undid it');
  assert.equal(outcomeOf(records, second).code, '22012');
});
