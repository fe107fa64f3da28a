// Side channels of a masking session (docs/masking.md, "Server messages"): owner code — triggers, constraint
// and domain checks, defaults, generated columns, index expressions, operators, casts, row-level security
// policies, event triggers, all made by the owner directly, not through the sidecar — runs inside statements
// that read no masked column, and reads a masked value into what the server sends the agent besides rows: a
// NoticeResponse or WARNING, an ErrorResponse (message, detail, hint, context, internal query, the names
// RAISE may set, with a harmless-looking SQLSTATE), a NotificationResponse payload (pg_notify from a trigger,
// or from another session while the agent's connection is idle), a ParameterStatus (set_config of a reported
// setting). Each attack runs over a raw socket through a real sidecar to a real PostgreSQL; every byte the
// agent receives is searched for every masked value in every encoding (leakIn). Controls: the agent's own
// syntax and undefined-table errors stay readable, LISTEN still wakes the agent, and the outcome record
// counts what was withheld, never the value.
import { carriesCommandOutcome } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, superuserSql } from '../harness/env.ts';
import {
  authenticatedClient,
  cstr,
  errorFields,
  i16,
  i32,
  msg,
  parseBackend,
  query,
  SYNC,
  type BackendMessage,
} from '../postgres/raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const AGENT = 'system:serviceaccount:ci:agent';

/** Owner code: each function reads a masked value (customers.email, customers.ssn) and shows it somewhere. */
const OWNER_SQL = `
${MASKING_SCHEMA_SQL}
create function secret() returns text language sql stable as $$ select email from customers order by id limit 1 $$;
create function secret_digits() returns text language sql stable as $$ select replace(ssn, '-', '') from customers order by id limit 1 $$;
create function loud() returns void language plpgsql as $$ begin
  raise exception using errcode = '42601', message = secret(), detail = secret(), hint = secret_digits(),
    column = secret(), constraint = secret(), datatype = secret(), table = secret(), schema = secret();
end $$;
create function noisy(ok boolean) returns boolean language plpgsql immutable as $$ begin
  raise notice '%', secret(); raise warning 'ssn %', secret_digits(); return ok;
end $$;
create function noisy_text(id int) returns text language plpgsql immutable as $$ begin
  raise notice '%', secret(); return id::text;
end $$;
create function failing(ok boolean) returns boolean language plpgsql immutable as $$ begin
  perform loud(); return ok;
end $$;
create function nested_failure(ok boolean) returns boolean language plpgsql immutable as $$ begin
  execute 'select ' || quote_ident(secret()); return ok;
end $$;
create function cast_failure(ok boolean) returns boolean language sql immutable as $$ select secret()::int > 0 $$;
create function tg_notice() returns trigger language plpgsql as $$ begin
  raise notice '%', secret(); raise warning 'ssn %', secret_digits(); return coalesce(new, old);
end $$;
create function tg_error() returns trigger language plpgsql as $$ begin perform loud(); return new; end $$;
create function tg_notify() returns trigger language plpgsql as $$ begin
  perform pg_notify('jobs', secret()); return new;
end $$;
create function tg_setting() returns trigger language plpgsql as $$ begin
  perform set_config('application_name', secret(), false); perform set_config('owner.stash', secret(), false);
  return new;
end $$;

create table row_insert (id int);
create trigger t before insert on row_insert for each row execute function tg_notice();
create table row_update (id int); insert into row_update values (1);
create trigger t after update on row_update for each row execute function tg_notice();
create table statement_delete (id int); insert into statement_delete values (1);
create trigger t before delete on statement_delete for each statement execute function tg_notice();
create table truncated (id int);
create trigger t after truncate on truncated for each statement execute function tg_notice();
create table deferred (id int);
create constraint trigger t after insert on deferred deferrable initially deferred
  for each row execute function tg_notice();
create table deferred_error (id int);
create constraint trigger t after insert on deferred_error deferrable initially deferred
  for each row execute function tg_error();
create table insert_error (id int);
create trigger t before insert on insert_error for each row execute function tg_error();
create table with_default (id int, note text default noisy_text(0));
create table with_check (id int check (noisy(id > 0)));
create table with_failing_check (id int check (failing(id > 0)));
create table with_nested_check (id int check (nested_failure(id > 0)));
create table with_cast_check (id int check (cast_failure(id > 0)));
create domain noisy_int as int check (noisy(value > 0));
create table with_domain (v noisy_int);
create table with_generated (id int, g text generated always as (noisy_text(id)) stored);
create table with_index (id int);
create index on with_index (noisy_text(id));
create function noisy_eq(a int, b int) returns boolean language plpgsql immutable as $$ begin
  raise notice '%', secret(); return a = b;
end $$;
create operator === (leftarg = int, rightarg = int, function = noisy_eq);
create function failing_eq(a int, b int) returns boolean language plpgsql as $$ begin perform loud(); return a = b; end $$;
create operator =!= (leftarg = int, rightarg = int, function = failing_eq);
create type mood as enum ('calm');
create function mood_number(m mood) returns int language plpgsql as $$ begin raise notice '%', secret(); return 1; end $$;
create cast (mood as int) with function mood_number(mood);
create table guarded (id int, label text); insert into guarded values (1, 'one');
alter table guarded enable row level security;
alter table guarded force row level security;
create policy p on guarded using (noisy(true));
create table notifying (id int);
create trigger t after insert on notifying for each row execute function tg_notify();
create table setting (id int);
create trigger t after insert on setting for each row execute function tg_setting();
`;

