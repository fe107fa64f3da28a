// An outage of a server on loopback, for the durability tests: the harness's TCP forwarder
// (e2e/harness/tcp-forwarder.ts) sits between a sidecar and the evidence store; stopping it cuts every
// connection and refuses new ones, and a new forwarder on the same port brings the store back, without
// stopping the shared PostgreSQL. Bytes pass through untouched (TLS is end to end).
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { forwardTcp, type TcpForwarder } from '../harness/tcp-forwarder.ts';

export interface TcpOutage {
  readonly port: number;
  /** Cuts every connection and refuses new ones until `restore`. */
  cut(): Promise<void>;
  restore(): Promise<void>;
}

export async function startTcpOutage(t: TestContext, targetPort: number): Promise<TcpOutage> {
  let forwarder: TcpForwarder | undefined = await forwardTcp('127.0.0.1', 0, targetPort);
  const port = forwarder.port;
  const cut = async () => {
    await forwarder?.close();
    forwarder = undefined;
  };
  t.after(cut);
  return {
    port,
    cut,
    restore: async () => {
      forwarder ??= await forwardTcp('127.0.0.1', port, targetPort);
    },
  };
}

export interface MeteredOutage extends TcpOutage {
  /** Bytes forwarded towards the server since the forwarder started (across restores). */
  forwardedBytes(): number;
  /**
   * Cuts (as `cut`) as soon as `bytes` more bytes were forwarded towards the server: an outage that begins
   * in the middle of a transfer (a replay's inserts) wherever the timing falls. Resolves once cut.
   */
  cutAfter(bytes: number): Promise<void>;
}

/**
 * An outage like startTcpOutage's whose forwarder runs in the test's own process and counts what it
 * forwards, so an outage can start after a given amount of traffic rather than after a given time.
 */
export async function startMeteredOutage(t: TestContext, targetPort: number): Promise<MeteredOutage> {
  let forwarded = 0;
  let server: Server | undefined;
  let port = 0;
  const sockets = new Set<Socket>();
  let cutAt = Infinity;
  let onCut: (() => void) | undefined;
  const cut = async () => {
    const s = server;
    server = undefined;
    for (const socket of sockets) socket.destroy();
    sockets.clear();
    if (s !== undefined) await new Promise<void>((resolve) => s.close(() => resolve()));
    cutAt = Infinity;
    onCut?.();
    onCut = undefined;
  };
  const listen = async () => {
    const s = createServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: targetPort });
      sockets.add(client);
      sockets.add(upstream);
      client.on('data', (chunk: Buffer) => {
        forwarded += chunk.length;
        if (forwarded >= cutAt) void cut();
      });
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      client.on('close', () => sockets.delete(client));
      upstream.on('close', () => sockets.delete(upstream));
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => resolve());
    });
    const address = s.address();
    if (address !== null && typeof address !== 'string') port = address.port;
    server = s;
  };
  await listen();
  t.after(cut);
  return {
    port,
    cut,
    restore: async () => {
      if (server === undefined) await listen();
    },
    forwardedBytes: () => forwarded,
    cutAfter: (bytes) =>
      new Promise<void>((resolve) => {
        cutAt = forwarded + bytes;
        onCut = resolve;
      }),
  };
}
