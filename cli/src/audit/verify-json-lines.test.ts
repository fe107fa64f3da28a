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

/**
 * A format-3 session as compact JSON lines, written out by hand: the first line the whole session.start
 * stating the session, every later line without prevHash and with the hash in base64url.
 */
function compactSession(id: string, prev: string, n = 4, pod = 'agent'): { lines: string[]; first: string } {
  const lines: string[] = [];
  let prevHash = prev;
  let first = '';
  for (let seq = 1; seq <= n; seq++) {
    const type = seq === 1 ? 'session.start' : seq === n ? 'session.end' : 'command.decision';
    const unhashed = {
      v: 3,
      seq,
      time: `2026-12-05T10:00:0${String(seq)}.000000Z`,
      type,
      prevHash,
      ...(seq === 1
        ? { session: { sessionId: id, resource: 'db', resourceType: 'postgres', namespace: 'ci', pod } }
        : {}),
      ...(type === 'command.decision'
        ? { command: { id: seq - 1, kind: 'sql', text: `select ${String(seq)}` }, decision: { result: 'allow' } }
        : {}),
      ...(type === 'session.end' ? { outcome: { status: 'success' } } : {}),
    } as unknown as Omit<AuditRecord, 'hash'>;
    const { record } = sealRecord(unhashed);
    if (seq === 1) {
      first = record.hash;
      lines.push(JSON.stringify({ session: id, record }));
    } else {
      const { prevHash: _omitted, ...rest } = record;
      const hash = Buffer.from(record.hash.slice('sha256:'.length), 'hex').toString('base64url');
      lines.push(JSON.stringify({ session: id, record: { ...rest, hash } }));
    }
    prevHash = record.hash;
  }
  return { lines, first };
}

const kinds = (text: string): [string, number][] => verifyJsonLines(text).problems.map((p) => [p.kind, p.line]);

describe('verifyJsonLines, compact lines (record format 3)', () => {
  it('verifies compact sessions interleaved with each other and with a format-1 session of full lines', () => {
    const a = compactSession('a', GENESIS_HASH);
    const b = compactSession('b', a.first);
    const old = session('old', b.first);
    const text = [a.lines[0], b.lines[0], a.lines[1], old.lines[0], b.lines[1], a.lines[2], b.lines[2]]
      .concat([old.lines[1], a.lines[3], b.lines[3], old.lines[2]])
      .join('\n');
    const report = verifyJsonLines(`${text}\n`);
    assert.equal(report.verified, true, JSON.stringify(report.problems));
    assert.deepEqual(report.notes, []);
    assert.deepEqual(
      report.sessions.map((s) => [s.sessionId, s.pod, s.resource, s.records, s.ended, s.ok]),
      [
        ['a', 'ci/agent', 'db', 4, 'success', true],
        ['b', 'ci/agent', 'db', 4, 'success', true],
        ['old', 'ci/agent', 'db', 3, 'success', true],
      ],
    );
  });

  it('finds a removed record: the next line hashed its link to it', () => {
    const { lines } = compactSession('a', GENESIS_HASH, 5);
    assert.deepEqual(kinds(lines.filter((_, i) => i !== 2).join('\n')), [
      ['seq-gap', 3],
      ['hash-mismatch', 3],
    ]);
    // The last record removed: nothing follows to break; the session lacks its end (a note, as for cut files).
    const cut = verifyJsonLines(lines.slice(0, -1).join('\n'));
    assert.equal(cut.verified, true);
    assert.deepEqual(
      cut.notes.map((n) => n.kind),
      ['no-session-end'],
    );
  });

  it('finds an edited record, an edited session statement and records in another order', () => {
    const { lines } = compactSession('a', GENESIS_HASH, 5);
    const edited = lines.map((l, i) => (i === 2 ? l.replace('select 3', 'select 4') : l));
    assert.deepEqual(kinds(edited.join('\n')), [['hash-mismatch', 3]]);
    // The session statement is in the chain: moving the session to another pod breaks the first hash.
    const moved = lines.map((l, i) => (i === 0 ? l.replace('"pod":"agent"', '"pod":"other"') : l));
    assert.deepEqual(kinds(moved.join('\n')), [['hash-mismatch', 1]]);
    const swapped = [lines[0], lines[2], lines[1], lines[3], lines[4]].join('\n');
    assert.deepEqual(kinds(swapped), [
      ['seq-gap', 2],
      ['hash-mismatch', 2],
      ['seq-order', 3],
      ['hash-mismatch', 3],
      ['seq-gap', 4],
      ['hash-mismatch', 4],
    ]);
  });

  it('finds records without the line that states their session, and records replayed from another session', () => {
    const a = compactSession('a', GENESIS_HASH);
    const b = compactSession('b', a.first);
    const headless = verifyJsonLines(a.lines.slice(1).join('\n'));
    assert.equal(headless.verified, false);
    assert.deepEqual(
      headless.problems.map((p) => [p.kind, p.line]),
      [
        ['missing-start', 1],
        ['missing-start', 2],
        ['missing-start', 3],
      ],
    );
    // b's second record, relabelled as a's: its link is b's start, not a's.
    const replayed = [...a.lines.slice(0, 2), (b.lines[1] ?? '').replace('"session":"b"', '"session":"a"')];
    assert.deepEqual(kinds(replayed.join('\n')), [
      ['seq-order', 3],
      ['hash-mismatch', 3],
    ]);
    // A header that names another session than the one it states.
    const renamed = [(a.lines[0] ?? '').replace('"session":"a"', '"session":"b"')];
    assert.deepEqual(kinds(renamed.join('\n')), [['session-mismatch', 1]]);
  });

  it('refuses a compact line whose hash is neither form, and a first line without prevHash', () => {
    const { lines } = compactSession('a', GENESIS_HASH);
    const badHash = lines.map((l, i) => (i === 1 ? l.replace(/"hash":"[^"]+"/, '"hash":"xyz"') : l));
    assert.deepEqual(kinds(badHash.join('\n')), [
      ['malformed-line', 2],
      ['seq-gap', 3],
      ['hash-mismatch', 3],
    ]);
    const noLink = (lines[0] ?? '').replace(/"prevHash":"[^"]+",/, '');
    assert.deepEqual(kinds(noLink), [['malformed-line', 1]]);
  });
});

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
