// A plain HTTP server on a loopback port for one test, closed (with its kept-alive connections) when the
// test ends: the upstream behind an HTTP-speaking engine in the e2e tests.
import { createServer, type RequestListener, type Server } from 'node:http';
import type { TestContext } from 'node:test';

export async function startLoopbackHttpServer(t: TestContext, handler: RequestListener): Promise<Server> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return server;
}
