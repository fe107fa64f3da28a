// At a connection limit, clients past it get SQLSTATE 53300 (too_many_connections) and a fresh connection
// works once a slot is free: the sidecar's own limit (listener maxConnections, TooManyConnections) and the
// upstream's (PostgreSQL's max_connections, a role's CONNECTION LIMIT), which keeps its SQLSTATE and message
// (UpstreamTooManyConnections) and leaves a session.start/session.end pair in the audit trail naming it.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import { ENV, postgresEnv, superuserSql, testDir } from '../harness/env.ts';
import { startPostgres } from '../harness/postgres.ts';
import { ALLOW_ALL, spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import { startTestSidecar } from '../harness/sidecar.ts';

type PgError = Error & { code?: string; severity?: string; hint?: string };

async function connect(port: number, password: string): Promise<pg.Client> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'agent', password, database: 'agent' });
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/** Connects `n` clients at once; the ones that got in and the errors of the others. */
async function connectMany(port: number, password: string, n: number) {
  const settled = await Promise.allSettled(Array.from({ length: n }, () => connect(port, password)));
  const clients: pg.Client[] = [];
  const errors: PgError[] = [];
  for (const s of settled) {
    if (s.status === 'fulfilled') clients.push(s.value);
    else errors.push(s.reason as PgError);
  }
  return { clients, errors };
}

