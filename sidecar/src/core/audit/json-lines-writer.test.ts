// JSON lines sealed and written by the worker thread (json-lines-writer.ts) against the same records sealed on
// the calling thread and written by JsonLinesSink: the files are byte for byte the same (so is every hash and
// the pod chain's links), whatever the records hold, with sessions interleaved, a session's chain collected
// and a record handed over sealed. Then a loop's port: its sessions link into the same pod chain. Last, a
// record that cannot be sealed stops the sidecar with exit status 70, the records before it written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeAuditJsonLines, GENESIS_HASH, jcs, verifyChain, type KnownMember } from '@chaperone/api';
import { AuditUnavailable, JsonLinesSink, MemorySink, type AuditSink, type RecordOrigin } from './audit-sink.ts';
import { JsonLinesWriter } from './json-lines-writer.ts';
import { PodChain } from './pod-chain.ts';
import { RecordChain, type RecordContent } from './record-chain.ts';

const origin = (sessionId: string): RecordOrigin => ({
  sessionId,
  resource: 'orders-db',
  resourceType: 'postgres',
  namespace: 'agents',
  pod: 'agent-0',
});

const decision = Object.freeze({ policy: 'p', reasons: ['r1'], result: 'allow' as const, rule: 'r' });
const known: KnownMember = { key: 'decision', value: decision, text: jcs(decision) ?? '' };

/** The same sessions and records, through `sink`, on a clock of its own that ticks alike. */
function writeSessions(sink: AuditSink, pod: PodChain): void {
  let clock = 1_780_000_000_000_000n;
  const tick = (): bigint => (clock += 13n);
  const chains = ['a', 'b', 'c'].map(
    (id) =>
      new RecordChain(sink, origin(id), pod, {
        clock: tick,
        identity: { subject: `agent-${id}`, issuer: 'https://issuer' },
      }),
  );
  const refused = new RecordChain(sink, origin('refused'), pod, { clock: tick });
  refused.record({ type: 'auth.failure', source: { address: '10.0.0.9:1' }, outcome: { status: 'denied' } });
  for (const chain of chains) chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } });
  const texts = ['select 1', "select 'é ☃ 𝄞'", 'x'.repeat(100_000), '"quoted" \\ \u0001 \u2028'];
  for (let id = 1; id <= 40; id++) {
    const chain = chains[id % 3] as RecordChain;
    const content: RecordContent = {
      command: { id, kind: 'sql', text: texts[id % texts.length] as string, relations: ['t'] },
      decision,
      outcome: { durationMicros: id * 7, rows: id, status: 'success' },
      type: 'command.decision',
    };
    // A member the caller knows the text of (a cached decision), and one it does not.
    chain.record(content, id % 2 === 0 ? known : undefined);
  }
  // A member structured clone cannot copy (JCS leaves it out): the batch still goes, the record as here.
  const odd = { type: 'command.outcome', command: { id: 41, kind: 'sql' }, outcome: { status: 'success' } };
  chains[2]?.record({ ...odd, hook: () => 1 } as unknown as RecordContent);
  chains[1]?.record({ type: 'session.end', outcome: { status: 'success' } });
  chains[0]?.record({ type: 'audit.gap', gap: { lostRecords: 2, reason: 'spool-full: test' } });
}

test('the worker seals and writes the same bytes as the sink on the calling thread', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-writer-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const owner = { namespace: 'agents', name: 'agent-0' };

  const here = join(dir, 'here.jsonl');
  const sink = new JsonLinesSink(here);
  writeSessions(sink, PodChain.inMemory(owner));
  await sink.close();

  const there = join(dir, 'there.jsonl');
  const writer = JsonLinesWriter.open(there, (err) => assert.fail(err));
  writeSessions(writer, PodChain.inMemory(owner));
  await writer.flush();
  assert.equal(readFileSync(there, 'utf8'), readFileSync(here, 'utf8'), 'flush() waits until the lines are written');
  await writer.close();

  const text = readFileSync(there, 'utf8');
  assert.equal(text, readFileSync(here, 'utf8'));
  const decoded = decodeAuditJsonLines(text);
  assert.deepEqual(decoded.problems, []);
  assert.equal(decoded.entries.length, 1 + 3 + 40 + 3);
  const sessions = new Map<string, (typeof decoded.entries)[number]['record'][]>();
  for (const e of decoded.entries)
    sessions.set(e.session.sessionId, [...(sessions.get(e.session.sessionId) ?? []), e.record]);
  for (const records of sessions.values()) assert.deepEqual(verifyChain(records), []);
  // The pod chain: each session's first record links to the one of the session that recorded before it.
  const firsts = ['refused', 'a', 'b', 'c'].map((id) => sessions.get(id)?.[0]);
  assert.equal(firsts[0]?.prevHash, GENESIS_HASH);
  for (let i = 1; i < firsts.length; i++) assert.equal(firsts[i]?.prevHash, firsts[i - 1]?.hash);

  assert.throws(
    () => writer.write(origin('late'), firsts[0] as NonNullable<(typeof firsts)[0]>),
    (err: unknown) => err instanceof AuditUnavailable && err.reason === 'closed',
    'records after close are refused',
  );
});

