// The audit worker's side of the spool (LiveSpoolEntries): the frames the spool writes, decoded, reach the
// Session writer as the main thread's sink meant them — each record with its canonical text and session, a
// decision held until its outcome entry merges into it (the merged record the main thread's), released or
// superseded; an outcome entry naming another decision is not merged, and an unreadable entry throws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sealWithOutcome, type AuditRecord } from '@chaperone/api';
import { createLogger } from '../observability/logger.ts';
import type { AuditSink, RecordOrigin, SealedText } from './audit-sink.ts';
import { PodChain } from './pod-chain.ts';
import { RecordChain } from './record-chain.ts';
import type { SessionWriter } from './session-writer.ts';
import { LiveSpoolEntries, outcomeEntryText, recordEntryText } from './spool-entries.ts';
import { decodeFrames, Spool } from './spool.ts';

/** A record sealed by its chain (the sinks here do not seal records themselves). */
function sealed(record: AuditRecord | undefined): AuditRecord {
  assert.ok(record !== undefined, 'the chain sealed the record');
  return record;
}

const origin: RecordOrigin = {
  sessionId: 'a1b2c3d4e5f60718293a4b5c6d7e8f90',
  resource: 'orders-db',
  resourceType: 'postgres',
  namespace: 'agents',
  pod: 'agent-0',
};

type Call =
  | { op: 'enqueue'; id: number; origin: RecordOrigin; record: AuditRecord; bytes: number; text: string; open: boolean }
  | { op: 'amend'; id: number; sessionId: string; record: AuditRecord; text: string }
  | { op: 'release'; sessionId: string; seq: number }
  | { op: 'ack'; id: number };

/** The writer's calls, in order. */
function recordingWriter(calls: Call[]): SessionWriter {
  const writer = {
    enqueue(id: number, o: RecordOrigin, record: AuditRecord, _r: boolean, bytes: number, text: string, open: boolean) {
      calls.push({ op: 'enqueue', id, origin: o, record, bytes, text, open });
    },
    amend(id: number, sessionId: string, record: AuditRecord, text: string) {
      calls.push({ op: 'amend', id, sessionId, record, text });
    },
    release(sessionId: string, seq: number) {
      calls.push({ op: 'release', sessionId, seq });
    },
    acknowledgeLater(id: number) {
      calls.push({ op: 'ack', id });
    },
  };
  return writer as unknown as SessionWriter;
}

/**
 * A sink that spools as the durable sink does (record entries, outcome entries for amends) into a real
 * spool, whose written frames are collected: what the worker gets.
 */
