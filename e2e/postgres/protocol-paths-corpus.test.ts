// The eleventh session's red team of the PostgreSQL engine at the protocol level: the paths around the SQL
// text, sent byte by byte from a raw socket through the real sidecar to a real PostgreSQL, each attempt on a
// fresh connection and judged by the SERVER's state afterwards (rows and their xmax, the sequence, advisory
// locks, large objects, temporary relations, per-role settings, a file COPY TO PROGRAM would write) and by
// whether the connection is still sane: a plain read answers its own rows, and a refused statement gets the
// sidecar's 42501, not the server's error for the substitute (which is what a response tracker out of step
// with the server shows).
//
// - message types the gate might not treat as statements: FunctionCall ('F') by OID, also after an error
//   before Sync; CopyData/CopyDone/CopyFail outside COPY; Describe/Close/Flush/Sync orderings; a statement
//   name re-Parsed after its decision; a Parse that fails followed by Bind/Execute of the old unnamed
//   statement; parameter types that change which overload the server resolves; a Query with an embedded NUL;
//   lengths off by one, huge or negative; a pipeline split across TCP segments at every byte; messages
//   pipelined after an error before Sync; an Execute with a row limit re-Executed after a policy reload;
//   COPY FROM STDIN through the extended protocol; a COPY the server ends early (bad data) without CopyDone;
// - the startup packet: options=-c that turn the guard off or preload libraries, replication=database,
//   another database, unknown _pq_ options, protocol 3.2;
// - session state the sidecar does not see: set_config through EXECUTE of a prepared statement and through
//   a function, a cursor WITH HOLD whose query writes at FETCH, COPY ... TO PROGRAM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { CORPUS_SCHEMA_SQL } from '../../sidecar/src/engines/postgres/analysis/write-corpus.ts';
import { READ_ONLY, startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from '../masking/bypass-corpus.ts';
import {
  authenticatedClient,
  cstr,
  errorFields,
  i32,
  msg,
  packet,
  parseBackend,
  passwordMessage,
  query,
  RawClient,
  startupMessage,
  SYNC,
} from './raw-client.ts';
import {
  bind,
  close,
  COPY_DONE,
  copyData,
  copyFail,
  describe,
  exchange,
  execute,
  firstColumns,
  FLUSH,
  functionCall,
  parse,
  type Reply,
} from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;
const PROGRAM_FILE = '/tmp/chaperone-redwire-copy-to-program';

/** Owner objects the attempts aim at, on top of the write corpus's schema. */
const SCHEMA_SQL = `${CORPUS_SCHEMA_SQL}
CREATE TABLE public.secrets (id int, secret text);
INSERT INTO public.secrets VALUES (1, 'kept');
-- Two overloads: the int one reads, the text one takes an advisory lock (which a read-only transaction allows).
CREATE FUNCTION public.probe(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
CREATE FUNCTION public.probe(text) RETURNS int LANGUAGE sql AS $$ SELECT pg_advisory_lock(4242); SELECT 1 $$;
-- A plain function that changes the session's role or guard (set_config behind a name the analysis does not know).
CREATE FUNCTION public.become(text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('role', $1, false) $$;
CREATE FUNCTION public.unguard() RETURNS text LANGUAGE sql
  AS $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
`;

/** What the attempts aim at, as the owner and the superuser see it. */
async function serverState(owner: pg.Client, database: string): Promise<unknown> {
  const q = async (sql: string): Promise<unknown[]> => (await owner.query(sql)).rows;
  return {
    accounts: await q('select id, owner, balance::text, xmax::text from accounts order by id'),
    auditLog: await q('select count(*)::int as n from audit_log'),
    secrets: await q('select id, secret, xmax::text from secrets order by id'),
    sequence: await q('select last_value::text, is_called from accounts_seq'),
    advisoryLocks: await q("select count(*)::int as n from pg_locks where locktype = 'advisory'"),
    largeObjects: await q('select count(*)::int as n from pg_largeobject_metadata'),
    temporaryRelations: await q("select count(*)::int as n from pg_class where relpersistence = 't'"),
    preparedTransactions: await q('select count(*)::int as n from pg_prepared_xacts'),
    roleSettings: superuserSql('select setrole, setconfig::text from pg_db_role_setting order by 1', database),
    programFile: existsSync(PROGRAM_FILE),
  };
}

/** The settings of the agent's upstream session that the attempts try to change. */
const SESSION_SQL = `select current_user || ' ' || current_database() || ' ' || current_setting('default_transaction_read_only')
  || ' ' || current_setting('search_path') || ' '
  || coalesce(current_setting('auto_explain.log_min_duration', true), 'no-auto-explain') as s`;

/** A plain read answers its rows, a refused statement the sidecar's 42501: the tracker is in step. */
async function assertSane(client: RawClient, refused: string, session: string): Promise<void> {
  const read = await exchange(client, query(SESSION_SQL), 1);
  assert.equal(read.types, 'T D C Z', `a plain read after the attempt: ${read.types} ${read.codes.join(',')}`);
  assert.deepEqual(firstColumns(read), [session], 'the session settings after the attempt');
  const denied = await exchange(client, query(refused), 1);
  assert.equal(denied.types, 'E Z', `a refused statement after the attempt: ${denied.types}`);
  assert.deepEqual(denied.codes, ['42501'], 'the refusal is the sidecar’s, not the server’s error for the substitute');
  const again = await exchange(client, Buffer.concat([parse('', 'select 7'), bind('', ''), execute(''), SYNC]), 1);
  assert.equal(again.types, '1 2 D C Z', 'the extended protocol after the attempt');
}

interface Attempt {
  readonly name: string;
  /** Runs the attempt on a fresh authenticated connection and asserts on what the client got. */
  readonly run: (client: RawClient, oids: Oids) => Promise<void>;
  /** The connection ends (a FATAL): PostgreSQL ends it too. */
  readonly ends?: true;
}

interface Oids {
  readonly nextval: number;
  readonly setConfig: number;
  readonly loCreat: number;
  readonly advisoryLock: number;
  readonly probeText: number;
}

/** The one refusal an attempt's reply must show, and its ReadyForQuery. */
function assertRefused(reply: Reply, types = 'E Z'): void {
  assert.equal(reply.types, types, `answered ${reply.types} ${reply.errors.join('; ')}`);
  assert.deepEqual(
    reply.codes.filter((c) => c !== ''),
    reply.codes.map(() => '42501'),
    `refused with 42501: ${reply.codes.join(',')}`,
  );
}

/** A malformed frame: the sidecar ends the connection with FATAL 08P01 and forwards none of it. */
async function assertProtocolViolation(client: RawClient, bytes: Buffer): Promise<void> {
  const reply = await exchange(client, bytes, 0);
  assert.ok(reply.closed, 'the connection ends');
  assert.deepEqual(reply.codes, ['08P01'], `FATAL 08P01: ${reply.types}`);
  assert.equal(reply.severity, 'FATAL');
}

const READ_ONLY_ATTEMPTS: readonly Attempt[] = [
  // ---- FunctionCall ('F'): any function by OID, out of sight of statement analysis.
  {
    name: 'FunctionCall nextval by OID',
    run: async (c, o) => assertRefused(await exchange(c, functionCall(o.nextval, ['accounts_seq']), 1)),
  },
  {
    name: 'FunctionCall set_config(default_transaction_read_only, off) by OID',
    run: async (c, o) =>
      assertRefused(await exchange(c, functionCall(o.setConfig, ['default_transaction_read_only', 'off', 'f']), 1)),
  },
  {
    name: 'FunctionCall lo_creat by OID',
    run: async (c, o) => assertRefused(await exchange(c, functionCall(o.loCreat, ['-1']), 1)),
  },
  {
    name: 'FunctionCall pg_advisory_lock by OID, pipelined between Bind and Execute',
    run: async (c, o) => {
      const reply = await exchange(
        c,
        Buffer.concat([parse('', 'select 1'), bind('', ''), functionCall(o.advisoryLock, ['7']), execute(''), SYNC]),
        2,
      );
      assert.equal(reply.types, '1 2 E Z E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      // The refusal fails the implicit transaction as an error of the call would: the portal goes with it.
      assert.deepEqual(reply.codes, ['42501', '34000']);
    },
  },
  {
    name: 'FunctionCall after an error, before Sync (the server discards it)',
    run: async (c, o) => {
      const reply = await exchange(
        c,
        Buffer.concat([bind('', 'no_such_statement'), functionCall(o.nextval, ['accounts_seq']), SYNC]),
        1,
      );
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['26000'], 'the Bind’s own error; the FunctionCall was discarded');
    },
  },
  {
    name: 'FunctionCall sent once the error before Sync has arrived (the server discards it)',
    run: async (c, o) => {
      const error = await exchange(c, Buffer.concat([bind('', 'no_such_statement'), FLUSH]), 0, 'E');
      assert.deepEqual(error.codes, ['26000']);
      const reply = await exchange(c, Buffer.concat([functionCall(o.nextval, ['accounts_seq']), SYNC]), 1);
      assert.equal(reply.types, 'Z', `answered ${reply.types}`);
    },
  },
  {
    name: 'FunctionCall of a user overload (probe(text)) by OID',
    run: async (c, o) => assertRefused(await exchange(c, functionCall(o.probeText, ['x']), 1)),
  },
  // ---- COPY sub-protocol messages outside COPY: PostgreSQL drops them.
  {
    name: 'CopyData holding SQL, CopyDone and CopyFail outside COPY, then a read',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([copyData('delete from audit_log\n'), COPY_DONE, copyFail('x'), query('select 1')]),
        1,
      );
      assert.equal(reply.types, 'T D C Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
    },
  },
  {
    name: 'CopyDone outside COPY between a refused Query and a read',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([query("select nextval('accounts_seq')"), COPY_DONE, query('select 2')]),
        2,
      );
      assert.equal(reply.types, 'E Z T D C Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'COPY FROM STDIN through the extended protocol (\\copy style), data sent anyway',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          parse('', 'copy audit_log (msg) from stdin'),
          bind('', ''),
          execute(''),
          SYNC,
          copyData('written\n'),
          COPY_DONE,
          SYNC,
        ]),
        2,
      );
      assert.equal(reply.types, 'E Z Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'COPY FROM STDIN as a simple Query, data and CopyDone sent anyway',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([query('copy audit_log (msg) from stdin'), copyData('written\n'), COPY_DONE]),
        1,
      );
      assertRefused(reply);
    },
  },
  // ---- Describe / Close / Flush / Sync orderings.
  {
    name: 'Describe and Flush of an unknown statement, then Close of it and Sync',
    run: async (c) => {
      const reply = await exchange(c, Buffer.concat([describe('S', 'nope'), FLUSH, close('S', 'nope'), SYNC]), 1);
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['26000']);
    },
  },
  {
    name: 'Close of a portal, then Execute of it in the same batch',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([parse('s', 'select 1'), bind('p', 's'), close('P', 'p'), execute('p'), SYNC]),
        1,
      );
      assert.equal(reply.types, '1 2 3 E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
    },
  },
  {
    name: 'Sync, Flush and Sync with nothing to answer',
    run: async (c) => {
      const reply = await exchange(c, Buffer.concat([SYNC, FLUSH, SYNC]), 2);
      assert.equal(reply.types, 'Z Z');
    },
  },
  // ---- Statement and portal names the decision was made on.
  {
    name: 'a statement name re-Parsed with a write after its Bind, then Execute of the old portal',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          parse('s', 'select 1'),
          bind('p', 's'),
          close('S', 's'),
          parse('s', "select nextval('accounts_seq')"),
          bind('p', 's'),
          execute('p'),
          SYNC,
        ]),
        1,
      );
      assert.equal(reply.types, '1 2 3 E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'a Parse that fails, then Bind/Execute of the old unnamed statement',
    run: async (c) => {
      assert.equal((await exchange(c, Buffer.concat([parse('', 'select 42'), SYNC]), 1)).types, '1 Z');
      const failed = await exchange(c, Buffer.concat([parse('', 'select * from no_such_table'), SYNC]), 1);
      assert.equal(failed.types, 'E Z', `answered ${failed.types}`);
      const reply = await exchange(c, Buffer.concat([bind('', ''), execute(''), SYNC]), 1);
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
    },
  },
  {
    name: 'a refused Parse over an allowed statement of the same name, then Bind/Execute of the name',
    run: async (c) => {
      assert.equal((await exchange(c, Buffer.concat([parse('keep', 'select 1'), SYNC]), 1)).types, '1 Z');
      const reply = await exchange(
        c,
        Buffer.concat([
          close('S', 'keep'),
          parse('keep', 'select probe($1)', [25]),
          bind('', 'keep', ['x']),
          execute(''),
          SYNC,
        ]),
        1,
      );
      assert.equal(reply.types, '3 E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'Parse with a text parameter type that resolves the locking overload of probe()',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([parse('', 'select probe($1)', [25]), bind('', '', ['7']), execute(''), SYNC]),
        1,
      );
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'Parse with an unknown parameter type in a polymorphic position (coalesce, then a cast)',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          parse('', "select coalesce($1, 'accounts_seq')::regclass, nextval($1::regclass)", [0]),
          bind('', '', ['accounts_seq']),
          execute(''),
          SYNC,
        ]),
        1,
      );
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  // ---- Messages pipelined after an error, before Sync: PostgreSQL skips them all.
  {
    name: 'Parse/Bind/Execute of a write and a Query pipelined after an error, before Sync',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          bind('', 'no_such_statement'),
          parse('w', "select nextval('accounts_seq')"),
          bind('', 'w'),
          execute(''),
          query('delete from audit_log'),
          SYNC,
        ]),
        1,
      );
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['26000']);
      // The Parse was skipped upstream: its name is not a statement there, nor one the gate may run.
      const later = await exchange(c, Buffer.concat([bind('', 'w'), execute(''), SYNC]), 1);
      assert.equal(later.types, 'E Z', `answered ${later.types}`);
    },
  },
  {
    name: 'a pipeline with a FunctionCall split across TCP segments at every byte',
    run: async (c, o) => {
      const bytes = Buffer.concat([
        parse('', "select 'split'"),
        bind('', ''),
        execute(''),
        functionCall(o.nextval, ['accounts_seq']),
        SYNC,
      ]);
      for (let at = 1; at < bytes.length; at++) {
        const reply = await exchange(c, [bytes.subarray(0, at), bytes.subarray(at)], 2);
        assert.equal(reply.types, '1 2 D C E Z Z', `split at ${String(at)}: ${reply.types}`);
        assert.deepEqual(reply.codes, ['42501'], `split at ${String(at)}`);
      }
    },
  },
  // ---- Malformed frames: the sidecar cannot frame the stream as the server would; it ends the connection.
  {
    name: 'a Query with an embedded NUL before a write',
    ends: true,
    run: async (c) => assertProtocolViolation(c, msg('Q', cstr('select 1'), cstr('delete from audit_log'))),
  },
  {
    name: 'a Query whose length is one short (its NUL becomes the next type byte)',
    ends: true,
    run: async (c) => {
      const body = Buffer.from('delete from audit_log', 'utf8');
      await assertProtocolViolation(c, Buffer.concat([Buffer.from('Q'), i32(body.length + 4), body, Buffer.from([0])]));
    },
  },
  {
    name: 'a Query whose length is one long (it swallows the next message’s type byte)',
    ends: true,
    run: async (c) => {
      const body = cstr('select 1');
      await assertProtocolViolation(
        c,
        Buffer.concat([Buffer.from('Q'), i32(body.length + 5), body, query('delete from audit_log')]),
      );
    },
  },
  {
    name: 'a Parse whose length is 2^31-1',
    ends: true,
    run: async (c) => assertProtocolViolation(c, Buffer.concat([Buffer.from('P'), i32(0x7fffffff), cstr('')])),
  },
  {
    name: 'a Query whose length is negative',
    ends: true,
    run: async (c) => assertProtocolViolation(c, Buffer.concat([Buffer.from('Q'), i32(-8), cstr('delete')])),
  },
  {
    name: 'a Bind whose parameter length is negative but not -1',
    ends: true,
    run: async (c) =>
      assertProtocolViolation(
        c,
        Buffer.concat([
          parse('', 'select $1::text'),
          msg('B', cstr(''), cstr(''), Buffer.from([0, 0, 0, 1]), i32(-2), Buffer.from([0, 0])),
          execute(''),
          SYNC,
        ]),
      ),
  },
  // ---- Session state through SQL paths the brief names (prepared statements, cursors, COPY TO PROGRAM).
  {
    name: 'set_config(default_transaction_read_only, off) through EXECUTE of a SQL-prepared statement',
    run: async (c) => {
      assertRefused(await exchange(c, query('prepare g(text) as select set_config($1, $2, false)'), 1));
      assertRefused(await exchange(c, query("execute g('default_transaction_read_only', 'off')"), 1));
    },
  },
  {
    name: 'set_config through Bind of a protocol-prepared statement with the names as parameters',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          parse('g', 'select set_config($1, $2, false)'),
          bind('', 'g', ['default_transaction_read_only', 'off']),
          execute(''),
          SYNC,
        ]),
        1,
      );
      assert.equal(reply.types, 'E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501']);
    },
  },
  {
    name: 'SET ROLE through a user function (set_config(role) inside)',
    run: async (c) => assertRefused(await exchange(c, query("select become('postgres')"), 1)),
  },
  {
    name: 'the guard off through a user function, then a write in the next transaction',
    run: async (c) => assertRefused(await exchange(c, query('select unguard(); delete from audit_log'), 1)),
  },
  {
    name: 'a cursor WITH HOLD whose query writes at FETCH',
    run: async (c) => {
      assertRefused(await exchange(c, query('declare w cursor with hold for select bump(id) from accounts'), 1));
      assertRefused(await exchange(c, query('fetch all from w'), 1));
    },
  },
  {
    name: 'a cursor WITH HOLD declared through Parse/Bind/Execute, fetched through Execute of its name',
    run: async (c) => {
      const reply = await exchange(
        c,
        Buffer.concat([
          parse('', "declare w cursor with hold for select nextval('accounts_seq') from generate_series(1, 3)"),
          bind('', ''),
          execute(''),
          SYNC,
          execute('w'),
          SYNC,
        ]),
        2,
      );
      assert.equal(reply.types, 'E Z E Z', `answered ${reply.types} ${reply.errors.join('; ')}`);
      assert.deepEqual(reply.codes, ['42501', '42501']);
    },
  },
  {
    name: 'COPY ... TO PROGRAM',
    run: async (c) => assertRefused(await exchange(c, query(`copy accounts to program 'touch ${PROGRAM_FILE}'`), 1)),
  },
];

