// The evidence store's schema text: role names are checked before they are written into GRANTs, the
// append-only guards and grants are all there, and a record becomes the row verifiers and counters read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  evidenceCopyRows,
  evidencePartitionDay,
  evidencePartitionSql,
  evidenceRow,
  evidenceSchemaSql,
  EVIDENCE_TABLE,
  planEvidencePartitions,
} from './evidence-store.ts';

test('evidenceSchemaSql refuses role names that are not plain identifiers', () => {
  for (const bad of ['writer; drop table x', 'Writer', '1writer', 'a"b', '', 'x'.repeat(64)]) {
    assert.throws(() => evidenceSchemaSql({ writer: bad, auditor: 'auditor' }), /not a plain SQL identifier/);
    assert.throws(() => evidenceSchemaSql({ writer: 'writer', auditor: bad }), /not a plain SQL identifier/);
  }
});

test('evidenceSchemaSql grants the writer INSERT only and the auditor SELECT only, behind append-only triggers', () => {
  const sql = evidenceSchemaSql({ writer: 'w', auditor: 'a' }, new Date('2026-12-04T12:00:00Z'), 2);
  assert.match(sql, new RegExp(`grant insert on ${EVIDENCE_TABLE} to w;`));
  assert.match(sql, new RegExp(`grant select on ${EVIDENCE_TABLE} to a;`));
  assert.doesNotMatch(sql, /grant (update|delete|truncate|all)/i);
  assert.match(sql, /before update or delete on chaperone\.audit_records\s+for each row/);
  assert.match(sql, /before truncate on chaperone\.audit_records\s+for each statement/);
  // Yesterday to two days ahead, each with its own TRUNCATE guard.
  for (const day of ['20261203', '20261204', '20261205', '20261206']) {
    assert.match(sql, new RegExp(`create table if not exists chaperone\\.audit_records_${day} partition of`));
  }
  assert.doesNotMatch(sql, /audit_records_20261207/);
});

test('evidencePartitionSql covers one UTC day', () => {
  const sql = evidencePartitionSql(new Date('2026-12-31T23:59:59Z'));
  assert.match(sql, /for values from \('2026-12-31 00:00:00\+00'\) to \('2027-01-01 00:00:00\+00'\)/);
});

test('evidenceRow keeps what counters count: decision result, outcome status', () => {
  const base = { v: 1, seq: 2, time: '2026-12-04T10:00:00.000001Z', prevHash: 'sha256:p', hash: 'sha256:h' } as const;
  const decision = evidenceRow('s', {
    ...base,
    type: 'command.decision',
    decision: { result: 'deny', policy: 'p', rule: 'r', bundleDigest: 'd' },
  });
  assert.deepEqual(decision, {
    sessionId: 's',
    seq: 2,
    time: base.time,
    type: 'command.decision',
    result: 'deny',
    hash: 'sha256:h',
    prevHash: 'sha256:p',
  });
  assert.equal(evidenceRow('s', { ...base, type: 'command.outcome', outcome: { status: 'error' } }).result, 'error');
  assert.equal(evidenceRow('s', { ...base, type: 'session.start' }).result, null);
});

test('evidencePartitionDay reads only daily partition names of real days', () => {
  assert.equal(evidencePartitionDay('audit_records_20261204')?.toISOString(), '2026-12-04T00:00:00.000Z');
  for (const other of ['audit_records_default', 'audit_records_20261332', 'audit_records_2026120', 'x_20261204']) {
    assert.equal(evidencePartitionDay(other), undefined, other);
  }
});

test('planEvidencePartitions creates the missing days ahead and expires whole days past retention only', () => {
  const existing = [
    'audit_records_default',
    'audit_records_20261001', // ended 65 days before now: expired with 30 days of retention
    'audit_records_20261104', // ended 2026-11-05 00:00, exactly 30 days + 12 h before now: expired
    'audit_records_20261105', // ends 2026-11-06 00:00, 29.5 days before now: kept
    'audit_records_20261204',
    'audit_records_20261205',
    'something_else_20200101',
  ];
  const now = new Date('2026-12-05T12:00:00Z');
  const plan = planEvidencePartitions(existing, now, 3, 30);
  assert.deepEqual(
    plan.create.map((d) => d.toISOString().slice(0, 10)),
    ['2026-12-06', '2026-12-07', '2026-12-08'],
  );
  assert.deepEqual(plan.expire, ['audit_records_20261001', 'audit_records_20261104']);
  assert.deepEqual(planEvidencePartitions(existing, now, 3).expire, [], 'no retention: nothing expires');
  assert.deepEqual(
    planEvidencePartitions([], now, 0).create.map((d) => d.toISOString().slice(0, 10)),
    ['2026-12-04', '2026-12-05'],
    'yesterday and today at least',
  );
});

test('evidenceCopyRows escapes what COPY text format reads specially, in every column', () => {
  const origin = { sessionId: 's\\1', namespace: 'n\tx', podNamespace: 'pn', pod: 'p\nq', resource: 'r\rs' };
  const row = (seq: number, result: string | null) => ({
    sessionId: origin.sessionId,
    seq,
    time: '2026-12-04T10:00:00.000001Z',
    type: 'command.decision',
    result,
    hash: 'sha256:h',
    prevHash: 'sha256:p',
  });
  const text = evidenceCopyRows(origin, [
    { row: row(1, 'allow'), text: '{"text":"a\\tb \\\\N \\."}' },
    { row: row(2, null), text: '{}' },
  ]);
  assert.equal(
    text,
    's\\\\1\t1\t2026-12-04T10:00:00.000001Z\tcommand.decision\tallow\tsha256:h\tsha256:p\tn\\tx\tpn\tp\\nq\tr\\rs\t{"text":"a\\\\tb \\\\\\\\N \\\\."}\n' +
      's\\\\1\t2\t2026-12-04T10:00:00.000001Z\tcommand.decision\t\\N\tsha256:h\tsha256:p\tn\\tx\tpn\tp\\nq\tr\\rs\t{}\n',
  );
  // Exactly one unescaped tab between columns and one newline per row: the record text cannot add a column.
  for (const line of text.slice(0, -1).split('\n')) assert.equal(line.split('\t').length, 12);
});
