// Verification of genuine trails (real hashing, real Ed25519 heads) and of each kind of tampering, on
// in-memory Session objects and on evidence files checked offline by the CLI as a child process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hashRecord, type Session } from '@chaperone/api';
import { verifyTrail, type TrailProblemKind, type TrailReport } from '../../cli/src/audit/verify-trail.ts';
import { buildEvidence, serializeEvidence } from '../../cli/src/audit/evidence.ts';
import { renderReport } from '../../cli/src/audit/render-report.ts';
import { testDir } from '../harness/env.ts';
import { buildTrail, createSigner, lastHash, signHead, type TestSigner } from './trail-fixture.ts';
import { runCli } from './run-cli.ts';

const NS = 'audit';
const COMMANDS = [
  { text: 'select * from orders' },
  { text: 'delete from orders', decision: 'deny' as const },
  { text: 'select count(*) from customers' },
];

/** Two sessions of one pod (the second linked to the first), the second in three parts of 3 records. */
async function podTrail(signer: TestSigner, start = new Date()): Promise<{ first: Session[]; second: Session[] }> {
  const first = await buildTrail({ name: 's1', namespace: NS, signer, commands: COMMANDS.slice(0, 1), start });
  const second = await buildTrail({
    name: 's2',
    namespace: NS,
    signer,
    commands: COMMANDS,
    recordsPerPart: 3,
    prevHash: lastHash(first),
    start: new Date(start.getTime() + 60_000),
  });
  return { first, second };
}

const clone = (sessions: readonly Session[]): Session[] => structuredClone(sessions) as Session[];
const kinds = (r: TrailReport) => r.problems.filter((p) => p.severity === 'error').map((p) => p.kind);
const find = (r: TrailReport, kind: TrailProblemKind) => r.problems.find((p) => p.kind === kind);

test('an untouched trail verifies clean: parts, per-pod links and signatures', async () => {
  const signer = await createSigner();
  const { first, second } = await podTrail(signer);
  assert.equal(second.length, 3);
  const report = await verifyTrail([...first, ...second], { trustedKeys: [signer.publicJwk] });
  assert.deepEqual(report.problems, []);
  assert.equal(report.ok, true);
  assert.equal(report.keyTrust, 'pinned');
  const s2 = report.sessions.find((s) => s.parts[0] === 's2');
  assert.ok(s2);
  assert.equal(s2.previousSession, `${NS}/s1`);
  assert.equal(s2.records, 8);
  assert.equal(s2.signedThrough, 8);
  assert.match(renderReport(report), /VERIFIED: no alteration or removal detected/);
});

