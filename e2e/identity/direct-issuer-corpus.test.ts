// Claims a directly trusted issuer must not make, against a real sidecar whose trusted issuers are the real
// kube-apiserver's service-account issuer (JWKS from the API server, marked serviceAccounts) and a second,
// directly trusted issuer (an agent platform's, no marks). The second issuer signs tokens that name service
// accounts, carry delegation chains (`act`), claim system: groups, assert an agent kind or dress up as the
// token exchange; the policies would let each of them write. A third issuer, marked `agentKind`, may assign
// kinds. What counts is the database: at the end the table holds only the rows of the real service
// account's token and of the marked issuer's agent, and every forgery was refused at authentication (28P01).
// Before the fix (twelfth session), all 11 forgeries of chains, system: names and groups wrote their row: the
// sidecar read `act` and `groups` (system: ones included) from every issuer and gave any
// `system:serviceaccount:` subject the service-account groups. Before the thirteenth session's fix, the 3
// agent-kind forgeries were all authenticated with the kind they claimed, and 2 wrote (the third was a
// reader whose own policy denied the write).
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { CLAIMS, type AccessPolicySpec } from '@chaperone/api';
import { createTestDatabase } from '../harness/databases.ts';
import { controlPlaneEnv, directPgOptions, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { ALLOW_ALL, READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';
import { createTestIssuer } from '../harness/tokens.ts';

const allowWritesTo = (subjects: AccessPolicySpec['subjects']): AccessPolicySpec => ({ ...ALLOW_ALL, subjects });

test('a directly trusted issuer can neither name service accounts nor assert chains, system: groups or unmarked agent kinds', async (t) => {
  const ns = await createTestNamespace(t);
  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
  await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'agent' } } });
  const tokenFor = async (audiences: string[]) =>
    (
      await core.createNamespacedServiceAccountToken({
        namespace: ns,
        name: 'agent',
        body: { spec: { audiences, expirationSeconds: 600 } },
      })
    ).status?.token ?? '';
  const cp = controlPlaneEnv();
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const bearerFile = join(dir, 'jwks-bearer.token');
  writeFileSync(bearerFile, await tokenFor([cp.issuer]));
  const agents = await createTestIssuer(join(dir, 'agents-jwks.json'), 'https://agents.test.chaperone.dev');
  const kinds = await createTestIssuer(join(dir, 'kinds-jwks.json'), 'https://kinds.test.chaperone.dev');
  const database = await createTestDatabase(t, 'create table ledger (who text not null)');

  const sidecar = await startTestSidecar(t, {
    database,
    policies: {
      'service-accounts-write': allowWritesTo([{ groups: [`system:serviceaccounts:${ns}`] }]),
      'named-accounts-write': allowWritesTo([{ subject: 'system:serviceaccount:kube-system:*' }]),
      'delegates-of-the-parent-write': allowWritesTo([{ actor: 'agent:approved-parent' }]),
      'masters-write': allowWritesTo([{ groups: ['system:masters'] }]),
      'ci-kind-writes': allowWritesTo([{ actorKinds: ['ci'] }]),
      'bob-reads': { ...READ_ONLY, subjects: [{ subject: 'user:bob' }] },
    },
    extraIssuers: [
      {
        issuer: cp.issuer,
        jwksUrl: `${cp.server}/openid/v1/jwks`,
        jwksCaFile: cp.caFile,
        jwksBearerTokenFile: bearerFile,
        serviceAccounts: true,
        audiences: ['chaperone'],
        algorithms: ['RS256'],
      },
      { issuer: agents.issuer, jwksFile: agents.jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] },
      {
        issuer: kinds.issuer,
        jwksFile: kinds.jwksFile,
        agentKind: true,
        audiences: ['chaperone'],
        algorithms: ['RS256'],
      },
    ],
  });

  /** Connects with `token` and inserts `who`: what the server did with it. */
  const attempt = async (token: string, who: string): Promise<'refused at authentication' | 'denied' | 'written'> => {
    const client = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', database, password: token });
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (err) {
      assert.equal((err as { code?: string }).code, '28P01', `${who}: ${(err as Error).message}`);
      return 'refused at authentication';
    }
    try {
      await client.query('insert into ledger values ($1)', [who]);
      return 'written';
    } catch {
      return 'denied';
    } finally {
      await client.end().catch(() => undefined);
    }
  };

  // The controls: the real service account's token writes; so does the kind the marked issuer assigns; the
  // agent platform's plain subject reads only.
  assert.equal(await attempt(await tokenFor(['chaperone']), 'the real service account'), 'written');
  assert.equal(
    await attempt(await kinds.sign({ sub: 'agent:nightly', [CLAIMS.agentKind]: 'ci' }), "a marked issuer's ci agent"),
    'written',
  );
  assert.equal(
    await attempt(await agents.sign({ sub: 'user:bob' }), 'a plain subject of the agent platform'),
    'denied',
  );

  const exchangeLook = {
    [CLAIMS.subjectIssuer]: cp.issuer,
    [CLAIMS.exchange]: { id: 'forged', record: `sha256:${'0'.repeat(64)}` },
  };
  const parent = { sub: 'agent:approved-parent' };
  const forgeries: Record<string, Parameters<typeof agents.sign>[0]> = {
    "the namespace's real service account": { sub: `system:serviceaccount:${ns}:agent` },
    'a service account that does not exist': { sub: `system:serviceaccount:${ns}:ghost` },
    'a kube-system service account (matched by subject alone)': { sub: 'system:serviceaccount:kube-system:default' },
    'the real service account with the cluster as subject issuer': {
      sub: `system:serviceaccount:${ns}:agent`,
      [CLAIMS.subjectIssuer]: cp.issuer,
    },
    'a chain naming the approved parent': { sub: 'user:mallory', act: parent },
    'a chain whose parent names the cluster as its issuer': { sub: 'user:mallory', act: { ...parent, iss: cp.issuer } },
    'a chain dressed as the exchange (subject issuer, exchange link, actor issuers)': {
      sub: 'user:mallory',
      ...exchangeLook,
      act: { ...parent, iss: agents.issuer },
    },
    'the parent deeper in the chain': { sub: 'user:mallory', act: { sub: 'agent:x', act: parent } },
    'the service-account group claimed': { sub: 'user:mallory', groups: [`system:serviceaccounts:${ns}`] },
    'system:masters claimed': { sub: 'user:mallory', groups: ['system:masters'] },
    'a node identity': { sub: 'system:node:worker-1', groups: [`system:serviceaccounts:${ns}`] },
    'an agent kind the policies let write': { sub: 'user:mallory', [CLAIMS.agentKind]: 'ci' },
    'a reader claiming the writing kind': { sub: 'user:bob', [CLAIMS.agentKind]: 'ci' },
    'a kind dressed as the exchange': { sub: 'user:mallory', ...exchangeLook, [CLAIMS.agentKind]: 'ci' },
  };
  const outcomes: Record<string, string> = {};
  for (const [name, claims] of Object.entries(forgeries))
    outcomes[name] = await attempt(await agents.sign(claims), name);
  const through = Object.entries(outcomes).filter(([, o]) => o !== 'refused at authentication');
  assert.deepEqual(
    through,
    [],
    `${String(through.length)} of ${String(Object.keys(forgeries).length)} forgeries got in`,
  );

  // The server's own state: the controls' rows, nothing else.
  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    const rows = (await direct.query<{ who: string }>('select who from ledger order by who')).rows;
    assert.deepEqual(
      rows.map((r) => r.who),
      ["a marked issuer's ci agent", 'the real service account'],
    );
  } finally {
    await direct.end();
  }
  // The trail: each forgery an auth.failure; the only system: identity a session started for is the real one.
  const records = (await sidecar.settledRecords()).map((r) => r.record);
  assert.equal(records.filter((r) => r.type === 'auth.failure').length, Object.keys(forgeries).length);
  const starts = records.filter((r) => r.type === 'session.start').map((r) => r.identity);
  assert.deepEqual(
    starts.filter((i) => i?.subject.startsWith('system:') === true).map((i) => [i?.subject, i?.issuer, i?.groups]),
    [[`system:serviceaccount:${ns}:agent`, cp.issuer, ['system:serviceaccounts', `system:serviceaccounts:${ns}`]]],
  );
});
