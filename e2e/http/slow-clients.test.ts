// Slow clients against the HTTP engine (docs/http-engine.md, "Slow clients"): a client that sends its headers
// a line at a time (slowloris) and one that sends its body a byte at a time are answered 408
// (`RequestTimeout`) and cut off once requestHeadersTimeoutMs / requestTimeoutMs pass, while other clients
// are served meanwhile; the upstream never receives the slow requests. The test waits for the connections'
// close events; the timeouts are only what ends them.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { testDir } from '../harness/env.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { ALLOW_ALL, spawnSidecar } from '../harness/sidecar-process.ts';
import { raw } from './raw-request.ts';

/** Opens a connection, writes `head`, then one `drip` every 200 ms until the sidecar closes it; resolves with all it answered. */
function dripping(port: number, head: string, drip: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(head));
    const timer = setInterval(() => {
      if (socket.writable) socket.write(drip);
    }, 200);
    // A failure bound only: the sidecar must have cut the connection long before.
    const bound = setTimeout(() => socket.destroy(new Error('the slow client was never cut off')), 60_000);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', (err: Error & { code?: string }) => {
      if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') reject(err);
    });
    socket.once('close', () => {
      clearInterval(timer);
      clearTimeout(bound);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

test('slow-header and slow-body clients are cut off with a 408 while others are served', async (t) => {
  const received: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    received.push(`${req.method ?? ''} ${req.url ?? ''}`);
    res.writeHead(200, { 'content-length': 2 });
    res.end('{}');
  });
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), 'slow-upstream-key');
  const sidecar = await spawnSidecar({
    dir,
    policies: { all: { ...ALLOW_ALL, resources: { names: ['api'] } } },
    listeners: [
      {
        name: 'api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String((upstream.address() as { port: number }).port)}`,
          tls: { mode: 'disable' },
          credential: { valueFile: join(dir, 'credential') },
        },
        auditFailureMode: 'FailClosed',
        requestHeadersTimeoutMs: 1000,
        requestTimeoutMs: 2000,
      },
    ],
  });
  t.after(() => sidecar.stop());
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:slow' });
  const auth = `Authorization: Bearer ${token}\r\n`;

  const slowHeaders = dripping(sidecar.port, `GET /slow-headers HTTP/1.1\r\nHost: x\r\n${auth}`, 'X-Drip: 1\r\n');
  const slowBody = dripping(
    sidecar.port,
    `POST /slow-body HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n`,
    ' ',
  );
  // Served while both slow clients hold their connections.
  const served = await raw(sidecar.port, `GET /quick HTTP/1.1\r\nHost: x\r\n${auth}Connection: close\r\n\r\n`);
  assert.match(served, /^HTTP\/1\.1 200 /);

  for (const answer of [await slowHeaders, await slowBody]) {
    assert.match(answer, /^HTTP\/1\.1 408 /);
    assert.match(answer, /application\/problem\+json/);
    assert.match(answer, /RequestTimeout|did not arrive in time/);
    assert.match(answer, /Connection: close/i);
  }
  assert.deepEqual(received, ['GET /quick']);
  // The sidecar is still serving.
  assert.match(
    await raw(sidecar.port, `GET /after HTTP/1.1\r\nHost: x\r\n${auth}Connection: close\r\n\r\n`),
    /^HTTP\/1\.1 200 /,
  );
  assert.match(sidecar.logs(), /malformed HTTP request|request timeout|ERR_HTTP_REQUEST_TIMEOUT/);
});
