// Masking bypasses through names the server and the sidecar could disagree on: a prepared statement, a
// cursor or a portal whose (re)definition or removal the server refused or skipped, while the sidecar had
// already taken it as done. The server then runs the old statement (which reads masked columns) while the
// sidecar plans masking for the new one (which reads nothing masked) — or the other way round for names the
// sidecar forgot. Each attack runs step by step over a raw socket through a real sidecar to a real
// PostgreSQL; the bytes of every step are searched for every masked value in every encoding (leakIn), and
// the last step of each attack must be refused by the sidecar (42501) or come back masked. Control flows
// (the same names reused the way drivers do) must keep working, with masked rows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { authenticatedClient, errorFields, parseBackend, query, SYNC, type RawClient } from '../postgres/raw-client.ts';
import { bind, close, describe as describeMessage, execute, parse } from '../postgres/protocol-wire.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

/** One round trip: a simple Query, or extended-protocol messages (a Sync is appended). */
type Step = string | Buffer[];

interface NameAttack {
  readonly why: string;
  readonly steps: readonly Step[];
  /** What the last step must give: refused by the sidecar, or rows that are masked. */
  readonly last: 'denied' | 'masked';
}

const SECRET_READ = 'select email, ssn, card from customers';

/** Attacks: the last step must never carry a masked value in clear. */
const ATTACKS: readonly NameAttack[] = [
  {
    why: 'SQL PREPARE of a name in use fails in the server (42P05); EXECUTE runs the first one',
    steps: [`prepare nr1 as ${SECRET_READ}`, 'prepare nr1 as select 1', 'execute nr1'],
    last: 'denied',
  },
  {
    why: 'a DEALLOCATE the server skipped (an earlier statement of the string failed), then a PREPARE of the name',
    steps: [`prepare nr2 as ${SECRET_READ}`, 'select 1/0; deallocate nr2', 'prepare nr2 as select 1', 'execute nr2'],
    last: 'denied',
  },
  {
    why: 'DECLARE WITH HOLD of a cursor name in use fails in the server; FETCH reads the first cursor',
    steps: [
      `declare nc1 cursor with hold for ${SECRET_READ}`,
      'declare nc1 cursor with hold for select 1',
      'fetch all from nc1',
    ],
    last: 'denied',
  },
  {
    why: 'a failed re-DECLARE inside a savepoint that is rolled back; the first cursor is still open',
    steps: [
      `begin; declare nc2 cursor for ${SECRET_READ}; savepoint s`,
      'declare nc2 cursor for select 1',
      'rollback to s',
      'fetch all from nc2',
    ],
    last: 'denied',
  },
  {
    why: 'a protocol Parse of a statement name in use fails in the server; Bind runs the first statement',
    steps: [
      [parse('ns1', SECRET_READ)],
      [parse('ns1', 'select 1')],
      [bind('', 'ns1'), describeMessage('P', ''), execute('')],
    ],
    last: 'denied',
  },
  {
    why: 'a protocol Parse of a name SQL PREPARE holds fails in the server; Bind runs the SQL statement',
    steps: [
      `prepare ns2 as ${SECRET_READ}`,
      [parse('ns2', 'select 1')],
      [bind('', 'ns2'), describeMessage('P', ''), execute('')],
    ],
    last: 'denied',
  },
  {
    why: 'Close and Parse of a statement skipped by the server after a failed Bind in the same batch',
    steps: [
      [parse('ns3', SECRET_READ)],
      [bind('', 'no_such_statement'), close('S', 'ns3'), parse('ns3', 'select 1')],
      [bind('', 'ns3'), describeMessage('P', ''), execute('')],
    ],
    last: 'denied',
  },
  {
    why: 'SQL DEALLOCATE drops a protocol statement too; a SQL PREPARE of that name is what Bind then runs',
    steps: [
      [parse('ns4', 'select 1')],
      'deallocate ns4',
      `prepare ns4 as ${SECRET_READ}`,
      [bind('', 'ns4'), describeMessage('P', ''), execute('')],
    ],
    last: 'masked',
  },
  {
    why: 'SQL EXECUTE of a protocol statement that reuses the name of a deallocated SQL statement',
    steps: ['prepare nx as select 1', 'execute nx', 'deallocate nx', [parse('nx', SECRET_READ)], 'execute nx'],
    last: 'denied',
  },
  {
    why: 'Close of a SQL-prepared statement by the protocol, then a Parse of the name',
    steps: ['prepare ny as select 1', [close('S', 'ny'), parse('ny', SECRET_READ)], 'execute ny'],
    last: 'denied',
  },
  {
    why: 'a portal bound by the protocol, then a cursor of the same name DECLAREd: Execute runs the cursor',
    steps: [
      [parse('', 'select 1'), bind('np1', ''), execute('np1')],
      `declare np1 cursor with hold for ${SECRET_READ}`,
      [execute('np1')],
    ],
    last: 'denied',
  },
];

