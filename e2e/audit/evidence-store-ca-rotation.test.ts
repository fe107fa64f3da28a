// The evidence store's CA rotated while the sidecar runs (docs/evidence-store.md, "Rotating the store's
// certificate"): a PostgreSQL of its own gets a server certificate from a new CA and reloads, the sidecar's
// mounted CA file is replaced, the store's connections end, and the records of the next session still
// reach the store, over TLS verified against the new CA, without a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { evidenceSchemaSql } from '@chaperone/api';
import { controlPlaneEnv, ENV, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { startPostgres, writeTlsFiles } from '../harness/postgres.ts';
import { startAuditSidecar, waitFor } from './durability-helpers.ts';

test("evidence store: a rotated server certificate and CA file take effect for the store's new connections without a restart", async (t) => {
  const dir = testDir(t);
  // A short directory: the server's Unix socket path must fit in sockaddr_un (108 bytes).
  const cluster = await startPostgres(join(process.env[ENV.runDir] ?? dir, `pg-ca-${String(process.pid)}`));
  t.after(() => cluster.stop());
  const writer = { user: 'evidence_writer', password: 'writer-password-0123456789' };
  cluster.superuserSql(
    `create role evidence_owner nologin;
     create role ${writer.user} login password '${writer.password}';
     create role evidence_auditor nologin;`,
  );
  cluster.superuserSql('create database evidence owner evidence_owner');
  cluster.superuserSql(
    `set role evidence_owner;\n${evidenceSchemaSql({ writer: writer.user, auditor: 'evidence_auditor' })}`,
    'evidence',
  );
  const storeDir = join(dir, 'store');
  mkdirSync(storeDir, { recursive: true });
  const passwordFile = join(storeDir, 'password');
  writeFileSync(passwordFile, writer.password, { mode: 0o600 });
  // The sidecar's view of the mounted Secret key ca.crt; replaced by a rename, as the kubelet swaps a Secret.
  const caFile = join(storeDir, 'ca.crt');
  copyFileSync(cluster.caFile, caFile);

  const namespace = await createTestNamespace(t);
  const sidecar = await startAuditSidecar(t, {
    kubeconfig: controlPlaneEnv().kubeconfig,
    namespace,
    audit: {
      evidenceStore: {
        postgres: {
          host: 'localhost',
          port: cluster.port,
          database: 'evidence',
          user: writer.user,
          passwordFile,
          caFile,
        },
        batchRecords: 100,
      },
    },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:rotation' }, { expiresIn: 3600 });
  const session = async (tag: string) => {
    const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
    await c.connect();
    for (let i = 0; i < 5; i++) await c.query(`select ${String(i)} as n, '${tag}' as tag`);
    await c.end();
  };
  const stored = (tag: string) =>
    Number(
      cluster
        .superuserSql(
          `select count(*) from chaperone.audit_records where type = 'command.decision' and record like '%''${tag}'' as tag%'`,
          'evidence',
        )
        .trim(),
    );

  await session('before');
  await waitFor('the first session in the store', () => Promise.resolve(stored('before') === 5 ? true : undefined));

  // The server moves to a certificate of a new CA.
  mkdirSync(join(dir, 'next-ca'));
  const next = writeTlsFiles(join(dir, 'next-ca'));
  const serverTls = join(process.env[ENV.runDir] ?? dir, `pg-ca-${String(process.pid)}`, 'postgres', 'tls');
  writeFileSync(join(serverTls, 'server.crt'), readFileSync(next.certFile));
  writeFileSync(join(serverTls, 'server.key'), readFileSync(next.keyFile));
  cluster.superuserSql('select pg_reload_conf()');
  const connects = async (ca: string) => {
    const c = new pg.Client({
      host: 'localhost',
      port: cluster.port,
      database: 'evidence',
      ...writer,
      ssl: { ca: readFileSync(ca, 'utf8'), servername: 'localhost' },
    });
    try {
      await c.connect();
      return true;
    } catch {
      return false;
    } finally {
      await c.end().catch(() => undefined);
    }
  };
  await waitFor('the server presenting the new certificate', async () =>
    (await connects(next.caFile)) ? true : undefined,
  );
  assert.equal(await connects(cluster.caFile), false, 'the old CA no longer verifies the server');

  // The Secret's ca.crt is updated, and the store's connections (verified against the old CA) end.
  writeFileSync(`${caFile}.new`, readFileSync(next.caFile));
  renameSync(`${caFile}.new`, caFile);
  cluster.superuserSql(`select pg_terminate_backend(pid) from pg_stat_activity where usename = '${writer.user}'`);

  await session('after');
  await waitFor('the second session in the store', () => Promise.resolve(stored('after') === 5 ? true : undefined));
  const tls = cluster
    .superuserSql(
      `select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) where a.usename = '${writer.user}' and s.ssl`,
    )
    .trim();
  assert.ok(Number(tls) >= 1, 'the writer is connected over TLS');
  assert.equal(sidecar.process.exitCode, null, 'the sidecar kept running');
});
