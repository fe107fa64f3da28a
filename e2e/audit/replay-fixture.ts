// What the replay tests that drive a real SessionWriter in the test process share (replay-continued,
// replay-merge, evidence-store-partition-replay, session-writer-fairness): a session's records made by hand
// as a hash chain, the session's origin, and a writer on the real API server with the harness's settings
// (a signing key in the test's directory, pod `agent-pod`, flushes every 50 ms), stopped when the test ends.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { GENESIS_HASH, hashRecord, type AuditRecord, type UnhashedRecord } from '@chaperone/api';
import type { RecordOrigin } from '../../sidecar/src/core/audit/audit-sink.ts';
import { KubernetesSessionStore } from '../../sidecar/src/core/audit/session-store.ts';
import { SessionWriter, type SessionWriterOptions } from '../../sidecar/src/core/audit/session-writer.ts';
import { loadOrCreateSigningKey, type SigningKey } from '../../sidecar/src/core/audit/signing-key.ts';
import { silentLogger } from '../../sidecar/src/core/observability/logger.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';

export type RecordContent = Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>;

/** A session's records, each chained to the one before; `time` gives a record's time from its seq. */
export class HandChain {
  readonly records: AuditRecord[] = [];
  private readonly time: (seq: number) => string;

  constructor(time: (seq: number) => string) {
    this.time = time;
  }

  add(content: RecordContent): AuditRecord {
    const seq = this.records.length + 1;
    const prevHash = this.records.at(-1)?.hash ?? GENESIS_HASH;
    const unhashed: UnhashedRecord = { v: 1, seq, time: this.time(seq), ...content, prevHash };
    const record = { ...unhashed, hash: hashRecord(unhashed) };
    this.records.push(record);
    return record;
  }
}

/** The origin of a session of resource `orders-db` (PostgreSQL) in pod `agent-pod`. */
export function replayOrigin(namespace: string, sessionId: string): RecordOrigin {
  return { sessionId, resource: 'orders-db', resourceType: 'postgres', namespace, pod: 'agent-pod' };
}

/** A signing key kept in the test's directory (one per test: writers of one test share it, as a restart does). */
export async function testSigningKey(t: TestContext): Promise<SigningKey> {
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  return loadOrCreateSigningKey(join(dir, 'signing-key.jwk'));
}

/**
 * A SessionWriter of pod `agent-pod` in `namespace`, on the harness API server unless `options.store` says
 * otherwise, flushing every 50 ms; not started; stopped when the test ends.
 */
export function replayWriter(
  t: TestContext,
  namespace: string,
  signingKey: SigningKey,
  options: Partial<SessionWriterOptions> = {},
): SessionWriter {
  const writer = new SessionWriter({
    store: new KubernetesSessionStore({ kubeconfig: controlPlaneEnv().kubeconfig, namespace }),
    signingKey,
    pod: { name: 'agent-pod', namespace, uid: 'uid-1' },
    logger: silentLogger,
    flushIntervalMs: 50,
    ...options,
  });
  t.after(() => writer.stop());
  return writer;
}
