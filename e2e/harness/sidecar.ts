// Runs the real sidecar (the chaperone-sidecar bin, as a child process) against the harness PostgreSQL,
// with policies compiled by the real OPA binary and a throwaway token issuer.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import type { TestContext } from 'node:test';
import { BUNDLE_MANIFEST_FILE, BUNDLE_WASM_FILE, type AccessPolicySpec, type AuditRecord } from '@chaperone/api';
import { compilePolicy } from '../../operator/src/policy/compile-policy.ts';
import { postgresEnv, testDir } from './env.ts';
import { stopProcess } from './processes.ts';
import { createTestIssuer, type TestIssuer } from './tokens.ts';
import { REPO_ROOT } from './tools.ts';

export const SIDECAR_BIN = join(REPO_ROOT, 'sidecar', 'src', 'bin', 'chaperone-sidecar.ts');

/** Allows everything; the policy for tests that exercise the protocol rather than the rules. */
export const ALLOW_ALL: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

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

/** Compiles `spec` with OPA and writes it as bundle `name` into `bundleDir` (atomically, like a ConfigMap update). */
export async function writePolicyBundle(
  bundleDir: string,
  name: string,
  spec: AccessPolicySpec,
  namespace = 'default',
): Promise<string> {
  const compiled = await compilePolicy({ namespace, name, spec });
  if (!compiled.ok) throw new Error(`policy ${name} does not compile: ${JSON.stringify(compiled.errors)}`);
  const tmp = join(bundleDir, `.${name}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  writeFileSync(join(tmp, BUNDLE_WASM_FILE), compiled.wasm);
  writeFileSync(
    join(tmp, BUNDLE_MANIFEST_FILE),
    JSON.stringify({ manifest: compiled.manifest, digest: compiled.digest }),
  );
  rmSync(join(bundleDir, name), { recursive: true, force: true });
  renameSync(tmp, join(bundleDir, name));
  return compiled.digest;
}

export interface RunningTestSidecar {
  readonly host: string;
  readonly port: number;
  readonly metricsPort: number;
  readonly issuer: TestIssuer;
  readonly dir: string;
  readonly bundleDir: string;
  readonly auditFile: string;
  readonly logFile: string;
  readonly process: ChildProcess;
  /** Environment for libpq clients (psql, pgbench) to connect through the sidecar with `token`. */
  libpqEnv(token: string, extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** Every audit record written so far, in order. */
  records(): { session: { sessionId: string }; record: AuditRecord }[];
  logs(): string;
  stop(): Promise<void>;
}

export interface SidecarOptions {
  policies?: Record<string, AccessPolicySpec>;
  /** Extra trusted issuers in the config's identity.issuers form. */
  extraIssuers?: Record<string, unknown>[];
  /** Overrides of the listener config. */
  listener?: Record<string, unknown>;
}

export async function startTestSidecar(t: TestContext, options: SidecarOptions = {}): Promise<RunningTestSidecar> {
  const pg = postgresEnv();
  const dir = testDir(t);
  const bundleDir = join(dir, 'bundles');
  mkdirSync(bundleDir, { recursive: true });
  for (const [name, spec] of Object.entries(options.policies ?? { 'allow-all': ALLOW_ALL })) {
    await writePolicyBundle(bundleDir, name, spec);
  }
  const issuer = await createTestIssuer(join(dir, 'jwks.json'));
  writeFileSync(join(dir, 'username'), pg.user);
  writeFileSync(join(dir, 'password'), pg.password);
  const auditFile = join(dir, 'audit.jsonl');
  const logFile = join(dir, 'sidecar.log');
  const config = {
    pod: { namespace: 'tests', name: 'test-pod', uid: 'test-pod-uid' },
    listeners: [
      {
        name: 'test-db',
        type: 'postgres',
        listen: '127.0.0.1:0',
        upstream: {
          host: 'localhost',
          port: pg.port,
          database: pg.database,
          tls: { mode: 'verify-full', caFile: pg.caFile },
          usernameFile: join(dir, 'username'),
          passwordFile: join(dir, 'password'),
        },
        resource: { namespace: 'default', labels: {} },
        auditFailureMode: 'FailClosed',
        ...options.listener,
      },
    ],
    policy: { bundleDir, pollIntervalMs: 200 },
    identity: {
      issuers: [
        { issuer: issuer.issuer, jwksFile: issuer.jwksFile, audiences: ['chaperone'], algorithms: ['RS256'] },
        ...(options.extraIssuers ?? []),
      ],
    },
    audit: { path: auditFile },
    metrics: { listen: '127.0.0.1:0' },
    log: { level: 'debug' },
  };
  const configFile = join(dir, 'sidecar.yaml');
  writeFileSync(configFile, stringify(config));
  const log = createWriteStream(logFile);
  const child = spawn(process.execPath, [SIDECAR_BIN, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log);
  const ready = await new Promise<{ listeners: { port: number; host: string }[]; metrics: { port: number } }>(
    (resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sidecar not ready in 30s; see ${logFile}`)), 30_000);
      createInterface({ input: child.stderr }).on('line', (line) => {
        log.write(`${line}\n`);
        if (line.includes('"msg":"ready"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as { listeners: { port: number; host: string }[]; metrics: { port: number } });
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`sidecar exited with ${String(code)}: ${readFileSync(logFile, 'utf8')}`));
      });
    },
  );
  const listener = ready.listeners[0];
  if (listener === undefined) throw new Error('sidecar reported no listener');
  const running: RunningTestSidecar = {
    host: listener.host,
    port: listener.port,
    metricsPort: ready.metrics.port,
    issuer,
    dir,
    bundleDir,
    auditFile,
    logFile,
    process: child,
    libpqEnv(token, extra = {}) {
      return {
        ...process.env,
        PGHOST: listener.host,
        PGPORT: String(listener.port),
        PGUSER: 'agent',
        PGDATABASE: 'agent-db',
        PGPASSWORD: token,
        PGSSLMODE: 'disable',
        PGAPPNAME: 'chaperone-test',
        ...extra,
      };
    },
    records() {
      let text: string;
      try {
        text = readFileSync(auditFile, 'utf8');
      } catch {
        return [];
      }
      return text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as { session: { sessionId: string }; record: AuditRecord });
    },
    logs: () => readFileSync(logFile, 'utf8'),
    async stop() {
      await stopProcess(child, 10_000);
      log.end();
    },
  };
  t.after(() => running.stop());
  return running;
}