function spoolingSink(spool: Spool, amends: { outcome: string | undefined }): AuditSink {
  return {
    deferrable: false,
    write(session: RecordOrigin, _record: AuditRecord, sealed?: SealedText) {
      spool.appendText(recordEntryText(session, sealed?.canonical ?? ''));
    },
    amend(session: RecordOrigin, record: AuditRecord) {
      const outcome = record.outcome;
      if (outcome === undefined) return false;
      spool.appendText(
        amends.outcome ?? outcomeEntryText(session.sessionId, { seq: record.seq, hash: record.hash, outcome }),
      );
      return true;
    },
    whenDurable: () => spool.whenDurable(),
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
}

function setup(t: { after: (fn: () => void) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'spool-entries-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const frames: Buffer[] = [];
  const { spool } = Spool.open({
    dir,
    maxBytes: 1024 * 1024,
    durability: 'Written',
    onFrames: (data) => frames.push(Buffer.from(data)),
  });
  t.after(() => void spool.close());
  const amends: { outcome: string | undefined } = { outcome: undefined };
  const chain = new RecordChain(
    spoolingSink(spool, amends),
    origin,
    PodChain.inMemory({ namespace: 'agents', name: 'agent-0' }),
  );
  const logs: string[] = [];
  const logger = createLogger({ level: 'info', write: (line) => logs.push(line) });
  /** Feeds what the spool wrote so far to `live` (in id order). */
  const feed = async (live: LiveSpoolEntries) => {
    await spool.whenDurable();
    for (const data of frames.splice(0)) {
      const decoded = decodeFrames(data);
      assert.equal(decoded.problem, undefined);
      for (const e of decoded.entries) live.entry(e.id, e.payload.toString('utf8'));
    }
  };
  return { chain, feed, amends, logs, logger };
}

const decision = (id: number) =>
  ({
    type: 'command.decision',
    command: { id, kind: 'sql', text: `select 'é ${String(id)}'` },
    decision: { result: 'allow', rule: 'r' },
  }) as const;

test('records reach the writer with their canonical text; a decision is held until its outcome merges into it', async (t) => {
  const { chain, feed, logger } = setup(t);
  const calls: Call[] = [];
  const live = new LiveSpoolEntries(recordingWriter(calls), logger, true);
  const start = sealed(chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } }));
  const d1 = sealed(chain.record(decision(1)));
  await feed(live);
  assert.equal(calls.length, 2);
  const [c1, c2] = calls;
  assert.ok(c1?.op === 'enqueue' && c2?.op === 'enqueue');
  assert.deepEqual(c1.origin, origin);
  assert.deepEqual(c1.record, start);
  assert.equal(c1.open, false);
  assert.deepEqual(c2.record, d1);
  assert.equal(c2.open, true, 'a decision without its outcome is held');
  assert.equal(c2.bytes, Buffer.byteLength(c2.text));
  assert.equal(JSON.parse(c2.text).hash, d1.hash);

  assert.ok(chain.amendLast(d1.seq, { status: 'success', rows: 1 }));
  const merged = sealWithOutcome({ record: d1, canonical: c2.text }, { status: 'success', rows: 1 });
  const end = sealed(chain.record({ type: 'session.end', outcome: { status: 'success' } }));
  await feed(live);
  const [c3, c4] = calls.slice(2);
  assert.ok(c3?.op === 'amend' && c4?.op === 'enqueue');
  assert.equal(c3.id, 3, 'the outcome entry');
  assert.deepEqual(c3.record, merged?.record);
  assert.equal(c3.text, merged?.canonical);
  assert.equal(end.prevHash, c3.record.hash, 'the chain goes on from the merged record the worker writes');
  assert.equal(c4.open, false);
});

test('a released or superseded decision is not merged; an outcome entry naming another decision is logged, not merged', async (t) => {
  const { chain, feed, amends, logs, logger } = setup(t);
  const calls: Call[] = [];
  const live = new LiveSpoolEntries(recordingWriter(calls), logger, true);
  chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } });
  const d1 = sealed(chain.record(decision(1)));
  await feed(live);
  live.release(origin.sessionId, d1.seq);
  assert.deepEqual(calls.at(-1), { op: 'release', sessionId: origin.sessionId, seq: d1.seq });

  const d2 = sealed(chain.record(decision(2)));
  amends.outcome = outcomeEntryText(origin.sessionId, {
    seq: d1.seq,
    hash: `sha256:${'1'.repeat(64)}`,
    outcome: { status: 'success' },
  });
  assert.ok(chain.amendLast(d2.seq, { status: 'success' }));
  await feed(live);
  const tail = calls.slice(-3);
  assert.equal(tail[0]?.op, 'enqueue');
  assert.deepEqual(tail[1], { op: 'ack', id: 4 }, 'the outcome entry is acknowledged with the rest, not merged');
  assert.deepEqual(
    tail[2],
    { op: 'release', sessionId: origin.sessionId, seq: d2.seq },
    'the decision is written alone',
  );
  assert.ok(logs.some((l) => l.includes('does not match its open decision')));
});

test('without holding (a JSON-lines export beside the spool) decisions are not open; an unreadable entry throws', async (t) => {
  const { chain, feed, logger } = setup(t);
  const calls: Call[] = [];
  const live = new LiveSpoolEntries(recordingWriter(calls), logger, false);
  chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } });
  chain.record(decision(1));
  await feed(live);
  assert.deepEqual(
    calls.map((c) => c.op === 'enqueue' && c.open),
    [false, false],
  );
  assert.throws(() => live.entry(9, '{"not json'), SyntaxError);
  assert.throws(() => live.entry(9, '{"x":1}'), /neither a record nor an outcome/);
});
