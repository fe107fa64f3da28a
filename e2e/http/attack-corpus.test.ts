// Hostile requests sent as raw bytes to the real sidecar's HTTP engine in front of a real HTTP server that
// records what it received: paths that read differently to different servers (`..`, `%2e%2e`, double
// encoding, `//`, case), a Host header naming another host, absolute-form targets, queries read several ways
// (repeated names, escapes, double encoding, `;`), headers the policy matches on, and framing a smuggler
// would use (duplicate Content-Length, CL with TE, odd codings, obs-fold, bare LF). Each case states the
// status the agent gets and, when forwarded, what the upstream read; at the end the upstream has never
// seen what the policy denies.
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { spawnHttpEngineSidecar } from './http-sidecar.ts';
import { raw } from './raw-request.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [
    { name: 'no-admin', decision: 'deny', match: { http: { paths: ['/admin/**'] } } },
    { name: 'no-admin-role', decision: 'deny', match: { http: { query: { role: ['admin'] } } } },
    { name: 'no-debug', decision: 'deny', match: { http: { headers: { 'X-Debug': ['*'] } } } },
    {
      name: 'public',
      decision: 'allow',
      match: { http: { methods: ['GET'], paths: ['/public/**'], hosts: ['127.0.0.1'] } },
    },
  ],
  defaultDecision: 'deny',
};

interface Received {
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  /** The method the upstream acted on: it honours method overrides, as many frameworks do. */
  readonly method: string;
}

/** The method a framework with method-override support runs (header first, then `_method`). */
function effectiveMethod(method: string, url: string, headers: IncomingHttpHeaders): string {
  const header = headers['x-http-method-override'] ?? headers['x-http-method'] ?? headers['x-method-override'];
  if (typeof header === 'string') return header.toUpperCase();
  const param = new URL(url, 'http://upstream').searchParams.get('_method');
  return param === null ? method : param.toUpperCase();
}

