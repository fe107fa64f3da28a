// The masking key of a ProtectedResource whose upstream credential the operator delivers (docs/masking.md,
// "The hash key"; docs/injection.md, "Credentials out of the editors' reach"): the pod mounts no Secret for
// it; the attested sidecar gets the key in the same delivery as the credential, into its memory volume, and
// hashes a masked column with exactly that key: the client receives `hmac:` and the first 16 hex digits of
// HMAC-SHA-256(key, value), which this test computes itself. The key appears in no agent env or file, no
// log of the sidecar or the operator, no status, no pod object; an unattested caller does not get it.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { CREDENTIAL_DELIVERY_PATH, GROUP, VERSION } from '@chaperone/api';
import { SIDECAR_CREDENTIALS_DIR } from '../../operator/src/injection/constants.ts';
import { postgresEnv } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { freePort } from '../harness/postgres.ts';
import { filesUnder, keyEncodings } from '../harness/secret-scan.ts';
import { agentPgOptions, kubectlAs, postToOperator, startTrustFixture, withdrawDelivery } from './trust-fixture.ts';

const RESOURCE = 'vault-db';
const KEY_SECRET = 'vault-db-masking-key';

/** SQL as the superuser in the harness database, which the ProtectedResource names. */
function resourceDatabaseSql(sql: string): void {
  const env = postgresEnv();
  execFileSync('psql', [
    '-X',
    '-q',
    '-h',
    env.socketDir,
    '-p',
    String(env.port),
    '-U',
    'postgres',
    '-d',
    env.database,
    '-c',
    sql,
  ]);
}

/**
 * A ProtectedResource with a delivered credential and a masking key, in the resource's namespace or (`keyIn:
 * 'credential namespace'`) next to the credential, a policy hashing a table's emails, and an injected pod
 * whose sidecar runs.
 */
async function deliveredKey(t: TestContext, keyIn: 'resource namespace' | 'credential namespace') {
  const fx = await startTrustFixture(t, { credentialNamespace: true });
  const { ns, core, custom } = fx;
  const credentials = fx.credentialNamespace;
  assert.ok(credentials !== undefined);
  const pgEnv = postgresEnv();

  const table = `mkd_${randomBytes(4).toString('hex')}`;
  const emails = ['ada@example.com', 'grace@example.org', 'zoë@example.net'];
  resourceDatabaseSql(
    `create table public.${table} (id int, email text, note text);
     insert into public.${table} values ${emails.map((e, i) => `(${String(i + 1)}, '${e}', 'note ${String(i + 1)}')`).join(', ')};
     grant select on public.${table} to ${pgEnv.user};`,
  );
  t.after(() => resourceDatabaseSql(`drop table if exists public.${table}`));

  // The credential in the credential namespace, the masking key in the resource's namespace.
  await core.createNamespacedSecret({
    namespace: credentials,
    body: {
      metadata: { name: RESOURCE, annotations: { 'chaperone.dev/allowed-namespaces': ns } },
      stringData: { username: pgEnv.user, password: pgEnv.password },
    },
  });
  const key = randomBytes(32);
  const nextToCredential = keyIn === 'credential namespace';
  await core.createNamespacedSecret({
    namespace: nextToCredential ? credentials : ns,
    body: {
      metadata: {
        name: KEY_SECRET,
        ...(nextToCredential ? { annotations: { 'chaperone.dev/allowed-namespaces': ns } } : {}),
      },
      data: { hmac: key.toString('base64') },
    },
  });
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'ProtectedResource',
      metadata: { name: RESOURCE },
      spec: {
        type: 'postgres',
        endpoint: { host: 'localhost', port: pgEnv.port, database: pgEnv.database },
        // A port nobody else on this host listens on: materialised pods share the host's network.
        listenPort: await freePort(),
        tls: { mode: 'verify-full', caSecretRef: { name: 'orders-db-ca', key: 'ca.crt' } },
        credentialSecretRef: {
          name: RESOURCE,
          namespace: credentials,
          usernameKey: 'username',
          passwordKey: 'password',
        },
        maskingKeySecretRef: { name: KEY_SECRET, key: 'hmac', ...(nextToCredential ? { namespace: credentials } : {}) },
      },
    },
  });
  await fx.createPolicy(ns, 'hash-emails', {
    resources: { names: [RESOURCE] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    defaultDecision: 'deny',
    masking: [{ name: 'email', columns: [`public.${table}.email`], strategy: 'hash' }],
  });

  // Admitted (the masking key no longer refuses a delivered credential), with no Secret of the key mounted.
  const pod = await fx.injectedPod(ns, 'agent', { resources: RESOURCE });
  assert.ok(
    !JSON.stringify(pod.spec?.volumes ?? []).includes(KEY_SECRET),
    'no volume of the pod names the masking key Secret',
  );
  const running = await fx.runSidecar(t, pod);
  return { fx, ns, credentials, key, pod, running, table, emails };
}

