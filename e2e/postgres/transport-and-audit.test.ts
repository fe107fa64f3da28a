// The transport before authentication and the audit trail of every refusal (issue 9): a TLS listener
// refuses plaintext startups before the token is asked for; messages before authentication are bounded;
// one client address may have only so many connections in startup at once; a fast-path FunctionCall, a
// cancel request matching no session, an Execute of a statement refused at Parse and a session ended by a
// FATAL all leave records saying what happened; the substitutes' internal names never reach a client.
import { carriesCommandOutcome } from '@chaperone/api';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import type { AuditRecord } from '@chaperone/api';
import { READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions, testDir } from '../harness/env.ts';
import {
  authenticatedClient,
  errorFields,
  GSSENC_REQUEST,
  i16,
  i32,
  msg,
  packet,
  parseBackend,
  passwordMessage,
  query,
  RawClient,
  SSL_REQUEST,
  startupMessage,
  SYNC,
  type BackendMessage,
} from './raw-client.ts';
import { bind, execute, parse } from './protocol-wire.ts';

const WAIT = 10_000;

function messages(c: RawClient, singleByteAnswers = 0): BackendMessage[] {
  return parseBackend(c.received, singleByteAnswers, true).messages;
}

function errors(c: RawClient, singleByteAnswers = 0): ReturnType<typeof errorFields>[] {
  return messages(c, singleByteAnswers)
    .filter((m) => m.type === 'E')
    .map((m) => errorFields(m.body));
}

/** Waits until `n` ReadyForQuery messages arrived in all. */
async function untilReady(c: RawClient, n: number): Promise<void> {
  const ok = await c.until(() => messages(c).filter((m) => m.type === 'Z').length >= n, WAIT);
  assert.ok(
    ok,
    `expected ${String(n)} ReadyForQuery, got ${messages(c)
      .map((m) => m.type)
      .join('')}`,
  );
}

async function recordsWhen(
  sidecar: RunningTestSidecar,
  done: (records: AuditRecord[]) => boolean,
): Promise<AuditRecord[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const records = sidecar.records().map((r) => r.record);
    if (done(records) || Date.now() > deadline) return records;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Bytes of the substitutes that must never reach a client. */
function assertNoInternalNames(c: RawClient): void {
  const text = c.received.toString('latin1');
  assert.ok(!text.includes('chaperone\u0001denied'), 'the internal portal name reached the client');
  assert.ok(!text.includes('CHAPERONE_DENIED'), 'the internal statement text reached the client');
  assert.ok(!/invalid byte sequence/.test(text), "the substitute Execute's own error reached the client");
}

function selfSignedCertificate(dir: string): { certFile: string; keyFile: string } {
  mkdirSync(dir, { recursive: true });
  const certFile = join(dir, 'listener.crt');
  const keyFile = join(dir, 'listener.key');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  return { certFile, keyFile };
}

test('a TLS listener refuses plaintext startups with 08P01 before asking for the token, and records them', async (t) => {
  const tls = selfSignedCertificate(join(testDir(t), 'tls'));
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, listener: { tls } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });

  // Plaintext, straight away and after a refused GSSAPI encryption request.
  for (const [label, first, answers] of [
    ['plaintext startup', [startupMessage()], 0],
    ['GSSENCRequest, then plaintext', [GSSENC_REQUEST, startupMessage()], 1],
  ] as const) {
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    t.after(() => c.destroy());
    c.write(first[0]);
    if (first.length > 1) {
      assert.ok(await c.until(() => c.receivedLength >= 1, WAIT), label);
      c.write(first[1] as Buffer);
    }
    assert.ok(await c.untilMessage('E', WAIT, answers), `${label}: no ErrorResponse`);
    const [error] = errors(c, answers);
    assert.equal(error?.severity, 'FATAL', label);
    assert.equal(error.code, '08P01', label);
    assert.match(error.message, /^chaperone: this listener requires TLS/, label);
    assert.ok(!messages(c, answers).some((m) => m.type === 'R'), `${label}: the token was asked for in clear`);
    assert.notEqual(await c.untilClosed(WAIT), 'open', label);
  }
  // A driver that does not ask for TLS gets the same answer; one that does gets a session.
  const plain = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'a', password: token, database: 'a' });
  await assert.rejects(plain.connect(), (err: Error & { code?: string }) => {
    assert.equal(err.code, '08P01');
    return true;
  });
  const secure = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'a',
    password: token,
    database: 'a',
    ssl: { rejectUnauthorized: false },
  });
  await secure.connect();
  assert.equal((await secure.query<{ one: number }>('SELECT 1 AS one')).rows[0]?.one, 1);
  await secure.end();
  // The raw one-byte answer to an SSLRequest is 'S' on this listener.
  const raw = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => raw.destroy());
  raw.write(SSL_REQUEST);
  assert.ok(await raw.until(() => raw.receivedLength >= 1, WAIT));
  assert.equal(raw.received.toString('latin1', 0, 1), 'S');

  const records = await recordsWhen(sidecar, (r) => r.filter((x) => x.type === 'auth.failure').length >= 3);
  assert.deepEqual(
    records.filter((r) => r.type === 'auth.failure').map((r) => [r.outcome?.code, r.outcome?.status]),
    [
      ['08P01', 'denied'],
      ['08P01', 'denied'],
      ['08P01', 'denied'],
    ],
  );
});

