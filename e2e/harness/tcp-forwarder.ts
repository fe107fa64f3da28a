// A TCP forwarder from an address pods can reach to a server on loopback: the harness's kube-apiserver
// and PostgreSQL listen on 127.0.0.1 only, which no pod network reaches. The node harness listens on the
// host's end of the node's link (e2e/harness/node.ts) and pipes each connection to 127.0.0.1:PORT, so
// the server still sees a loopback client (pg_hba's 127.0.0.1/32) and TLS stays end to end.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpForwarder {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Listens on host:port (port 0: any free port) and forwards every connection to 127.0.0.1:targetPort. */
export async function forwardTcp(host: string, port: number, targetPort: number): Promise<TcpForwarder> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    }
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('forwarder has no address');
  // The forwarder must never keep a test process alive on its own.
  server.unref();
  return {
    host,
    port: address.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
