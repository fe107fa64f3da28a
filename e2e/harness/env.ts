// The environment variables through which global setup hands the shared servers to test files.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { TestContext } from 'node:test';

export const ENV = {
  runDir: 'CHAPERONE_TEST_RUN_DIR',
  kubeconfig: 'CHAPERONE_TEST_KUBECONFIG',
  apiServer: 'CHAPERONE_TEST_API_SERVER',
  issuer: 'CHAPERONE_TEST_ISSUER',
  apiCa: 'CHAPERONE_TEST_API_CA',
  pgHost: 'CHAPERONE_TEST_PG_HOST',
  pgPort: 'CHAPERONE_TEST_PG_PORT',
  pgUser: 'CHAPERONE_TEST_PG_USER',
  pgPassword: 'CHAPERONE_TEST_PG_PASSWORD',
  pgDatabase: 'CHAPERONE_TEST_PG_DATABASE',
  pgCa: 'CHAPERONE_TEST_PG_CA',
  pgSocketDir: 'CHAPERONE_TEST_PG_SOCKET_DIR',
  pgLogFile: 'CHAPERONE_TEST_PG_LOG_FILE',
} as const;

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(
      `${name} is not set: run tests through \`make test\` (node --test with e2e/harness/global-setup.ts)`,
    );
  }
  return value;
}

export interface ControlPlaneEnv {
  kubeconfig: string;
  server: string;
  issuer: string;
  caFile: string;
}

export function controlPlaneEnv(): ControlPlaneEnv {
  return {
    kubeconfig: required(ENV.kubeconfig),
    server: required(ENV.apiServer),
    issuer: required(ENV.issuer),
    caFile: required(ENV.apiCa),
  };
}

export interface PostgresEnv {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  caFile: string;
  socketDir: string;
  /** The server's log (stderr), with `user@database` on every line. */
  logFile: string;
}

export function postgresEnv(): PostgresEnv {
  return {
    host: required(ENV.pgHost),
    port: Number(required(ENV.pgPort)),
    user: required(ENV.pgUser),
    password: required(ENV.pgPassword),
    database: required(ENV.pgDatabase),
    caFile: required(ENV.pgCa),
    socketDir: required(ENV.pgSocketDir),
    logFile: required(ENV.pgLogFile),
  };
}

/** A directory for one test's files inside the run directory, removed with the run. */
export function testDir(t: TestContext): string {
  const safe = t.fullName.replace(/[^a-zA-Z0-9]+/g, '-').slice(0, 80);
  return `${required(ENV.runDir)}/tests/${safe}-${process.pid}`;
}

/** Client options for node-postgres to reach the harness PostgreSQL directly as the test role over TLS. */
export function directPgOptions(database?: string): {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  ssl: { ca: string; servername: string };
} {
  const pg = postgresEnv();
  return {
    host: pg.host,
    port: pg.port,
    user: pg.user,
    password: pg.password,
    database: database ?? pg.database,
    ssl: { ca: readFileSync(pg.caFile, 'utf8'), servername: 'localhost' },
  };
}

/**
 * Runs SQL as the superuser `postgres` over the harness cluster's Unix socket (pg_hba trusts only that
 * socket) in `database` and returns psql's unaligned, tuples-only output.
 */
export function superuserSql(sql: string, database = 'postgres'): string {
  const pg = postgresEnv();
  return execFileSync(
    'psql',
    ['-X', '-A', '-t', '-h', pg.socketDir, '-p', String(pg.port), '-U', 'postgres', '-d', database, '-c', sql],
    { encoding: 'utf8' },
  );
}
