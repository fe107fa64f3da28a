// curl and raw sockets through the real sidecar's HTTP engine to a real HTTP server (node:http on loopback,
// which records what it received and can echo request headers back): allowed and denied paths, paths the
// upstream would read differently, the injected credential never visible to the agent, masked JSON fields,
// streamed bodies, smuggling attempts, and the records.
import { carriesCommandOutcome } from '@chaperone/api';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import type { AccessPolicySpec } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { raw } from './raw-request.ts';

const execFileAsync = promisify(execFile);
// Characters that JSON (PHP's json_encode), URL and HTML encoders spell differently: each spelling of an echo must be scrubbed.
const CREDENTIAL = 'upstream/api+key=7f3e&9c1d';

const POLICY: AccessPolicySpec = {
  resources: { names: ['orders-api'] },
  rules: [
    { name: 'no-admin', decision: 'deny', match: { http: { paths: ['/admin/**'] } }, message: 'admin is off limits' },
    {
      name: 'read-api',
      decision: 'allow',
      match: { http: { methods: ['GET'], paths: ['/api/**', '/echo', '/stream'] } },
    },
    { name: 'place-orders', decision: 'allow', match: { http: { methods: ['POST'], paths: ['/api/orders'] } } },
  ],
  defaultDecision: 'deny',
  masking: [
    { name: 'pii', columns: ['email'], strategy: 'redact' },
    { name: 'ids', detectors: ['us-ssn'], strategy: 'redact' },
  ],
};

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly authorization: string | undefined;
  readonly requestId: string | undefined;
}

