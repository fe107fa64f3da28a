// A read-only policy against the corpus of tricky writes, through the real sidecar to a real PostgreSQL:
// every write is denied with 42501 before it reaches the server, the next statement on the same
// connection works, every read is allowed, and each statement yields exactly one decision record and one
// outcome record with the same command id. "Never reached the server" is read from the server itself: with
// log_statement = all for the test's database, PostgreSQL's own log holds every read and no denied write.
import { carriesCommandOutcome } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import {
  CORPUS_SCHEMA_SQL,
  READ_CORPUS,
  WRITE_CORPUS,
} from '../../sidecar/src/engines/postgres/analysis/write-corpus.ts';
import { READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, postgresEnv, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { authenticatedClient, cstr, errorFields, i16, i32, msg, parseBackend, query } from './raw-client.ts';

test('read-only policy: every corpus write is denied with 42501, every read allowed, each audited once', async (t) => {
  assert.ok(WRITE_CORPUS.length >= 40, 'the issue asks for at least 40 tricky statements');
  const database = await createTestDatabase(t, CORPUS_SCHEMA_SQL);
  // Every statement of a session of this database goes to the server log (from the next login on).
  superuserSql(`alter database ${database} set log_statement = 'all'`);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:reader' }, { endAfter: t });

  const sent: { sql: string; expect: 'deny' | 'allow' }[] = [];
  for (const entry of WRITE_CORPUS) {
    await assert.rejects(
      client.query(entry.sql),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, '42501', `${entry.why}: ${entry.sql} → ${err.message}`);
        assert.match(
          err.message,
          /^chaperone: (permission denied by policy default\/read-only|changing \w+ is not allowed|this session is read-only|search_path is pinned)/,
        );
        return true;
      },
      `${entry.why}: ${entry.sql} was not denied`,
    );
    sent.push({ sql: entry.sql, expect: 'deny' });
    const after = await client.query<{ ok: number }>('select 1 as ok');
    assert.equal(after.rows[0]?.ok, 1, `connection unusable after denying: ${entry.sql}`);
    sent.push({ sql: 'select 1 as ok', expect: 'allow' });
  }
  for (const entry of READ_CORPUS) {
    await client.query(entry.sql).catch((err: unknown) => {
      assert.fail(`${entry.why}: ${entry.sql} failed: ${String(err)}`);
    });
    sent.push({ sql: entry.sql, expect: 'allow' });
  }

  // The server's own record of what it was asked to run: every statement logged for this database.
  const marker = `select 'end of corpus ${database}' as marker`;
  await client.query(marker);
  const executed = await poll('the server log to show the last statement', () => {
    const logged = statementsLogged(database);
    return Promise.resolve(logged.includes(marker) ? logged : undefined);
  });
  const reachedServer = new Set(executed);
  const allowed = new Set(sent.filter((s) => s.expect === 'allow').map((s) => s.sql));
  // What the server ran besides the allowed statements holds no denied statement, not even inside another.
  const others = executed.filter((text) => !allowed.has(text) && text !== marker);
  t.diagnostic(
    `the server ran ${String(others.length)} statements besides the allowed ones: ${[...new Set(others)].join(' | ')}`,
  );
  assert.deepEqual(
    WRITE_CORPUS.filter((entry) => others.some((text) => text.includes(entry.sql))).map((entry) => entry.sql),
    [],
    'denied statements that PostgreSQL was asked to run',
  );
  assert.deepEqual(
    READ_CORPUS.filter((entry) => !reachedServer.has(entry.sql)).map((entry) => entry.sql),
    [],
    'allowed statements missing from the server log',
  );

  // Nothing the corpus tried changed the data: it is exactly as the schema script left it.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    const accounts = await direct.query('select id, owner, balance::text from accounts order by id');
    assert.deepEqual(accounts.rows, [
      { id: 1, owner: 'alice', balance: '100' },
      { id: 2, owner: 'bob', balance: '2500' },
    ]);
    const log = await direct.query<{ n: string }>('select count(*)::text as n from audit_log');
    assert.equal(log.rows[0]?.n, '0');
    const seq = await direct.query<{ is_called: boolean }>('select is_called from accounts_seq');
    assert.equal(seq.rows[0]?.is_called, false, 'nextval/setval never ran');
  } finally {
    await direct.end();
  }

  // Audit: one session; per statement exactly one decision and one outcome, in order, ids matching.
  sent.push({ sql: marker, expect: 'allow' });
  await client.end();
  await waitFor(() => sidecar.records().some((r) => r.record.type === 'session.end'));
  const records = sidecar.records().map((r) => r.record);
  assert.equal(new Set(sidecar.records().map((r) => r.session.sessionId)).size, 1);
  assert.equal(records[0]?.type, 'session.start');
  assert.equal(records.at(-1)?.type, 'session.end');
  const commands = records.slice(1, -1);
  const decisions = commands.filter((r) => r.type === 'command.decision');
  assert.equal(decisions.length, sent.length, 'a decision per statement');
  assert.equal(commands.filter((r) => carriesCommandOutcome(r)).length, sent.length, 'an outcome per statement');
  for (const [i, s] of sent.entries()) {
    const decision = decisions[i];
    assert.ok(decision !== undefined, s.sql);
    // One record with its outcome (format 3, when the outcome came before the decision was written), or two.
    const outcome =
      decision.outcome === undefined
        ? commands.find((r) => r.type === 'command.outcome' && r.command?.id === decision.command?.id)
        : decision;
    assert.ok(outcome !== undefined, s.sql);
    assert.equal(decision.command?.text, s.sql);
    assert.equal(decision.decision?.result, s.expect, s.sql);
    assert.equal(outcome.outcome?.status, s.expect === 'deny' ? 'denied' : 'success', s.sql);
  }
});