/** Needs a superuser: event triggers fire on the DDL the agent runs. */
const EVENT_TRIGGER_SQL = `
create function et_notice() returns event_trigger language plpgsql as $$ begin raise notice '%', secret(); end $$;
create event trigger et on ddl_command_end when tag in ('CREATE TABLE') execute function et_notice();
create function et_error() returns event_trigger language plpgsql as $$ begin perform loud(); end $$;
create event trigger et_fail on ddl_command_start when tag in ('CREATE VIEW') execute function et_error();
`;

type Step = string | Buffer;

/** Parse, Bind, Execute and Sync of `sql` (unnamed statement and portal). */
function extended(sql: string): Buffer {
  return Buffer.concat([
    msg('P', cstr(''), cstr(sql), i16(0)),
    msg('B', cstr(''), cstr(''), i16(0), i16(0), i16(0)),
    msg('E', cstr(''), i32(0)),
    SYNC,
  ]);
}

interface Attack {
  readonly why: string;
  /** One round trip each: a simple Query, or extended-protocol messages ending in Sync. */
  readonly steps: readonly Step[];
  /**
   * What the agent must still get: NoticeResponses (with the server's severity and SQLSTATE), none (`quiet`:
   * statements that change the catalogue or write a masked table's relatives drop their notices whole, as
   * before), or an error.
   */
  readonly gets: 'notice' | 'quiet' | 'error';
}

const notice = (why: string, ...steps: Step[]): Attack => ({ why, steps, gets: 'notice' });
const quiet = (why: string, ...steps: Step[]): Attack => ({ why, steps, gets: 'quiet' });
const error = (why: string, ...steps: Step[]): Attack => ({ why, steps, gets: 'error' });

const ATTACKS: readonly Attack[] = [
  notice('row BEFORE INSERT trigger', 'insert into row_insert values (1)'),
  notice('row AFTER UPDATE trigger', 'update row_update set id = id'),
  notice('statement BEFORE DELETE trigger', 'delete from statement_delete'),
  quiet('statement AFTER TRUNCATE trigger', 'truncate truncated'),
  quiet('deferred constraint trigger at COMMIT', 'begin', 'insert into deferred values (1)', 'commit'),
  notice('deferred constraint trigger at the implicit commit', 'insert into deferred values (2)'),
  quiet('event trigger on the agent’s DDL', 'create table agent_made (x int)'),
  notice('column DEFAULT', 'insert into with_default (id) values (1)'),
  notice('CHECK constraint', 'insert into with_check values (1)'),
  notice('domain CHECK', 'insert into with_domain values (1)'),
  notice('generated column', 'insert into with_generated (id) values (1)'),
  notice('index expression', 'insert into with_index values (1)'),
  // An operator or cast outside pg_catalog makes the statement opaque (routine-shadowing), and the notices of a
  // statement that reads opaque data are dropped whole rather than sent withheld.
  quiet('user-defined operator in a plain select', 'select 1 === 1'),
  quiet('user-defined cast in a plain select', "select 'calm'::mood::int"),
  notice('row-level security policy on a read', 'select label from guarded'),
  notice('row BEFORE INSERT trigger, extended protocol', extended('insert into row_insert values (2)')),
  notice(
    'deferred constraint trigger at the extended protocol’s implicit commit (Sync)',
    extended('insert into deferred values (3)'),
  ),
  error('BEFORE INSERT trigger raising 42601 with detail, hint and names', 'insert into insert_error values (1)'),
  error('deferred constraint trigger raising at COMMIT', 'begin', 'insert into deferred_error values (1)', 'commit'),
  error('CHECK constraint calling a raising function (CONTEXT)', 'insert into with_failing_check values (1)'),
  error('CHECK constraint running dynamic SQL (internal query)', 'insert into with_nested_check values (1)'),
  error('CHECK constraint casting a masked value (a built-in error)', 'insert into with_cast_check values (1)'),
  error('user-defined operator raising in a plain select', 'select 1 =!= 1'),
  error('event trigger raising on the agent’s DDL', 'create view agent_view as select 1 as x'),
  error('BEFORE INSERT trigger raising, extended protocol', extended('insert into insert_error values (2)')),
];