/** The upstream: a real HTTP server that records every request it received. */
async function startUpstream(): Promise<{
  port: number;
  seen: Seen[];
  release: () => void;
  close: () => Promise<void>;
}> {
  const seen: Seen[] = [];
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (release = resolve));
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      requestId: req.headers['x-request-id'] as string | undefined,
    });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const json = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.url === '/api/users/1') {
        json(200, { id: 1, name: 'Ada', email: 'ada@example.com', notes: 'ssn 123-45-6789' });
      } else if (req.url === '/echo') {
        const auth = req.headers.authorization ?? '';
        res.writeHead(200, { 'content-type': 'text/plain', 'x-echo-auth': encodeURIComponent(auth) });
        // The headers as JSON, as PHP's json_encode writes them (slashes escaped), in a URL, in HTML.
        res.end(
          [
            JSON.stringify(req.headers),
            JSON.stringify(req.headers).replaceAll('/', '\\/'),
            `/callback?auth=${encodeURIComponent(auth).toLowerCase()}`,
            `<p>${auth.replaceAll('&', '&amp;')}</p>`,
          ].join('\n'),
        );
      } else if (req.url === '/api/orders' && req.method === 'POST') {
        json(201, { created: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown });
      } else if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('first part\n');
        void released.then(() => res.end('last part\n'));
      } else json(200, { path: req.url });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no address');
  return {
    port: address.port,
    seen,
    release: () => release(),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

test('an HTTP API through the HTTP engine', async (t) => {
  const upstream = await startUpstream();
  t.after(() => upstream.close());
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), `${CREDENTIAL}\n`);
  const sidecar = await spawnSidecar({
    dir,
    policies: { orders: POLICY },
    listeners: [
      {
        name: 'orders-api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String(upstream.port)}`,
          tls: { mode: 'disable' },
          credential: { valueFile: join(dir, 'credential') },
        },
        auditFailureMode: 'FailClosed',
      },
    ],
  });
  t.after(() => sidecar.stop());
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:shopper' });
  const base = `http://${sidecar.host}:${String(sidecar.port)}`;
  const curl = async (args: string[]) => {
    const { stdout } = await execFileAsync('curl', [
      '-sS',
      '-H',
      `Authorization: Bearer ${token}`,
      '-w',
      '\n%{http_code}',
      ...args,
    ]);
    const i = stdout.lastIndexOf('\n');
    return { body: stdout.slice(0, i), status: Number(stdout.slice(i + 1)) };
  };

  await t.test(
    'an allowed GET reaches the upstream with the injected credential; JSON fields come back masked',
    async () => {
      const res = await curl([`${base}/api/users/1`]);
      assert.equal(res.status, 200);
      assert.deepEqual(JSON.parse(res.body), { id: 1, name: 'Ada', email: '[MASKED]', notes: 'ssn [MASKED]' });
      const seen = upstream.seen.find((s) => s.url === '/api/users/1');
      assert.equal(seen?.authorization, `Bearer ${CREDENTIAL}`);
    },
  );

  await t.test('a denied path is refused with a problem document and never reaches the upstream', async () => {
    const res = await curl([`${base}/admin/users`]);
    assert.equal(res.status, 403);
    const problem = JSON.parse(res.body) as { type: string; detail: string };
    assert.equal(problem.type, 'urn:chaperone:error:PolicyDenied');
    assert.match(problem.detail, /policy default\/orders, rule no-admin: admin is off limits/);
    assert.ok(!upstream.seen.some((s) => s.url.startsWith('/admin')));
  });

  await t.test('paths are decided as the upstream would read them', async () => {
    const dotted = await curl(['--path-as-is', `${base}/api/%2e%2e/admin/users`]);
    assert.equal(dotted.status, 403, 'the %2e%2e climb lands on /admin and is denied');
    const slashes = await curl(['--path-as-is', `${base}/api//users/1`]);
    assert.equal(slashes.status, 200);
    assert.ok(upstream.seen.some((s) => s.url === '/api/users/1'));
    for (const path of ['/api%2F..%2Fadmin/users', '/admin;x=1/users', '/api/users/..%5C..%5Cadmin']) {
      const res = await curl(['--path-as-is', `${base}${path}`]);
      assert.equal(res.status, 400, path);
    }
    assert.ok(!upstream.seen.some((s) => s.url.includes('admin') || s.url.includes('%2F') || s.url.includes(';')));
  });

  await t.test('the credential never comes back, even from an upstream that echoes it', async () => {
    const { stdout } = await execFileAsync('curl', [
      '-sS',
      '-i',
      '-H',
      `Authorization: Bearer ${token}`,
      `${base}/echo`,
    ]);
    for (const spelling of [
      CREDENTIAL,
      CREDENTIAL.replaceAll('/', '\\/'),
      encodeURIComponent(CREDENTIAL),
      encodeURIComponent(CREDENTIAL).toLowerCase(),
      CREDENTIAL.replaceAll('&', '&amp;'),
      'upstream',
    ]) {
      assert.ok(!stdout.includes(spelling), `${spelling} in ${stdout}`);
    }
    assert.equal(stdout.split('[chaperone:credential]').length - 1, 5, stdout);
    assert.ok(!stdout.includes(token), 'nor is the agent token forwarded');
    const trace = await curl(['-X', 'TRACE', `${base}/echo`]);
    assert.equal(trace.status, 403);
  });

  await t.test('a POST is allowed, its body recorded; other methods fall to the default', async () => {
    const res = await curl([
      '-X',
      'POST',
      '-H',
      'Content-Type: application/json',
      '--data',
      '{"item":"book","qty":2,"email":"buyer@example.com","note":"ssn 078-05-1120"}',
      `${base}/api/orders`,
    ]);
    assert.equal(res.status, 201);
    const refused = await curl(['-X', 'DELETE', `${base}/api/orders`]);
    assert.equal(refused.status, 403);
  });

  await t.test('bodies stream: the first part arrives before the upstream has finished', async () => {
    const first = new Promise<string>((resolve, reject) => {
      const req = connect(sidecar.port, sidecar.host, () =>
        req.write(`GET /stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`),
      );
      let text = '';
      req.on('data', (c: Buffer) => {
        text += c.toString('latin1');
        if (text.includes('first part')) {
          // Only now may the upstream finish: the part came through while the response was still open.
          upstream.release();
        }
      });
      req.once('error', reject);
      req.once('close', () => resolve(text));
    });
    const text = await first;
    assert.match(text, /first part[\s\S]*last part/);
  });

  await t.test('smuggling and ambiguous framing are refused and never forwarded', async () => {
    const before = upstream.seen.length;
    const attacks = [
      `POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/users HTTP/1.1\r\nHost: x\r\n\r\n`,
      `GET /api/users/1 HTTP/1.1\r\nHost: x\r\nHost: y\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      `GET http://evil.example/api/users/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      `POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}`,
      `GET /api/users/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nX-A: b\r\n c\r\n\r\n`,
      `GET /api/users/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    ];
    for (const bytes of attacks) {
      const response = await raw(sidecar.port, bytes);
      assert.match(response, /^HTTP\/1\.1 400 /, bytes);
    }
    assert.equal(upstream.seen.length, before);
  });

  await t.test('every request after authentication is recorded with its request id, body and outcome', async () => {
    const entries = await sidecar.settledRecords();
    const decisions = entries.filter((e) => e.record.type === 'command.decision');
    const post = decisions.find((e) => e.record.command?.text === 'POST /api/orders');
    // Recorded with the policy's masking: the email field by name, the SSN by its detector.
    assert.equal(post?.record.command?.body, '{"item":"book","qty":2,"email":"[MASKED]","note":"ssn [MASKED]"}');
    const forwarded = upstream.seen.find((s) => s.method === 'POST');
    assert.equal(post.record.command.requestId, forwarded?.requestId);
    const denied = decisions.find((e) => e.record.decision?.rule === 'no-admin');
    assert.equal(denied?.record.command?.text, 'GET /admin/users');
    const climbed = decisions.filter((e) => e.record.decision?.rule === 'no-admin');
    assert.ok(
      climbed.some((e) => e.record.command?.text === 'GET /admin/users' && e !== denied),
      'the %2e%2e request is recorded normalised',
    );
    for (const d of decisions) {
      const outcome = entries.find(
        (e) =>
          e.session.sessionId === d.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === d.record.command?.id,
      );
      assert.ok(outcome, `an outcome for ${d.record.command?.text ?? ''}`);
    }
    const everything = JSON.stringify(entries) + sidecar.logs();
    assert.ok(!everything.includes(CREDENTIAL));
    assert.ok(!everything.includes(token));
  });
});
