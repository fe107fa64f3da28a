// Bytes Node's HTTP parser refuses after (or inside) a request the HTTP engine has begun to serve, sent raw
// to the real sidecar in front of a loopback upstream that records every byte it receives: a malformed
// request after a complete one, bytes after a `Connection: close` request, a pipelined request with a bad
// header, garbage after a chunked body's last chunk, a chunk-size error inside a body, extra bytes after a
// Content-Length body. The parser answers 400 and ends the connection; a request on that connection that was
// not forwarded yet is not forwarded (its decision record says why), a cut body never is, and no byte of
// the malformed part reaches the upstream.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { spawnHttpEngineSidecar } from './http-sidecar.ts';
import { raw } from './raw-request.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [{ name: 'items', decision: 'allow', match: { http: { paths: ['/items/**'] } } }],
  defaultDecision: 'deny',
};

test('parser-error tails on the HTTP engine', async (t) => {
  const upstreamBytes: Buffer[] = [];
  const upstreamRequests: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      upstreamRequests.push(`${req.method ?? ''} ${req.url ?? ''} ${Buffer.concat(chunks).toString('latin1')}`);
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
      res.end('ok');
    });
  });
  upstream.on('connection', (socket) => socket.on('data', (c: Buffer) => upstreamBytes.push(c)));
  const upstreamPort = (upstream.address() as { port: number }).port;
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort,
    policies: { tails: POLICY },
    credential: 'tails-upstream-key',
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:tails' });
  const head = (line: string, extra = '') =>
    `${line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${extra}`;

  // Each case in one write: the parser refuses its tail while the engine is still admitting the first request.
  const cases: readonly { name: string; bytes: string; paths: readonly string[]; code: string }[] = [
    {
      name: 'a malformed request after a Content-Length body',
      bytes: `${head('POST /items/a', 'Content-Length: 5\r\n')}\r\nhelloGARBAGE /x HTTP/1.1\r\n\r\n`,
      paths: ['/items/a'],
      code: 'HPE_INVALID_METHOD',
    },
    {
      name: 'a chunk-size error inside a chunked body (the body is cut)',
      bytes: `${head('POST /items/b', 'Transfer-Encoding: chunked\r\n')}\r\n5\r\nhello\r\nZZ\r\nworld\r\n0\r\n\r\n`,
      paths: ['/items/b'],
      code: 'HPE_INVALID_CHUNK_SIZE',
    },
    {
      name: 'garbage after the last chunk',
      bytes: `${head('POST /items/c', 'Transfer-Encoding: chunked\r\n')}\r\n5\r\nhello\r\n0\r\n\r\nGARBAGE\r\n\r\n`,
      paths: ['/items/c'],
      code: 'HPE_INVALID_METHOD',
    },
    {
      name: 'a pipelined request with a bad header name',
      bytes: `${head('GET /items/d')}\r\n${head('GET /items/e', 'Bad Header: y\r\n')}\r\n`,
      paths: ['/items/d'],
      code: 'HPE_INVALID_HEADER_TOKEN',
    },
    {
      name: 'bytes after a Connection: close request',
      bytes: `${head('GET /items/f', 'Connection: close\r\n')}\r\nGET /items/smuggled HTTP/1.1\r\nHost: x\r\n\r\n`,
      paths: ['/items/f'],
      code: 'HPE_CLOSED_CONNECTION',
    },
    {
      name: 'two valid pipelined requests, then control bytes',
      bytes: `${head('GET /items/g')}\r\n${head('GET /items/h')}\r\n\x01\x02BAD\r\n\r\n`,
      paths: ['/items/g', '/items/h'],
      code: 'HPE_INVALID_METHOD',
    },
  ];
  for (const c of cases) {
    const answer = await raw(sidecar.port, c.bytes);
    // One answer, the parser's 400: the requests before the malformed bytes get none (they were not run).
    assert.match(answer, /^HTTP\/1\.1 400 /, c.name);
    assert.equal(answer.match(/HTTP\/1\.1 /g)?.length, 1, `${c.name}: ${answer}`);
    assert.ok(answer.includes(c.code), `${c.name}: ${answer}`);
  }

  // Malformed bytes after a request that has been answered: that one was forwarded and recorded success.
  const late = await new Promise<string>((resolve, reject) => {
    const socket = connect(sidecar.port, '127.0.0.1', () => socket.write(`${head('GET /items/late')}\r\n`));
    let text = '';
    socket.on('data', (c: Buffer) => {
      if (text === '') socket.write('GET /items/late-smuggled HTTP/1.1\r\nBad Header: y\r\n\r\n');
      text += c.toString('latin1');
    });
    socket.once('error', reject);
    socket.once('close', () => resolve(text));
  });
  assert.match(late, /^HTTP\/1\.1 200 [\s\S]*ok[\s\S]*HTTP\/1\.1 400 /);

  const upstreamText = Buffer.concat(upstreamBytes).toString('latin1');
  // Nothing of a malformed part, nor any request that came with one, reached the upstream socket.
  for (const marker of ['GARBAGE', 'ZZ', 'world', 'Bad Header', 'smuggled', 'BAD', '\x01'])
    assert.ok(!upstreamText.includes(marker), `upstream read ${JSON.stringify(marker)}: ${upstreamText}`);
  assert.deepEqual(upstreamRequests, ['GET /items/late ']);

  // Every request the engine parsed has its decision and outcome: denied, saying why, or the one forwarded.
  const entries = await sidecar.settledRecords();
  const outcomeOf = (sessionId: string, id: number | undefined) =>
    entries.find(
      (e) => e.session.sessionId === sessionId && e.record.type === 'command.outcome' && e.record.command?.id === id,
    )?.record.outcome;
  const recorded = new Map<string, { result: string; status: string; message: string }>();
  for (const e of entries) {
    if (e.record.type !== 'command.decision') continue;
    const outcome = e.record.outcome ?? outcomeOf(e.session.sessionId, e.record.command?.id);
    recorded.set(e.record.command?.text ?? '', {
      result: e.record.decision?.result ?? '',
      status: outcome?.status ?? 'none',
      message: outcome?.message ?? '',
    });
  }
  for (const c of cases) {
    for (const path of c.paths) {
      const entry = recorded.get(`${c.bytes.startsWith('POST') ? 'POST' : 'GET'} ${path}`);
      assert.equal(entry?.status, 'denied', `${c.name}: ${path} ${JSON.stringify(entry)}`);
      assert.match(entry.message, new RegExp(`not forwarded: bytes Node's HTTP parser refused \\(${c.code}\\)`));
    }
  }
  assert.equal(recorded.get('GET /items/late')?.status, 'success');
  assert.equal(recorded.size, 8, JSON.stringify([...recorded.keys()]));
  // A cut body is a recorded refusal, not an internal error.
  assert.doesNotMatch(sidecar.logs(), /"msg":"request failed"/);
});
