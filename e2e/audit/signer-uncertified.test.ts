// When the operator's certification endpoint cannot be reached, the sidecar does not hold up statements: it
// starts after `waitSeconds`, writes Sessions with its self-asserted key (which verify reports), says so in
// its log, and keeps asking in the background.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { freePort } from '../harness/postgres.ts';
import { listSessions, startAuditSidecar, waitFor } from './durability-helpers.ts';
import { runCli } from './run-cli.ts';
import { createSigner } from './trail-fixture.ts';

test('an unreachable certification endpoint: the sidecar serves, writes uncertified Sessions and keeps asking', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const closedPort = await freePort();
  const sidecar = await startAuditSidecar(t, {
    kubeconfig,
    namespace,
    audit: {
      certification: {
        url: `https://127.0.0.1:${String(closedPort)}/audit/v1/certify`,
        tokenFile: '/dev/null',
        waitSeconds: 0,
      },
    },
  });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' }, { expiresIn: 3600 });
  const r = spawnSync('psql', ['-X', '-A', '-t', '-c', 'select 1'], { env: sidecar.libpqEnv(token), encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);

  const [session] = await waitFor('a closed Session', async () => {
    const list = await listSessions(kubeconfig, namespace);
    return list.length === 1 && list[0]?.status?.phase === 'Closed' ? list : undefined;
  });
  assert.ok(session?.spec.signer !== undefined);
  assert.equal(session.spec.signer.certificate, undefined, 'no certificate was issued');
  const log = readFileSync(sidecar.logFile, 'utf8');
  assert.match(log, /no signer certificate yet/);
  assert.match(log, /signer certification failed; retrying/);

  // An auditor with the authority's key sees a self-asserted key: an error by default (and with
  // --require-certified); accepted as a warning only when the auditor says --allow-uncertified.
  const authority = await createSigner();
  const keys = join(testDir(t), 'authority.jwks.json');
  writeFileSync(keys, JSON.stringify({ keys: [authority.publicJwk] }));
  const verify = (...flags: string[]) =>
    runCli(['verify', '--all', '-n', namespace, '--authority-keys', keys, ...flags], { KUBECONFIG: kubeconfig });
  for (const flags of [[], ['--require-certified']]) {
    const strict = await verify(...flags);
    assert.equal(strict.code, 1, strict.stdout + strict.stderr);
    assert.match(strict.stdout, /ERROR uncertified-key/);
  }
  const accepted = await verify('--allow-uncertified');
  assert.equal(accepted.code, 0, accepted.stdout + accepted.stderr);
  assert.match(accepted.stdout, /WARN\s+uncertified-key/);
  assert.equal((await verify('--allow-uncertified', '--require-certified')).code, 2, 'contradicting flags');
});
