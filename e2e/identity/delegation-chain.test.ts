// A three-level chain in the data path, against the real API server, PostgreSQL and psql: a CI job's pod
// token, an AI agent acting for it, a script acting for the agent. The real sidecar verifies each token
// with the keys the exchange publishes, a policy that denies writes when any party of the chain is an
// AI agent lets the top level write and stops the two below, and every record of every Session carries
// the verified chain, with the exchange that issued the token, so an auditor can follow a statement back.
// Then the sidecar's own refusals: a token narrowed to another resource, an edited chain re-signed with a
// foreign key, a token meant for the exchange, an expired child, an untrusted issuer.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { SignJWT } from 'jose';
import { CLAIMS, type AccessPolicySpec, type AuditRecord, type Session } from '@chaperone/api';
import { listSessions, verifySessions, waitFor } from '../audit/durability-helpers.ts';
import { runCli } from '../audit/run-cli.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { controlPlaneEnv, directPgOptions, postgresEnv, testDir } from '../harness/env.ts';
import { podToken } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import { startExchangeFixture, type ExchangeFixture } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld, type IdentityWorld } from './identity-fixture.ts';
import { startOidcIssuer } from './oidc-issuer.ts';

/** Writes are denied when any party of the verified chain is an AI agent; everything else is allowed. */
function noAiWrites(resource: string): AccessPolicySpec {
  return {
    resources: { names: [resource] },
    rules: [
      {
        name: 'no-ai-writes',
        decision: 'deny',
        match: { sql: { sideEffects: true } },
        when: { anyActor: { kinds: ['ai-agent'] } },
        message: 'writes are not allowed when an AI agent is anywhere in the chain',
      },
      { name: 'everything-else', decision: 'allow', match: {} },
    ],
    defaultDecision: 'deny',
  };
}

/**
 * Runs psql without blocking this process: the exchange (whose JWKS the sidecar fetches) runs in it.
 */
/** The sidecar recorded the refusal as an auth.failure with SQLSTATE 28P01 and this reason. */
async function recordedRefusal(sidecar: SidecarProcess, reason: string): Promise<void> {
  const failures = (await sidecar.settledRecords()).filter((r) => r.record.type === 'auth.failure');
  const last = failures.at(-1)?.record.outcome;
  assert.equal(last?.code, '28P01');
  assert.match(last.message ?? '', new RegExp(`^${reason}: `));
}

function psql(
  env: NodeJS.ProcessEnv,
  script: string,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('psql', ['-X', '-A', '-t', '-v', 'VERBOSITY=verbose'], { env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(script);
  });
}

async function sidecarFor(
  t: TestContext,
  ex: ExchangeFixture,
  world: IdentityWorld,
  resource: string,
  database: string,
): Promise<SidecarProcess> {
  const server = postgresEnv();
  const cp = controlPlaneEnv();
  const dir = join(testDir(t), resource);
  const sidecar = await spawnSidecar({
    dir,
    upstream: {
      host: 'localhost',
      port: server.port,
      database,
      user: server.user,
      password: server.password,
      caFile: server.caFile,
    },
    policies: { 'no-ai-writes': noAiWrites(resource) },
    policyNamespace: world.namespace,
    listener: { name: resource, resource: { namespace: world.namespace, labels: {} } },
    // The cluster's service-account issuer (JWKS from the API server) and the exchange (its JWKS endpoint).
    extraIssuers: [
      {
        issuer: cp.issuer,
        jwksUrl: `${cp.server}/openid/v1/jwks`,
        serviceAccounts: true,
        jwksCaFile: cp.caFile,
        jwksBearerTokenFile: join(dir, 'jwks-bearer.token'),
        audiences: ['chaperone'],
        algorithms: ['RS256'],
      },
      ex.sidecarIssuer(),
    ],
    audit: {
      spoolDir: join(dir, 'audit'),
      kubernetes: { kubeconfig: cp.kubeconfig, namespace: world.namespace },
      exportJsonLines: true,
      flushIntervalMs: 200,
    },
    logLevel: 'info',
  });
  t.after(() => sidecar.stop());
  return sidecar;
}

