// `make demo`: starts a local control plane and PostgreSQL, installs the CRDs and examples, and walks
// through what Chaperone does, printing each step and the real output of kubectl and psql. Then the real
// components end to end on real pods: a local node (e2e/harness/node.ts), `helm install` of the chart with
// the images `make images` built (the operator as two pods), an agent Deployment injected by the webhook
// and run by the kubelet with its sidecar, psql inside the agent container with only its env and token, a
// policy change reaching a live session, a statement held for approval and approved by another person with
// `kubectl chaperone approve` (e2e/approvals/demo-held-statement.ts), and the auditor's view of the Session
// objects the sidecar wrote.
// When the node cannot start (or with --no-node), the same story with the operator bin and the injected
// sidecar as local processes (the sidecar started from the stored pod spec), plus nested agents through the
// token exchange (e2e/identity/demo-nested-agents.ts), which the chart does not enable yet.
// Everything it starts is stopped at the end (or on Ctrl-C); pass --keep to leave it running until Ctrl-C.
import { execFileSync, spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type Session } from '@chaperone/api';
import { startControlPlane, type ControlPlane } from './harness/control-plane.ts';
import { ENV } from './harness/env.ts';
import { applyCrds } from './harness/kube.ts';
import { SIDECAR_CONTAINER } from '../operator/src/injection/constants.ts';
import { materialiseSidecar, materialiseVolumes, type MaterialisedSidecar } from './harness/materialise-pod.ts';
import { LOCAL_NODE_TOLERATION, builtImageRef, startLocalNode, type LocalNode } from './harness/node.ts';
import { freePort, startPostgres, type PostgresCluster } from './harness/postgres.ts';
import { createRunDirectory, stopProcess } from './harness/processes.ts';
import { REPO_ROOT, toolPath } from './harness/tools.ts';
import { nestedAgents } from './identity/demo-nested-agents.ts';
import { heldStatementApproved } from './approvals/demo-held-statement.ts';

const keep = process.argv.includes('--keep');
const started = Date.now();
let controlPlane: ControlPlane | undefined;
let postgres: PostgresCluster | undefined;
let operator: ChildProcess | undefined;
let sidecar: MaterialisedSidecar | undefined;
let liveSession: ChildProcess | undefined;
let node: LocalNode | undefined;
let operatorStopping = false;
const runDir = createRunDirectory();

const bold = (s: string) => `\x1b[1m${s}\x1b[0m`;
const dim = (s: string) => `\x1b[2m${s}\x1b[0m`;
let stepNumber = 0;

function step(title: string): void {
  stepNumber++;
  console.log(`\n${bold(`== ${String(stepNumber)}. ${title}`)}`);
}

function note(text: string): void {
  console.log(`\x1b[36m# ${text}\x1b[0m`);
}

function show(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; input?: string; display?: string } = {},
): string {
  const shown = options.display ?? [command.split('/').at(-1), ...args].join(' ');
  if (options.input === undefined) console.log(dim(`$ ${shown}`));
  else console.log(dim(`$ ${shown} <<EOF\n${options.input.trimEnd()}\nEOF`));
  const out = execFileSync(command, args, {
    encoding: 'utf8',
    env: options.env ?? process.env,
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    ...(options.input === undefined ? {} : { input: options.input }),
  });
  process.stdout.write(out);
  return out;
}

/** Runs a command that is expected to fail and prints its stderr (the point of the step). */
function showFailure(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; input?: string; display?: string; lastLine?: boolean } = {},
): string {
  try {
    show(command, args, options);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? err).trim();
    // kubectl repeats its discovery errors before the one that matters.
    console.log(options.lastLine === true ? (stderr.split('\n').at(-1) ?? '') : stderr);
    return stderr;
  }
  throw new Error(`${options.display ?? command} succeeded but was expected to fail`);
}

/** Card numbers of the demo's customers (Luhn-valid test numbers), masked for agents by the example policy. */
const CARDS = ['4111 1111 1111 1111', '5500 0000 0000 0004'] as const;
const CARD_QUERY = 'select id, name, card_number from customers order by id';

