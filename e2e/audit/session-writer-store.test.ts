// The Session writer against the real API server (CRD with its CEL rules): records land in parts of at
// most 256 records or the byte bound, continuation parts link back, a second writer replaying the same
// records (a restart) adds nothing twice, and a writer whose view is stale re-reads instead of rewriting.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import { SessionWriter } from '../../sidecar/src/core/audit/session-writer.ts';
import { KubernetesSessionStore } from '../../sidecar/src/core/audit/session-store.ts';
import { loadOrCreateSigningKey } from '../../sidecar/src/core/audit/signing-key.ts';
import { createLogger, silentLogger } from '../../sidecar/src/core/observability/logger.ts';
import type { RecordOrigin } from '../../sidecar/src/core/audit/audit-sink.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { customObjects, expectedCounters, lastStatus, listSessions, verifySessions } from './durability-helpers.ts';

/** A session's records built by hand: start, `commands` decision/outcome pairs, end. */
function sessionRecords(commands: number, textLength = 20, fill = 'x'): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = GENESIS_HASH;
  const push = (content: Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>) => {
    const seq = out.length + 1;
    const unhashed: UnhashedRecord = {
      v: 1,
      seq,
      time: `2026-11-27T10:00:00.${String(seq).padStart(6, '0')}Z`,
      ...content,
      prevHash: prev,
    };
    const r = { ...unhashed, hash: hashRecord(unhashed) };
    prev = r.hash;
    out.push(r);
  };
  push({ type: 'session.start', identity: { subject: 'system:serviceaccount:ci:runner', issuer: 'https://issuer' } });
  for (let i = 1; i <= commands; i++) {
    const result = i % 10 === 0 ? 'deny' : 'allow';
    push({
      type: 'command.decision',
      command: { id: i, kind: 'sql', text: `select '${fill.repeat(textLength)}' -- ${String(i)}` },
      decision: { result, rule: 'r' },
    });
    push({
      type: 'command.outcome',
      command: { id: i, kind: 'sql' },
      outcome:
        result === 'deny'
          ? { status: 'denied', code: '42501' }
          : i % 7 === 0
            ? { status: 'error', code: '22012' }
            : { status: 'success', rows: 1 },
    });
  }
  push({ type: 'session.end', outcome: { status: 'success', message: 'client disconnected' } });
  return out;
}

async function writer(t: Parameters<typeof testDir>[0], namespace: string, extra: { maxBytesPerPart?: number } = {}) {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const key = await loadOrCreateSigningKey(join(dir, 'signing-key.jwk'));
  const acks: number[] = [];
  const w = new SessionWriter({
    store: new KubernetesSessionStore({ kubeconfig: controlPlaneEnv().kubeconfig, namespace }),
    signingKey: key,
    pod: { name: 'agent-pod', namespace, uid: 'uid-1' },
    logger: process.env.CHAPERONE_AUDIT_TEST_DEBUG === undefined ? silentLogger : createLogger({ level: 'debug' }),
    onAcknowledge: (id) => acks.push(id),
    flushIntervalMs: 50,
    ...extra,
  });
  t.after(() => w.stop());
  w.start();
  return { w, acks, key };
}

const ref = (sessionId: string, namespace: string): RecordOrigin => ({
  sessionId,
  resource: 'orders-db',
  resourceType: 'postgres',
  namespace,
  pod: 'agent-pod',
});

