import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GENESIS_HASH, sealRecord, type AuditRecord } from '@chaperone/api';
import { verifyJsonLines } from './verify-json-lines.ts';

/** A session of `n` records (start, commands, end) linked to `prev`, as a sidecar writes them. */
function session(id: string, prev: string, n = 3, pod = 'agent'): { lines: string[]; first: string } {
  const lines: string[] = [];
  let prevHash = prev;
  let first = '';
  for (let seq = 1; seq <= n; seq++) {
    const type = seq === 1 ? 'session.start' : seq === n ? 'session.end' : 'command.decision';
    const unhashed = {
      v: 1,
      seq,
      time: `2026-12-01T10:00:0${String(seq)}.000000Z`,
      type,
      prevHash,
      ...(type === 'session.end' ? { outcome: { status: 'success' } } : {}),
    } as unknown as Omit<AuditRecord, 'hash'>;
    const { record } = sealRecord(unhashed);
    if (seq === 1) first = record.hash;
    prevHash = record.hash;
    lines.push(JSON.stringify({ session: { sessionId: id, resource: 'db', namespace: 'ci', pod }, record }));
  }
  return { lines, first };
}

describe('verifyJsonLines', () => {
  it('verifies sessions of a pod linked first record to first record, interleaved in the file', () => {
    const a = session('a', GENESIS_HASH);
    const b = session('b', a.first);
    const text = [a.lines[0], b.lines[0], a.lines[1], b.lines[1], a.lines[2], b.lines[2]].join('\n') + '\n';
    const report = verifyJsonLines(text);
    assert.equal(report.verified, true, JSON.stringify(report.problems));
    assert.deepEqual(report.notes, []);
    assert.deepEqual(
      report.sessions.map((s) => [s.sessionId, s.records, s.ended, s.ok]),
      [
        ['a', 3, 'success', true],
        ['b', 3, 'success', true],
      ],
    );
  });

  it('notes a link to a session outside the file and two sessions naming one predecessor', () => {
    const outside = `sha256:${'1'.repeat(64)}`;
    const b = session('b', outside);
    const c = session('c', outside);
    const report = verifyJsonLines([...b.lines, ...c.lines].join('\n'));
    assert.equal(report.verified, true);
    assert.deepEqual(
      report.notes.map((n) => [n.kind, n.sessionId]),
      [
        ['link-outside-file', 'b'],
        ['forked-link', 'c'],
        ['link-outside-file', 'c'],
      ],
    );
  });

  it('finds a session whose records change pod, and a session whose start is missing', () => {
    const a = session('a', GENESIS_HASH);
    const moved = a.lines.map((l, i) => (i === 2 ? l.replace('"pod":"agent"', '"pod":"other"') : l));
    const report = verifyJsonLines(moved.join('\n'));
    assert.deepEqual(
      report.problems.map((p) => [p.kind, p.line]),
      [['session-mismatch', 3]],
    );
    const headless = verifyJsonLines(a.lines.slice(1).join('\n'));
    assert.deepEqual(
      headless.problems.map((p) => p.kind),
      ['missing-start'],
    );
  });

  it('reports malformed lines with their line numbers and treats an empty file as verified', () => {
    const report = verifyJsonLines('{"session":{}}\n[]\n');
    assert.deepEqual(
      report.problems.map((p) => [p.kind, p.line]),
      [
        ['malformed-line', 1],
        ['malformed-line', 2],
      ],
    );
    assert.equal(verifyJsonLines('').verified, true);
  });
});
