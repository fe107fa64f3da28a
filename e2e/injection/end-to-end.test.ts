// The whole path from an annotation to a query: the webhook injects a pod; its stored spec is materialised
// (sidecar volumes filled from the API server, config rewritten only under a temp root) and the sidecar
// runs locally with exactly that config; psql, as the agent, uses only the agent container's env and its
// audience-bound token. It reaches PostgreSQL through the sidecar, and has no credential to go around it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { GROUP, VERSION, type AccessPolicySpec, type ProtectedResource } from '@chaperone/api';
import { VOLUME_CREDENTIALS } from '../../operator/src/injection/constants.ts';
import { postgresEnv, testDir } from '../harness/env.ts';
import { writePolicyBundle } from '../harness/sidecar.ts';
import { agentPod, createPostgresResource, startWebhookFixture, type WebhookFixture } from './injection-fixture.ts';
import { materialiseSidecar, materialiseVolumes } from '../harness/materialise-pod.ts';

let fx: WebhookFixture;
before(async () => {
  fx = await startWebhookFixture();
});
after(async () => {
  await fx.stop();
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function psql(env: NodeJS.ProcessEnv, sql: string) {
  return spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8', timeout: 30_000 });
}

const ALLOW_ORDERS: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

test('an injected agent reaches PostgreSQL through its materialised sidecar and not around it', async (t) => {
  const ns = await fx.namespace(t);
  const listenPort = await freePort();
  await createPostgresResource(fx, ns, { listenPort });
  await fx.custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'allow-orders' },
      spec: ALLOW_ORDERS,
    },
  });
  // The injector mounts the bundles of the policies it knows; wait until its cache has this one.
  const resource = (await fx.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    name: 'orders-db',
  })) as ProtectedResource;
  for (let i = 0; i < 100 && fx.webhooks.cache.policiesCovering(ns, [resource]).length === 0; i++) await sleep(100);

  await fx.core.createNamespacedPod({ namespace: ns, body: agentPod('agent', 'orders-db') });
  const pod = await fx.core.readNamespacedPod({ namespace: ns, name: 'agent' });
  const policiesVolume = pod.spec?.volumes?.find((v) => v.name === 'chaperone-policies');
  assert.equal(policiesVolume?.projected?.sources?.[0]?.configMap?.name, 'chaperone-policy-allow-orders');

  const root = join(testDir(t), 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  const sidecar = await materialiseSidecar(fx.core, pod, root);
  // No operator controller runs here: compile the bundle into the mounted bundle directory ourselves.
  const bundleDir = (sidecar.config.policy as { bundleDir: string }).bundleDir;
  await writePolicyBundle(bundleDir, 'allow-orders', ALLOW_ORDERS, ns);
  const running = await sidecar.start();
  t.after(() => running.stop());

  // The agent: its own container's env and mounts (the identity token, bound to this pod), nothing else.
  const agentRoot = join(root, 'agent');
  const agent = await materialiseVolumes(fx.core, pod, 'agent', agentRoot);
  assert.ok(!(agent.volumeMounts ?? []).some((m) => m.name === VOLUME_CREDENTIALS));
  const agentEnv = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value ?? '']));
  const tokenFile = agentEnv.CHAPERONE_TOKEN_FILE;
  assert.ok(tokenFile);
  const token = readFileSync(join(agentRoot, tokenFile), 'utf8');
  const baseEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' };

  const through = psql({ ...baseEnv, ...agentEnv, PGPASSWORD: token }, 'select current_user, 40 + 2');
  assert.equal(
    through.status,
    0,
    `psql through the sidecar failed: ${through.stderr}\n${readFileSync(running.logFile, 'utf8')}`,
  );
  assert.equal(through.stdout.trim(), `${postgresEnv().user}|42`, 'the sidecar logged in with the Secret credential');

  // Around the sidecar: same agent, straight at PostgreSQL. Its only secret is the token, which is no
  // PostgreSQL password.
  const pg = postgresEnv();
  const around = psql(
    { ...baseEnv, ...agentEnv, PGHOST: pg.host, PGPORT: String(pg.port), PGSSLMODE: 'require', PGPASSWORD: token },
    'select 1',
  );
  assert.notEqual(around.status, 0);
  assert.match(around.stderr, /authentication failed|role "agent" does not exist|no pg_hba\.conf entry/);
  const withoutPassword = psql(
    { ...baseEnv, ...agentEnv, PGHOST: pg.host, PGPORT: String(pg.port), PGSSLMODE: 'require', PGCONNECT_TIMEOUT: '5' },
    'select 1',
  );
  assert.notEqual(withoutPassword.status, 0);

  // The sidecar's audit records (stdout, JSON lines) name the agent: the pod's service account, from
  // the pod-bound token.
  const subject = `system:serviceaccount:${ns}:default`;
  for (let i = 0; i < 50 && !readFileSync(running.logFile, 'utf8').includes(subject); i++) await sleep(100);
  assert.ok(readFileSync(running.logFile, 'utf8').includes(subject), 'audit records carry the agent identity');
});
