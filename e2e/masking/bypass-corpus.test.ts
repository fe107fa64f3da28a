// Result masking through the real sidecar against a real PostgreSQL (issue 14): the bypass corpus
// (bypass-corpus.ts) runs over a raw socket, and the bytes the client receives are searched for every
// masked value in text, reversed, hex, base64 and JSON form; masked attempts succeed, refused ones get 42501
// from the sidecar, errors that could echo a value arrive with their text withheld. Unmasked columns and
// other tables come through unchanged, and the audit trail counts what was masked without any value.
import { carriesCommandOutcome } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { postgresEnv, superuserSql } from '../harness/env.ts';
import {
  authenticatedClient,
  cstr,
  errorFields,
  i16,
  i32,
  msg,
  parseBackend,
  query,
  type RawClient,
} from '../postgres/raw-client.ts';
import { BYPASS_CORPUS, CLEAR_VALUES, leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

async function run(
  client: RawClient,
  sql: string,
): Promise<{ bytes: Buffer; messages: { type: string; body: Buffer }[] }> {
  const before = client.receivedLength;
  const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(query(sql));
  const ok = await client.until(
    () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
    30_000,
  );
  assert.ok(ok, `no ReadyForQuery after ${sql} (${client.end})`);
  const bytes = client.received.subarray(before);
  return { bytes, messages: parseBackend(bytes).messages };
}

test('the bypass corpus: no original value of a masked column reaches the client, by any path', async (t) => {
  assert.ok(
    BYPASS_CORPUS.length >= 60,
    `the issue asks for at least 60 attempts, the corpus has ${BYPASS_CORPUS.length}`,
  );
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });

  const failures: string[] = [];
  for (const attempt of BYPASS_CORPUS) {
    const { bytes, messages } = await run(client, attempt.sql);
    const where = `[${attempt.class}] ${attempt.sql}`;
    const leak = leakIn(bytes);
    if (leak !== undefined) failures.push(`${where}: LEAKED ${leak}`);
    for (const part of attempt.absent ?? []) {
      if (bytes.toString('latin1').includes(part)) failures.push(`${where}: LEAKED ${part}`);
    }
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    if ((attempt.expect === 'masked' || attempt.expect === 'runs') && errors.length > 0) {
      failures.push(`${where}: expected it to run, got ${errors.map((e) => `${e.code} ${e.message}`).join('; ')}`);
    }
    if (attempt.expect === 'denied' && !errors.some((e) => e.code === '42501' && e.message.startsWith('chaperone:'))) {
      failures.push(`${where}: expected a denial, got ${JSON.stringify(errors)}`);
    }
    if (attempt.expect === 'error' && !errors.some((e) => /withheld/.test(e.message))) {
      failures.push(`${where}: expected an error with its text withheld, got ${JSON.stringify(errors)}`);
    }
    const ready = messages.filter((m) => m.type === 'Z').at(-1);
    if (ready !== undefined && ready.body.toString() !== 'I') await run(client, 'rollback');
  }
  assert.deepEqual(failures, [], failures.join('\n'));

  // Unmasked columns and other tables come through as they are.
  const clear = await run(
    client,
    'select id, name, created, score from customers order by id; select * from products order by id',
  );
  const text = clear.bytes.toString('utf8');
  for (const v of [...CLEAR_VALUES, '2024-01-02', '9.50', '12.00'])
    assert.ok(text.includes(v), `${v} missing from ${text}`);
  assert.equal(clear.messages.filter((m) => m.type === 'E').length, 0);
  const masked = await run(client, 'select email, ssn, card from customers order by id');
  const values = masked.bytes.toString('utf8');
  assert.match(values, /hmac:[0-9a-f]{16}/, 'email is hashed');
  assert.ok(values.includes('[MASKED]'), 'ssn is redacted');
  assert.ok(values.includes('************1111'), 'the card keeps its last four digits');

  // The audit trail says what was masked, per column and strategy, and holds no value.
  const records = await sidecar.settledRecords();
  const outcome = records
    .map((r) => r.record)
    .filter((r) => carriesCommandOutcome(r) && r.outcome?.masked !== undefined)
    .at(-1);
  assert.deepEqual(
    outcome?.outcome?.masked?.map((m) => [m.column, m.strategy, m.count]),
    [
      ['email (public.customers.email)', 'hash', 2],
      ['ssn (public.customers.ssn)', 'redact', 2],
      ['card (public.customers.card)', 'partial', 2],
    ],
  );
  assert.equal(leakIn(readFileSync(sidecar.auditFile)), undefined, 'the audit trail holds a masked value');
  assert.equal(leakIn(Buffer.from(sidecar.logs())), undefined, 'the sidecar log holds a masked value');
});

