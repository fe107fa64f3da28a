// Helpers of the durable-audit tests: a real sidecar with the spool and Session writer configured, reading
// Session objects back, and checking what an auditor would check (chain across parts, signed heads).
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import {
  carriesCommandOutcome,
  GENESIS_HASH,
  GROUP,
  VERSION,
  verifyChain,
  verifyChainHead,
  type AccessPolicySpec,
  type AuditRecord,
  type Session,
  type SessionStatus,
} from '@chaperone/api';
import { postgresEnv, testDir } from '../harness/env.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';

export interface AuditSidecarOptions {
  readonly kubeconfig: string;
  readonly namespace: string;
  /** Directory of the sidecar's files; reuse it to restart on the same spool. Default a fresh test dir. */
  readonly dir?: string;
  readonly database?: string;
  readonly spoolMaxBytes?: number;
  readonly flushIntervalMs?: number;
  readonly policies?: Record<string, AccessPolicySpec>;
  readonly listener?: Record<string, unknown>;
  /** More audit configuration (e.g. certification). */
  readonly audit?: Record<string, unknown>;
}

/** Starts the real sidecar with `audit.spoolDir` and the Session writer; stopped when the test ends. */
export async function startAuditSidecar(t: TestContext, options: AuditSidecarOptions): Promise<SidecarProcess> {
  const pg = postgresEnv();
  const dir = options.dir ?? testDir(t);
  const sidecar = await spawnSidecar({
    dir,
    upstream: {
      host: 'localhost',
      port: pg.port,
      database: options.database ?? pg.database,
      user: pg.user,
      password: pg.password,
      caFile: pg.caFile,
    },
    ...(options.policies === undefined ? {} : { policies: options.policies }),
    ...(options.listener === undefined ? {} : { listener: options.listener }),
    audit: {
      spoolDir: join(dir, 'audit'),
      kubernetes: { kubeconfig: options.kubeconfig, namespace: options.namespace },
      exportJsonLines: true,
      flushIntervalMs: options.flushIntervalMs ?? 200,
      ...(options.spoolMaxBytes === undefined ? {} : { spoolMaxBytes: options.spoolMaxBytes }),
      ...options.audit,
    },
    logLevel: 'info',
  });
  t.after(() => sidecar.stop());
  return sidecar;
}

export function customObjects(kubeconfig: string): k8s.CustomObjectsApi {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(kubeconfig);
  return kc.makeApiClient(k8s.CustomObjectsApi);
}

/** Every Session object in `namespace`. */
export async function listSessions(kubeconfig: string, namespace: string): Promise<Session[]> {
  const list = (await customObjects(kubeconfig).listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'sessions',
  })) as { items: Session[] };
  return list.items;
}

/** Polls `check` until it returns a value other than undefined. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

export interface VerifiedSession {
  readonly sessionId: string;
  readonly parts: Session[];
  readonly records: AuditRecord[];
}

/**
 * Groups Session objects by sessionId and checks each session as an auditor would: parts 0..n linked by
 * previousPart, one continuous hash chain over all parts, every part's head signed by its signer's key and
 * naming the part's last record; and, unless `podLinks` is false (records made up by the test), that the
 * sessions of each pod form one chain: exactly one starts at GENESIS_HASH and every other links to the
 * first record of a different session of the pod. Fails the test on any problem.
 */
