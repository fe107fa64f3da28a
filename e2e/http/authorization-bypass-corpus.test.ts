// Authorization bypass through header spellings, against a real WSGI server (Python's wsgiref) behind the
// real sidecar. CGI and WSGI servers (wsgiref, Werkzeug, PHP, nginx with underscores_in_headers) give a
// header one environ name whichever of `-` or `_` it is spelled with (`X_HTTP_Method_Override` and
// `X-HTTP-Method-Override` are both HTTP_X_HTTP_METHOD_OVERRIDE), while the sidecar's policy and its
// override check read header names as sent. The upstream honours a method override and a debug header
// from its environ, as such apps do, and keeps its items and a log of what it ran: after the corpus, it
// ran only what the policy allows (techniques of attack-corpus.test.ts are not repeated here).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { spawnHttpEngineSidecar } from './http-sidecar.ts';
import { raw } from './raw-request.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [
    { name: 'no-debug', decision: 'deny', match: { http: { headers: { 'X-Debug': ['*'] } } } },
    { name: 'public-reads', decision: 'allow', match: { http: { methods: ['GET'], paths: ['/public/**'] } } },
  ],
  defaultDecision: 'deny',
};

/**
 * A WSGI app on wsgiref: GET /public/items/<name> reads an item; the effective method (the override header
 * from the environ, as method-override middlewares read it) DELETE removes it; HTTP_X_DEBUG turns on a
 * debug answer. GET /_state (asked directly, never through the sidecar) returns the items and the log.
 */
const WSGI_APP = `
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
items = {"a", "b", "c"}
log = []
def app(environ, start):
    path = environ["PATH_INFO"]
    method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", environ["REQUEST_METHOD"]).upper()
    if path == "/_state":
        body = json.dumps({"items": sorted(items), "log": log})
    else:
        log.append({"method": method, "path": path, "debug": "HTTP_X_DEBUG" in environ,
                    "client": environ.get("HTTP_X_FORWARDED_FOR", environ["REMOTE_ADDR"])})
        name = path.rsplit("/", 1)[-1]
        if method == "DELETE":
            items.discard(name)
        body = json.dumps({"item": name, "present": name in items, "debug": "HTTP_X_DEBUG" in environ})
    start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body.encode()]
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
`;

interface UpstreamState {
  readonly items: string[];
  readonly log: { method: string; path: string; debug: boolean; client: string }[];
}

function upstreamState(port: number): Promise<UpstreamState> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/_state' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as UpstreamState));
    });
    req.once('error', reject);
    req.end();
  });
}

test('authorization bypass corpus against the HTTP engine: header spellings a WSGI server merges', async (t) => {
  const wsgi = spawn('python3', ['-c', WSGI_APP], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => {
    wsgi.kill();
  });
  const upstreamPort = await new Promise<number>((resolve, reject) => {
    createInterface({ input: wsgi.stdout }).once('line', (line) => resolve(Number(line)));
    wsgi.once('exit', (code) => reject(new Error(`the WSGI server exited (${String(code)})`)));
  });
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort,
    policies: { corpus: POLICY },
    credential: 'wsgi-upstream-key',
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:prober' });
  const get = (target: string, extra = '') =>
    `GET ${target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${extra}Connection: close\r\n\r\n`;

  const cases: readonly { name: string; bytes: string; status: number; forwarded?: boolean }[] = [
    {
      name: 'X_HTTP_Method_Override: DELETE (the WSGI app deletes)',
      bytes: get('/public/items/a', 'X_HTTP_Method_Override: DELETE\r\n'),
      status: 403,
    },
    {
      name: 'X-HTTP-Method_Override: DELETE, dashes and underscores mixed',
      bytes: get('/public/items/b', 'X-HTTP-Method_Override: DELETE\r\n'),
      status: 403,
    },
    { name: 'X_Debug past a deny rule on X-Debug', bytes: get('/public/items/c', 'X_Debug: 1\r\n'), status: 403 },
    {
      name: 'X_Forwarded_For: a client address the sidecar never saw',
      bytes: get('/public/items/c', 'X_Forwarded_For: 10.9.8.7\r\n'),
      status: 403,
    },
    {
      name: 'a harmless header with underscores is forwarded',
      bytes: get('/public/items/c', 'X_Request_Note: hello\r\n'),
      status: 200,
      forwarded: true,
    },
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const before = (await upstreamState(upstreamPort)).log.length;
      const response = await raw(sidecar.port, c.bytes);
      assert.match(response, new RegExp(`^HTTP/1\\.1 ${String(c.status)} `), response);
      const after = (await upstreamState(upstreamPort)).log.length;
      assert.equal(after - before, c.forwarded === true ? 1 : 0, 'requests the upstream ran');
    });
  }

  await t.test("the upstream's state: it ran only what the policy allows", async () => {
    const state = await upstreamState(upstreamPort);
    assert.deepEqual(state.items, ['a', 'b', 'c'], 'nothing was deleted');
    for (const entry of state.log) {
      assert.equal(entry.method, 'GET', JSON.stringify(entry));
      assert.equal(entry.debug, false, JSON.stringify(entry));
      assert.equal(entry.client, '127.0.0.1', JSON.stringify(entry));
    }
  });

  await t.test('the refusals are recorded as denials naming why', async () => {
    const entries = await sidecar.settledRecords();
    const rules = new Set(
      entries
        .filter((e) => e.record.type === 'command.decision' && e.record.decision?.result === 'deny')
        .map((e) => e.record.decision?.rule),
    );
    for (const rule of ['no-debug', 'request-override']) assert.ok(rules.has(rule), [...rules].join(', '));
  });
});
