// A PostgreSQL database per test, created by the test role (CREATEDB) and dropped after the test, so
// tests that create tables never see each other's.
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { directPgOptions, superuserSql } from './env.ts';

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client(directPgOptions());
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/**
 * Drops a test database, forcing its sessions off, as the superuser over the cluster's Unix socket: the
 * test role may not terminate backends of other roles (an autovacuum worker that happens to be in the new
 * database, or a least-privilege login's session a sidecar keeps for reuse, docs/postgres-engine.md), and
 * `with (force)` then fails with 42501 — and a failing `after` hook skips the hooks registered after it, so
 * the test's sidecar would never be stopped and keep the test file's process alive. A drop that sees a
 * worker still starting (55006) is tried again.
 */
async function dropTestDatabase(name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      superuserSql(`drop database if exists ${name} with (force)`);
      return;
    } catch (err) {
      if (attempt >= 20 || !/is being accessed by other users/.test(String((err as { stderr?: unknown }).stderr)))
        throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Creates a database, runs `setupSql` in it (directly, not through a sidecar) and drops it after the test.
 * The drop forces sessions off, so a test ends its own clients in its body, not in later `after` hooks.
 */
export async function createTestDatabase(t: TestContext, setupSql?: string): Promise<string> {
  const name = `t_${randomBytes(5).toString('hex')}`;
  await adminQuery(`create database ${name}`);
  t.after(() => dropTestDatabase(name));
  if (setupSql !== undefined) {
    const client = new pg.Client(directPgOptions(name));
    await client.connect();
    try {
      await client.query(setupSql);
    } finally {
      await client.end();
    }
  }
  return name;
}

/**
 * The least-privilege login docs/postgres-engine.md tells a platform team to create for a database: it may
 * connect, use schema public and SELECT its tables (those existing now), and its transactions are read-only
 * by default. Dropped after the test (after the database: the drop forces its sessions off first).
 */
export function createReaderLogin(t: TestContext, database: string): { user: string; password: string } {
  const user = `${database}_reader`;
  const password = `pw-${database}`;
  superuserSql(
    [
      `create role ${user} login password '${password}'`,
      `alter role ${user} set default_transaction_read_only = on`,
      `revoke all on database ${database} from public`,
      `grant connect on database ${database} to ${user}`,
      `grant usage on schema public to ${user}`,
      `grant select on all tables in schema public to ${user}`,
    ].join(';\n'),
    database,
  );
  t.after(() => superuserSql(`drop role if exists ${user}`));
  return { user, password };
}