test('each tampering is found, named and located', async (t) => {
  const signer = await createSigner();
  const { first, second } = await podTrail(signer);
  const check = async (mutate: (s: Session[]) => Session[]) =>
    verifyTrail(mutate(clone([...first, ...second])), { trustedKeys: [signer.publicJwk] });

  await t.test('a record text edited', async () => {
    const r = await check((s) => {
      const part = s.find((x) => x.metadata.name === 's2-1')!;
      part.spec.records[0]!.command!.text = 'select 1';
      return s;
    });
    const p = find(r, 'hash-mismatch');
    assert.ok(p);
    assert.equal(p.object, `${NS}/s2-1`);
    assert.equal(p.part, 1);
    assert.equal(p.seq, 4);
    assert.equal(r.ok, false);
  });

  await t.test('a record edited and the chain re-hashed (no key to re-sign)', async () => {
    const r = await check((s) => {
      const part = s.find((x) => x.metadata.name === 's2')!;
      const recs = part.spec.records;
      recs[1]!.decision!.result = 'deny';
      let prev = recs[0]!.hash;
      for (const rec of recs.slice(1)) {
        rec.prevHash = prev;
        rec.hash = hashRecord(rec);
        prev = rec.hash;
      }
      return s;
    });
    assert.deepEqual(kinds(r).sort(), ['head-mismatch', 'part-link']);
    assert.equal(find(r, 'head-mismatch')?.seq, 3);
  });

  await t.test('a record deleted from the middle', async () => {
    const r = await check((s) => {
      s.find((x) => x.metadata.name === 's2-1')!.spec.records.splice(1, 1);
      return s;
    });
    assert.ok(kinds(r).includes('seq-gap'));
    assert.ok(kinds(r).includes('broken-link'));
    assert.equal(find(r, 'seq-gap')?.seq, 6);
  });

  await t.test('the last records of a part deleted', async () => {
    const r = await check((s) => {
      s.find((x) => x.metadata.name === 's2')!.spec.records.splice(2);
      return s;
    });
    assert.ok(kinds(r).includes('head-mismatch'));
    assert.ok(kinds(r).includes('seq-gap'), 'the next part then starts after a gap');
  });

  await t.test('two records swapped', async () => {
    const r = await check((s) => {
      const recs = s.find((x) => x.metadata.name === 's2-1')!.spec.records;
      [recs[0], recs[1]] = [recs[1]!, recs[0]!];
      return s;
    });
    assert.ok(kinds(r).includes('seq-order'));
    assert.ok(kinds(r).includes('broken-link'));
  });

  await t.test('a middle continuation object deleted', async () => {
    const r = await check((s) => s.filter((x) => x.metadata.name !== 's2-1'));
    const p = find(r, 'part-missing');
    assert.ok(p);
    assert.equal(p.object, `${NS}/s2-2`);
    assert.match(p.detail, /s2-1 \(part 1\), which no longer exists/);
  });

  await t.test('the last continuation object deleted', async () => {
    const r = await check((s) => s.filter((x) => x.metadata.name !== 's2-2'));
    assert.equal(find(r, 'continuation-deleted')?.object, `${NS}/s2-1`);
  });

  await t.test('a whole session deleted', async () => {
    const r = await check((s) => s.filter((x) => x.metadata.name !== 's1'));
    const p = find(r, 'session-missing');
    assert.ok(p);
    assert.equal(p.object, `${NS}/s2`);
    assert.equal(p.seq, 1);
    assert.deepEqual(kinds(r), ['session-missing']);
  });

  await t.test('spec.identity rewritten (not covered by the chain itself)', async () => {
    const r = await check((s) => {
      s.find((x) => x.metadata.name === 's1')!.spec.identity.subject = 'someone-else';
      return s;
    });
    assert.equal(find(r, 'metadata-mismatch')?.object, `${NS}/s1`);
  });

  await t.test('a trail rewritten and re-signed with another key', async () => {
    const attacker = await createSigner(signer.kid);
    const r = await check((s) => {
      const part = s.find((x) => x.metadata.name === 's1')!;
      part.spec.signer = { keyId: attacker.kid, publicKey: JSON.stringify(attacker.publicJwk) };
      return s;
    });
    assert.equal(find(r, 'untrusted-key')?.object, `${NS}/s1`);
  });
});

test('retention explains a missing predecessor only where it can: past the horizon, or before the oldest session', async () => {
  const signer = await createSigner();
  const now = new Date();
  const retentionFor = () => 30 * 24 * 3_600_000;
  const old = await podTrail(signer, new Date(now.getTime() - 40 * 24 * 3_600_000));
  const expired = await verifyTrail(old.second, { retentionFor, now });
  assert.deepEqual(expired.problems, [], 'started after a predecessor that is past the horizon');

  const recent = await podTrail(signer, new Date(now.getTime() - 3_600_000));
  const oldest = await verifyTrail(recent.second, { retentionFor, now });
  assert.equal(oldest.ok, true);
  const warning = oldest.problems[0];
  assert.ok(warning);
  assert.equal(warning.kind, 'session-missing');
  assert.equal(warning.severity, 'warning', 'the oldest remaining session of the pod: may be retention');

  const third = await buildTrail({
    name: 's3',
    namespace: NS,
    signer,
    prevHash: lastHash(recent.second),
    start: new Date(now.getTime() - 60_000),
  });
  const middle = await verifyTrail([...recent.first, ...third], { retentionFor, now });
  assert.deepEqual(kinds(middle), ['session-missing'], 'an older session is present: not retention');
  assert.match(middle.problems[0]?.detail ?? '', /older sessions of the pod are still present/);
});

