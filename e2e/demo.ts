// `make demo`: starts a local control plane and PostgreSQL, installs the CRDs and examples, and walks
// through what Chaperone does, printing each step and the real output of kubectl and psql.
// Everything it starts is stopped at the end (or on Ctrl-C); pass --keep to leave it running until Ctrl-C.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from './harness/control-plane.ts';
import { startPostgres, type PostgresCluster } from './harness/postgres.ts';
import { createRunDirectory } from './harness/processes.ts';
import { applyCrds } from './harness/kube.ts';
import { REPO_ROOT, toolPath } from './harness/tools.ts';
import { rmSync } from 'node:fs';

const keep = process.argv.includes('--keep');
let controlPlane: ControlPlane | undefined;
let postgres: PostgresCluster | undefined;
const runDir = createRunDirectory();

function step(title: string): void {
  console.log(`\n\x1b[1m== ${title}\x1b[0m`);
}

function show(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  console.log(`\x1b[2m$ ${[command.split('/').at(-1), ...args].join(' ')}\x1b[0m`);
  const out = execFileSync(command, args, { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'pipe'] });
  process.stdout.write(out);
  return out;
}

async function cleanup(): Promise<void> {
  await Promise.allSettled([controlPlane?.stop(), postgres?.stop()]);
  rmSync(runDir, { recursive: true, force: true });
}

process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));

try {
  step('Starting a local control plane (etcd + kube-apiserver + controller manager) and PostgreSQL');
  [controlPlane, postgres] = await Promise.all([startControlPlane(runDir), startPostgres(runDir)]);
  console.log(`API server ${controlPlane.server}, PostgreSQL 127.0.0.1:${postgres.port} (TLS, scram-sha-256)`);
  const kubectl = toolPath('kubectl');
  const kube = (...args: string[]) => show(kubectl, ['--kubeconfig', controlPlane!.kubeconfig, ...args]);

  step('Installing the Chaperone CRDs');
  await applyCrds(controlPlane.kubeconfig);
  kube('get', 'crd', '-l', 'app.kubernetes.io/part-of=chaperone');

  step('Creating the example ProtectedResources, AccessPolicy, Session and ApprovalRequest');
  kube('create', 'namespace', 'demo');
  kube('apply', '-n', 'demo', '-f', join(REPO_ROOT, 'examples'));

  step('Everything Chaperone manages, by category');
  kube('get', 'chaperone', '-n', 'demo');

  step('The auditor view of sessions');
  kube('get', 'sessions', '-n', 'demo', '-o', 'wide');

  step('The API server enforces the schema: a postgres resource without a host is refused');
  try {
    execFileSync(kubectl, ['--kubeconfig', controlPlane.kubeconfig, 'apply', '-n', 'demo', '-f', '-'], {
      input:
        'apiVersion: chaperone.dev/v1alpha1\nkind: ProtectedResource\nmetadata: {name: broken}\nspec:\n  type: postgres\n  endpoint: {database: x}\n  credentialSecretRef: {name: s}\n',
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    throw new Error('the API server accepted an invalid ProtectedResource');
  } catch (err) {
    console.log(String((err as { stderr?: string }).stderr ?? err).trim());
  }

  step('Records are append-only: removing a record from a Session is refused');
  try {
    execFileSync(
      kubectl,
      [
        '--kubeconfig',
        controlPlane.kubeconfig,
        'patch',
        'session',
        'orders-db-4f1c2a',
        '-n',
        'demo',
        '--type=json',
        '-p',
        '[{"op":"remove","path":"/spec/records/0"}]',
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
    throw new Error('the API server accepted a record removal');
  } catch (err) {
    console.log(String((err as { stderr?: string }).stderr ?? err).trim());
  }

  step('PostgreSQL is reachable over verify-full TLS with scram-sha-256');
  show('psql', ['-X', '-c', 'select current_user, ssl, version as tls from pg_stat_ssl where pid = pg_backend_pid()'], {
    ...process.env,
    PGHOST: 'localhost',
    PGPORT: String(postgres.port),
    PGUSER: postgres.user,
    PGPASSWORD: postgres.password,
    PGDATABASE: postgres.database,
    PGSSLMODE: 'verify-full',
    PGSSLROOTCERT: postgres.caFile,
  });

  if (keep) {
    step(`Left running; KUBECONFIG=${controlPlane.kubeconfig}. Press Ctrl-C to stop.`);
    await new Promise(() => undefined);
  }
  step('Done; stopping everything the demo started');
} finally {
  if (!keep) await cleanup();
}
