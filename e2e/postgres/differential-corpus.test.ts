// The differential corpus (issue 9) through a real sidecar to a real PostgreSQL 15, under a read-only
// policy on public: every attempt is either refused with 42501 before it reaches the server or runs and
// is recorded with exactly the text sent, and the owner's view of the database (every table, sequence,
// large object, setting, role and object) is the same afterwards. Then the database-enforced layer: with
// a least-privilege upstream login, PostgreSQL itself refuses the writes no text analysis can see (owner
// functions behind views, functional notation, overloaded built-in names and operators).
import { carriesCommandOutcome } from '@chaperone/api';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import pg from 'pg';
import type { AccessPolicySpec, AuditRecord } from '@chaperone/api';
import {
  DIFFERENTIAL_CORPUS,
  DIFFERENTIAL_SCHEMA_SQL,
  OWNER_OBJECTS_SQL,
  OWNER_OBJECT_WRITES,
} from '../../sidecar/src/engines/postgres/analysis/differential-corpus.ts';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import { createReaderLogin, createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, postgresEnv, testDir } from '../harness/env.ts';

/** Reads of public (and the catalogs) without side effects; set, transaction control and DEALLOCATE. */
const READ_PUBLIC: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'reads-of-public',
      decision: 'allow',
      match: {
        sql: {
          statementKinds: ['select', 'show', 'explain', 'set', 'transaction', 'prepare'],
          relations: ['public.*', 'pg_catalog.*', 'information_schema.*'],
          sideEffects: false,
        },
      },
    },
  ],
  defaultDecision: 'deny',
};

/** Files the corpus tries to make the server write. */
const SERVER_FILES = [
  '/tmp/chaperone-differential-program',
  '/tmp/chaperone-differential-copy',
  '/tmp/chaperone-differential-lo',
];

/**
 * Everything an attempt could change, as the owner (and the superuser, for server-wide state) sees it:
 * each table's rows, each sequence's state, large objects, per-role and per-database settings, roles,
 * the objects of the database with their privileges and comments, prepared transactions and slots.
 */
async function databaseState(database: string): Promise<Record<string, unknown>> {
  const owner = new pg.Client(directPgOptions(database));
  const env = postgresEnv();
  const superuser = new pg.Client({ host: env.socketDir, port: env.port, user: 'postgres', database });
  await owner.connect();
  await superuser.connect();
  try {
    const state: Record<string, unknown> = {};
    const tables = await owner.query<{ name: string }>(
      `select format('%I.%I', n.nspname, c.relname) as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
       order by 1`,
    );
    for (const { name } of tables.rows) {
      const rows = await owner.query<{ digest: string; n: string }>(
        `select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) as digest, count(*)::text as n from ${name} t`,
      );
      state[`table ${name}`] = rows.rows[0];
    }
    const sequences = await owner.query<{ name: string }>(
      `select format('%I.%I', schemaname, sequencename) as name from pg_sequences order by 1`,
    );
    for (const { name } of sequences.rows) {
      state[`sequence ${name}`] = (await owner.query(`select last_value::text, is_called from ${name}`)).rows[0];
    }
    const serverWide: [string, string][] = [
      ['large objects', 'select oid::text from pg_largeobject_metadata order by 1'],
      // Settings in this database, and those everywhere of the roles an attempt could alter (the owner login,
      // this database's reader): other test files set their own databases' and roles' settings at the same time.
      [
        'settings',
        `select setdatabase::text, setrole::text, setconfig::text from pg_db_role_setting
         where setdatabase = (select oid from pg_database where datname = current_database())
            or (setdatabase = 0 and setrole in (select oid from pg_roles
                                                 where rolname in ('${directPgOptions(database).user}', '${database}_reader')))
         order by 1, 2`,
      ],
      // Roles are server-wide and other test files create and drop plain login roles on this server at the
      // same time; the owner login cannot create roles (no CREATEROLE), so what an attempt could change is an
      // existing role's privileges: every role holding one is compared, plain roles are left out.
      [
        'privileged roles',
        `select rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin from pg_roles
         where rolsuper or rolcreaterole or rolcreatedb or rolreplication or rolbypassrls order by 1`,
      ],
      ['file settings', 'select name, setting from pg_file_settings order by 1, 2'],
      ['prepared transactions', 'select gid from pg_prepared_xacts order by 1'],
      ['replication slots', 'select slot_name from pg_replication_slots order by 1'],
      [
        'relations',
        `select c.oid::regclass::text, c.relkind, c.relacl::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') order by 1`,
      ],
      [
        'functions',
        `select p.oid::regprocedure::text, p.proacl::text, md5(p.prosrc) from pg_proc p
         where p.pronamespace not in ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) order by 1`,
      ],
      ['schemas', 'select nspname, nspacl::text from pg_namespace order by 1'],
      ['triggers', 'select tgname from pg_trigger where not tgisinternal order by 1'],
      ['rules', "select rulename from pg_rewrite where rulename <> '_RETURN' order by 1"],
      [
        'comments',
        'select objoid::text, classoid::text, description from pg_description where objoid >= 16384 order by 1, 2',
      ],
      ['types', "select oid::regtype::text from pg_type where typnamespace = 'public'::regnamespace order by 1"],
      [
        'operators',
        "select oid::regoperator::text from pg_operator where oprnamespace = 'public'::regnamespace order by 1",
      ],
      ['default privileges', 'select defaclrole::text, defaclacl::text from pg_default_acl order by 1'],
    ];
    for (const [name, sql] of serverWide) state[name] = (await superuser.query(sql)).rows;
    return state;
  } finally {
    await owner.end();
    await superuser.end();
  }
}