/**
 * The statements PostgreSQL logged for `database` (log_statement = all): the text after `statement: ` or
 * `execute <name>: `, continuation lines (tab-indented) joined back with newlines.
 */
function statementsLogged(database: string): string[] {
  const entries: string[] = [];
  let current: string | undefined;
  for (const line of readFileSync(postgresEnv().logFile, 'utf8').split('\n')) {
    if (/^\d{4}-\d\d-\d\d /.test(line)) {
      if (current !== undefined) entries.push(current);
      const m = new RegExp(
        `^\\S+ \\S+ \\S+ \\[\\d+\\] [^@ ]*@${database} LOG:  (?:statement|execute [^:]*): (.*)$`,
      ).exec(line);
      current = m?.[1];
    } else if (current !== undefined && line.startsWith('\t')) {
      current += `\n${line.slice(1)}`;
    }
  }
  if (current !== undefined) entries.push(current);
  return entries;
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('read-only: a Parse typing its parameter by a user domain (whose CHECK takes a lock) and PREPARE TRANSACTION are refused; built-in types are not', async (t) => {
  const database = await createTestDatabase(
    t,
    `${CORPUS_SCHEMA_SQL}
     CREATE FUNCTION public.lock_it(int) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_try_advisory_lock($1) $$;
     CREATE DOMAIN public.locking AS int CHECK (public.lock_it(VALUE));`,
  );
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  const oid = Number(
    (await direct.query<{ oid: string }>("select 'public.locking'::regtype::oid::text as oid")).rows[0]?.oid,
  );
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  const extended = async (typeOid: number): Promise<{ code: string; message: string }[] | string> => {
    const before = client.receivedLength;
    const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
    client.write(
      Buffer.concat([
        msg('P', cstr(''), cstr('select $1::text as v'), i16(1), i32(typeOid)),
        msg('B', cstr(''), cstr(''), i16(0), i16(1), i32(4), Buffer.from('4242'), i16(0)),
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
    const messages = parseBackend(client.received.subarray(before)).messages;
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    if (errors.length > 0) return errors.map((e) => ({ code: e.code, message: e.message }));
    const row = messages.find((m) => m.type === 'D');
    return row === undefined ? '' : row.body.subarray(6).toString('utf8');
  };
  const refused = await extended(oid);
  assert.ok(Array.isArray(refused), `not refused: ${JSON.stringify(refused)}`);
  assert.deepEqual(
    refused.map((e) => e.code),
    ['42501'],
  );
  assert.match(refused[0]?.message ?? '', /^chaperone: permission denied by policy default\/read-only/);
  const locks = await direct.query("select count(*)::int as n from pg_locks where locktype = 'advisory'");
  assert.equal(locks.rows[0]?.n, 0, 'the domain CHECK ran: an advisory lock is held');
  assert.equal(await extended(23), '4242', 'a built-in parameter type is allowed');
  assert.equal(await extended(0), '4242', 'an unspecified parameter type is allowed');

  // Two-phase commit outlives the session: refused, and nothing is prepared on the server.
  for (const sql of ["begin; prepare transaction 'ro'", "commit prepared 'ro'", "rollback prepared 'ro'"]) {
    const before = client.receivedLength;
    const readyBefore = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
    client.write(query(sql));
    assert.ok(
      await client.until(
        () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > readyBefore,
        30_000,
      ),
    );
    const messages = parseBackend(client.received.subarray(before)).messages;
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    assert.equal(errors[0]?.code, '42501', `${sql}: ${JSON.stringify(errors)}`);
    if (messages.at(-1)?.body.toString() !== 'I') client.write(query('rollback'));
  }
  const prepared = await direct.query('select count(*)::int as n from pg_prepared_xacts');
  assert.equal(prepared.rows[0]?.n, 0);
  client.destroy();
  await direct.end();
});
