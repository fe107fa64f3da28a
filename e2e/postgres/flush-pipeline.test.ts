// An extended-protocol pipeline held open with Flush (the twelfth session's red team): a client that sends
// Parse/Bind/Execute/Flush gets the Execute's CommandComplete before its Sync, while the statement's
// implicit transaction is still open on the server. DDL executed that way is visible to the session's next
// statements but not to the sidecar's catalogue connection, so a read sent after it, before the Sync, must
// not be planned for masking against the catalogue of before (a view redefined to expose a masked column).
// Raw frames through the real sidecar to a real PostgreSQL; judged by the bytes the client receives and by
// the server's own catalogue afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { leakIn, MASKING_SCHEMA_SQL } from '../masking/bypass-corpus.ts';
import { authenticatedClient, errorFields, parseBackend, query, SYNC, type RawClient } from './raw-client.ts';
import { bind, exchange, execute, FLUSH, parse, type Reply } from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;
const AGENT = 'system:serviceaccount:ci:flush-pipeline';

/** Everything allowed, DDL included; e-mail addresses and SSNs redacted. */
const POLICY: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  subjects: [{ subject: AGENT }],
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
  masking: [
    { name: 'emails', columns: ['public.customers.email', 'public.people.email'], strategy: 'redact' },
    { name: 'ssn', columns: ['public.customers.ssn', 'public.people.ssn'], strategy: 'redact' },
  ],
};

/** One view a case, each walked (clear) before its case redefines it; people for the `*` case. */
const SCHEMA_SQL = `${MASKING_SCHEMA_SQL}
create view names_0 as select id, name from customers;
create view names_1 as select id, name from customers;
create view names_2 as select id, name from customers;
create table people as select id, name, email, ssn from customers;`;

function extended(sql: string): Buffer {
  return Buffer.concat([parse('', sql), bind('', ''), execute('')]);
}

interface Case {
  readonly name: string;
  /** Each sent with a Flush and answered before the Sync. */
  readonly change: readonly string[];
  /** Read in the same pipeline after the change; its rows are clear before the change. */
  readonly read: string;
}

const CASES: readonly Case[] = [
  {
    name: 'a view redefined to expose a masked column',
    change: ['create or replace view names_0 as select id, email as name from customers'],
    read: 'select name from names_0 order by id',
  },
  {
    name: 'a view redefined over another masked column',
    change: ['create or replace view names_1 as select id, ssn as name from customers'],
    read: 'select name from names_1 order by id',
  },
  {
    name: 'a view dropped and created again over a masked column',
    change: ['drop view names_2', 'create view names_2 as select id, email as name from customers'],
    read: 'select name from names_2 order by id',
  },
  {
    // The catalogue connection reads a table's columns without a lock: `*` would be expanded as before.
    name: 'a column dropped so that `*` slides onto a masked column',
    change: ['alter table people drop column name'],
    read: 'select * from people order by id',
  },
];

test('a catalogue change executed before its Sync (Flush) is not taken as settled by masking', async (t) => {
  const database = await createTestDatabase(t, SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { p: POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  const serverState = async (): Promise<unknown> => ({
    views: (await owner.query("select viewname, definition from pg_views where viewname like 'names_%' order by 1"))
      .rows,
    people: (
      await owner.query(
        "select attname from pg_attribute where attrelid = 'people'::regclass and attnum > 0 and not attisdropped order by attnum",
      )
    ).rows,
  });
  let leaks = 0;

  for (const c of CASES) {
    await t.test(c.name, async () => {
      const client: RawClient = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
      try {
        // The catalogue connection has walked the relation as it is: clear names.
        const before = await exchange(client, Buffer.concat([extended(c.read), SYNC]), 1);
        assert.equal(before.types, '1 2 D D C Z');
        assert.ok(reply(before).includes('Alice Example'), 'clear before the change');
        const state = await serverState();

        // The change, each statement with a Flush: the server executes and answers it, the implicit transaction
        // stays open (nothing committed, so the catalogue connection still sees the definitions of before).
        let refusedEarly = false;
        for (const statement of c.change) {
          const changed = await flushed(client, Buffer.concat([extended(statement), FLUSH]), 1);
          if (changed.codes.length === 0) continue;
          // A second catalogue change before the Sync is refused just as a read is.
          assert.deepEqual(changed.codes, ['42501'], `the change: ${changed.errors.join('; ')}`);
          assert.match(changed.errors[0] ?? '', /statements after a catalogue change/);
          refusedEarly = true;
          break;
        }

        // The read in the same pipeline, then the Sync.
        const pipelined = await exchange(client, refusedEarly ? SYNC : Buffer.concat([extended(c.read), SYNC]), 1);
        const leaked = leakIn(Buffer.from(reply(pipelined), 'latin1'));
        if (leaked !== undefined) leaks++;
        assert.equal(leaked, undefined, `a masked value in clear: ${leaked ?? ''} (${pipelined.types})`);
        if (!refusedEarly) {
          assert.deepEqual(pipelined.codes, ['42501'], `refused until settled: ${pipelined.types}`);
          assert.match(pipelined.errors[0] ?? '', /statements after a catalogue change/);
        }
        // The refusal failed the implicit transaction: the server rolled the change back at the Sync.
        assert.deepEqual(await serverState(), state, 'the change was rolled back');

        // Settled: the same change committed on its own, then the read is planned against it and masked.
        for (const statement of c.change) {
          const committed = await exchange(client, Buffer.concat([extended(statement), SYNC]), 1);
          assert.deepEqual(committed.codes, [], `the change alone: ${committed.errors.join('; ')}`);
        }
        const after = await exchange(client, Buffer.concat([extended(c.read), SYNC]), 1);
        assert.equal(after.types, '1 2 D D C Z', `after the Sync: ${after.errors.join('; ')}`);
        assert.equal(leakIn(Buffer.from(reply(after), 'latin1')), undefined, 'masked once committed');
        assert.ok(!reply(after).includes('Alice Example'), `masked once committed: ${reply(after)}`);
        assert.equal((await exchange(client, query('select 1'), 1)).types, 'T D C Z', 'the session answers in step');
      } finally {
        client.destroy();
      }
    });
  }
  await owner.end();
  t.diagnostic(`${String(leaks)} of ${String(CASES.length)} pipelines got a masked value in clear`);
});

function reply(r: Reply): string {
  return Buffer.concat(r.messages.map((m) => m.body)).toString('latin1');
}

/** Writes a pipeline that ends with Flush and waits for `completes` CommandCompletes (no ReadyForQuery comes). */
async function flushed(client: RawClient, bytes: Buffer, completes: number): Promise<Reply> {
  const before = client.receivedLength;
  const done = (): boolean =>
    parseBackend(client.received.subarray(before), 0, true).messages.filter((m) => m.type === 'C' || m.type === 'E')
      .length >= completes;
  client.write(bytes);
  if (!(await client.until(done, TIMEOUT_MS))) throw new Error('no CommandComplete after Flush');
  const messages = parseBackend(client.received.subarray(before), 0, true).messages;
  const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
  return {
    messages,
    types: messages.map((m) => m.type).join(' '),
    codes: errors.map((e) => e.code),
    errors: errors.map((e) => `${e.code} ${e.message}`),
    severity: errors.at(-1)?.severity,
    closed: client.serverEnded,
  };
}
