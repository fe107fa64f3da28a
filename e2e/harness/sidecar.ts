// Runs the real sidecar (the chaperone-sidecar bin, as a child process) against the harness PostgreSQL,
// with policies compiled by the real OPA binary and a throwaway token issuer. The process handling lives
// in sidecar-process.ts (shared with the benchmarks); this file binds it to a test's context.
import type { TestContext } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { postgresEnv, testDir } from './env.ts';
import { spawnSidecar, type SidecarProcess } from './sidecar-process.ts';

export { ALLOW_ALL, SIDECAR_BIN, writePolicyBundle } from './sidecar-process.ts';

/** Reads, session settings and transaction control only: the read-only policy of the corpus. */
export const READ_ONLY: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'reads',
      decision: 'allow',
      match: { sql: { statementKinds: ['select', 'show', 'explain', 'set', 'transaction'], sideEffects: false } },
    },
  ],
  defaultDecision: 'deny',
};

export type RunningTestSidecar = SidecarProcess;

export interface SidecarOptions {
  policies?: Record<string, AccessPolicySpec>;
  /** Extra trusted issuers in the config's identity.issuers form. */
  extraIssuers?: Record<string, unknown>[];
  /** Overrides of the listener config. */
  listener?: Record<string, unknown>;
  /** Upstream database the sidecar logs in to; default the harness database. */
  database?: string;
  /** The least-privilege login for sessions whose policies grant no write. */
  readOnly?: { user: string; password: string };
  /** Entry point run instead of the chaperone-sidecar bin (same command line). */
  bin?: string;
  /** How often the sidecar polls its bundle directory, ms (default 200). */
  policyPollIntervalMs?: number;
  /** The sidecar's eventLoops (docs/sidecar-event-loops.md). */
  eventLoops?: number;
  /** The sidecar's lazyEventLoops settings (docs/sidecar-config.md). */
  lazyEventLoops?: Record<string, unknown>;
  /** Tells apart several sidecars of one test: each gets its own directory (config, bundles, audit file). */
  instance?: string;
}

export async function startTestSidecar(t: TestContext, options: SidecarOptions = {}): Promise<RunningTestSidecar> {
  const pg = postgresEnv();
  const running = await spawnSidecar({
    dir: options.instance === undefined ? testDir(t) : `${testDir(t)}-${options.instance}`,
    upstream: {
      host: 'localhost',
      port: pg.port,
      database: options.database ?? pg.database,
      user: pg.user,
      password: pg.password,
      caFile: pg.caFile,
      ...(options.readOnly === undefined ? {} : { readOnly: options.readOnly }),
    },
    ...(options.policies === undefined ? {} : { policies: options.policies }),
    ...(options.extraIssuers === undefined ? {} : { extraIssuers: options.extraIssuers }),
    ...(options.listener === undefined ? {} : { listener: options.listener }),
    ...(options.bin === undefined ? {} : { bin: options.bin }),
    ...(options.policyPollIntervalMs === undefined ? {} : { policyPollIntervalMs: options.policyPollIntervalMs }),
    ...(options.eventLoops === undefined ? {} : { eventLoops: options.eventLoops }),
    ...(options.lazyEventLoops === undefined ? {} : { lazyEventLoops: options.lazyEventLoops }),
    logLevel: 'debug',
  });
  t.after(() => running.stop());
  return running;
}
