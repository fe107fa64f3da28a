// Raw bytes to a listener, for the HTTP engine's tests: the bytes as written, whatever a client library
// would have normalised, and everything the server answered until it closed the connection.
import { connect } from 'node:net';

export function raw(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
    const chunks: Buffer[] = [];
    // A failure bound only: every refusal ends the connection, so a kept-alive one is the failure to report.
    const timer = setTimeout(() => socket.destroy(), 20_000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', reject);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}