export async function verifySessions(
  sessions: readonly Session[],
  namespace: string,
  options: { podLinks?: boolean } = {},
): Promise<VerifiedSession[]> {
  const byId = new Map<string, Session[]>();
  for (const s of sessions) {
    const list = byId.get(s.spec.sessionId) ?? [];
    list.push(s);
    byId.set(s.spec.sessionId, list);
  }
  const result: VerifiedSession[] = [];
  for (const [sessionId, unsorted] of byId) {
    const parts = [...unsorted].sort((a, b) => a.spec.part - b.spec.part);
    const records: AuditRecord[] = [];
    parts.forEach((p, i) => {
      assert.equal(p.spec.part, i, `session ${sessionId}: parts are 0..n`);
      if (i === 0) assert.equal(p.spec.previousPart, undefined);
      else assert.equal(p.spec.previousPart, parts[i - 1]?.metadata.name, `part ${String(i)} names its predecessor`);
      if (i < parts.length - 1) assert.equal(p.status?.phase, 'Continued', `part ${String(i)} is Continued`);
      assert.ok(p.spec.records.length > 0);
      records.push(...p.spec.records);
    });
    assert.deepEqual(
      verifyChain(records, options.podLinks === false ? GENESIS_HASH : undefined),
      [],
      `session ${sessionId}: chain verifies`,
    );
    assert.deepEqual(
      records.map((r) => r.seq),
      records.map((_, i) => i + 1),
      `session ${sessionId}: every seq exactly once`,
    );
    for (const p of parts) {
      const signer = p.spec.signer;
      const head = p.spec.head;
      assert.ok(signer !== undefined && head !== undefined, 'signer and head are set');
      assert.equal(signer.certificate, undefined, 'no operator certificate yet');
      const verified = await verifyChainHead(head.signature, [JSON.parse(signer.publicKey) as { kid: string }]);
      const last = p.spec.records[p.spec.records.length - 1];
      assert.equal(verified.seq, last?.seq);
      assert.equal(verified.hash, last?.hash);
      assert.equal(verified.sessionId, sessionId);
      assert.equal(verified.object, `${namespace}/${p.metadata.name ?? ''}`);
      assert.equal(head.seq, verified.seq);
      assert.equal(head.keyId, signer.keyId);
    }
    result.push({ sessionId, parts, records });
  }
  if (options.podLinks !== false) checkPodLinks(result);
  return result;
}

function checkPodLinks(sessions: readonly VerifiedSession[]): void {
  const byPod = Map.groupBy(sessions, (v) => v.parts[0]?.spec.pod.name ?? '');
  for (const [pod, ofPod] of byPod) {
    const firsts = new Set(ofPod.map((v) => v.records[0]?.hash));
    const predecessors = ofPod.map((v) => v.records[0]?.prevHash ?? '');
    assert.equal(
      predecessors.filter((h) => h === GENESIS_HASH).length,
      1,
      `pod ${pod}: exactly one session starts the pod's chain`,
    );
    for (const h of predecessors.filter((p) => p !== GENESIS_HASH)) {
      assert.ok(firsts.has(h), `pod ${pod}: a session links to ${h}, the first record of another session`);
    }
    assert.equal(
      new Set(predecessors).size,
      predecessors.length,
      `pod ${pod}: no two sessions link to one predecessor`,
    );
  }
}

/** The last part of a verified session and its status (both must exist). */
export function lastStatus(v: VerifiedSession): SessionStatus {
  const last = v.parts.at(-1);
  assert.ok(last?.status !== undefined, 'the last part has a status');
  return last.status;
}

/** Counters an auditor expects from the records of a session. */
export function expectedCounters(records: readonly AuditRecord[]): {
  commands: number;
  allowed: number;
  denied: number;
  held: number;
  errors: number;
} {
  const c = { commands: 0, allowed: 0, denied: 0, held: 0, errors: 0 };
  for (const r of records) {
    if (r.type === 'command.decision') {
      c.commands += 1;
      if (r.decision?.result === 'allow') c.allowed += 1;
      if (r.decision?.result === 'deny') c.denied += 1;
      if (r.decision?.result === 'approve') c.held += 1;
    }
    // A command.outcome, or a decision with its outcome merged in (one record per statement).
    if (carriesCommandOutcome(r) && r.outcome?.status === 'error') c.errors += 1;
  }
  return c;
}

/** What a fail-closed resource did with numbered inserts: each ran (accepted) or was refused with 53100. */
export interface FailClosedInserts {
  readonly accepted: number[];
  readonly refused: number[];
  /** Inserts `n` (a value of its own, so the table says which statements ran); any other error fails the test. */
  readonly insert: (n: number) => Promise<void>;
}

export function failClosedInserts(client: { query(text: string): Promise<unknown> }): FailClosedInserts {
  const accepted: number[] = [];
  const refused: number[] = [];
  const insert = async (n: number): Promise<void> => {
    try {
      await client.query(`insert into notes values (${String(n)})`);
      accepted.push(n);
    } catch (err) {
      const e = err as Error & { code?: string };
      assert.equal(e.code, '53100', `insert ${String(n)}: ${e.message}`);
      assert.equal(e.message, 'chaperone: audit trail unavailable (spool full); resource is fail-closed');
      refused.push(n);
    }
  };
  return { accepted, refused, insert };
}