interface SentQuery {
  readonly sql: string;
  readonly expect: 'deny' | 'allow';
}

async function settledRecords(records: () => { record: AuditRecord }[], ends: number): Promise<AuditRecord[]> {
  const deadline = Date.now() + 20_000;
  while (records().filter((r) => r.record.type === 'session.end').length < ends) {
    if (Date.now() > deadline) throw new Error('session.end not recorded in time');
    await new Promise((r) => setTimeout(r, 50));
  }
  return records().map((r) => r.record);
}

/**
 * Per query sent: one decision with the exact text and verdict, in order, and its outcome (in the decision
 * record itself when the outcome came before it was written, format 3; otherwise a command.outcome).
 */
function assertRecorded(records: readonly AuditRecord[], sent: readonly SentQuery[]): void {
  const decisions = records.filter((r) => r.type === 'command.decision');
  assert.equal(decisions.length, sent.length, 'one decision per query');
  assert.equal(records.filter((r) => carriesCommandOutcome(r)).length, sent.length, 'one outcome per query');
  for (const [i, s] of sent.entries()) {
    const decision = decisions[i];
    assert.ok(decision !== undefined, s.sql);
    const outcome =
      decision.outcome === undefined
        ? records.find((r) => r.type === 'command.outcome' && r.command?.id === decision.command?.id)
        : decision;
    assert.equal(decision.command?.text, s.sql, 'recorded with exactly the text sent');
    assert.equal(decision.decision?.result, s.expect, s.sql);
    assert.equal(outcome?.outcome?.status, s.expect === 'deny' ? 'denied' : 'success', s.sql);
  }
}

function agentClient(t: TestContext, sidecar: SidecarProcess): Promise<pg.Client> {
  return connectAgent(sidecar, { sub: 'system:serviceaccount:ci:reader' }, { endAfter: t });
}

test('owner login, read-only policy: each differential attempt is refused with 42501 or runs as recorded, and nothing changes', async (t) => {
  assert.ok(DIFFERENTIAL_CORPUS.length >= 150, 'the issue asks for at least 150 new attempts');
  for (const f of SERVER_FILES) assert.equal(existsSync(f), false, `${f} exists before the run`);
  const database = await createTestDatabase(t, DIFFERENTIAL_SCHEMA_SQL);
  const before = await databaseState(database);
  const sidecar = await startTestSidecar(t, { policies: { 'read-public': READ_PUBLIC }, database });

  // The owner listens for the corpus's notifications: none may arrive.
  const listener = new pg.Client(directPgOptions(database));
  await listener.connect();
  const notifications: string[] = [];
  listener.on('notification', (n) => notifications.push(n.channel));
  await listener.query('LISTEN chaperone');

  const client = await agentClient(t, sidecar);
  const sent: SentQuery[] = [];
  for (const attempt of DIFFERENTIAL_CORPUS) {
    const label = `${attempt.class}: ${attempt.why}: ${attempt.sql}`;
    if (attempt.expect === 'deny') {
      await assert.rejects(
        client.query(attempt.sql),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, '42501', `${label} → ${err.message}`);
          assert.match(err.message, /^chaperone: /, label);
          return true;
        },
        `${label} was not refused`,
      );
    } else {
      await client.query(attempt.sql).catch((err: unknown) => assert.fail(`${label} failed: ${String(err)}`));
    }
    sent.push({ sql: attempt.sql, expect: attempt.expect });
  }
  const alive = await client.query<{ ok: number }>('select 1 as ok');
  assert.equal(alive.rows[0]?.ok, 1, 'the session is usable after the whole corpus');
  sent.push({ sql: 'select 1 as ok', expect: 'allow' });
  await client.end();

  await listener.query('SELECT 1');
  await listener.end();
  assert.deepEqual(notifications, [], 'no notification reached the owner');
  assert.deepEqual(await databaseState(database), before, 'the owner sees the database unchanged');
  for (const f of SERVER_FILES) assert.equal(existsSync(f), false, `${f} was written`);

  const records = await settledRecords(() => sidecar.records(), 1);
  assertRecorded(records, sent);
});

