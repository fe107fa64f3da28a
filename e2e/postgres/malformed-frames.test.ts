// Malformed frames inside a session (the twelfth session's red team): what PostgreSQL itself answers, sent
// raw and directly to the harness server (over its Unix socket, as the superuser it trusts there), next to
// what the sidecar answers for the same bytes. PostgreSQL frames every message by its length word, and for
// these it raises an ERROR (08P01) and keeps the connection; the sidecar ends the connection with FATAL
// 08P01 before any of the frame is forwarded (docs/postgres-engine.md, "Malformed frames", says why).
// Every case through the sidecar: the session's end is on the audit trail with 08P01, the process still
// serves, and a fresh connection works.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { postgresEnv } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { authenticatedClient, cstr, i16, i32, msg, query, RawClient, startupMessage, SYNC } from './raw-client.ts';
import { bind, exchange, execute, firstColumns, parse, type Reply } from './protocol-wire.ts';

const TIMEOUT_MS = 30_000;
const SUBJECT = 'system:serviceaccount:ci:malformed-frames';

interface Case {
  readonly name: string;
  readonly bytes: Buffer;
  /** What PostgreSQL 15 answers, measured on the harness server: its error, then the connection goes on. */
  readonly server: { readonly types: string; readonly message: RegExp };
}

const PARSE_TEXT = parse('', 'select $1::text');

const CASES: readonly Case[] = [
  {
    name: 'a Query with an embedded NUL',
    bytes: msg('Q', cstr('select 1'), cstr('select 2')),
    server: { types: 'E Z', message: /invalid message format/ },
  },
  {
    name: 'a Query with a byte after its terminator (length one long)',
    bytes: msg('Q', cstr('select 1'), Buffer.from('x')),
    server: { types: 'E Z', message: /invalid message format/ },
  },
  {
    name: 'a Parse with trailing bytes',
    bytes: Buffer.concat([msg('P', cstr(''), cstr('select 1'), i16(0), Buffer.from('xx')), SYNC]),
    server: { types: 'E Z', message: /invalid message format/ },
  },
  {
    name: 'a Bind with two parameter formats for one parameter',
    bytes: Buffer.concat([
      PARSE_TEXT,
      msg('B', cstr(''), cstr(''), i16(2), i16(0), i16(0), i16(1), i32(1), Buffer.from('a'), i16(0)),
      execute(''),
      SYNC,
    ]),
    server: { types: '1 E Z', message: /bind message has 2 parameter formats but 1 parameters/ },
  },
  {
    name: 'a Bind with a parameter length below -1',
    bytes: Buffer.concat([
      PARSE_TEXT,
      msg('B', cstr(''), cstr(''), i16(0), i16(1), i32(-2), i16(0)),
      execute(''),
      SYNC,
    ]),
    server: { types: '1 E Z', message: /insufficient data left in message/ },
  },
  {
    name: 'an Execute with trailing bytes',
    bytes: Buffer.concat([PARSE_TEXT, bind('', '', ['a']), msg('E', cstr(''), i32(0), Buffer.from('x')), SYNC]),
    server: { types: '1 2 E Z', message: /invalid message format/ },
  },
  {
    name: 'a Sync with a body',
    bytes: msg('S', Buffer.from('x')),
    server: { types: 'E Z', message: /invalid message format/ },
  },
];

/** A raw session with the harness server itself, as the superuser over the Unix socket (trust). */
async function directSession(database: string): Promise<RawClient> {
  const pg = postgresEnv();
  const client = await RawClient.connectPath(join(pg.socketDir, `.s.PGSQL.${String(pg.port)}`));
  client.write(startupMessage({ user: 'postgres', database }));
  if (!(await client.untilMessage('Z', TIMEOUT_MS))) throw new Error('no ReadyForQuery from the server');
  return client;
}

function sane(reply: Reply): string {
  return `${reply.types} ${firstColumns(reply).join(',')}`;
}

test('malformed frames: PostgreSQL answers an ERROR and goes on; the sidecar ends the connection with FATAL 08P01', async (t) => {
  const database = await createTestDatabase(t, 'create table t (id int)');
  const sidecar = await startTestSidecar(t, { database });
  const token = await sidecar.issuer.sign({ sub: SUBJECT });

  for (const c of CASES) {
    await t.test(c.name, async () => {
      // The server itself.
      const direct = await directSession(database);
      try {
        const reply = await exchange(direct, c.bytes, 1);
        assert.equal(reply.types, c.server.types, `the server: ${reply.errors.join('; ')}`);
        assert.deepEqual(reply.codes, ['08P01']);
        assert.equal(reply.severity, 'ERROR');
        assert.match(reply.errors[0] ?? '', c.server.message);
        assert.equal(sane(await exchange(direct, query('select 1'), 1)), 'T D C Z 1', 'the server goes on');
      } finally {
        direct.destroy();
      }

      // The sidecar.
      const client = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
      try {
        const reply = await exchange(client, c.bytes, 0);
        assert.equal(reply.closed, true, 'the sidecar ends the connection');
        assert.deepEqual(reply.codes, ['08P01'], reply.errors.join('; '));
        assert.equal(reply.severity, 'FATAL');
        assert.equal(reply.messages.at(-1)?.type, 'E', 'the FATAL is the last message');
        assert.ok(!reply.types.includes('Z'), `nothing of the frame was answered: ${reply.types}`);
      } finally {
        client.destroy();
      }
      const fresh = await authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
      try {
        assert.equal(sane(await exchange(fresh, query('select 1'), 1)), 'T D C Z 1', 'a fresh connection works');
      } finally {
        fresh.destroy();
      }
    });
  }

  await t.test('every connection ended by a frame is on the audit trail with 08P01', async () => {
    const ended = (): number =>
      readFileSync(sidecar.auditFile, 'utf8')
        .split('\n')
        .filter((line) => line.includes('"type":"session.end"') && line.includes('"code":"08P01"')).length;
    await poll('the session.end records', () => Promise.resolve(ended() >= CASES.length ? true : undefined));
    assert.equal(ended(), CASES.length);
  });
});