const REFUSED_PROBE = "select nextval('accounts_seq')";

test('protocol paths under a read-only policy: each attempt is refused or dropped, the server state is unchanged, the connection sane', async (t) => {
  const database = await createTestDatabase(t, SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  t.after(() => owner.end().catch(() => undefined));
  const oid = async (signature: string): Promise<number> =>
    Number((await owner.query<{ oid: string }>('select $1::regprocedure::oid::text as oid', [signature])).rows[0]?.oid);
  const oids: Oids = {
    nextval: await oid('nextval(regclass)'),
    setConfig: await oid('set_config(text,text,boolean)'),
    loCreat: await oid('lo_creat(integer)'),
    advisoryLock: await oid('pg_advisory_lock(bigint)'),
    probeText: await oid('public.probe(text)'),
  };
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const first = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
  const opened = await exchange(first, query(SESSION_SQL), 1);
  const [session] = firstColumns(opened);
  first.destroy();
  assert.match(
    session ?? '',
    / on "public" no-auto-explain$/,
    `the read-only guard and the pinned schema: ${opened.errors.join('; ')}`,
  );
  const before = await serverState(owner, database);

  for (const attempt of READ_ONLY_ATTEMPTS) {
    await t.test(attempt.name, async () => {
      const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
      try {
        await attempt.run(client, oids);
        if (attempt.ends === undefined) await assertSane(client, REFUSED_PROBE, session ?? '');
      } finally {
        client.destroy();
      }
      assert.deepEqual(await serverState(owner, database), before, 'the server state changed');
    });
  }
  await owner.end();
});

test('startup packets under a read-only policy: refused, or the pins hold in the session they open', async (t) => {
  const database = await createTestDatabase(t, SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const direct = directPgOptions(database);

  const refused: readonly { name: string; parameters: Record<string, string>; code: string }[] = [
    {
      name: 'options -c default_transaction_read_only=off',
      parameters: { options: '-c default_transaction_read_only=off' },
      code: '42501',
    },
    {
      name: 'options --default-transaction-read-only=off',
      parameters: { options: '--default-transaction-read-only=off' },
      code: '42501',
    },
    {
      name: 'options -c search_path=evil,public',
      parameters: { options: '-c search_path=evil,public' },
      code: '0A000',
    },
    { name: 'options -c role=postgres', parameters: { options: '-c role=postgres' }, code: '42501' },
    { name: 'replication=database', parameters: { replication: 'database' }, code: '42501' },
    {
      name: 'options -c session_replication_role=replica',
      parameters: { options: '-c session_replication_role=replica' },
      code: '42501',
    },
  ];
  for (const r of refused) {
    await t.test(`${r.name}: FATAL ${r.code}`, async () => {
      const client = await RawClient.connect(sidecar.host, sidecar.port);
      try {
        client.write(startupMessage({ user: 'agent', database, ...r.parameters }));
        await client.untilMessage('R', TIMEOUT_MS);
        // Settings a read-only session refuses are known to be refused once the token names the identity.
        const reply = await exchange(client, client.serverEnded ? Buffer.alloc(0) : passwordMessage(token), 0);
        const codes = parseBackend(client.received, 0, true)
          .messages.filter((m) => m.type === 'E')
          .map((m) => errorFields(m.body));
        assert.ok(reply.closed);
        assert.deepEqual(
          codes.map((e) => `${e.severity} ${e.code}`),
          [`FATAL ${r.code}`],
          codes.map((e) => e.message).join('; '),
        );
      } finally {
        client.destroy();
      }
    });
  }

  const sessions: readonly { name: string; startup: Buffer; negotiates?: true }[] = [
    {
      name: 'options -c session_preload_libraries=auto_explain (dropped)',
      startup: startupMessage({ user: 'agent', database, options: '-c session_preload_libraries=auto_explain' }),
    },
    {
      name: 'options -c local_preload_libraries=auto_explain -c lc_messages=C (dropped)',
      startup: startupMessage({ user: 'agent', database, options: '-c local_preload_libraries=auto_explain' }),
    },
    { name: 'database=postgres (another database)', startup: startupMessage({ user: 'agent', database: 'postgres' }) },
    {
      name: 'an unknown _pq_ protocol option (negotiated away)',
      startup: startupMessage({ user: 'agent', database, '_pq_.chaperone_probe': 'on' }),
      negotiates: true,
    },
    {
      name: 'protocol 3.2 (negotiated down to 3.0)',
      startup: packet(
        i32((3 << 16) | 2),
        cstr('user'),
        cstr('agent'),
        cstr('database'),
        cstr(database),
        Buffer.from([0]),
      ),
      negotiates: true,
    },
  ];
  for (const s of sessions) {
    await t.test(`${s.name}: the session opens with the pins`, async () => {
      const client = await RawClient.connect(sidecar.host, sidecar.port);
      try {
        client.write(s.startup);
        assert.ok(await client.untilMessage('R', TIMEOUT_MS), 'asked for the password');
        const negotiated = parseBackend(client.received, 0, true).messages.some((m) => m.type === 'v');
        assert.equal(negotiated, s.negotiates === true, 'NegotiateProtocolVersion');
        const login = await exchange(client, passwordMessage(token), 1);
        assert.deepEqual(login.codes, []);
        const key = login.messages.find((m) => m.type === 'K');
        assert.equal(key?.body.length, 8, 'a protocol 3.0 cancel key');
        const [settings] = firstColumns(await exchange(client, query(SESSION_SQL), 1));
        assert.equal(settings, `${direct.user} ${database} on "public" no-auto-explain`);
        await assertSane(client, REFUSED_PROBE, settings);
      } finally {
        client.destroy();
      }
    });
  }
});

/** Allows everything, writes included, except the secrets table; COPY FROM into accounts is allowed. */
const TABLE_DENIED: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    { name: 'no-secrets', decision: 'deny', match: { sql: { relations: ['public.secrets'] } } },
    { name: 'the-rest', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
};

test('protocol paths under a policy that denies a table: COPY the server ends early, re-Execute after a reload', async (t) => {
  const database = await createTestDatabase(t, SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { team: TABLE_DENIED }, database });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  t.after(() => owner.end().catch(() => undefined));
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:writer' });
  const refusedProbe = 'select * from secrets';
  const secrets = async (): Promise<unknown> => (await owner.query('select id, secret, xmax::text from secrets')).rows;
  const kept = await secrets();

  await t.test('COPY of the denied table from STDIN, data sent anyway', async () => {
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
    try {
      const session = firstColumns(await exchange(client, query(SESSION_SQL), 1))[0] ?? '';
      assertRefused(
        await exchange(
          client,
          Buffer.concat([query('copy secrets from stdin'), copyData('2\tstolen\n'), COPY_DONE]),
          1,
        ),
      );
      await assertSane(client, refusedProbe, session);
    } finally {
      client.destroy();
    }
    assert.deepEqual(await secrets(), kept);
  });

  await t.test('a COPY the server ends on bad data, no CopyDone: the next batches are tracked', async () => {
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
    try {
      const session = firstColumns(await exchange(client, query(SESSION_SQL), 1))[0] ?? '';
      const copy = await exchange(client, Buffer.concat([query('copy accounts from stdin'), copyData('x\ty\tz\n')]), 1);
      assert.equal(copy.types, 'G E Z', `answered ${copy.types}`);
      assert.deepEqual(copy.codes, ['22P02']);
      // No CopyDone: the client moves on. Syncs must be answered and tracked as usual.
      const batch = await exchange(client, Buffer.concat([parse('', 'select 5'), bind('', ''), execute(''), SYNC]), 1);
      assert.equal(batch.types, '1 2 D C Z');
      const failed = await exchange(client, Buffer.concat([bind('', 'no_such_statement'), SYNC]), 1);
      assert.deepEqual(failed.codes, ['26000']);
      await assertSane(client, refusedProbe, session);
      // The stray CopyDone that libpq sends after such an error changes nothing either.
      const late = await exchange(client, Buffer.concat([COPY_DONE, query('select 6')]), 1);
      assert.equal(late.types, 'T D C Z');
      await assertSane(client, refusedProbe, session);
    } finally {
      client.destroy();
    }
    assert.deepEqual(await secrets(), kept);
  });

  await t.test('messages other than COPY data during COPY FROM STDIN', async () => {
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
    const accounts = (await owner.query('select count(*)::int as n from accounts')).rows;
    try {
      const copy = await exchange(
        client,
        Buffer.concat([
          query('copy accounts from stdin'),
          copyData('9\tcopied\t1\n'),
          query('delete from secrets'),
          query('delete from accounts'),
        ]),
        1,
      );
      // As PostgreSQL: the first message that is not COPY data ends the connection (08P01, protocol
      // synchronization lost); the sidecar refused both Queries, and the server ran neither.
      assert.ok(copy.closed, `the connection ends: ${copy.types}`);
      assert.equal(copy.codes[0], '08P01', copy.errors.join('; '));
    } finally {
      client.destroy();
    }
    assert.deepEqual(await secrets(), kept);
    assert.deepEqual((await owner.query('select count(*)::int as n from accounts')).rows, accounts);
  });

  await t.test('SQL EXECUTE of a protocol-prepared statement after a reload that denies its table', async () => {
    const everything = await writePolicyBundle(sidecar.bundleDir, 'team', {
      ...TABLE_DENIED,
      rules: [{ name: 'everything', decision: 'allow', match: {} }],
    });
    await poll('the sidecar to load the allow-all bundle', () =>
      Promise.resolve(sidecar.logs().includes(everything) ? true : undefined),
    );
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
    try {
      const prepared = await exchange(
        client,
        Buffer.concat([parse('s', 'delete from secrets'), parse('r', 'select secret from secrets'), SYNC]),
        1,
      );
      assert.equal(prepared.types, '1 1 Z');
      const sqlPrepared = await exchange(client, query('prepare q as select secret from secrets'), 1);
      assert.equal(sqlPrepared.types, 'C Z', sqlPrepared.errors.join('; '));
      // A digest not loaded before (TABLE_DENIED's is in the logs since startup).
      const denied = await writePolicyBundle(sidecar.bundleDir, 'team', {
        ...TABLE_DENIED,
        rules: [
          ...TABLE_DENIED.rules,
          { name: 'after-reload', decision: 'deny', match: { sql: { relations: ['x.y'] } } },
        ],
      });
      await poll('the sidecar to load the table-denying bundle', () =>
        Promise.resolve(sidecar.logs().includes(denied) ? true : undefined),
      );
      // Bind/Execute is decided again as the statement it runs; SQL EXECUTE of the name must be too.
      const executed = await exchange(client, Buffer.concat([bind('', 's'), execute(''), SYNC]), 1);
      assert.deepEqual(executed.codes, ['42501'], executed.errors.join('; '));
      for (const sql of [
        'execute s',
        'explain (analyze) execute s',
        'execute r',
        'create table stolen as execute r',
        // A SQL PREPARE is resolved: CREATE TABLE AS EXECUTE of it is decided with the relations it reads.
        'execute q',
        'create temp table stolen as execute q',
      ]) {
        const reply = await exchange(client, query(sql), 1);
        assert.deepEqual(reply.codes, ['42501'], `${sql}: ${reply.types} ${reply.errors.join('; ')}`);
      }
      const session = firstColumns(await exchange(client, query(SESSION_SQL), 1))[0] ?? '';
      await assertSane(client, refusedProbe, session);
    } finally {
      client.destroy();
    }
    assert.deepEqual(await secrets(), kept);
    assert.deepEqual((await owner.query("select count(*)::int as n from pg_class where relname = 'stolen'")).rows, [
      { n: 0 },
    ]);
  });

  await t.test('an Execute with a row limit, re-Executed after a reload that refuses it', async () => {
    const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
    const sequence = async (): Promise<unknown> =>
      (await owner.query('select last_value::text, is_called from accounts_seq')).rows[0];
    assert.deepEqual(await sequence(), { last_value: '1', is_called: false }, 'a fresh sequence');
    try {
      assert.equal((await exchange(client, query('begin'), 1)).types, 'C Z');
      client.write(
        Buffer.concat([
          parse('', "select nextval('accounts_seq') from generate_series(1, 5)"),
          bind('p', ''),
          execute('p', 1),
          FLUSH,
        ]),
      );
      assert.ok(await client.untilMessage('s', TIMEOUT_MS), 'PortalSuspended after one row');
      const digest = await writePolicyBundle(sidecar.bundleDir, 'team', READ_ONLY);
      await poll('the sidecar to load the read-only bundle', () =>
        Promise.resolve(sidecar.logs().includes(digest) ? true : undefined),
      );
      const again = await exchange(client, Buffer.concat([execute('p', 0), SYNC]), 1);
      assert.deepEqual(again.codes, ['42501'], `answered ${again.types}`);
      assert.equal((await exchange(client, query('rollback'), 1)).types, 'C Z');
    } finally {
      client.destroy();
    }
    assert.deepEqual(await sequence(), { last_value: '1', is_called: true }, 'one nextval: the first row only');
  });
  await owner.end();
});

test('a masking session: FunctionCall and COPY paths keep the response tracker in step, no value in clear', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:masked' });
  const read = Buffer.concat([
    parse('', 'select email, ssn from customers order by id'),
    bind('', ''),
    execute(''),
    SYNC,
  ]);
  const attempts: readonly { name: string; bytes: Buffer; readies: number; then?: Buffer }[] = [
    {
      name: 'FunctionCall after an error, before Sync',
      bytes: Buffer.concat([bind('', 'no_such_statement'), functionCall(1574, ['x']), SYNC]),
      readies: 1,
    },
    {
      name: 'FunctionCall sent once the error before Sync has arrived',
      bytes: Buffer.concat([bind('', 'no_such_statement'), FLUSH]),
      readies: 0,
      then: Buffer.concat([functionCall(1574, ['x']), SYNC]),
    },
    {
      name: 'a COPY, bad data and a Sync in one write (the server answers the Sync only if the COPY failed first)',
      bytes: Buffer.concat([query('copy products from stdin'), copyData('x\n'), SYNC]),
      readies: 1,
    },
    {
      name: 'a COPY the server ends on bad data, then a Sync with no CopyDone',
      bytes: Buffer.concat([query('copy products from stdin'), copyData('x\n')]),
      readies: 1,
    },
  ];
  for (const attempt of attempts) {
    await t.test(attempt.name, async () => {
      const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
      try {
        await exchange(client, attempt.bytes, attempt.readies, attempt.readies === 0 ? 'E' : undefined);
        if (attempt.then !== undefined) await exchange(client, attempt.then, 1);
        for (let i = 0; i < 3; i++) {
          const reply = await exchange(client, [SYNC, read], 2);
          const bytes = Buffer.concat(reply.messages.map((m) => m.body));
          assert.equal(leakIn(bytes), undefined, `round ${String(i)}: a masked value in clear (${reply.types})`);
          assert.equal(reply.types, 'Z 1 2 D D C Z', `round ${String(i)}`);
        }
      } finally {
        client.destroy();
      }
    });
  }
});
