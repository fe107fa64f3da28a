// The JSON-lines sink writing record format 3 through a RecordChain: the file read back restores every record
// exactly as it was hashed, a session's first line states it, later lines are compact, and sessions written
// by a format-2 sidecar earlier in the same file still decode.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeAuditJsonLines, GENESIS_HASH, sealRecord, verifyChain, type AuditRecord } from '@chaperone/api';
import { JsonLinesSink, formatJsonLine, type RecordOrigin } from './audit-sink.ts';
import { PodChain } from './pod-chain.ts';
import { RecordChain } from './record-chain.ts';

/** A record sealed by its chain (the sinks here do not seal records themselves). */
function sealed(record: AuditRecord | undefined): AuditRecord {
  assert.ok(record !== undefined, 'the chain sealed the record');
  return record;
}

const origin = (sessionId: string): RecordOrigin => ({
  sessionId,
  resource: 'orders-db',
  resourceType: 'postgres',
  namespace: 'agents',
  pod: 'agent-0',
});

test('a format-3 file decodes to the records as hashed, with the session stated once in the chain', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-sink-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  const sink = new JsonLinesSink(file);
  const pod = PodChain.inMemory({ namespace: 'agents', name: 'agent-0' });
  let clock = 1_780_000_000_000_000n;
  const tick = (): bigint => (clock += 17n);
  const a = new RecordChain(sink, origin('a'), pod, { clock: tick, identity: { subject: 'ci', issuer: 'https://i' } });
  const b = new RecordChain(sink, origin('b'), pod, { clock: tick });
  const written: AuditRecord[] = [];
  written.push(sealed(a.record({ type: 'session.start', source: { address: '127.0.0.1:5' } })));
  written.push(sealed(b.record({ type: 'auth.failure', outcome: { status: 'denied', code: '28000' } })));
  for (let id = 1; id <= 3; id++) {
    written.push(
      sealed(
        a.record({
          type: 'command.decision',
          command: { id, kind: 'sql', text: `select 'é ${String(id)}'` },
          decision: { result: 'allow', rule: 'r' },
        }),
      ),
    );
    written.push(
      sealed(a.record({ type: 'command.outcome', command: { id, kind: 'sql' }, outcome: { status: 'success' } })),
    );
  }
  written.push(sealed(a.record({ type: 'session.end', outcome: { status: 'success' } })));
  await sink.close();

  const text = readFileSync(file, 'utf8');
  const lines = text.trimEnd().split('\n');
  assert.equal(lines.length, written.length);
  const first = JSON.parse(lines[0] ?? '') as { session: unknown; record: AuditRecord };
  assert.equal(first.session, 'a', 'the first line names the session by id');
  assert.deepEqual(first.record.session, origin('a'), 'and its record states the session, hashed');
  assert.equal(first.record.prevHash, GENESIS_HASH);
  const later = JSON.parse(lines[2] ?? '') as { session: unknown; record: Record<string, unknown> };
  assert.equal(later.session, 'a');
  assert.equal(later.record.prevHash, undefined, 'later lines leave the link out');
  assert.match(String(later.record.hash), /^[A-Za-z0-9_-]{43}$/, 'and carry the hash in base64url');
  assert.equal(later.record.session, undefined);

  const decoded = decodeAuditJsonLines(text);
  assert.deepEqual(decoded.problems, []);
  assert.deepEqual(
    decoded.entries.map((e) => e.record),
    written,
    'every record restored exactly as it was hashed',
  );
  assert.deepEqual(decoded.entries[1]?.session, {
    sessionId: 'b',
    resource: 'orders-db',
    namespace: 'agents',
    pod: 'agent-0',
  });
  const ofA = decoded.entries.filter((e) => e.session.sessionId === 'a').map((e) => e.record);
  assert.deepEqual(verifyChain(ofA, GENESIS_HASH), []);
  assert.equal(
    ofA.every((r) => r.v === 3),
    true,
  );
});

test('a session written by a format-2 sidecar earlier in the file still decodes beside format-3 lines', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-sink-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  // What a format-2 sidecar wrote: full lines, every record whole.
  const old: AuditRecord[] = [];
  let prevHash = GENESIS_HASH;
  for (const type of ['session.start', 'session.end'] as const) {
    const { record } = sealRecord({ v: 2, seq: old.length + 1, time: '2026-12-01T10:00:00.000000Z', type, prevHash });
    old.push(record);
    prevHash = record.hash;
  }
  const oldLines = old.map((r) => formatJsonLine(origin('old'), r)).join('');
  const sink = new JsonLinesSink(file);
  const chain = new RecordChain(sink, origin('new'), PodChain.inMemory({ namespace: 'agents', name: 'agent-0' }));
  const start = sealed(chain.record({ type: 'session.start' }));
  const end = sealed(chain.record({ type: 'session.end', outcome: { status: 'success' } }));
  await sink.close();
  const decoded = decodeAuditJsonLines(oldLines + readFileSync(file, 'utf8'));
  assert.deepEqual(decoded.problems, []);
  assert.deepEqual(
    decoded.entries.map((e) => [e.session.sessionId, e.record]),
    [
      ['old', old[0]],
      ['old', old[1]],
      ['new', start],
      ['new', end],
    ],
  );
});