test('a CI job, an AI agent and a script: each level attributed with the full chain; AI-agent writes denied', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  const database = await createTestDatabase(t, 'create table orders (id int, placed_by text)');
  // The sidecar reads the API server's JWKS with a token of its own (discovery needs authentication).
  for (const r of ['orders-db', 'billing-db']) {
    mkdirSync(join(testDir(t), r), { recursive: true });
    writeFileSync(join(testDir(t), r, 'jwks-bearer.token'), await podToken(ex.core, world.pod, undefined));
  }
  const orders = await sidecarFor(t, ex, world, 'orders-db', database);
  const billing = await sidecarFor(t, ex, world, 'billing-db', database);

  // The three tokens: the pod's own, the agent's (delegated by the CI job), the script's (by the agent).
  const ci = await world.ciToken();
  const agent = await ex.exchange(ci, {
    actor: await world.agents.sign({ sub: 'agent:report-writer' }),
    resources: [world.resource('orders-db')],
    scope: 'db:read db:write',
  });
  const script = await ex.exchange(agent, { actor: await world.agents.sign({ sub: 'script:etl' }), scope: 'db:read' });

  const levels = [
    { name: 'ci', token: ci, chain: [] as string[], writes: true },
    { name: 'agent', token: agent, chain: ['agent:report-writer'], writes: false },
    { name: 'script', token: script, chain: ['script:etl', 'agent:report-writer'], writes: false },
  ];
  for (const level of levels) {
    const r = await psql(
      orders.libpqEnv(level.token, { PGAPPNAME: `level-${level.name}` }),
      `insert into orders values (1, '${level.name}');\nselect count(*) from orders;\n`,
    );
    if (level.writes) {
      assert.equal(r.stderr, '', `${level.name}: ${r.stderr}`);
      assert.match(r.stdout, /^1$/m);
    } else {
      assert.match(
        r.stderr,
        /ERROR:\s+42501: chaperone: permission denied by policy .*\/no-ai-writes, rule no-ai-writes: writes are not allowed when an AI agent is anywhere in the chain/,
        level.name,
      );
      assert.match(r.stdout, /^1$/m, `${level.name} still reads`);
    }
  }
  // Only the top level's write reached PostgreSQL.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  const rows = await direct.query<{ placed_by: string }>('select placed_by from orders');
  await direct.end();
  assert.deepEqual(
    rows.rows.map((r) => r.placed_by),
    ['ci'],
  );

  // The Session objects, as an auditor reads them.
  const subject = `system:serviceaccount:${world.namespace}:ci-runner`;
  const sessions = await waitFor('three closed sessions', async () => {
    const all = (await listSessions(controlPlaneEnv().kubeconfig, world.namespace)).filter((s) =>
      s.spec.records.some((r) => r.type === 'session.end'),
    );
    return all.length >= 3 ? all : undefined;
  });
  const verified = await verifySessions(sessions, world.namespace);
  const exchangeRecords = new Map((await ex.logs()).flatMap((l) => l.spec.records).map((r) => [r.id, r]));
  for (const level of levels) {
    const session = verified.find((v) =>
      v.records.some((r) => r.type === 'session.start' && r.source?.applicationName === `level-${level.name}`),
    );
    assert.ok(session !== undefined, `session of ${level.name}`);
    const identity = (session.parts[0] as Session).spec.identity;
    assert.equal(identity.subject, subject, `${level.name}: the subject is the CI job`);
    assert.equal(identity.issuer, controlPlaneEnv().issuer, `${level.name}: authenticated by the cluster`);
    assert.deepEqual(
      (identity.chain ?? []).map((a) => a.subject),
      level.chain,
      `${level.name}: the verified chain, current actor first`,
    );
    if (level.chain.length > 0) {
      assert.deepEqual(
        (identity.chain ?? []).map((a) => a.kind),
        level.name === 'agent' ? ['ai-agent'] : ['script', 'ai-agent'],
      );
      // Followed back: the Session names the exchange that issued its token, and that record exists.
      const link = claimsOf(level.token)[CLAIMS.exchange] as { id: string; record: string };
      assert.deepEqual(identity.exchange, link);
      const record = exchangeRecords.get(link.id);
      assert.equal(record?.hash, link.record);
      assert.equal(record.actor?.subject, level.chain[0]);
    } else {
      assert.equal(identity.exchange, undefined);
      assert.equal(identity.claims?.['pod.name'], 'ci-job', 'the pod-bound token names the CI pod');
    }
    // session.start carries the full chain (record format 2: once; the hash chain binds every later record
    // to it), and the insert is attributed with the right decision.
    for (const record of session.records) {
      assert.deepEqual(
        record.identity,
        record.type === 'session.start' ? identity : undefined,
        `${level.name} seq ${String(record.seq)}: the identity on session.start only`,
      );
    }
    const insert = session.records.find(
      (r: AuditRecord) => r.type === 'command.decision' && r.command?.statementKinds?.includes('insert') === true,
    );
    assert.equal(insert?.decision?.result, level.writes ? 'allow' : 'deny', level.name);
    assert.equal(insert.decision.rule, level.writes ? 'everything-else' : 'no-ai-writes');
  }

  await t.test('a child token used on a resource outside its scope is refused', async () => {
    const r = await psql(billing.libpqEnv(agent), 'select 1;\n');
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr,
      /FATAL:\s+chaperone: authentication failed: identity token is narrowed to other resources and not valid for urn:chaperone:resource:.*:billing-db/,
    );
    await recordedRefusal(billing, 'resource');
    // The pod token itself was never narrowed: it works on both.
    assert.match((await psql(billing.libpqEnv(ci), 'select 1;\n')).stdout, /^1$/m);
  });

  await t.test('an act claim edited and re-signed with a foreign key is refused', async () => {
    const claims = claimsOf(script);
    delete (claims.act as Record<string, unknown>).act; // hide the AI agent behind the script
    const header = JSON.parse(Buffer.from(script.split('.')[0] ?? '', 'base64url').toString('utf8')) as { kid: string };
    const forged = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: header.kid })
      .sign(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
    const r = await psql(orders.libpqEnv(forged), "insert into orders values (2, 'forged');\n");
    assert.match(r.stderr, /FATAL:\s+chaperone: authentication failed: identity token signature is invalid/);
    await recordedRefusal(orders, 'signature');
  });

  await t.test('a token meant for the exchange (a may_act offer) is not accepted by the sidecar', async () => {
    const offer = await ex.exchange(ci, {
      audiences: [ex.issuer],
      mayAct: { sub: 'agent:report-writer', iss: world.agents.issuer },
    });
    const r = await psql(orders.libpqEnv(offer), 'select 1;\n');
    assert.match(r.stderr, /FATAL:\s+chaperone: authentication failed: identity token has an unacceptable aud claim/);
    await recordedRefusal(orders, 'audience');
  });

  await t.test('an expired child token is refused (replay after expiry)', async () => {
    const brief = await ex.exchange(agent, { lifetime: 1 });
    const r = await poll('the child token to expire at the sidecar', async () => {
      const attempt = await psql(orders.libpqEnv(brief), 'select 1;\n');
      return attempt.status === 0 ? undefined : attempt;
    });
    assert.match(r.stderr, /FATAL:\s+chaperone: authentication failed: identity token has expired/);
    await recordedRefusal(orders, 'expired');
  });

  await t.test('a token from an untrusted issuer is refused', async () => {
    const stranger = await startOidcIssuer();
    t.after(() => stranger.close());
    const r = await psql(orders.libpqEnv(await stranger.sign({ sub: subject })), 'select 1;\n');
    assert.match(r.stderr, /FATAL:\s+chaperone: authentication failed: identity token issuer is not trusted/);
    await recordedRefusal(orders, 'issuer');
  });

  await t.test('kubectl chaperone token trace follows the script session back to the CI pod token', async () => {
    const scriptSession = verified.find((v) =>
      v.records.some((r) => r.type === 'session.start' && r.source?.applicationName === 'level-script'),
    );
    const name = scriptSession?.parts[0]?.metadata.name ?? '';
    const env = { KUBECONFIG: controlPlaneEnv().kubeconfig };
    const args = ['token', 'trace', name, '-n', world.namespace, '--exchange-namespace', ex.namespace];
    const r = await runCli(args, env);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const lines = r.stdout.split('\n');
    assert.match(
      lines[0] ?? '',
      new RegExp(`^Session ${name}: ${subject} -> agent:report-writer -> script:etl \\(acting: script:etl\\)$`),
    );
    assert.match(
      r.stdout,
      /exchange .* under .*\/ci\/agents-to-scripts-and-agents\n\s+system:serviceaccount:.* delegated to script:etl \(script\); chain depth 2/,
    );
    assert.match(
      r.stdout,
      /exchange .* under .*\/ci\/ci-to-agents\n\s+system:serviceaccount:.* delegated to agent:report-writer \(ai-agent\); chain depth 1/,
    );
    assert.match(
      r.stdout,
      new RegExp(
        `root\\s+subject token sha256:[0-9a-f]{64} from ${controlPlaneEnv().issuer.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`,
      ),
    );
    // Evidence removed is evidence missing: the trace says so and fails.
    await ex.operator.tokenExchange?.log.stop();
    for (const log of await ex.logs()) {
      await ex.custom.deleteNamespacedCustomObject({
        group: 'chaperone.dev',
        version: 'v1alpha1',
        namespace: ex.namespace,
        plural: 'tokenexchangelogs',
        name: log.metadata.name ?? '',
      });
    }
    const gone = await runCli(args, env);
    assert.equal(gone.code, 1);
    assert.match(gone.stdout, /MISSING\s+exchange record [0-9a-f-]+: deleted, or in another namespace/);
  });
});
