// Forged evidence against the real API server, the real operator (admission policies, audit authority) and
// a real sidecar's trail: an editor of the agents' namespace (the built-in `edit` ClusterRole, as the chart
// leaves it) tries to make `kubectl chaperone verify` accept a trail that does not match what happened —
// records edited, deleted, reordered or appended after the end, a Session replaced by one signed with her own
// key, an older head replayed, heads swapped between Sessions, a Session for a pod that never existed, status
// edited against spec, a forged signer certificate, the Session pointed at an evidence store — herself and
// as the pod's service account (which `edit` may impersonate). Every write must be refused, the trail must
// stay as the sidecar wrote it and verify clean. Then the same forgeries where nothing stops the writes (a
// namespace without the admission policies, a cluster admin's): verify must fail, naming the problem.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { GROUP, VERSION, signSignerCertificate, type Session } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { kubectlAs, startTrustFixture } from '../trust/trust-fixture.ts';
import { runCli } from './run-cli.ts';
import { buildTrail, createSigner, createTrail } from './trail-fixture.ts';

const READS = {
  resources: { names: ['orders-db'] },
  rules: [{ name: 'reads', decision: 'allow' as const, match: { sql: { statementKinds: ['select' as const] } } }],
  defaultDecision: 'deny' as const,
};

/** The parts of a Session that are evidence (what no attack may change). */
const evidence = (s: Session) => JSON.stringify({ spec: s.spec, status: s.status });

