// The durable sink with its Session writer in the audit worker thread, when that thread fails: the failure
// is reported once, every record after it is refused (AU-5, reason `closed`), flush() fails instead of
// waiting forever, close() still ends, and what the spool accepted before is there for the next start.
// (The worker's normal work is tested end to end through real sidecars in e2e/audit.) And the worker's heap
// bound: room for a full spool's records, never below its floor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../observability/logger.ts';
import type { AuditRecord } from '@chaperone/api';
import { AuditUnavailable, type RecordOrigin } from './audit-sink.ts';
import { workerOldGenerationMb } from './audit-worker-client.ts';
import { DurableAuditSink } from './durable-audit-sink.ts';
import { PodChain } from './pod-chain.ts';
import { RecordChain } from './record-chain.ts';
import { loadOrCreateSigningKey } from './signing-key.ts';
import { Spool } from './spool.ts';

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

test('a failed audit worker: reported once, later records refused, flush fails, close ends, the spool keeps what it accepted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-worker-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logs: string[] = [];
  const logger = createLogger({ level: 'info', write: (line) => logs.push(line) });
  const failures: Error[] = [];
  let failed: () => void = () => undefined;
  const failedOnce = new Promise<void>((resolve) => {
    failed = resolve;
  });
  const sink = await DurableAuditSink.open({
    spoolDir: join(dir, 'spool'),
    spoolMaxBytes: 1024 * 1024,
    flushIntervalMs: 60_000,
    signingKey: await loadOrCreateSigningKey(join(dir, 'signing-key.jwk')),
    pod: { name: 'agent-0', namespace: 'agents' },
    logger,
    // Nothing listens there: the writer would only retry; the test is about the thread failing.
    worker: {
      sessionStore: {
        kind: 'operator',
        options: { url: 'https://127.0.0.1:9/sessions', tokenFile: join(dir, 'no-token'), namespace: 'agents' },
      },
      log: { level: 'error', base: { component: 'audit' } },
    },
    onWorkerFailure: (err) => {
      failures.push(err);
      failed();
    },
  });
  await sink.ready();
  const chain = new RecordChain(sink, origin, PodChain.inMemory({ namespace: 'agents', name: 'agent-0' }));
  const start = sealed(chain.record({ type: 'session.start', source: { address: '127.0.0.1:5' } }));
  await sink.whenDurable();

  // A record text the worker cannot parse makes it throw: the thread ends.
  sink.write(origin, { ...start, seq: 2 }, { canonical: '{"not json', compact: '' });
  await failedOnce;
  assert.equal(failures.length, 1);
  assert.ok(
    logs.some((l) => l.includes('audit worker thread failed')),
    'the failure is logged',
  );

  assert.throws(
    () => chain.record({ type: 'session.end', outcome: { status: 'success' } }),
    (err: unknown) => err instanceof AuditUnavailable && err.reason === 'closed',
    'records after the failure are refused',
  );
  await assert.rejects(sink.flush(), (err: unknown) => err instanceof AuditUnavailable && err.reason === 'closed');
  await sink.close();
  assert.equal(failures.length, 1, 'reported once');

  // The next start finds the accepted record in the spool (nothing acknowledged it).
  const reopened = Spool.open({ dir: join(dir, 'spool'), maxBytes: 1024 * 1024 });
  t.after(() => reopened.spool.close());
  const payloads = reopened.entries.map((e) => e.payload.toString('utf8'));
  assert.ok(
    payloads.some((p) => p.includes(start.hash)),
    'the session.start record waits in the spool',
  );
});

test("the worker's old generation has room for a full spool's records, and a floor", () => {
  const MiB = 1024 * 1024;
  // The default spool (256 MiB): twice its bytes above the worker's 128 MiB at rest.
  assert.equal(workerOldGenerationMb(256 * MiB), 640);
  // A small spool: the floor.
  assert.equal(workerOldGenerationMb(64 * 1024), 512);
  // A large one grows with it, so that an outage that fills the spool cannot end the worker.
  assert.equal(workerOldGenerationMb(1024 * MiB), 2176);
});
