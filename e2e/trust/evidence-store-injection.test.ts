// The evidence store wired by the operator (docs/evidence-store.md, "Injected pods"), on the real API
// server and PostgreSQL: with the installation's store configured, the injector renders audit.evidenceStore
// into the sealed sidecar configuration (location and writer role, no password), gives the sidecar a
// memory volume of its own for the store's credential, and the operator delivers the writer's password and
// the server's CA from the credential namespace to the attested sidecar only. The agent's statements end
// up as records in the store, the Session object keeps the signed head, and nobody else gets the password.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { parse } from 'yaml';
import { CREDENTIAL_DELIVERY_PATH, GROUP, VERSION, type Session } from '@chaperone/api';
import { postgresEnv, testDir } from '../harness/env.ts';
import { materialiseSidecar } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import { createEvidenceDatabase } from '../audit/evidence-store-fixture.ts';
import { agentPgOptions, kubectlAs, startTrustFixture } from './trust-fixture.ts';

function post(url: string, ca: string, token: string, body: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'POST', ca, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

test('evidence store in injected pods: rendered from the installation, the writer password delivered to the attested sidecar only', async (t) => {
  const db = createEvidenceDatabase(t);
  const pgEnv = postgresEnv();
  const fx = await startTrustFixture(t, {
    credentialNamespace: true,
    evidenceStore: {
      host: 'localhost',
      port: pgEnv.port,
      database: db.database,
      writerUser: db.writer.user,
      passwordSecret: 'evidence-writer',
      caSecret: 'evidence-ca',
      batchRecords: 64,
    },
  });
  const { ns, core, custom } = fx;
  const credentials = fx.credentialNamespace;
  assert.ok(credentials !== undefined);
  await core.createNamespacedSecret({
    namespace: credentials,
    body: { metadata: { name: 'evidence-writer' }, stringData: { password: db.writer.password } },
  });
  await core.createNamespacedSecret({
    namespace: credentials,
    body: { metadata: { name: 'evidence-ca' }, stringData: { 'ca.crt': readFileSync(pgEnv.caFile, 'utf8') } },
  });
  await fx.createPolicy(ns, 'reads', {
    resources: { names: ['orders-db'] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    defaultDecision: 'deny',
  });

  const pod = await fx.injectedPod(ns, 'agent');
  const webhooks = fx.operator.webhooks;
  assert.ok(webhooks);
  const ca = webhooks.certificates.current().caBundlePem;

  await t.test('the injector renders the store, never its password', () => {
    const config = parse(pod.metadata?.annotations?.['chaperone.dev/sidecar-config'] ?? '') as {
      audit: { evidenceStore?: unknown };
      credentials?: { resources: string[]; evidenceStore?: { dir: string } };
    };
    assert.deepEqual(config.audit.evidenceStore, {
      postgres: {
        host: 'localhost',
        port: pgEnv.port,
        database: db.database,
        user: db.writer.user,
        passwordFile: '/etc/chaperone/evidence/password',
        caFile: '/etc/chaperone/evidence/ca.crt',
      },
      batchRecords: 64,
    });
    assert.deepEqual(config.credentials?.evidenceStore, { dir: '/etc/chaperone/evidence' });
    assert.deepEqual(config.credentials.resources, [], 'the resource credential stays a mounted Secret');
    assert.ok(!JSON.stringify(pod).includes(db.writer.password), 'the password is nowhere in the pod');
    const volume = pod.spec?.volumes?.find((v) => v.name === 'chaperone-evidence-credentials');
    assert.deepEqual(JSON.parse(JSON.stringify(volume?.emptyDir ?? {})), { medium: 'Memory', sizeLimit: '1Mi' });
    const mounts = (c: { volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[] }) =>
      (c.volumeMounts ?? []).filter((m) => m.name === 'chaperone-evidence-credentials');
    const sidecar = pod.spec?.initContainers?.find((c) => c.name === 'chaperone-sidecar');
    assert.deepEqual(
      mounts(sidecar ?? {}).map((m) => m.mountPath),
      ['/etc/chaperone/evidence'],
    );
    for (const c of pod.spec?.containers ?? []) assert.deepEqual(mounts(c), [], `${c.name} has no store credential`);
  });

  const running = await fx.runSidecar(t, pod);

  await t.test("the agent's statements land in the store, the Session keeps the signed head", async () => {
    const client = new pg.Client(agentPgOptions(running));
    await poll('the policy and the sidecar', async () => {
      try {
        await client.connect();
        return true;
      } catch {
        return undefined;
      }
    });
    for (let i = 0; i < 40; i++) await client.query(`select ${String(i)} as n`);
    await client.end();
    const session = await poll('a Closed Session kept in the store', async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
      })) as { items: Session[] };
      return list.items.find((s) => s.status?.phase === 'Closed' && s.spec.store !== undefined);
    });
    assert.deepEqual(session.spec.store, { type: 'postgres', location: db.location });
    assert.deepEqual(session.spec.records, []);
    const auditor = await db.connect(db.auditor);
    const { rows } = await auditor.query<{ seq: string; type: string }>(
      'select seq, type from chaperone.audit_records where session_id = $1 order by seq',
      [session.spec.sessionId],
    );
    assert.equal(rows.length, session.spec.head?.seq, 'every record up to the signed head is in the store');
    assert.equal(rows.filter((r) => r.type === 'command.decision').length, 40);
    const sidecarLog = readFileSync(running.sidecar.logFile, 'utf8');
    assert.match(sidecarLog, /evidence store credential delivered by the operator/);
    assert.ok(!sidecarLog.includes(db.writer.password), 'the sidecar never logs the password');
    const operatorLog = fx.operatorLogs.join('');
    assert.match(operatorLog, /"msg":"credential delivered".*"evidenceStore":"localhost:/);
    assert.ok(!operatorLog.includes(db.writer.password), 'the operator never logs the password');
  });

  await t.test('nobody else gets the password: an unbound token, the editor, a sidecar without the store', async () => {
    const url = webhooks.server.url(CREDENTIAL_DELIVERY_PATH);
    const unbound = (await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns])).stdout.trim();
    const refused = await post(url, ca, unbound, { evidenceStore: true });
    assert.equal(refused.status, 403);
    assert.ok(!refused.text.includes(Buffer.from(db.writer.password).toString('base64')));
    const denied = await kubectlAs(fx.editor, ['get', 'secret', 'evidence-writer', '-n', credentials, '-o', 'yaml']);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /forbidden/);
    // A pod whose resource keeps its records in Session objects: its sealed config has no store, so its
    // attested sidecar is refused the store's credential.
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'protectedresources',
        name: 'orders-db',
        body: { spec: { audit: { records: 'SessionObjects' } } },
      },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    const plain = await poll('a pod injected without the store', async () => {
      const p = await fx.injectedPod(ns, `plain-${String(Date.now())}`);
      const config = p.metadata?.annotations?.['chaperone.dev/sidecar-config'] ?? '';
      return config.includes('evidenceStore') ? undefined : p;
    });
    // Its sidecar's pod-bound token, as the kubelet would mount it (not started: it would take the same port).
    const root = join(testDir(t), 'plain-pod');
    await materialiseSidecar(core, plain, root);
    const plainToken = readFileSync(join(root, '/var/run/secrets/kubernetes.io/serviceaccount/token'), 'utf8');
    const answer = await post(url, ca, plainToken, { evidenceStore: true });
    assert.equal(answer.status, 403);
    assert.match(answer.text, /does not keep its records in the evidence store/);
    // The genuine sidecar still gets it (the answer carries the password, base64).
    const genuine = await post(url, ca, running.sidecarToken, { evidenceStore: true });
    assert.equal(genuine.status, 200);
    assert.equal(
      Buffer.from((JSON.parse(genuine.text) as { password: string }).password, 'base64').toString(),
      db.writer.password,
    );
  });
});
