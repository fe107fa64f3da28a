// The harness PostgreSQL is reachable over TLS with scram-sha-256 by psql and node-postgres.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { postgresEnv, superuserSql } from './env.ts';

const env = postgresEnv();

test('psql connects with sslmode=verify-full and scram-sha-256', () => {
  const out = execFileSync(
    'psql',
    ['-X', '-A', '-t', '-c', 'select ssl, version from pg_stat_ssl where pid = pg_backend_pid()'],
    {
      encoding: 'utf8',
      env: {
        ...process.env,
        PGHOST: 'localhost',
        PGPORT: String(env.port),
        PGUSER: env.user,
        PGPASSWORD: env.password,
        PGDATABASE: env.database,
        PGSSLMODE: 'verify-full',
        PGSSLROOTCERT: env.caFile,
        PGCHANNELBINDING: 'require',
      },
    },
  );
  // channel_binding=require makes libpq refuse any exchange but SCRAM-SHA-256-PLUS over TLS.
  assert.match(out.trim(), /^t\|TLSv1\.[23]$/);
});

test('node-postgres connects over TLS with scram-sha-256 and the wrong password fails with 28P01', async () => {
  const ssl = { ca: readFileSync(env.caFile, 'utf8'), servername: 'localhost' };
  const client = new pg.Client({
    host: env.host,
    port: env.port,
    user: env.user,
    password: env.password,
    database: env.database,
    ssl,
  });
  await client.connect();
  try {
    const r = await client.query<{ ssl: boolean; version: string }>(
      'select ssl, version from pg_stat_ssl where pid = pg_backend_pid()',
    );
    const row = r.rows[0];
    assert.ok(row);
    assert.equal(row.ssl, true);
    assert.match(row.version, /^TLSv1\.[23]$/);
  } finally {
    await client.end();
  }
  const wrong = new pg.Client({
    host: env.host,
    port: env.port,
    user: env.user,
    password: 'wrong',
    database: env.database,
    ssl,
  });
  await assert.rejects(wrong.connect(), (err: Error & { code?: string }) => err.code === '28P01');
});

test('the test role authenticates with scram-sha-256, not md5', () => {
  const method = superuserSql(`select left(rolpassword, 14) from pg_authid where rolname = '${env.user}'`);
  assert.equal(method.trim(), 'SCRAM-SHA-256$');
});