test('before authentication messages are bounded: an oversized password message is refused from its header', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const attempts: [string, Buffer][] = [
    // Only the header of a 64 MiB password message: refused without waiting for the body.
    ['a 64 MiB length field', Buffer.concat([Buffer.from('p'), i32(64 * 1024 * 1024)])],
    ['a 1 MiB length field', Buffer.concat([Buffer.from('p'), i32(1024 * 1024)])],
    ['a 20 000 byte password', passwordMessage('x'.repeat(20_000))],
    ['a SASL response of 17 KiB', msg('p', Buffer.alloc(17 * 1024, 0x41))],
  ];
  for (const [label, bytes] of attempts) {
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    t.after(() => c.destroy());
    c.write(startupMessage());
    assert.ok(await c.untilMessage('R', WAIT), label);
    c.write(bytes);
    assert.ok(await c.untilMessage('E', WAIT), `${label}: no ErrorResponse`);
    const [error] = errors(c);
    assert.equal(error?.code, '08P01', label);
    assert.match(error.message, /exceeds the limit of 16384 bytes/, label);
    assert.notEqual(await c.untilClosed(WAIT), 'open', label);
  }
  // A real token fits, and after authentication the session limit applies: a 1 MiB statement runs.
  const client = await connectAgent(sidecar, { token });
  const big = 'y'.repeat(1024 * 1024);
  const r = await client.query<{ n: number }>(`SELECT length('${big}') AS n`);
  assert.equal(r.rows[0]?.n, big.length);
  await client.end();
});

test('one client address may have only maxUnauthenticatedPerSource connections in startup; others are refused with 53300 and recorded', async (t) => {
  const limit = 3;
  const sidecar = await startTestSidecar(t, {
    policies: { 'read-only': READ_ONLY },
    listener: { maxUnauthenticatedPerSource: limit },
    // One loop for good: counted per address exactly. Where more loops may run, two addresses share a slot
    // of the shared table by chance (1 in 4,096 per start) and then one bound (event-loops.test.ts).
    eventLoops: 1,
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  // Authenticated sessions do not count.
  for (let i = 0; i <= limit; i++) {
    const s = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
    t.after(() => s.destroy());
  }
  // `limit` connections that say nothing are admitted (they get an answer to a startup later).
  const idle = await Promise.all(Array.from({ length: limit }, () => RawClient.connect(sidecar.host, sidecar.port)));
  for (const c of idle) t.after(() => c.destroy());
  const refused = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => refused.destroy());
  assert.ok(await refused.untilMessage('E', WAIT), 'the connection over the limit is refused at once');
  const [error] = errors(refused);
  assert.equal(error?.severity, 'FATAL');
  assert.equal(error.code, '53300');
  assert.match(error.message, /too many connections from 127\.0\.0\.1 are still authenticating \(at most 3\)/);
  assert.notEqual(await refused.untilClosed(WAIT), 'open');

  // Another address is counted on its own.
  const fromOther = await new Promise<Buffer>((resolve, reject) => {
    const socket = connect({ host: sidecar.host, port: sidecar.port, localAddress: '127.0.0.2' });
    const chunks: Buffer[] = [];
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (Buffer.concat(chunks).includes(Buffer.from('R'))) {
        socket.destroy();
        resolve(Buffer.concat(chunks));
      }
    });
    socket.once('connect', () => socket.write(startupMessage()));
    socket.once('error', reject);
  });
  assert.equal(fromOther.toString('latin1', 0, 1), 'R', 'another address is asked for its token');

  // One idle connection goes away: its place is free again (polled; the deadline only bounds a failure).
  idle[0]?.destroy();
  const deadline = Date.now() + WAIT;
  let admitted = false;
  while (!admitted && Date.now() < deadline) {
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    c.write(startupMessage());
    await c.until(() => c.receivedLength > 0, WAIT);
    admitted = messages(c).some((m) => m.type === 'R');
    c.destroy();
    if (!admitted) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(admitted, 'a freed place is not given back');

  const records = await recordsWhen(sidecar, (r) => r.some((x) => x.outcome?.code === '53300'));
  const failure = records.find((r) => r.type === 'auth.failure' && r.outcome?.code === '53300');
  assert.equal(failure?.outcome?.status, 'denied');
  assert.equal(failure.source?.address?.startsWith('127.0.0.1:'), true);
});

