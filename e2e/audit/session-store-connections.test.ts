// The Session store keeps its connection to the API server: client-node 2.x builds a new connection pool
// (undici Agent) per request, so without ConnectionReusingKubeConfig every Session write opened a new TCP
// connection and TLS handshake, in the sidecar and in the API server. A counting TCP relay between the
// store and the real API server sees how many connections the store opens for many writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { KubernetesSessionStore } from '../../sidecar/src/core/audit/session-store.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';

test('session store: many Session writes share one connection to the API server', async (t) => {
  const namespace = await createTestNamespace(t);
  const { kubeconfig, server } = controlPlaneEnv();
  const apiPort = Number(new URL(server).port);
  let accepted = 0;
  const sockets = new Set<Socket>();
  const relay = createServer((client) => {
    accepted += 1;
    const upstream = connect({ host: '127.0.0.1', port: apiPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => relay.close(resolve));
  });
  const address = relay.address();
  if (address === null || typeof address === 'string') throw new Error('relay has no port');
  // The same admin kubeconfig, pointed at the relay (the API server's certificate names 127.0.0.1).
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const relayed = join(dir, 'relayed.kubeconfig');
  const original = readFileSync(kubeconfig, 'utf8');
  assert.ok(original.includes(server), 'the kubeconfig names the API server');
  writeFileSync(relayed, original.replaceAll(server, `https://127.0.0.1:${String(address.port)}`));

  const store = new KubernetesSessionStore({ kubeconfig: relayed, namespace });
  // A fresh control plane may still be setting up the Session kind's storage (429): wait until it answers.
  await poll('the Session kind to be served', () => store.listParts('warm-up'), 60_000);
  const before = accepted;
  const requests = 12;
  for (let i = 0; i < requests; i++) {
    // The custom-objects client and the core client of the store: both go through the one pool.
    assert.deepEqual(await store.listParts(`00000000-0000-4000-8000-${String(i).padStart(12, '0')}`), []);
    await store.event({
      involved: { kind: 'Pod', apiVersion: 'v1', namespace, name: 'agent-pod' },
      type: 'Normal',
      reason: 'ConnectionTest',
      message: `request ${String(i)}`,
    });
  }
  // 2 × 12 requests on the connection the warm-up opened (at most one more, if the API server closed an idle
  // one meanwhile), not one per request.
  const opened = accepted - before;
  assert.ok(before >= 1 && opened <= 1, `${String(opened)} connections for ${String(2 * requests)} requests`);
});