/** The masking step's check: the agent saw no card number but its last four digits; the platform team all of them. */
function checkMasked(agentOutput: string, directOutput: string): void {
  for (const card of CARDS) {
    if (agentOutput.includes(card) || !agentOutput.includes(card.slice(-4)) || !directOutput.includes(card)) {
      throw new Error(`masking step: expected ${card} masked for the agent and clear for the platform team`);
    }
  }
}

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out waiting for ${what}${last === undefined ? '' : `: ${last instanceof Error ? last.message : JSON.stringify(last)}`}`,
      );
    }
    await sleep(200);
  }
}

async function cleanup(): Promise<void> {
  liveSession?.kill('SIGTERM');
  await sidecar?.stop().catch(() => undefined);
  operatorStopping = true;
  if (operator !== undefined) await stopProcess(operator, 10_000).catch(() => undefined);
  // The node first, while the API server it tidies up after runs.
  await node?.stop().catch(() => undefined);
  await Promise.allSettled([controlPlane?.stop(), postgres?.stop()]);
  rmSync(runDir, { recursive: true, force: true });
}

const interrupt = { requested: false };
process.once('SIGINT', () => {
  interrupt.requested = true;
  console.log('\ninterrupted; stopping everything the demo started');
  void cleanup().finally(() => process.exit(130));
});

/**
 * Waits until the operator logged every given message since `from` (an index into its log), then prints
 * those lines compactly. (The demo's commands run synchronously, so the log is read between them.)
 */
async function printOperatorLog(lines: readonly string[], messages: readonly string[], from = 0): Promise<void> {
  await until(`the operator to log ${messages.join(', ')}`, () =>
    messages.every((m) => lines.slice(from).some((l) => l.includes(`"msg":"${m}"`))) ? true : undefined,
  );
  for (const line of lines.slice(from)) {
    try {
      const { time, level, msg, component: _c, ...fields } = JSON.parse(line) as Record<string, unknown>;
      if (typeof msg !== 'string' || !messages.includes(msg)) continue;
      const rest = Object.entries(fields)
        .filter(([k]) => !['controller', 'reconcileID', 'identity', 'key'].includes(k))
        .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
        .join(' ');
      console.log(dim(`operator log: ${String(time).slice(11, 23)} ${String(level)} ${msg} ${rest}`));
    } catch {
      // not a JSON log line
    }
  }
}

/** The claims of a JWT (no verification: the sidecar verifies; this only shows what the token says). */
function claims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

/** The live session's statement (the step "A policy change reaches a live session"). */
const LIVE_SESSION_STATEMENT = 'select pg_backend_pid() as upstream_pid';

/**
 * The Session object of the live session: the one whose records hold its statement. (Not the newest one:
 * the held statement's session comes after it.)
 */
function liveSessionOf(sessions: readonly Session[]): Session {
  const live = sessions.find((s) =>
    s.spec.records.some((r) => r.command?.text?.startsWith(LIVE_SESSION_STATEMENT) === true),
  );
  if (live === undefined) throw new Error('no Session object holds the live session');
  return live;
}

/** psql as a long-lived process driven through its stdin: one client session, statement by statement. */
function startLiveSession(env: NodeJS.ProcessEnv): LiveSession {
  const child = spawn('psql', ['-X', '-v', 'VERBOSITY=verbose'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  liveSession = child;
  return driveSession(child);
}

interface LiveSession {
  run(sql: string): Promise<void>;
  close(): Promise<void>;
}

/** Drives a psql child process through its stdin, printing each statement's answer. */
function driveSession(child: ChildProcessWithoutNullStreams): LiveSession {
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const MARK = '--chaperone-demo-done--';
  return {
    async run(sql) {
      console.log(dim(`psql> ${sql}`));
      child.stdin.write(`${sql}\n\\echo ${MARK}\n`);
      await until('psql to answer', () => (out.includes(MARK) ? true : undefined), 30_000);
      await sleep(50); // stderr of the same statement may arrive just after stdout
      const text = (out.replace(`${MARK}\n`, '') + err).trimEnd();
      out = '';
      err = '';
      if (text !== '') console.log(text);
    },
    async close() {
      child.stdin.end('\\q\n');
      await new Promise((resolve) => child.once('exit', resolve));
      liveSession = undefined;
    },
  };
}

try {
  step('Starting a local control plane (etcd + kube-apiserver + controller manager) and PostgreSQL');
  [controlPlane, postgres] = await Promise.all([startControlPlane(runDir), startPostgres(runDir)]);
  console.log(`API server ${controlPlane.server}, PostgreSQL 127.0.0.1:${postgres.port} (TLS, scram-sha-256)`);
  // The harness helpers (kube clients, the pod materialiser) find the servers through these, as in tests.
  Object.assign(process.env, {
    [ENV.runDir]: runDir,
    [ENV.kubeconfig]: controlPlane.kubeconfig,
    [ENV.apiServer]: controlPlane.server,
    [ENV.issuer]: controlPlane.issuer,
    [ENV.apiCa]: controlPlane.caFile,
    KUBECONFIG: controlPlane.kubeconfig,
  });
  console.log(dim(`$ export KUBECONFIG=${controlPlane.kubeconfig}`));
  const kubectl = toolPath('kubectl');
  const kube = (...args: string[]) => show(kubectl, args);
  const kubeIn = (input: string, ...args: string[]) => show(kubectl, args, { input });
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(controlPlane.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);

  step('Installing the Chaperone CRDs');
  await applyCrds(controlPlane.kubeconfig);
  kube('get', 'crd', '-l', 'app.kubernetes.io/part-of=chaperone');

  step('Creating the example ProtectedResources, AccessPolicy, Session and ApprovalRequest');
  kube('create', 'namespace', 'demo');
  kube('apply', '-n', 'demo', '-f', join(REPO_ROOT, 'examples'));

  step('Everything Chaperone manages, by category');
  note('the examples as the API server stored them: no operator runs yet, so READY, REASON and PHASE are');
  note('empty; the objects the demo makes later, with the operator running, get them');
  kube('get', 'chaperone', '-n', 'demo');

  step('The auditor view of sessions');
  kube('get', 'sessions', '-n', 'demo', '-o', 'wide');

  step('The API server enforces the schema: a postgres resource without a host is refused');
  showFailure(kubectl, ['apply', '-n', 'demo', '-f', '-'], {
    input:
      'apiVersion: chaperone.dev/v1alpha1\nkind: ProtectedResource\nmetadata: {name: broken}\nspec:\n  type: postgres\n  endpoint: {database: x}\n  credentialSecretRef: {name: s}\n',
  });

  step('Records are append-only: removing a record from a Session is refused');
  showFailure(kubectl, [
    'patch',
    'session',
    'orders-db-4f1c2a',
    '-n',
    'demo',
    '--type=json',
    '-p',
    '[{"op":"remove","path":"/spec/records/0"}]',
  ]);

  const direct = {
    ...process.env,
    PGHOST: 'localhost',
    PGPORT: String(postgres.port),
    PGUSER: postgres.user,
    PGPASSWORD: postgres.password,
    PGDATABASE: postgres.database,
    PGSSLMODE: 'verify-full',
    PGSSLROOTCERT: postgres.caFile,
  };
  step('PostgreSQL is reachable over verify-full TLS with scram-sha-256; seeding the orders database');
  show('psql', ['-X', '-c', 'select current_user, ssl, version as tls from pg_stat_ssl where pid = pg_backend_pid()'], {
    env: direct,
  });
  show(
    'psql',
    [
      '-X',
      '-q',
      '-c',
      `create table orders (id int primary key, customer_id int, status text, total numeric(10,2));