test('evidence forgery corpus: what a namespace editor tries, and what verify says when nothing stops the writes', async (t) => {
  const fx = await startTrustFixture(t);
  const { ns } = fx;
  await fx.createPolicy(ns, 'reads', READS);
  const pod = await fx.injectedPod(ns, 'agent');
  const serviceAccount = pod.spec?.serviceAccountName ?? 'default';
  const running = await fx.runSidecar(t, pod);
  const env = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    ...running.agentEnv,
    PGPASSWORD: running.agentToken,
  };
  // Two sessions of the pod: the second links to the first.
  for (const sql of ['select 40 + 2', "select 'second' as s"]) {
    const psql = spawnSync('psql', ['-X', '-A', '-t', '-c', sql], { env, encoding: 'utf8', timeout: 30_000 });
    assert.equal(psql.status, 0, psql.stderr);
  }
  const list = async () =>
    (
      (await fx.custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: 'sessions',
      })) as {
        items: Session[];
      }
    ).items.sort((a, b) => Date.parse(a.spec.startTime) - Date.parse(b.spec.startTime));
  const genuine = await poll('both sessions Closed, certified', async () => {
    const items = await list();
    return items.length === 2 &&
      items.every((s) => s.status?.phase === 'Closed' && s.spec.signer?.certificate !== undefined)
      ? items
      : undefined;
  });
  const [a, b] = genuine as [Session, Session];
  const name = (s: Session) => s.metadata.name ?? '';
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const { kubeconfig } = controlPlaneEnv();
  const verify = (namespace: string, ...args: string[]) =>
    runCli([
      'verify',
      '--all',
      '-n',
      namespace,
      '--kubeconfig',
      kubeconfig,
      '--authority-namespace',
      fx.operatorNamespace,
      ...args,
    ]);
  const clean = await verify(ns, '--require-certified');
  assert.equal(clean.code, 0, clean.stdout + clean.stderr);
  const exported = await runCli([
    'evidence',
    'export',
    '-n',
    ns,
    '--kubeconfig',
    kubeconfig,
    '--authority-namespace',
    fx.operatorNamespace,
    '-o',
    join(dir, 'baseline.json'),
  ]);
  assert.equal(exported.code, 0, exported.stderr);

  // The editor's own key and a certificate "authority" of hers.
  const editorKey = await createSigner('mallory-key');
  const editorAuthority = await createSigner('mallory-authority');
  const forgedCertificate = await signSignerCertificate(
    {
      typ: 'chaperone.dev/signer-certificate/v1',
      keyId: editorKey.kid,
      x: String(editorKey.publicJwk.x),
      pod: { namespace: ns, name: 'agent', uid: pod.metadata?.uid ?? '' },
      serviceAccount,
      issuedAt: new Date().toISOString(),
    },
    editorAuthority.privateJwk,
  );
  /** A session of a pod that never existed, signed by the editor's key, as written into `namespace`. */
  const ghostIn = async (namespace: string, certificate?: string) => {
    const [session] = await buildTrail({
      name: 'ghost-0',
      namespace,
      signer: editorKey,
      pod: { name: 'ghost', uid: randomUUID() },
      commands: [{ text: 'select 1' }],
      ...(certificate === undefined ? {} : { certificate }),
    });
    assert.ok(session !== undefined);
    return session;
  };
  const ghost = await ghostIn(ns);
  const [replacement] = await buildTrail({
    name: name(a),
    namespace: ns,
    signer: editorKey,
    pod: { name: 'agent', uid: pod.metadata?.uid ?? '' },
    commands: [{ text: 'select 40 + 2' }],
    certificate: forgedCertificate,
  });
  assert.ok(replacement !== undefined);
  const manifest = (s: Session) => JSON.stringify({ ...s, status: undefined });
  const records = a.spec.records;
  const last = records.at(-1);
  assert.ok(last !== undefined && records.length >= 3);
  const patch = (target: Session, ops: object[], subresource?: string) => [
    'patch',
    'sessions.chaperone.dev',
    name(target),
    '-n',
    ns,
    '--type',
    'json',
    '-p',
    JSON.stringify(ops),
    ...(subresource === undefined ? [] : ['--subresource', subresource]),
  ];
  const attacks: Record<string, { args: string[]; input?: string }> = {
    'edit a record (its time)': {
      args: patch(a, [
        { op: 'replace', path: '/spec/records/1', value: { ...records[1], time: '2020-01-01T00:00:00.000000Z' } },
      ]),
    },
    'delete a record from the middle': { args: patch(a, [{ op: 'remove', path: '/spec/records/1' }]) },
    'reorder two records': {
      args: patch(a, [
        { op: 'replace', path: '/spec/records', value: [records[0], records[2], records[1], ...records.slice(3)] },
      ]),
    },
    'append a record after session.end': {
      args: patch(a, [{ op: 'add', path: '/spec/records/-', value: { ...last, seq: last.seq + 1 } }]),
    },
    'delete the Session': { args: ['delete', 'sessions.chaperone.dev', name(b), '-n', ns, '--wait=false'] },
    'replace the Session with one signed by her own key': {
      args: ['replace', '-f', '-'],
      input: manifest({ ...replacement, metadata: a.metadata }),
    },
    'create a Session for a pod that never existed': { args: ['create', '-f', '-'], input: manifest(ghost) },
    'replay an older head (cut the records back to seq 2)': {
      args: patch(a, [
        { op: 'replace', path: '/spec/records', value: records.slice(0, 2) },
        { op: 'replace', path: '/spec/head/seq', value: 2 },
        { op: 'replace', path: '/spec/head/hash', value: records[1]?.hash },
      ]),
    },
    'swap the heads of the two Sessions': {
      args: patch(a, [{ op: 'replace', path: '/spec/head', value: b.spec.head }]),
    },
    'edit status against spec (Active, counters zeroed)': {
      args: patch(
        a,
        [
          { op: 'replace', path: '/status/phase', value: 'Active' },
          {
            op: 'replace',
            path: '/status/counters',
            value: { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 },
          },
        ],
        'status',
      ),
    },
    'forge the signer certification': {
      args: patch(a, [
        { op: 'replace', path: '/spec/signer', value: { ...a.spec.signer, certificate: forgedCertificate } },
      ]),
    },
    'point the Session at an evidence store elsewhere': {
      args: patch(a, [
        { op: 'add', path: '/spec/store', value: { type: 'postgres', location: 'evil.example:5432/evidence' } },
        { op: 'replace', path: '/spec/records', value: [] },
      ]),
    },
  };
  const succeeded: string[] = [];
  for (const [attack, { args, input }] of Object.entries(attacks)) {
    await t.test(`the editor cannot ${attack}, herself or as the pod's service account`, async () => {
      const herself = await kubectlAs(fx.editor, args, input);
      const asSidecar = await kubectlAs(
        fx.editor,
        [...args, '--as', `system:serviceaccount:${ns}:${serviceAccount}`],
        input,
      );
      if (herself.code === 0) succeeded.push(`${attack} (herself)`);
      if (asSidecar.code === 0) succeeded.push(`${attack} (as ${serviceAccount})`);
      assert.notEqual(herself.code, 0, herself.stdout);
      assert.match(herself.stderr, /forbidden/i);
      assert.notEqual(asSidecar.code, 0, asSidecar.stdout);
      // RBAC (the sidecar's Role has no delete or update), the CRD's own rules (append-only records, final
      // phases, an immutable store), or the Session writers policy (no pod binding), whichever comes first.
      assert.match(asSidecar.stderr, /forbidden|not bound to a pod|is invalid/i);
    });
  }

  await t.test('the trail is as the sidecar wrote it and verifies clean, also against the earlier export', async () => {
    assert.deepEqual(succeeded, [], 'no forgery was written');
    const now = await list();
    assert.deepEqual(now.map(evidence), genuine.map(evidence));
    const after = await verify(ns, '--require-certified', '--baseline', join(dir, 'baseline.json'));
    assert.equal(after.code, 0, after.stdout + after.stderr);
  });

  // Where the admission policies do not reach (a cluster admin can remove them), each forgery is written;
  // verify must then name it. Each in a namespace of its own, so no forgery hides behind another's report.
  const admin = kubeConfig();
  const copy = (s: Session, namespace: string, change: Partial<Session['spec']> = {}): Session => ({
    apiVersion: s.apiVersion,
    kind: s.kind,
    metadata: { name: name(s), namespace },
    // The pod's namespace stays the agents' (as for Sessions kept in an audit namespace): the certificate holds.
    spec: { ...s.spec, pod: { ...s.spec.pod, namespace: ns }, ...change },
    ...(s.status === undefined ? {} : { status: s.status }),
  });
  const forgeries: Record<
    string,
    {
      sessions: (namespace: string) => Session[] | Promise<Session[]>;
      args?: string[];
      expect: RegExp;
      before?: string;
    }
  > = {
    'a genuine Session replayed in another namespace': {
      sessions: (n) => [copy(a, n)],
      expect: new RegExp(`head-mismatch\\s+.*signed head belongs to ${ns}/${name(a)}`),
    },
    "a Session carrying the other Session's signed head": {
      sessions: (n) => [copy(a, n, b.spec.head === undefined ? {} : { head: b.spec.head })],
      expect: new RegExp(`head-mismatch\\s+.*signed head belongs to ${ns}/${name(b)} of session ${b.spec.sessionId}`),
    },
    'a certificate signed by an authority of her own': {
      sessions: (n) => [
        copy(a, n, a.spec.signer === undefined ? {} : { signer: { ...a.spec.signer, certificate: forgedCertificate } }),
      ],
      expect: /certificate-invalid\s+.*does not verify with the authority keys/,
    },
    'a Session of a pod that never existed, signed by her key (certificates required, the default)': {
      sessions: async (n) => [await ghostIn(n)],
      expect: /ERROR uncertified-key\s+.*ghost-0.*self-asserted/,
    },
    'a Session of a pod that never existed, her key certified by her own authority': {
      sessions: async (n) => [await ghostIn(n, forgedCertificate)],
      expect: /certificate-invalid\s+.*ghost-0.*does not verify with the authority keys/,
    },
    'a Session pointed at an evidence store that holds none of its records': {
      sessions: (n) => [
        copy(a, n, { records: [], store: { type: 'postgres', location: 'evil.example:5432/evidence' } }),
      ],
      expect:
        /keep their records in an evidence store \(postgres evil\.example:5432\/evidence\): pass --evidence-store URL/,
    },
  };
  for (const [forgery, c] of Object.entries(forgeries)) {
    await t.test(`verify names it: ${forgery}`, async (t2) => {
      const namespace = await createTestNamespace(t2);
      await createTrail(admin, await c.sessions(namespace));
      const r = await verify(namespace, ...(c.args ?? []));
      assert.equal(r.code, 1, `verify accepted it: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout + r.stderr, c.expect);
    });
  }

  await t.test(
    'with --allow-uncertified a self-signed Session of a made-up pod is a warning, as documented',
    async (t2) => {
      // docs/audit.md: uncertified keys are errors unless the auditor accepts them (sidecars that started
      // while the operator was unreachable write such parts); then they are named as warnings.
      const namespace = await createTestNamespace(t2);
      await createTrail(admin, [await ghostIn(namespace)]);
      const r = await verify(namespace, '--allow-uncertified');
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /WARN\s+uncertified-key\s+.*ghost-0/);
    },
  );
});