test('records handed over sealed are written as they are; a loop port links its sessions into the same pod chain', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-writer-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  const writer = JsonLinesWriter.open(file, (err) => assert.fail(err));
  const loop = JsonLinesWriter.overPort(writer.connect());
  const owner = { namespace: 'agents', name: 'agent-0' };

  const main = new RecordChain(writer, origin('main'), PodChain.inMemory(owner));
  main.record({ type: 'session.start' });
  await writer.flush();
  // Sealed on this thread (a sink without writeMembers, as the durable sink's JSON-lines export is given).
  const memory = new MemorySink();
  const sealedHere = new RecordChain(memory, origin('sealed'), PodChain.inMemory(owner));
  sealedHere.record({ type: 'session.start' });
  sealedHere.record({ type: 'session.end', outcome: { status: 'success' } });
  for (const { session, record } of memory.records) writer.write(session, record);
  await writer.flush();
  // Records of another loop, over its port: the order between senders is the order the worker gets them in.
  const other = new RecordChain(loop, origin('loop'), PodChain.inMemory(owner));
  other.record({ type: 'session.start' });
  other.record({ type: 'session.end', outcome: { status: 'success' } });
  await loop.close();
  await writer.close();

  const decoded = decodeAuditJsonLines(readFileSync(file, 'utf8'));
  assert.deepEqual(decoded.problems, []);
  assert.deepEqual(
    decoded.entries.map((e) => e.session.sessionId),
    ['main', 'sealed', 'sealed', 'loop', 'loop'],
  );
  const [start, sealedStart, sealedEnd, loopStart, loopEnd] = decoded.entries.map((e) => e.record);
  assert.deepEqual(
    [sealedStart, sealedEnd],
    memory.records.map((r) => r.record),
  );
  assert.equal(loopStart?.prevHash, sealedStart?.hash, "the loop's session links to the newest session's first record");
  assert.equal(loopEnd?.prevHash, loopStart?.hash);
  assert.equal(start?.prevHash, GENESIS_HASH);
});

test('a file that cannot be opened fails at once; the worker starts with the first record', async (t) => {
  assert.throws(
    () => JsonLinesWriter.open('/nonexistent-dir/audit.jsonl', () => undefined),
    (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT',
  );
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-writer-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  const threads = (): number => Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
  const before = threads();
  const idle = JsonLinesWriter.open(file, (err) => assert.fail(err));
  await idle.flush();
  assert.equal(threads(), before, 'no thread before the first record');
  await idle.close();
  assert.equal(readFileSync(file, 'utf8'), '', 'an idle sink closes with the file untouched');
});

test('a record whose canonical text cannot be computed stops the sidecar with exit status 70, unlogged', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jsonl-writer-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const module = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
  const secret = 'SECRET-7f3a9c';
  // Unsealable in the worker (a bigint, a cycle), or already on the event loop, where a member structured
  // clone cannot copy (a function) is handed over as its canonical text, which these have none of.
  const variants: Record<string, string> = {
    'a bigint': 'command.rows = 10n;',
    'a cycle': 'command.self = command;',
    'a function and a bigint': 'command.rows = 10n; command.hook = () => 1;',
    'a function and a cycle': 'command.self = command; command.hook = () => 1;',
  };
  for (const [name, make] of Object.entries(variants)) {
    const file = join(dir, `${String(Object.keys(variants).indexOf(name))}.jsonl`);
    const script = join(dir, 'unsealable.ts');
    // The sink as the sidecar makes it (createAuditSink), stopped on SIGTERM as bin/chaperone-sidecar.ts does.
    writeFileSync(
      script,
      `import { createAuditSink } from ${module('../../sidecar.ts')};
import { validateConfig } from ${module('../../config.ts')};
import { createLogger } from ${module('../observability/logger.ts')};
import { PodChain } from ${module('./pod-chain.ts')};
import { RecordChain } from ${module('./record-chain.ts')};
const config = validateConfig({
  listeners: [{ name: 'orders-db', type: 'postgres', listen: '127.0.0.1:5432',
    upstream: { host: 'db', database: 'orders', usernameFile: '/u', passwordFile: '/p' }, auditFailureMode: 'FailClosed' }],
  policy: { bundleDir: '/policies' },
  identity: { issuers: [{ issuer: 'https://issuer', jwksFile: '/jwks.json' }] },
  audit: { path: ${JSON.stringify(file)} },
}, { POD_NAME: 'agent-0', POD_NAMESPACE: 'agents' });
const sink = await createAuditSink(config, createLogger({ level: 'info' }), {});
process.on('SIGTERM', () => void sink.close().then(() => process.exit(process.exitCode ?? 0)));
const origin = { sessionId: 's', resource: 'orders-db', resourceType: 'postgres', namespace: 'agents', pod: 'agent-0' };
const chain = new RecordChain(sink, origin, PodChain.inMemory({ namespace: 'agents', name: 'agent-0' }));
chain.record({ type: 'session.start' });
chain.record({ type: 'command.decision', command: { id: 1, kind: 'sql', text: 'select 1' } });
const command = { id: 2, kind: 'sql', text: ${JSON.stringify(secret)} };
${make}
chain.record({ type: 'command.decision', command });
setTimeout(() => process.exit(0), 30_000); // not stopped: the failure went unnoticed
`,
    );
    const run = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 70, `${name}: ${run.stderr}`);
    assert.match(run.stderr, /the JSON-lines audit writer failed; stopping/, name);
    assert.match(run.stderr, /JSON-lines audit record \(seq 3\) cannot be sealed/, name);
    assert.ok(!`${run.stdout}${run.stderr}`.includes(secret), `${name}: the record's content is in no log`);
    // The records before it are written and chained; the unsealable one is not.
    const decoded = decodeAuditJsonLines(readFileSync(file, 'utf8'));
    assert.deepEqual(decoded.problems, [], name);
    assert.deepEqual(
      decoded.entries.map((e) => e.record.seq),
      [1, 2],
      name,
    );
    assert.deepEqual(verifyChain(decoded.entries.map((e) => e.record)), [], name);
  }
});
