// The key of the hash masking strategy, from a Secret to the sidecar (docs/masking.md, "The hash key"): the
// running operator checks the Secret a ProtectedResource names in maskingKeySecretRef (a key shorter than
// 32 bytes keeps the resource not Ready, and the condition tells its length, never its bytes), its webhook
// mounts the key into the sidecar only and names the file in the sidecar config; the sidecar, materialised
// from the stored pod and the real API server, hashes a masked column with exactly that key: the client
// receives `hmac:` and the first 16 hex digits of HMAC-SHA-256(key, value), which this test computes itself.
// The key appears in no agent env or file, no log of the sidecar or the operator, no status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import {
  GROUP,
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  VERSION,
  type AccessPolicy,
  type AccessPolicySpec,
  type ProtectedResource,
} from '@chaperone/api';
import {
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  SIDECAR_CONTAINER,
} from '../../operator/src/injection/constants.ts';
import { testDir, postgresEnv } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { materialiseSidecar, materialiseVolumes, resolvedContainerEnv } from '../harness/materialise-pod.ts';
import { startOperatorProcess } from '../harness/operator-process.ts';
import { poll } from '../harness/poll.ts';
import { freePort } from '../harness/postgres.ts';
import { filesUnder, keyEncodings } from '../harness/secret-scan.ts';
import { agentPod, createPostgresResource, RESOURCE, waitForServiceAccount } from './injection-fixture.ts';

const KEY_SECRET = 'orders-db-masking-key';

function psql(env: NodeJS.ProcessEnv, sql: string) {
  return spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8', timeout: 30_000 });
}

/** SQL as the superuser in the database the ProtectedResource names. */
function resourceDatabaseSql(sql: string): void {
  const pg = postgresEnv();
  execFileSync('psql', [
    '-X',
    '-q',
    '-h',
    pg.socketDir,
    '-p',
    String(pg.port),
    '-U',
    'postgres',
    '-d',
    pg.database,
    '-c',
    sql,
  ]);
}

