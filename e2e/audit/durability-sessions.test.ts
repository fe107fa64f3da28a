// The real sidecar with the durable audit trail: every statement of psql and node-postgres sessions ends up
// in Session objects (the same records as the JSON-lines export, in order, each once), `kubectl get
// sessions` shows the counters, chains verify across continuation parts and every head signature verifies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { createTestDatabase } from '../harness/databases.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace, kubectl } from '../harness/kube.ts';
import { runCli } from './run-cli.ts';
import {
  expectedCounters,
  lastStatus,
  listSessions,
  startAuditSidecar,
  verifySessions,
  waitFor,
} from './durability-helpers.ts';

const READS_AND_TEMP: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'reads',
      decision: 'allow',
      match: { sql: { statementKinds: ['select', 'set', 'show', 'transaction'] } },
    },
  ],
  defaultDecision: 'deny',
};

test('durable audit: psql and node-postgres sessions land in Session objects with counters, verified chains and signed heads', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const database = await createTestDatabase(t);
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    database,
    policies: { reads: READS_AND_TEMP },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:runner' }, { expiresIn: 3600 });

  const r = spawnSync('psql', ['-X', '-A', '-t'], {
    env: sidecar.libpqEnv(token),
    input: "select 1;\nselect 'two';\ncreate table nope (id int);\nselect 1/0;\nshow search_path;\n",
    encoding: 'utf8',
  });
  assert.match(r.stdout, /two/);
  assert.match(r.stderr, /permission denied by policy default\/reads/);

  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  await c.query('select $1::int + 1 as n', [41]);
  await c.query('begin');
  await c.query('select 3');
  await c.query('commit');
  await assert.rejects(c.query('drop table nope'), (err: Error & { code?: string }) => err.code === '42501');
  await c.end();

  const sessions = await waitFor('two closed sessions', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 2 && list.every((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const verified = await verifySessions(sessions, namespace);

  // The same records as the JSON-lines export, per session, in order and each once.
  const exported = new Map<string, unknown[]>();
  for (const line of await sidecar.settledRecords()) {
    const list = exported.get(line.session.sessionId) ?? [];
    list.push(line.record);
    exported.set(line.session.sessionId, list);
  }
  assert.equal(verified.length, exported.size);
  for (const v of verified) {
    assert.deepEqual(v.records, exported.get(v.sessionId));
    const status = lastStatus(v);
    assert.deepEqual(status.counters, expectedCounters(v.records));
    assert.equal(status.endTime, v.records.at(-1)?.time);
    assert.equal(v.parts[0]?.spec.identity.subject, 'system:serviceaccount:ci:runner');
    assert.deepEqual(
      v.records.map((rec) => rec.type).filter((type) => type === 'session.start' || type === 'session.end'),
      ['session.start', 'session.end'],
    );
  }
  const psqlSession = verified.find((v) =>
    v.records.some((rec) => rec.command?.text?.startsWith("select 'two'") === true),
  );
  assert.deepEqual(psqlSession?.parts[0]?.status?.counters, { commands: 5, allowed: 4, denied: 1, held: 0, errors: 1 });

  // The auditor's view.
  const table = await kubectl(['get', 'sessions', '-n', namespace]);
  assert.match(table, /IDENTITY\s+ACTOR\s+RESOURCE\s+COMMANDS\s+DENIED\s+PHASE/);
  assert.match(table, /system:serviceaccount:ci:runner\s+test-db\s+5\s+1\s+Closed/);

  // And each statement's decision and outcome in `kubectl chaperone sessions show`.
  const psqlPart = psqlSession.parts[0].metadata.name;
  assert.ok(psqlPart !== undefined);
  const shown = await runCli(['sessions', 'show', psqlPart, '-n', namespace], {
    KUBECONFIG: kubeconfig,
  });
  assert.equal(shown.code, 0, shown.stderr);
  const lines = shown.stdout.split('\n');
  assert.equal(lines.filter((l) => /\bcommand\.decision\b/.test(l)).length, 5);
  assert.equal(lines.filter((l) => /\bcommand\.outcome\b/.test(l)).length, 5);
  assert.ok(lines.some((l) => /command\.decision .*create table nope.*DENY by rule default of default\/reads/.test(l)));
  assert.ok(
    lines.some((l) => /command\.outcome .*error 22012/.test(l)),
    'select 1/0 fails with division_by_zero',
  );
});

test('durable audit: a session of more than 256 records continues in linked parts', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const sidecar = await startAuditSidecar(t, { kubeconfig, namespace });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:long' }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  await c.connect();
  for (let i = 0; i < 400; i++) await c.query(`select ${String(i)} as n`);
  await c.end();

  const sessions = await waitFor('a closed session in several parts', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.some((s) => s.status?.phase === 'Closed') ? list : undefined;
  });
  const [v] = await verifySessions(sessions, namespace);
  assert.ok(v !== undefined);
  assert.equal(v.records.length, 802, 'start, 400 decisions and outcomes, end');
  assert.deepEqual(
    v.parts.map((p) => p.spec.records.length),
    [256, 256, 256, 34],
  );
  assert.deepEqual(
    v.parts.map((p) => p.status?.phase),
    ['Continued', 'Continued', 'Continued', 'Closed'],
  );
  assert.deepEqual(v.parts[3]?.status?.counters, { commands: 400, allowed: 400, denied: 0, held: 0, errors: 0 });
  const table = await kubectl(['get', 'sessions', '-n', namespace, '-o', 'wide', '--sort-by=.spec.part']);
  assert.match(table, /PART/);
  assert.equal(table.trim().split('\n').length, 5);
});
