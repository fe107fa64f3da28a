// Upstream session reuse (docs/postgres-engine.md, "Upstream session reuse"): an agent connection that
// ends cleanly leaves its upstream session, reset with DISCARD ALL, to the next agent connection with the
// same login. The attack corpus: session state one agent connection leaves behind that must not reach the
// next one through the reused backend (each case checks, through the same backend pid, that the state was
// there before the disconnect and is gone after it); connections that must not be reused at all (open or
// failed transaction, mid-COPY, mid-extended-protocol); logins that must never share a session (another
// application_name, read-only against read-write, a rotated credential); a backend killed while parked;
// what DISCARD ALL cannot undo or a query cannot see (custom setting placeholders, LOAD, DO blocks,
// dblink), which closes the session; parked sessions ended with Terminate when the sidecar stops.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { createTestDatabase } from '../harness/databases.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { directPgOptions, postgresEnv, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { ALLOW_ALL, READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { metric, parked } from './upstream-reuse-fixture.ts';
import { authenticatedClient, cstr, i16, i32, msg, parseBackend, query, SYNC, TERMINATE } from './raw-client.ts';

const WAIT = 10_000;
const AGENT = 'system:serviceaccount:ci:agent';

async function agent(
  t: TestContext,
  sidecar: RunningTestSidecar,
  subject = AGENT,
  extra: Partial<pg.ClientConfig> = {},
): Promise<pg.Client> {
  return connectAgent(sidecar, { sub: subject }, { client: extra, ignoreErrors: true, endAfter: t });
}

async function scalar(client: pg.Client, sql: string): Promise<string | null> {
  const r = await client.query<Record<string, string | null>>(sql);
  return Object.values(r.rows[0] ?? {})[0] ?? null;
}

async function backendPid(client: pg.Client): Promise<number> {
  return Number(await scalar(client, 'SELECT pg_backend_pid()'));
}

/** Waits until the discards counter with `reason` reached `n`. */
async function discarded(sidecar: RunningTestSidecar, reason: string, n: number): Promise<void> {
  await poll(`${String(n)} upstream sessions discarded (${reason})`, async () =>
    (await metric(sidecar, 'chaperone_upstream_discards_total', { reason })) >= n ? true : undefined,
  );
}

/** A raw agent connection's single-value answer to `sql` (its DataRow's first column). */
async function rawScalar(c: Awaited<ReturnType<typeof authenticatedClient>>, sql: string): Promise<string> {
  const from = c.receivedLength;
  c.write(query(sql));
  const done = (): boolean => parseBackend(c.received.subarray(from), 0, true).messages.some((m) => m.type === 'Z');
  assert.ok(await c.until(done, WAIT), `no answer to ${sql}`);
  const row = parseBackend(c.received.subarray(from), 0, true).messages.find((m) => m.type === 'D');
  assert.ok(row !== undefined, `no row for ${sql}`);
  const len = row.body.readInt32BE(2);
  return row.body.subarray(6, 6 + len).toString('utf8');
}

