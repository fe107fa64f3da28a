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
 * Creates a database, runs `setupSql` in it (directly, not through a sidecar) and drops it after the test.
 * The drop forces sessions off, so a test ends its own clients in its body, not in later `after` hooks.
 */
export async function createTestDatabase(t: TestContext, setupSql?: string): Promise<string> {
  const name = `t_${randomBytes(5).toString('hex')}`;
  await adminQuery(`create database ${name}`);
  t.after(() => adminQuery(`drop database if exists ${name} with (force)`));
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
