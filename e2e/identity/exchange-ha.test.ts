// The exchange across two operator replicas sharing one key Secret: either replica serves any token the
// other issued, a sidecar verifies tokens of one replica with the JWKS of the other, a rotated key is
// published before any replica signs with it (so a sidecar's cached JWKS never meets an unknown key it
// may not refetch), the old key keeps verifying its tokens until they have all expired and then leaves the
// JWKS (but stays in the published archive for evidence), and each replica keeps its own evidence stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TOKEN_EXCHANGE_PATHS, verifyExchangeChain } from '@chaperone/api';
import {
  JWKS_FILE,
  PUBLIC_KEYS_CONFIGMAP,
  SIGNING_KEYS_SECRET,
  parsePublished,
} from '../../operator/src/identity/signing-keys.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { postgresEnv, testDir } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { exchangeForm, startExchangeFixture, type ExchangeFixture } from './exchange-fixture.ts';
import { ciDelegation, createIdentityWorld } from './identity-fixture.ts';

const PUBLISH_DELAY_MS = 12_000;

function kidOf(token: string): string {
  return (JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8')) as { kid: string }).kid;
}

async function jwksKids(replica: ExchangeFixture): Promise<string[]> {
  const reply = await replica.get(TOKEN_EXCHANGE_PATHS.jwks);
  return (reply.body.keys as { kid: string }[]).map((k) => k.kid);
}

function psql(
  env: NodeJS.ProcessEnv,
  script: string,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('psql', ['-X', '-A', '-t'], { env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(script);
  });
}

test('two replicas: shared keys, JWKS from either, rotation with overlap, retirement, one stream each', async (t) => {
  // A clock both replicas read, so the test can let hours pass for key retirement.
  let skewMs = 0;
  const now = () => Date.now() + skewMs;
  const common = { now, keyPublishDelayMs: PUBLISH_DELAY_MS, keyRefreshIntervalMs: 300 };
  const a = await startExchangeFixture(t, { ...common, replica: 'replica-a' });
  const b = await startExchangeFixture(t, {
    ...common,
    replica: 'replica-b',
    namespace: a.namespace,
    issuerUrl: a.issuer.replace(/\/identity\/v1$/, ''),
  });
  assert.equal(b.issuer, a.issuer, 'one exchange, one issuer, whichever replica answers');
  const world = await createIdentityWorld(t, a);
  await a.applyDelegationPolicy('ci', ciDelegation(world));
  await poll('replica b to load the policy', async () => {
    const r = await b.post(
      exchangeForm(await world.ciToken(), {
        actor: await world.agents.sign({ sub: 'agent:x' }),
        resources: [world.resource('db')],
        scope: 'db:read',
      }),
    );
    return r.status === 200 ? true : undefined;
  });
  const firstKid = a.operator.tokenExchange?.keys.signingKey().kid;
  assert.equal(b.operator.tokenExchange?.keys.signingKey().kid, firstKid, 'both replicas sign with the Secret key');

  const ci = await world.ciToken();
  const fromA = await a.exchange(ci, {
    actor: await world.agents.sign({ sub: 'agent:report-writer' }),
    resources: [world.resource('orders-db')],
    scope: 'db:read',
  });
  await t.test('replica b accepts and narrows a token replica a issued', async () => {
    const narrowed = await b.exchange(fromA, { lifetime: 60 });
    assert.equal(kidOf(narrowed), firstKid);
  });

  // A sidecar that fetches the JWKS from replica b.
  const database = await createTestDatabase(t);
  const server = postgresEnv();
  const dir = join(testDir(t), 'sidecar');
  mkdirSync(dir, { recursive: true });
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
    policies: {
      all: {
        resources: { names: ['orders-db'] },
        rules: [{ name: 'all', decision: 'allow', match: {} }],
        defaultDecision: 'deny',
      },
    },
    policyNamespace: world.namespace,
    listener: { name: 'orders-db', resource: { namespace: world.namespace, labels: {} } },
    extraIssuers: [b.sidecarIssuer()],
    logLevel: 'info',
  });
  t.after(() => sidecar.stop());

  await t.test('a sidecar verifies a token of replica a with the JWKS of replica b', async () => {
    const r = await psql(sidecar.libpqEnv(fromA), 'select 41 + 1;\n');
    assert.equal(r.stderr, '');
    assert.match(r.stdout, /^42$/m);
  });

  let secondKid = '';
  await t.test(
    'a rotated key is published first, signs only after the delay, and old tokens keep working',
    async () => {
      await a.operator.tokenExchange?.keys.rotate();
      const secret = await a.core.readNamespacedSecret({ namespace: a.namespace, name: SIGNING_KEYS_SECRET });
      const stored = JSON.parse(Buffer.from(secret.data?.['keys.json'] ?? '', 'base64').toString('utf8')) as {
        keys: { kid: string }[];
      };
      assert.equal(stored.keys.length, 2);
      secondKid = stored.keys[1]?.kid ?? '';
      // Replica b picks the new key up from the Secret and publishes it before anyone signs with it.
      await poll('replica b to publish the new key', async () =>
        (await jwksKids(b)).includes(secondKid) ? true : undefined,
      );
      const meanwhile = await b.exchange(ci, { resources: [world.resource('orders-db')], lifetime: 600 });
      assert.equal(kidOf(meanwhile), firstKid, 'still signed with the old key while the new one is being published');
      // After the publish delay both replicas sign with the new key.
      const rotated = await poll(
        'replica a to sign with the new key',
        async () => {
          const token = await a.exchange(ci, { resources: [world.resource('orders-db')], lifetime: 600 });
          return kidOf(token) === secondKid ? token : undefined;
        },
        60_000,
      );
      // The sidecar fetched b's JWKS over 12 s ago, before the rotation: an unknown kid makes it refetch once.
      const r = await psql(sidecar.libpqEnv(rotated), 'select 1;\n');
      assert.equal(r.stderr, '', 'the first connection with a new-key token succeeds');
      // Tokens of the old key still verify, at the exchange and at the sidecar.
      assert.equal((await psql(sidecar.libpqEnv(fromA), 'select 2;\n')).stderr, '');
      await b.exchange(meanwhile, { lifetime: 30 });
    },
  );

  await t.test(
    'once every token of the old key has expired, the key leaves the JWKS but stays in the archive',
    async () => {
      skewMs = 3 * 3_600_000; // the exchange's maximum token lifetime (1 h) plus margin has passed
      await a.operator.tokenExchange?.keys.refresh();
      await b.operator.tokenExchange?.keys.refresh();
      assert.deepEqual(await jwksKids(a), [secondKid]);
      assert.deepEqual(await jwksKids(b), [secondKid], 'a refresh reads the Secret after it was asked for');
      const cm = await a.core.readNamespacedConfigMap({ namespace: a.namespace, name: PUBLIC_KEYS_CONFIGMAP });
      const archive = parsePublished(cm.data?.[JWKS_FILE]).map((k) => k.kid);
      assert.ok(archive.includes(firstKid ?? '') && archive.includes(secondKid), 'evidence keys are kept');
    },
  );

  await t.test('each replica writes its own evidence stream, each chain intact', async () => {
    const logs = await a.logs();
    const streams = new Map<string, typeof logs>();
    for (const log of logs) streams.set(log.spec.stream, [...(streams.get(log.spec.stream) ?? []), log]);
    assert.equal(streams.size, 2);
    assert.deepEqual([...new Set(logs.map((l) => l.spec.replica))].sort(), ['replica-a', 'replica-b']);
    for (const parts of streams.values()) {
      assert.deepEqual(verifyExchangeChain(parts.flatMap((p) => p.spec.records)), []);
    }
  });

  await t.test('with replica a stopped, replica b still serves', async () => {
    await a.stop();
    skewMs = 0;
    const ci2 = await world.ciToken();
    const reply = await b.post(exchangeForm(ci2, { resources: [world.resource('orders-db')] }));
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    const closed = (await b.logs()).filter((l) => l.spec.replica === 'replica-a');
    assert.ok(closed.every((l) => l.status?.phase === 'Closed' || l.status?.phase === 'Continued'));
  });
});
