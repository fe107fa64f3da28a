// Per-request identity on one kept-alive TLS connection to the Kubernetes engine (docs/identity.md,
// "Kept-alive connections"): agent A may write ConfigMaps in the test's namespace, agent B may not; requests
// of A, B, none, a malformed, an expired and a rotated-away token on the same connection are each decided
// and recorded under their own identity, and the API server holds only the ConfigMaps A was allowed to make.
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect } from 'node:tls';
import { KeptAliveConnection } from '../harness/kept-alive-connection.ts';
import { createTestIssuer } from '../harness/tokens.ts';
import { JWKS_FILE_CHECK_MS } from '../../sidecar/src/core/identity/token-verifier.ts';
import { AGENT, RESOURCE, startKubeFixture } from './kube-fixture.ts';

const OTHER = 'system:serviceaccount:agents:onlooker';

test('each request on a kept-alive connection to the Kubernetes engine is decided under its own token', async (t) => {
  const f = await startKubeFixture(t, (namespace) => ({
    deployer: {
      resources: { names: [RESOURCE] },
      subjects: [{ subject: AGENT }],
      rules: [{ name: 'in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } }],
      defaultDecision: 'deny',
    },
    onlooker: {
      resources: { names: [RESOURCE] },
      subjects: [{ subject: OTHER }],
      rules: [{ name: 'read', decision: 'allow', match: { kubernetes: { verbs: ['get', 'list'] } } }],
      defaultDecision: 'deny',
    },
  }));
  const ns = f.namespace;
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const other = await f.sidecar.issuer.sign({ sub: OTHER });
  const expired = await f.sidecar.issuer.sign({ sub: AGENT }, { expiresIn: -3600 });
  const create = (name: string, token?: string) => {
    const body = JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } });
    return (
      `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n` +
      (token === undefined ? '' : `Authorization: Bearer ${token}\r\n`) +
      `Content-Type: application/json\r\nContent-Length: ${String(Buffer.byteLength(body))}\r\n\r\n${body}`
    );
  };
  const socket = connect({
    host: '127.0.0.1',
    port: f.sidecar.port,
    ca: readFileSync(f.servingCertFile),
    servername: 'localhost',
  });
  const conn = new KeptAliveConnection(socket);
  t.after(() => conn.end());
  const one = async (bytes: string) => (await conn.send(bytes))[0]?.status;

  assert.equal(await one(create('by-agent', f.agentToken)), 201);
  assert.equal(await one(create('by-onlooker', other)), 403, "the onlooker on the agent's connection");
  assert.equal(await one(create('by-nobody')), 401);
  assert.equal(await one(create('by-malformed', 'not.a.jwt')), 401);
  assert.equal(await one(create('by-expired', expired)), 401);
  assert.equal(await one(create('by-agent-again', f.agentToken)), 201);
  const pipelined = await conn.send(create('piped-onlooker', other) + create('piped-agent', f.agentToken), 2);
  assert.deepEqual(
    pipelined.map((r) => r.status),
    [403, 201],
  );
  assert.equal(await one(create('before-rotation', f.agentToken)), 201);
  const rotated = await createTestIssuer(join(f.sidecar.dir, 'rotated-jwks.json'), f.sidecar.issuer.issuer);
  copyFileSync(rotated.jwksFile, f.sidecar.issuer.jwksFile);
  // Refused once the sidecar has next checked the file: at most JWKS_FILE_CHECK_MS later (docs/identity.md).
  await new Promise((resolve) => setTimeout(resolve, JWKS_FILE_CHECK_MS + 100));
  const refused = (await conn.send(create('after-rotation', f.agentToken)))[0];
  assert.equal(refused?.status, 401, 'a token whose key was rotated away');
  assert.match(refused.body, /"kind":"Status"/);
  assert.equal(conn.closed, false);

  const names = (await f.admin(['get', 'configmaps', '-n', ns, '-o', 'jsonpath={.items[*].metadata.name}']))
    .split(' ')
    .filter((n) => n !== 'kube-root-ca.crt')
    .toSorted();
  assert.deepEqual(names, ['before-rotation', 'by-agent', 'by-agent-again', 'piped-agent']);

  const entries = await f.sidecar.settledRecords();
  const subjectOf = new Map<string, string>();
  for (const e of entries) {
    if (e.record.type === 'session.start') subjectOf.set(e.session.sessionId, e.record.identity?.subject ?? '');
  }
  const decided = entries
    .filter((e) => e.record.type === 'command.decision')
    .map((e) => {
      const name = /"name":"([^"]+)"/.exec(e.record.command?.body ?? '')?.[1] ?? '';
      return `${name} ${e.record.decision?.result ?? ''} ${subjectOf.get(e.session.sessionId) ?? ''}`;
    });
  assert.deepEqual(decided.toSorted(), [
    `before-rotation allow ${AGENT}`,
    `by-agent allow ${AGENT}`,
    `by-agent-again allow ${AGENT}`,
    `by-onlooker deny ${OTHER}`,
    `piped-agent allow ${AGENT}`,
    `piped-onlooker deny ${OTHER}`,
  ]);
  assert.equal(entries.filter((e) => e.record.type === 'auth.failure').length, 4);
});
