// The read-only login of a ProtectedResource whose credentials the operator delivers (docs/postgres-engine.md,
// "read-only login"; docs/injection.md, "Credentials out of the editors' reach"): both Secrets live in the
// credential namespace, the pod mounts neither, the attested sidecar gets both logins in one delivery into
// its memory volume, and a session whose policies grant no write logs in as the reader (PostgreSQL then
// refuses any write itself). The editor of the agents' namespace cannot read either Secret; a read-only
// Secret that no longer allows the namespace makes the delivery refused (never the main login instead).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { GROUP, VERSION } from '@chaperone/api';
import { SIDECAR_CREDENTIALS_DIR } from '../../operator/src/injection/constants.ts';
import { postgresEnv, superuserSql } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { freePort } from '../harness/postgres.ts';
import { filesUnder } from '../harness/secret-scan.ts';
import { agentPgOptions, kubectlAs, startTrustFixture, withdrawDelivery } from './trust-fixture.ts';

const RESOURCE = 'vault-db';
const READER_SECRET = 'vault-db-reader';

test('a read-only login with a delivered credential: delivered to the attested sidecar alone, read-only sessions log in as the reader', async (t) => {
  const fx = await startTrustFixture(t, { credentialNamespace: true });
  const { ns, core, custom } = fx;
  const credentials = fx.credentialNamespace;
  assert.ok(credentials !== undefined);
  const pgEnv = postgresEnv();

  const reader = { user: `ro_${randomBytes(5).toString('hex')}`, password: randomBytes(18).toString('base64url') };
  superuserSql(
    `create role ${reader.user} login password '${reader.password}'; alter role ${reader.user} set default_transaction_read_only = on; grant connect on database ${pgEnv.database} to ${reader.user}`,
  );
  t.after(() => {
    superuserSql(`select pg_terminate_backend(pid) from pg_stat_activity where usename = '${reader.user}'`);
    superuserSql(`drop owned by ${reader.user}; drop role if exists ${reader.user}`);
  });

  for (const [name, data] of [
    [RESOURCE, { username: pgEnv.user, password: pgEnv.password }],
    [READER_SECRET, { username: reader.user, password: reader.password }],
  ] as const) {
    await core.createNamespacedSecret({
      namespace: credentials,
      body: { metadata: { name, annotations: { 'chaperone.dev/allowed-namespaces': ns } }, stringData: data },
    });
  }
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
        credentialSecretRef: { name: RESOURCE, namespace: credentials },
        readOnlyCredentialSecretRef: { name: READER_SECRET, namespace: credentials },
      },
    },
  });
  // Reads without side effects only: no policy of the session grants a write, so it is read-only.
  await fx.createPolicy(ns, 'reads-only', {
    resources: { names: [RESOURCE] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'], sideEffects: false } } }],
    defaultDecision: 'deny',
  });

  const pod = await fx.injectedPod(ns, 'agent', { resources: RESOURCE });
  const volumes = JSON.stringify(pod.spec?.volumes ?? []);
  assert.ok(!volumes.includes(READER_SECRET) && !volumes.includes(`"secretName":"${RESOURCE}"`), 'no Secret volume');
  const running = await fx.runSidecar(t, pod);

  await t.test('a read-only session logs in as the reader, read-only', async () => {
    const options = agentPgOptions(running);
    const row = await poll('the policy and the delivered credentials', async () => {
      const c = new pg.Client(options);
      try {
        await c.connect();
        const r = await c.query<{ login: string; ro: string }>(
          `select session_user::text as login, current_setting('default_transaction_read_only') as ro`,
        );
        return r.rows[0];
      } catch {
        return undefined;
      } finally {
        await c.end().catch(() => undefined);
      }
    });
    assert.deepEqual(row, { login: reader.user, ro: 'on' });
    // Delivered, not mounted: the sidecar's memory volume holds both logins the fetcher wrote.
    const dir = join(running.root, SIDECAR_CREDENTIALS_DIR, RESOURCE);
    assert.equal(readFileSync(join(dir, 'read-only', 'username'), 'utf8'), reader.user);
    assert.equal(readFileSync(join(dir, 'read-only', 'password'), 'utf8'), reader.password);
    assert.equal(readFileSync(join(dir, 'username'), 'utf8'), pgEnv.user);
  });

  await t.test(
    'the reader password is in no agent env or file, no log, no pod object; the editor cannot read it',
    async () => {
      const places: [string, string][] = [
        ...Object.entries(running.agentEnv).map(([k, v]): [string, string] => [`agent env ${k}`, v]),
        ...filesUnder(join(running.root, 'agent')).map((f, i): [string, string] => [
          `agent file ${String(i)}`,
          f.toString('latin1'),
        ]),
        ['sidecar log', readFileSync(running.sidecar.logFile, 'latin1')],
        ['operator log', fx.operatorLogs.join('')],
        ['pod', JSON.stringify(await core.readNamespacedPod({ namespace: ns, name: pod.metadata?.name ?? '' }))],
      ];
      for (const [where, text] of places) assert.ok(!text.includes(reader.password), `${where} holds the password`);
      const denied = await kubectlAs(fx.editor, ['get', 'secret', READER_SECRET, '-n', credentials, '-o', 'yaml']);
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /forbidden/);
    },
  );

  await t.test('a reader Secret that no longer allows the namespace: not Ready, and no delivery at all', async () => {
    const answer = await withdrawDelivery(fx, {
      secret: READER_SECRET,
      resource: RESOURCE,
      sidecarToken: running.sidecarToken,
    });
    assert.equal(answer.status, 403);
    assert.match(answer.text, /does not allow namespace/);
    assert.ok(!answer.text.includes(Buffer.from(pgEnv.password).toString('base64')), 'not the main login either');
  });
});
