// The Session writer under sustained overload with more busy sessions than its concurrency (4): records
// keep arriving for every session as fast as the API server takes them, so no session's queue empties.
// Each session must get its first Session object, and go on getting writes, within a bounded number of
// writes: every session with work gets its turn in every flush round (`WRITES_PER_ROUND` writes each), in
// Session objects and with an evidence store. Then the load stops and every record is there once, in
// order, signed, `Closed`. Real SessionWriter, real API server (and PostgreSQL for the store); the store
// passed to the writer only notes which session each write was for.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { AuditRecord, Session } from '@chaperone/api';
import type { RecordOrigin } from '../../sidecar/src/core/audit/audit-sink.ts';
import {
  PostgresEvidenceStore,
  type PostgresEvidenceStoreOptions,
} from '../../sidecar/src/core/audit/evidence-store.ts';
import { KubernetesSessionStore, type SessionStore } from '../../sidecar/src/core/audit/session-store.ts';
import { WRITES_PER_ROUND } from '../../sidecar/src/core/audit/session-writer.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { expectedCounters, lastStatus, listSessions, verifySessions } from './durability-helpers.ts';
import { createEvidenceDatabase, type EvidenceDatabase } from './evidence-store-fixture.ts';
import { HandChain, replayOrigin, replayWriter, testSigningKey } from './replay-fixture.ts';

const SESSIONS = 6;
/** Records per Session part (Session objects) or per store batch: one write's worth. */
const PER_WRITE = 32;
/** Each session's backlog when the writer starts, in writes. */
const BACKLOG_WRITES = 10;
/** Writes (all sessions) during which every write brings its session another write's worth of records. */
const LOADED_WRITES = 60;

/** One session's records, made as the load asks for them. */
class Chain extends HandChain {
  readonly origin: RecordOrigin;
  constructor(origin: RecordOrigin) {
    super((seq) => new Date(Date.UTC(2026, 11, 6, 10, 0, 0) + seq).toISOString().replace('Z', '000Z'));
    this.origin = origin;
  }

  command(): AuditRecord {
    const id = this.records.length;
    return this.add({
      type: 'command.decision',
      command: { id, kind: 'sql', text: `select ${String(id)} -- ${this.origin.sessionId}` },
      decision: { result: id % 9 === 0 ? 'deny' : 'allow', rule: 'r' },
    });
  }
}

/** The real store, noting the session of every create and append (heads included) in the order they are sent. */
function noteWrites(store: SessionStore, onWrite: (sessionId: string) => void): SessionStore {
  const sessionOf = new Map<string, string>();
  return {
    namespace: store.namespace,
    listParts: (sessionId) => store.listParts(sessionId),
    create: (session: Session) => {
      sessionOf.set(session.metadata.name ?? '', session.spec.sessionId);
      onWrite(session.spec.sessionId);
      return store.create(session);
    },
    append: (name, resourceVersion, records, head) => {
      onWrite(sessionOf.get(name) ?? name);
      return store.append(name, resourceVersion, records, head);
    },
    patchStatus: (name, status) => store.patchStatus(name, status),
    event: (event) => store.event(event),
  };
}

async function overload(t: TestContext, db: EvidenceDatabase | undefined): Promise<void> {
  const namespace = await createTestNamespace(t);
  const { kubeconfig } = controlPlaneEnv();
  const chains = Array.from(
    { length: SESSIONS },
    (_, k) => new Chain(replayOrigin(namespace, `fa1e000${String(k)}-0000-4000-8000-000000000000`)),
  );
  const bySession = new Map(chains.map((c) => [c.origin.sessionId, c]));
  let spoolId = 0;
  const enqueue = (c: Chain, n: number) => {
    for (let i = 0; i < n; i++) writer.enqueue(++spoolId, c.origin, c.command());
  };
  const writes: string[] = [];
  const store = noteWrites(new KubernetesSessionStore({ kubeconfig, namespace }), (sessionId) => {
    writes.push(sessionId);
    // Sustained load: each write brings its session as many records as it takes, so its queue never empties.
    const c = bySession.get(sessionId);
    if (writes.length <= LOADED_WRITES && c !== undefined) enqueue(c, PER_WRITE);
  });
  const evidence =
    db === undefined ? undefined : new PostgresEvidenceStore(db.sidecarConfig.postgres as PostgresEvidenceStoreOptions);
  const writer = replayWriter(t, namespace, await testSigningKey(t), {
    store,
    ...(evidence === undefined ? {} : { evidence }),
    concurrency: 4,
    maxRecordsPerPart: PER_WRITE,
    storeBatchRecords: PER_WRITE,
    // Heads follow full batches only (and the end): one head write per batch.
    storeHeadIntervalMs: 600_000,
  });
  t.after(() => evidence?.close()); // after the writer's stop (hooks run in order)
  for (const c of chains) {
    writer.enqueue(
      ++spoolId,
      c.origin,
      c.add({ type: 'session.start', identity: { subject: `ci:${c.origin.sessionId}`, issuer: 'https://issuer' } }),
    );
    enqueue(c, BACKLOG_WRITES * PER_WRITE - 1);
  }
  writer.start();
  await waitForWrites(writes, LOADED_WRITES);

  // Every session's first object within one round: no session waits for another's backlog.
  const round = SESSIONS * WRITES_PER_ROUND;
  const firstWrite = chains.map((c) => writes.indexOf(c.origin.sessionId));
  assert.ok(
    firstWrite.every((i) => i >= 0 && i < round),
    `each session's first write among the first ${String(round)} (at ${firstWrite.join(', ')})`,
  );
  // And its records advance: a turn every round, WRITES_PER_ROUND writes each in the first two rounds.
  const perSession = chains.map((c) => writes.slice(0, 2 * round).filter((w) => w === c.origin.sessionId).length);
  assert.ok(
    perSession.every((n) => n >= WRITES_PER_ROUND && n <= 2 * WRITES_PER_ROUND),
    `writes per session in the first ${String(2 * round)}: ${perSession.join(', ')}`,
  );

  // The load stops; every record is written once, in order, and each session Closed.
  for (const c of chains) {
    writer.enqueue(
      ++spoolId,
      c.origin,
      c.add({ type: 'session.end', outcome: { status: 'success', message: 'done' } }),
    );
  }
  assert.equal(await writer.flush(180_000), true, 'every record written');
  const sessions = await listSessions(kubeconfig, namespace);
  const verified = await verifySessions(db === undefined ? sessions : await db.withRecords(sessions), namespace, {
    podLinks: false,
  });
  assert.equal(verified.length, SESSIONS);
  for (const v of verified) {
    const c = bySession.get(v.sessionId);
    assert.ok(c !== undefined, v.sessionId);
    assert.deepEqual(v.records, c.records, `${v.sessionId}: every record once, in order`);
    assert.equal(lastStatus(v).phase, 'Closed');
    assert.deepEqual(lastStatus(v).counters, expectedCounters(c.records));
  }
}

async function waitForWrites(writes: readonly string[], n: number): Promise<void> {
  const deadline = Date.now() + 180_000;
  while (writes.length < n) {
    assert.ok(Date.now() < deadline, `${String(n)} writes in 3 minutes (${String(writes.length)})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('session writer, Session objects: 6 sessions under sustained overload each get a write every round', async (t) => {
  await overload(t, undefined);
});

test('session writer, evidence store: 6 sessions under sustained overload each get a write every round', async (t) => {
  await overload(t, createEvidenceDatabase(t));
});
