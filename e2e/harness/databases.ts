// A PostgreSQL database per test, created by the test role (CREATEDB) and dropped after the test, so
// tests that create tables never see each other's.
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { directPgOptions } from './env.ts';

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
 * Drops a test database, forcing its sessions off. An autovacuum worker that happens to be in the new
 * database makes `with (force)` fail for a role that may not signal it (42501, the worker is no member of
 * the test role), and one that is still starting makes the drop see other users (55006): both are over in
 * moments, so the drop is tried again. A drop that still fails throws, and since a failing `after` hook
 * skips the hooks registered after it (the test's sidecar would then never be stopped and keep the test
 * file's process alive), the retries matter.
 */
async function dropTestDatabase(name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await adminQuery(`drop database if exists ${name} with (force)`);
      return;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (attempt >= 40 || (code !== '42501' && code !== '55006')) throw err;
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
