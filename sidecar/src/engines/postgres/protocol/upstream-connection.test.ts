/**
 * Runs against a real PostgreSQL server described by environment variables, which the project's test
 * harness sets. Missing variables fail the tests (they are not skipped), so a broken harness is visible.
 *
 * The server must offer TLS with a certificate for `localhost` and `127.0.0.1` signed by the CA in
 * CHAPERONE_TEST_PG_CA, and authenticate CHAPERONE_TEST_PG_USER with scram-sha-256 over TCP.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { rootCertificates } from 'node:tls';
import type { Duplex } from 'node:stream';
import {
  authenticationOk,
  authenticationSASL,
  backendKeyData,
  parameterStatus,
  readyForQuery,
} from './backend-encoder.ts';
import { BackendCode, type ErrorFields } from './backend-messages.ts';
import { BackendScanner, decodeDataRow, decodeErrorFields, decodeReadyForQuery } from './backend-scanner.ts';
import { encodeQuery, TERMINATE_FRAME } from './frontend-encoder.ts';
import { connectUpstream, sendCancelRequest, UpstreamError, type UpstreamConnection } from './upstream-connection.ts';

interface TestServer {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly database: string;
  readonly ca: string;
  readonly socketDir: string;
}

const VARIABLES = [
  'CHAPERONE_TEST_PG_HOST',
  'CHAPERONE_TEST_PG_PORT',
  'CHAPERONE_TEST_PG_USER',
  'CHAPERONE_TEST_PG_PASSWORD',
  'CHAPERONE_TEST_PG_DATABASE',
  'CHAPERONE_TEST_PG_CA',
  'CHAPERONE_TEST_PG_SOCKET_DIR',
] as const;

function server(): TestServer {
  const missing = VARIABLES.filter((v) => (process.env[v] ?? '') === '');
  if (missing.length > 0) {
    assert.fail(
      `upstream-connection tests need a real PostgreSQL server; set ${missing.join(', ')} ` +
        '(the project test harness does this)',
    );
  }
  const env = (name: (typeof VARIABLES)[number]): string => process.env[name] ?? '';
  return {
    host: env('CHAPERONE_TEST_PG_HOST'),
    port: Number(env('CHAPERONE_TEST_PG_PORT')),
    user: env('CHAPERONE_TEST_PG_USER'),
    password: env('CHAPERONE_TEST_PG_PASSWORD'),
    database: env('CHAPERONE_TEST_PG_DATABASE'),
    ca: readFileSync(env('CHAPERONE_TEST_PG_CA'), 'utf8'),
    socketDir: env('CHAPERONE_TEST_PG_SOCKET_DIR'),
  };
}

interface QueryResult {
  readonly rows: (string | null)[][];
  readonly error: ErrorFields | null;
  readonly status: string;
}

/** Sends a simple query on a logged-in socket and collects rows until ReadyForQuery. */
function query(socket: Duplex, sql: string): Promise<QueryResult> {
  const scanner = new BackendScanner({
    interest: [BackendCode.DataRow, BackendCode.ErrorResponse, BackendCode.ReadyForQuery],
  });
  const rows: (string | null)[][] = [];
  let error: ErrorFields | null = null;
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      scanner.push(chunk);
      for (let s = scanner.next(); s !== null; s = scanner.next()) {
        if (s.kind !== 'frame') continue;
        if (s.code === BackendCode.DataRow) rows.push(decodeDataRow(s.frame).map((v) => v?.toString() ?? null));
        else if (s.code === BackendCode.ErrorResponse) error = decodeErrorFields(s.frame);
        else {
          socket.off('data', onData);
          socket.off('error', reject);
          socket.pause();
          resolve({ rows, error, status: decodeReadyForQuery(s.frame) });
          return;
        }
      }
    };
    socket.on('data', onData);
    socket.on('error', reject);
    socket.write(encodeQuery(sql));
    socket.resume();
  });
}

function close(conn: UpstreamConnection): void {
  conn.socket.on('error', () => undefined);
  conn.socket.end(TERMINATE_FRAME);
}

async function rejectsWith(p: Promise<unknown>, check: (e: UpstreamError) => void): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof UpstreamError, `expected UpstreamError, got ${String(e)}`);
    check(e);
    return;
  }
  assert.fail('expected the connection to fail');
}

