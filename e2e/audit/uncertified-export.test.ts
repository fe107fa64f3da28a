// verify, evidence export and evidence verify say the same about uncertified signer keys, against Sessions
// in the real API server: a part signed by a key the operator never certified for its pod fails each of
// them by default (exit 1, naming the key's thumbprint and the part), each accepts it with
// --allow-uncertified, and a certified trail passes all three. A key certified on a later part of the same
// pod counts for its earlier, certificate-less parts (offline too, when the export's window left the
// certified part out); a certified part that merely links back over a part signed by another key does not
// vouch for it, nor does a certificate for the same key id but another key (docs/audit.md, "Uncertified
// keys").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { calculateJwkThumbprint } from 'jose';
import { SIGNER_CERTIFICATE_TYPE, signSignerCertificate } from '@chaperone/api';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { buildTrail, createSigner, createTrail, lastHash, type TestSigner } from './trail-fixture.ts';
import { runCli, type CliResult } from './run-cli.ts';

test('uncertified signer keys: verify, evidence export and evidence verify fail closed together', async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const { kubeconfig } = controlPlaneEnv();
  const kc = kubeConfig();
  const authority = await createSigner('authority-1');
  const authorityKeys = join(dir, 'authority.jwks.json');
  await writeFile(authorityKeys, JSON.stringify({ keys: [authority.publicJwk] }));
  const certify = (key: TestSigner, namespace: string, pod: string) =>
    signSignerCertificate(
      {
        typ: SIGNER_CERTIFICATE_TYPE,
        keyId: key.kid,
        x: key.publicJwk.x ?? '',
        pod: { namespace, name: pod, uid: `uid-${pod}` },
        serviceAccount: 'default',
        issuedAt: new Date().toISOString(),
      },
      authority.privateJwk,
    );
  const now = Date.now();
  const hoursAgo = (h: number) => new Date(now - h * 3_600_000);

  // Pod report-a: one session signed by a key nobody certified.
  const uncertifiedNs = await createTestNamespace(t);
  const uncertified = await createSigner();
  await createTrail(
    kc,
    await buildTrail({ name: 'report-a-1', namespace: uncertifiedNs, signer: uncertified, pod: { name: 'report-a' } }),
  );
  // Pod report-b: certified.
  const certifiedNs = await createTestNamespace(t);
  const certified = await createSigner();
  await createTrail(
    kc,
    await buildTrail({
      name: 'report-b-1',
      namespace: certifiedNs,
      signer: certified,
      pod: { name: 'report-b' },
      certificate: await certify(certified, certifiedNs, 'report-b'),
    }),
  );
  // Pod report-c: its sidecar wrote a session before the operator certified its key, then one with the
  // certificate (same key).
  const lateNs = await createTestNamespace(t);
  const late = await createSigner();
  const lateFirst = await buildTrail({
    name: 'report-c-1',
    namespace: lateNs,
    signer: late,
    pod: { name: 'report-c' },
    start: hoursAgo(3),
  });
  const lateSecond = await buildTrail({
    name: 'report-c-2',
    namespace: lateNs,
    signer: late,
    pod: { name: 'report-c' },
    start: hoursAgo(1),
    prevHash: lastHash(lateFirst),
    certificate: await certify(late, lateNs, 'report-c'),
  });
  for (const s of [lateFirst, lateSecond]) await createTrail(kc, s);

  const cli = (...args: string[]) => runCli(args, { KUBECONFIG: kubeconfig });
  const pinned = ['--authority-keys', authorityKeys];
  const verify = (ns: string, ...flags: string[]) => cli('verify', '--all', '-n', ns, ...pinned, ...flags);
  let exports = 0;
  const exportTo = async (ns: string, ...flags: string[]): Promise<CliResult & { file: string }> => {
    const file = join(dir, `evidence-${String(++exports)}.json`);
    return { ...(await cli('evidence', 'export', '-n', ns, ...pinned, '-o', file, ...flags)), file };
  };
  const verifyFile = (file: string, ...flags: string[]) => cli('evidence', 'verify', file, ...pinned, ...flags);
  const say = (r: CliResult) => r.stdout + r.stderr;

  await t.test('an uncertified key fails each command by default, naming its thumbprint and the part', async () => {
    const thumbprint = await calculateJwkThumbprint(uncertified.publicJwk, 'sha256');
    const named = new RegExp(
      `ERROR uncertified-key\\s+${uncertifiedNs}/report-a-1, part 0: part 0 is signed by key sha256 thumbprint ${thumbprint}`,
    );
    for (const flags of [[], ['--require-certified']]) {
      const v = await verify(uncertifiedNs, ...flags);
      assert.equal(v.code, 1, say(v));
      assert.match(v.stdout, named);
      const e = await exportTo(uncertifiedNs, ...flags);
      assert.equal(e.code, 1, say(e));
      assert.match(e.stdout, /NOT verified \(1 error\(s\)\)/);
      const f = await verifyFile(e.file, ...flags);
      assert.equal(f.code, 1, say(f));
      assert.match(f.stdout, named);
      assert.doesNotMatch(f.stdout, /INCONSISTENT/, 'the export and its re-check agree');
    }
  });

  await t.test('--allow-uncertified accepts it in each command, as a warning naming it', async () => {
    const v = await verify(uncertifiedNs, '--allow-uncertified');
    assert.equal(v.code, 0, say(v));
    assert.match(v.stdout, /WARN\s+uncertified-key/);
    const e = await exportTo(uncertifiedNs, '--allow-uncertified');
    assert.equal(e.code, 0, say(e));
    const accepted = await verifyFile(e.file, '--allow-uncertified');
    assert.equal(accepted.code, 0, say(accepted));
    assert.match(accepted.stdout, /WARN\s+uncertified-key/);
    // The file says what the export accepted; the auditor re-checking it decides again.
    const strict = await verifyFile(e.file);
    assert.equal(strict.code, 1, say(strict));
    assert.match(strict.stdout, /ERROR uncertified-key/);
    assert.doesNotMatch(strict.stdout, /INCONSISTENT/);
    // An export made fail-closed, re-checked by an auditor who accepts uncertified keys.
    const refused = await exportTo(uncertifiedNs);
    assert.equal((await verifyFile(refused.file, '--allow-uncertified')).code, 0);
  });

  await t.test('--allow-uncertified with --require-certified is a usage error in each command', async () => {
    const both = ['--allow-uncertified', '--require-certified'];
    const e = await exportTo(uncertifiedNs);
    for (const r of [
      await verify(uncertifiedNs, ...both),
      await exportTo(uncertifiedNs, ...both),
      await verifyFile(e.file, ...both),
    ]) {
      assert.equal(r.code, 2, say(r));
      assert.match(r.stderr, /contradict each other/);
    }
  });

  await t.test('a certified trail passes each command without flags', async () => {
    const v = await verify(certifiedNs);
    assert.equal(v.code, 0, say(v));
    const e = await exportTo(certifiedNs);
    assert.equal(e.code, 0, say(e));
    const f = await verifyFile(e.file);
    assert.equal(f.code, 0, say(f));
    assert.doesNotMatch(v.stdout + f.stdout, /uncertified-key/);
  });

  await t.test("a later part's certificate for the same key and pod counts for the earlier parts", async () => {
    const v = await verify(lateNs);
    assert.equal(v.code, 0, say(v));
    assert.doesNotMatch(v.stdout, /uncertified-key/);
    const e = await exportTo(lateNs);
    assert.equal(e.code, 0, say(e));
    assert.equal((await verifyFile(e.file)).code, 0);
    // A window holding only the certificate-less session: the file's key list carries the certificate.
    const window = await exportTo(lateNs, '--to', hoursAgo(2).toISOString());
    assert.equal(window.code, 0, say(window));
    assert.match(window.stdout, /1 session\(s\)/);
    const offline = await verifyFile(window.file);
    assert.equal(offline.code, 0, say(offline));
    assert.doesNotMatch(offline.stdout, /uncertified-key|INCONSISTENT/);
  });

  await t.test('forged vouching: neither a linking certified part nor a borrowed key id certifies a key', async () => {
    const ns = await createTestNamespace(t);
    const genuine = await createSigner();
    const forger = await createSigner();
    const twin = await createSigner(genuine.kid); // the genuine key's id on the forger's own key
    // A forged session of pod report-d, then a genuine certified session that links back over it (the
    // sidecar links to whatever the API server listed as the pod's newest session).
    const forged = await buildTrail({
      name: 'report-d-1',
      namespace: ns,
      signer: forger,
      pod: { name: 'report-d' },
      start: hoursAgo(3),
      commands: [{ text: 'delete from orders' }],
    });
    const linking = await buildTrail({
      name: 'report-d-2',
      namespace: ns,
      signer: genuine,
      pod: { name: 'report-d' },
      start: hoursAgo(1),
      prevHash: lastHash(forged),
      certificate: await certify(genuine, ns, 'report-d'),
    });
    // Another forged session of the same pod, signed by a key whose kid is the certified key's.
    const borrowed = await buildTrail({
      name: 'report-d-0',
      namespace: ns,
      signer: twin,
      pod: { name: 'report-d' },
      start: hoursAgo(5),
    });
    for (const s of [borrowed, forged, linking]) await createTrail(kc, s);
    const v = await verify(ns);
    assert.equal(v.code, 1, say(v));
    assert.match(v.stdout, new RegExp(`ERROR uncertified-key\\s+${ns}/report-d-1, part 0`));
    assert.match(v.stdout, new RegExp(`ERROR uncertified-key\\s+${ns}/report-d-0, part 0`));
    assert.doesNotMatch(v.stdout, new RegExp(`uncertified-key\\s+${ns}/report-d-2`));
    const e = await exportTo(ns);
    assert.equal(e.code, 1, say(e));
    const f = await verifyFile(e.file);
    assert.equal(f.code, 1, say(f));
    assert.match(f.stdout, new RegExp(`ERROR uncertified-key\\s+${ns}/report-d-1, part 0`));
    assert.match(f.stdout, new RegExp(`ERROR uncertified-key\\s+${ns}/report-d-0, part 0`));
  });
});