function psql(env: NodeJS.ProcessEnv, sql: string) {
  const r = spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function endAll(t: TestContext, clients: readonly pg.Client[]): void {
  t.after(() => Promise.allSettled(clients.map((c) => c.end())));
}

async function metric(sidecar: SidecarProcess, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

test("the sidecar's own limit: connections past maxConnections get 53300, the ones inside keep working, a fresh one works after a close", async (t) => {
  const sidecar = await startTestSidecar(t, { listener: { maxConnections: 4 } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:storm' });

  const { clients, errors } = await connectMany(sidecar.port, token, 12);
  endAll(t, clients);
  assert.equal(
    clients.length,
    4,
    `connected: ${String(clients.length)}, errors: ${errors.map((e) => e.message).join('; ')}`,
  );
  assert.equal(errors.length, 8);
  for (const err of errors) {
    assert.equal(err.code, '53300', err.message);
    assert.equal(err.severity, 'FATAL');
    assert.match(err.message, /^chaperone: too many connections to test-db \(this sidecar serves at most 4 at once\)$/);
    assert.match(err.hint ?? '', /maxConnections/);
  }
  // psql, with its default sslmode=prefer (SSLRequest first, answered N here): the same refusal.
  const refused = psql(sidecar.libpqEnv(token), 'select 1');
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /FATAL:\s+chaperone: too many connections to test-db/);

  for (const [i, c] of clients.entries()) {
    const r = await c.query<{ n: number }>('select $1::int as n', [i]);
    assert.equal(r.rows[0]?.n, i);
  }
  assert.equal(await metric(sidecar, 'chaperone_connections_refused_total'), 9);

  await clients[0]?.end();
  // The slot is free once the sidecar has seen the socket close; the fresh connection may race that close.
  const fresh = await retryUntilConnected(sidecar.port, token);
  t.after(() => fresh.end());
  assert.equal((await fresh.query<{ ok: string }>("select 'fresh' as ok")).rows[0]?.ok, 'fresh');
  const ok = psql(sidecar.libpqEnv(token), "select 'psql'");
  assert.match(ok.stderr, /too many connections/, 'the four slots are taken again (3 old + fresh)');
  await fresh.end();
  await retryUntil(() => psql(sidecar.libpqEnv(token), "select 'psql ok'").stdout.includes('psql ok'));
  assert.equal(sidecar.process.exitCode, null);
});

test("the upstream's max_connections: clients past it get PostgreSQL's 53300 with its message, audited; the sidecar stays sane", async (t) => {
  const dir = testDir(t);
  // Four slots, none reserved: the fifth login gets "sorry, too many clients already".
  // A short directory: the server's Unix socket path must fit in sockaddr_un (108 bytes).
  const cluster = await startPostgres(join(process.env[ENV.runDir] ?? dir, `pg-limit-${String(process.pid)}`), {
    settings: { max_connections: '4', superuser_reserved_connections: '0' },
  });
  t.after(() => cluster.stop());
  const sidecar = await spawnSidecar({
    dir: join(dir, 'sidecar'),
    upstream: {
      host: 'localhost',
      port: cluster.port,
      database: cluster.database,
      user: cluster.user,
      password: cluster.password,
      caFile: cluster.caFile,
    },
    policies: { 'allow-all': ALLOW_ALL },
    logLevel: 'info',
  });
  t.after(() => sidecar.stop());
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:storm' });

  const { clients, errors } = await connectMany(sidecar.port, token, 10);
  endAll(t, clients);
  assert.equal(
    clients.length,
    4,
    `connected: ${String(clients.length)}, errors: ${errors.map((e) => e.message).join('; ')}`,
  );
  assert.equal(errors.length, 6);
  for (const err of errors) {
    assert.equal(err.code, '53300', err.message);
    assert.equal(err.severity, 'FATAL');
    assert.equal(
      err.message,
      'chaperone: the protected database refused the connection: sorry, too many clients already',
    );
  }
  const refused = psql(sidecar.libpqEnv(token), 'select 1');
  assert.notEqual(refused.status, 0);
  assert.match(
    refused.stderr,
    /FATAL:\s+chaperone: the protected database refused the connection: sorry, too many clients already/,
  );

  // The sessions inside the limit are untouched.
  for (const c of clients) assert.equal((await c.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1);

  // Every refused login is in the trail: session.start with the verified identity, session.end with 53300.
  const records = await sidecar.settledRecords();
  const ends = records.filter((r) => r.record.type === 'session.end' && r.record.outcome?.code === '53300');
  assert.equal(ends.length, 7);
  for (const end of ends) {
    const outcome = end.record.outcome;
    assert.ok(outcome !== undefined);
    assert.equal(outcome.status, 'error');
    assert.match(outcome.message ?? '', /too many clients already/);
    const start = records.find(
      (r) => r.session.sessionId === end.session.sessionId && r.record.type === 'session.start',
    );
    assert.equal(start?.record.identity?.subject, 'system:serviceaccount:ci:storm');
  }

  await clients[0]?.end();
  const fresh = await retryUntilConnected(sidecar.port, token);
  t.after(() => fresh.end());
  assert.equal((await fresh.query<{ ok: string }>("select 'fresh' as ok")).rows[0]?.ok, 'fresh');
  assert.equal(sidecar.process.exitCode, null);
});

test("a role's CONNECTION LIMIT on the shared server: the same 53300 passes through with PostgreSQL's words", async (t) => {
  const pgEnv = postgresEnv();
  const role = `limited_${String(process.pid)}`;
  const password = `pw-${String(process.pid)}-limit`;
  superuserSql(`create role ${role} login connection limit 1 password '${password}'`);
  const sidecar = await spawnSidecar({
    dir: testDir(t),
    upstream: {
      host: 'localhost',
      port: pgEnv.port,
      database: pgEnv.database,
      user: role,
      password,
      caFile: pgEnv.caFile,
    },
    policies: { 'allow-all': ALLOW_ALL },
    logLevel: 'info',
  });
  t.after(async () => {
    await sidecar.stop();
    superuserSql(`drop role if exists ${role}`);
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:storm' });
  const first = await connect(sidecar.port, token);
  t.after(() => first.end());
  await assert.rejects(connect(sidecar.port, token), (err: PgError) => {
    assert.equal(err.code, '53300');
    assert.equal(
      err.message,
      `chaperone: the protected database refused the connection: too many connections for role "${role}"`,
    );
    return true;
  });
  await first.end();
  const fresh = await retryUntilConnected(sidecar.port, token);
  t.after(() => fresh.end());
  assert.equal((await fresh.query<{ u: string }>('select current_user as u')).rows[0]?.u, role);
});

async function retryUntil(check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not reached in 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Connects once the limit has room (a closed client's slot frees when its socket has closed on the far side). */
async function retryUntilConnected(port: number, password: string): Promise<pg.Client> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await connect(port, password);
    } catch (err) {
      if ((err as PgError).code !== '53300' || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