test('the masking key of a ProtectedResource reaches its sidecar, and only its sidecar', async (t) => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const ns = await createTestNamespace(t, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
  await waitForServiceAccount(core, ns, 'default');
  await createPostgresResource({ core, custom }, ns, { listenPort: await freePort() });

  // A table with the values to hash, readable by the resource's login.
  const table = `mk_${randomBytes(4).toString('hex')}`;
  const emails = ['ada@example.com', 'grace@example.org', 'zoë@example.net'];
  resourceDatabaseSql(
    `create table public.${table} (id int, email text, note text);
     insert into public.${table} values ${emails.map((e, i) => `(${String(i + 1)}, '${e}', 'note ${String(i + 1)}')`).join(', ')};
     grant select on public.${table} to ${postgresEnv().user};`,
  );
  t.after(() => {
    resourceDatabaseSql(`drop table if exists public.${table}`);
  });

  // First a key too short to be one: the resource is not Ready, and says so without the key.
  const short = randomBytes(16);
  await core.createNamespacedSecret({
    namespace: ns,
    body: { metadata: { name: KEY_SECRET }, data: { hmac: short.toString('base64') } },
  });
  await custom.patchNamespacedCustomObject(
    {
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      name: RESOURCE,
      body: { spec: { maskingKeySecretRef: { name: KEY_SECRET, key: 'hmac' } } },
    },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
  const policySpec: AccessPolicySpec = {
    resources: { names: [RESOURCE] },
    rules: [{ name: 'everything', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
    masking: [{ name: 'email', columns: [`public.${table}.email`], strategy: 'hash' }],
  };
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'accesspolicies',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'AccessPolicy',
      metadata: { name: 'hash-emails' },
      spec: policySpec,
    },
  });

  const operator = await startOperatorProcess(t, { namespace: ns, extraArgs: ['--enable-audit-authority'] });
  const withLogs = (err: unknown): never => {
    throw new Error(`${String(err)}\noperator logs (last 20):\n${operator.logs().slice(-20).join('\n')}`, {
      cause: err,
    });
  };
  const readyCondition = async () => {
    const r = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      name: RESOURCE,
    })) as ProtectedResource;
    return r.status?.conditions?.find((c) => c.type === 'Ready');
  };
  const refused = await poll('the short masking key to be reported', async () => {
    const c = await readyCondition();
    return c?.reason === 'InvalidMaskingKey' ? c : undefined;
  }).catch(withLogs);
  assert.equal(refused.status, 'False');
  assert.match(refused.message, /holds 16 bytes; the masking key needs at least 32/);

  // Then a real one: Ready again.
  const key = randomBytes(32);
  await core.replaceNamespacedSecret({
    namespace: ns,
    name: KEY_SECRET,
    body: { metadata: { name: KEY_SECRET }, data: { hmac: key.toString('base64') } },
  });
  await poll('the resource to be Ready with the new key', async () =>
    (await readyCondition())?.status === 'True' ? true : undefined,
  ).catch(withLogs);
  await poll('the policy to be Ready and in the signed policy set', async () => {
    const p = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'accesspolicies',
      name: 'hash-emails',
    })) as AccessPolicy;
    if (p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') !== true) return undefined;
    const set = await core.readNamespacedConfigMap({ namespace: ns, name: POLICY_SET_CONFIGMAP });
    return (set.data?.[POLICY_SET_KEY] ?? '').length > 0 ? true : undefined;
  }).catch(withLogs);

  const created = await core.createNamespacedPod({ namespace: ns, body: agentPod('agent', RESOURCE) });
  const pod = await core.readNamespacedPod({ namespace: ns, name: created.metadata?.name ?? '' });
  assert.match(pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '', /hashKeyFile: .*\/masking-key$/m);

  const root = join(testDir(t), 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  const materialised = await materialiseSidecar(core, pod, root);
  const sidecar = await materialised.start();
  t.after(() => sidecar.stop());

  // The agent, as the kubelet would run it: its env and the files of its mounts, from the API server.
  const agent = (pod.spec?.containers ?? []).find((c) => c.name !== SIDECAR_CONTAINER);
  assert.ok(agent);
  const agentEnv = await resolvedContainerEnv(core, pod, agent);
  const agentRoot = join(root, 'agents', agent.name);
  await materialiseVolumes(core, pod, agent.name, agentRoot);
  const token = readFileSync(join(agentRoot, agentEnv.CHAPERONE_TOKEN_FILE ?? ''), 'utf8');

  await t.test('the client receives HMAC-SHA-256 under the Secret key, the other columns clear', () => {
    const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...agentEnv, PGPASSWORD: token };
    const r = psql(env, `select id, email, note from public.${table} order by id`);
    assert.equal(r.status, 0, `${r.stderr}\n${readFileSync(sidecar.logFile, 'utf8')}`);
    const expected = emails.map(
      (e, i) =>
        `${String(i + 1)}|hmac:${createHmac('sha256', key).update(e).digest('hex').slice(0, 16)}|note ${String(i + 1)}`,
    );
    assert.deepEqual(r.stdout.trim().split('\n'), expected);
  });

  await t.test('the key is in no agent env or file, no log, no status, no pod object', async () => {
    const held: string[] = [...Object.values(agentEnv)];
    for (const mount of agent.volumeMounts ?? []) {
      for (const file of filesUnder(join(agentRoot, mount.mountPath))) held.push(file.toString('latin1'));
    }
    const resource = await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'protectedresources',
      name: RESOURCE,
    });
    const places: [string, string][] = [
      ...held.map((h, i): [string, string] => [`agent value ${String(i)}`, h]),
      ['sidecar log', readFileSync(sidecar.logFile, 'latin1')],
      ['operator log', operator.logs().join('\n')],
      ['ProtectedResource', JSON.stringify(resource)],
      ['pod', JSON.stringify(await core.readNamespacedPod({ namespace: ns, name: pod.metadata?.name ?? '' }))],
    ];
    for (const [where, text] of places) {
      for (const [k, name] of [
        [key, 'key'],
        [short, 'short key'],
      ] as const) {
        for (const encoded of keyEncodings(k)) assert.ok(!text.includes(encoded), `${where} holds the ${name}`);
      }
    }
    assert.ok(held.length >= 3, `only ${String(held.length)} agent values looked at`);
  });
});
