// Secret hygiene of the real sidecar process: after a realistic mix of sessions (good logins, every attack
// token, an upstream error, denied statements, a protocol violation), no byte any client received and no line
// of the sidecar's log or audit file carries the upstream password (in any encoding a careless proxy would
// use) or SCRAM material derived from it, and no log or audit line carries a presented token; the log does
// carry the `sha256:` hash of every failed token, proving the hashing path ran.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import pg from 'pg';
import { postgresEnv } from '../harness/env.ts';
import { assertAbsent, upstreamCredentials } from '../harness/secret-scan.ts';
import { READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { RawClient, errorFields, msg, parseBackend, passwordMessage, startupMessage } from './raw-client.ts';

const SUBJECT = 'system:serviceaccount:ci:secrets';

/** A loopback TCP relay in front of the sidecar that keeps every byte the sidecar sent to any client. */
async function recordingTap(
  target: RunningTestSidecar,
): Promise<{ port: number; toClients: Buffer[]; server: Server }> {
  const toClients: Buffer[] = [];
  const server = createServer((client) => {
    const upstream = connect({ host: target.host, port: target.port });
    upstream.on('data', (chunk: Buffer) => {
      toClients.push(Buffer.from(chunk));
      client.write(chunk);
    });
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, toClients, server };
}

test('secrets: no client byte, log line or audit line carries the upstream password or a presented token', async (t) => {
  const env = postgresEnv();
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const tap = await recordingTap(sidecar);
  t.after(() => new Promise<void>((resolve) => tap.server.close(() => resolve())));
  const good = await sidecar.issuer.sign({ sub: SUBJECT });
  const attacks = await sidecar.issuer.attacks(SUBJECT);
  const client = (password: string) =>
    new pg.Client({ host: '127.0.0.1', port: tap.port, user: 'agent', database: 'agent-db', password, ssl: false });

  // 1. Good sessions: reads (simple and extended protocol), denials, upstream errors, including an attempt to
  //    read the role's own password verifier.
  for (let i = 0; i < 2; i++) {
    const c = client(good);
    await c.connect();
    assert.deepEqual((await c.query('select 1 as one')).rows, [{ one: 1 }]);
    assert.deepEqual((await c.query('select $1::text as v', ['param'])).rows, [{ v: 'param' }]);
    await assert.rejects(c.query('create table leak (id int)'), { code: '42501' });
    await assert.rejects(c.query('select 1/0'), { code: '22012' });
    await assert.rejects(c.query('select rolpassword from pg_authid'), { code: '42501' });
    await assert.rejects(c.query('select passwd from pg_shadow'), { code: '42501' });
    await assert.rejects(c.query('select * from no_such_table_anywhere'), { code: '42P01' });
    assert.deepEqual((await c.query('select current_user = $1 as same', [env.user])).rows, [{ same: true }]);
    await c.end();
  }

  // 2. Every attack token, and a few malformed passwords, through a real driver: each refused with 28P01.
  const presented = [good, ...Object.values(attacks), '', 'x'.repeat(5000)];
  for (const [name, token] of Object.entries(attacks)) {
    const c = client(token);
    c.on('error', () => undefined);
    await assert.rejects(c.connect(), (err: { code?: string }) => {
      assert.equal(err.code, '28P01', `attack "${name}" is refused with 28P01`);
      return true;
    });
  }
  for (const token of ['', 'x'.repeat(5000)]) {
    const raw = await RawClient.connect('127.0.0.1', tap.port);
    raw.write(Buffer.concat([startupMessage(), passwordMessage(token)]));
    assert.notEqual(await raw.untilClosed(30_000), 'open');
    const last = parseBackend(raw.received).messages.at(-1);
    assert.equal(last?.type, 'E');
    assert.equal(errorFields(last.body).code, '28P01');
    raw.destroy();
  }

  // 3. A protocol violation inside an authenticated session.
  {
    const raw = await RawClient.connect('127.0.0.1', tap.port);
    raw.write(startupMessage());
    assert.ok(await raw.untilMessage('R', 30_000));
    raw.write(passwordMessage(good));
    assert.ok(await raw.untilMessage('Z', 30_000));
    raw.write(msg('Q', Buffer.from('select 1')));
    assert.notEqual(await raw.untilClosed(30_000), 'open');
    const last = parseBackend(raw.received).messages.at(-1);
    assert.equal(last?.type, 'E');
    assert.equal(errorFields(last.body).code, '08P01');
    raw.destroy();
  }
  await sidecar.stop(); // the audit file and the log are complete once the process has exited

  // No client received the upstream password in any encoding, nor md5 or SCRAM material derived from it.
  const toClients = Buffer.concat(tap.toClients);
  assert.ok(toClients.length > 1000, 'the clients received something');
  assertAbsent(toClients, upstreamCredentials(), 'bytes sent to clients');

  // The log is JSON lines, holds neither password nor tokens, and holds the hash of every refused token.
  const logText = sidecar.logs();
  const lines = logText.split('\n').filter((l) => l !== '');
  assert.ok(lines.length > 10);
  for (const [i, line] of lines.entries()) {
    assert.doesNotThrow(() => JSON.parse(line), `log line ${i + 1} is JSON: ${line.slice(0, 120)}`);
  }
  const tokenSecrets = presented
    .filter((p) => p.length >= 6)
    .map((p, i) => ({ label: `presented token #${i}`, forms: [p] }));
  assertAbsent(logText, [...upstreamCredentials(), ...tokenSecrets], 'sidecar log');
  const refused = [...Object.values(attacks), '', 'x'.repeat(5000)];
  const failures = lines
    .map((l) => JSON.parse(l) as { msg?: string; tokenHash?: string })
    .filter((l) => l.msg === 'authentication failed');
  assert.equal(failures.length, refused.length, 'one "authentication failed" log line per refused token');
  for (const token of refused) {
    const hash = `sha256:${createHash('sha256').update(token).digest('hex')}`;
    assert.ok(
      failures.some((l) => l.tokenHash === hash),
      `the log carries ${hash.slice(0, 20)}… for a refused token`,
    );
  }

  // The audit file: same, and one auth.failure record per refused token.
  const auditTypes = (await sidecar.settledRecords()).map((r) => r.record.type);
  const auditText = readFileSync(sidecar.auditFile, 'utf8');
  assertAbsent(auditText, [...upstreamCredentials(), ...tokenSecrets], 'audit file');
  assert.equal(auditTypes.filter((ty) => ty === 'auth.failure').length, refused.length);
});