/** Runs `steps` as simple Queries on a new agent connection; returns every message it received after login. */
async function run(
  sidecar: RunningTestSidecar,
  steps: readonly Step[],
  leakCheck: (bytes: Buffer) => string | undefined = leakIn,
): Promise<BackendMessage[]> {
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  try {
    const start = client.receivedLength;
    for (const [i, step] of steps.entries()) {
      client.write(typeof step === 'string' ? query(step) : step);
      const answered = await client.until(() => readyCount(client.received.subarray(start)) >= i + 1, 30_000);
      assert.ok(answered, `step ${String(i + 1)}: answered (${client.end})`);
    }
    const bytes = client.received.subarray(start);
    assert.equal(leakCheck(bytes), undefined, `a masked value reached the agent`);
    return parseBackend(bytes).messages;
  } finally {
    client.destroy();
  }
}

function readyCount(bytes: Buffer): number {
  return parseBackend(bytes, 0, true).messages.filter((m) => m.type === 'Z').length;
}

/** The field codes of an ErrorResponse or NoticeResponse body. */
function fieldCodes(body: Buffer): string[] {
  const codes: string[] = [];
  for (let at = 0; at < body.length && body[at] !== 0; at = body.indexOf(0, at + 1) + 1) {
    codes.push(String.fromCharCode(body[at] ?? 0));
  }
  return codes;
}