test('attack corpus against the HTTP engine', async (t) => {
  const received: Received[] = [];
  const upstream = createServer((req, res) => {
    received.push({
      url: req.url ?? '',
      headers: req.headers,
      method: effectiveMethod(req.method ?? '', req.url ?? '', req.headers),
    });
    const body = JSON.stringify({ url: req.url });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        upstream.closeAllConnections();
        upstream.close(() => resolve());
      }),
  );
  const upstreamPort = (upstream.address() as { port: number }).port;
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort,
    policies: { corpus: POLICY },
    credential: 'corpus-upstream-key',
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:prober' });
  const auth = `Authorization: Bearer ${token}`;
  const get = (target: string, extra = '', host = 'x') =>
    `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${extra}Connection: close\r\n\r\n`;

  const cases: readonly { name: string; bytes: string; status: number; upstreamUrl?: string }[] = [
    // Paths
    { name: 'raw .. climbing out of /public', bytes: get('/public/../admin/x'), status: 403 },
    { name: '%2e%2e climbing out of /public', bytes: get('/public/%2e%2e/admin/x'), status: 403 },
    { name: 'mixed-case %2E%2e', bytes: get('/public/%2E%2e/admin/x'), status: 403 },
    { name: 'double-encoded %252e%252e', bytes: get('/public/%252e%252e/admin/x'), status: 400 },
    { name: 'double-encoded slash %252f', bytes: get('/public%252fadmin'), status: 400 },
    { name: 'encoded slash %2f', bytes: get('/public%2f..%2fadmin/x'), status: 400 },
    { name: 'leading // collapsing to /admin', bytes: get('//admin/x'), status: 403 },
    { name: 'inner // collapsing', bytes: get('/public//items'), status: 200, upstreamUrl: '/public/items' },
    {
      name: 'an escaped unreserved character is forwarded decoded',
      bytes: get('/pub%6cic/items'),
      status: 200,
      upstreamUrl: '/public/items',
    },
    { name: 'upper-case /ADMIN is not /public (case-sensitive rules)', bytes: get('/ADMIN/x'), status: 403 },
    { name: 'upper-case /PUBLIC is not allowed either', bytes: get('/PUBLIC/items'), status: 403 },
    { name: 'path parameter ;', bytes: get('/public;x=1/../admin'), status: 400 },
    { name: 'backslash', bytes: get('/public/..\\admin'), status: 400 },
    // Host and request target
    {
      name: 'a Host header naming another host is not forwarded (the upstream reads its own)',
      bytes: get('/public/host', '', 'evil.example'),
      status: 200,
      upstreamUrl: '/public/host',
    },
    { name: 'absolute-form target naming another host', bytes: get('http://evil.example/public/items'), status: 400 },
    {
      name: 'absolute-form target naming the Host header',
      bytes: get('http://x/public/absolute'),
      status: 200,
      upstreamUrl: '/public/absolute',
    },
    { name: 'asterisk-form target', bytes: get('*'), status: 400 },
    // Queries
    { name: 'query role=admin', bytes: get('/public/search?role=admin'), status: 403 },
    { name: 'repeated parameter, admin last', bytes: get('/public/search?role=user&role=admin'), status: 403 },
    { name: 'escaped value adm%69n', bytes: get('/public/search?role=adm%69n'), status: 403 },
    { name: 'double-encoded value %2561dmin', bytes: get('/public/search?role=%2561dmin'), status: 403 },
    { name: 'escaped name r%6fle', bytes: get('/public/search?r%6fle=admin'), status: 403 },
    { name: '; as a separator', bytes: get('/public/search?q=1;role=admin'), status: 400 },
    { name: 'malformed escape in the query', bytes: get('/public/search?q=%zz'), status: 400 },
    {
      name: 'a harmless query is forwarded as sent',
      bytes: get('/public/search?role=user&q=a+b'),
      status: 200,
      upstreamUrl: '/public/search?role=user&q=a+b',
    },
    // Headers
    { name: 'X-Debug header', bytes: get('/public/items', 'X-Debug: 1\r\n'), status: 403 },
    { name: 'x-debug in lower case', bytes: get('/public/items', 'x-debug: 1\r\n'), status: 403 },
    { name: 'X-Debug twice', bytes: get('/public/items', 'X-Debug: 1\r\nX-Debug: 2\r\n'), status: 403 },
    { name: 'X-Debug hidden in an obs-fold', bytes: get('/public/items', 'X-Safe: a\r\n X-Debug: 1\r\n'), status: 400 },
    { name: 'space before the colon', bytes: get('/public/items', 'X-Debug : 1\r\n'), status: 400 },
    // Framing
    {
      name: 'duplicate Content-Length',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nContent-Length: 0\r\nContent-Length: 30\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'Content-Length with Transfer-Encoding',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n`,
      status: 400,
    },
    {
      name: 'Transfer-Encoding: chunked, identity',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n`,
      status: 400,
    },
    {
      name: 'Transfer-Encoding: xchunked',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nTransfer-Encoding: xchunked\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    { name: 'Content-Length: +0', bytes: get('/public/items', 'Content-Length: +0\r\n'), status: 400 },
    {
      name: 'bare LF line endings',
      bytes: `GET /public/items HTTP/1.1\nHost: x\n${auth}\nConnection: close\n\n`,
      status: 400,
    },
    { name: 'a lower-case method', bytes: `get /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\n\r\n`, status: 400 },
    // Overrides: the upstream would run another method or path, or trust an address, than the one decided.
    {
      name: 'X-HTTP-Method-Override: DELETE',
      bytes: get('/public/items', 'X-HTTP-Method-Override: DELETE\r\n'),
      status: 403,
    },
    { name: 'x-http-method in lower case', bytes: get('/public/items', 'x-http-method: DELETE\r\n'), status: 403 },
    { name: 'X-Method-Override', bytes: get('/public/items', 'X-Method-Override: PUT\r\n'), status: 403 },
    { name: '_method in the query', bytes: get('/public/items?_method=DELETE'), status: 403 },
    { name: '_method escaped in the query', bytes: get('/public/items?%5Fmethod=DELETE'), status: 403 },
    { name: 'X-Original-URL naming /admin', bytes: get('/public/items', 'X-Original-URL: /admin/x\r\n'), status: 403 },
    { name: 'X-Rewrite-URL naming /admin', bytes: get('/public/items', 'X-Rewrite-URL: /admin/x\r\n'), status: 403 },
    {
      name: 'X-Forwarded-For a loopback address',
      bytes: get('/public/items', 'X-Forwarded-For: 127.0.0.1\r\n'),
      status: 403,
    },
    { name: 'X-Forwarded-Host', bytes: get('/public/items', 'X-Forwarded-Host: admin.internal\r\n'), status: 403 },
    { name: 'X-Forwarded-Prefix', bytes: get('/public/items', 'X-Forwarded-Prefix: /admin\r\n'), status: 403 },
    { name: 'Forwarded', bytes: get('/public/items', 'Forwarded: for=127.0.0.1;host=admin\r\n'), status: 403 },
    { name: 'X-Real-IP', bytes: get('/public/items', 'X-Real-IP: 10.0.0.1\r\n'), status: 403 },
    {
      name: 'headers of 100 KiB: a clear 431, nothing forwarded',
      bytes: get('/public/items', `X-Padding: ${'a'.repeat(100 * 1024)}\r\n`),
      status: 431,
    },
    { name: 'a bare CR inside a header value', bytes: get('/public/items', 'X-Note: a\rX-Debug: 1\r\n'), status: 400 },
    // Other protocols on the HTTP/1.1 listener: the upgrade or the HTTP/2 connection would carry streams
    // the engine never reads.
    {
      name: 'HTTP/2 prior-knowledge preface',
      bytes: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00',
      status: 400,
    },
    {
      name: 'h2c upgrade of an allowed GET',
      bytes: get(
        '/public/items',
        'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n',
      ),
      status: 400,
    },
    {
      name: 'Connection: upgrade without an Upgrade header is an ordinary request',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nConnection: upgrade, close\r\n\r\n`,
      status: 200,
      upstreamUrl: '/public/items',
    },
    {
      name: 'Transfer-Encoding: chunked with a trailing space is read as chunked, as the upstream reads it',
      bytes: `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nTransfer-Encoding: chunked \r\nConnection: close\r\n\r\n0\r\n\r\n`,
      status: 200,
      upstreamUrl: '/public/items',
    },
    {
      name: 'a request smuggled after the last chunk of a Connection: close request',
      bytes: `POST /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\nTransfer-Encoding: chunked \r\nConnection: close\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n`,
      status: 400,
    },
    {
      name: 'two Authorization headers (the upstream or a logger could read the other)',
      bytes: get('/public/items', `Authorization: Bearer ${token}\r\n`),
      status: 400,
    },
    {
      name: 'a harmless custom header is forwarded',
      bytes: get('/public/items', 'X-Trace-Note: method override\r\n'),
      status: 200,
      upstreamUrl: '/public/items',
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const before = received.length;
      const response = await raw(sidecar.port, c.bytes);
      assert.match(response, new RegExp(`^HTTP/1\\.1 ${String(c.status)} `), response);
      if (c.upstreamUrl === undefined) {
        assert.equal(received.length, before, 'a refused request reached the upstream');
        return;
      }
      assert.equal(received.length, before + 1);
      const seen = received.at(-1);
      assert.equal(seen?.url, c.upstreamUrl);
      assert.equal(seen.headers.host, `127.0.0.1:${String(upstreamPort)}`);
    });
  }

  await t.test('two pipelined requests in one write are decided one by one', async () => {
    const before = received.length;
    const keepAlive = `GET /public/items HTTP/1.1\r\nHost: x\r\n${auth}\r\n\r\n`;
    const response = await raw(sidecar.port, `${keepAlive}${get('/admin/x')}`);
    const statuses = [...response.matchAll(/^HTTP\/1\.1 (\d{3}) /gm)].map((m) => m[1]);
    assert.deepEqual(statuses, ['200', '403'], response);
    assert.deepEqual(
      received.slice(before).map((r) => r.url),
      ['/public/items'],
    );
  });

  await t.test('the sidecar still serves after the corpus', async () => {
    const response = await raw(sidecar.port, get('/public/items'));
    assert.match(response, /^HTTP\/1\.1 200 /);
  });

  await t.test('the upstream never saw what the policy denies', () => {
    for (const r of received) {
      assert.ok(!/admin/i.test(r.url), r.url);
      assert.equal(r.method, 'GET', `the upstream only ever ran what the policy allows: ${r.url}`);
      for (const name of ['x-original-url', 'x-rewrite-url', 'x-forwarded-for', 'forwarded', 'x-real-ip']) {
        assert.equal(r.headers[name], undefined, name);
      }
      assert.equal(r.headers['x-debug'], undefined);
      assert.equal(r.headers.authorization, 'Bearer corpus-upstream-key');
    }
  });

  await t.test('refusals after authentication are recorded as denials naming why', async () => {
    const entries = await sidecar.settledRecords();
    const rules = new Set(
      entries
        .filter((e) => e.record.type === 'command.decision' && e.record.decision?.result === 'deny')
        .map((e) => e.record.decision?.rule),
    );
    for (const rule of [
      'unnormalisable-path',
      'unreadable-query',
      'no-admin',
      'no-admin-role',
      'no-debug',
      'request-override',
    ]) {
      assert.ok(rules.has(rule), `a ${rule} denial is recorded (${[...rules].join(', ')})`);
    }
  });
});
