// N-1 and N-2 of issue 17: the upstream credential and the evidence out of the editors' reach. The
// credential lives in a credential namespace the agents' editors have no rights in, and the operator
// delivers it to attested sidecars only; Sessions are kept in an audit namespace the editors (and the
// sidecars' service accounts) have no rights in, written there by the operator for attested sidecars.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { CREDENTIAL_DELIVERY_PATH, GROUP, SESSION_PROXY_PATH, VERSION, type Session } from '@chaperone/api';
import { controlPlaneEnv, postgresEnv } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { poll } from '../harness/poll.ts';
import { runCli } from '../audit/run-cli.ts';
import { buildTrail, createSigner } from '../audit/trail-fixture.ts';
import { agentPgOptions, api, kubectlAs, postToOperator, refusal, startTrustFixture } from './trust-fixture.ts';

test("credentials and evidence out of the editors' reach: delivery from a credential namespace, Sessions in an audit namespace", async (t) => {
  const fx = await startTrustFixture(t, { auditNamespace: true, credentialNamespace: true });
  const { ns, core, custom } = fx;
  const audit = fx.auditNamespace;
  const credentials = fx.credentialNamespace;
  assert.ok(audit !== undefined && credentials !== undefined);
  const pgEnv = postgresEnv();
  const password = pgEnv.password;
  // This namespace's only target is the delivered one: the fixture's local credential goes.
  await custom.deleteNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    name: 'orders-db',
  });
  await core.deleteNamespacedSecret({ namespace: ns, name: 'orders-db-credentials' });

  // The platform team's credential, in the credential namespace, allowed for the agents' namespace only.
  await core.createNamespacedSecret({
    namespace: credentials,
    body: {
      metadata: { name: 'vault-db', annotations: { 'chaperone.dev/allowed-namespaces': ns } },
      stringData: { username: pgEnv.user, password },
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
      metadata: { name: 'vault-db' },
      spec: {
        type: 'postgres',
        endpoint: { host: 'localhost', port: pgEnv.port, database: pgEnv.database },
        listenPort: 15432,
        tls: { mode: 'verify-full', caSecretRef: { name: 'orders-db-ca', key: 'ca.crt' } },
        credentialSecretRef: {
          name: 'vault-db',
          namespace: credentials,
          usernameKey: 'username',
          passwordKey: 'password',
        },
      },
    },
  });
  await fx.createPolicy(ns, 'reads', {
    resources: { names: ['vault-db'] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    defaultDecision: 'deny',
  });
  const pod = await fx.injectedPod(ns, 'agent', { resources: 'vault-db' });
  const running = await fx.runSidecar(t, pod);
  const webhooks = fx.operator.webhooks;
  assert.ok(webhooks);
  const ca = webhooks.certificates.current().caBundlePem;

  await t.test(
    "N-1: the credential is in no Secret of the agents' namespace, and the editor cannot read it",
    async () => {
      const denied = await kubectlAs(fx.editor, ['get', 'secret', 'vault-db', '-n', credentials, '-o', 'yaml']);
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /forbidden/);
      const secrets = await core.listNamespacedSecret({ namespace: ns });
      for (const s of secrets.items) {
        for (const value of Object.values(s.data ?? {})) {
          assert.notEqual(
            Buffer.from(value, 'base64').toString('utf8'),
            password,
            `Secret ${s.metadata?.name ?? ''} holds the password`,
          );
        }
      }
      // The pod mounts no Secret for it: the sidecar's credentials volume is memory it fills itself.
      const volume = pod.spec?.volumes?.find((v) => v.name === 'chaperone-credentials');
      assert.deepEqual(JSON.parse(JSON.stringify(volume?.emptyDir ?? {})), { medium: 'Memory', sizeLimit: '1Mi' });
      assert.ok(
        !(pod.spec?.volumes ?? []).some(
          (v) => v.secret !== undefined || v.projected?.sources?.some((p) => p.secret?.name === 'vault-db'),
        ),
      );
    },
  );

  await t.test('N-1: the attested sidecar receives it and the agent works through the sidecar', async () => {
    const options = agentPgOptions(running);
    const user = await poll('the policy and the delivered credential', async () => {
      const c = new pg.Client(options);
      try {
        await c.connect();
        const r = await c.query<{ current_user: string }>('select current_user');
        return r.rows[0]?.current_user;
      } catch {
        return undefined;
      } finally {
        await c.end().catch(() => undefined);
      }
    });
    assert.equal(user, pgEnv.user, 'the sidecar logged in upstream with the delivered credential');
    assert.match(readFileSync(running.sidecar.logFile, 'utf8'), /credential delivered by the operator/);
    assert.match(fx.operatorLogs.join(''), /"msg":"credential delivered"/);
    assert.ok(!fx.operatorLogs.join('').includes(password), 'the operator never logs the credential');
  });

  await t.test(
    'N-1: nobody else gets it: an unbound token, an impostor pod, another resource, a disallowed namespace',
    async (t2) => {
      const url = webhooks.server.url(CREDENTIAL_DELIVERY_PATH);
      const unbound = (await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns])).stdout.trim();
      const r1 = await postToOperator(url, ca, unbound, { resource: 'vault-db' });
      assert.equal(r1.status, 403);
      assert.match(String(r1.body.message), /not a service-account token bound to a pod/);
      // The genuine sidecar asking for a resource its sealed configuration does not name.
      const r2 = await postToOperator(url, ca, running.sidecarToken, { resource: 'orders-db' });
      assert.equal(r2.status, 403);
      assert.match(String(r2.body.message), /does not serve orders-db/);
      const r2b = await postToOperator(url, ca, running.sidecarToken, { resource: 'Vault_DB; drop' });
      assert.equal(r2b.status, 400);
      // An impostor where no webhook runs, with the pod-bound token its node would give it.
      const plain = await fx.namespace(t2);
      await api(fx.editor, k8s.CoreV1Api).createNamespacedPod({
        namespace: plain,
        body: {
          metadata: { name: 'impostor' },
          spec: {
            nodeName: fx.nodeName,
            initContainers: [
              { name: 'chaperone-sidecar', image: 'attacker.example/sidecar:1', restartPolicy: 'Always' },
            ],
            containers: [{ name: 'agent', image: 'busybox' }],
          },
        },
      });
      const impostor = await core.readNamespacedPod({ namespace: plain, name: 'impostor' });
      const r3 = await postToOperator(url, ca, await kubeletToken(impostor, undefined), { resource: 'vault-db' });
      assert.equal(r3.status, 403);
      assert.match(String(r3.body.message), /does not run the Chaperone sidecar as the operator sealed it/);
      // The allow-list on the Secret: withdrawn, delivery stops.
      await core.patchNamespacedSecret(
        {
          namespace: credentials,
          name: 'vault-db',
          body: { metadata: { annotations: { 'chaperone.dev/allowed-namespaces': 'someone-else' } } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
      const r4 = await postToOperator(url, ca, running.sidecarToken, { resource: 'vault-db' });
      assert.equal(r4.status, 403);
      assert.match(String(r4.body.message), /does not allow namespace/);
      await poll('the ProtectedResource to report SecretNotAllowed', async () => {
        const r = (await custom.getNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: 'protectedresources',
          name: 'vault-db',
        })) as {
          status?: { conditions?: { type: string; reason: string }[] };
        };
        return r.status?.conditions?.some((c) => c.reason === 'SecretNotAllowed') === true ? true : undefined;
      });
      await core.patchNamespacedSecret(
        {
          namespace: credentials,
          name: 'vault-db',
          body: { metadata: { annotations: { 'chaperone.dev/allowed-namespaces': ns } } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    },
  );

  await t.test('N-2: Sessions are in the audit namespace, certified, and verify', async () => {
    const sessions = await poll('the Session of the agent query in the audit namespace', async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: audit,
        plural: 'sessions',
      })) as {
        items: Session[];
      };
      return list.items.some((s) => s.status?.phase === 'Closed') ? list.items : undefined;
    });
    for (const s of sessions) assert.deepEqual(s.spec.pod, { name: 'agent', namespace: ns, uid: pod.metadata?.uid });
    const local = (await custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: 'sessions',
    })) as { items: Session[] };
    assert.equal(local.items.length, 0, "nothing is kept in the agents' namespace");
    const verify = await runCli([
      'verify',
      '--all',
      '-n',
      audit,
      '--kubeconfig',
      controlPlaneEnv().kubeconfig,
      '--authority-namespace',
      fx.operatorNamespace,
      '--require-certified',
    ]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  });

  await t.test(
    "N-2: the editor, as herself or as the agent's service account, can neither read nor write them",
    async () => {
      for (const extra of [[], ['--as', `system:serviceaccount:${ns}:default`]]) {
        const list = await kubectlAs(fx.editor, ['get', 'sessions.chaperone.dev', '-n', audit, ...extra]);
        assert.notEqual(list.code, 0, `list ${extra.join(' ')}`);
        assert.match(list.stderr, /forbidden/);
      }
      const [trail] = await buildTrail({
        name: 'forged',
        namespace: audit,
        signer: await createSigner(),
        pod: { name: 'agent', uid: pod.metadata?.uid ?? '' },
      });
      assert.ok(trail);
      const { status: _s, ...body } = trail;
      const create = await refusal(
        api(fx.editor, k8s.CustomObjectsApi).createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: audit,
          plural: 'sessions',
          body,
        }),
      );
      assert.equal(create.code, 403);
      // The sidecar's own account has no right on Sessions anywhere (the operator writes them).
      const sidecarKc = new k8s.KubeConfig();
      sidecarKc.loadFromOptions({
        clusters: [{ name: 'test', server: controlPlaneEnv().server, caFile: controlPlaneEnv().caFile }],
        users: [{ name: 'sidecar', token: running.sidecarToken }],
        contexts: [{ name: 'test', cluster: 'test', user: 'sidecar' }],
        currentContext: 'test',
      });
      const sidecarCustom = sidecarKc.makeApiClient(k8s.CustomObjectsApi);
      for (const namespace of [audit, ns]) {
        const read = await refusal(
          sidecarCustom.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'sessions' }),
        );
        assert.equal(read.code, 403, namespace);
      }
    },
  );

  await t.test("N-2: through the operator a sidecar touches only its own pod's Sessions", async () => {
    const url = webhooks.server.url(SESSION_PROXY_PATH);
    const [other] = await buildTrail({
      name: 'other-pod',
      namespace: audit,
      signer: await createSigner(),
      pod: { name: 'worker', uid: 'x' },
    });
    assert.ok(other);
    other.spec.pod = { name: 'worker', namespace: ns, uid: 'x' };
    const r1 = await postToOperator(url, ca, running.sidecarToken, { op: 'create', session: other });
    assert.equal(r1.status, 403);
    assert.match(String(r1.body.message), /must name the calling pod/);
    const theirs = (await custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: audit,
      plural: 'sessions',
    })) as { items: Session[] };
    const name = theirs.items[0]?.metadata.name ?? '';
    const unbound = (await kubectlAs(fx.editor, ['create', 'token', 'default', '-n', ns])).stdout.trim();
    const r2 = await postToOperator(url, ca, unbound, {
      op: 'status',
      name,
      status: { phase: 'Active', counters: { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 } },
    });
    assert.equal(r2.status, 403);
  });
});
