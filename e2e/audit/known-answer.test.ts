// The real sidecar against answers computed outside the product (api/testdata/make-known-answer.py, python3
// hashlib and json, the `cryptography` package): a fixed identity token signed by a fixed test issuer key is
// accepted and recorded under the token hash the vectors state, a fixed refused token is logged under its
// stated hash, and every record the sidecar wrote is re-hashed by the independent RFC 8785 implementation
// and found equal, with each record linked to the one before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { AuditRecord } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { ALLOW_ALL, startTestSidecar } from '../harness/sidecar.ts';
import { REPO_ROOT } from '../harness/tools.ts';

const SCRIPT = join(REPO_ROOT, 'api', 'testdata', 'make-known-answer.py');

interface TokenVectors {
  readonly issuer: string;
  readonly jwks: unknown;
  readonly valid: { token: string; hash: string; claims: { sub: string; act: { sub: string } } };
  readonly refused: { token: string; hash: string };
}

const VECTORS = (
  JSON.parse(readFileSync(join(REPO_ROOT, 'api', 'testdata', 'known-answer.json'), 'utf8')) as {
    tokens: TokenVectors;
  }
).tokens;

test('known answers through the real sidecar: token hashes, and every record re-hashed independently', async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const jwksFile = join(dir, 'known-answer-jwks.json');
  writeFileSync(jwksFile, JSON.stringify(VECTORS.jwks));
  const sidecar = await startTestSidecar(t, {
    policies: { 'allow-all': ALLOW_ALL },
    // The vectors' issuer plays the token exchange: the only issuer whose chains a sidecar believes.
    extraIssuers: [
      { issuer: VECTORS.issuer, jwksFile, tokenExchange: true, audiences: ['chaperone'], algorithms: ['EdDSA'] },
    ],
  });
  const connect = (password: string) =>
    new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', database: 'kat', password, ssl: false });

  const c = connect(VECTORS.valid.token);
  await c.connect();
  assert.deepEqual((await c.query("select 'é€😀' as text, $1::int + 1 as n", [41])).rows, [{ text: 'é€😀', n: 42 }]);
  await c.end();
  const refused = connect(VECTORS.refused.token);
  refused.on('error', () => undefined);
  await assert.rejects(refused.connect(), { code: '28P01' });

  const records = await sidecar.settledRecords();
  const start = records.find((r) => r.record.type === 'session.start')?.record;
  assert.equal(start?.identity?.tokenHash, VECTORS.valid.hash, 'the recorded hash of the presented token');
  assert.equal(start.identity.subject, VECTORS.valid.claims.sub);
  assert.deepEqual(
    start.identity.chain?.map((a) => a.subject),
    [VECTORS.valid.claims.act.sub],
  );
  await sidecar.stop();
  const failures = sidecar
    .logs()
    .split('\n')
    .filter((l) => l.includes('"msg":"authentication failed"'))
    .map((l) => JSON.parse(l) as { tokenHash?: string });
  assert.deepEqual(
    failures.map((f) => f.tokenHash),
    [VECTORS.refused.hash],
    'the refused token is logged by its hash only',
  );
  assert.ok(!sidecar.logs().includes(VECTORS.refused.token));

  // Every record the sidecar wrote, re-hashed by the independent implementation.
  const written: AuditRecord[] = records.map((r) => r.record);
  // session.start, the statement's decision with its outcome (one record in JSON lines, format 3),
  // session.end, and the refused connection's auth.failure.
  assert.ok(written.length >= 4, `${String(written.length)} records`);
  // The decision carries its outcome when the outcome came within the hold limit; on a loaded machine it
  // may not, and then the outcome is a record of its own. Either way the statement's outcome is recorded once.
  const decided = written.filter((r) => r.type === 'command.decision');
  const outcomes = written.filter(
    (r) => r.outcome !== undefined && (r.type === 'command.outcome' || r.type === 'command.decision'),
  );
  assert.equal(decided.length, 1, 'one decision for the one statement');
  assert.equal(outcomes.length, 1, 'one outcome for the one statement, on the decision or on its own record');
  assert.equal(outcomes[0]?.outcome?.status, 'success');
  const rehashed = execFileSync('python3', [SCRIPT, 'rehash'], {
    input: written.map((r) => JSON.stringify(r)).join('\n'),
    encoding: 'utf8',
  })
    .trim()
    .split('\n');
  assert.deepEqual(
    rehashed,
    written.map((r) => r.hash),
  );
  for (const sessionId of new Set(records.map((r) => r.session.sessionId))) {
    const own = records.filter((r) => r.session.sessionId === sessionId).map((r) => r.record);
    own.slice(1).forEach((r, i) => {
      assert.equal(r.prevHash, own[i]?.hash, `session ${sessionId} seq ${String(r.seq)} links to the record before`);
    });
  }
});
