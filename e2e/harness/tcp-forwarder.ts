// A TCP forwarder from an address pods can reach to a server on loopback: the harness's kube-apiserver
// and PostgreSQL listen on 127.0.0.1 only, which no pod network reaches. The node harness listens on the
// host's end of the node's link (e2e/harness/node.ts) and pipes each connection to 127.0.0.1:PORT, so
// the server still sees a loopback client (pg_hba's 127.0.0.1/32) and TLS stays end to end.
//
// It runs as a child process, not in the caller's event loop: a caller that blocks (the demo runs kubectl
// and helm synchronously) would otherwise stall every watch of the kubelet and kube-proxy meanwhile. It
// exits when its standard input closes, so it never outlives the process that started it.
//
// As a program: node tcp-forwarder.ts HOST PORT TARGET_PORT — prints {"port":N} once listening.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { realpathSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { stopProcess } from './processes.ts';

export interface TcpForwarder {
  readonly host: string;
  readonly port: number;
  readonly process: ChildProcess;
  close(): Promise<void>;
}

/** Listens on host:port (port 0: any free port) and forwards every connection to 127.0.0.1:targetPort. */
export async function forwardTcp(host: string, port: number, targetPort: number): Promise<TcpForwarder> {
  const child = spawn(process.execPath, [import.meta.filename, host, String(port), String(targetPort)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  const listening = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', (line) => {
      resolve((JSON.parse(line) as { port: number }).port);
    });
    child.once('exit', (code) =>
      reject(new Error(`forwarder to ${String(targetPort)} exited (${String(code)}): ${stderr}`)),
    );
  });
  return {
    host,
    port: listening,
    process: child,
    async close() {
      child.stdin.end();
      await stopProcess(child, 2000).catch(() => undefined);
    },
  };
}

function serve(host: string, port: number, targetPort: number): void {
  const server = createServer((client) => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    // Watches stream small events: send them on at once.
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.once('error', (err) => {
    console.error(err.message);
    process.exit(1);
  });
  server.listen(port, host, () => {
    const address = server.address();
    console.log(JSON.stringify({ port: address !== null && typeof address !== 'string' ? address.port : port }));
  });
  process.stdin.resume();
  process.stdin.once('end', () => process.exit(0));
}

if (runAsProgram()) {
  const [host, port, target] = process.argv.slice(2);
  serve(host ?? '127.0.0.1', Number(port), Number(target));
}

/** Whether this file is the program node was started with (not a module imported by another). */
function runAsProgram(): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(import.meta.filename);
  } catch {
    // argv[1] is not a path (a glob given to node --test, for example)
    return false;
  }
}
