// Clients that go away while the HTTP engine serves their requests, sent raw to the real sidecar in front of
// a loopback upstream that holds its answers to /slow/ until the test ends: pipelined requests forwarded and
// then abandoned. Every decided request ends with exactly one outcome record (cancelled, 499: nothing was
// answered), and each abandoned upstream request is cut.
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { poll } from '../harness/poll.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [{ name: 'items', decision: 'allow', match: { http: { paths: ['/slow/**', '/items/**'] } } }],
  defaultDecision: 'deny',
};

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });
}

test('a client that goes away from the HTTP engine', async (t) => {
  /** Upstream requests by URL: whether they arrived whole, and whether their connection was cut since. */
  const upstreamSeen = new Map<string, { closed: boolean }>();
  const held: ServerResponse[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    const seen = { closed: false };
    req.resume();
    req.on('end', () => {
      upstreamSeen.set(req.url ?? '', seen);
      if ((req.url ?? '').startsWith('/slow/')) held.push(res);
      else res.end('ok');
    });
    res.once('close', () => (seen.closed = !res.writableFinished));
  });
  t.after(() => {
    for (const res of held) res.destroy();
  });
  const dir = testDir(t);
  const sidecar = await spawnSidecar({
    dir,
    policies: { gone: POLICY },
    listeners: [
      {
        name: 'api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String((upstream.address() as { port: number }).port)}`,
          tls: { mode: 'disable' },
        },
        auditFailureMode: 'FailClosed',
      },
    ],
  });
  t.after(() => sidecar.stop());
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:leaver' });
  const head = (line: string, extra = '') =>
    `${line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${extra}\r\n`;

  /** Decision records by request line, with their outcome (merged into the decision or a record of its own). */
  const decided = async () => {
    const entries = await sidecar.settledRecords();
    const outcomes = (sessionId: string, id: number | undefined) =>
      entries.filter(
        (e) => e.session.sessionId === sessionId && e.record.type === 'command.outcome' && e.record.command?.id === id,
      );
    const byLine = new Map<string, { count: number; status: string; code: string; message: string }>();
    for (const e of entries) {
      if (e.record.type !== 'command.decision') continue;
      const separate = outcomes(e.session.sessionId, e.record.command?.id).map((o) => o.record.outcome);
      const all = [...(e.record.outcome === undefined ? [] : [e.record.outcome]), ...separate];
      byLine.set(e.record.command?.text ?? '', {
        count: all.length,
        status: all[0]?.status ?? 'none',
        code: all[0]?.code ?? '',
        message: all[0]?.message ?? '',
      });
    }
    return byLine;
  };

  await t.test('pipelined requests forwarded, then the client goes: each is cut and recorded once', async () => {
    const socket = await open(sidecar.port);
    // The second request's response waits behind the first: it is not attached to the connection yet.
    socket.write(`${head('GET /slow/a')}${head('GET /slow/b')}`);
    await poll('both requests held by the upstream', () =>
      Promise.resolve(upstreamSeen.has('/slow/a') && upstreamSeen.has('/slow/b') ? true : undefined),
    );
    socket.destroy();
    await poll('both upstream requests cut', () =>
      Promise.resolve(upstreamSeen.get('/slow/a')?.closed && upstreamSeen.get('/slow/b')?.closed ? true : undefined),
    );
    const records = await poll('both outcome records', async () => {
      const r = await decided();
      return r.get('GET /slow/a')?.count === 1 && r.get('GET /slow/b')?.count === 1 ? r : undefined;
    });
    for (const line of ['GET /slow/a', 'GET /slow/b']) {
      const entry = records.get(line);
      assert.equal(entry?.status, 'cancelled', `${line}: ${JSON.stringify(entry)}`);
      assert.equal(entry.code, '499');
      assert.match(entry.message, /client closed the connection before the answer was delivered \(forwarded\)/);
    }
  });

  await t.test('a request after them on a new connection is served as usual', async () => {
    const socket = await open(sidecar.port);
    const answer = await new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString('latin1');
        if (text.includes('\r\n0\r\n\r\n') || text.endsWith('ok')) resolve(text);
      });
      socket.write(head('GET /items/after'));
    });
    socket.destroy();
    assert.match(answer, /^HTTP\/1\.1 200 /);
    const records = await poll('its outcome', async () => {
      const r = await decided();
      return r.get('GET /items/after')?.count === 1 ? r : undefined;
    });
    assert.equal(records.get('GET /items/after')?.status, 'success');
    assert.equal(records.get('GET /items/after')?.code, '200');
  });
});
