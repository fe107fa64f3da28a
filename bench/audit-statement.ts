// Audit bytes and CPU per statement in process, without sockets: AgentSession decides and completes
// pgbench's simple select (`SELECT abalance FROM pgbench_accounts WHERE aid = N;`, an allow-all decision as
// the policy cache returns it, one object) and writes through the JSON-lines sink, or through a spool-like
// sink (the canonical text UTF-8-encoded, as the spool appends it), or through the durable sink as the sidecar
// runs it in Kubernetes mode (`durable`: a real spool with durability `Written` in a temporary directory, the
// Session writer in the audit worker thread; its operator endpoint does not answer, so records only pile up
// in the spool and the worker, and what is measured is the main thread's share). Between decide and complete
// it lets queued microtasks run, as the engine's turns do, and waits for the decision's clearance (the spool's
// write) as the engine does. CPU is per statement over rounds (min and median), of the process
// (process.cpuUsage), and of its main thread alone (process.threadCpuUsage: with `durable` the worker's is
// not the serial stage), so it can be compared under load, A/B against another tree (an unchanged copy of main).
// `json-lines-worker`: the JSON-lines sink as the sidecar runs it (json-lines-writer.ts: records handed to its
// worker thread as members, sealed there), writing to /dev/null.
// Run: node bench/audit-statement.ts [--sink json-lines|json-lines-worker|spool-like|durable] [--tree DIR]
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type * as AgentSessionModule from '../sidecar/src/core/agent-session.ts';
import type * as AuditSinkModule from '../sidecar/src/core/audit/audit-sink.ts';
import type * as JsonLinesWriterModule from '../sidecar/src/core/audit/json-lines-writer.ts';
import type * as DurableSinkModule from '../sidecar/src/core/audit/durable-audit-sink.ts';
import type * as SigningKeyModule from '../sidecar/src/core/audit/signing-key.ts';
import type * as LoggerModule from '../sidecar/src/core/observability/logger.ts';
import type * as PodChainModule from '../sidecar/src/core/audit/pod-chain.ts';
import type * as MetricsModule from '../sidecar/src/core/observability/metrics.ts';

const { values } = parseArgs({
  options: {
    sink: { type: 'string', default: 'json-lines' },
    tree: { type: 'string' },
    /** Statements per round, and rounds (smaller under valgrind: `--tool=callgrind --separate-threads=yes`). */
    statements: { type: 'string' },
    rounds: { type: 'string' },
  },
});
const tree = resolve(values.tree ?? join(import.meta.dirname, '..'));
const core = join(tree, 'sidecar', 'src', 'core');
const { AgentSession } = (await import(join(core, 'agent-session.ts'))) as typeof AgentSessionModule;
const { JsonLinesSink } = (await import(join(core, 'audit', 'audit-sink.ts'))) as typeof AuditSinkModule;
const { PodChain } = (await import(join(core, 'audit', 'pod-chain.ts'))) as typeof PodChainModule;
const { createSidecarMetrics } = (await import(join(core, 'observability', 'metrics.ts'))) as typeof MetricsModule;
type Sink = ConstructorParameters<typeof AgentSession>[0]['sink'];
type Session = InstanceType<typeof AgentSession>;

const DECISION = {
  decision: 'allow',
  policy: 'bench/allow-all',
  rule: 'everything',
  bundleDigest: `sha256:${'ab'.repeat(32)}`,
  reasons: ['rule everything decided allow for statement 1 (select)'],
  masking: [],
} as const;
const relations = Object.freeze(['public.pgbench_accounts']);
const statementKinds = Object.freeze(['select']);
const command = {
  type: 'sql',
  statements: [{ kind: 'select', relations, functions: [], sideEffects: false }],
} as const;
const metrics = createSidecarMetrics({ defaultMetrics: false });

function session(sink: Sink): Session {
  return new AgentSession({
    policy: { decide: () => DECISION },
    sink,
    podChain: PodChain.inMemory({ namespace: 'bench', name: 'bench-sidecar-7f9c' }),
    metrics,
    listener: 'postgres',
    resource: { name: 'bench-postgres', namespace: 'bench', type: 'postgres', labels: {} },
    pod: { name: 'bench-sidecar-7f9c', namespace: 'bench' },
    identity: { subject: 'system:serviceaccount:bench:agent', issuer: 'https://issuer.example' },
    source: { address: '127.0.0.1:51234', applicationName: 'pgbench', user: 'agent', database: 'bench' },
    auditFailureMode: 'FailClosed',
  });
}

async function statements(s: Session, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const text = `SELECT abalance FROM pgbench_accounts WHERE aid = ${String(1 + ((i * 7919) % 100000))};`;
    const decided = s.decide({ command, fingerprint: 'f', text, statementKinds, relations }, { inTransaction: false });
    if (decided.audit.state === 'pending') await decided.audit.settled;
    await Promise.resolve();
    s.complete(decided, 'sql', { status: 'success', rows: 1 });
    await Promise.resolve();
  }
}

