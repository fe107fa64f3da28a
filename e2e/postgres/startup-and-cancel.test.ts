// The startup phase and CancelRequest against the real sidecar, case by case, compared with what the real
// PostgreSQL server does with the same bytes where it can be asked: protocol versions nobody speaks (0.0,
// 2.0, 4.0, 1234.x), versions to negotiate down (3.2, 3.99 with a _pq_ option), SSLRequest or GSSENCRequest
// twice, GSSENCRequest then SSLRequest (libpq's fallback), a startup packet, a password and a query sent
// one byte per write. Then cancel isolation between two agents of one sidecar: a cancel key
// of another session, a stale key whose upstream session another agent now uses, a key of the wrong length
// — none cancels the other agent's statement (each is recorded as refused); only its own key does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import {
  GSSENC_REQUEST,
  RawClient,
  SSL_REQUEST,
  cstr,
  errorFields,
  i32,
  packet,
  parseBackend,
  passwordMessage,
  query,
  startupMessage,
} from './raw-client.ts';

/** A failure bound only: every case ends its connection as soon as its bytes are read. */
const TIMEOUT_MS = 30_000;
const CANCEL_REQUEST_CODE = 80877102;

/** A StartupMessage with any protocol version field. */
function startupWithVersion(major: number, minor: number, parameters: Record<string, string>): Buffer {
  const pairs = Object.entries(parameters).flatMap(([k, v]) => [cstr(k), cstr(v)]);
  return packet(i32(((major << 16) | minor) >>> 0), ...pairs, Buffer.from([0]));
}

interface Ending {
  /** The one-byte answers to SSLRequest/GSSENCRequest, in order. */
  readonly answers: string;
  /** SQLSTATE and severity of the ErrorResponse that ended the connection, if any. */
  readonly error?: { code: string; severity: string };
  readonly closed: boolean;
}

/** Sends `steps` (waiting for one answer byte after each step that expects one) and reads until the server closes. */
async function ending(host: string, port: number, steps: readonly { bytes: Buffer; answer?: true }[]): Promise<Ending> {
  const c = await RawClient.connect(host, port);
  try {
    let answers = 0;
    for (const step of steps) {
      c.write(step.bytes);
      if (step.answer) {
        answers++;
        const expected = answers;
        await c.until(() => c.receivedLength >= expected, TIMEOUT_MS);
      }
    }
    const end = await c.untilClosed(TIMEOUT_MS);
    const received = c.received;
    const singles = received.subarray(0, answers).toString('latin1');
    const { messages } = parseBackend(received.subarray(answers), 0, true);
    const e = messages.find((m) => m.type === 'E');
    const fields = e === undefined ? undefined : errorFields(e.body);
    return {
      answers: singles,
      ...(fields === undefined ? {} : { error: { code: fields.code, severity: fields.severity } }),
      closed: end !== 'open',
    };
  } finally {
    c.destroy();
  }
}