async function databaseWithVictim(t: TestContext): Promise<string> {
  return createTestDatabase(t, 'CREATE TABLE public.victim (id int); INSERT INTO public.victim VALUES (1), (2);');
}

async function victimRows(database: string): Promise<number> {
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  try {
    return (await owner.query<{ n: number }>('SELECT count(*)::int AS n FROM public.victim')).rows[0]?.n ?? -1;
  } finally {
    await owner.end();
  }
}

test('refusals in a session are recorded: a fast-path FunctionCall, an Execute of a statement refused at Parse, a portal no Bind made', async (t) => {
  const database = await databaseWithVictim(t);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const c = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => c.destroy());
  let ready = 1;

  // A fast-path call of any function (here lo_creat, OID 957), refused and recorded.
  c.write(msg('F', i32(957), i16(0), i16(1), i32(4), i32(0x20000), i16(0)));
  await untilReady(c, ++ready);
  // An allowed statement s1, then a DELETE parsed under the same name: refused. The upstream still holds
  // the old s1, so a Bind of s1 succeeds there; the Execute must be refused here, with our own error.
  c.write(Buffer.concat([parse('s1', 'SELECT 1'), SYNC]));
  await untilReady(c, ++ready);
  c.write(Buffer.concat([parse('s1', 'DELETE FROM victim'), SYNC]));
  await untilReady(c, ++ready);
  c.write(Buffer.concat([bind('p', 's1'), execute('p'), SYNC]));
  await untilReady(c, ++ready);
  // A client-made portal with the old internal substitute's name; then an Execute of a portal no Bind
  // made: the substitute must fail whatever portals exist, so the client's portal does not run.
  c.write(Buffer.concat([bind('chaperone\u0001denied', 's1'), execute('nope'), SYNC]));
  await untilReady(c, ++ready);
  c.write(query('SELECT 2 AS still_here'));
  await untilReady(c, ready + 1);

  const got = messages(c);
  const errs = errors(c);
  const expected = [
    /^chaperone: the fast-path function call interface is not allowed/,
    /^chaperone: permission denied by policy default\/read-only/,
    /^chaperone: permission denied by policy default\/read-only/,
    /^chaperone: executing a portal the sidecar did not see bound/,
  ];
  assert.equal(errs.length, expected.length, JSON.stringify(errs));
  for (const [i, e] of errs.entries()) {
    assert.equal(e.code, '42501', e.message);
    assert.match(e.message, expected[i] as RegExp);
  }
  assert.ok(
    got.some((m) => m.type === '2'),
    'the Bind of the old s1 succeeded upstream',
  );
  assert.equal(got.filter((m) => m.type === 'D').length, 1, 'only the last query returned a row');
  assertNoInternalNames(c);
  c.write(msg('X'));
  assert.equal(await victimRows(database), 2);

  const records = await recordsWhen(sidecar, (r) => r.some((x) => x.type === 'session.end'));
  const decisions = records.filter((r) => r.type === 'command.decision');
  assert.deepEqual(
    decisions.map((r) => [r.command?.text, r.decision?.result]),
    [
      ['FUNCTION CALL 957', 'deny'],
      ['DELETE FROM victim', 'deny'],
      ['DELETE FROM victim', 'deny'],
      ['EXECUTE PORTAL "nope"', 'deny'],
      ['SELECT 2 AS still_here', 'allow'],
    ],
  );
  const outcomes = records.filter((r) => carriesCommandOutcome(r)).map((r) => r.outcome?.status);
  assert.deepEqual(outcomes, ['denied', 'denied', 'denied', 'denied', 'success']);
  assert.deepEqual(records.at(-1)?.outcome, { message: 'client terminated the session', status: 'success' });
});

