// The session state the analysis depends on is pinned at startup and taken from the server (issue 9):
// startup parameters that would make the server read statements differently from the sidecar are refused
// before the token is asked for (and recorded); the pins reach the server even when the database or role
// says otherwise; a server report the analysis cannot follow ends the session; a database in another
// encoding is refused; sessions whose policies grant no write run read-only in the database, with the
// least-privilege login when the resource has one.
import { carriesCommandOutcome } from '@chaperone/api';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import pg from 'pg';
import type { AccessPolicySpec, AuditRecord } from '@chaperone/api';
import { ALLOW_ALL, READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createReaderLogin, createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { errorFields, parseBackend, passwordMessage, RawClient, startupMessage } from './raw-client.ts';

const WAIT = 10_000;

/** Reads of public without side effects, session settings, transaction control. */
const READ_PUBLIC: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'reads-of-public',
      decision: 'allow',
      match: {
        sql: {
          statementKinds: ['select', 'show', 'set', 'transaction'],
          relations: ['public.*', 'pg_catalog.*'],
          sideEffects: false,
        },
      },
    },
  ],
  defaultDecision: 'deny',
};

async function agent(t: TestContext, sidecar: RunningTestSidecar, extra: Partial<pg.ClientConfig> = {}) {
  // A FATAL arrives as a query error too: its error event is ignored.
  return connectAgent(
    sidecar,
    { sub: 'system:serviceaccount:ci:agent' },
    { client: extra, ignoreErrors: true, endAfter: t },
  );
}

async function show(client: pg.Client, name: string): Promise<string> {
  const r = await client.query<Record<string, string>>(`SHOW ${name}`);
  return Object.values(r.rows[0] ?? {})[0] ?? '';
}

/** The first ErrorResponse of a raw connection, and whether an authentication request came before it. */
function firstError(c: RawClient): { fields: ReturnType<typeof errorFields>; askedForPassword: boolean } {
  const { messages } = parseBackend(c.received, 0, true);
  const error = messages.find((m) => m.type === 'E');
  assert.ok(error !== undefined, `no ErrorResponse in ${c.received.toString('hex')}`);
  return { fields: errorFields(error.body), askedForPassword: messages.some((m) => m.type === 'R') };
}

