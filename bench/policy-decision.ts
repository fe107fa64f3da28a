// Policy decision latency: a realistic 10-rule AccessPolicy compiled by the real opa binary, evaluated by
// the sidecar's PolicyEngine in WebAssembly. Run: node bench/policy-decision.ts
import type { AccessPolicySpec, PolicyIdentity, SqlCommand } from '@chaperone/api';
import { compilePolicy } from '@chaperone/operator/policy-compiler';
import { PolicyEngine, type PolicyRequest } from '@chaperone/sidecar/policy-engine';

export interface Percentiles {
  readonly p50: number;
  readonly p99: number;
}

export interface PolicyDecisionBenchResult {
  readonly uncached: Percentiles;
  readonly cached: Percentiles;
  readonly iterations: number;
  readonly compileMillis: number;
}

const SPEC: AccessPolicySpec = {
  resources: { names: ['orders-db'] },
  subjects: [
    { issuer: 'https://kubernetes.default.svc', subject: 'system:serviceaccount:ci:*', maxDelegationDepth: 3 },
    { groups: ['sre-*', 'dba'] },
  ],
  rules: [
    {
      name: 'deny-secrets',
      decision: 'deny',
      match: { sql: { relations: ['secret.*', 'vault.*'] } },
      message: 'secrets are off limits',
    },
    {
      name: 'deny-dangerous-functions',
      decision: 'deny',
      match: { sql: { functions: ['pg_read_file', 'pg_sleep*', 'dblink*'] } },
    },
    { name: 'deny-copy-from-program', decision: 'deny', match: { sql: { statementKinds: ['copy-from', 'do'] } } },
    { name: 'approve-ddl', decision: 'approve', match: { sql: { statementKinds: ['ddl', 'dcl'] } } },
    {
      name: 'night-maintenance',
      decision: 'allow',
      match: { sql: { statementKinds: ['maintenance', 'lock'] } },
      when: { timeWindows: [{ start: '22:00', end: '04:00', timeZone: 'Europe/Berlin' }] },
    },
    {
      name: 'reads',
      decision: 'allow',
      match: {
        sql: {
          statementKinds: ['select', 'show', 'explain'],
          relations: ['public.*', 'reporting.daily_*'],
          sideEffects: false,
        },
      },
    },
    {
      name: 'session',
      decision: 'allow',
      match: { sql: { statementKinds: ['transaction', 'set', 'prepare', 'execute'] } },
    },
    {
      name: 'writes-orders',
      decision: 'allow',
      match: { sql: { statementKinds: ['insert', 'update'], relations: ['public.orders', 'public.order_items'] } },
    },
    {
      name: 'approve-deletes',
      decision: 'approve',
      match: { sql: { statementKinds: ['delete', 'merge'], relations: ['public.*'] } },
    },
    { name: 'exports', decision: 'approve', match: { sql: { statementKinds: ['copy-to'] } } },
  ],
  defaultDecision: 'deny',
  approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '15m', allowSelfApproval: false },
  masking: [
    { name: 'pii-columns', columns: ['email', 'phone', 'public.customers.ssn'], strategy: 'hash' },
    { name: 'pii-content', detectors: ['email', 'credit-card'], strategy: 'redact' },
  ],
};

function percentiles(samples: BigInt64Array): Percentiles {
  const sorted = [...samples].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const at = (q: number) => Number(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0n) / 1000;
  return { p50: at(0.5), p99: at(0.99) };
}

/** Compiles the policy, then times `iterations` uncached and cached decisions. Latencies in µs. */
export async function runPolicyDecisionBench(iterations = 20_000): Promise<PolicyDecisionBenchResult> {
  const compiled = await compilePolicy({ namespace: 'shop', name: 'orders', spec: SPEC });
  if (!compiled.ok) throw new Error(`compile failed: ${JSON.stringify(compiled.errors)}`);
  const engine = new PolicyEngine({ cacheSize: 10_000 });
  await engine.replaceBundles([{ wasm: compiled.wasm, manifest: compiled.manifest, digest: compiled.digest }]);

  const identity: PolicyIdentity = {
    subject: 'system:serviceaccount:ci:builder',
    issuer: 'https://kubernetes.default.svc',
    groups: ['system:serviceaccounts', 'system:serviceaccounts:ci'],
    kind: 'ci',
    actor: { subject: 'system:serviceaccount:ci:runner', kind: 'ci' },
    chain: [{ subject: 'system:serviceaccount:ci:runner', kind: 'ci' }],
    depth: 1,
  };
  const commands: SqlCommand[] = [
    {
      type: 'sql',
      statements: [
        {
          kind: 'select',
          relations: ['public.orders', 'public.customers'],
          functions: ['pg_catalog.count'],
          sideEffects: false,
        },
      ],
    },
    { type: 'sql', statements: [{ kind: 'insert', relations: ['public.orders'], functions: [], sideEffects: true }] },
    { type: 'sql', statements: [{ kind: 'delete', relations: ['public.carts'], functions: [], sideEffects: true }] },
    { type: 'sql', statements: [{ kind: 'select', relations: ['secret.tokens'], functions: [], sideEffects: false }] },
  ];
  const requests: PolicyRequest[] = commands.map((command) => ({
    identity,
    resource: { name: 'orders-db', namespace: 'shop', type: 'postgres', labels: { app: 'orders' } },
    command,
    session: { id: 'bench', applicationName: 'psql', clientAddress: '10.0.0.7', inTransaction: false },
  }));
  const pick = (i: number): PolicyRequest => requests[i % requests.length] ?? assert();

  // Warm up the JIT and the wasm instance.
  for (let i = 0; i < 5_000; i++) engine.decide(pick(i), `warm-${i}`);
  engine.clearCache();

  const uncached = new BigInt64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const req = pick(i);
    const fp = `u-${i}`;
    const t0 = process.hrtime.bigint();
    engine.decide(req, fp);
    uncached[i] = process.hrtime.bigint() - t0;
  }
  const cached = new BigInt64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const req = pick(i);
    const fp = `c-${i % requests.length}`;
    const t0 = process.hrtime.bigint();
    engine.decide(req, fp);
    cached[i] = process.hrtime.bigint() - t0;
  }
  return {
    uncached: percentiles(uncached),
    cached: percentiles(cached),
    iterations,
    compileMillis: compiled.opaMillis,
  };
}

function assert(): never {
  throw new Error('unreachable');
}

if (import.meta.main) {
  const r = await runPolicyDecisionBench();
  const row = (name: string, p: Percentiles, target: number) =>
    `${name.padEnd(10)} ${p.p50.toFixed(2).padStart(9)} ${p.p99.toFixed(2).padStart(9)} ${`≤ ${target}`.padStart(10)}`;
  console.log(
    `policy decision latency, ${r.iterations} decisions each, 10-rule policy (opa compile ${r.compileMillis.toFixed(0)} ms)`,
  );
  console.log(`${'mode'.padEnd(10)} ${'p50 µs'.padStart(9)} ${'p99 µs'.padStart(9)} ${'p50 target'.padStart(10)}`);
  console.log(row('uncached', r.uncached, 20));
  console.log(row('cached', r.cached, 2));
}