test('a re-signed head over a rewritten chain still fails under pinned keys; self-asserted keys are reported', async () => {
  const signer = await createSigner();
  const { first } = await podTrail(signer);
  const selfAsserted = await verifyTrail(first);
  assert.equal(selfAsserted.ok, true);
  assert.equal(selfAsserted.keyTrust, 'self-asserted');
  assert.match(renderReport(selfAsserted), /Keys: self-asserted/);
  // Re-signing with the real key (which only the sidecar holds) over the same chain verifies: sanity check.
  const copy = clone(first);
  const part = copy[0]!;
  part.spec.head = await signHead(NS, 's1', part.spec.sessionId, part.spec.records.at(-1)!, signer);
  assert.equal((await verifyTrail(copy, { trustedKeys: [signer.publicJwk] })).ok, true);
});

test('evidence file: verifies offline; an edited record text or report is detected (CLI, exit codes)', async (t) => {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const signer = await createSigner();
  const { first, second } = await podTrail(signer);
  const bundle = await buildEvidence([...first, ...second], {
    namespaces: [NS],
    source: { context: 'test' },
    retention: new Map([[`${NS}/orders-db`, 720 * 3_600_000]]),
  });
  assert.equal(bundle.report.ok, true);
  assert.deepEqual(
    bundle.nist.map((n) => n.control),
    ['AU-2', 'AU-3', 'AU-5', 'AU-8', 'AU-9', 'AU-10', 'AU-12', 'AC-3', 'AC-6', 'IA-2', 'IA-4', 'IA-9', 'SC-7'],
  );
  assert.equal(bundle.keys.length, 1);
  assert.equal(bundle.heads.length, 4);
  const clean = join(dir, 'evidence.json');
  writeFileSync(clean, serializeEvidence(bundle));

  const ok = await runCli(['evidence', 'verify', clean]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, /VERIFIED/);
  assert.match(ok.stdout, /^.*evidence\.json: sha256:[0-9a-f]{64}$/m);

  // An edited statement inside the file: the record no longer matches its hash.
  const text = readFileSync(clean, 'utf8');
  assert.ok(text.includes('"text":"delete from orders"'));
  const edited = join(dir, 'edited.json');
  writeFileSync(edited, text.replace('"text":"delete from orders"', '"text":"select 1 from orders"'));
  const bad = await runCli(['evidence', 'verify', edited]);
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /ERROR hash-mismatch\s+audit\/s2-1, part 1, seq 4: record content does not match its hash/);
  assert.match(bad.stdout, /INCONSISTENT: embedded report says verified with 0 error\(s\); recomputed: 1 error\(s\)/);

  // A record removed from the file (with the report left alone).
  const parsed = JSON.parse(text);
  parsed.sessions.find((s: Session) => s.metadata.name === 's2-1').spec.records.splice(1, 1);
  const removed = join(dir, 'removed.json');
  writeFileSync(removed, JSON.stringify(parsed));
  const gone = await runCli(['evidence', 'verify', removed, '-o', 'json']);
  assert.equal(gone.code, 1);
  const doc = JSON.parse(gone.stdout);
  assert.equal(doc.ok, false);
  assert.ok(doc.report.problems.some((p: { kind: string; seq: number }) => p.kind === 'seq-gap' && p.seq === 6));

  // A whole session removed from the file: the anchor-less link of the next session gives it away.
  const noFirst = JSON.parse(text);
  noFirst.sessions = noFirst.sessions.filter((s: Session) => s.metadata.name !== 's1');
  const dropped = join(dir, 'dropped.json');
  writeFileSync(dropped, JSON.stringify(noFirst));
  const missing = await runCli(['evidence', 'verify', dropped]);
  assert.equal(missing.code, 1);
  assert.match(missing.stdout, /session-missing\s+audit\/s2, part 0, seq 1/);
  assert.match(missing.stdout, /INCONSISTENT: session audit\/s1 in the embedded report is missing from the file/);
});
