// The sidecar's evidence-store writer (sidecar/src/core/audit/evidence-store.ts) on the real harness
// PostgreSQL, logged in as the INSERT-only writer role over TLS: a live session's batch goes in with COPY
// and every record lands as exactly the canonical text its hash covers, whatever characters the statement
// holds; COPY never adds a second row for a stored record (the batch fails whole), and the insert that may
// meet stored records skips them and adds only the new ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalRecordText, GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import { PostgresEvidenceStore, type EvidenceSession } from '../../sidecar/src/core/audit/evidence-store.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';

const INSUFFICIENT_PRIVILEGE = '42501';

/** Statement texts a COPY text row must carry unchanged: its delimiters, escapes and the NULL marker. */
const HOSTILE_TEXTS = [
  'select 1',
  "select E'a\\tb\\nc\\\\d'",
  "select '\t' -- a raw tab\nand a newline\r\n",
  '\\N',
  '\\.',
  "select '\\\\\\\\' || '\"quoted\"'",
  "select 'ünïcødé ✓ 𝄞'",
  "select chr(8) || '\u0001\u001f\u007f'",
];

function records(count: number, first = 1, prev = GENESIS_HASH): AuditRecord[] {
  const out: AuditRecord[] = [];
  const today = new Date().toISOString().slice(0, 19);
  for (let seq = first; seq < first + count; seq++) {
    const unhashed: UnhashedRecord = {
      v: 1,
      seq,
      time: `${today}.${String(seq).padStart(6, '0')}Z`,
      ...(seq === 1
        ? { type: 'session.start' as const, identity: { subject: 'system:serviceaccount:ci:runner', issuer: 'i' } }
        : {
            type: 'command.decision' as const,
            command: { id: seq, kind: 'sql', text: HOSTILE_TEXTS[seq % HOSTILE_TEXTS.length] ?? '' },
            decision: { result: seq % 3 === 0 ? ('deny' as const) : ('allow' as const), rule: 'r\tule' },
          }),
      prevHash: prev,
    };
    const r = { ...unhashed, hash: hashRecord(unhashed) };
    prev = r.hash;
    out.push(r);
  }
  return out;
}

test('evidence store writer: COPY for a live session, the skipping insert for what may be stored', async (t) => {
  const db = createEvidenceDatabase(t);
  const config = db.sidecarConfig as {
    postgres: { host: string; port: number; database: string; user: string; passwordFile: string; caFile: string };
  };
  const store = new PostgresEvidenceStore(config.postgres);
  t.after(() => store.close());
  const session: EvidenceSession = {
    sessionId: 'sess-\\t-1',
    namespace: 'agents',
    podNamespace: 'agents',
    pod: 'agent-0',
    resource: 'orders-db',
  };
  const all = records(40);
  const entries = (rs: readonly AuditRecord[]) => rs.map((record) => ({ record }));

  await store.append(session, entries(all.slice(0, 20)), canonicalRecordText, false);
  const auditor = await db.connect(db.auditor);
  const read = async () =>
    (
      await auditor.query<{ session_id: string; seq: string; record: string; result: string | null; pod: string }>(
        'select session_id, seq, record, result, pod from chaperone.audit_records order by seq, time',
      )
    ).rows;
  let rows = await read();
  assert.equal(rows.length, 20);
  for (const [i, row] of rows.entries()) {
    const r = all[i] as AuditRecord;
    assert.equal(row.session_id, session.sessionId);
    assert.equal(Number(row.seq), r.seq);
    assert.equal(row.record, canonicalRecordText(r), `seq ${String(r.seq)} stored as hashed`);
    assert.equal(hashRecord(JSON.parse(row.record) as UnhashedRecord), r.hash);
    assert.equal(row.result, r.decision?.result ?? null);
    assert.equal(row.pod, 'agent-0');
  }

  // COPY of a batch holding a stored record fails whole: no duplicate, and its new records are not in either.
  await assert.rejects(store.append(session, entries(all.slice(15, 25)), canonicalRecordText, false));
  assert.equal((await read()).length, 20);

  // The retry that may meet stored records skips them and adds the rest, once.
  await store.append(session, entries(all.slice(15, 25)), canonicalRecordText, true);
  await store.append(session, entries(all.slice(15, 25)), canonicalRecordText, true);
  await store.append(session, entries(all.slice(25)), canonicalRecordText, false);
  rows = await read();
  assert.deepEqual(
    rows.map((r) => Number(r.seq)),
    all.map((r) => r.seq),
  );
  assert.deepEqual(
    rows.map((r) => r.record),
    all.map(canonicalRecordText),
  );

  // The writer's pool stays usable after the failed COPY, and the counters function sees every decision.
  const counters = await store.counters(session.sessionId, 40);
  const decisions = all.filter((r) => r.type === 'command.decision');
  assert.equal(counters.commands, decisions.length);
  assert.equal(counters.denied, decisions.filter((r) => r.decision?.result === 'deny').length);
});

test('evidence store writer role: COPY in only, never out', async (t) => {
  const db = createEvidenceDatabase(t);
  const writer = await db.connect(db.writer);
  await assert.rejects(writer.query('copy chaperone.audit_records to stdout'), { code: INSUFFICIENT_PRIVILEGE });
  await assert.rejects(writer.query('copy (select record from chaperone.audit_records) to stdout'), {
    code: INSUFFICIENT_PRIVILEGE,
  });
});
