import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LookupAddress, LookupAllOptions } from 'node:dns';
import { connect, createServer } from 'node:net';
import { ADDRESS_TTL_MS, cachedLookup } from './upstream-address-cache.ts';

function fakeResolver(answers: (LookupAddress[] | Error)[]) {
  const calls: string[] = [];
  const resolve = (host: string, _o: LookupAllOptions, cb: (err: Error | null, a: LookupAddress[]) => void) => {
    calls.push(host);
    const next = answers.shift() ?? new Error('no more answers');
    setImmediate(() => {
      if (next instanceof Error) cb(next, []);
      else cb(null, next);
    });
  };
  return { calls, resolve };
}

const lookupAll = (lookup: ReturnType<typeof cachedLookup>, host: string) =>
  new Promise<LookupAddress[]>((resolve, reject) => {
    lookup(host, { all: true }, (err, addresses) => {
      if (err) reject(err);
      else resolve(addresses as unknown as LookupAddress[]);
    });
  });

test('answers are reused for the TTL, then resolved again; failures are never kept', async () => {
  let now = 1_000;
  const first = [{ address: '10.0.0.1', family: 4 }];
  const moved = [{ address: '10.0.0.2', family: 4 }];
  const { calls, resolve } = fakeResolver([first, new Error('SERVFAIL'), moved]);
  const lookup = cachedLookup(() => now, resolve);
  assert.deepEqual(await lookupAll(lookup, 'db.example'), first);
  assert.deepEqual(await lookupAll(lookup, 'db.example'), first);
  assert.equal(calls.length, 1, 'the second connection within the TTL reuses the answer');
  now += ADDRESS_TTL_MS + 1;
  await assert.rejects(lookupAll(lookup, 'db.example'), /SERVFAIL/);
  assert.deepEqual(await lookupAll(lookup, 'db.example'), moved, 'after a failure the next connection resolves again');
  assert.equal(calls.length, 3);
});

test('net.connect resolves a host name through it (single-address form included)', async () => {
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const lookup = cachedLookup();
  try {
    for (const autoSelectFamily of [true, false]) {
      await new Promise<void>((resolve, reject) => {
        const socket = connect({ host: 'localhost', port, lookup, family: 4, autoSelectFamily }, () => {
          assert.equal(socket.remoteAddress, '127.0.0.1');
          socket.destroy();
          resolve();
        });
        socket.on('error', reject);
      });
    }
  } finally {
    server.close();
  }
});