test('session writer: continuation parts by count and by bytes, chain and signed heads across parts', async (t) => {
  const namespace = await createTestNamespace(t);
  const { w, acks } = await writer(t, namespace, { maxBytesPerPart: 160 * 1024 });
  const small = sessionRecords(300); // 602 records: 256 + 256 + 90
  // ~2 KiB decisions in UTF-8 (700 three-byte characters): the byte bound cuts parts before 256 records.
  const big = sessionRecords(200, 700, '数');
  const a = ref('0a1b2c3d-0000-4000-8000-000000000001', namespace);
  // Same first 12 hex digits: the short object names collide, and the writer falls back to full-id names.
  const b = ref('0a1b2c3d-0000-4000-8000-000000000002', namespace);
  let id = 0;
  for (let i = 0; i < Math.max(small.length, big.length); i++) {
    const rs = small[i];
    if (rs !== undefined) w.enqueue(++id, a, rs);
    const rb = big[i];
    if (rb !== undefined) w.enqueue(++id, b, rb);
  }
  assert.equal(await w.flush(120_000), true);
  assert.equal(acks[acks.length - 1], id, 'every entry acknowledged');
  const sessions = await listSessions(controlPlaneEnv().kubeconfig, namespace);
  const verified = await verifySessions(sessions, namespace, { podLinks: false });
  const va = verified.find((v) => v.sessionId === a.sessionId);
  const vb = verified.find((v) => v.sessionId === b.sessionId);
  assert.ok(va !== undefined && vb !== undefined);
  assert.deepEqual(
    va.parts.map((p) => p.spec.records.length),
    [256, 256, 90],
  );
  assert.deepEqual(va.records, small);
  assert.deepEqual(vb.records, big);
  assert.ok(vb.parts.length >= 3, `byte-bounded parts: ${String(vb.parts.length)}`);
  for (const p of vb.parts) {
    assert.ok(p.spec.records.length < 256);
    assert.ok(Buffer.byteLength(JSON.stringify(p)) < 160 * 1024, 'the bound is in UTF-8 bytes, not characters');
  }
  const status = lastStatus(va);
  assert.equal(status.phase, 'Closed');
  assert.equal(status.endTime, small.at(-1)?.time);
  assert.deepEqual(status.counters, expectedCounters(small));
  assert.deepEqual(
    new Set([va.parts[0]?.metadata.name, vb.parts[0]?.metadata.name]).has('orders-db-0a1b2c3d0000-0'),
    true,
  );
  const long = [va, vb].find((v) => v.parts[0]?.metadata.name !== 'orders-db-0a1b2c3d0000-0');
  assert.ok(long !== undefined);
  assert.equal(long.parts[0]?.metadata.name, `orders-db-${long.sessionId.replace(/-/g, '')}-0`);
  assert.equal(va.parts.at(0)?.spec.resource.type, 'postgres');
  assert.deepEqual(va.parts.at(0)?.spec.pod, { name: 'agent-pod', uid: 'uid-1' });
});

test('session writer: a restarted writer replaying the same records adds none twice and marks the session Abandoned', async (t) => {
  const namespace = await createTestNamespace(t);
  const records = sessionRecords(200).slice(0, -1); // no session.end: the process "died"
  const s = ref('5e55104e-0000-4000-8000-00000000000a', namespace);
  const first = await writer(t, namespace);
  records.slice(0, 300).forEach((r, i) => first.w.enqueue(i + 1, s, r));
  assert.equal(await first.w.flush(60_000), true);
  await first.w.stop();

  // The spool of the dead process still holds records 150.. (not yet acknowledged) plus newer ones.
  const second = await writer(t, namespace);
  records.slice(149).forEach((r, i) => second.w.enqueue(150 + i, s, r, true));
  assert.equal(await second.w.flush(60_000), true);
  const sessions = await listSessions(controlPlaneEnv().kubeconfig, namespace);
  const [v] = await verifySessions(sessions, namespace, { podLinks: false });
  assert.ok(v !== undefined);
  assert.deepEqual(v.records, records, 'every record exactly once');
  assert.equal(lastStatus(v).phase, 'Abandoned');
  assert.deepEqual(lastStatus(v).counters, expectedCounters(records));
});

test('session writer: the API server rejects rewriting records (CEL), and a stale writer re-reads instead', async (t) => {
  const namespace = await createTestNamespace(t);
  const records = sessionRecords(20);
  const s = ref('c0ffee00-0000-4000-8000-000000000003', namespace);
  const one = await writer(t, namespace);
  records.slice(0, 10).forEach((r, i) => one.w.enqueue(i + 1, s, r));
  assert.equal(await one.w.flush(60_000), true);

  // A second writer that believes the session is new (synced, no parts): its create collides, it re-reads
  // the existing part and appends only what is missing.
  const two = await writer(t, namespace);
  records.forEach((r, i) => two.w.enqueue(i + 1, s, r));
  assert.equal(await two.w.flush(60_000), true);
  const [v] = await verifySessions(await listSessions(controlPlaneEnv().kubeconfig, namespace), namespace, {
    podLinks: false,
  });
  assert.deepEqual(v?.records, records);

  // What CEL enforces, independently of the writer: records cannot be changed.
  const store = new KubernetesSessionStore({ kubeconfig: controlPlaneEnv().kubeconfig, namespace });
  const [part] = await store.listParts(s.sessionId);
  assert.ok(part !== undefined);
  const tampered = { ...records[1], command: { id: 1, kind: 'sql', text: 'select 2' } } as AuditRecord;
  await assert.rejects(
    customObjects(controlPlaneEnv().kubeconfig).replaceNamespacedCustomObject({
      group: 'chaperone.dev',
      version: 'v1alpha1',
      namespace,
      plural: 'sessions',
      name: part.metadata.name ?? '',
      body: { ...part, spec: { ...part.spec, records: part.spec.records.map((r, i) => (i === 1 ? tampered : r)) } },
    }),
    /append-only/,
  );
});
