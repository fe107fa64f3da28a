// Starts the real sidecar (the chaperone-sidecar bin) as a child process in front of a PostgreSQL server:
// policies compiled by the real OPA binary into a bundle directory, a throwaway token issuer, JSON-lines
// audit and logs in a directory of the caller's choosing. Used by the test harness (startTestSidecar) and
// by the benchmarks (bench/run.ts), so both exercise the sidecar exactly as it is deployed.
import { spawn, type ChildProcess } from 'node:child_process';
import {
  createWriteStream,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import {
  BUNDLE_MANIFEST_FILE,
  BUNDLE_WASM_FILE,
  decodeAuditJsonLines,
  type AccessPolicySpec,
  type AuditRecord,
} from '@chaperone/api';
import { compilePolicy } from '../../operator/src/policy/compile-policy.ts';
import { SIDECAR_NODE_FLAGS } from '../../sidecar/src/bin/node-flags.ts';
import { stopProcess } from './processes.ts';
import { createTestIssuer, type TestIssuer } from './tokens.ts';
import { REPO_ROOT } from './tools.ts';

/**
 * The sidecar the tests run: its sources, or what CHAPERONE_SIDECAR_BIN names (for example the bundle the
 * image runs, `make build` → dist/sidecar-bundle/chaperone-sidecar.js), to run the same tests against it.
 */
export const SIDECAR_BIN =
  process.env.CHAPERONE_SIDECAR_BIN ?? join(REPO_ROOT, 'sidecar', 'src', 'bin', 'chaperone-sidecar.ts');

/** The V8 flags the sidecar runs with: the image's (node-flags.ts) when the tests run what CHAPERONE_SIDECAR_BIN names. */
export const SIDECAR_BIN_NODE_FLAGS: readonly string[] =
  process.env.CHAPERONE_SIDECAR_BIN === undefined ? [] : SIDECAR_NODE_FLAGS;

/** Allows everything; the policy for tests that exercise the protocol rather than the rules. */
export const ALLOW_ALL: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [{ name: 'everything', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

let bundleVersions = 0;

/** Compiles `spec` with OPA and writes it as bundle `name` into `bundleDir` (atomically, like a ConfigMap update). */
export async function writePolicyBundle(
  bundleDir: string,
  name: string,
  spec: AccessPolicySpec,
  namespace = 'default',
): Promise<string> {
  const compiled = await compilePolicy({ namespace, name, spec });
  if (!compiled.ok) throw new Error(`policy ${name} does not compile: ${JSON.stringify(compiled.errors)}`);
  // Like the kubelet's ConfigMap volumes: the new version goes into a fresh directory and a symlink is
  // renamed over the bundle's name, so the sidecar's poll never sees the bundle missing or half-written.
  const version = `.${name}.${process.pid}.${String(bundleVersions++)}`;
  mkdirSync(join(bundleDir, version));
  writeFileSync(join(bundleDir, version, BUNDLE_WASM_FILE), compiled.wasm);
  writeFileSync(
    join(bundleDir, version, BUNDLE_MANIFEST_FILE),
    JSON.stringify({ manifest: compiled.manifest, digest: compiled.digest }),
  );
  const link = join(bundleDir, `.${name}.link-${process.pid}`);
  rmSync(link, { force: true });
  symlinkSync(version, link);
  renameSync(link, join(bundleDir, name));
  return compiled.digest;
}

/** The PostgreSQL server the sidecar logs in to with its own credential. */
export interface SidecarUpstream {
  /** Host name the sidecar connects to; `localhost` matches the harness server certificate for verify-full. */
  readonly host?: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  readonly password: string;
  readonly caFile: string;
  /** libpq sslmode semantics; default verify-full against `caFile`. */
  readonly tlsMode?: 'disable' | 'require' | 'verify-ca' | 'verify-full';
  /** The least-privilege login for sessions whose policies grant no write (readOnlyUsernameFile/PasswordFile). */
  readonly readOnly?: { readonly user: string; readonly password: string };
}

export interface SidecarProcessOptions {
  /** Directory for the config, bundles, JWKS, credentials, audit file and log; created if missing. */
  readonly dir: string;
  /** The PostgreSQL upstream of the default listener; not needed when `listeners` replaces it. */
  readonly upstream?: SidecarUpstream;
  /** Listeners replacing the default PostgreSQL one (a Kubernetes or HTTP listener, in the config's form). */
  readonly listeners?: Record<string, unknown>[];
  /** Bundles by name; default one bundle `allow-all` with ALLOW_ALL. */
  readonly policies?: Record<string, AccessPolicySpec>;
  /** Namespace the bundles are compiled for (the listener's resource namespace). Default `default`. */
  readonly policyNamespace?: string;
  /** Extra trusted issuers in the config's identity.issuers form. */
  readonly extraIssuers?: Record<string, unknown>[];
  /** Overrides of the listener config. */
  readonly listener?: Record<string, unknown>;
  /** Extra keys of the config's `audit` section (spoolDir, kubernetes, ...); `path` stays the JSON-lines file. */
  readonly audit?: Record<string, unknown>;
  /** The pod written into records (default tests/test-pod); approvals need a real one. */
  readonly pod?: { readonly namespace: string; readonly name: string; readonly uid: string };
  /** The config's `approvals` section (holding commands for approval); default none. */
  readonly approvals?: Record<string, unknown>;
  /** How often the sidecar polls its bundle directory, ms; default 200 (tests see reloads quickly). */
  readonly policyPollIntervalMs?: number;
  /** Sidecar log level; default debug (what tests want to read on failure). */
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** The sidecar's eventLoops (docs/sidecar-event-loops.md); default the config's (unset: lazy loops). */
  readonly eventLoops?: number;
  /** The sidecar's lazyEventLoops settings (docs/sidecar-config.md). */
  readonly lazyEventLoops?: Record<string, unknown>;
  /** Entry point run with `node` instead of the chaperone-sidecar bin (same `--config FILE` interface). */
  readonly bin?: string;
  /** Environment of the sidecar process; default this process's. */
  readonly env?: NodeJS.ProcessEnv;
  /** Extra node options placed before the bin, e.g. `--cpu-prof`. */
  readonly nodeArgs?: readonly string[];
  /** Called with the child's pid as soon as it is spawned (for crash-safe bookkeeping). */
  readonly onSpawn?: (pid: number) => void;
}

export interface SidecarProcess {
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
  /**
   * The records once the file has stopped growing for a moment: the sidecar writes records in batches (its
   * JSON-lines worker thread, every 20–30 ms), so the last ones can trail a client's last answer slightly,
   * and the first ones the worker's start (up to 3 s are waited for a first line).
   */
  settledRecords(): Promise<{ session: { sessionId: string }; record: AuditRecord }[]>;
  logs(): string;
  stop(): Promise<void>;
}

interface ReadyLine {
  listeners: { port: number; host: string }[];
  metrics: { port: number };
}

/**
 * Sidecars of this process not stopped yet. A failing `after` hook skips the hooks registered after it, so a
 * test whose cleanup failed early would leave its sidecar running and the test file's process waiting on it
 * forever: under the test runner, one hook of the whole file kills what is left.
 */
const running = new Set<ChildProcess>();
if (process.env.NODE_TEST_CONTEXT !== undefined) {
  after(() => {
    for (const child of running) child.kill('SIGKILL');
  });
}

/** Writes the configuration, spawns the sidecar and resolves once it has reported `ready`. */
export async function spawnSidecar(options: SidecarProcessOptions): Promise<SidecarProcess> {
  const { dir, upstream } = options;
  const bundleDir = join(dir, 'bundles');
  mkdirSync(bundleDir, { recursive: true });
  for (const [name, spec] of Object.entries(options.policies ?? { 'allow-all': ALLOW_ALL })) {
    await writePolicyBundle(bundleDir, name, spec, options.policyNamespace);
  }
  const issuer = await createTestIssuer(join(dir, 'jwks.json'));
  if (upstream !== undefined) {
    writeFileSync(join(dir, 'username'), upstream.user);
    writeFileSync(join(dir, 'password'), upstream.password);
  }
  if (upstream?.readOnly !== undefined) {
    writeFileSync(join(dir, 'read-only-username'), upstream.readOnly.user);
    writeFileSync(join(dir, 'read-only-password'), upstream.readOnly.password);
  }
  const auditFile = join(dir, 'audit.jsonl');
  const logFile = join(dir, 'sidecar.log');
  const config = {
    pod: options.pod ?? { namespace: 'tests', name: 'test-pod', uid: 'test-pod-uid' },
    listeners: options.listeners ?? [
      {
        name: 'test-db',
        type: 'postgres',
        listen: '127.0.0.1:0',
        upstream: {
          host: upstream?.host ?? 'localhost',
          port: upstream?.port,
          database: upstream?.database,
          tls: { mode: upstream?.tlsMode ?? 'verify-full', caFile: upstream?.caFile },
          usernameFile: join(dir, 'username'),
          passwordFile: join(dir, 'password'),
          ...(upstream?.readOnly === undefined
            ? {}
            : {
                readOnlyUsernameFile: join(dir, 'read-only-username'),
                readOnlyPasswordFile: join(dir, 'read-only-password'),
              }),
        },
        resource: { namespace: 'default', labels: {} },
        auditFailureMode: 'FailClosed',
        ...options.listener,
      },
    ],
    policy: { bundleDir, pollIntervalMs: options.policyPollIntervalMs ?? 200 },
    identity: {
      issuers: [
        // The test issuer stands in for the cluster's service-account issuer (tests name service accounts).
        {
          issuer: issuer.issuer,
          jwksFile: issuer.jwksFile,
          serviceAccounts: true,
          audiences: ['chaperone'],
          algorithms: ['RS256'],
        },
        ...(options.extraIssuers ?? []),
      ],
    },
    audit: { path: auditFile, ...options.audit },
    ...(options.approvals === undefined ? {} : { approvals: options.approvals }),
    metrics: { listen: '127.0.0.1:0' },
    ...(options.eventLoops === undefined ? {} : { eventLoops: options.eventLoops }),
    ...(options.lazyEventLoops === undefined ? {} : { lazyEventLoops: options.lazyEventLoops }),
    log: { level: options.logLevel ?? 'debug' },
  };
  const configFile = join(dir, 'sidecar.yaml');
  writeFileSync(configFile, stringify(config));
  const log = createWriteStream(logFile);
  const child = spawn(
    process.execPath,
    [...SIDECAR_BIN_NODE_FLAGS, ...(options.nodeArgs ?? []), options.bin ?? SIDECAR_BIN, '--config', configFile],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(options.env === undefined ? {} : { env: options.env }),
    },
  );
  if (child.pid !== undefined) options.onSpawn?.(child.pid);
  running.add(child);
  child.once('exit', () => running.delete(child));
  child.stdout.pipe(log, { end: false });
  // 'close' comes after the exit and after every byte of stdout and stderr was read (and written to the log).
  const outputRead = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let ready: ReadyLine;
  try {
    ready = await new Promise<ReadyLine>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sidecar not ready in 30s; see ${logFile}`)), 30_000);
      createInterface({ input: child.stderr }).on('line', (line) => {
        log.write(`${line}\n`);
        if (line.includes('"msg":"ready"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as ReadyLine);
        }
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`sidecar exited with ${String(code)}: ${readFileSync(logFile, 'utf8')}`));
      });
    });
  } catch (err) {
    // Never leave a half-started sidecar behind.
    await stopProcess(child, 5_000).catch(() => undefined);
    log.end();
    throw err;
  }
  const listener = ready.listeners[0];
  if (listener === undefined) {
    await stopProcess(child, 5_000).catch(() => undefined);
    log.end();
    throw new Error('sidecar reported no listener');
  }
  const readRecords = (): { session: { sessionId: string }; record: AuditRecord }[] => {
    let text: string;
    try {
      text = readFileSync(auditFile, 'utf8');
    } catch {
      return [];
    }
    // Whole records, whichever line form the file uses (compact lines leave prevHash out, docs/audit.md).
    const decoded = decodeAuditJsonLines(text);
    // A last line being written may be cut; anything else wrong is a sidecar bug.
    const problem = decoded.problems.find((p) => p.kind !== 'malformed-line' || p.line < decoded.lines);
    if (problem !== undefined) throw new Error(`audit file line ${String(problem.line)}: ${problem.detail}`);
    return decoded.entries.map(({ session, record }) => ({ session, record }));
  };
  return {
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
    records: readRecords,
    async settledRecords() {
      const size = () => {
        try {
          return statSync(auditFile).size;
        } catch {
          return -1;
        }
      };
      // The JSON-lines worker thread starts with the sidecar's first record (docs/audit.md, "Where they are
      // sealed"): from sources on a busy machine that takes up to about half a second before the first line.
      for (let waited = 0; size() <= 0 && waited < 3_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
      let last = size();
      for (let quiet = 0; quiet < 2;) {
        await new Promise((r) => setTimeout(r, 100));
        const now = size();
        quiet = now === last ? quiet + 1 : 0;
        last = now;
      }
      return readRecords();
    },
    logs: () => readFileSync(logFile, 'utf8'),
    /** Stops the process; resolves once its whole output is in the log file. */
    async stop() {
      await stopProcess(child, 10_000);
      await outputRead;
      if (!log.writableEnded) await new Promise<void>((resolve) => log.end(resolve));
    },
  };
}