async function waitForRecords(
  sidecar: RunningTestSidecar,
  done: (records: AuditRecord[]) => boolean,
): Promise<AuditRecord[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const records = sidecar.records().map((r) => r.record);
    if (done(records)) return records;
    if (Date.now() > deadline) return records;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Startup parameters that are refused before authentication: [parameters, SQLSTATE, message]. */
const STARTUP_ATTACKS: readonly [Record<string, string>, string, RegExp][] = [
  [{ Client_Encoding: 'SJIS' }, '0A000', /client_encoding "SJIS" is not supported/],
  [{ CLIENT_ENCODING: 'big5' }, '0A000', /client_encoding "big5" is not supported/],
  [{ client_encoding: 'GBK' }, '0A000', /client_encoding "GBK"/],
  [{ client_encoding: 'SQL_ASCII' }, '0A000', /client_encoding "SQL_ASCII"/],
  [{ client_encoding: 'LATIN1' }, '0A000', /client_encoding "LATIN1"/],
  [{ options: '-c client_encoding=SJIS' }, '0A000', /client_encoding "SJIS"/],
  [{ options: '--client-encoding=GB18030' }, '0A000', /client_encoding "GB18030"/],
  [{ options: '-cclient_encoding=JOHAB' }, '0A000', /client_encoding "JOHAB"/],
  [{ options: '-c application_name=x -c client_encoding=UHC' }, '0A000', /client_encoding "UHC"/],
  [{ Search_Path: 'secret' }, '0A000', /search_path is pinned to "public"/],
  [{ search_path: 'secret, public' }, '0A000', /search_path is pinned/],
  [{ search_path: '"Public"' }, '0A000', /search_path is pinned/],
  [{ search_path: 'pg_temp, public' }, '0A000', /search_path is pinned/],
  [{ options: '-c search_path=secret' }, '0A000', /search_path is pinned/],
  [{ options: '--search-path=secret' }, '0A000', /search_path is pinned/],
  [{ options: '-O' }, '0A000', /startup option "-O" is not supported/],
  [{ options: '-d 5' }, '0A000', /startup option "-d"/],
  [{ options: '-e' }, '0A000', /startup option "-e"/],
  [{ options: '-c' }, '0A000', /needs name=value/],
  [{ standard_conforming_strings: 'off' }, '0A000', /standard_conforming_strings must stay on/],
  [{ options: '-c standard_conforming_strings=off' }, '0A000', /standard_conforming_strings must stay on/],
  [{ Backslash_Quote: 'on' }, '0A000', /backslash_quote/],
  [{ replication: 'database' }, '42501', /replication connections are not allowed/],
  [{ Replication: 'true' }, '42501', /replication connections are not allowed/],
  [{ options: '-c role=postgres' }, '42501', /role cannot be chosen/],
  [{ ROLE: 'postgres' }, '42501', /role cannot be chosen/],
  [{ options: '-c session_authorization=postgres' }, '42501', /session user cannot be chosen/],
  [{ options: '-c session_replication_role=replica' }, '42501', /session_replication_role/],
  [{ transaction_read_only: 'off' }, '42501', /transaction_read_only/],
];

test('startup parameters that would change how the server reads statements, or privileges, are refused before the token is asked for, and recorded', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  for (const [parameters, code, message] of STARTUP_ATTACKS) {
    const label = JSON.stringify(parameters);
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    c.write(startupMessage({ user: 'agent', database: 'agent-db', ...parameters }));
    assert.ok(await c.untilMessage('E', WAIT), `${label}: no ErrorResponse`);
    const { fields, askedForPassword } = firstError(c);
    assert.equal(askedForPassword, false, `${label}: the token was asked for`);
    assert.equal(fields.severity, 'FATAL', label);
    assert.equal(fields.code, code, `${label}: ${fields.message}`);
    assert.match(fields.message, /^chaperone: /, label);
    assert.match(fields.message, message, label);
    assert.notEqual(await c.untilClosed(WAIT), 'open', `${label}: connection left open`);
    c.destroy();
  }
  const records = await waitForRecords(
    sidecar,
    (r) => r.filter((x) => x.type === 'auth.failure').length >= STARTUP_ATTACKS.length,
  );
  const failures = records.filter((r) => r.type === 'auth.failure');
  assert.deepEqual(
    failures.map((r) => r.outcome?.code),
    STARTUP_ATTACKS.map(([, code]) => code),
    'one auth.failure record per refused startup, with its SQLSTATE',
  );
  assert.ok(failures.every((r) => r.outcome?.status === 'denied'));
  assert.equal(records.filter((r) => r.type === 'session.start').length, 0, 'no session was opened');
});

