// A loopback TCP forwarder the durability tests put between a sidecar and the evidence store, so that the
// store can "go away" (connections cut, new ones refused) and come back on the same address without
// stopping the shared PostgreSQL. Bytes pass through untouched (TLS is end to end).
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { TestContext } from 'node:test';

export interface TcpOutage {
  readonly port: number;
  /** Cuts every connection and refuses new ones until `restore`. */
  cut(): Promise<void>;
  restore(): Promise<void>;
}

export async function startTcpOutage(t: TestContext, targetPort: number): Promise<TcpOutage> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(targetPort, '127.0.0.1');
        for (const socket of [client, upstream]) {
          sockets.add(socket);
          socket.on('close', () => sockets.delete(socket));
          socket.on('error', () => {
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream);
        upstream.pipe(client);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        const address = s.address();
        if (address !== null && typeof address !== 'string') port = address.port;
        server = s;
        resolve();
      });
    });
  const cut = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      if (server === undefined) resolve();
      else server.close(() => resolve());
      server = undefined;
    });
  await listen();
  t.after(cut);
  return { port, cut, restore: listen };
}
