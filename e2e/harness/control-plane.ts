// Starts the loopback control plane (.tools/bin/controlplane: etcd + kube-apiserver + controller manager)
// and waits until it has written its admin kubeconfig.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { recordServer, stopProcess } from './processes.ts';
import { toolPath } from './tools.ts';

export interface ControlPlane {
  /** Path of the admin kubeconfig (system:masters). */
  readonly kubeconfig: string;
  /** https://127.0.0.1:PORT */
  readonly server: string;
  /** Service-account token issuer (iss claim). */
  readonly issuer: string;
  /** PEM CA bundle that signs the API server certificate. */
  readonly caFile: string;
  /** Directory with etcd data, PKI and logs. */
  readonly dataDir: string;
  readonly logFile: string;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

interface ReadyLine {
  ready: boolean;
  server: string;
  kubeconfig: string;
  issuer: string;
  dataDir: string;
}

export interface ControlPlaneOptions {
  timeoutMs?: number;
  /**
   * API server port; default a free one. Restarting on the same `runDir` reuses its etcd data and PKI, so
   * passing the old port (from `server`) gives clients that keep their kubeconfig the same endpoint back.
   */
  port?: number;
}

export async function startControlPlane(runDir: string, options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const binary = toolPath('controlplane');
  const dataDir = join(runDir, 'controlplane');
  const kubeconfig = join(runDir, 'admin.kubeconfig');
  const logFile = join(runDir, 'controlplane.log');
  const log = createWriteStream(logFile, { flags: 'a' });
  // stdin stays open as a pipe: if this process dies, the pipe closes and the control plane stops itself.
  const args = ['--data-dir', dataDir, '--kubeconfig', kubeconfig, '--exit-on-stdin-close'];
  if (options.port !== undefined) args.push('--port', String(options.port));
  const child = spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`could not start ${binary}`);
  recordServer(runDir, 'controlplane', child.pid);
  child.stderr.pipe(log);

  const ready = await new Promise<ReadyLine>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`control plane not ready within ${options.timeoutMs ?? 120_000} ms; see ${logFile}`));
    }, options.timeoutMs ?? 120_000);
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      try {
        const parsed = JSON.parse(line) as ReadyLine;
        if (parsed.ready) {
          clearTimeout(timer);
          resolve(parsed);
        }
      } catch {
        log.write(`${line}\n`);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n') : '';
      reject(new Error(`control plane exited (code ${String(code)}, signal ${String(signal)}) before ready:\n${tail}`));
    });
  });

  return {
    kubeconfig,
    server: ready.server,
    issuer: ready.issuer,
    caFile: join(dataDir, 'pki', 'ca.crt'),
    dataDir,
    logFile,
    process: child,
    async stop() {
      // kube-apiserver with CRDs installed can take 30 s or more to finish its graceful shutdown; the data is
      // thrown away, so a short grace before SIGKILL is enough (the controller manager dies with it: Pdeathsig).
      await stopProcess(child, 5_000);
      log.end();
    },
  };
}