test('a cancel request matching no session is recorded; a session ended by a FATAL says so', async (t) => {
  const database = await databaseWithVictim(t);
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });

  const cancel = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => cancel.destroy());
  cancel.write(packet(i32(80877102), i32(12345), i32(67890)));
  assert.notEqual(await cancel.untilClosed(WAIT), 'open');
  assert.equal(cancel.receivedLength, 0, 'a cancel request is never answered');

  // A protocol violation in a session: FATAL 08P01, and the session ends as an error.
  const broken = await authenticatedClient(sidecar.host, sidecar.port, token, WAIT);
  t.after(() => broken.destroy());
  broken.write(Buffer.from([0x01, 0, 0, 0, 4]));
  assert.ok(await broken.untilMessage('E', WAIT));
  assert.equal(errors(broken)[0]?.code, '08P01');

  // The upstream session killed under it: FATAL 08006, an error too.
  const app = `victim-${String(process.pid)}`;
  const killed = await connectAgent(sidecar, { token }, { client: { application_name: app }, ignoreErrors: true });
  const owner = new pg.Client(directPgOptions(database));
  await owner.connect();
  await owner.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
  await owner.end();
  await assert.rejects(killed.query('SELECT 1'));

  // A protocol violation before authentication (a startup packet of an impossible length).
  const garbage = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => garbage.destroy());
  garbage.write(Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
  assert.ok(await garbage.untilMessage('E', WAIT));
  assert.equal(errors(garbage)[0]?.code, '08P01');

  const records = await recordsWhen(
    sidecar,
    // Waits for the startup violation's own record: the broken session's end carries 08P01 too, and the
    // sink writes in batches, so that one alone can arrive first.
    (r) =>
      r.filter((x) => x.type === 'session.end').length >= 2 &&
      r.some((x) => x.type === 'auth.failure' && x.outcome?.code === '08P01'),
  );
  assert.ok(
    records.some((r) => r.type === 'auth.failure' && r.outcome?.code === '08P01'),
    'the startup protocol violation is recorded',
  );
  const cancelRecord = records.find((r) => r.type === 'auth.failure' && r.outcome?.code === '28000');
  assert.equal(cancelRecord?.outcome?.code, '28000');
  assert.match(cancelRecord.outcome.message ?? '', /cancel request for process 12345 matches no session/);
  const ends = records.filter((r) => r.type === 'session.end').map((r) => [r.outcome?.status, r.outcome?.code]);
  assert.deepEqual(ends.sort(), [
    ['error', '08006'],
    ['error', '08P01'],
  ]);
});

test('a client that never finishes authentication is refused with 08006 when authTimeoutMs passes, and recorded', async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, listener: { authTimeoutMs: 500 } });
  const c = await RawClient.connect(sidecar.host, sidecar.port);
  t.after(() => c.destroy());
  c.write(startupMessage());
  assert.ok(await c.untilMessage('E', WAIT), 'no FATAL after the deadline');
  const [error] = errors(c);
  assert.equal(error?.code, '08006');
  assert.match(error.message, /authentication timed out/);
  const records = await recordsWhen(sidecar, (r) => r.some((x) => x.type === 'auth.failure'));
  assert.deepEqual(
    records.map((r) => [r.type, r.outcome?.status, r.outcome?.code]),
    [['auth.failure', 'denied', '08006']],
  );
});
