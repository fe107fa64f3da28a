import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  GENESIS_HASH,
  hashRecord,
  sealLinked,
  sealWithOutcome,
  verifyChain,
  type UnhashedRecord,
} from './audit-chain.ts';
import type { AuditRecord } from './audit-record.ts';

const IDENTITY = { subject: 'system:serviceaccount:ci:report', issuer: 'https://issuer.test', groups: ['ci'] };

/** A session of `version` records: identity on session.start only (2) or on every record (1). */
function session(version: number, identityOnEvery = version === 1): AuditRecord[] {
  const contents: Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>[] = [
    { type: 'session.start', identity: structuredClone(IDENTITY) },
    { type: 'command.decision', command: { id: 1, kind: 'sql', text: 'select 1' }, decision: { result: 'allow' } },
    { type: 'command.outcome', command: { id: 1, kind: 'sql' }, outcome: { status: 'success', rows: 1 } },
    { type: 'session.end' },
  ];
  let prevHash = GENESIS_HASH;
  return contents.map((c, i) => {
    const content = identityOnEvery ? { ...c, identity: structuredClone(IDENTITY) } : c;
    const unhashed = { v: version, seq: i + 1, time: `2026-12-05T00:00:0${String(i)}.000001Z`, ...content, prevHash };
    const record = { ...unhashed, hash: hashRecord(unhashed) };
    prevHash = record.hash;
    return record;
  });
}

describe('verifyChain', () => {
  it('accepts sessions of format version 1 and 2', () => {
    assert.deepEqual(verifyChain(session(1)), []);
    assert.deepEqual(verifyChain(session(2)), []);
  });

  it('finds an edited identity of a version-2 session.start, which every later record is chained to', () => {
    const records = session(2);
    (records[0] as { identity: { subject: string } }).identity.subject = 'system:serviceaccount:ci:someone-else';
    assert.deepEqual(
      verifyChain(records).map((p) => `${p.problem}@${String(p.seq)}`),
      ['hash-mismatch@1'],
    );
  });

  it('finds a version-2 session.start replaced by one naming another identity, re-hashed', () => {
    const records = session(2);
    const { hash: _hash, ...start } = records[0] as AuditRecord;
    const forged = { ...start, identity: { ...IDENTITY, subject: 'someone-else' } };
    records[0] = { ...forged, hash: hashRecord(forged) };
    assert.deepEqual(
      verifyChain(records).map((p) => `${p.problem}@${String(p.seq)}`),
      ['broken-link@2'],
      'the next record still links to the original session.start',
    );
  });

  it('reports an unknown format version and a session mixing versions as record-format', () => {
    const future = verifyChain(session(4, false));
    assert.deepEqual(
      future.map((p) => `${p.problem}@${String(p.seq)}`),
      ['record-format@1', 'record-format@2', 'record-format@3', 'record-format@4'],
    );
    assert.match(future[0]?.detail ?? '', /unknown record format version 4/);
    const v1 = session(1);
    const v2 = session(2);
    // Version-1 records continuing a version-2 session (re-linked so only the versions differ).
    const mixed = [v2[0] as AuditRecord];
    let prevHash = mixed[0]?.hash ?? '';
    for (const r of v1.slice(1)) {
      const { hash: _hash, ...rest } = r;
      const unhashed = { ...rest, prevHash };
      const record = { ...unhashed, hash: hashRecord(unhashed) };
      mixed.push(record);
      prevHash = record.hash;
    }
    assert.deepEqual(
      verifyChain(mixed).map((p) => `${p.problem}@${String(p.seq)}`),
      ['record-format@2', 'record-format@3', 'record-format@4'],
    );
  });
});

describe('sealWithOutcome', () => {
  const prevHash = `sha256:${'ab'.repeat(32)}`;
  // Texts and parameters that carry what the edit looks for: member names with quotes, a hash, a prevHash.
  const texts = [
    'select 1',
    `select '"hash":"sha256:${'0'.repeat(64)}","prevHash":' as x`,
    'select "outcome", "prevHash" from t where "hash" = $1',
    'ünïcødé \u2028 \\ "quoted"',
  ];
  const outcomes: NonNullable<AuditRecord['outcome']>[] = [
    { status: 'success', rows: 1, durationMicros: 120 },
    { code: '22012', durationMicros: 7, message: 'division by zero "x"', status: 'error' },
    { durationMicros: 3, masked: [{ column: 'email', count: 2, rule: 'r', strategy: 'hash' }], status: 'success' },
  ];
  for (const text of texts) {
    for (const outcome of outcomes) {
      it(`gives the record and text sealLinked gives the merged record (${JSON.stringify(text).slice(0, 30)}, ${outcome.status})`, () => {
        const members = {
          v: 3,
          seq: 7,
          time: '2026-12-05T10:00:00.000001Z',
          type: 'command.decision' as const,
          command: { id: 3, kind: 'sql' as const, parameters: ['"hash":"x"', 'NULL'], text },
          decision: { policy: 'ns/p', reasons: ['"prevHash":'], result: 'allow' as const, rule: 'r' },
        };
        const decision = sealLinked(members, prevHash, undefined, true);
        const merged = sealWithOutcome(decision, outcome);
        const expected = sealLinked({ ...members, outcome }, prevHash, undefined, true);
        assert.ok(merged !== undefined);
        assert.equal(merged.canonical, expected.canonical);
        assert.deepEqual(merged.record, expected.record);
        assert.equal(merged.record.hash, hashRecord(merged.record));
        assert.equal(merged.compact, expected.compact);
        // With the hash known (the sidecar's audit worker): the same record and text, no hash computed.
        const known = sealWithOutcome(decision, outcome, merged.record.hash);
        assert.ok(known !== undefined);
        assert.equal(known.canonical, expected.canonical);
        assert.deepEqual(known.record, expected.record);
      });
    }
  }
  it('refuses a record that already carries an outcome', () => {
    const sealed = sealLinked(
      { v: 3, seq: 2, time: '2026-12-05T10:00:00.000001Z', type: 'command.decision', outcome: { status: 'success' } },
      prevHash,
      undefined,
      true,
    );
    assert.equal(sealWithOutcome(sealed, { status: 'error' }), undefined);
  });
});
