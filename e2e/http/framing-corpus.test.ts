// Hostile HTTP/1.1 framing sent as raw bytes to the real sidecar's HTTP engine in front of a real HTTP server
// that records what it received (method, path, headers, body, trailers), angles the attack corpus does not
// send: chunk extensions, chunk sizes that overflow or are spelled as hex literals, trailers carrying headers
// the policy or the framing depends on, header lists past Node's count limit, `Expect: 100-continue` with a
// body longer than announced, a refused request whose body is itself a request, HTTP/1.0 and odd versions,
// request lines with extra spaces, methods the policy never named. Judged on what the upstream read.
import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { spawnHttpEngineSidecar } from './http-sidecar.ts';
import { raw } from './raw-request.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [
    { name: 'no-admin', decision: 'deny', match: { http: { paths: ['/admin/**'] } } },
    { name: 'no-debug', decision: 'deny', match: { http: { headers: { 'X-Debug': ['*'] } } } },
    { name: 'public', decision: 'allow', match: { http: { methods: ['GET', 'POST'], paths: ['/public/**'] } } },
  ],
  defaultDecision: 'deny',
};

interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly trailers: Record<string, string | undefined>;
}

test('framing corpus against the HTTP engine', async (t) => {
  const received: Received[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('latin1'),
        trailers: req.trailers,
      });
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 }).end('ok');
    });
  });
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort: (upstream.address() as { port: number }).port,
    policies: { framing: POLICY },
    credential: 'framing-upstream-key',
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:framer' });
  const auth = `Authorization: Bearer ${token}\r\n`;
  const head = (line: string, extra = '', version = 'HTTP/1.1') => `${line} ${version}\r\nHost: x\r\n${auth}${extra}`;
  const close = 'Connection: close\r\n';
  const chunked = (line: string, chunks: string, extra = '') =>
    `${head(line, `Transfer-Encoding: chunked\r\n${extra}${close}`)}\r\n${chunks}`;
  const inner = 'GET /admin/y HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n';
  /** `count` headers of four bytes each (`a:` and CRLF): 2000 of them fit in 8 KB. */
  const filler = (count: number) => 'a:\r\n'.repeat(count);

  const cases: readonly {
    name: string;
    bytes: string;
    /** The status of each answer on the connection, in order. */
    statuses: readonly number[];
    /** What the upstream read, `METHOD path body`, in order. */
    upstream: readonly string[];
  }[] = [
    {
      name: 'a chunk extension on an allowed POST: the body the upstream reads is the chunk data',
      bytes: chunked('POST /public/items', '5;name="x\\"y"\r\nhello\r\n0\r\n\r\n'),
      statuses: [200],
      upstream: ['POST /public/items hello'],
    },
    {
      name: 'a chunk size past 64 bits',
      bytes: chunked('POST /public/items', '10000000000000005\r\nhello\r\n0\r\n\r\n'),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a chunk size as a hex literal (0x5)',
      bytes: chunked('POST /public/items', '0x5\r\nhello\r\n0\r\n\r\n'),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a chunk size with a sign (+5)',
      bytes: chunked('POST /public/items', '+5\r\nhello\r\n0\r\n\r\n'),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a chunk size after a space',
      bytes: chunked('POST /public/items', ' 5\r\nhello\r\n0\r\n\r\n'),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'chunk data longer than its size, the rest a request',
      bytes: chunked('POST /public/items', '5\r\nhelloGET /admin/x HTTP/1.1\r\n\r\n0\r\n\r\n'),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'trailers naming X-Debug, another Authorization and a Content-Length: refused whole',
      bytes: chunked(
        'POST /public/items',
        `5\r\nhello\r\n0\r\nX-Debug: 1\r\nAuthorization: Bearer other\r\nContent-Length: 99\r\n\r\n`,
      ),
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a trailer naming X-Debug alone: the body is forwarded, the trailer never',
      bytes: chunked('POST /public/items', `5\r\nhello\r\n0\r\nX-Debug: 1\r\n\r\n`),
      statuses: [200],
      upstream: ['POST /public/items hello'],
    },
    {
      name: 'X-Debug after 2000 filler headers (past Node’s header count)',
      bytes: `${head('GET /public/items', `${filler(2000)}X-Debug: 1\r\n${close}`)}\r\n`,
      statuses: [431],
      upstream: [],
    },
    {
      name: 'Transfer-Encoding after 2000 filler headers, its chunked body a request',
      bytes: `${head('POST /public/items', `${filler(2000)}Transfer-Encoding: chunked\r\n`)}\r\n1d\r\nGET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n`,
      statuses: [431],
      upstream: [],
    },
    {
      name: 'Expect: 100-continue on a denied POST, the body sent anyway',
      bytes: `${head('POST /admin/x', `Expect: 100-continue\r\nContent-Length: 5\r\n${close}`)}\r\nhello`,
      statuses: [100, 403],
      upstream: [],
    },
    {
      name: 'Expect: 100-continue with a body longer than announced: the rest is the next request',
      bytes: `${head('POST /public/items', 'Expect: 100-continue\r\nContent-Length: 5\r\n')}\r\nhello${head('GET /admin/x', close)}\r\n`,
      statuses: [100, 200, 403],
      upstream: ['POST /public/items hello'],
    },
    {
      name: 'a refused POST whose body is a request, then an allowed GET',
      bytes: `${head('POST /admin/x', `Content-Length: ${String(inner.length)}\r\n`)}\r\n${inner}${head('GET /public/after', close)}\r\n`,
      statuses: [403, 200],
      upstream: ['GET /public/after '],
    },
    {
      name: 'HTTP/1.0 without Host',
      bytes: `GET /public/items HTTP/1.0\r\n${auth}\r\n`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'HTTP/1.0 keep-alive: the answer closes the connection, the second request is never read',
      bytes: `${head('GET /public/items', 'Connection: keep-alive\r\n', 'HTTP/1.0')}\r\n${head('GET /admin/x', '', 'HTTP/1.0')}\r\n`,
      statuses: [200],
      upstream: ['GET /public/items '],
    },
    {
      name: 'HTTP/1.0 keep-alive, the second request allowed: still never read',
      bytes: `${head('GET /public/items', 'Connection: keep-alive\r\n', 'HTTP/1.0')}\r\n${head('GET /public/second', '', 'HTTP/1.0')}\r\n`,
      statuses: [200],
      upstream: ['GET /public/items '],
    },
    { name: 'HTTP/1.2', bytes: `${head('GET /public/items', close, 'HTTP/1.2')}\r\n`, statuses: [400], upstream: [] },
    {
      name: 'HTTP/2.0 in an HTTP/1 request line',
      bytes: `${head('GET /public/items', close, 'HTTP/2.0')}\r\n`,
      statuses: [400],
      upstream: [],
    },
    { name: 'an HTTP/0.9 request line', bytes: 'GET /admin/x\r\n\r\n', statuses: [400], upstream: [] },
    {
      name: 'two spaces after the method: read as the one request it is, and forwarded as that',
      bytes: `${head('GET  /public/items', close)}\r\n`,
      statuses: [200],
      upstream: ['GET /public/items '],
    },
    {
      name: 'a tab between method and target',
      bytes: `${head('GET\t/public/items', close)}\r\n`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a method the policy never named (PROPFIND)',
      bytes: `${head('PROPFIND /public/items', close)}\r\n`,
      statuses: [403],
      upstream: [],
    },
    {
      name: 'a header name with a parenthesis',
      bytes: `${head('GET /public/items', `X-De(bug: 1\r\n${close}`)}\r\n`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'a NUL in a header value',
      bytes: `${head('GET /public/items', `X-Note: a\0b\r\n${close}`)}\r\n`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'Content-Length as a list (5, 5)',
      bytes: `${head('POST /public/items', `Content-Length: 5, 5\r\n${close}`)}\r\nhello`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'Content-Length past 2^53',
      bytes: `${head('POST /public/items', `Content-Length: 99999999999999999999\r\n${close}`)}\r\nhello`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'Transfer-Encoding given twice (chunked, then chunked)',
      bytes: `${head('POST /public/items', `Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n${close}`)}\r\n0\r\n\r\n`,
      statuses: [400],
      upstream: [],
    },
    {
      name: 'raw UTF-8 in the target',
      bytes: `${head('GET /public/\u00e9', close)}\r\n`,
      statuses: [400],
      upstream: [],
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const before = received.length;
      const answer = await raw(sidecar.port, c.bytes);
      const statuses = [...answer.matchAll(/(?:^|\})HTTP\/1\.[01] (\d{3}) /gm)].map((m) => Number(m[1]));
      const upstreamRead = received.slice(before).map((r) => `${r.method} ${r.url} ${r.body}`);
      assert.deepEqual({ statuses, upstreamRead }, { statuses: c.statuses, upstreamRead: c.upstream }, answer);
    });
  }

  await t.test('the upstream never read a denied path, header or trailer, nor the agent’s token', () => {
    for (const r of received) {
      assert.ok(!r.url.includes('admin'), r.url);
      assert.equal(r.headers['x-debug'], undefined);
      assert.equal(r.headers.authorization, 'Bearer framing-upstream-key');
      assert.deepEqual(r.trailers, {}, 'no trailer reaches the upstream');
    }
  });
});
