import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { test, type TestContext } from 'node:test';
import { clientStillThere, readBody, watchClient, type ClientWatch } from './http-exchange.ts';

/** A loopback server handing each request to the test; closed when the test ends. */
async function serve(
  t: TestContext,
): Promise<{ port: number; next: () => Promise<[IncomingMessage, ServerResponse]> }> {
  const waiting: ((pair: [IncomingMessage, ServerResponse]) => void)[] = [];
  const queued: [IncomingMessage, ServerResponse][] = [];
  const server = createServer((req, res) => {
    const take = waiting.shift();
    if (take === undefined) queued.push([req, res]);
    else take([req, res]);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return {
    port: (server.address() as { port: number }).port,
    next: () => {
      const pair = queued.shift();
      return pair === undefined ? new Promise((resolve) => waiting.push(resolve)) : Promise.resolve(pair);
    },
  };
}

const GET = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`;

test('a client gone is seen once by a watch attached before, and by gone() after, when no close event comes any more', async (t) => {
  const { port, next } = await serve(t);
  const socket = connect(port, '127.0.0.1');
  socket.write(GET('/first') + GET('/second'));
  const [firstReq, firstRes] = await next();
  const [secondReq, secondRes] = await next();
  const first = watchClient(firstReq, firstRes);
  assert.equal(first.gone(), false);
  assert.equal(watchClient(secondReq, secondRes).gone(), false);
  const gone: string[] = [];
  first.onGone(() => gone.push('first'));
  socket.destroy();
  await new Promise((resolve) => secondReq.socket.once('close', resolve));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(gone, ['first'], 'once, though both the response and the connection close');
  // The second request was still being decided: a listener added now would never be called.
  const second = watchClient(secondReq, secondRes);
  assert.equal(second.gone(), true);
  let late = 0;
  secondRes.once('close', () => late++);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(late, 0, "the response's close has come and gone: why forwarding asks gone() first");
});

test('a response finished normally is no client gone when its connection closes later', async (t) => {
  const { port, next } = await serve(t);
  const socket = connect(port, '127.0.0.1');
  socket.on('data', () => undefined);
  socket.write(GET('/done'));
  const [req, res] = await next();
  const watch = watchClient(req, res);
  let gone = 0;
  watch.onGone(() => gone++);
  await new Promise<void>((resolve) => res.end('ok', resolve));
  await new Promise((resolve) => setImmediate(resolve));
  socket.destroy();
  await new Promise((resolve) => req.socket.once('close', resolve));
  assert.equal(gone, 0);
  assert.equal(watch.gone(), true, 'the connection is gone now; only a request not yet forwarded asks');
});

test('a client gone before forwarding: cancelled 499, once; a client still there: nothing recorded', () => {
  const finished: string[][] = [];
  const finish = (status: string, code: string, message?: string) => finished.push([status, code, message ?? '']);
  const watch = (gone: boolean): ClientWatch => ({ gone: () => gone, onGone: () => () => undefined });
  assert.equal(clientStillThere(watch(false), finish), true);
  assert.deepEqual(finished, []);
  assert.equal(clientStillThere(watch(true), finish), false);
  assert.deepEqual(finished, [
    ['cancelled', '499', 'client closed the connection before the request was forwarded; not forwarded'],
  ]);
});

test('a body the client stops sending rejects, whether reading began before or after it left', async (t) => {
  const { port, next } = await serve(t);
  const socket = connect(port, '127.0.0.1');
  socket.write('POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello');
  const [req] = await next();
  const reading = readBody(req, 1024);
  socket.destroy();
  await assert.rejects(reading);
  // Reading only begins after the connection closed (the engine was still deciding): no hang either.
  await assert.rejects(readBody(req, 1024), /cut before its end/);

  const whole = connect(port, '127.0.0.1');
  whole.write('POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello');
  const [wholeReq, wholeRes] = await next();
  assert.equal((await readBody(wholeReq, 1024))?.toString(), 'hello');
  wholeRes.end();
  whole.destroy();
});