create table customers (id int primary key, name text, email text, card_number text);
insert into customers values (1, 'Ada Lovelace', 'ada@example.com', '${CARDS[0]}'), (2, 'Grace Hopper', 'grace@example.com', '${CARDS[1]}');
insert into orders values (1001, 1, 'shipped', 129.90), (1002, 2, 'pending', 42.00), (1003, 1, 'pending', 7.50);`,
    ],
    { env: direct },
  );

  const reader = createReaderLogin(postgres, direct);

  const demo: DemoContext = { controlPlane, postgres, direct, reader, kubectl, kube, kubeIn, kc, core };
  let finish: () => Promise<void>;
  node = process.argv.includes('--no-node') ? undefined : await startNodeOrExplain(controlPlane);
  if (node === undefined) finish = await localProcessDemo(demo);
  else finish = await realPodsDemo(demo, node);

  if (keep) {
    step(`Left running; KUBECONFIG=${controlPlane.kubeconfig}. Press Ctrl-C to stop.`);
    await new Promise(() => undefined);
  }
  step('Done; stopping everything the demo started');
  await finish();
  console.log(`demo took ${((Date.now() - started) / 1000).toFixed(0)} s`);
} catch (err) {
  // Ctrl-C tears the servers down under the running step; its error is not news.
  if (interrupt.requested) await new Promise(() => undefined);
  console.error(`\n\x1b[31mdemo failed: ${err instanceof Error ? err.message : String(err)}\x1b[0m`);
  // execFileSync's message already ends with the command's stderr; print it only when it does not.
  const stderr = (err as { stderr?: string }).stderr;
  const message = err instanceof Error ? err.message : '';
  if (typeof stderr === 'string' && stderr.trim() !== '' && !message.includes(stderr.trim())) console.error(stderr);
  process.exitCode = 1;
} finally {
  if (!keep || process.exitCode === 1) await cleanup();
}

function currentDigest(kubectl: string): string {
  return execFileSync(
    kubectl,
    ['get', 'accesspolicy', 'orders-readonly', '-n', 'ci', '-o', 'jsonpath={.status.bundle.digest}'],
    { encoding: 'utf8' },
  ).trim();
}

/** The injected parts of a pod, compactly: sidecar, agent env and mounts, volumes, token automount. */
function summarisePod(pod: k8s.V1Pod): string {
  const spec = pod.spec;
  const lines: string[] = [];
  const sidecarContainer = spec?.initContainers?.find((ic) => ic.name === SIDECAR_CONTAINER);
  if (sidecarContainer !== undefined) {
    lines.push(
      `initContainers[0]: ${sidecarContainer.name} image=${String(sidecarContainer.image)} ` +
        `restartPolicy=${String(sidecarContainer.restartPolicy)} (native sidecar) args=${JSON.stringify(sidecarContainer.args)}`,
      `  env: ${(sidecarContainer.env ?? []).map((e) => `${e.name}=(${e.valueFrom?.fieldRef?.fieldPath ?? 'ref'})`).join(' ')}`,
      `  mounts: ${(sidecarContainer.volumeMounts ?? []).map((m) => `${m.name}→${m.mountPath}`).join(', ')}`,
      `  resources: ${JSON.stringify(sidecarContainer.resources)} imagePullPolicy=${String(sidecarContainer.imagePullPolicy)}`,
      `  probes: ${(['startupProbe', 'readinessProbe', 'livenessProbe'] as const)
        .map((p) => `${p.replace('Probe', '')}=${sidecarContainer[p]?.httpGet?.path ?? '-'}`)
        .join(' ')}`,
      `  securityContext: ${JSON.stringify(sidecarContainer.securityContext)}`,
    );
  }
  for (const container of spec?.containers ?? []) {
    lines.push(
      `containers: ${container.name}`,
      `  env: ${(container.env ?? []).map((e) => `${e.name}=${e.value ?? '(ref)'}`).join(' ')}`,
      `  mounts: ${(container.volumeMounts ?? []).map((m) => `${m.name}→${m.mountPath}`).join(', ') || '(none)'}`,
    );
  }
  lines.push('volumes:');
  for (const v of spec?.volumes ?? []) {
    const sources = (v.projected?.sources ?? []).map((s) =>
      s.secret !== undefined
        ? `secret ${String(s.secret.name)}`
        : s.configMap !== undefined
          ? `configMap ${String(s.configMap.name)}`
          : s.serviceAccountToken !== undefined
            ? `token aud=${s.serviceAccountToken.audience ?? '(API server)'}`
            : 'downwardAPI',
    );
    const kind =
      v.projected !== undefined
        ? `projected: ${sources.join(', ')}`
        : v.downwardAPI
          ? 'downwardAPI'
          : `emptyDir sizeLimit=${v.emptyDir?.sizeLimit ?? '(none)'}`;
    lines.push(`  ${v.name}: ${kind}`);
  }
  lines.push(`automountServiceAccountToken: ${String(spec?.automountServiceAccountToken)}`);
  lines.push(`annotations: ${Object.keys(pod.metadata?.annotations ?? {}).join(', ')}`);
  return lines.join('\n');
}

/** What both ways through the demo share: the servers and kubectl. */
/**
 * The platform team's read-only login, as docs/postgres-engine.md ("Least-privilege credential") says to
 * create it: SELECT on the demo's tables and nothing else, read-only by default. Sessions whose policies
 * grant no write log in with it, so the database itself refuses a write the sidecar's analysis missed.
 */
function createReaderLogin(
  pg: PostgresCluster,
  direct: NodeJS.ProcessEnv,
): { readonly user: string; readonly password: string } {
  step('The platform team creates a read-only login: the database itself refuses its writes');
  const user = 'orders_reader';
  const password = randomBytes(18).toString('base64url');
  const sql = (secret: string) =>
    [
      `create role ${user} login password '${secret}';`,
      `alter role ${user} set default_transaction_read_only = on;`,
      `grant connect on database ${pg.database} to ${user};`,
      `grant usage on schema public to ${user};`,
      `grant select on orders, customers to ${user};`,
    ].join('\n');
  console.log(dim(`$ psql -U postgres -d ${pg.database} <<EOF\n${sql('…')}\nEOF`));
  pg.superuserSql(sql(password), pg.database);
  note('even straight at PostgreSQL, that login cannot write (25006) and has no privilege to (42501):');
  const asReader = { ...direct, PGUSER: user, PGPASSWORD: password };
  showFailure(
    'psql',
    ['-X', '-v', 'VERBOSITY=verbose', '-c', "update orders set status = 'refunded' where id = 1002"],
    {
      env: asReader,
      display: `PGUSER=${user} psql -c "update orders set status = 'refunded' where id = 1002"`,
    },
  );
  showFailure(
    'psql',
    ['-X', '-v', 'VERBOSITY=verbose', '-c', "begin read write; update orders set status = 'refunded' where id = 1002"],
    {
      env: asReader,
      display: `PGUSER=${user} psql -c "begin read write; update orders set status = 'refunded' where id = 1002"`,
    },
  );
  return { user, password };
}

/** The reader login's Secret in namespace ci, for the ProtectedResource's readOnlyCredentialSecretRef. */
function createReaderSecret(demo: DemoContext, secretsDir: string): void {
  writeFileSync(join(secretsDir, 'reader-username'), demo.reader.user);
  writeFileSync(join(secretsDir, 'reader-password'), demo.reader.password);
  demo.kube(
    'create',
    'secret',
    'generic',
    'orders-db-reader-credentials',
    '-n',
    'ci',
    `--from-file=username=${join(secretsDir, 'reader-username')}`,
    `--from-file=password=${join(secretsDir, 'reader-password')}`,
  );
}

interface DemoContext {
  readonly controlPlane: ControlPlane;
  readonly postgres: PostgresCluster;
  /** psql's environment for the database owner, straight to PostgreSQL (verify-full TLS). */
  readonly direct: NodeJS.ProcessEnv;
  /** The read-only login the database restricts (docs/postgres-engine.md, "Least-privilege credential"). */
  readonly reader: { readonly user: string; readonly password: string };
  readonly kubectl: string;
  readonly kube: (...args: string[]) => string;
  readonly kubeIn: (input: string, ...args: string[]) => string;
  readonly kc: k8s.KubeConfig;
  readonly core: k8s.CoreV1Api;
}

/**
 * Without a node (it could not start here, or --no-node): the operator bin as a local process with its
 * webhooks registered by URL, and the injected sidecar started as a local process from the stored pod spec.
 * Returns how to stop what it started.
 */
async function localProcessDemo(demo: DemoContext): Promise<() => Promise<void>> {
  const { controlPlane, postgres, kubectl, kube, kubeIn, kc, core } = demo;
  // ---- The real components, end to end -------------------------------------------------------------
  step('Starting the operator (the chaperone-operator bin) scoped to namespace ci, webhooks registered by URL');
  note('a CI namespace opted in to injection by label; the operator namespace holds its webhook certificate');
  kube('create', 'namespace', 'chaperone-system');
  kube('create', 'namespace', 'ci');
  kube('label', 'namespace', 'ci', 'chaperone.dev/injection=enabled');
  const webhookPort = await freePort();
  const operatorArgs = [
    '--namespace',
    'ci',
    '--metrics-bind-address',
    '127.0.0.1:0',
    '--enable-webhooks',
    '--sidecar-image',
    'ghcr.io/chaperone/chaperone-sidecar:dev',
    '--service-account-issuer',
    controlPlane.issuer,
    '--webhook-host',
    '127.0.0.1',
    '--webhook-port',
    String(webhookPort),
    '--webhook-url',
    `https://127.0.0.1:${String(webhookPort)}`,
    // The audit authority certifies each sidecar's signing key and signs checkpoints of every Session head.
    '--enable-audit-authority',
    '--checkpoint-interval',
    '1',
    // The RFC 8693 token exchange for nested agents (docs/identity.md), on the same HTTPS server.
    '--enable-token-exchange',
  ];
  console.log(dim(`$ chaperone-operator ${operatorArgs.join(' ')} &`));
  const operatorLog: string[] = [];
  const operatorLogFile = createWriteStream(join(runDir, 'operator.log'));
  operator = spawn(process.execPath, [join(REPO_ROOT, 'operator/src/bin/chaperone-operator.ts'), ...operatorArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const operatorProcess = operator;
  createInterface({ input: operatorProcess.stderr! }).on('line', (line) => {
    operatorLog.push(line);
    operatorLogFile.write(`${line}\n`);
  });
  const operatorExit = new Promise<number | null>((resolve) => operatorProcess.once('exit', resolve));
  void operatorExit.then((code) => {
    if (operator !== undefined && !operatorStopping) {
      console.error(`operator exited unexpectedly (${String(code)}):\n${operatorLog.slice(-20).join('\n')}`);
    }
  });
  await until('the operator to start', () =>
    operatorLog.some((l) => l.includes('"msg":"operator started"')) ? true : undefined,
  );
  await printOperatorLog(operatorLog, ['admission webhook server listening', 'operator started']);
  kube('get', 'mutatingwebhookconfiguration,validatingwebhookconfiguration');

  step('The platform team protects orders-db: a credential Secret, a CA Secret, a ProtectedResource');
  const listenPort = await freePort();
  const secretsDir = join(runDir, 'secrets');
  mkdirSync(secretsDir, { recursive: true });
  writeFileSync(join(secretsDir, 'username'), postgres.user);
  writeFileSync(join(secretsDir, 'password'), postgres.password);
  kube(
    'create',
    'secret',
    'generic',
    'orders-db-credentials',
    '-n',
    'ci',
    `--from-file=username=${join(secretsDir, 'username')}`,
    `--from-file=password=${join(secretsDir, 'password')}`,
  );
  createReaderSecret(demo, secretsDir);
  kube('create', 'secret', 'generic', 'orders-db-ca', '-n', 'ci', `--from-file=ca.crt=${postgres.caFile}`);
  kubeIn(
    `apiVersion: chaperone.dev/v1alpha1
kind: ProtectedResource
metadata:
  name: orders-db
  labels: {data-classification: confidential}
spec:
  type: postgres
  endpoint: {host: localhost, port: ${String(postgres.port)}, database: ${postgres.database}}
  tls: {mode: verify-full, caSecretRef: {name: orders-db-ca, key: ca.crt}}
  credentialSecretRef: {name: orders-db-credentials}
  readOnlyCredentialSecretRef: {name: orders-db-reader-credentials}
  listenPort: ${String(listenPort)}
  audit: {failureMode: FailClosed, retention: 2160h}
`,
    'apply',
    '-n',
    'ci',
    '-f',
    '-',
  );

  step('The security team applies the example AccessPolicy; the operator compiles it to WebAssembly');
  let logMark = operatorLog.length;
  kube('apply', '-n', 'ci', '-f', join(REPO_ROOT, 'examples/accesspolicy-readonly.yaml'));
  kube('wait', '-n', 'ci', '--for=condition=Ready', 'accesspolicy/orders-readonly', '--timeout=60s');
  await printOperatorLog(operatorLog, ['policy compiled'], logMark);
  kube('get', 'accesspolicy', '-n', 'ci', '-o', 'wide');
  kube('get', 'configmap', '-n', 'ci', '-l', 'app.kubernetes.io/component=policy-bundle');

  step('A CI Job opts in with two annotations; the webhook injects the sidecar into its pod');
  kubeIn(
    `apiVersion: batch/v1
kind: Job
metadata: {name: nightly-report}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        chaperone.dev/inject: "true"
        chaperone.dev/resources: orders-db
    spec:
      restartPolicy: Never
      containers:
        - name: agent
          image: postgres:17
          command: [sh, -c, 'PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")" psql -c "select count(*) from orders"']
`,
    'apply',
    '-n',
    'ci',
    '-f',
    '-',
  );
  const pod = await until('the Job controller to create the pod', async () => {
    const pods = await core.listNamespacedPod({ namespace: 'ci', labelSelector: 'job-name=nightly-report' });
    return pods.items[0];
  });
  const podName = pod.metadata?.name ?? '';
  kube('get', 'pods', '-n', 'ci', '-o', 'wide');
  note(`what the webhook changed, from kubectl get pod ${podName} -n ci -o json:`);
  const summary = summarisePod(pod);
  console.log(summary);
  note('the sidecar configuration the injector rendered (an annotation, projected into the sidecar as a file):');
  kube('get', 'pod', podName, '-n', 'ci', '-o', `jsonpath={.metadata.annotations.chaperone\\.dev/sidecar-config}`);

  step('No kubelet here: starting the injected sidecar as a local process from the stored pod spec');
  note('its volumes are filled from the API server as a kubelet would (Secrets, downward');
  note('API, pod-bound tokens), and its env too (POD_NAME, KUBERNETES_SERVICE_HOST); only paths under a temp');
  note('root, the JWKS URL and the metrics port differ');
  const root = join(runDir, 'pod');
  const materialised = await materialiseSidecar(core, pod, root);
  console.log(dim(`$ chaperone-sidecar --config ${materialised.configFile} &`));
  sidecar = await materialised.start();
  const sidecarLog = () => readFileSync(sidecar!.logFile, 'utf8').split('\n');
  await until('the sidecar log', () => (sidecarLog().some((l) => l.includes('"msg":"ready"')) ? true : undefined));
  for (const line of sidecarLog()) {
    if (['"msg":"policy bundles loaded"', '"msg":"durable audit trail"', '"msg":"ready"'].some((m) => line.includes(m)))
      console.log(dim(line));
  }
  // Policies need no kubelet: the sidecar watches its namespace's signed policy set through the API.

  step('The agent: psql with only the agent container env and its audience-bound token');
  const agentRoot = join(root, 'agent');
  const agent = await materialiseVolumes(core, pod, 'agent', agentRoot);
  const agentEnv = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value ?? '']));
  const tokenFile = join(agentRoot, agentEnv.CHAPERONE_TOKEN_FILE ?? '');
  for (const [k, v] of Object.entries(agentEnv)) console.log(`${k}=${v}`);
  const token = readFileSync(tokenFile, 'utf8');
  const c = claims(token);
  const bound = (c['kubernetes.io'] as { pod?: { name?: string } } | undefined)?.pod?.name;
  console.log(
    `token: aud=${JSON.stringify(c.aud)} sub=${String(c.sub)} bound to pod ${String(bound)}, ` +
      `expires ${new Date(Number(c.exp) * 1000).toISOString()}`,
  );
  note('the API server rejects that token (wrong audience): the agent has no way to read the Secret');
  const tokenOnly = ['--server', controlPlane.server, '--certificate-authority', controlPlane.caFile];
  showFailure(kubectl, [...tokenOnly, '--token', token, 'get', 'secret', 'orders-db-credentials', '-n', 'ci'], {
    env: { PATH: process.env.PATH ?? '', HOME: runDir },
    lastLine: true,
    display: `kubectl ${tokenOnly.join(' ')} --token "$(cat $CHAPERONE_TOKEN_FILE)" get secret orders-db-credentials -n ci`,
  });
  const agentProcessEnv = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    ...agentEnv,
    PGPASSWORD: token,
  };
  let agentSessions = 0;
  const psqlAsAgent = (sql: string, fail = false) => {
    agentSessions++;
    return (fail ? showFailure : show)('psql', ['-X', '-v', 'VERBOSITY=verbose', '-c', sql], {
      env: agentProcessEnv,
      display: `PGPASSWORD="$(cat $CHAPERONE_TOKEN_FILE)" psql -c "${sql}"`,
    });
  };
  note('an allowed read (rule reads):');
  psqlAsAgent('select id, status, total from orders order by id');
  note('card numbers are masked for the agent (masking rule card-numbers: partial, the last 4 digits kept):');
  const maskedCards = psqlAsAgent(CARD_QUERY);
  note('the same query by the platform team, straight at the database, shows them clear:');
  checkMasked(
    maskedCards,
    show('psql', ['-X', '-c', CARD_QUERY], { env: demo.direct, display: `psql -X -c "${CARD_QUERY}"` }),
  );
  note('the policy grants no write, so the sidecar logged in with the read-only login, read-only by default:');
  psqlAsAgent("select current_user, current_setting('default_transaction_read_only') as read_only");
  note('a denied write (rule deny-ddl): SQLSTATE 42501, naming the policy and the rule');
  psqlAsAgent('drop table orders', true);
  note('and one no rule allows (the default decision, deny):');
  psqlAsAgent("update orders set status = 'refunded' where id = 1002", true);

  agentSessions += await nestedAgents({
    step,
    note,
    show,
    showFailure,
    until,
    kube,
    kubeIn,
    custom: kc.makeApiClient(k8s.CustomObjectsApi),
    core,
    runDir,
    issuer: controlPlane.issuer,
    webhookPort,
    podTokenFile: tokenFile,
    agentEnv: agentProcessEnv,
  });

  step('A policy change reaches a live session: same connection, new decision');
  const live = startLiveSession(agentProcessEnv);
  agentSessions++;
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as customers from customers;`);
  const before = currentDigest(kubectl);
  note('the security team forbids customer data to CI jobs, while that session stays open:');
  const patchedAt = Date.now();
  logMark = operatorLog.length;
  kube(
    'patch',
    'accesspolicy',
    'orders-readonly',
    '-n',
    'ci',
    '--type=json',
    '-p',
    '[{"op":"add","path":"/spec/rules/0","value":{"name":"no-customer-data","decision":"deny",' +
      '"match":{"sql":{"relations":["public.customers"]}},"message":"Customer data is off limits for CI jobs."}}]',
  );
  const after = await until('the operator to publish the new digest', () => {
    const d = currentDigest(kubectl);
    return d !== before ? d : undefined;
  });
  await printOperatorLog(operatorLog, ['policy compiled'], logMark);
  kube('get', 'accesspolicy', '-n', 'ci', '-o', 'wide');
  await until(
    'the sidecar to load the new bundle',
    () =>
      sidecarLog().some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(after)) ? true : undefined,
    30_000,
  );
  console.log(
    dim(
      sidecarLog()
        .filter((l) => l.includes('"msg":"policy bundles loaded"'))
        .at(-1) ?? '',
    ),
  );
  console.log(
    `sidecar enforces ${after.slice(0, 19)}… ${((Date.now() - patchedAt) / 1000).toFixed(1)} s after the edit`,
  );
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as customers from customers;`);
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as orders from orders;`);
  await live.close();
  note('same upstream backend pid: the connection was never dropped; the new rule applied to its next statement');

  agentSessions += await heldStatementApproved({
    step,
    note,
    show,
    until,
    kube,
    kubectl,
    custom: kc.makeApiClient(k8s.CustomObjectsApi),
    runDir,
    controlPlane,
    directEnv: demo.direct,
    startAgentPsql: (sql) => ({
      child: spawn('psql', ['-X', '-c', sql], { env: agentProcessEnv, stdio: ['pipe', 'pipe', 'pipe'] }),
      display: `PGPASSWORD="$(cat $CHAPERONE_TOKEN_FILE)" psql -c "${sql}"`,
    }),
    admissionInstalled: false,
    currentDigest: () => currentDigest(kubectl),
    policyReloaded: async (previous) => {
      const digest = await until('the operator to publish the new digest', () => {
        const d = currentDigest(kubectl);
        return d !== previous ? d : undefined;
      });
      await until(
        'the sidecar to load the new bundle',
        () =>
          sidecarLog().some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(digest))
            ? true
            : undefined,
        30_000,
      );
      return digest;
    },
  });

  step("The auditor's view: the Session objects the sidecar wrote");
  note("every record was fdatasync'ed to the sidecar's spool (an emptyDir) before its statement went on, and");
  note('the sidecar writes them into Session objects with its own pod-bound token, about once a second;');
  note(`waiting for the ${String(agentSessions)} client sessions of the agent to be Closed in the API server`);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const sessions = await until(
    'the sidecar to write the sessions into Session objects',
    async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: 'ci',
        plural: 'sessions',
      })) as { items: Session[] };
      const closed = list.items.filter((item) => item.status?.phase === 'Closed');
      return closed.length >= agentSessions ? list.items : undefined;
    },
    30_000,
  );
  note("the operator bound the chaperone-sidecar Role (create and patch Sessions) to the pod's service account:");
  kube('get', 'rolebinding', 'chaperone-sidecar', '-n', 'ci', '-o', 'wide');
  kube('get', 'sessions', '-n', 'ci');
  // kubectl finds plugins on PATH; the plugin's `#!/usr/bin/env node` finds this Node.js first.
  const pluginDir = join(runDir, 'bin');
  mkdirSync(pluginDir, { recursive: true });
  symlinkSync(join(REPO_ROOT, 'cli/src/bin/kubectl-chaperone.ts'), join(pluginDir, 'kubectl-chaperone'));
  const pluginEnv = {
    ...process.env,
    PATH: [pluginDir, dirname(process.execPath), process.env.PATH ?? ''].join(delimiter),
  };
  const chaperone = (...args: string[]) => show(kubectl, ['chaperone', ...args], { env: pluginEnv });
  chaperone('sessions', '-n', 'ci');
  const liveSessionObject = liveSessionOf(sessions);
  note('the live session, with the policy change in the middle of it:');
  chaperone('sessions', 'show', liveSessionObject.metadata.name ?? '', '-n', 'ci');
  note("the sidecar's signing key, certified by the operator after a TokenReview of the pod's own token:");
  const signer = liveSessionObject.spec.signer;
  console.log(
    `  key ${signer?.keyId ?? '?'}, certificate ${signer?.certificate === undefined ? 'MISSING' : 'present'}`,
  );
  await until(
    "the operator's checkpoint to state every session head",
    async () => {
      const cm = await kc
        .makeApiClient(k8s.CoreV1Api)
        .readNamespacedConfigMap({ namespace: 'chaperone-system', name: 'chaperone-audit-checkpoint' })
        .catch(() => undefined);
      const jws = cm?.data?.['checkpoint.jws'];
      if (jws === undefined) return undefined;
      const stated = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
        sessions: { object: string }[];
      };
      return sessions.every((x) => stated.sessions.some((e) => e.object === `ci/${x.metadata.name ?? ''}`))
        ? true
        : undefined;
    },
    30_000,
  );
  note('every record hash, the hash links, the signed chain heads, the key certificates and the');
  note("operator's newest checkpoint, checked against the API server:");
  chaperone('verify', '--all', '-n', 'ci', '--require-certified');
  console.log('kubectl chaperone verify: exit 0');

  return async () => {
    await sidecar?.stop();
    sidecar = undefined;
    operatorStopping = true;
    operatorProcess.kill('SIGTERM');
    const code = await operatorExit;
    operator = undefined;
    console.log(`operator: SIGTERM → exit ${String(code)}; sidecar stopped; stopping the control plane and PostgreSQL`);
    if (code !== 0) throw new Error(`the operator exited with ${String(code)}`);
  };
}

