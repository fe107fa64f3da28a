// Masking after the catalogue changes (issue 14): the lineage of a statement is cached per resource
// (relation-catalog.ts), so a statement walked before a DDL must not keep its old lineage. Through the real
// sidecar and PostgreSQL, with node-postgres: a view redefined to expose a masked column, a column dropped
// so that `*` slides onto the masked column, and a redefinition inside an open transaction or in the same
// query string, which the catalogue connection cannot see yet (refused until committed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { leakIn, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const AGENT = 'system:serviceaccount:ci:masked-ddl-agent';

/** Everything allowed, DDL included; emails redacted. */
const POLICY: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  subjects: [{ subject: AGENT }],
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
  masking: [{ name: 'emails', columns: ['public.customers.email'], strategy: 'redact' }],
};

async function client(sidecar: RunningTestSidecar): Promise<pg.Client> {
  const c = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    password: await sidecar.issuer.sign({ sub: AGENT }),
    database: 'agent',
  });
  await c.connect();
  return c;
}

const ALICE = 'alice.secret@example.com';

async function values(c: pg.Client, sql: string): Promise<unknown[]> {
  const r = await c.query({ text: sql, rowMode: 'array' });
  return (r.rows as unknown[][]).flat();
}

test('a view redefined to expose a masked column, and a dropped column under *, are masked after the cached walk', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL}
    create view names_only as select id, name from customers;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { p: POLICY }, database });
  const a = await client(sidecar);
  const b = await client(sidecar);
  try {
    await viewAndStar(a, b);
  } finally {
    await Promise.all([a.end(), b.end()]);
  }
});

async function viewAndStar(a: pg.Client, b: pg.Client): Promise<void> {
  const viewSql = 'select name from names_only where id = 1';
  // Walked, then served from the lineage cache: the clear column stays clear.
  assert.deepEqual(await values(a, viewSql), ['Alice Example']);
  assert.deepEqual(await values(b, viewSql), ['Alice Example']);
  // Redefined through the sidecar on one connection; both connections' next walk sees the new definition.
  await a.query('create or replace view names_only as select id, email as name from customers');
  for (const c of [a, b]) assert.deepEqual(await values(c, viewSql), ['[MASKED]']);

  // `*` after a dropped column: the email slides into the second position.
  const starSql = 'select * from customers where id = 1';
  const before = await values(b, starSql);
  assert.deepEqual(before.slice(0, 3), [1, 'Alice Example', '[MASKED]']);
  await a.query('drop view names_only');
  await a.query('alter table customers drop column name cascade');
  const after = await values(b, starSql);
  assert.deepEqual(after.slice(0, 3), [1, '[MASKED]', '123-45-6789']);
  assert.ok(!after.includes(ALICE));
}

test('statements after a catalogue change not yet committed are refused for a masked identity, then masked', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL}
    create view names_only as select id, name from customers;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { p: POLICY }, database });
  const c = await client(sidecar);
  try {
    await uncommitted(c);
  } finally {
    await c.end();
  }
  assert.equal(leakIn(Buffer.from(sidecar.logs())), undefined, 'the sidecar log holds a masked value');
});

async function uncommitted(c: pg.Client): Promise<void> {
  const viewSql = 'select name from names_only where id = 1';
  assert.deepEqual(await values(c, viewSql), ['Alice Example']);

  // In an open transaction the catalogue connection still sees the old definition: refused, not traced.
  await c.query('begin');
  await c.query('create or replace view names_only as select id, email as name from customers');
  await assert.rejects(c.query(viewSql), (err: Error & { code?: string }) => {
    assert.equal(err.code, '42501');
    assert.match(err.message, /^chaperone: statements after a catalogue change/);
    return true;
  });
  await c.query('rollback');
  assert.deepEqual(await values(c, viewSql), ['Alice Example'], 'rolled back: the old view');

  // In one query string (one implicit transaction): the whole string is refused, nothing changes.
  await assert.rejects(
    c.query(`create or replace view names_only as select id, email as name from customers; ${viewSql}`),
    (err: Error & { code?: string }) => err.code === '42501',
  );
  assert.deepEqual(await values(c, viewSql), ['Alice Example']);

  // Committed: masked.
  await c.query('begin');
  await c.query('create or replace view names_only as select id, email as name from customers');
  await c.query('commit');
  assert.deepEqual(await values(c, viewSql), ['[MASKED]']);
}

test('a lock held on a view by another session does not stall the catalogue reads of every session', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL}
    create view names_only as select id, name from customers;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { p: POLICY }, database });
  const holder = new pg.Client(directPgOptions(database));
  await holder.connect();
  const blocked = await client(sidecar);
  const other = await client(sidecar);
  try {
    // Straight on the server: an uncommitted redefinition holds an AccessExclusiveLock on the view.
    await holder.query('begin');
    await holder.query('create or replace view names_only as select id, email as name from customers');
    // Reading the view waits for the lock on the server, as it would without the sidecar; the catalogue
    // query for its definition gives up (lock_timeout) instead of holding the shared catalogue connection.
    const waiting = blocked.query('select name from names_only where id = 1').then(
      (r) => r.rows,
      (err: unknown) => err,
    );
    // Another session needing the catalogue (products is not cached yet) is answered meanwhile.
    assert.deepEqual(await values(other, 'select name from products where id = 1'), ['Widget']);
    await holder.query('commit');
    const rows = await waiting;
    assert.ok(Array.isArray(rows), `the waiting read failed: ${String(rows)}`);
    assert.equal(leakIn(Buffer.from(JSON.stringify(rows))), undefined, 'the redefined view leaked an email');
  } finally {
    await Promise.all([holder.end(), blocked.end(), other.end()]);
  }
});