test('partitions and inheritance children: a rule naming a table covers its ancestors and descendants', async (t) => {
  // Made by the database owner: a rule names the partitioned parent, another names an inheritance child.
  const database = await createTestDatabase(
    t,
    `create table payments (id int, payer text, iban text) partition by range (id);
     create table payments_2024 partition of payments for values from (0) to (100);
     create table payments_2025 partition of payments for values from (100) to (200);
     insert into payments values (1, 'Alice', 'DE89370400440532013000'), (150, 'Bob', 'GB82WEST12345698765432');
     create view payments_2024_view as select payer, iban from payments_2024;
     create table contacts (id int, phone text);
     create table contacts_old () inherits (contacts);
     insert into contacts_old values (1, 'phone-secret-0100');`,
  );
  const policy = {
    ...MASKED_POLICY,
    masking: [
      { name: 'iban', columns: ['public.payments.iban'], strategy: 'redact' as const },
      { name: 'old-phones', columns: ['public.contacts_old.phone'], strategy: 'redact' as const },
    ],
  };
  const sidecar = await startTestSidecar(t, { policies: { masked: policy }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  const secrets = ['DE89370400440532013000', 'GB82WEST12345698765432', 'phone-secret-0100'];
  for (const sql of [
    'select * from payments_2024',
    'select iban from only payments_2025',
    'select p.iban from payments_2025 p',
    'select row_to_json(p) from payments_2024 p',
    'select * from payments_2024_view',
    'select * from payments order by id',
    'select phone from contacts',
    'select * from contacts_old',
  ]) {
    const { bytes, messages } = await run(client, sql);
    const text = bytes.toString('latin1');
    for (const s of secrets) assert.ok(!text.includes(s), `${sql}: LEAKED ${s}`);
    assert.deepEqual(
      messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body).message),
      [],
      sql,
    );
    assert.ok(
      messages.some((m) => m.type === 'D'),
      `${sql}: no rows`,
    );
  }
  // Unmasked columns of the same tables come through.
  const clear = await run(client, 'select payer from payments_2025');
  assert.ok(clear.bytes.toString('utf8').includes('Bob'));
});

test('a deferred constraint failing at COMMIT or at Sync: its error is withheld and the connection stays in step', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL}
     create table fk_pairs (i int, e text, primary key (i, e));
     alter table customers add constraint later_fk foreign key (id, email) references fk_pairs (i, e)
       deferrable initially deferred not valid;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  const withheld = (messages: { type: string; body: Buffer }[], what: string): void => {
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    assert.deepEqual(
      errors.map((e) => e.code),
      ['23503'],
      `${what}: ${JSON.stringify(errors)}`,
    );
    assert.match(errors[0]?.message ?? '', /withheld/, what);
  };

  // COMMIT as a statement of its own: the write's response came before, in its own Query.
  assert.equal((await run(client, 'begin')).messages.at(-1)?.body.toString(), 'T');
  const write = await run(client, 'update customers set id = id + 100 where id = 1');
  assert.equal(write.messages.filter((m) => m.type === 'E').length, 0, 'the check is deferred');
  const commit = await run(client, 'commit');
  assert.equal(leakIn(commit.bytes), undefined, 'COMMIT echoed a masked value');
  withheld(commit.messages, 'COMMIT');

  // Extended protocol without BEGIN: the implicit transaction commits at Sync, after the Execute's response.
  const before = client.receivedLength;
  const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(
    Buffer.concat([
      msg('P', cstr(''), cstr('update customers set id = id + 100 where id = 1'), i16(0)),
      msg('B', cstr(''), cstr(''), i16(0), i16(0), i16(0)),
      msg('E', cstr(''), i32(0)),
      msg('S'),
    ]),
  );
  assert.ok(
    await client.until(
      () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
      30_000,
    ),
  );
  const sync = client.received.subarray(before);
  assert.equal(leakIn(sync), undefined, 'the commit at Sync echoed a masked value');
  withheld(parseBackend(sync).messages, 'Sync');

  // The connection is still in step: statements after it run and are masked (before the fix every later
  // statement got the raw error of a refused substitute).
  const after = await run(client, 'select name, email from customers order by id');
  assert.equal(after.messages.filter((m) => m.type === 'E').length, 0);
  const text = after.bytes.toString('utf8');
  assert.ok(text.includes('Alice Example') && text.includes('hmac:'), text);
  assert.equal(leakIn(after.bytes), undefined);
});

test('a foreign table is opaque: one pointing back at a masked table shows no clear value', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const pgEnv = postgresEnv();
  // As the superuser (postgres_fdw is not a trusted extension): a loopback server onto this very database.
  superuserSql(
    `create extension postgres_fdw;
     create server loopback foreign data wrapper postgres_fdw
       options (host '${pgEnv.socketDir}', port '${String(pgEnv.port)}', dbname '${database}');
     create user mapping for ${pgEnv.user} server loopback options (user 'postgres', password_required 'false');
     create foreign table public.customer_mirror (id int, email text, ssn text)
       server loopback options (schema_name 'public', table_name 'customers');
     grant select on public.customer_mirror to ${pgEnv.user};`,
    database,
  );
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  for (const sql of [
    'select * from customer_mirror order by id',
    'select email, ssn from public.customer_mirror m',
    'select row_to_json(m) from customer_mirror m',
  ]) {
    const { bytes, messages } = await run(client, sql);
    assert.equal(leakIn(bytes), undefined, `${sql}: LEAKED ${String(leakIn(bytes))}`);
    assert.deepEqual(
      messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body).message),
      [],
      sql,
    );
    assert.equal(messages.filter((m) => m.type === 'D').length, 2, sql);
    assert.ok(bytes.toString('utf8').includes('[MASKED]'), `${sql}: untraceable columns are redacted`);
  }
});
