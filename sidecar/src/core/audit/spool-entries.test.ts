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
import { UnreadableRecordText, type RecordFields } from './record-fields.ts';
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
  | {
      op: 'enqueue';
      id: number;
      origin: RecordOrigin;
      record: RecordFields;
      bytes: number;
      text: string;
      open: boolean;
    }
  | { op: 'amend'; id: number; sessionId: string; record: RecordFields; text: string }
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
    // With fieldsOnly (an evidence store): the record's fields, its text the whole of it.
    enqueueFields(id: number, o: RecordOrigin, record: RecordFields, text: string, open: boolean) {
      calls.push({ op: 'enqueue', id, origin: o, record, bytes: Buffer.byteLength(text), text, open });
    },
    amendFields(id: number, sessionId: string, record: RecordFields, text: string) {
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

/** What the writer reads of a record (RecordFields): all of it, or with fieldsOnly these members. */
function expected(record: AuditRecord | undefined, fieldsOnly: boolean): RecordFields | AuditRecord | undefined {
  if (record === undefined || !fieldsOnly) return record;
  const { v, seq, time, type, hash, prevHash, identity, decision, outcome } = record;
  return {
    v,
    seq,
    time,
    type,
    hash,
    prevHash,
    ...(identity === undefined ? {} : { identity }),
    ...(decision === undefined ? {} : { decision: { result: decision.result } }),
    ...(outcome === undefined ? {} : { outcome: { status: outcome.status } }),
  };
}

const decision = (id: number) =>
  ({
    type: 'command.decision',
    command: { id, kind: 'sql', text: `select 'é ${String(id)}'` },
    decision: { result: 'allow', rule: 'r' },
  }) as const;

for (const fieldsOnly of [false, true]) {
  test(`records reach the writer with their canonical text; a decision is held until its outcome merges into it${fieldsOnly ? ' (fields only)' : ''}`, async (t) => {
    const { chain, feed, logger } = setup(t);
    const calls: Call[] = [];
    const live = new LiveSpoolEntries(recordingWriter(calls), logger, true, fieldsOnly);
    const start = sealed(chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } }));
    const d1 = sealed(chain.record(decision(1)));
    await feed(live);
    assert.equal(calls.length, 2);
    const [c1, c2] = calls;
    assert.ok(c1?.op === 'enqueue' && c2?.op === 'enqueue');
    assert.deepEqual(c1.origin, origin);
    assert.deepEqual(c1.record, expected(start, fieldsOnly));
    assert.equal(c1.open, false);
    assert.deepEqual(c2.record, expected(d1, fieldsOnly));
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
    // With fieldsOnly the merged fields carry the outcome as the outcome entry had it.
    const mergedRecord = merged?.record;
    assert.deepEqual(
      c3.record,
      fieldsOnly && mergedRecord !== undefined
        ? { ...expected(d1, true), outcome: mergedRecord.outcome, hash: mergedRecord.hash }
        : mergedRecord,
    );
    assert.equal(c3.text, merged?.canonical);
    assert.equal(end.prevHash, c3.record.hash, 'the chain goes on from the merged record the worker writes');
    assert.equal(c4.open, false);
    assert.deepEqual(c4.record, expected(end, fieldsOnly));
  });
}

for (const fieldsOnly of [false, true]) {
  test(`a released or superseded decision is not merged; an outcome entry naming another decision is logged, not merged${fieldsOnly ? ' (fields only)' : ''}`, async (t) => {
    const { chain, feed, amends, logs, logger } = setup(t);
    const calls: Call[] = [];
    const live = new LiveSpoolEntries(recordingWriter(calls), logger, true, fieldsOnly);
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
}

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

test('fields only: a record entry that cannot be read throws (the worker stops), as a JSON error does', (t) => {
  const { logger } = setup(t);
  const calls: Call[] = [];
  const live = new LiveSpoolEntries(recordingWriter(calls), logger, true, true);
  const record =
    '{"hash":"sha256:1","prevHash":"sha256:0","seq":1,"time":"2026-12-06T00:00:00.000000Z","type":"session.start","v":3}';
  const entry = recordEntryText(origin, record);
  live.entry(1, entry);
  assert.equal(calls.length, 1);
  assert.equal(calls[0]?.op === 'enqueue' && calls[0].text, record);
  const unreadable = (err: unknown) =>
    err instanceof UnreadableRecordText ||
    (err instanceof Error && /not a record entry|names no session/.test(err.message));
  const originJson = JSON.stringify(origin);
  for (const [payload, why] of [
    [entry.slice(0, -3), 'truncated'],
    [entry.replace('"seq":1', '"seq":1,"seq":2'), 'a member twice'],
    [`${entry.slice(0, -1)} }`, 'a space before the last brace'],
    [`${entry}}`, 'a brace too many'],
    [entry.replace('"sessionId":', '"session":'), 'no session id'],
    [`{"s":${originJson},"q":{}}`, 'no record member'],
    [`{"s":${originJson},"r":{"v":3}}`, 'a record without its fields'],
  ] as const) {
    assert.throws(() => live.entry(2, payload), unreadable, why);
  }
  assert.equal(calls.length, 1, 'nothing unreadable reached the writer');
});
