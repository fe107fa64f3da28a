// Raw bytes over TLS to the Kubernetes engine's listener: the request exactly as written (whatever a client
// library would have normalised) and everything answered until the connection closes (every corpus case
// ends its connection, with `Connection: close` or by being refused).
import { connect } from 'node:tls';

export interface RawResponse {
  readonly status: number;
  readonly head: string;
  readonly body: string;
}

/** Sends bytes (one character, one byte) over a fresh TLS connection and reads until the server closes it. */
export function exchange(port: number, ca: Buffer, bytes: string | Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () =>
      socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes),
    );
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no end of response in 30 s: ${Buffer.concat(chunks).toString('latin1')}`));
    }, 30_000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', (err: Error) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      // Interim answers (100 Continue) before the final one are skipped.
      const text = Buffer.concat(chunks)
        .toString('latin1')
        .replace(/^(?:HTTP\/1\.1 1\d\d [^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n)+/, '');
      const split = text.indexOf('\r\n\r\n');
      resolve({
        status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
        head: text.slice(0, split),
        body: text.slice(split + 4),
      });
    });
  });
}