/** The rows of the test's table through the sidecar: the masked emails are HMAC-SHA-256 under `key`. */
async function assertHashedUnder(scenario: Awaited<ReturnType<typeof deliveredKey>>): Promise<void> {
  const { running, table, emails, key } = scenario;
  const options = agentPgOptions(running);
  const rows = await poll('the policy and the delivered credential', async () => {
    const c = new pg.Client(options);
    try {
      await c.connect();
      const r = await c.query<{ id: number; email: string; note: string }>(
        `select id, email, note from public.${table} order by id`,
      );
      return r.rows;
    } catch {
      return undefined;
    } finally {
      await c.end().catch(() => undefined);
    }
  });
  assert.deepEqual(
    rows.map((r) => `${String(r.id)}|${r.email}|${r.note}`),
    emails.map(
      (e, i) =>
        `${String(i + 1)}|hmac:${createHmac('sha256', key).update(e).digest('hex').slice(0, 16)}|note ${String(i + 1)}`,
    ),
  );
  // Delivered, not mounted: the sidecar's memory volume holds the key the fetcher wrote.
  assert.deepEqual(readFileSync(join(running.root, SIDECAR_CREDENTIALS_DIR, RESOURCE, 'masking-key')), key);
  assert.match(readFileSync(running.sidecar.logFile, 'utf8'), /credential delivered by the operator/);
}

test('a masking key with a delivered credential: delivered to the attested sidecar alone, hashes under exactly that key', async (t) => {
  const scenario = await deliveredKey(t, 'resource namespace');
  const { fx, ns, key, pod, running } = scenario;
  const { core, custom } = fx;

  await t.test('the client receives HMAC-SHA-256 under the Secret key, the other columns clear', async () => {
    await assertHashedUnder(scenario);
  });

  await t.test('the key is in no agent env or file, no log, no status, no pod object', async () => {
    const held: string[] = [...Object.values(running.agentEnv)];
    for (const file of filesUnder(join(running.root, 'agent'))) held.push(file.toString('latin1'));
    const resource = await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      name: RESOURCE,
    });
    const places: [string, string][] = [
      ...held.map((h, i): [string, string] => [`agent value ${String(i)}`, h]),
      ['sidecar log', readFileSync(running.sidecar.logFile, 'latin1')],
      ['operator log', fx.operatorLogs.join('')],
      ['ProtectedResource', JSON.stringify(resource)],
      ['pod', JSON.stringify(await core.readNamespacedPod({ namespace: ns, name: pod.metadata?.name ?? '' }))],
    ];
    for (const [where, text] of places) {
      for (const encoded of keyEncodings(key)) assert.ok(!text.includes(encoded), `${where} holds the key`);
    }
    assert.ok(held.length >= 3, `only ${String(held.length)} agent values looked at`);
  });

  await t.test('an unbound token gets neither the credential nor the key', async () => {
    const webhooks = fx.operator.webhooks;
    assert.ok(webhooks);
    const unbound = (await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns])).stdout.trim();
    const answer = await postToOperator(
      webhooks.server.url(CREDENTIAL_DELIVERY_PATH),
      webhooks.certificates.current().caBundlePem,
      unbound,
      { resource: RESOURCE },
    );
    assert.equal(answer.status, 403);
    for (const encoded of keyEncodings(key)) assert.ok(!answer.text.includes(encoded));
  });
});

test("a masking key next to the delivered credential: out of the resource namespace's editors' reach, delivered only while the Secret allows the namespace", async (t) => {
  const scenario = await deliveredKey(t, 'credential namespace');
  const { fx, ns, credentials, key, running } = scenario;

  await t.test('the client receives HMAC-SHA-256 under the key of the credential namespace', async () => {
    await assertHashedUnder(scenario);
  });

  await t.test("an editor of the resource's namespace can read no Secret holding the key", async () => {
    const denied = await kubectlAs(fx.editor, ['get', 'secret', KEY_SECRET, '-n', credentials, '-o', 'yaml']);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /forbidden/);
    const own = await kubectlAs(fx.editor, ['get', 'secrets', '-n', ns, '-o', 'json']);
    assert.equal(own.code, 0, own.stderr);
    for (const encoded of keyEncodings(key))
      assert.ok(!own.stdout.includes(encoded), 'no Secret of the namespace holds it');
  });

  await t.test('a Secret that no longer allows the namespace: not Ready, and the delivery is refused', async () => {
    const answer = await withdrawDelivery(fx, {
      secret: KEY_SECRET,
      resource: RESOURCE,
      sidecarToken: running.sidecarToken,
    });
    assert.equal(answer.status, 403);
    assert.match(answer.text, /does not allow namespace/);
    for (const encoded of keyEncodings(key)) assert.ok(!answer.text.includes(encoded));
  });
});
