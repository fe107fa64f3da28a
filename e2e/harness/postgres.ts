// A throwaway PostgreSQL cluster: initdb in a temporary directory as an unprivileged user, a random
// loopback port, TLS with a certificate from a generated CA, and a scram-sha-256 role for tests.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, createWriteStream, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { recordServer, stopProcess } from './processes.ts';
import { postgresBinDir } from './tools.ts';

export interface PostgresCluster {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** The scram-sha-256 role tests connect as (owner of `database`). */
  readonly user: string;
  readonly password: string;
  readonly database: string;
  /** PEM CA that signs the server certificate; clients use it for verify-full. */
  readonly caFile: string;
  /** Unix socket directory; the OS user running the server connects there as superuser `postgres`. */
  readonly socketDir: string;
  readonly dataDir: string;
  readonly logFile: string;
  readonly process: ChildProcess;
  /** Runs SQL as the superuser through the Unix socket and returns psql's unaligned output. */
  superuserSql(sql: string, database?: string): string;
  stop(): Promise<void>;
}

/** A free TCP port on loopback (the kernel picks it; it is released before the server binds it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address === null || typeof address === 'string') reject(new Error('no port'));
        else resolve(address.port);
      });
    });
  });
}

interface ServerUser {
  uid: number;
  gid: number;
  name: string;
}

// PostgreSQL refuses to run as root; as root the cluster runs as the Debian `postgres` user.
function serverUser(): ServerUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const out = execFileSync('id', ['-u', 'postgres']).toString().trim();
  const gid = execFileSync('id', ['-g', 'postgres']).toString().trim();
  return { uid: Number(out), gid: Number(gid), name: 'postgres' };
}

/** A fresh CA and a server certificate it signs (CN and SAN localhost, 127.0.0.1), as PEM files in `dir`. */
export function writeTlsFiles(dir: string): { caFile: string; certFile: string; keyFile: string } {
  const caKey = join(dir, 'ca.key');
  const caFile = join(dir, 'ca.crt');
  const keyFile = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const certFile = join(dir, 'server.crt');
  const ext = join(dir, 'server.ext');
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  openssl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '30',
    '-subj',
    '/CN=chaperone-test-postgres-ca',
    '-keyout',
    caKey,
    '-out',
    caFile,
  );
  openssl(
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-subj',
    '/CN=localhost',
    '-keyout',
    keyFile,
    '-out',
    csr,
  );
  writeFileSync(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl(
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    caFile,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-days',
    '30',
    '-extfile',
    ext,
    '-out',
    certFile,
  );
  return { caFile, certFile, keyFile };
}

export interface PostgresOptions {
  /** Further server settings (`-c name=value`), after the harness's own (so they win). */
  readonly settings?: Readonly<Record<string, string>>;
}

export async function startPostgres(runDir: string, options: PostgresOptions = {}): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  const root = join(runDir, 'postgres');
  const dataDir = join(root, 'data');
  const socketDir = join(root, 'socket');
  const tlsDir = join(root, 'tls');
  mkdirSync(dataDir, { recursive: true });
  mkdirSync(socketDir, { recursive: true });
  mkdirSync(tlsDir, { recursive: true });
  const owner = serverUser();
  const tls = writeTlsFiles(tlsDir);
  chmodSync(tls.keyFile, 0o600);
  if (owner !== undefined) {
    for (const path of [root, dataDir, socketDir, tlsDir, tls.keyFile, tls.certFile, tls.caFile]) {
      chownSync(path, owner.uid, owner.gid);
    }
  }
  chmodSync(dataDir, 0o700);
  const asOwner = owner === undefined ? {} : { uid: owner.uid, gid: owner.gid };
  const superuser = 'postgres';

  execFileSync(
    join(bin, 'initdb'),
    [
      '-D',
      dataDir,
      '-U',
      superuser,
      '--auth-local=trust',
      '--auth-host=reject',
      '-E',
      'UTF8',
      '--locale=C.UTF-8',
      '-N',
    ],
    { ...asOwner, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const port = await freePort();
  writeFileSync(
    join(dataDir, 'pg_hba.conf'),
    [
      '# Written by the Chaperone test harness.',
      'local all all trust',
      'hostssl all all 127.0.0.1/32 scram-sha-256',
      'host all all 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'),
  );
  if (owner !== undefined) chownSync(join(dataDir, 'pg_hba.conf'), owner.uid, owner.gid);

  const logFile = join(root, 'postgres.log');
  const log = createWriteStream(logFile);
  const child = spawn(
    join(bin, 'postgres'),
    [
      '-D',
      dataDir,
      '-c',
      `port=${port}`,
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${socketDir}`,
      '-c',
      'ssl=on',
      '-c',
      `ssl_cert_file=${tls.certFile}`,
      '-c',
      `ssl_key_file=${tls.keyFile}`,
      '-c',
      'password_encryption=scram-sha-256',
      '-c',
      'max_connections=200',
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'shared_buffers=128MB',
      // Who and which database on every line, so a test can read its own statements from the server log.
      '-c',
      'log_line_prefix=%m [%p] %q%u@%d ',
      ...Object.entries(options.settings ?? {}).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
    ],
    { ...asOwner, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  if (child.pid === undefined) throw new Error('could not start postgres');
  recordServer(runDir, 'postgres', child.pid);
  child.stdout.pipe(log);
  child.stderr.pipe(log);

  const psql = (sql: string, database = 'postgres'): string =>
    execFileSync(
      'psql',
      [
        '-X',
        '-q',
        '-A',
        '-t',
        '-v',
        'ON_ERROR_STOP=1',
        '-h',
        socketDir,
        '-p',
        String(port),
        '-U',
        superuser,
        '-d',
        database,
        '-c',
        sql,
      ],
      {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        ...asOwner,
      },
    );

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`postgres exited with ${child.exitCode}:\n${readFileSync(logFile, 'utf8')}`);
    try {
      psql('select 1');
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error('postgres not ready in 60s', { cause: err });
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const user = 'chaperone_test';
  const database = 'chaperone_test';
  const password = randomBytes(18).toString('base64url');
  // CREATEDB lets each test file work in a database of its own.
  psql(`create role ${user} login createdb password '${password}'`);
  psql(`create database ${database} owner ${user}`);

  return {
    host: '127.0.0.1',
    port,
    user,
    password,
    database,
    caFile: tls.caFile,
    socketDir,
    dataDir,
    logFile,
    process: child,
    superuserSql: psql,
    async stop() {
      // SIGINT is PostgreSQL's "fast" shutdown: it ends sessions and exits without waiting for clients.
      child.kill('SIGINT');
      await stopProcess(child, 30_000);
      log.end();
    },
  };
}

/** The OS user name the harness runs servers as (for messages). */
export function harnessUser(): string {
  return serverUser()?.name ?? userInfo().username;
}
