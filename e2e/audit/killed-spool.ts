// A sidecar killed (SIGKILL) with a spool of many thousand unacknowledged entries across several sessions,
// for the replay tests (e2e/audit/evidence-store-replay.test.ts, durability-replay-large.test.ts): the
// audit worker gets a replayed spool in messages of 4,096 entries, with the writer's flushes between them
// (docs/audit-durability.md, "Threads", Replay), so only a spool of well over 4,096 entries exercises what
// happens at those seams. Records go through an outage forwarder in front of where they are written (the
// evidence store or the API server); the test cuts it once every session has written its first records,
// keeps the load on until the spool holds the entries asked for, and kills the sidecar mid-load.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { parse, stringify } from 'yaml';
import { carriesCommandOutcome, type AuditRecord, type Session } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { waitForExit } from '../harness/processes.ts';
import type { SidecarProcess } from '../harness/sidecar-process.ts';
import {
  expectedCounters,
  lastStatus,
  listSessions,
  startAuditSidecar,
  waitFor,
  type AuditSidecarOptions,
  type VerifiedSession,
} from './durability-helpers.ts';
import type { TcpOutage } from './tcp-outage.ts';

/** What the clients of the killed sidecar saw. */
export interface KilledLoad {
  /** Per client subject, the statements answered, in order. */
  readonly answered: ReadonlyMap<string, readonly string[]>;
  /** Subjects of the clients that disconnected before the kill (their sessions ended: `Closed` after replay). */
  readonly ended: ReadonlySet<string>;
  /** The first sidecar (killed). */
  readonly first: SidecarProcess;
}

export interface KilledLoadOptions {
  readonly sidecar: AuditSidecarOptions & { readonly dir: string };
  /** The forwarder in front of where records are written; cut after the first records. */
  readonly outage: TcpOutage;
  /** Clients (sessions); the first `ending` of them disconnect before the kill. Default 6 and 2. */
  readonly clients?: number;
  readonly ending?: number;
  /** Statements each client runs after the cut before the kill (at least). Default 1,000. */
  readonly statementsAfterCut?: number;
}

export const subjectOf = (k: number): string => `system:serviceaccount:ci:replay-${String(k)}`;

