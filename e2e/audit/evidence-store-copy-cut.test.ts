// A store connection that fails in the middle of a COPY (the store restarts, a network path drops) must
// fail that append, not the sidecar: node-postgres emits 'error' on the client when its socket fails, and a
// client checked out of pg-pool has no listener of the pool's, so without the writer's own listener that
// was an uncaught exception that ended the process (seen as ECONNRESET for every agent in the store-outage
// durability test under load). A relay between the writer and the real PostgreSQL cuts the connection
// after the COPY's first megabyte has passed (TLS end to end; the relay only counts bytes), once with a
// FIN and once with a RST; each time the append rejects, the process lives on, and the next append on a
// fresh connection stores the batch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { canonicalRecordText, GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import { PostgresEvidenceStore, type EvidenceSession } from '../../sidecar/src/core/audit/evidence-store.ts';
import { postgresEnv } from '../harness/env.ts';
import { createEvidenceDatabase } from './evidence-store-fixture.ts';

/** A session's start and `count - 1` decisions of ~2 KB each: a COPY of several megabytes. */
function bigBatch(count: number): AuditRecord[] {
  const out: AuditRecord[] = [];
  const day = new Date().toISOString().slice(0, 10);
  let prev = GENESIS_HASH;
  for (let seq = 1; seq <= count; seq++) {
    const unhashed: UnhashedRecord = {
      v: 1,
      seq,
      time: `${day}T10:00:00.${String(seq).padStart(6, '0')}Z`,
      ...(seq === 1
        ? { type: 'session.start' as const, identity: { subject: 'system:serviceaccount:ci:runner', issuer: 'i' } }
        : {
            type: 'command.decision' as const,
            command: { id: seq, kind: 'sql', text: `select '${'x'.repeat(2000)}' -- ${String(seq)}` },
            decision: { result: 'allow' as const, rule: 'r' },
          }),
      prevHash: prev,
    };
    const r = { ...unhashed, hash: hashRecord(unhashed) };
    prev = r.hash;
    out.push(r);
  }
  return out;
}

interface CuttingRelay {
  readonly port: number;
  /** Cuts every connection whose client has sent more than `bytes` from now on (`reset`: RST, else FIN). */
  cutAfter(bytes: number, reset: boolean): Promise<void>;
  close(): Promise<void>;
}

async function cuttingRelay(targetPort: number): Promise<CuttingRelay> {
  const sockets = new Set<Socket>();
  let rule: { bytes: number; reset: boolean; cut: () => void } | undefined;
  const server = createServer((client) => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    let sent = 0;
    client.on('data', (chunk: Buffer) => {
      sent += chunk.length;
      const r = rule;
      if (r !== undefined && sent > r.bytes) {
        rule = undefined;
        if (r.reset) {
          client.resetAndDestroy();
          upstream.resetAndDestroy();
        } else {
          client.destroy();
          upstream.destroy();
        }
        r.cut();
        return;
      }
      if (!upstream.write(chunk)) client.pause();
    });
    upstream.on('drain', () => client.resume());
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('relay has no port');
  return {
    port: address.port,
    cutAfter: (bytes, reset) =>
      new Promise<void>((cut) => {
        rule = { bytes, reset, cut };
      }),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test('evidence store writer: a connection cut mid-COPY fails the append, not the process', async (t) => {
  const db = createEvidenceDatabase(t);
  const relay = await cuttingRelay(postgresEnv().port);
  t.after(() => relay.close());
  const uncaught: Error[] = [];
  const onUncaught = (err: Error) => uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  t.after(() => process.removeListener('uncaughtException', onUncaught));
  const idleErrors: Error[] = [];
  const config = db.sidecarConfigAt(relay.port) as {
    postgres: { host: string; port: number; database: string; user: string; passwordFile: string; caFile: string };
  };
  const store = new PostgresEvidenceStore({ ...config.postgres, onIdleError: (err) => idleErrors.push(err) });
  t.after(() => store.close());
  const records = bigBatch(3000);
  const entries = records.map((record) => ({ record }));

  for (const [i, reset] of [false, true].entries()) {
    const session: EvidenceSession = {
      sessionId: `cut-${String(i)}`,
      namespace: 'agents',
      podNamespace: 'agents',
      pod: 'agent-0',
      resource: 'orders-db',
    };
    // Connect first (the pool keeps the connection), then cut it once a megabyte of COPY data has passed.
    await store.counters(session.sessionId, 0);
    const cut = relay.cutAfter(1024 * 1024, reset);
    await assert.rejects(store.append(session, entries, canonicalRecordText, false));
    await cut;
    // Errors pg reports after the append settled (the socket's close) reach no one either.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(uncaught, [], `no uncaught exception after a cut with ${reset ? 'RST' : 'FIN'}`);
    // A fresh connection takes the retry; the records the cut COPY sent are not there (it rolled back).
    await store.append(session, entries, canonicalRecordText, true);
    const stored = db.superuser(
      `select count(*), count(distinct seq) from chaperone.audit_records where session_id = '${session.sessionId}'`,
    );
    assert.equal(stored.trim(), `${String(records.length)}|${String(records.length)}`);
  }
});