/**
 * Starts the local node, or says why it cannot and returns undefined (the demo then runs the sidecar as a
 * local process instead). The node needs root, containerd and the rest (`make node`) and images (`make images`).
 */
async function startNodeOrExplain(controlPlane: ControlPlane): Promise<LocalNode | undefined> {
  step(
    'Starting a local node: containerd, kubelet, kube-proxy, kube-scheduler and CoreDNS, in namespaces of their own',
  );
  note('the images `make images` built (no registry) are imported into its containerd');
  try {
    const started = await startLocalNode({
      runDir,
      controlPlane: { kubeconfig: controlPlane.kubeconfig, server: controlPlane.server, caFile: controlPlane.caFile },
      log: (line) => console.log(dim(line)),
    });
    show(toolPath('kubectl'), ['get', 'nodes', '-o', 'wide']);
    return started;
  } catch (err) {
    note(`the local node could not start: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
    note('continuing without it: the operator and the sidecar run as local processes');
    return undefined;
  }
}

/**
 * On the local node: helm install of the chart with the real images, the operator as two pods, an agent
 * Deployment whose pod the webhook injects and the kubelet runs, psql inside the agent container through
 * its sidecar, a policy change reaching a live session, and the auditor's view. Returns how to stop.
 */
async function realPodsDemo(demo: DemoContext, localNode: LocalNode): Promise<() => Promise<void>> {
  const { controlPlane, postgres, kubectl, kube, kubeIn, kc, core } = demo;
  const helm = toolPath('helm');
  const ref = (image: string) => {
    const r = builtImageRef(image);
    return { repository: r.slice(0, r.lastIndexOf(':')), tag: r.slice(r.lastIndexOf(':') + 1) };
  };

  step('helm install: the chart with the operator and sidecar images `make images` built');
  note('two operator replicas (leader election), webhooks behind their Service, the audit authority; the');
  note("node's taint is tolerated (it keeps other pods off this test node); the issuer is this API server's");
  const values = [
    ['image.repository', ref('operator').repository],
    ['image.tag', ref('operator').tag],
    ['sidecarImage.repository', ref('sidecar').repository],
    ['sidecarImage.tag', ref('sidecar').tag],
    ['serviceAccountIssuer', controlPlane.issuer],
    ['auditAuthority.checkpointIntervalSeconds', '5'],
  ];
  show(helm, [
    'install',
    'chaperone',
    join(REPO_ROOT, 'charts', 'chaperone'),
    '--namespace',
    'chaperone-system',
    '--create-namespace',
    '--wait',
    '--timeout',
    '5m',
    ...values.flatMap(([k, v]) => ['--set', `${k ?? ''}=${v ?? ''}`]),
    '--set-json',
    `tolerations=${JSON.stringify([LOCAL_NODE_TOLERATION])}`,
  ]);
  kube('get', 'pods', '-n', 'chaperone-system', '-o', 'wide');
  kube('get', 'lease', '-n', 'chaperone-system');
  kube('get', 'endpointslices', '-n', 'chaperone-system');
  kube('get', 'mutatingwebhookconfiguration,validatingwebhookconfiguration,validatingadmissionpolicy');

  step('The platform team publishes orders-db to the cluster and protects it');
  note('PostgreSQL runs on this machine; pods reach it as postgres.ci.svc (a Service without a selector, as');
  note('for any database outside the cluster), through CoreDNS and kube-proxy. Its certificate names');
  note('localhost, which the resource says (tls.serverName); the sidecar verifies it against the CA Secret.');
  const exposed = await localNode.exposeHostPort(postgres.port);
  kube('create', 'namespace', 'ci');
  kube('label', 'namespace', 'ci', 'chaperone.dev/injection=enabled');
  kubeIn(
    `apiVersion: v1
kind: Service
metadata: {name: postgres}
spec:
  ports: [{name: postgres, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: postgres-1
  labels: {kubernetes.io/service-name: postgres}
addressType: IPv4
endpoints: [{addresses: ["${exposed.host}"]}]
ports: [{name: postgres, port: ${String(exposed.port)}}]
`,
    'apply',
    '-n',
    'ci',
    '-f',
    '-',
  );
  const secretsDir = join(runDir, 'secrets');
  mkdirSync(secretsDir, { recursive: true });
  writeFileSync(join(secretsDir, 'username'), postgres.user);
  writeFileSync(join(secretsDir, 'password'), postgres.password);
  kube(
    'create',
    'secret',
    'generic',
    'orders-db-credentials',
    '-n',
    'ci',
    `--from-file=username=${join(secretsDir, 'username')}`,
    `--from-file=password=${join(secretsDir, 'password')}`,
  );
  createReaderSecret(demo, secretsDir);
  kube('create', 'secret', 'generic', 'orders-db-ca', '-n', 'ci', `--from-file=ca.crt=${postgres.caFile}`);
  kubeIn(
    `apiVersion: chaperone.dev/v1alpha1
kind: ProtectedResource
metadata:
  name: orders-db
  labels: {data-classification: confidential}
spec:
  type: postgres
  endpoint: {host: postgres.ci.svc, port: 5432, database: ${postgres.database}}
  tls: {mode: verify-full, serverName: localhost, caSecretRef: {name: orders-db-ca, key: ca.crt}}
  credentialSecretRef: {name: orders-db-credentials}
  readOnlyCredentialSecretRef: {name: orders-db-reader-credentials}
  audit: {failureMode: FailClosed, retention: 2160h}
`,
    'apply',
    '-n',
    'ci',
    '-f',
    '-',
  );

  step('The security team applies the example AccessPolicy; the operator pods compile it with opa');
  kube('apply', '-n', 'ci', '-f', join(REPO_ROOT, 'examples/accesspolicy-readonly.yaml'));
  kube('wait', '-n', 'ci', '--for=condition=Ready', 'accesspolicy/orders-readonly', '--timeout=120s');
  kube('get', 'accesspolicy', '-n', 'ci', '-o', 'wide');

  step('An agent Deployment opts in with two annotations; the kubelet runs the injected sidecar first');
  kubeIn(
    `apiVersion: apps/v1
kind: Deployment
metadata: {name: report-agent}
spec:
  replicas: 1
  selector: {matchLabels: {app: report-agent}}
  template:
    metadata:
      labels: {app: report-agent}
      annotations:
        chaperone.dev/inject: "true"
        chaperone.dev/resources: orders-db
    spec:
      tolerations: [{key: ${LOCAL_NODE_TOLERATION.key ?? ''}, operator: Exists, effect: NoSchedule}]
      containers:
        - name: agent
          image: ${builtImageRef('agent')}
          args: [-c, 'exec sleep infinity']
`,
    'apply',
    '-n',
    'ci',
    '-f',
    '-',
  );
  kube('rollout', 'status', 'deployment/report-agent', '-n', 'ci', '--timeout=300s');
  note('the operator (two replicas) and the agent pod with its sidecar (READY 2/2), all run by the kubelet:');
  kube('get', 'pods', '-A', '-o', 'wide');
  const pod = await until('the agent pod', async () => {
    const pods = await core.listNamespacedPod({ namespace: 'ci', labelSelector: 'app=report-agent' });
    return pods.items.find((p) => p.status?.phase === 'Running');
  });
  const podName = pod.metadata?.name ?? '';
  note(`what the webhook changed, from kubectl get pod ${podName} -n ci -o json:`);
  console.log(summarisePod(pod));
  note("both tokens in the pod are bound to it and minted by this node's kubelet: the chart's admission policy");
  note('chaperone-pod-bound-tokens refuses pod-bound TokenRequests from anyone but a node');

  step('The agent: psql inside the agent container, with only its env and its audience-bound token');
  const inAgent = ['exec', '-n', 'ci', podName, '-c', 'agent', '--'];
  // The agent image has a shell, psql and kubectl; nothing else.
  const printEnv =
    'for v in PGHOST PGPORT PGUSER PGDATABASE PGSSLMODE CHAPERONE_TOKEN_FILE CHAPERONE_RESOURCES; do eval "echo $v=\\$$v"; done';
  show(kubectl, [...inAgent, 'sh', '-c', printEnv], {
    display: `kubectl exec ${podName} -c agent -- sh -c '${printEnv}'`,
  });
  let agentSessions = 0;
  const psqlInAgent = (sql: string, fail = false) => {
    agentSessions++;
    const script = `PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")" psql -X -v VERBOSITY=verbose -c "${sql}"`;
    return (fail ? showFailure : show)(kubectl, [...inAgent, 'sh', '-c', script], {
      display: `kubectl exec ${podName} -c agent -- sh -c '${script}'`,
    });
  };
  note('an allowed read (rule reads):');
  psqlInAgent('select id, status, total from orders order by id');
  note('card numbers are masked for the agent (masking rule card-numbers: partial, the last 4 digits kept):');
  const maskedCards = psqlInAgent(CARD_QUERY);
  note('the same query by the platform team, straight at the database, shows them clear:');
  checkMasked(
    maskedCards,
    show('psql', ['-X', '-c', CARD_QUERY], { env: demo.direct, display: `psql -X -c "${CARD_QUERY}"` }),
  );
  note('the policy grants no write, so the sidecar logged in with the read-only login, read-only by default:');
  psqlInAgent("select current_user, current_setting('default_transaction_read_only') as read_only");
  note('a denied write (rule deny-ddl): SQLSTATE 42501, naming the policy and the rule');
  psqlInAgent('drop table orders', true);
  note('and one no rule allows (the default decision, deny):');
  psqlInAgent("update orders set status = 'refunded' where id = 1002", true);
  note('around the sidecar, straight at postgres.ci.svc: the token is no PostgreSQL password');
  const around =
    'PGHOST=postgres.ci.svc PGSSLMODE=require PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")" psql -X -c "select 1"';
  showFailure(kubectl, [...inAgent, 'sh', '-c', around], {
    display: `kubectl exec ${podName} -c agent -- sh -c '${around}'`,
  });

  step('A policy change reaches a live session: same connection, new decision');
  const live = startLiveSessionIn(kubectl, [
    'exec',
    '-i',
    ...inAgent.slice(1),
    'sh',
    '-c',
    'PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")" exec psql -X -v VERBOSITY=verbose',
  ]);
  agentSessions++;
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as customers from customers;`);
  const before = currentDigest(kubectl);
  note('the security team forbids customer data to CI jobs, while that session stays open:');
  const patchedAt = Date.now();
  kube(
    'patch',
    'accesspolicy',
    'orders-readonly',
    '-n',
    'ci',
    '--type=json',
    '-p',
    '[{"op":"add","path":"/spec/rules/0","value":{"name":"no-customer-data","decision":"deny",' +
      '"match":{"sql":{"relations":["public.customers"]}},"message":"Customer data is off limits for CI jobs."}}]',
  );
  const after = await until('the operator to publish the new digest', () => {
    const d = currentDigest(kubectl);
    return d !== before ? d : undefined;
  });
  kube('get', 'accesspolicy', '-n', 'ci', '-o', 'wide');
  note('the operator signs a new policy set; the sidecar, watching it through the API, loads the new bundle:');
  const sidecarLogs = () =>
    execFileSync(kubectl, ['logs', '-n', 'ci', podName, '-c', SIDECAR_CONTAINER], { encoding: 'utf8' });
  const loaded = await until(
    'the sidecar to load the new bundle',
    () =>
      sidecarLogs()
        .split('\n')
        .find((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(after)),
    180_000,
  );
  console.log(dim(loaded));
  console.log(
    `sidecar enforces ${after.slice(0, 19)}… ${((Date.now() - patchedAt) / 1000).toFixed(1)} s after the edit`,
  );
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as customers from customers;`);
  await live.run(`${LIVE_SESSION_STATEMENT}, count(*) as orders from orders;`);
  await live.close();
  note('same upstream backend pid: the connection was never dropped; the new rule applied to its next statement');

  agentSessions += await heldStatementApproved({
    step,
    note,
    show,
    until,
    kube,
    kubectl,
    custom: kc.makeApiClient(k8s.CustomObjectsApi),
    runDir,
    controlPlane,
    directEnv: demo.direct,
    startAgentPsql: (sql) => {
      const script = `PGPASSWORD="$(cat "$CHAPERONE_TOKEN_FILE")" psql -X -c "${sql}"`;
      return {
        child: spawn(kubectl, [...inAgent, 'sh', '-c', script], { stdio: ['pipe', 'pipe', 'pipe'] }),
        display: `kubectl exec ${podName} -c agent -- sh -c '${script}'`,
      };
    },
    admissionInstalled: true,
    currentDigest: () => currentDigest(kubectl),
    policyReloaded: async (previous) => {
      const digest = await until('the operator to publish the new digest', () => {
        const d = currentDigest(kubectl);
        return d !== previous ? d : undefined;
      });
      await until(
        'the sidecar to load the new bundle',
        () =>
          sidecarLogs()
            .split('\n')
            .some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(digest))
            ? true
            : undefined,
        180_000,
      );
      return digest;
    },
  });

  step("The auditor's view: the Session objects the sidecar pod wrote");
  note('the sidecar writes them with its own pod-bound token; the chart installed the admission policy that');
  note(`only a pod's own sidecar may. Waiting for the agent's ${String(agentSessions)} client sessions to be Closed:`);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const sessions = await until(
    'the sidecar to write the sessions into Session objects',
    async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: 'ci',
        plural: 'sessions',
      })) as { items: Session[] };
      const closed = list.items.filter((item) => item.status?.phase === 'Closed');
      return closed.length >= agentSessions ? list.items : undefined;
    },
    60_000,
  );
  kube('get', 'sessions', '-n', 'ci');
  const pluginDir = join(runDir, 'bin');
  mkdirSync(pluginDir, { recursive: true });
  symlinkSync(join(REPO_ROOT, 'cli/src/bin/kubectl-chaperone.ts'), join(pluginDir, 'kubectl-chaperone'));
  const pluginEnv = {
    ...process.env,
    PATH: [pluginDir, dirname(process.execPath), process.env.PATH ?? ''].join(delimiter),
  };
  const chaperone = (...args: string[]) => show(kubectl, ['chaperone', ...args], { env: pluginEnv });
  chaperone('sessions', '-n', 'ci');
  note('the live session, with the policy change in the middle of it:');
  chaperone('sessions', 'show', liveSessionOf(sessions).metadata.name ?? '', '-n', 'ci');
  await until(
    "the operator's checkpoint to state every session head",
    async () => {
      const cm = await core
        .readNamespacedConfigMap({ namespace: 'chaperone-system', name: 'chaperone-audit-checkpoint' })
        .catch(() => undefined);
      const jws = cm?.data?.['checkpoint.jws'];
      if (jws === undefined) return undefined;
      const stated = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
        sessions: { object: string }[];
      };
      return sessions.every((x) => stated.sessions.some((e) => e.object === `ci/${x.metadata.name ?? ''}`))
        ? true
        : undefined;
    },
    60_000,
  );
  note('every record hash, the hash links, the signed chain heads, the key certificates the operator pods');
  note("issued and the operator's newest checkpoint, checked against the API server:");
  chaperone('verify', '--all', '-n', 'ci', '--require-certified');
  console.log('kubectl chaperone verify: exit 0');

  return async () => {
    await localNode.stop();
    node = undefined;
    console.log('local node stopped (every pod, mount and network of it); stopping the control plane and PostgreSQL');
  };
}

/** psql in a pod through `kubectl exec -i`: one client session, statement by statement, as startLiveSession does locally. */
function startLiveSessionIn(kubectl: string, args: string[]): LiveSession {
  const child = spawn(kubectl, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  liveSession = child;
  return driveSession(child);
}
