// The runtime's floor: a bare Node.js byte pipe between pgbench and PostgreSQL, no decoding, no TLS, no
// policy, no audit. `make bench` measures it as a fourth target, so the table shows what the sidecar
// costs over what any proxy written on Node.js pays.
//
//   node bench/byte-pipe.ts --listen 127.0.0.1:0 --upstream 127.0.0.1:5432
//
// Prints one JSON line `{"msg":"ready","port":N}` on stderr once it listens; stops on SIGTERM/SIGINT.
import { connect, createServer } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { listen: { type: 'string' }, upstream: { type: 'string' } },
  strict: true,
});
const split = (value: string | undefined, what: string): { host: string; port: number } => {
  const i = value?.lastIndexOf(':') ?? -1;
  if (value === undefined || i < 0) throw new Error(`--${what} HOST:PORT is required`);
  return { host: value.slice(0, i), port: Number(value.slice(i + 1)) };
};
const listen = split(values.listen, 'listen');
const upstream = split(values.upstream, 'upstream');

const server = createServer({ noDelay: true }, (client) => {
  const target = connect({ ...upstream, noDelay: true });
  client.pipe(target);
  target.pipe(client);
  const end = (): void => {
    client.destroy();
    target.destroy();
  };
  client.on('error', end).on('close', end);
  target.on('error', end).on('close', end);
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