test('the pins reach the server: UTF8, standard_conforming_strings on, the pinned search_path, whatever the client, database or role says', async (t) => {
  const database = await createTestDatabase(
    t,
    `CREATE SCHEMA secret;
     CREATE TABLE public.victim (id int);
     INSERT INTO public.victim VALUES (1), (2);
     CREATE TABLE secret.victim (id int);`,
  );
  const owner = new pg.Client(directPgOptions(database));
  owner.on('error', () => undefined); // the database is dropped with FORCE after the test
  await owner.connect();
  t.after(() => owner.end().catch(() => undefined));
  const role = directPgOptions().user;
  // What a database owner could set to make the server lex strings and resolve names differently.
  await owner.query(`ALTER DATABASE ${database} SET standard_conforming_strings = off`);
  await owner.query(`ALTER DATABASE ${database} SET search_path = secret, public`);
  await owner.query(`ALTER ROLE ${role} IN DATABASE ${database} SET client_encoding = 'SJIS'`);
  t.after(async () => {
    const admin = new pg.Client(directPgOptions());
    await admin.connect();
    await admin.query(`ALTER ROLE ${role} IN DATABASE ${database} RESET ALL`).catch(() => undefined);
    await admin.end();
  });

  const sidecar = await startTestSidecar(t, { policies: { 'read-public': READ_PUBLIC }, database });
  const client = await agent(t, sidecar, { application_name: 'pins' });
  assert.equal(await show(client, 'client_encoding'), 'UTF8');
  assert.equal(await show(client, 'standard_conforming_strings'), 'on');
  assert.equal(await show(client, 'search_path'), '"public"');
  assert.equal(await show(client, 'default_transaction_read_only'), 'on', 'no write granted: read-only');
  // With standard_conforming_strings off (the database default), this is a SELECT and a DELETE.
  const attack = "SELECT 'x\\''; DELETE FROM public.victim; --'";
  const r = await client.query<{ '?column?': string }>(attack);
  assert.equal(r.rows[0]?.['?column?'], "x\\'; DELETE FROM public.victim; --", 'one string, as the sidecar read it');
  // Unqualified names are the pinned schema's, as the analysis resolved them.
  const rows = await client.query<{ n: string }>('SELECT count(*)::text AS n FROM victim');
  assert.equal(rows.rows[0]?.n, '2', 'public.victim, not secret.victim');
  assert.equal((await owner.query('SELECT count(*)::int AS n FROM public.victim')).rows[0]?.n, 2);

  // The same text sent to the server directly, where the database default applies, deletes the rows:
  // the attack is real, and the pin is what stopped it.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  assert.equal(await show(direct, 'standard_conforming_strings'), 'off');
  await direct.query(attack);
  await direct.end();
  assert.equal((await owner.query('SELECT count(*)::int AS n FROM public.victim')).rows[0]?.n, 0);
});

test('a server report the analysis cannot follow ends the session with a FATAL, recorded as denied', async (t) => {
  const database = await createTestDatabase(
    t,
    `CREATE TABLE public.victim (id int);
     INSERT INTO public.victim VALUES (1);
     CREATE VIEW public.unguard AS SELECT set_config('default_transaction_read_only', 'off', false) AS v;
     CREATE VIEW public.scs_off AS SELECT set_config('standard_conforming_strings', 'off', false) AS v;
     CREATE VIEW public.sjis AS SELECT set_config('client_encoding', 'SJIS', false) AS v;`,
  );
  // set_config() itself is refused by the pins (the next test); owner code the analysis cannot see, here
  // views, changes the settings, and the server's report is what ends the session.
  const cases: { policy: AccessPolicySpec; sql: string; message: RegExp }[] = [
    {
      policy: ALLOW_ALL,
      sql: 'SELECT * FROM scs_off',
      message: /standard_conforming_strings off/,
    },
    {
      policy: ALLOW_ALL,
      sql: 'SELECT * FROM sjis',
      message: /client_encoding "SJIS" is not supported/,
    },
    {
      // A view the analysis reads as a plain read turns the guard off: the server's report ends the session.
      policy: READ_PUBLIC,
      sql: 'SELECT * FROM unguard',
      message: /default_transaction_read_only off in a read-only session/,
    },
  ];
  for (const [i, c] of cases.entries()) {
    const sidecar = await startTestSidecar(t, { policies: { policy: c.policy }, database, instance: String(i) });
    const client = await agent(t, sidecar);
    await assert.rejects(client.query(c.sql), (err: Error & { code?: string; severity?: string }) => {
      assert.equal(err.code, '0A000', `${c.sql} → ${err.message}`);
      assert.equal(err.severity, 'FATAL');
      assert.match(err.message, /^chaperone: /);
      assert.match(err.message, c.message);
      return true;
    });
    await assert.rejects(client.query('SELECT 1'), 'the session is over');
    const records = await waitForRecords(sidecar, (r) => r.some((x) => x.type === 'session.end'));
    const end = records.find((r) => r.type === 'session.end');
    assert.equal(end?.outcome?.status, 'denied', c.sql);
    assert.equal(end.outcome.code, '0A000', c.sql);
    await sidecar.stop();
  }
});