/** What the spool does with a record: its canonical text, UTF-8-encoded (`canonical` a string before format 3). */
function spoolLikeSink(): Sink {
  let bytes = 0;
  return {
    deferrable: false,
    write(_origin, _record, sealed?: unknown) {
      const text = typeof sealed === 'string' ? sealed : (sealed as { canonical: string }).canonical;
      bytes += Buffer.from(`{"r":${text}}`).length;
    },
    whenDurable: () => undefined,
    flush: () => Promise.resolve(),
    close: () => {
      console.log(`spool-like: ${String(bytes)} bytes encoded`);
      return Promise.resolve();
    },
  };
}

// Bytes and records per statement, from a file.
const file = join(tmpdir(), `audit-statement-${String(process.pid)}.jsonl`);
const STATEMENTS = Number(values.statements ?? 10_000);
{
  const sink = new JsonLinesSink(file);
  const s = session(sink);
  await statements(s, STATEMENTS);
  s.end('client disconnected');
  await sink.close();
  const lines = readFileSync(file, 'utf8').trimEnd().split('\n').length;
  console.log(
    `json-lines: ${(statSync(file).size / STATEMENTS).toFixed(1)} bytes, ${(lines / STATEMENTS).toFixed(3)} records per statement`,
  );
  rmSync(file);
}

/** The durable sink as the sidecar runs it in Kubernetes mode, writing into a temporary spool. */
async function durableSink(dir: string): Promise<Sink & { close(): Promise<void> }> {
  const { DurableAuditSink } = (await import(join(core, 'audit', 'durable-audit-sink.ts'))) as typeof DurableSinkModule;
  const { loadOrCreateSigningKey } = (await import(join(core, 'audit', 'signing-key.ts'))) as typeof SigningKeyModule;
  const { createLogger } = (await import(join(core, 'observability', 'logger.ts'))) as typeof LoggerModule;
  const sink = await DurableAuditSink.open({
    spoolDir: join(dir, 'spool'),
    spoolMaxBytes: 4 * 1024 * 1024 * 1024,
    spoolDurability: 'Written',
    flushIntervalMs: 1000,
    signingKey: await loadOrCreateSigningKey(join(dir, 'signing-key.jwk')),
    pod: { name: 'bench-sidecar-7f9c', namespace: 'bench' },
    logger: createLogger({ level: 'error', write: () => undefined }),
    worker: {
      sessionStore: {
        kind: 'operator',
        options: { url: 'https://127.0.0.1:9/sessions', tokenFile: join(dir, 'no-token'), namespace: 'bench' },
      },
      log: { level: 'error', base: {} },
    },
  });
  await sink.ready();
  return sink;
}

/** CPU time of this (the main) thread, µs. */
function mainThreadMicros(): number {
  const used = process.threadCpuUsage();
  return used.user + used.system;
}

const spoolDir = values.sink === 'durable' ? mkdtempSync(join(tmpdir(), 'audit-statement-spool-')) : undefined;
const sink =
  spoolDir !== undefined
    ? await durableSink(spoolDir)
    : values.sink === 'spool-like'
      ? spoolLikeSink()
      : values.sink === 'json-lines-worker'
        ? (
            (await import(join(core, 'audit', 'json-lines-writer.ts'))) as typeof JsonLinesWriterModule
          ).JsonLinesWriter.open('/dev/null', (err) => {
            throw err;
          })
        : new JsonLinesSink('/dev/null');
const rounds = Number(values.rounds ?? (spoolDir === undefined ? 15 : 9));
const s = session(sink);
await statements(s, 2 * STATEMENTS); // warm-up
const perStatement: number[] = [];
const mainPerStatement: number[] = [];
for (let round = 0; round < rounds; round++) {
  const before = process.cpuUsage();
  const mainBefore = mainThreadMicros();
  await statements(s, STATEMENTS);
  if (spoolDir === undefined) await sink.flush();
  const used = process.cpuUsage(before);
  mainPerStatement.push((mainThreadMicros() - mainBefore) / STATEMENTS);
  perStatement.push((used.user + used.system) / STATEMENTS);
}
const summary = (values: number[]): string => {
  values.sort((a, b) => a - b);
  return `min ${(values[0] ?? 0).toFixed(2)} µs, median ${(values[values.length >> 1] ?? 0).toFixed(2)} µs`;
};
console.log(
  `${values.sink} CPU per statement: ${summary(perStatement)}; main thread ${summary(mainPerStatement)} (tree ${tree})`,
);
if (spoolDir !== undefined) {
  // Nothing was acknowledged (the endpoint does not answer): close without waiting for it.
  await Promise.race([sink.close(), new Promise((resolve) => setTimeout(resolve, 100))]);
  rmSync(spoolDir, { recursive: true, force: true });
  process.exit(0);
}
await sink.close();
