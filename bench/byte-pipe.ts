// The runtime's floor: a bare Node.js byte pipe between pgbench and PostgreSQL, no decoding, no policy, no
// audit. `make bench` measures it as a fourth target, so the table shows what the sidecar costs over what
// any proxy written on Node.js pays. With `--upstream-tls-ca` its upstream leg is TLS verify-full, as the
// sidecar's: per client connection it sends PostgreSQL an SSLRequest, reads `S`, verifies the server's
// certificate against the CA for the server name, then pipes the client's (plain) bytes through TLS.
//
//   node bench/byte-pipe.ts --listen 127.0.0.1:0 --upstream 127.0.0.1:5432
//   node bench/byte-pipe.ts --listen 127.0.0.1:0 --upstream 127.0.0.1:5432 \
//     --upstream-tls-ca ca.crt --upstream-tls-servername localhost
//
// Prints one JSON line `{"msg":"ready","port":N}` on stderr once it listens; stops on SIGTERM/SIGINT.
import { readFileSync } from 'node:fs';
import { connect, createServer, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    listen: { type: 'string' },
    upstream: { type: 'string' },
    'upstream-tls-ca': { type: 'string' },
    /** The name the server's certificate must carry (default: the --upstream host). */
    'upstream-tls-servername': { type: 'string' },
  },
  strict: true,
});
const split = (value: string | undefined, what: string): { host: string; port: number } => {
  const i = value?.lastIndexOf(':') ?? -1;
  if (value === undefined || i < 0) throw new Error(`--${what} HOST:PORT is required`);
  return { host: value.slice(0, i), port: Number(value.slice(i + 1)) };
};
const listen = split(values.listen, 'listen');
const upstream = split(values.upstream, 'upstream');
const caFile = values['upstream-tls-ca'];
const ca = caFile === undefined ? undefined : readFileSync(caFile);
const serverName = values['upstream-tls-servername'] ?? upstream.host;

/** PostgreSQL's SSLRequest: length 8, code 80877103. */
const SSL_REQUEST = Buffer.from([0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f]);

/** Connects to PostgreSQL; with a CA, negotiates TLS verify-full before handing the socket back. */
function connectUpstream(onReady: (target: Socket) => void, onError: () => void): Socket {
  const raw = connect({ ...upstream, noDelay: true });
  raw.on('error', onError);
  if (ca === undefined) {
    onReady(raw);
    return raw;
  }
  raw.once('connect', () => raw.write(SSL_REQUEST));
  raw.once('data', (answer: Buffer) => {
    // One byte `S`, nothing after it (anything more would be bytes injected before the handshake).
    if (answer.length !== 1 || answer[0] !== 0x53) {
      onError();
      return;
    }
    const secure = tlsConnect({
      socket: raw,
      ca,
      // Verified against `host` (an IP address is matched to the certificate's IP SANs); SNI only for names.
      host: serverName,
      ...(isIP(serverName) === 0 ? { servername: serverName } : {}),
    });
    secure.setNoDelay(true);
    secure.on('error', onError).once('secureConnect', () => onReady(secure));
  });
  return raw;
}

/**
 * libpq refuses a server that offers SCRAM-SHA-256-PLUS over a connection that is not TLS on its side (a
 * stripped TLS, to it), and the pipe's client leg is plain: the TLS pipe drops that mechanism from the
 * server's first AuthenticationSASL (`R`, length, 10, NUL-terminated names, NUL), as the sidecar, which ends
 * the client's authentication itself, never forwards it. Anything else passes unchanged.
 */
function withoutScramPlus(chunk: Buffer): Buffer {
  if (chunk.length < 9 || chunk[0] !== 0x52 || chunk.readInt32BE(5) !== 10) return chunk;
  const end = 1 + chunk.readInt32BE(1);
  const names = chunk
    .subarray(9, end)
    .toString('latin1')
    .split('\0')
    .filter((n) => n !== '' && n !== 'SCRAM-SHA-256-PLUS');
  const body = Buffer.from(`${names.join('\0')}\0\0`, 'latin1');
  const head = Buffer.alloc(9);
  head.write('R', 0, 'latin1');
  head.writeInt32BE(8 + body.length, 1);
  head.writeInt32BE(10, 5);
  return Buffer.concat([head, body, chunk.subarray(end)]);
}

const server = createServer({ noDelay: true }, (client) => {
  let target: Socket | undefined;
  const end = (): void => {
    client.destroy();
    raw.destroy();
    target?.destroy();
  };
  const raw = connectUpstream((ready) => {
    target = ready;
    client.pipe(ready);
    ready.on('close', end);
    if (ca === undefined) {
      ready.pipe(client);
      return;
    }
    // The server's first message is its authentication request, alone (it waits for the client's answer).
    ready.once('data', (first: Buffer) => {
      client.write(withoutScramPlus(first));
      ready.pipe(client);
    });
  }, end);
  client.on('error', end).on('close', end);
  raw.on('close', end);
});
server.listen(listen.port, listen.host, () => {
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  process.stderr.write(`${JSON.stringify({ msg: 'ready', port })}\n`);
});
const stop = (): void => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
