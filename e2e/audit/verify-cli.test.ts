// kubectl chaperone sessions / show / verify / evidence against Sessions stored in the real API server,
// the CLI run as a child process with a kubeconfig as kubectl would use it. Deletions the CRD allows
// (a continuation object, a whole session) are found by verify; the evidence export verifies offline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createTestNamespace, kubeConfig, kubectl } from '../harness/kube.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { buildTrail, createSigner, createTrail, lastHash } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';

test('sessions, show, verify and evidence against the API server', async (t) => {
  const ns = await createTestNamespace(t);
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const kubeconfig = controlPlaneEnv().kubeconfig;
  const kc = kubeConfig();
  const signer = await createSigner();
  const now = Date.now();
  const first = await buildTrail({
    name: 'report-1',
    namespace: ns,
    signer,
    start: new Date(now - 3_600_000),
    commands: [{ text: 'select * from orders' }],
  });
  const second = await buildTrail({
    name: 'report-2',
    namespace: ns,
    signer,
    start: new Date(now - 1_800_000),
    prevHash: lastHash(first),
    recordsPerPart: 3,
    commands: [{ text: 'select 1' }, { text: 'drop table orders', decision: 'deny' }, { text: 'select 2' }],
  });
  const other = await buildTrail({
    name: 'cleanup-1',
    namespace: ns,
    signer,
    start: new Date(now - 600_000),
    pod: { name: 'cleanup-job-abc12' },
    resource: 'billing-db',
    identity: { subject: 'system:serviceaccount:ci:cleanup', issuer: 'https://kubernetes.default.svc' },
  });
  for (const s of [first, second, other]) await createTrail(kc, s);

  const cli = (...args: string[]) => runCli(args, { KUBECONFIG: kubeconfig });

  await t.test('sessions lists one row per session and filters', async () => {
    const all = await cli('sessions', '-n', ns);
    assert.equal(all.code, 0, all.stderr);
    const lines = all.stdout.trim().split('\n');
    assert.match(
      lines[0] ?? '',
      /^NAME\s+IDENTITY\s+RESOURCE\s+POD\s+PARTS\s+RECORDS\s+COMMANDS\s+DENIED\s+PHASE\s+AGE$/,
    );
    assert.deepEqual(
      lines.slice(1).map((l) => l.split(/\s+/)[0]),
      ['report-1', 'report-2', 'cleanup-1'],
    );
    assert.match(
      all.stdout,
      /report-2\s+chaperone:agent:report-writer\s+orders-db\s+nightly-report-7x2kq\s+3\s+8\s+3\s+1\s+Closed/,
    );
    const denied = await cli('sessions', '-n', ns, '--decision', 'deny');
    assert.deepEqual(
      denied.stdout
        .trim()
        .split('\n')
        .slice(1)
        .map((l) => l.split(/\s+/)[0]),
      ['report-2'],
    );
    const byActor = await cli('sessions', '-n', ns, '--actor', 'system:serviceaccount:ci:*');
    assert.equal(byActor.stdout.trim().split('\n').length, 4, 'the chain actor and the direct subject both match');
    const byIdentity = await cli('sessions', '-n', ns, '--identity', 'system:serviceaccount:ci:cleanup', '-o', 'json');
    assert.deepEqual(
      JSON.parse(byIdentity.stdout).items.map((s: { metadata: { name: string } }) => s.metadata.name),
      ['cleanup-1'],
    );
    const byResource = await cli('sessions', '-n', ns, '--resource', 'billing-db', '--since', '15m');
    assert.match(byResource.stdout, /cleanup-1/);
    const none = await cli('sessions', '-n', ns, '--until', new Date(now - 7_200_000).toISOString());
    assert.match(none.stderr, /No sessions found/);
    const everywhere = await cli('sessions', '-A', '--resource', 'billing-db');
    assert.match(everywhere.stdout, new RegExp(`^NAMESPACE\\s+NAME[\\s\\S]*${ns}\\s+cleanup-1`, 'm'));
  });

  await t.test('show renders identity, chain and the record timeline', async () => {
    const shown = await cli('sessions', 'show', 'report-2-1', '-n', ns);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /Identity:\s+chaperone:agent:report-writer \(ai-agent\)/);
    assert.match(shown.stdout, /1\. system:serviceaccount:ci:nightly-report \(ci\)/);
    assert.match(shown.stdout, /Parts:\s+report-2 \(3 records\), report-2-1 \(3 records\), report-2-2 \(2 records\)/);
    assert.match(
      shown.stdout,
      /\s4 {2}command\.decision\s+#2 sql "drop table orders" {2}=> DENY by rule r1 of default\/orders/,
    );
    assert.match(shown.stdout, /Signed by:\s+\S+ \(self-asserted key\)/);
    // `kubectl chaperone show` is the same command.
    const alias = await cli('show', 'report-2-1', '-n', ns);
    assert.equal(alias.code, 0, alias.stderr);
    assert.equal(alias.stdout, shown.stdout);
  });

  await t.test('verify: an untouched trail is clean (exit 0)', async () => {
    const one = await cli('verify', 'report-2', '-n', ns);
    assert.equal(one.code, 0, one.stdout + one.stderr);
    assert.match(one.stdout, /follows .*\/report-1/);
    const all = await cli('verify', '--all', '-n', ns);
    assert.equal(all.code, 0, all.stdout);
  });

  const evidenceFile = join(dir, 'evidence.json');
  await t.test('evidence export, then verify offline without a cluster', async () => {
    const exported = await cli('evidence', 'export', '-n', ns, '--from', '45m', '-o', evidenceFile);
    assert.equal(exported.code, 0, exported.stdout + exported.stderr);
    assert.match(exported.stdout, /2 session\(s\), 4 object\(s\), 12 record\(s\), 1 key\(s\); verified/);
    const bundle = JSON.parse(readFileSync(evidenceFile, 'utf8'));
    assert.deepEqual(bundle.anchors.length, 1, 'report-2 links to report-1, outside the window');
    const offline = await runCli(['evidence', 'verify', evidenceFile], { KUBECONFIG: '/nonexistent' });
    assert.equal(offline.code, 0, offline.stdout + offline.stderr);
  });

  await t.test('deleting a continuation object or a whole session fails verification (exit 1)', async () => {
    await kubectl(['delete', 'session', 'report-2-2', '-n', ns]);
    const cut = await cli('verify', 'report-2', '-n', ns);
    assert.equal(cut.code, 1);
    assert.match(
      cut.stdout,
      /ERROR continuation-deleted\s+.*\/report-2-1, part 1, seq 6: .* was continued by part 2, which no longer exists/,
    );

    await kubectl(['delete', 'session', 'report-1', '-n', ns]);
    const gone = await cli('verify', '--all', '-n', ns, '-o', 'json');
    assert.equal(gone.code, 1);
    const kinds = JSON.parse(gone.stdout).problems.map(
      (p: { kind: string; object: string }) => `${p.kind} ${p.object}`,
    );
    assert.ok(kinds.includes(`session-missing ${ns}/report-2`), kinds.join('\n'));

    // Against the earlier export, both removals are named even where the chain alone could not tell.
    const baseline = await cli('verify', '--all', '-n', ns, '--baseline', evidenceFile);
    assert.equal(baseline.code, 1);
    assert.match(baseline.stdout, /baseline-mismatch\s+.*\/report-2-2, seq 8: .* was in the baseline/);
  });
});