async function connect(sidecar: SidecarProcess, k: number): Promise<pg.Client> {
  const token = await sidecar.issuer.sign({ sub: subjectOf(k) }, { expiresIn: 3600 });
  const c = new pg.Client({ host: sidecar.host, port: sidecar.port, user: 'agent', password: token, database: 'a' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/**
 * Starts the sidecar, runs the load (each client's statements distinct), cuts the outage forwarder once
 * every session's first records are written, and kills the sidecar (SIGKILL) once each client ran
 * `statementsAfterCut` more. The outage stays cut.
 */
export async function fillSpoolAndKill(t: TestContext, options: KilledLoadOptions): Promise<KilledLoad> {
  const clients = options.clients ?? 6;
  const ending = options.ending ?? 2;
  const afterCut = options.statementsAfterCut ?? 1000;
  const first = await startAuditSidecar(t, options.sidecar);
  const connections = await Promise.all(Array.from({ length: clients }, (_, k) => connect(first, k)));
  const answered = new Map<string, string[]>();
  const ended = new Set<string>();
  const cut: { at?: number } = {};
  const loads = connections.map(async (c, k) => {
    const done: string[] = [];
    answered.set(subjectOf(k), done);
    for (let i = 0; ; i++) {
      if (k < ending && cut.at !== undefined && i >= cut.at + afterCut) {
        await c.end();
        ended.add(subjectOf(k));
        return;
      }
      const text = `select ${String(k)} as client, ${String(i)} as n`;
      try {
        await c.query(text);
      } catch {
        return;
      }
      done.push(text);
    }
  });
  const spool = join(options.sidecar.dir, 'audit', 'spool');
  await waitFor('every session has records written', async () => {
    const sessions = await listSessions(options.sidecar.kubeconfig, options.sidecar.namespace);
    // Distinct sessions, not objects: a busy session may already have continued into a second part.
    const written = new Set(sessions.map((s) => s.spec.sessionId)).size;
    return written === clients && existsSync(join(spool, 'ack')) ? true : undefined;
  });
  await options.outage.cut();
  cut.at = Math.max(...[...answered.values()].map((a) => a.length));
  const target = cut.at + afterCut;
  await waitFor(
    'the load after the cut',
    () =>
      Promise.resolve(
        [...answered.values()].every((a, k) => (k < ending ? ended.has(subjectOf(k)) : a.length >= target))
          ? true
          : undefined,
      ),
    300_000,
  );
  await waitFor('the failed flush logged', () =>
    Promise.resolve(/audit flush failed; records stay in the spool/.test(first.logs()) ? true : undefined),
  );
  first.process.kill('SIGKILL');
  await waitForExit(first.process, 10_000);
  await Promise.all(loads);
  return { answered, ended, first };
}

/** How many entries the restarted sidecar said it replayed (its `audit spool replayed` line). */
export function replayedEntries(sidecar: SidecarProcess): number {
  const line = /"msg":"audit spool replayed"[^\n]*"entries":(\d+)/.exec(sidecar.logs());
  return Number(line?.[1] ?? 0);
}

/** Waits until every session of the killed load is in its final phase (`Closed` if ended, else `Abandoned`). */
export async function finalSessions(
  kubeconfig: string,
  namespace: string,
  load: KilledLoad,
  timeoutMs = 300_000,
): Promise<Session[]> {
  return waitFor(
    'every session Closed or Abandoned',
    async () => {
      const list = await listSessions(kubeconfig, namespace);
      const last = new Map<string, Session>();
      for (const s of list) {
        const seen = last.get(s.spec.sessionId);
        if (seen === undefined || seen.spec.part < s.spec.part) last.set(s.spec.sessionId, s);
      }
      const phases = [...last.values()].map((s) => s.status?.phase);
      return last.size === load.answered.size && phases.every((p) => p === 'Closed' || p === 'Abandoned')
        ? list
        : undefined;
    },
    timeoutMs,
  );
}

/**
 * What each client saw against the verified trail: every answered statement has exactly one decision record,
 * in order, at most the statement in flight at the kill besides; each has its outcome (merged into the
 * decision or a record of its own, never both, never lost at a seam of the replay) except possibly the last
 * answered one of a killed session (its outcome entry need not have reached the spool); a session that ended
 * is `Closed` with its `session.end`, a killed one `Abandoned`; counters match the records.
 */
export function checkStatements(verified: readonly VerifiedSession[], load: KilledLoad): { merged: number } {
  assert.equal(verified.length, load.answered.size, 'one session per client');
  let merged = 0;
  for (const v of verified) {
    const subject = v.parts[0]?.spec.identity.subject ?? '';
    const answered = load.answered.get(subject);
    assert.ok(answered !== undefined, `session of ${subject}`);
    const decisions = v.records.filter((r) => r.type === 'command.decision');
    const texts = decisions.map((r) => r.command?.text ?? '');
    assert.deepEqual(texts.slice(0, answered.length), answered, `${subject}: every answered statement, in order`);
    assert.ok(texts.length - answered.length <= 1, `${subject}: at most the statement in flight besides`);
    const outcomes = new Map<number | undefined, number>();
    for (const r of v.records) {
      if (r.type === 'command.outcome') outcomes.set(r.command?.id, (outcomes.get(r.command?.id) ?? 0) + 1);
    }
    const withoutOutcome: string[] = [];
    for (const d of decisions) {
      const separate = outcomes.get(d.command?.id) ?? 0;
      if (d.outcome !== undefined) merged += 1;
      assert.ok(separate + (d.outcome === undefined ? 0 : 1) <= 1, `${d.command?.text ?? ''}: one outcome`);
      if (separate + (d.outcome === undefined ? 0 : 1) === 0) withoutOutcome.push(d.command?.text ?? '');
    }
    const outcomeRecords = v.records.filter((r: AuditRecord) => carriesCommandOutcome(r)).length;
    assert.equal(outcomeRecords, decisions.length - withoutOutcome.length, `${subject}: no outcome without decision`);
    const status = lastStatus(v);
    if (load.ended.has(subject)) {
      assert.deepEqual(withoutOutcome, [], `${subject}: every outcome of an ended session`);
      assert.equal(v.records.at(-1)?.type, 'session.end');
      assert.equal(status.phase, 'Closed', `${subject}: ended before the kill, so Closed`);
    } else {
      // The last answered statement's outcome entry may still have been in the spool's next batch.
      assert.deepEqual(
        withoutOutcome.filter((text) => {
          const i = answered.indexOf(text);
          return i >= 0 && i < answered.length - 1;
        }),
        [],
        `${subject}: every outcome but the last answered statement's (${String(answered.length)} answered, ${String(texts.length)} decisions; records ${JSON.stringify(v.records.slice(-4).map((r) => [r.seq, r.type, r.command?.text, r.outcome?.status]))})`,
      );
      assert.equal(status.phase, 'Abandoned', `${subject}: killed, so Abandoned`);
    }
    assert.deepEqual(status.counters, expectedCounters(v.records), `${subject}: counters`);
  }
  return { merged };
}

/** Waits until the spool holds nothing: every segment acknowledged and deleted, no record pending. */
export async function spoolEmptied(sidecar: SidecarProcess, dir: string): Promise<void> {
  const spool = join(dir, 'audit', 'spool');
  await waitFor('the spool emptied', async () => {
    const segments = readdirSync(spool).filter((name) => /^segment-\d+\.log$/.test(name));
    const metrics = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
    const pending = /^chaperone_audit_pending_records (\d+)/m.exec(metrics)?.[1];
    const bytes = /^chaperone_audit_spool_bytes (\d+)/m.exec(metrics)?.[1];
    return segments.length === 0 && pending === '0' && bytes === '0' ? true : undefined;
  });
}

/** A copy of `kubeconfig` whose API server is 127.0.0.1:`port` (an outage forwarder in front of it). */
export function kubeconfigThrough(t: TestContext, kubeconfig: string, port: number): string {
  const config = parse(readFileSync(kubeconfig, 'utf8')) as { clusters: { cluster: { server: string } }[] };
  for (const c of config.clusters) {
    const url = new URL(c.cluster.server);
    url.port = String(port);
    c.cluster.server = url.origin;
  }
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'kubeconfig-through-outage');
  writeFileSync(file, stringify(config), { mode: 0o600 });
  return file;
}