test('least-privilege login: PostgreSQL refuses the writes the analysis cannot see, and those the policy lets through', async (t) => {
  const database = await createTestDatabase(t, `${DIFFERENTIAL_SCHEMA_SQL}\n${OWNER_OBJECTS_SQL}`);
  const env = postgresEnv();
  // What docs/postgres-engine.md tells a platform team to create: a login that can only read, whose
  // transactions are read-only by default (the sidecar refuses turning that off).
  const { user: role, password } = createReaderLogin(t, database);
  const before = await databaseState(database);

  const upstream = { port: env.port, database, password, caFile: env.caFile };
  // The owner as the resource credential, the reader as its least-privilege one: a read-only policy's
  // sessions log in as the reader.
  const owner = directPgOptions(database);
  const readOnly = await spawnSidecar({
    dir: `${testDir(t)}-read-public`,
    upstream: { ...upstream, user: owner.user, password: owner.password, readOnly: { user: role, password } },
    policies: { 'read-public': READ_PUBLIC },
  });
  t.after(() => readOnly.stop());
  const client = await agentClient(t, readOnly);
  const login = await client.query<{ u: string }>('SELECT current_user AS u');
  assert.equal(login.rows[0]?.u, role, 'the read-only session logs in with the least-privilege credential');
  for (const attempt of OWNER_OBJECT_WRITES) {
    const label = `${attempt.why}: ${attempt.sql}`;
    await assert.rejects(
      client.query(attempt.sql),
      (err: Error & { code?: string }) => {
        // Allowed by the analysis and the policy; refused by PostgreSQL itself.
        assert.doesNotMatch(err.message, /^chaperone: /, label);
        assert.ok(err.code === '25006' || err.code === '42501', `${label} → ${err.code ?? ''} ${err.message}`);
        return true;
      },
      `${label} was not refused by PostgreSQL`,
    );
  }
  // The guard cannot be switched off through the sidecar.
  await assert.rejects(client.query('SET default_transaction_read_only = off'), { code: '42501' });
  const reads = await client.query<{ n: string }>('select count(*)::text as n from accounts');
  assert.equal(reads.rows[0]?.n, '2', 'reads still work');
  await client.end();

  // Even a policy that allows everything cannot make a read-only login write (a resource whose only
  // credential is the reader).
  const allowAll = await spawnSidecar({
    dir: `${testDir(t)}-allow-all`,
    upstream: { ...upstream, user: role },
    policies: { 'allow-all': ALLOW_ALL },
  });
  t.after(() => allowAll.stop());
  const writer = await agentClient(t, allowAll);
  for (const sql of ['DELETE FROM audit_log', "INSERT INTO accounts VALUES (9, 'x', 0)", 'SELECT bump(1)']) {
    await assert.rejects(writer.query(sql), (err: Error & { code?: string }) => {
      assert.ok(err.code === '25006' || err.code === '42501', `${sql} → ${err.code ?? ''} ${err.message}`);
      assert.doesNotMatch(err.message, /^chaperone: /);
      return true;
    });
  }
  await writer.end();
  assert.deepEqual(await databaseState(database), before, 'nothing was written');
});

test('psql meta-commands: \\gexec, \\copy and \\lo_import are decided like any other statement', async (t) => {
  const database = await createTestDatabase(t, DIFFERENTIAL_SCHEMA_SQL);
  const before = await databaseState(database);
  const sidecar = await startTestSidecar(t, { policies: { 'read-public': READ_PUBLIC }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const script = [
    "SELECT 'DELETE FROM audit_log' \\gexec",
    "SELECT format('UPDATE accounts SET balance = %s', 0) \\gexec",
    "\\copy accounts from '/etc/hostname'",
    "\\lo_import '/etc/hostname'",
    "SELECT 'still here';",
  ].join('\n');
  const r = spawnSync('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=0'], {
    env: sidecar.libpqEnv(token),
    input: script,
    encoding: 'utf8',
  });
  assert.match(r.stdout, /still here/, r.stderr);
  // Two statements from \gexec and the COPY from \copy refused by policy; \lo_import's fast-path calls refused.
  assert.equal((r.stderr.match(/permission denied by policy/g) ?? []).length, 3, r.stderr);
  assert.match(r.stderr, /fast-path function call interface is not allowed/);
  assert.deepEqual(await databaseState(database), before, 'nothing was written');
});