test('a database whose encoding is not UTF8 is refused at startup, after authentication, as denied', async (t) => {
  const name = `t_latin1_${String(process.pid)}`;
  const admin = new pg.Client(directPgOptions());
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`);
  t.after(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  });
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database: name });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const c = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => c.destroy());
  c.write(startupMessage());
  assert.ok(await c.untilMessage('R', WAIT));
  c.write(passwordMessage(token));
  assert.ok(await c.untilMessage('E', WAIT));
  const { fields } = firstError(c);
  assert.equal(fields.severity, 'FATAL');
  assert.equal(fields.code, '0A000');
  assert.match(fields.message, /encoding is LATIN1; the chaperone sidecar supports UTF8 databases only/);
  const messages = parseBackend(c.received, 0, true).messages.map((m) => m.type);
  assert.ok(!messages.includes('Z'), 'no ReadyForQuery: the session never started for the client');
  const records = await waitForRecords(sidecar, (r) => r.some((x) => x.type === 'session.end'));
  assert.deepEqual(
    records.map((r) => [r.type, r.outcome?.status, r.outcome?.code]),
    [
      ['session.start', undefined, undefined],
      ['session.end', 'denied', '0A000'],
    ],
  );
});

test('a read-only session refuses a startup option lifting its guard only once it knows the session is read-only', async (t) => {
  const parameters = { user: 'agent', database: 'agent-db', options: '-c default_transaction_read_only=off' };
  const reader = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const token = await reader.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const c = await RawClient.connect(reader.host, reader.port);
  t.after(() => c.destroy());
  c.write(startupMessage(parameters));
  assert.ok(await c.untilMessage('R', WAIT), 'not refused before authentication: a writer may ask for it');
  c.write(passwordMessage(token));
  assert.ok(await c.untilMessage('E', WAIT));
  const { fields } = firstError(c);
  assert.equal(fields.code, '42501');
  assert.match(fields.message, /this session is read-only/);
  const records = await waitForRecords(reader, (r) => r.some((x) => x.type === 'session.end'));
  assert.deepEqual(records.at(-1)?.outcome, {
    code: '42501',
    message: fields.message,
    status: 'denied',
  });

  // A session that may write gets what it asked for (the option is the server default anyway).
  const writer = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, instance: 'writer' });
  const w = await agent(t, writer, { options: '-c default_transaction_read_only=off' });
  assert.equal(await show(w, 'default_transaction_read_only'), 'off');
});

/** A database with public.victim (two rows) and a reader role (SELECT only, read-only by default). */
async function databaseWithReader(t: TestContext): Promise<{ database: string; role: string; password: string }> {
  const database = await createTestDatabase(
    t,
    'CREATE TABLE public.victim (id int); INSERT INTO public.victim VALUES (1), (2);',
  );
  const { user, password } = createReaderLogin(t, database);
  return { database, role: user, password };
}

test('the least-privilege login: sessions that may not write use it, sessions that may write use the resource credential', async (t) => {
  const { database, role, password } = await databaseWithReader(t);
  const owner = directPgOptions().user;
  for (const [policy, login, readOnly] of [
    [READ_PUBLIC, role, 'on'],
    [ALLOW_ALL, owner, 'off'],
  ] as const) {
    const sidecar = await startTestSidecar(t, {
      policies: { policy },
      database,
      readOnly: { user: role, password },
      instance: login,
    });
    const client = await agent(t, sidecar);
    assert.equal((await client.query<{ u: string }>('SELECT current_user AS u')).rows[0]?.u, login);
    assert.equal(await show(client, 'default_transaction_read_only'), readOnly);
    await client.end();
    await sidecar.stop();
  }
});

test('a statement kind the analysis is blind to: the policy lets the DELETE through as a read, PostgreSQL refuses it in a read-only session', async (t) => {
  const { database, role, password } = await databaseWithReader(t);
  const bin = join(import.meta.dirname, 'blind-sidecar.ts');
  const count = async (): Promise<number> => {
    const owner = new pg.Client(directPgOptions(database));
    await owner.connect();
    try {
      return (await owner.query<{ n: number }>('SELECT count(*)::int AS n FROM public.victim')).rows[0]?.n ?? -1;
    } finally {
      await owner.end();
    }
  };
  for (const readOnlyLogin of [true, false]) {
    // With and without the least-privilege login: default_transaction_read_only alone refuses it too.
    const sidecar = await startTestSidecar(t, {
      policies: { 'read-public': READ_PUBLIC },
      database,
      bin,
      ...(readOnlyLogin ? { readOnly: { user: role, password } } : {}),
      instance: readOnlyLogin ? 'reader' : 'owner',
    });
    const client = await agent(t, sidecar);
    await assert.rejects(client.query('DELETE FROM victim'), (err: Error & { code?: string }) => {
      assert.doesNotMatch(err.message, /^chaperone: /, 'not refused by the sidecar');
      assert.equal(err.code, '25006', `refused by PostgreSQL: ${err.message}`);
      assert.match(err.message, /cannot execute DELETE in a read-only transaction/);
      return true;
    });
    await client.end();
    const records = await waitForRecords(sidecar, (r) => r.some((x) => x.type === 'session.end'));
    const decision = records.find((r) => r.type === 'command.decision');
    assert.equal(decision?.command?.text, 'DELETE FROM victim');
    assert.deepEqual(decision.command.statementKinds, ['select'], 'the blind analysis called it a read');
    assert.equal(decision.decision?.result, 'allow');
    assert.equal(records.find((r) => carriesCommandOutcome(r))?.outcome?.code, '25006');
    assert.equal(await count(), 2, 'nothing deleted');
    await sidecar.stop();
  }
  // Control: the same blind sidecar under a policy that grants writes deletes the rows, so it was the
  // database-enforced layer, not the analysis, that refused the DELETE above.
  const writer = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database, bin, instance: 'writer' });
  const w = await agent(t, writer);
  await w.query('DELETE FROM victim');
  assert.equal(await count(), 0);
});

test('set_config() is SET by another name: a policy that allows side effects still cannot move search_path or the role', async (t) => {
  const database = await createTestDatabase(
    t,
    `CREATE SCHEMA secret;
     CREATE TABLE public.creds (v text); INSERT INTO public.creds VALUES ('public');
     CREATE TABLE secret.creds (v text); INSERT INTO secret.creds VALUES ('secret');`,
  );
  // Everything except the secret schema: side effects allowed, so only the pins stop set_config.
  const allButSecret: AccessPolicySpec = {
    resources: { names: ['test-db'] },
    rules: [
      { name: 'not-secret', decision: 'deny', match: { sql: { relations: ['secret.*'] } } },
      { name: 'everything-else', decision: 'allow', match: {} },
    ],
    defaultDecision: 'deny',
  };
  const sidecar = await startTestSidecar(t, { policies: { 'all-but-secret': allButSecret }, database });
  const client = await agent(t, sidecar);
  await assert.rejects(client.query('SELECT * FROM secret.creds'), { code: '42501' });
  for (const sql of [
    "SELECT set_config('search_path', 'secret', false)",
    "SELECT set_config('SEARCH_PATH', 'secret, public', false)",
    "SELECT pg_catalog.set_config('search_path', 'secret', true)",
    "SELECT set_config(s, 'secret', false) FROM (VALUES ('search_path')) AS v(s)",
    "SELECT 1 FROM creds WHERE set_config('search_path', 'secret', false) IS NOT NULL",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config('client_encoding', 'SJIS', false)",
    "SELECT set_config($$search_path$$, 'secret', false)",
    "SELECT set_config(E'search\\x5fpath', 'secret', false)",
    "SELECT set_config(U&'search\\005Fpath', 'secret', false)",
    "SELECT set_config('search_' || 'path', 'secret', false)",
    "SET SCHEMA 'secret'",
    'SET LOCAL search_path = secret',
    "SET NAMES 'SJIS'",
    "SELECT * FROM creds WHERE 'x' = set_config('search_path', 'secret', true)",
  ]) {
    await assert.rejects(client.query(sql), (err: Error & { code?: string }) => {
      assert.equal(err.code, '42501', `${sql} → ${err.message}`);
      assert.match(
        err.message,
        /^chaperone: (search_path is pinned|set_config\(\)|changing \w+ is not allowed)/,
        `${sql} → ${err.message}`,
      );
      return true;
    });
  }
  const r = await client.query<{ v: string }>('SELECT v FROM creds');
  assert.deepEqual(
    r.rows.map((x) => x.v),
    ['public'],
    'the unqualified name is still the pinned schema',
  );
  assert.equal(await show(client, 'search_path'), '"public"');
});
