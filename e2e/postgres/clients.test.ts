// Native clients through the sidecar, unchanged: node-postgres (simple and extended protocol, named
// prepared statements, transactions, savepoints, LISTEN/NOTIFY), psql (COPY in and out, cancel of a
// pg_sleep with Ctrl-C, a 1,000,000-row result) and pgbench (initialisation with COPY, and -S with the
// simple, extended and prepared protocols).
import { carriesCommandOutcome } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import pg from 'pg';
import { ALLOW_ALL, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';

async function sidecarFor(
  t: Parameters<typeof startTestSidecar>[0],
): Promise<{ sidecar: RunningTestSidecar; token: string; database: string }> {
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:runner' }, { expiresIn: 3600 });
  return { sidecar, token, database };
}

function client(sidecar: RunningTestSidecar, token: string): pg.Client {
  return new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'agent' });
}

test('node-postgres: simple and extended protocol, prepared statements, transactions and savepoints', async (t) => {
  const { sidecar, token } = await sidecarFor(t);
  const c = client(sidecar, token);
  await c.connect();
  await c.query('create table items (id int primary key, name text, price numeric)');
  // Extended protocol with bound parameters, and a named prepared statement used several times.
  await c.query('insert into items values ($1, $2, $3)', [1, 'apple', '1.50']);
  for (const [id, name] of [
    [2, 'pear'],
    [3, 'plum'],
  ] as const) {
    await c.query({
      name: 'insert-item',
      text: 'insert into items (id, name, price) values ($1, $2, 2)',
      values: [id, name],
    });
  }
  await c.query('begin');
  await c.query("update items set price = 9 where name = 'apple'");
  await c.query('savepoint s1');
  await c.query('delete from items');
  await c.query('rollback to savepoint s1');
  await c.query('commit');
  const rows = await c.query<{ id: number; name: string; price: string }>(
    'select id, name, price::text from items order by id',
  );
  assert.deepEqual(rows.rows, [
    { id: 1, name: 'apple', price: '9' },
    { id: 2, name: 'pear', price: '2' },
    { id: 3, name: 'plum', price: '2' },
  ]);
  // A failed statement in a transaction, then rollback: the session recovers.
  await c.query('begin');
  await assert.rejects(c.query('select 1/0'), (err: Error & { code?: string }) => err.code === '22012');
  await assert.rejects(c.query('select 1'), (err: Error & { code?: string }) => err.code === '25P02');
  await c.query('rollback');
  assert.equal((await c.query<{ n: string }>('select count(*)::text as n from items')).rows[0]?.n, '3');
  await c.end();

  // The prepared insert was audited with its bound parameters, once per execution.
  const decisions = (await sidecar.settledRecords()).filter(
    (r) => r.record.type === 'command.decision' && r.record.command?.text?.includes('insert into items (id, name'),
  );
  assert.deepEqual(
    decisions.filter((d) => d.record.command?.parameters !== undefined).map((d) => d.record.command?.parameters),
    [
      ['2', 'pear'],
      ['3', 'plum'],
    ],
  );
});

test('node-postgres: LISTEN/NOTIFY notifications are relayed', async (t) => {
  const { sidecar, token } = await sidecarFor(t);
  const listener = client(sidecar, token);
  const notifier = client(sidecar, token);
  await Promise.all([listener.connect(), notifier.connect()]);
  const received = new Promise<pg.Notification>((resolve) => listener.once('notification', resolve));
  await listener.query('listen jobs');
  await notifier.query("notify jobs, 'build 42 finished'");
  const n = await received;
  assert.equal(n.channel, 'jobs');
  assert.equal(n.payload, 'build 42 finished');
  await Promise.all([listener.end(), notifier.end()]);
});

test('psql: COPY in and out, NoticeResponse relayed, and a 1,000,000-row result', async (t) => {
  const { sidecar, token } = await sidecarFor(t);
  const env = sidecar.libpqEnv(token);
  const copyIn = spawnSync(
    'psql',
    ['-X', '-v', 'ON_ERROR_STOP=1', '-c', 'create table words (w text, n int)', '-c', '\\copy words from stdin'],
    {
      env,
      input: 'alpha\t1\nbeta\t2\ngamma\t3\n\\.\n',
      encoding: 'utf8',
    },
  );
  assert.equal(copyIn.status, 0, copyIn.stderr);
  assert.match(copyIn.stdout, /COPY 3/);
  const copyOut = spawnSync(
    'psql',
    ['-X', '-v', 'ON_ERROR_STOP=1', '-c', 'copy (select w, n from words order by n) to stdout with (format csv)'],
    {
      env,
      encoding: 'utf8',
    },
  );
  assert.equal(copyOut.status, 0, copyOut.stderr);
  assert.equal(copyOut.stdout, 'alpha,1\nbeta,2\ngamma,3\n');

  const notice = spawnSync('psql', ['-X', '-c', "do $$ begin raise notice 'hello from plpgsql'; end $$"], {
    env,
    encoding: 'utf8',
  });
  assert.match(notice.stderr, /NOTICE:\s+hello from plpgsql/);

  const big = spawnSync('psql', ['-X', '-A', '-t', '-c', 'select g, md5(g::text) from generate_series(1, 1000000) g'], {
    env,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  assert.equal(big.status, 0, big.stderr);
  const lines = big.stdout.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1_000_000);
  assert.equal(lines.at(-1), '1000000|8155bc545f84d9652f1012ef2bdfb6eb');
});

test('psql: Ctrl-C sends a CancelRequest that really cancels pg_sleep', async (t) => {
  const { sidecar, token, database } = await sidecarFor(t);
  const child = spawn('psql', ['-X', '-c', 'select pg_sleep(60)'], {
    env: sidecar.libpqEnv(token),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  // Interrupt once PostgreSQL reports the statement running (Ctrl-C before that would cancel nothing).
  const observer = new pg.Client(directPgOptions(database));
  await observer.connect();
  try {
    await poll('PostgreSQL to run the pg_sleep', async () => {
      const active = await observer.query(
        "select 1 from pg_stat_activity where datname = $1 and state = 'active' and query = 'select pg_sleep(60)'",
        [database],
      );
      return active.rowCount === 1 ? true : undefined;
    });
  } finally {
    await observer.end();
  }
  child.kill('SIGINT');
  const code = await exited;
  assert.notEqual(code, 0);
  // The server's own words: the statement ended because of the cancel, not because it finished.
  assert.match(stderr, /canceling statement due to user request/);
  const outcome = (await sidecar.settledRecords()).find(
    (r) => carriesCommandOutcome(r.record) && r.record.outcome?.code === '57014',
  );
  assert.equal(outcome?.record.outcome?.status, 'cancelled');
});

test('pgbench: -i (COPY, DDL, vacuum) and -S with simple, extended and prepared protocols', async (t) => {
  const { sidecar, token } = await sidecarFor(t);
  const env = sidecar.libpqEnv(token);
  const init = spawnSync('pgbench', ['-i', '-s', '1', '-q'], { env, encoding: 'utf8' });
  assert.equal(init.status, 0, init.stderr);
  assert.match(init.stderr, /done in/);
  for (const mode of ['simple', 'extended', 'prepared']) {
    const run = spawnSync('pgbench', ['-S', '-M', mode, '-c', '4', '-j', '2', '-t', '200', '-n'], {
      env,
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, `${mode}: ${run.stderr}`);
    assert.match(run.stdout, /number of transactions actually processed: 800\/800/, mode);
    assert.match(run.stdout, /number of failed transactions: 0 /, mode);
  }
});
