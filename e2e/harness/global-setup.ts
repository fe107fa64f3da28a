// node --test global setup: one control plane and one PostgreSQL cluster for the whole run, shared by
// every test file through environment variables (test files run in child processes that inherit them).
// Both are stopped in globalTeardown, on SIGINT/SIGTERM, and — if this process is killed outright — by the
// control plane noticing its stdin closed and the next run reaping the recorded PostgreSQL pid.
import { rmSync } from 'node:fs';
import { startControlPlane, type ControlPlane } from './control-plane.ts';
import { startPostgres, type PostgresCluster } from './postgres.ts';
import { reapDeadNodes } from './node.ts';
import { createRunDirectory } from './processes.ts';
import { applyCrds } from './kube.ts';
import { ENV } from './env.ts';

let controlPlane: ControlPlane | undefined;
let postgres: PostgresCluster | undefined;
let runDir: string | undefined;

export async function globalSetup(): Promise<void> {
  runDir = createRunDirectory();
  // A killed run's local node left cgroup directories (its processes died with it); remove them now,
  // whether or not this run starts a node.
  reapDeadNodes();
  process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));
  process.once('SIGTERM', () => void stopAll().finally(() => process.exit(143)));
  const started = Date.now();
  const [cp, pg] = await Promise.allSettled([startControlPlane(runDir), startPostgres(runDir)]);
  if (cp.status === 'fulfilled') controlPlane = cp.value;
  if (pg.status === 'fulfilled') postgres = pg.value;
  if (cp.status === 'rejected' || pg.status === 'rejected') {
    await stopAll();
    throw cp.status === 'rejected' ? cp.reason : (pg as PromiseRejectedResult).reason;
  }
  const c = cp.value;
  const p = pg.value;
  Object.assign(process.env, {
    [ENV.runDir]: runDir,
    [ENV.kubeconfig]: c.kubeconfig,
    KUBECONFIG: c.kubeconfig,
    [ENV.apiServer]: c.server,
    [ENV.issuer]: c.issuer,
    [ENV.apiCa]: c.caFile,
    [ENV.pgHost]: p.host,
    [ENV.pgPort]: String(p.port),
    [ENV.pgUser]: p.user,
    [ENV.pgPassword]: p.password,
    [ENV.pgDatabase]: p.database,
    [ENV.pgCa]: p.caFile,
    [ENV.pgSocketDir]: p.socketDir,
    [ENV.pgLogFile]: p.logFile,
  });
  await applyCrds(c.kubeconfig);
  console.log(
    `harness: control plane ${c.server} and PostgreSQL 127.0.0.1:${p.port} ready in ${Date.now() - started} ms`,
  );
}

export async function globalTeardown(): Promise<void> {
  await stopAll();
}

async function stopAll(): Promise<void> {
  const stops: Promise<void>[] = [];
  if (controlPlane !== undefined) stops.push(controlPlane.stop());
  if (postgres !== undefined) stops.push(postgres.stop());
  controlPlane = undefined;
  postgres = undefined;
  await Promise.allSettled(stops);
  if (runDir !== undefined && process.env.CHAPERONE_KEEP_RUN_DIR === undefined) {
    rmSync(runDir, { recursive: true, force: true });
  }
  runDir = undefined;
}