test('startup phase: what PostgreSQL refuses, the sidecar refuses with the same SQLSTATE and stays up', async (t) => {
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const direct = directPgOptions(database);
  const params = { user: direct.user, database };

  // `compare`: PostgreSQL can be asked the same (its listener has TLS and GSSAPI, so the SSLRequest and
  // GSSENCRequest cases cannot be; its source, ProcessStartupPacket, reads a second one as a request for
  // protocol 1234.5679 or 1234.5680 and answers 0A000).
  const cases: readonly {
    name: string;
    steps: { bytes: Buffer; answer?: true }[];
    answers: string;
    compare: boolean;
  }[] = [
    { name: 'protocol 4.0', steps: [{ bytes: startupWithVersion(4, 0, params) }], answers: '', compare: true },
    {
      name: 'protocol 1234.5681 (no such request code)',
      steps: [{ bytes: startupWithVersion(1234, 5681, params) }],
      answers: '',
      compare: true,
    },
    { name: 'protocol 0.0', steps: [{ bytes: startupWithVersion(0, 0, params) }], answers: '', compare: true },
    // PostgreSQL answers a 2.0 client in the 2.0 format ('E' and a line of text); the sidecar in 3.0's.
    { name: 'protocol 2.0', steps: [{ bytes: startupWithVersion(2, 0, params) }], answers: '', compare: false },
    {
      name: 'SSLRequest twice',
      steps: [{ bytes: SSL_REQUEST, answer: true }, { bytes: SSL_REQUEST }],
      answers: 'N',
      compare: false,
    },
    {
      name: 'GSSENCRequest twice',
      steps: [{ bytes: GSSENC_REQUEST, answer: true }, { bytes: GSSENC_REQUEST }],
      answers: 'N',
      compare: false,
    },
  ];
  for (const c of cases) {
    await t.test(`${c.name}: FATAL 0A000, as PostgreSQL`, async () => {
      const proxy = await ending(sidecar.host, sidecar.port, c.steps);
      assert.equal(proxy.answers, c.answers, c.name);
      assert.ok(proxy.closed, `${c.name}: the sidecar ends the connection`);
      assert.deepEqual(proxy.error, { code: '0A000', severity: 'FATAL' }, c.name);
      if (c.compare) {
        const server = await ending(direct.host, direct.port, c.steps);
        assert.deepEqual(proxy.error, server.error, `${c.name}: PostgreSQL ends it the same way`);
      }
    });
  }

  await t.test('a CancelRequest after SSLRequest was answered: closed without an answer', async () => {
    const proxy = await ending(sidecar.host, sidecar.port, [
      { bytes: SSL_REQUEST, answer: true },
      { bytes: packet(i32(CANCEL_REQUEST_CODE), i32(1), i32(2)) },
    ]);
    assert.deepEqual([proxy.answers, proxy.error, proxy.closed], ['N', undefined, true]);
  });

  for (const [major, minor] of [
    [3, 2],
    [3, 99],
  ] as const) {
    await t.test(
      `protocol ${String(major)}.${String(minor)} with a _pq_ option: negotiated down to 3.0, as PostgreSQL`,
      async () => {
        const first = async (host: string, port: number) => {
          const c = await RawClient.connect(host, port);
          try {
            c.write(startupWithVersion(major, minor, { ...params, '_pq_.chaperone_test': 'on' }));
            assert.ok(await c.untilMessage('R', TIMEOUT_MS), c.received.toString('hex'));
            const { messages } = parseBackend(c.received, 0, true);
            return messages.map((m) => (m.type === 'v' ? `v:${m.body.toString('hex')}` : m.type));
          } finally {
            c.destroy();
          }
        };
        const server = await first(direct.host, direct.port);
        const proxy = await first(sidecar.host, sidecar.port);
        assert.equal(proxy[0], server[0], 'the same NegotiateProtocolVersion (newest minor, options not recognised)');
        assert.equal(proxy[1], 'R');
      },
    );
  }

  await t.test('GSSENCRequest, then SSLRequest, then a login (libpq falls back this way): accepted', async () => {
    const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:runner' });
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    try {
      c.write(GSSENC_REQUEST);
      assert.ok(await c.until(() => c.receivedLength >= 1, TIMEOUT_MS));
      c.write(SSL_REQUEST);
      assert.ok(await c.until(() => c.receivedLength >= 2, TIMEOUT_MS));
      assert.equal(c.received.subarray(0, 2).toString('latin1'), 'NN');
      c.write(startupMessage());
      assert.ok(await c.untilMessage('R', TIMEOUT_MS, 2));
      c.write(passwordMessage(token));
      assert.ok(await c.untilMessage('Z', TIMEOUT_MS, 2), c.received.toString('hex'));
    } finally {
      c.destroy();
    }
  });

  await t.test('a startup packet, a password and a query sent one byte per write: accepted', async () => {
    const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:runner' });
    const c = await RawClient.connect(sidecar.host, sidecar.port);
    const dribble = async (bytes: Buffer) => {
      for (const b of bytes) {
        c.write(Buffer.from([b]));
        // Let each byte travel as its own segment.
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    try {
      await dribble(startupMessage());
      assert.ok(await c.untilMessage('R', TIMEOUT_MS));
      await dribble(passwordMessage(token));
      assert.ok(await c.untilMessage('Z', TIMEOUT_MS), c.received.toString('hex'));
      const before = parseBackend(c.received).messages.length;
      await dribble(query("select 'one byte at a time' as x"));
      assert.ok(
        await c.until(
          () =>
            parseBackend(c.received, 0, true)
              .messages.slice(before)
              .some((m) => m.type === 'Z'),
          TIMEOUT_MS,
        ),
      );
      const rows = parseBackend(c.received)
        .messages.slice(before)
        .filter((m) => m.type === 'D');
      assert.equal(rows.length, 1);
      assert.ok(rows[0]?.body.includes(Buffer.from('one byte at a time')));
    } finally {
      c.destroy();
    }
  });

  await t.test('the sidecar is still serving', async () => {
    const client = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:runner' });
    try {
      assert.equal((await client.query<{ n: number }>('select 1 as n')).rows[0]?.n, 1);
    } finally {
      await client.end();
    }
  });
});

/** Sends one CancelRequest and waits until the sidecar has closed it (it never answers one). */
async function sendCancel(host: string, port: number, processId: number, secretKey: Buffer): Promise<void> {
  const c = await RawClient.connect(host, port);
  try {
    c.write(packet(i32(CANCEL_REQUEST_CODE), i32(processId), secretKey));
    assert.notEqual(await c.untilClosed(TIMEOUT_MS), 'open', 'the sidecar closes a cancel connection');
    assert.equal(c.receivedLength, 0, 'a cancel request is never answered');
  } finally {
    c.destroy();
  }
}

/** The client-facing cancel key node-postgres received in BackendKeyData. */
function keyOf(client: pg.Client): { processId: number; secretKey: Buffer } {
  const c = client as unknown as { processID: number; secretKey: number };
  const secretKey = Buffer.alloc(4);
  secretKey.writeInt32BE(c.secretKey);
  return { processId: c.processID, secretKey };
}

test('cancel isolation: one agent cannot cancel another agent’s statement, only its own key cancels', async (t) => {
  const database = await createTestDatabase(t);
  const sidecar = await startTestSidecar(t, { policies: { 'allow-all': ALLOW_ALL }, database });
  const connect = (sub: string) => connectAgent(sidecar, { sub }, { expiresIn: 3600 });
  const observer = new pg.Client(directPgOptions(database));
  // The database is dropped when the test ends, which terminates what is still connected.
  observer.on('error', () => undefined);
  await observer.connect();

  // Agent B: connects, notes its key and backend, leaves (its upstream session is parked for reuse).
  const b = await connect('agent:b');
  const bKey = keyOf(b);
  const bBackend = (await b.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
  await b.end();
  // Agent A: connects, likely onto B's former upstream session, and runs a long statement.
  const a = await connect('agent:a');
  a.on('error', () => undefined);
  const aKey = keyOf(a);
  const aBackend = (await a.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
  assert.notDeepEqual(aKey, bKey);
  const running = a.query('select pg_sleep(120) as slept').then(
    () => 'finished',
    (err: unknown) => (err as { code?: string }).code ?? 'error',
  );
  await poll('PostgreSQL to run the pg_sleep', async () => {
    const active = await observer.query(
      "select 1 from pg_stat_activity where pid = $1 and state = 'active' and query like 'select pg_sleep(120)%'",
      [aBackend],
    );
    return active.rowCount === 1 ? true : undefined;
  });

  const flipped = Buffer.from(aKey.secretKey);
  flipped[3] = (flipped[3] ?? 0) ^ 1;
  const forgeries: Record<string, [number, Buffer]> = {
    "B's stale key (its upstream session may now run A's statement)": [bKey.processId, bKey.secretKey],
    "A's process id with B's secret": [aKey.processId, bKey.secretKey],
    "A's process id with one bit of the secret flipped": [aKey.processId, flipped],
    "A's key padded to a protocol 3.2 length of 32 bytes": [
      aKey.processId,
      Buffer.concat([aKey.secretKey, Buffer.alloc(28)]),
    ],
    "A's key with a byte more": [aKey.processId, Buffer.concat([aKey.secretKey, Buffer.from([0])])],
  };
  for (const [name, [processId, secretKey]] of Object.entries(forgeries)) {
    await t.test(`refused: ${name}`, async () => {
      await sendCancel(sidecar.host, sidecar.port, processId, secretKey);
    });
  }
  await t.test('every forgery is recorded as a refused cancel, and A’s statement still runs', async () => {
    // A matched key records nothing: five records show that none of the five was taken for a session.
    await poll('five refused cancels recorded', async () => {
      const refused = (await sidecar.settledRecords()).filter(
        (e) =>
          e.record.type === 'auth.failure' &&
          e.record.outcome?.code === '28000' &&
          (e.record.outcome.message ?? '').includes('cancel request for process'),
      );
      return refused.length >= Object.keys(forgeries).length ? refused : undefined;
    });
    const active = await observer.query("select 1 from pg_stat_activity where pid = $1 and state = 'active'", [
      aBackend,
    ]);
    assert.equal(
      active.rowCount,
      1,
      `A's statement is still running (A on backend ${String(aBackend)}, B was on ${String(bBackend)})`,
    );
  });

  await t.test("A's own key cancels A's statement (57014)", async () => {
    await sendCancel(sidecar.host, sidecar.port, aKey.processId, aKey.secretKey);
    assert.equal(await running, '57014');
  });
  await a.end();
  await observer.end();
});
