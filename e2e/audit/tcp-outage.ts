// An outage of a server on loopback, for the durability tests: the harness's TCP forwarder
// (e2e/harness/tcp-forwarder.ts) sits between a sidecar and the evidence store; stopping it cuts every
// connection and refuses new ones, and a new forwarder on the same port brings the store back, without
// stopping the shared PostgreSQL. Bytes pass through untouched (TLS is end to end).
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