/** Drops a role of the test, ending its sessions first (a parked one of a stopped sidecar may linger). */
function dropRole(role: string): void {
  try {
    superuserSql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`);
    superuserSql(`DROP OWNED BY ${role}; DROP ROLE IF EXISTS ${role}`);
  } catch (err) {
    console.error(`role ${role} not dropped: ${String(err)}`);
  }
}

interface LeakCase {
  readonly name: string;
  /** Leaves state behind (run by the first agent connection). */
  readonly leave: (c: pg.Client) => Promise<void>;
  /** What the state looks like from a session: must differ after `leave`, and be back for the next connection. */
  readonly probe: (c: pg.Client) => Promise<string>;
}

const orError = async (run: () => Promise<string | null>): Promise<string> => {
  try {
    return String(await run());
  } catch (err) {
    return `error ${String((err as { code?: string }).code)}`;
  }
};

function leakCases(role: string): LeakCase[] {
  // Custom placeholders (SET myapp.x) are not here: a session that made one is closed, not reused (below).
  const setting = (names: string[]) => (c: pg.Client) =>
    orError(() => scalar(c, `SELECT concat_ws('|', ${names.map((n) => `current_setting('${n}')`).join(', ')})`));
  return [
    {
      name: 'a temporary table',
      leave: async (c) => {
        await c.query(`CREATE TEMP TABLE leak_temp (secret text); INSERT INTO leak_temp VALUES ('s3cret')`);
      },
      probe: (c) => orError(() => scalar(c, `SELECT pg_catalog.to_regclass('leak_temp')::text`)),
    },
    {
      name: 'settings changed with SET (a reported one, a planner one, the time zone, session characteristics)',
      leave: async (c) => {
        await c.query(`SET application_name = 'leaky'`);
        await c.query(`SET work_mem = '7MB'`);
        await c.query(`SET TimeZone = 'Asia/Tokyo'`);
        await c.query(`SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE`);
      },
      probe: setting(['application_name', 'work_mem', 'TimeZone', 'default_transaction_isolation']),
    },
    {
      name: 'settings changed with set_config(..., false)',
      leave: async (c) => {
        await c.query(`SELECT set_config('statement_timeout', '4321', false)`);
      },
      probe: setting(['statement_timeout']),
    },
    {
      name: 'SET ROLE',
      leave: async (c) => {
        await c.query(`SET ROLE ${role}`);
      },
      probe: (c) => orError(() => scalar(c, 'SELECT current_user::text')),
    },
    {
      name: 'prepared statements (PREPARE and a named protocol-level one)',
      leave: async (c) => {
        await c.query('PREPARE leak_prepared AS SELECT 1');
        await c.query({ name: 'leak_named', text: 'SELECT $1::int', values: [2] });
      },
      probe: (c) => orError(() => scalar(c, 'SELECT count(*)::text FROM pg_prepared_statements')),
    },
    {
      name: 'a session advisory lock',
      leave: async (c) => {
        await c.query('SELECT pg_advisory_lock(4242)');
      },
      probe: (c) =>
        orError(() =>
          scalar(c, `SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`),
        ),
    },
    {
      name: 'LISTEN',
      leave: async (c) => {
        await c.query('LISTEN leak_channel');
      },
      probe: (c) => orError(() => scalar(c, "SELECT string_agg(c, ',') FROM pg_listening_channels() AS c")),
    },
    {
      name: 'a cursor WITH HOLD',
      leave: async (c) => {
        await c.query(`DECLARE leak_cursor CURSOR WITH HOLD FOR SELECT 's3cret'`);
      },
      probe: (c) => orError(() => scalar(c, "SELECT string_agg(name, ',') FROM pg_cursors")),
    },
    {
      name: "a sequence's currval and lastval",
      leave: async (c) => {
        await c.query(`SELECT nextval('leak_seq')`);
      },
      probe: async (c) =>
        `${await orError(() => scalar(c, `SELECT currval('leak_seq')::text`))}/${await orError(() => scalar(c, 'SELECT lastval()::text'))}`,
    },
    {
      name: 'a failed statement as the last thing (the session itself is idle and fine)',
      leave: async (c) => {
        await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
      },
      probe: (c) => orError(() => scalar(c, `SELECT 'same'`)),
    },
  ];
}

test('session state does not leak through a reused upstream session: every case on the same backend, state there before the disconnect and gone after', async (t) => {
  const database = await createTestDatabase(t, 'CREATE TABLE leak_rows (v text); CREATE SEQUENCE leak_seq;');
  const role = `leak_role_${randomBytes(4).toString('hex')}`;
  superuserSql(`CREATE ROLE ${role} NOLOGIN; GRANT ${role} TO ${postgresEnv().user}`);
  t.after(() => dropRole(role));
  const sidecar = await startTestSidecar(t, { database });

  // The first connection logs in; every later one in this test reuses its backend.
  const first = await agent(t, sidecar);
  const pid = await backendPid(first);
  await first.end();
  await parked(sidecar, 1);

  for (const leak of leakCases(role)) {
    const before = await agent(t, sidecar);
    assert.equal(await backendPid(before), pid, `${leak.name}: the backend was reused`);
    const clean = await leak.probe(before);
    await leak.leave(before);
    const left = await leak.probe(before);
    if (leak.name.startsWith('a failed statement')) assert.equal(left, clean);
    else assert.notEqual(left, clean, `${leak.name}: the case left state behind (${left})`);
    await before.end();
    await parked(sidecar, 1);

    const after = await agent(t, sidecar);
    assert.equal(await backendPid(after), pid, `${leak.name}: the next connection reused the backend`);
    assert.equal(await leak.probe(after), clean, `${leak.name}: nothing of it is left`);
    await after.end();
    await parked(sidecar, 1);
  }
  // The lock was released for others too, and a notification on the old channel reaches nobody through the sidecar.
  const direct = new pg.Client(directPgOptions(database));
  direct.on('error', () => undefined); // the database is dropped with (force) after the test
  await direct.connect();
  t.after(() => direct.end().catch(() => undefined));
  assert.equal(await scalar(direct, 'SELECT pg_try_advisory_lock(4242)::text'), 'true');
  const listener = await agent(t, sidecar);
  assert.equal(await backendPid(listener), pid);
  const notifications: string[] = [];
  listener.on('notification', (n) => notifications.push(n.channel));
  await direct.query('NOTIFY leak_channel');
  await scalar(listener, 'SELECT pg_sleep(0.2)');
  await scalar(listener, 'SELECT 1');
  assert.deepEqual(notifications, []);
  await listener.end();
  await parked(sidecar, 1);

  assert.ok((await metric(sidecar, 'chaperone_upstream_reuses_total')) >= 2 * leakCases(role).length + 1);
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 1, 'one login served every connection');
  // The log line of every session names the backend and whether it was reused (auditors correlate server logs).
  const started = sidecar
    .logs()
    .split('\n')
    .filter((l) => l.includes('"msg":"session started"'))
    .map((l) => JSON.parse(l) as { upstreamPid: number; upstreamReused: boolean });
  assert.ok(started.length >= 2 * leakCases(role).length + 2);
  assert.ok(started.every((s) => s.upstreamPid === pid));
  assert.deepEqual(
    started.map((s) => s.upstreamReused),
    started.map((_, i) => i > 0),
  );
});

test('a connection that ends inside a transaction, a failed transaction, a COPY or an extended-protocol exchange is never reused, and nothing of it commits', async (t) => {
  const database = await createTestDatabase(t, 'CREATE TABLE leak_rows (v text)');
  const sidecar = await startTestSidecar(t, { database });
  const token = await sidecar.issuer.sign({ sub: AGENT });
  const direct = new pg.Client(directPgOptions(database));
  direct.on('error', () => undefined); // the database is dropped with (force) after the test
  await direct.connect();
  t.after(() => direct.end().catch(() => undefined));
  let unclean = 0;

  /** Ends `pid`'s connection with `end`, then checks the next connection gets another backend. */
  const notReused = async (label: string, pid: number, end: () => Promise<void>): Promise<void> => {
    await end();
    unclean += 1;
    await discarded(sidecar, 'unclean', unclean);
    assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0, label);
    const next = await agent(t, sidecar);
    assert.notEqual(await backendPid(next), pid, `${label}: not reused`);
    await next.end();
    await parked(sidecar, 1);
    // Take the parked one out again so the next case starts from an empty pool.
    const holder = await agent(t, sidecar);
    await holder.query('SELECT 1');
    t.after(() => holder.end().catch(() => undefined));
    holders.push(holder);
  };
  const holders: pg.Client[] = [];

  const open = await agent(t, sidecar);
  const openPid = await backendPid(open);
  await open.query('BEGIN');
  await open.query(`INSERT INTO leak_rows VALUES ('open transaction')`);
  await notReused('open transaction', openPid, () => open.end());

  const failed = await agent(t, sidecar);
  const failedPid = await backendPid(failed);
  await failed.query('BEGIN');
  await failed.query(`INSERT INTO leak_rows VALUES ('failed transaction')`);
  await assert.rejects(failed.query('SELECT 1/0'));
  await notReused('failed transaction', failedPid, () => failed.end());

  // Raw clients: Terminate right after CopyData, and right after Parse/Bind/Execute without Sync.
  const copying = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => copying.destroy());
  const copyPid = Number(await rawScalar(copying, 'SELECT pg_backend_pid()'));
  const from = copying.receivedLength;
  copying.write(query('COPY leak_rows FROM STDIN'));
  assert.ok(await copying.until(() => copying.received.subarray(from).includes(0x47 /* G */), WAIT), 'CopyInResponse');
  copying.write(msg('d', Buffer.from('mid copy\n')));
  await notReused('mid-COPY', copyPid, async () => {
    copying.write(TERMINATE);
    await copying.untilClosed(WAIT);
  });

  const extended = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => extended.destroy());
  const extendedPid = Number(await rawScalar(extended, 'SELECT pg_backend_pid()'));
  extended.write(
    Buffer.concat([
      msg('P', cstr(''), cstr(`INSERT INTO leak_rows VALUES ('mid extended')`), i16(0)),
      msg('B', cstr(''), cstr(''), i16(0), i16(0), i16(0)),
      msg('E', cstr(''), i32(0)),
      msg('H'),
    ]),
  );
  assert.ok(
    await extended.until(() => parseBackend(extended.received, 0, true).messages.some((m) => m.type === 'C'), WAIT),
    'the INSERT ran (CommandComplete after Flush)',
  );
  await notReused('mid-extended-protocol', extendedPid, async () => {
    extended.write(TERMINATE);
    await extended.untilClosed(WAIT);
  });

  assert.equal(
    await scalar(direct, 'SELECT count(*)::text FROM leak_rows'),
    '0',
    'nothing of those sessions committed',
  );
  // A Sync-terminated exchange is a clean end: reused.
  const synced = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => synced.destroy());
  const syncedPid = Number(await rawScalar(synced, 'SELECT pg_backend_pid()'));
  synced.write(Buffer.concat([msg('P', cstr(''), cstr('SELECT 1'), i16(0)), SYNC]));
  assert.ok(
    await synced.until(
      () => parseBackend(synced.received, 0, true).messages.filter((m) => m.type === 'Z').length >= 3,
      WAIT,
    ),
  );
  synced.write(TERMINATE);
  await synced.untilClosed(WAIT);
  await parked(sidecar, 1);
  const reuser = await agent(t, sidecar);
  assert.equal(await backendPid(reuser), syncedPid, 'after Sync and its ReadyForQuery the session is reused');
  for (const h of holders) await h.end();
});

test('logins that differ never share a session: another application_name, read-only against read-write', async (t) => {
  const WRITER = 'system:serviceaccount:ci:writer';
  const READER = 'system:serviceaccount:ci:reader';
  const policies: Record<string, AccessPolicySpec> = {
    writer: { ...ALLOW_ALL, subjects: [{ subject: WRITER }] },
    reader: { ...READ_ONLY, subjects: [{ subject: READER }] },
  };
  const sidecar = await startTestSidecar(t, { policies });
  const pidAs = async (subject: string, extra: Partial<pg.ClientConfig> = {}) => {
    const c = await agent(t, sidecar, subject, extra);
    const pid = await backendPid(c);
    const readOnly = await scalar(c, 'SHOW default_transaction_read_only');
    await c.end();
    return { pid, readOnly };
  };
  const writer = await pidAs(WRITER);
  assert.equal(writer.readOnly, 'off');
  await parked(sidecar, 1);
  const reader = await pidAs(READER);
  assert.equal(reader.readOnly, 'on');
  assert.notEqual(reader.pid, writer.pid, 'a read-only session never gets a read-write backend');
  await parked(sidecar, 2);
  assert.deepEqual(await pidAs(WRITER), writer, 'the writer gets its own backend back');
  await parked(sidecar, 2);
  assert.deepEqual(await pidAs(READER), reader, 'the reader gets its own backend back, still read-only');
  await parked(sidecar, 2);
  const other = await pidAs(WRITER, { application_name: 'another-app' });
  assert.notEqual(other.pid, writer.pid);
  assert.notEqual(other.pid, reader.pid);
  await parked(sidecar, 3);
});

test('a backend killed while parked is dropped and the next connection logs in anew; a rotated credential never reuses the old login', async (t) => {
  // Created first so that its sessions are ended (hooks run in order) before the database is dropped.
  const login = `leak_login_${randomBytes(4).toString('hex')}`;
  superuserSql(`CREATE ROLE ${login} LOGIN PASSWORD 'first-password'`);
  t.after(() => dropRole(login));
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { database });
  const direct = new pg.Client(directPgOptions(database));
  direct.on('error', () => undefined); // the database is dropped with (force) after the test
  await direct.connect();
  t.after(() => direct.end().catch(() => undefined));

  const first = await agent(t, sidecar);
  const killed = await backendPid(first);
  await first.end();
  await parked(sidecar, 1);
  assert.equal(await scalar(direct, `SELECT pg_terminate_backend(${String(killed)})::text`), 'true');
  await discarded(sidecar, 'closed', 1);
  await parked(sidecar, 0);
  const second = await agent(t, sidecar);
  const fresh = await backendPid(second);
  assert.notEqual(fresh, killed);
  assert.equal(await scalar(second, 'SELECT 1::text'), '1');
  await second.end();
  await parked(sidecar, 1);

  // Rotation: the sidecar's credential files now name another login, then that login's password changes.
  writeFileSync(join(sidecar.dir, 'username'), login);
  writeFileSync(join(sidecar.dir, 'password'), 'first-password');
  const asLogin = await agent(t, sidecar);
  const loginPid = await backendPid(asLogin);
  assert.notEqual(loginPid, fresh, 'another user is another login');
  assert.equal(await scalar(asLogin, 'SELECT session_user::text'), login);
  await asLogin.end();
  await parked(sidecar, 2);
  superuserSql(`ALTER ROLE ${login} PASSWORD 'second-password'`);
  writeFileSync(join(sidecar.dir, 'password'), 'second-password');
  const rotated = await agent(t, sidecar);
  const rotatedPid = await backendPid(rotated);
  assert.notEqual(rotatedPid, loginPid, 'the parked session of the old password is not reused');
  assert.equal(await scalar(rotated, 'SELECT session_user::text'), login);
  await rotated.end();
});

test('a session that loaded a library (an extension function first called) is not reused: DISCARD ALL cannot unload it', async (t) => {
  const database = await createTestDatabase(t, 'CREATE EXTENSION pg_trgm');
  const sidecar = await startTestSidecar(t, { database });
  const first = await agent(t, sidecar);
  const pid = await backendPid(first);
  await first.end();
  await parked(sidecar, 1);
  const loader = await agent(t, sidecar);
  assert.equal(await backendPid(loader), pid, 'reused before the library was loaded');
  assert.equal(await scalar(loader, `SELECT similarity('chaperone', 'chaperon') > 0`), true);
  assert.notEqual(await scalar(loader, `SELECT current_setting('pg_trgm.similarity_threshold', true)`), null);
  await loader.end();
  await discarded(sidecar, 'reset-failed', 1);
  assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0);
  const next = await agent(t, sidecar);
  assert.notEqual(await backendPid(next), pid);
  assert.match(sidecar.logs(), /"msg":"upstream session not reused".*pg_trgm\.similarity_threshold/);
});

test('upstreamReuse.enabled false: every agent connection logs in and its session is closed with it', async (t) => {
  const sidecar = await startTestSidecar(t, { listener: { upstreamReuse: { enabled: false } } });
  const pids: number[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await agent(t, sidecar);
    pids.push(await backendPid(c));
    await c.end();
    await discarded(sidecar, 'disabled', i + 1);
  }
  assert.equal(new Set(pids).size, 3, 'three backends');
  assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0);
  assert.equal(await metric(sidecar, 'chaperone_upstream_reuses_total'), 0);
  assert.equal(await metric(sidecar, 'chaperone_upstream_logins_total'), 3);
});

/** An agent connection on the parked backend `pid` (asserted), which runs `run` and ends cleanly. */
async function onParkedBackend(
  t: TestContext,
  sidecar: RunningTestSidecar,
  pid: number,
  run: (c: pg.Client) => Promise<void>,
): Promise<void> {
  const c = await agent(t, sidecar);
  assert.equal(await backendPid(c), pid, 'the connection reused the parked backend');
  await run(c);
  await c.end();
}

test('a custom setting (SET x.y, set_config, SET LOCAL) leaves a placeholder DISCARD ALL cannot remove: that session is closed, the next one has no such name', async (t) => {
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { database });
  const cases: { readonly name: string; readonly run: (c: pg.Client) => Promise<unknown> }[] = [
    { name: 'myapp.secret', run: (c) => c.query(`SET myapp.secret = 's3cret'`) },
    { name: 'myapp.other', run: (c) => c.query(`SELECT set_config('myapp.other', 'leak', false)`) },
    { name: 'tenant_42.marker', run: (c) => c.query(`BEGIN; SET LOCAL "Tenant_42".marker = 'x'; COMMIT`) },
    { name: 'myapp.defaulted', run: (c) => c.query('SET myapp.defaulted TO DEFAULT') },
  ];
  let closed = 0;
  for (const leak of cases) {
    const first = await agent(t, sidecar);
    const pid = await backendPid(first);
    await first.end();
    await parked(sidecar, 1);
    await onParkedBackend(t, sidecar, pid, async (c) => {
      await leak.run(c);
      assert.notEqual(await scalar(c, `SELECT current_setting('${leak.name}', true)`), null, 'the placeholder exists');
    });
    closed += 1;
    await discarded(sidecar, 'reset-failed', closed);
    assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0, leak.name);
    const next = await agent(t, sidecar);
    assert.notEqual(await backendPid(next), pid, `${leak.name}: not reused`);
    assert.equal(await scalar(next, `SELECT current_setting('${leak.name}', true)`), null, `${leak.name}: unknown`);
    await next.end();
    await parked(sidecar, 1);
    const holder = await agent(t, sidecar); // empties the pool for the next case
    t.after(() => holder.end().catch(() => undefined));
  }
  assert.match(sidecar.logs(), /"msg":"upstream session not reused".*session state left after DISCARD ALL/);
  // A real setting of the server's (not a placeholder) is reset by DISCARD ALL: that session is reused.
  const first = await agent(t, sidecar);
  const pid = await backendPid(first);
  await first.end();
  await parked(sidecar, 1);
  await onParkedBackend(t, sidecar, pid, async (c) => {
    await c.query(`SET work_mem = '9MB'`);
  });
  await parked(sidecar, 1);
  const again = await agent(t, sidecar);
  assert.equal(await backendPid(again), pid);
  assert.equal(await scalar(again, 'SHOW work_mem'), '4MB');
});

test('a session that ran LOAD, a DO block or a set_config of a computed name is never reused: no reset can undo or see what they did', async (t) => {
  // LOAD of a library outside $libdir/plugins needs a superuser: this test's sidecar logs in as one.
  const login = `load_login_${randomBytes(4).toString('hex')}`;
  superuserSql(`CREATE ROLE ${login} LOGIN SUPERUSER PASSWORD 'load-password'`);
  t.after(() => dropRole(login));
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { database });
  writeFileSync(join(sidecar.dir, 'username'), login);
  writeFileSync(join(sidecar.dir, 'password'), 'load-password');
  const cases: { readonly label: string; readonly run: (c: pg.Client) => Promise<unknown>; readonly why: RegExp }[] = [
    // passwordcheck defines no setting in PostgreSQL 15 and installs a hook DISCARD ALL leaves in place.
    { label: 'LOAD', run: (c) => c.query(`/* quiet */ load 'passwordcheck'`), why: /LOAD ran/ },
    {
      label: 'a DO block that makes a placeholder of a computed name',
      run: (c) => c.query(`DO $$ BEGIN PERFORM set_config('dyn' || '.name', 'x', false); END $$`),
      why: /a DO block ran/,
    },
    {
      // Refused by the sidecar (settingRefusal), and still counted: the analysis saw it.
      label: 'set_config of a computed name',
      run: (c) => assert.rejects(c.query(`SELECT set_config(concat('dyn2', '.name'), 'x', false)`), { code: '42501' }),
      why: /set_config with a name that is not a literal/,
    },
  ];
  let closed = 0;
  for (const leak of cases) {
    const first = await agent(t, sidecar);
    assert.equal(await scalar(first, 'SELECT session_user::text'), login);
    const pid = await backendPid(first);
    await first.end();
    await parked(sidecar, 1);
    await onParkedBackend(t, sidecar, pid, async (c) => {
      await leak.run(c);
    });
    closed += 1;
    await discarded(sidecar, 'unresettable', closed);
    assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0, leak.label);
    assert.match(sidecar.logs(), leak.why);
    const next = await agent(t, sidecar);
    assert.notEqual(await backendPid(next), pid, `${leak.label}: not reused`);
    await next.end();
    await parked(sidecar, 1);
    const holder = await agent(t, sidecar); // empties the pool for the next case
    t.after(() => holder.end().catch(() => undefined));
  }
});

test('state DISCARD ALL does end: a sequence cache, a large-object descriptor; with dblink installed no session is reused', async (t) => {
  const database = await createTestDatabase(t, 'CREATE SEQUENCE cached_seq CACHE 20');
  const sidecar = await startTestSidecar(t, { database });
  const first = await agent(t, sidecar);
  const pid = await backendPid(first);
  assert.equal(await scalar(first, `SELECT nextval('cached_seq')::text`), '1'); // this backend holds 2..20
  // A large-object descriptor ends with its transaction: none is left to the next agent.
  const lo = await scalar(first, `SELECT lo_from_bytea(0, 's3cret')::text`);
  await first.query(`BEGIN; SELECT lo_open(${String(lo)}, 262144); COMMIT`);
  await first.end();
  await parked(sidecar, 1);
  const next = await agent(t, sidecar);
  assert.equal(await backendPid(next), pid);
  assert.equal(await scalar(next, `SELECT nextval('cached_seq')::text`), '21', 'the cached values were discarded');
  await assert.rejects(next.query('SELECT loread(0, 6)'), { code: '42704' });
  await next.end();
  await parked(sidecar, 1);

  // dblink's connections (to another server, as another role) survive DISCARD ALL: with it installed, none is reused.
  superuserSql('CREATE EXTENSION dblink', database);
  const withDblink = await agent(t, sidecar);
  assert.equal(await backendPid(withDblink), pid);
  await withDblink.end();
  await discarded(sidecar, 'reset-failed', 1);
  assert.equal(await metric(sidecar, 'chaperone_upstream_connections_parked'), 0);
});

test('a graceful stop ends every parked session with Terminate: the backends are gone, none saw its client vanish', async (t) => {
  const database = await createTestDatabase(t);
  // DEBUG1 makes a backend whose client disappeared without Terminate log "unexpected EOF on client connection".
  superuserSql(`ALTER DATABASE ${database} SET log_min_messages = debug1`);
  const sidecar = await startTestSidecar(t, { database });
  const clients = [await agent(t, sidecar), await agent(t, sidecar)];
  const pids = await Promise.all(clients.map(backendPid));
  for (const c of clients) await c.end();
  await parked(sidecar, 2);
  await sidecar.stop();
  await poll('the parked backends to end', () => {
    const left = superuserSql(`SELECT count(*) FROM pg_stat_activity WHERE pid IN (${pids.join(', ')})`).trim();
    return Promise.resolve(left === '0' ? true : undefined);
  });
  // The control: a client of the same database that vanishes without Terminate is logged so.
  const vanishing = new pg.Client(directPgOptions(database));
  vanishing.on('error', () => undefined);
  await vanishing.connect();
  const vanishedPid = await backendPid(vanishing);
  (vanishing as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
  const eofOf = (pid: number): boolean =>
    readFileSync(postgresEnv().logFile, 'utf8')
      .split('\n')
      .some((l) => l.includes(`[${String(pid)}]`) && l.includes('unexpected EOF on client connection'));
  await poll('the vanished client logged', () => Promise.resolve(eofOf(vanishedPid) ? true : undefined));
  for (const pid of pids) assert.ok(!eofOf(pid), `backend ${String(pid)} got Terminate`);
});
