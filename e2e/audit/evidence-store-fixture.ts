// An evidence database per test on the harness PostgreSQL, set up as docs/evidence-store.md tells an
// installer to: an owner role (no login) owning the database and the records table, a writer role the
// sidecar logs in as (INSERT only) and an auditor role verify logs in as (SELECT only), each with its own
// password. Dropped with its roles when the test ends.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { evidenceSchemaSql, type AuditRecord, type Session } from '@chaperone/api';
import { directPgOptions, postgresEnv, testDir } from '../harness/env.ts';

export interface EvidenceRole {
  readonly user: string;
  readonly password: string;
}

export interface EvidenceDatabase {
  readonly database: string;
  /** spec.store.location of the Sessions written to it. */
  readonly location: string;
  readonly owner: string;
  readonly writer: EvidenceRole;
  readonly auditor: EvidenceRole;
  /** `audit.evidenceStore` of a sidecar configuration that writes as the writer role over TLS. */
  readonly sidecarConfig: Record<string, unknown>;
  /** The same through another loopback port (a forwarder in front of the server). */
  sidecarConfigAt(port: number): Record<string, unknown>;
  /** Sessions with their records filled in from the store, as the auditor role reads them (seq order). */
  withRecords(sessions: readonly Session[]): Promise<Session[]>;
  /** A connection URL for `kubectl chaperone verify --evidence-store` (password through PGPASSWORD). */
  readonly auditorUrl: string;
  /** Runs SQL in the evidence database as the superuser (what a database administrator can do). */
  superuser(sql: string): string;
  /** A node-postgres client logged in as `role` (closed when the test ends). */
  connect(role: EvidenceRole): Promise<pg.Client>;
}

/** Runs SQL in `database` as the superuser, over the server's socket; returns psql's unaligned tuples. */
export function psql(database: string, sql: string): string {
  const env = postgresEnv();
  return execFileSync(
    'psql',
    [
      '-X',
      '-A',
      '-t',
      '-v',
      'ON_ERROR_STOP=1',
      '-h',
      env.socketDir,
      '-p',
      String(env.port),
      '-U',
      'postgres',
      '-d',
      database,
    ],
    // stderr is kept (not echoed): a refused statement's error is in the thrown error's message.
    { encoding: 'utf8', input: sql, stdio: ['pipe', 'pipe', 'pipe'] },
  );
}

export function createEvidenceDatabase(t: TestContext): EvidenceDatabase {
  const id = randomBytes(4).toString('hex');
  const database = `evidence_${id}`;
  const owner = `evidence_${id}_owner`;
  const writer = { user: `evidence_${id}_writer`, password: randomBytes(12).toString('hex') };
  const auditor = { user: `evidence_${id}_auditor`, password: randomBytes(12).toString('hex') };
  psql(
    'postgres',
    `create role ${owner} nologin;
     create role ${writer.user} login password '${writer.password}';
     create role ${auditor.user} login password '${auditor.password}';
     create database ${database} owner ${owner};
     revoke all on database ${database} from public;
     grant connect on database ${database} to ${writer.user}, ${auditor.user};`,
  );
  const clients: pg.Client[] = [];
  t.after(async () => {
    await Promise.allSettled(clients.map((c) => c.end()));
    psql(
      'postgres',
      `drop database if exists ${database} with (force);
       drop role if exists ${writer.user}; drop role if exists ${auditor.user}; drop role if exists ${owner};`,
    );
  });
  psql(database, `set role ${owner};\n${evidenceSchemaSql({ writer: writer.user, auditor: auditor.user })}`);

  const env = postgresEnv();
  const dir = join(testDir(t), `evidence-${id}`);
  mkdirSync(dir, { recursive: true });
  const passwordFile = join(dir, 'writer-password');
  writeFileSync(passwordFile, `${writer.password}\n`, { mode: 0o600 });
  const direct = directPgOptions(database);
  const connectAs = async (role: EvidenceRole) => {
    const c = new pg.Client({ ...direct, user: role.user, password: role.password });
    await c.connect();
    clients.push(c);
    return c;
  };
  const sidecarConfigAt = (port: number) => ({
    postgres: { host: 'localhost', port, database, user: writer.user, passwordFile, caFile: env.caFile },
  });
  return {
    database,
    location: `localhost:${String(env.port)}/${database}`,
    owner,
    writer,
    auditor,
    sidecarConfig: sidecarConfigAt(env.port),
    sidecarConfigAt,
    withRecords: async (sessions) => {
      const c = await connectAs(auditor);
      const result: Session[] = [];
      for (const s of sessions) {
        const { rows } = await c.query<{ record: string }>(
          'select record from chaperone.audit_records where session_id = $1 order by seq, time',
          [s.spec.sessionId],
        );
        result.push({ ...s, spec: { ...s.spec, records: rows.map((r) => JSON.parse(r.record) as AuditRecord) } });
      }
      return result;
    },
    auditorUrl: `postgresql://${auditor.user}@localhost:${String(env.port)}/${database}?sslmode=verify-full&sslrootcert=${encodeURIComponent(env.caFile)}`,
    superuser: (sql) => psql(database, sql),
    connect: connectAs,
  };
}
