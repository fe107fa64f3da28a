// Masking after DDL another session of the agent made through the same sidecar. Each event loop keeps its
// own relation catalogue and lineage cache (docs/sidecar-event-loops.md), so a view redefined by a
// connection on one loop had to be seen by the connections of the other loop at once, not after their 10 s
// entries expired: connections are opened until both loops serve some, each walks the view (its loop caches
// the clean lineage), one redefines the view to expose the masked email, and every connection reads it.
// And a change made in a transaction is read again when it commits: a session that read the catalogue of
// before meanwhile (a statement that fails on the server before it locks the table, so nothing waits) walked
// its later statements against the old columns, where the email slid under the clean `name`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { connect, samples } from '../postgres/event-loops-fixture.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const VIEW_SQL = 'select name from names_only where id = 1';

test('a view redefined through one event loop is masked on every loop at once', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL} create view names_only as select id, name from customers;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database, eventLoops: 2 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const clients: pg.Client[] = [];
  t.after(() => Promise.all(clients.map((c) => c.end().catch(() => undefined))));
  const perLoop = async (): Promise<number[]> => {
    const s = await samples(sidecar, 'chaperone_event_loop_connections_total');
    return [0, 1].map((loop) => s.get(`{listener="test-db",loop="${String(loop)}"}`) ?? 0);
  };
  while (clients.length < 40 && (clients.length < 4 || (await perLoop()).some((n) => n === 0))) {
    clients.push(await connect(sidecar, token));
  }
  assert.ok(
    (await perLoop()).every((n) => n > 0),
    `connections per loop: ${(await perLoop()).join(', ')}`,
  );

  for (const c of clients)
    assert.deepEqual((await c.query({ text: VIEW_SQL, rowMode: 'array' })).rows, [['Alice Example']]);
  await clients[0]?.query('create or replace view names_only as select id, email as name from customers');
  const leaks: string[] = [];
  for (const [i, c] of clients.entries()) {
    const rows = (await c.query({ text: VIEW_SQL, rowMode: 'array' })).rows as unknown[][];
    const leak = leakIn(Buffer.from(JSON.stringify(rows)));
    if (leak !== undefined) leaks.push(`connection ${String(i)}: ${leak}`);
    else assert.match(String(rows[0]?.[0]), /^hmac:[0-9a-f]{16}$/, `connection ${String(i)}`);
  }
  assert.deepEqual(leaks, [], leaks.join('\n'));
});

test('a change committed by one session is read again before another session walks against the old catalogue', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database, eventLoops: 1 });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const changer = await connect(sidecar, token);
  const reader = await connect(sidecar, token);
  t.after(() => Promise.all([changer.end(), reader.end()]));
  const row = async (): Promise<unknown[]> =>
    ((await reader.query({ text: 'select * from customers where id = 1', rowMode: 'array' })).rows as unknown[][])[0] ??
    [];
  assert.deepEqual((await row()).slice(0, 2), [1, 'Alice Example']);
  await changer.query('begin');
  // The same width: name goes, name2 comes last; the email is second now.
  await changer.query('alter table customers drop column name cascade, add column name2 text');
  // Fails on the server at the first name, before customers is locked; the sidecar read customers' columns.
  await assert.rejects(
    reader.query('select * from no_such_table, customers'),
    (err: pg.DatabaseError) => err.code === '42P01',
  );
  await changer.query('commit');
  const after = await row();
  assert.equal(leakIn(Buffer.from(JSON.stringify(after))), undefined, `leaked: ${JSON.stringify(after)}`);
  assert.match(String(after[1]), /^hmac:[0-9a-f]{16}$/);
});
