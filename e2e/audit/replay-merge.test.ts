// A spool replayed in two parts (the audit worker gets it in messages of a few thousand entries) with the
// writer's flush between them, cut at every place of a session's entries: a decision at the end of one part
// and its outcome entry at the start of the next still become one merged record, the session's next record
// (chained by the earlier process to the merged record's hash) follows it, and a session whose queue the
// flush emptied is not written Abandoned before its later records. Real SessionWriter, real API server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { canonicalRecordText, GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import { silentLogger } from '../../sidecar/src/core/observability/logger.ts';
import type { RecordOrigin } from '../../sidecar/src/core/audit/audit-sink.ts';
import { outcomeEntryText, recordEntryText, ReplayedSpoolEntries } from '../../sidecar/src/core/audit/spool-entries.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { listSessions, verifySessions } from './durability-helpers.ts';
import { replayOrigin, replayWriter, testSigningKey } from './replay-fixture.ts';

test('replay: an outcome entry in the next part of the replay still merges into its decision', async (t) => {
  const namespace = await createTestNamespace(t);
  const acks: number[] = [];
  const writer = replayWriter(t, namespace, await testSigningKey(t), { onAcknowledge: (id) => acks.push(id) });
  writer.start();
  const origin = (n: number): RecordOrigin =>
    replayOrigin(namespace, `7e91c0de-0000-4000-8000-00000000000${String(n)}`);
  const trail = (origin: RecordOrigin) => {
    // What the earlier process spooled: start, then two statements whose outcomes merged into their
    // decisions (decision entry, outcome entry), then the end. Each record chains to the merged one before it.
    const entries: string[] = [];
    const expected: AuditRecord[] = [];
    let prev = GENESIS_HASH;
    const seal = (content: Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>): AuditRecord => {
      const seq = expected.length + 1;
      const unhashed: UnhashedRecord = {
        v: 1,
        seq,
        time: `2026-12-06T01:00:00.00000${String(seq)}Z`,
        ...content,
        prevHash: prev,
      };
      return { ...unhashed, hash: hashRecord(unhashed) };
    };
    const record = (content: Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>) => {
      const r = seal(content);
      entries.push(recordEntryText(origin, canonicalRecordText(r)));
      expected.push(r);
      prev = r.hash;
    };
    const statement = (id: number) => {
      const decision = seal({
        type: 'command.decision',
        command: { id, kind: 'sql', text: `select ${String(id)}` },
        decision: { result: 'allow', rule: 'r' },
      });
      entries.push(recordEntryText(origin, canonicalRecordText(decision)));
      const outcome = { status: 'success', rows: 1 } as const;
      const { hash: _, ...unhashed } = { ...decision, outcome };
      const merged: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
      entries.push(outcomeEntryText(origin.sessionId, { seq: merged.seq, hash: merged.hash, outcome }));
      expected.push(merged);
      prev = merged.hash;
    };
    record({
      type: 'session.start',
      identity: { subject: 'system:serviceaccount:ci:runner', issuer: 'https://issuer' },
    });
    statement(1);
    statement(2);
    record({ type: 'session.end', outcome: { status: 'success', message: 'client disconnected' } });
    return { entries, expected };
  };
  // entries: 1 start, 2 decision 1, 3 outcome 1, 4 decision 2, 5 outcome 2, 6 end. One session per place
  // where the replay is cut in two (after entry 1 … 5); the writer's flush (every 50 ms here, 1 s in the
  // sidecar) runs before the second part comes.
  const replay = new ReplayedSpoolEntries(writer, silentLogger);
  const sessions = [1, 2, 3, 4, 5].map((cut) => ({ cut, origin: origin(cut), ...trail(origin(cut)) }));
  let id = 0;
  const ids = sessions.map((s) => s.entries.map(() => ++id));
  sessions.forEach((s, n) => {
    for (let i = 0; i < s.cut; i++) replay.entry(ids[n]?.[i] ?? 0, s.entries[i] as string);
  });
  await sleep(1500);
  sessions.forEach((s, n) => {
    for (let i = s.cut; i < s.entries.length; i++) replay.entry(ids[n]?.[i] ?? 0, s.entries[i] as string);
  });
  replay.end();
  assert.equal(await writer.flush(60_000), true, 'every entry written');
  assert.equal(acks[acks.length - 1], id, 'every entry acknowledged');

  const verified = await verifySessions(await listSessions(controlPlaneEnv().kubeconfig, namespace), namespace, {
    podLinks: false,
  });
  for (const s of sessions) {
    const v = verified.find((x) => x.sessionId === s.origin.sessionId);
    // One record per statement, the outcome in it, and the chain unbroken (verifySessions checks the links).
    assert.deepEqual(v?.records, s.expected, `replay cut after entry ${String(s.cut)}`);
  }
});