/** Names reused the way clients legitimately do: each ends with masked rows (no over-refusal). */
const CONTROLS: readonly NameAttack[] = [
  {
    why: 'DEALLOCATE, then PREPARE the name again',
    steps: ['prepare ok1 as select 1', 'deallocate ok1', `prepare ok1 as ${SECRET_READ}`, 'execute ok1'],
    last: 'masked',
  },
  {
    why: 'CLOSE a held cursor, then DECLARE the name again',
    steps: [
      'declare okc cursor with hold for select 1',
      'close okc',
      `declare okc cursor with hold for ${SECRET_READ}`,
      'fetch all from okc',
    ],
    last: 'masked',
  },
  {
    why: 'Close a protocol statement, then Parse the name again',
    steps: [
      [parse('oks', 'select 1')],
      [close('S', 'oks'), parse('oks', SECRET_READ)],
      [bind('', 'oks'), describeMessage('P', ''), execute('')],
    ],
    last: 'masked',
  },
  {
    why: 'a failed PREPARE (no such table), then the corrected PREPARE of the name',
    steps: ['prepare okf as select * from no_such_table', `prepare okf as ${SECRET_READ}`, 'execute okf'],
    last: 'masked',
  },
];

async function step(
  client: RawClient,
  s: Step,
): Promise<{ bytes: Buffer; errors: { code: string; message: string }[] }> {
  const before = client.receivedLength;
  const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(typeof s === 'string' ? query(s) : Buffer.concat([...s, SYNC]));
  const ok = await client.until(
    () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
    30_000,
  );
  assert.ok(ok, `no ReadyForQuery after ${describe(s)} (${client.end})`);
  const bytes = client.received.subarray(before);
  const errors = parseBackend(bytes)
    .messages.filter((m) => m.type === 'E')
    .map((m) => errorFields(m.body));
  return { bytes, errors };
}

function describe(s: Step): string {
  return typeof s === 'string' ? s : s.map((b) => String.fromCharCode(b[0] ?? 0)).join('');
}

test('names the server refused or skipped: no masked value gets out through a stale prepared statement, cursor or portal', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const failures: string[] = [];
  for (const attack of [...ATTACKS, ...CONTROLS]) {
    // A connection per attack: names and transactions of one never meet the next.
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
    try {
      let last: Awaited<ReturnType<typeof step>> | undefined;
      for (const s of attack.steps) {
        last = await step(client, s);
        const leak = leakIn(last.bytes);
        if (leak !== undefined) failures.push(`${attack.why} [${describe(s)}]: LEAKED ${leak}`);
      }
      assert.ok(last !== undefined);
      const text = last.bytes.toString('utf8');
      if (attack.last === 'denied') {
        const denied = last.errors.some((e) => e.code === '42501' && e.message.startsWith('chaperone:'));
        // Rows of a cursor whose lineage is unknown come back masked by the fallback (every column).
        const masked = last.errors.length === 0 && /hmac:[0-9a-f]{16}|\[MASKED\]/.test(text);
        if (!denied && !masked)
          failures.push(`${attack.why}: neither refused nor masked: ${JSON.stringify(last.errors)}`);
      } else {
        if (last.errors.length > 0)
          failures.push(`${attack.why}: expected masked rows, got ${JSON.stringify(last.errors)}`);
        else if (!/hmac:[0-9a-f]{16}/.test(text) || !text.includes('[MASKED]')) {
          failures.push(`${attack.why}: expected masked rows, got ${JSON.stringify(text)}`);
        }
      }
    } finally {
      client.destroy();
    }
  }
  assert.deepEqual(failures, [], failures.join('\n'));
});