describe('connectUpstream against a real PostgreSQL', () => {
  it('logs in with SCRAM-SHA-256 over verify-full TLS and reports parameters and the backend key', async () => {
    const pg = server();
    const conn = await connectUpstream({
      host: pg.host,
      port: pg.port,
      user: pg.user,
      password: pg.password,
      database: pg.database,
      tls: { mode: 'verify-full', ca: pg.ca },
      parameters: [['application_name', 'chaperone-protocol-test']],
      allowedAuthMethods: ['scram-sha-256'],
    });
    try {
      assert.equal(conn.encrypted, true);
      assert.equal(conn.authMethod, 'scram-sha-256');
      assert.equal(conn.transactionStatus, 'I');
      assert.match(conn.parameters.get('server_version') ?? '', /^\d+/);
      assert.equal(conn.parameters.get('application_name'), 'chaperone-protocol-test');
      assert.ok(conn.backendKey !== null);
      assert.ok(conn.backendKey.processId > 0);
      assert.equal(conn.backendKey.secretKey.length, 4);
      const r = await query(
        conn.socket,
        'SELECT current_user, pg_backend_pid()::text, (SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid())',
      );
      assert.equal(r.error, null);
      assert.deepEqual(r.rows, [[pg.user, String(conn.backendKey.processId), 'true']]);
    } finally {
      close(conn);
    }
  });

  it('fails with the server error 28P01 on a wrong password', async () => {
    const pg = server();
    await rejectsWith(
      connectUpstream({
        host: pg.host,
        port: pg.port,
        user: pg.user,
        password: `${pg.password}-wrong`,
        database: pg.database,
        tls: { mode: 'verify-full', ca: pg.ca },
      }),
      (e) => {
        assert.equal(e.reason, 'server');
        assert.equal(e.sqlState, '28P01');
        assert.equal(e.fields?.severity, 'FATAL');
        assert.doesNotMatch(e.message, new RegExp(pg.password.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
      },
    );
  });

  it('refuses verify-full when the certificate is not signed by the given CA', async () => {
    const pg = server();
    // Any public root CA is the wrong CA for the test server's private certificate.
    const wrongCa = rootCertificates[0] ?? '';
    await rejectsWith(
      connectUpstream({
        host: pg.host,
        port: pg.port,
        user: pg.user,
        password: pg.password,
        database: pg.database,
        tls: { mode: 'verify-full', ca: wrongCa },
      }),
      (e) => {
        assert.equal(e.reason, 'tls');
      },
    );
  });

  it('checks the host name in verify-full but not in verify-ca', async () => {
    const pg = server();
    const options = { host: pg.host, port: pg.port, user: pg.user, password: pg.password, database: pg.database };
    await rejectsWith(
      connectUpstream({ ...options, tls: { mode: 'verify-full', ca: pg.ca, servername: 'not-the-server.example' } }),
      (e) => {
        assert.equal(e.reason, 'tls');
        assert.match(e.message, /not-the-server\.example/);
      },
    );
    const conn = await connectUpstream({
      ...options,
      tls: { mode: 'verify-ca', ca: pg.ca, servername: 'not-the-server.example' },
    });
    assert.equal(conn.encrypted, true);
    close(conn);
  });

  it('cancels a running pg_sleep(30) with a CancelRequest on a fresh TLS connection', async () => {
    const pg = server();
    const tls = { mode: 'verify-full', ca: pg.ca } as const;
    const conn = await connectUpstream({
      host: pg.host,
      port: pg.port,
      user: pg.user,
      password: pg.password,
      database: pg.database,
      tls,
    });
    try {
      const key = conn.backendKey;
      assert.ok(key !== null);
      const running = query(conn.socket, 'select pg_sleep(30)');
      // Cancel once the server reports the statement running in that backend (a cancel that arrives
      // earlier cancels nothing); the server's own view, not a guess at how long sending takes.
      const observer = await connectUpstream({
        host: pg.host,
        port: pg.port,
        user: pg.user,
        password: pg.password,
        database: pg.database,
        tls,
      });
      try {
        for (;;) {
          const seen = await query(
            observer.socket,
            `select state, query from pg_stat_activity where pid = ${String(key.processId)}`,
          );
          if (seen.rows[0]?.[0] === 'active' && seen.rows[0][1] === 'select pg_sleep(30)') break;
          await new Promise((r) => setTimeout(r, 20));
        }
      } finally {
        close(observer);
      }
      await sendCancelRequest(pg.host, pg.port, tls, key.processId, key.secretKey);
      const r = await running;
      // 57014 "canceling statement due to user request" is the server saying the cancel ended it.
      assert.equal(r.error?.code, '57014');
      assert.match(r.error.message, /canceling statement due to user request/);
      assert.equal(r.status, 'I');
      const after = await query(conn.socket, 'SELECT 1');
      assert.deepEqual(after.rows, [['1']], 'session still usable');
    } finally {
      close(conn);
    }
  });

  it('connects through the Unix socket directory without TLS', async () => {
    const pg = server();
    const conn = await connectUpstream({
      host: pg.socketDir,
      port: pg.port,
      user: pg.user,
      password: pg.password,
      database: pg.database,
    });
    try {
      assert.equal(conn.encrypted, false);
      const r = await query(conn.socket, 'SELECT 42');
      assert.deepEqual(r.rows, [['42']]);
    } finally {
      close(conn);
    }
  });

  it('reports a connection error for a closed port', async () => {
    const pg = server();
    await rejectsWith(
      connectUpstream({ host: '127.0.0.1', port: 1, user: pg.user, password: pg.password, tls: { mode: 'disable' } }),
      (e) => {
        assert.equal(e.reason, 'connect');
      },
    );
  });
});

/** A scripted fake server on loopback: `script` gets each accepted socket. */
async function fakeServer(script: (socket: net.Socket) => void): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    script(s);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  return {
    port,
    close: () => {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

describe('connectUpstream against scripted misbehaving servers (no real server needed)', () => {
  const base = { host: '127.0.0.1', user: 'u', password: 'p', connectTimeoutMs: 2000 } as const;

  it('times out when the server never answers', async () => {
    const fake = await fakeServer(() => undefined);
    try {
      await rejectsWith(
        connectUpstream({ ...base, port: fake.port, connectTimeoutMs: 200, tls: { mode: 'disable' } }),
        (e) => {
          assert.equal(e.reason, 'timeout');
        },
      );
    } finally {
      fake.close();
    }
  });

  it('fails when TLS is required and the server answers N', async () => {
    const fake = await fakeServer((s) => s.once('data', () => s.write('N')));
    try {
      await rejectsWith(connectUpstream({ ...base, port: fake.port, tls: { mode: 'require' } }), (e) => {
        assert.equal(e.reason, 'tls');
      });
    } finally {
      fake.close();
    }
  });

  it('refuses plaintext bytes sent after the S answer (CVE-2021-23222)', async () => {
    const fake = await fakeServer((s) =>
      s.once('data', () => s.write(Buffer.concat([Buffer.from('S'), authenticationOk()]))),
    );
    try {
      await rejectsWith(connectUpstream({ ...base, port: fake.port, tls: { mode: 'require' } }), (e) => {
        assert.equal(e.reason, 'protocol');
        assert.match(e.message, /unencrypted data/);
      });
    } finally {
      fake.close();
    }
  });

  it('refuses AuthenticationOk before the SCRAM server signature was verified', async () => {
    const fake = await fakeServer((s) => {
      s.once('data', () => {
        s.write(authenticationSASL(['SCRAM-SHA-256']));
        s.once('data', () => s.write(authenticationOk()));
      });
    });
    try {
      await rejectsWith(connectUpstream({ ...base, port: fake.port, tls: { mode: 'disable' } }), (e) => {
        assert.equal(e.reason, 'auth');
        assert.match(e.message, /without proving its identity/);
      });
    } finally {
      fake.close();
    }
  });

  it('refuses a server that skips authentication when "none" is not allowed', async () => {
    const fake = await fakeServer((s) =>
      s.once('data', () => s.write(Buffer.concat([authenticationOk(), readyForQuery('I')]))),
    );
    try {
      await rejectsWith(
        connectUpstream({ ...base, port: fake.port, tls: { mode: 'disable' }, allowedAuthMethods: ['scram-sha-256'] }),
        (e) => {
          assert.equal(e.reason, 'auth');
        },
      );
    } finally {
      fake.close();
    }
  });

  it('hands over bytes that arrived after ReadyForQuery on the returned socket', async () => {
    const extra = parameterStatus('late', 'value');
    const fake = await fakeServer((s) =>
      s.once('data', () =>
        s.write(
          Buffer.concat([
            authenticationOk(),
            parameterStatus('a', 'b'),
            backendKeyData(5, 6),
            readyForQuery('I'),
            extra,
          ]),
        ),
      ),
    );
    try {
      const conn = await connectUpstream({ ...base, port: fake.port, tls: { mode: 'disable' } });
      assert.equal(conn.authMethod, 'none');
      assert.deepEqual([...conn.parameters], [['a', 'b']]);
      assert.equal(conn.backendKey?.processId, 5);
      const first = new Promise<Buffer>((resolve) => conn.socket.once('data', resolve));
      conn.socket.resume(); // handed over paused
      assert.deepEqual(await first, extra);
      conn.socket.destroy();
    } finally {
      fake.close();
    }
  });
});