test('owner code cannot reach a masking session through notices, errors, notifications or reported settings', async (t) => {
  const database = await createTestDatabase(t, OWNER_SQL);
  superuserSql(EVENT_TRIGGER_SQL, database);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });

  for (const attack of ATTACKS) {
    await t.test(attack.why, async () => {
      const messages = await run(sidecar, attack.steps);
      const notices = messages.filter((m) => m.type === 'N');
      const errors = messages.filter((m) => m.type === 'E');
      if (attack.gets !== 'error') {
        assert.deepEqual(
          errors.map((e) => errorFields(e.body).message),
          [],
          'the statement ran',
        );
        if (attack.gets === 'notice') assert.ok(notices.length > 0, 'the notices still arrive');
        for (const n of notices) {
          const f = errorFields(n.body);
          // RAISE NOTICE reports 00000, RAISE WARNING 01000: both kept.
          assert.deepEqual([f.severity, f.code], f.severity === 'NOTICE' ? ['NOTICE', '00000'] : ['WARNING', '01000']);
          assert.match(f.message, /withheld/);
          assert.deepEqual(fieldCodes(n.body), ['S', 'V', 'C', 'M'], 'no detail, hint, context or names');
        }
      } else {
        assert.equal(errors.length, 1, 'the failure still arrives');
        const body = (errors[0] as BackendMessage).body;
        const f = errorFields(body);
        assert.match(f.message, /withheld/);
        assert.ok(!fieldCodes(body).some((c) => 'DHWqpstcdn'.includes(c)), `fields ${fieldCodes(body).join('')}`);
      }
    });
  }

  await t.test('errors parse analysis raises on the agent’s own text stay readable', async () => {
    const messages = await run(sidecar, [
      'select id from products where name = 1',
      'select id from products group by name having price > 0',
    ]);
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    assert.deepEqual(
      errors.map((e) => [e.code, e.message]),
      [
        ['42883', 'operator does not exist: text = integer'],
        ['42803', 'column "products.id" must appear in the GROUP BY clause or be used in an aggregate function'],
      ],
    );
  });

  await t.test(
    'pg_notify from a trigger fired by the agent’s own write: the wakeup arrives, its payload does not',
    async () => {
      const messages = await run(sidecar, ['listen jobs', 'insert into notifying values (1)']);
      const notifications = messages.filter((m) => m.type === 'A');
      assert.equal(notifications.length, 1);
      const body = (notifications[0] as BackendMessage).body;
      assert.deepEqual(body.subarray(4).toString('utf8').split('\0'), ['jobs', '', '']);
    },
  );

  await t.test('a payload another session publishes while the agent is idle', async () => {
    const token = await sidecar.issuer.sign({ sub: AGENT });
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
    const other = new pg.Client(directPgOptions(database));
    await other.connect();
    try {
      const start = client.receivedLength;
      client.write(query('listen jobs'));
      assert.ok(await client.until(() => readyCount(client.received.subarray(start)) >= 1, 30_000));
      await other.query("select pg_notify('jobs', (select email from customers order by id limit 1))");
      await other.query("notify jobs, 'card 4111111111111111'");
      const arrived = await client.until(
        () => parseBackend(client.received.subarray(start), 0, true).messages.filter((m) => m.type === 'A').length >= 2,
        30_000,
      );
      assert.ok(arrived, 'both notifications arrive between statements');
      assert.equal(leakIn(client.received.subarray(start)), undefined, 'a masked value reached the agent');
    } finally {
      await other.end();
      client.destroy();
    }
  });

  await t.test('set_config of a reported setting by a trigger: no ParameterStatus carries the value', async () => {
    const messages = await run(sidecar, ['insert into setting values (1)']);
    const reported = messages.filter((m) => m.type === 'S').map((m) => m.body.toString('utf8').split('\0')[0]);
    assert.ok(!reported.includes('application_name'), `reported: ${reported.join(', ')}`);
  });

  await t.test('the outcome record counts the withheld notices, never their text', async () => {
    const records = (await sidecar.settledRecords()).map((r) => r.record);
    const decided = records.find(
      (r) => r.type === 'command.decision' && r.command?.text === 'insert into row_insert values (1)',
    );
    const outcome = records.find((r) => carriesCommandOutcome(r) && r.command?.id === decided?.command?.id);
    assert.equal(outcome?.outcome?.status, 'success');
    const withheld = outcome.outcome.masked?.find((m) => m.strategy === 'withheld');
    assert.deepEqual(withheld, { column: 'NoticeResponse', rule: 'server-messages', strategy: 'withheld', count: 2 });
    assert.equal(leakIn(Buffer.from(JSON.stringify(records))), undefined, 'a masked value reached the audit trail');
  });
});

test('a detector-only identity: what the detectors find in notices, errors and notification payloads is masked', async (t) => {
  const database = await createTestDatabase(t, OWNER_SQL);
  const policy = {
    ...MASKED_POLICY,
    masking: [{ name: 'found', detectors: ['email' as const], strategy: 'redact' as const }],
  };
  const sidecar = await startTestSidecar(t, { policies: { found: policy }, database });
  // Only emails are detected (the ssn digits a WARNING carries are not an email).
  const emailIn = (bytes: Buffer): string | undefined =>
    ['alice.secret@example.com', 'bob.hidden@example.org'].find((e) => bytes.includes(e));
  const messages = await run(
    sidecar,
    [
      'insert into row_insert values (1)',
      'insert into insert_error values (1)',
      'listen jobs',
      'insert into notifying values (1)',
    ],
    emailIn,
  );
  const texts = messages.filter((m) => m.type === 'N' || m.type === 'E').map((m) => errorFields(m.body));
  assert.ok(
    texts.some((f) => f.message === '[MASKED]'),
    'the notice is there, its email masked',
  );
  assert.ok(
    texts.some((f) => f.code === '42601' && f.message === '[MASKED]'),
    'the error too',
  );
  const notification = messages.find((m) => m.type === 'A');
  assert.deepEqual(notification?.body.subarray(4).toString('utf8').split('\0'), ['jobs', '[MASKED]', '']);
});
