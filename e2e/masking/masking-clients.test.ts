// Masked results through real clients: node-postgres in text and binary formats (extended protocol,
// Describe then Execute), psql, one query giving masked values to one agent and clear values to another,
// and the policy options (denyPredicates, untraceable: deny, types, detectors).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const run = promisify(execFile);
const MASKED = 'system:serviceaccount:ci:masked-agent';
const CLEAR = 'system:serviceaccount:ci:trusted-agent';

const POLICIES: Record<string, AccessPolicySpec> = {
  masked: { ...MASKED_POLICY, subjects: [{ subject: MASKED }] },
  clear: {
    resources: { names: ['test-db'] },
    subjects: [{ subject: CLEAR }],
    rules: [{ name: 'everything', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
  },
};

async function client(sidecar: RunningTestSidecar, subject: string, binary = false): Promise<pg.Client> {
  // `binary` (results in binary format) is a node-postgres connection option its types leave out.
  const config: pg.ClientConfig & { binary: boolean } = {
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    password: await sidecar.issuer.sign({ sub: subject }),
    database: 'agent',
    binary,
  };
  const c = new pg.Client(config);
  await c.connect();
  return c;
}

const ROW_SQL = 'select id, name, email, ssn, card, created, score from customers where id = $1';

test('node-postgres, text and binary: masked values keep their column types; another agent sees clear values', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: POLICIES, database });
  for (const binary of [false, true]) {
    const c = await client(sidecar, MASKED, binary);
    try {
      const { rows, fields } = await c.query(ROW_SQL, [1]);
      const row = rows[0] as Record<string, unknown>;
      assert.equal(row.name, 'Alice Example', `binary=${String(binary)}`);
      assert.match(String(row.email), /^hmac:[0-9a-f]{16}$/);
      assert.equal(row.ssn, '[MASKED]');
      assert.equal(row.card, '************1111');
      assert.equal(row.score, 7);
      // Unmasked columns decode exactly as they do straight from the server, in the same format.
      const direct = new pg.Client({ ...directPgOptions(database), binary } as pg.ClientConfig);
      await direct.connect();
      const straight = (await direct.query(ROW_SQL, [1])).rows[0] as Record<string, unknown>;
      await direct.end();
      assert.deepEqual(
        [row.id, row.name, row.created, row.score],
        [straight.id, straight.name, straight.created, straight.score],
      );
      assert.deepEqual(
        fields.map((f) => f.format),
        Array(7).fill(binary ? 'binary' : 'text'),
      );
      // The same statement again (prepared by the driver, no new Describe) is masked the same way.
      const again = await c.query({ name: 'one-customer', text: ROW_SQL, values: [2] });
      const second = await c.query({ name: 'one-customer', text: ROW_SQL, values: [2] });
      assert.deepEqual(second.rows, again.rows);
      assert.equal((second.rows[0] as Record<string, unknown>).ssn, '[MASKED]');
      // Derived values keep a valid type: a json column and an integer computed from a masked column.
      const derived = await c.query(
        'select row_to_json(c) as j, length(email) as n from customers c where id = $1',
        [1],
      );
      const d = derived.rows[0] as { j: unknown; n: unknown };
      // node-postgres parses json in text format only; in binary it hands over the JSON text.
      assert.equal(binary ? JSON.parse(String(d.j)) : d.j, '[MASKED]', 'a json value stays valid json (a string)');
      assert.equal(d.n, 0, 'an integer gets the fixed value of its type');
      assert.equal(leakIn(Buffer.from(JSON.stringify([rows, again.rows, derived.rows]))), undefined);
    } finally {
      await c.end();
    }
  }
  const trusted = await client(sidecar, CLEAR);
  try {
    const { rows } = await trusted.query(ROW_SQL, [1]);
    assert.equal((rows[0] as Record<string, unknown>).email, 'alice.secret@example.com');
    assert.equal((rows[0] as Record<string, unknown>).ssn, '123-45-6789');
  } finally {
    await trusted.end();
  }
});

test('psql prints masked rows and the clear ones unchanged', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: POLICIES, database });
  const env = sidecar.libpqEnv(await sidecar.issuer.sign({ sub: MASKED }));
  const { stdout } = await run(
    'psql',
    [
      '-X',
      '-A',
      '-v',
      'ON_ERROR_STOP=1',
      '-c',
      'select * from customers order by id',
      '-c',
      'select * from products order by id',
    ],
    { env },
  );
  assert.match(stdout, /^1\|Alice Example\|hmac:[0-9a-f]{16}\|\[MASKED\]\|\*{12}1111\|2024-01-02\|7$/m);
  assert.match(stdout, /^1\|Widget\|9\.50$/m);
  assert.equal(leakIn(Buffer.from(stdout)), undefined);
  // FETCH_COUNT makes psql read through a cursor (DECLARE … FETCH): masked the same way.
  const cursor = await run('psql', ['-X', '-A', '-v', 'FETCH_COUNT=1', '-c', 'select email, ssn from customers'], {
    env,
  });
  assert.match(cursor.stdout, /hmac:[0-9a-f]{16}\|\[MASKED\]/);
  assert.equal(leakIn(Buffer.from(cursor.stdout)), undefined);
});

test('policy options: denyPredicates refuses the oracle class; untraceable: deny refuses what lineage cannot prove', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const strict: AccessPolicySpec = {
    ...MASKED_POLICY,
    masking: [
      { name: 'emails', columns: ['customers.email'], strategy: 'redact', denyPredicates: true, untraceable: 'deny' },
      { name: 'inets', types: ['date'], strategy: 'redact' },
      { name: 'content', detectors: ['us-ssn'], strategy: 'partial', keepLast: 4 },
    ],
  };
  const sidecar = await startTestSidecar(t, { policies: { strict }, database });
  const c = await client(sidecar, MASKED);
  try {
    for (const sql of [
      "select id from customers where email = 'alice.secret@example.com'",
      "select count(*) from customers where email like 'a%'",
      'select id from customers order by email',
      'select email, count(*) from customers group by email',
      'select c.id from customers c join customers d on c.email = d.email',
      'select * from json_populate_record(null::customers, (select row_to_json(c) from customers c limit 1))',
    ]) {
      await assert.rejects(c.query(sql), (err: Error & { code?: string }) => {
        assert.equal(err.code, '42501', sql);
        assert.match(err.message, /^chaperone: /);
        return true;
      });
    }
    const { rows } = await c.query('select id, email, ssn, created from customers order by id');
    const first = rows[0] as Record<string, unknown>;
    assert.equal(first.email, '[MASKED]');
    assert.equal(first.ssn, '*******6789', 'the us-ssn detector masks the value in a column no column rule covers');
    assert.equal((first.created as Date).toISOString().slice(0, 10), '1970-01-01', 'the date type rule');
  } finally {
    await c.end();
  }
});