/** DDL that would put masked values under a name no masking rule knows, then the read of that name. */
const RENAMES: readonly [ddl: string, read: string][] = [
  ['alter table customers rename column email to contact', 'select contact from customers'],
  ['alter table customers rename to clients', 'select email, ssn from clients'],
  ['alter schema public rename to elsewhere', 'select email from elsewhere.customers'],
  ['alter table customers set schema other', 'select email from other.customers'],
  ['alter table customers add column e2 text generated always as (email) stored', 'select e2 from customers'],
  ['alter table customers alter column name type text using email', 'select name from customers'],
  [
    'create rule copy_out as on update to customers do also update products set name = new.email where id = 1',
    'update customers set score = score where id = 1; select name from products',
  ],
  ['alter view customer_contacts rename column contact to c2', 'select c2 from customer_contacts'],
  // A row-level security policy runs on every read of its table (customers has RLS forced here, with a
  // permissive policy of the owner's) and its errors echo values, whatever the statement names.
  ['create policy leak on customers as restrictive using (email::int > 0)', 'select id from customers'],
  ['alter policy everyone on customers using (ssn::int > 0)', 'select count(*) from customers'],
];

test('DDL that renames, moves or copies a masked column is refused to a masked identity; its values stay masked', async (t) => {
  const database = await createTestDatabase(
    t,
    `${MASKING_SCHEMA_SQL} create schema other;
     create policy everyone on customers using (true);
     alter table customers enable row level security, force row level security;`,
  );
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const failures: string[] = [];
  for (const [ddl, read] of RENAMES) {
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
    try {
      const refused = await step(client, ddl);
      if (!refused.errors.some((e) => e.code === '42501' && /masking rules name columns/.test(e.message))) {
        failures.push(`${ddl}: not refused: ${JSON.stringify(refused.errors)}`);
      }
      const after = await step(client, read);
      const leak = leakIn(after.bytes);
      if (leak !== undefined) failures.push(`${ddl}; ${read}: LEAKED ${leak}`);
    } finally {
      client.destroy();
    }
  }
  assert.deepEqual(failures, [], failures.join('\n'));
  // Nothing changed in the database: the masked columns are where the rules name them.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    const columns = await direct.query<{ c: string }>(
      "select table_schema || '.' || table_name || '.' || column_name as c from information_schema.columns where table_name in ('customers', 'clients', 'customer_contacts') order by 1",
    );
    assert.deepEqual(
      columns.rows.map((r) => r.c),
      [
        'public.customer_contacts.contact',
        'public.customer_contacts.id',
        'public.customer_contacts.name',
        'public.customers.card',
        'public.customers.created',
        'public.customers.email',
        'public.customers.id',
        'public.customers.name',
        'public.customers.score',
        'public.customers.ssn',
      ],
    );
    const rules = await direct.query('select rulename from pg_rules where tablename = $1', ['customers']);
    assert.equal(rules.rowCount, 0);
    const policies = await direct.query<{ p: string }>(
      "select policyname || ' ' || qual as p from pg_policies where tablename = 'customers'",
    );
    assert.deepEqual(
      policies.rows.map((r) => r.p),
      ['everyone true'],
    );
  } finally {
    await direct.end();
  }
  // DDL that renames nothing stays allowed to the same identity.
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  try {
    for (const ddl of ['create index customers_created on customers (created)', 'create table notes (id int)']) {
      assert.deepEqual((await step(client, ddl)).errors, [], ddl);
    }
  } finally {
    client.destroy();
  }
});
