// A worker thread running one of the sidecar's event loops (event-loops.ts, docs/sidecar-event-loops.md):
// its own engines, policy engine and listeners on the main thread's ports; its audit records go, as the main
// loop's, to the one JSON-lines worker (over a port of its own), which seals them, keeps the pod chain's head
// and writes the one audit file; the connection counts are in memory shared with every loop.
import { parentPort, workerData } from 'node:worker_threads';
import { JsonLinesWriter } from './core/audit/json-lines-writer.ts';
import { PodChain } from './core/audit/pod-chain.ts';
import type { LoopPeers } from './core/engine.ts';
import { PROCESS_HASH_KEY } from './core/masking/mask-value.ts';
import { createLogger } from './core/observability/logger.ts';
import { createSidecarMetrics } from './core/observability/metrics.ts';
import type { FromLoop, LoopWorkerData, ToLoop } from './event-loops.ts';
import { startLoop, type RunningLoop } from './loop.ts';

// When this thread's modules were loaded (the bundle's share of a loop's start; the rest is the SQL parser,
// the policy and listening), as a time every thread reads alike.
const modulesLoadedAt = performance.timeOrigin + performance.now();
const port = parentPort;
if (port === null) throw new Error('loop-worker.ts runs as a worker thread (event-loops.ts)');
const data = workerData as LoopWorkerData;
const { config, index, shared } = data;
const post = (msg: FromLoop, transfer?: ArrayBuffer[]) => port.postMessage(msg, transfer);

// The same key as the main thread's, copied in before any connection: a value masks alike on every loop.
PROCESS_HASH_KEY.set(shared.processHashKey);

const logger = createLogger({ level: config.log.level, base: { component: 'chaperone-sidecar', loop: index } });
// The process-wide default metrics (CPU, memory) are the main thread's; loops add their own counts.
const metrics = createSidecarMetrics({ defaultMetrics: false });
/** Records go to the one JSON-lines worker, sealed there, over this loop's own port to it. */
const sink = JsonLinesWriter.overPort(data.auditPort);

const asked = new Map<number, (answers: unknown[]) => void>();
let nextAsk = 1;
const peers: LoopPeers = {
  ask(listener, message) {
    const id = nextAsk++;
    return new Promise((resolve) => {
      asked.set(id, resolve);
      post({ type: 'ask', id, listener, message });
    });
  },
};

let loop: RunningLoop;
try {
  loop = await startLoop(
    config,
    {
      pod: { name: config.pod.name, namespace: config.pod.namespace },
      sink,
      podChain: PodChain.shared(config.pod, shared.podChainHead),
      metrics,
      logger,
    },
    {
      index,
      openConnections: shared.openConnections,
      loopConnections: shared.loopConnections,
      sourceCounts: shared.sourceCounts,
      sourceCountsKey: shared.sourceCountsKey,
      catalogGenerations: shared.catalogGenerations,
      peers,
    },
  );
} catch (err) {
  post({ type: 'failed', error: err instanceof Error ? err.message : String(err) });
  throw err;
}

/** Set once the loop is closing or draining: its records are in the sink when it resolves. */
let stopped: Promise<void> | undefined;
port.on('message', (msg: ToLoop) => {
  switch (msg.type) {
    case 'answers':
      asked.get(msg.id)?.(msg.answers);
      asked.delete(msg.id);
      return;
    case 'ask': {
      const endpoint = loop.endpoints.get(msg.listener);
      void Promise.resolve(endpoint?.fromPeer?.(msg.message)).then((answer) => {
        post({ type: 'answer', id: msg.id, answer });
      });
      return;
    }
    case 'metrics':
      void metrics.registry.getMetricsAsJSON().then((m) => {
        post({ type: 'metrics', id: msg.id, metrics: m });
      });
      return;
    case 'reload':
      void loop.reloadPolicies().then(() => {
        post({ type: 'reloaded', id: msg.id });
      });
      return;
    case 'close':
      // Also while draining: the connections still open are cut, as on the sidecar's close.
      stopped = Promise.all([stopped, loop.close()]).then(() => sink.close());
      void stopped.then(() => {
        post({ type: 'closed' });
        port.close();
      });
      return;
    case 'drain':
      stopped ??= loop.drain().then(() => sink.close());
      void stopped.then(() => {
        post({ type: 'drained' });
      });
      return;
  }
});
post({ type: 'ready', modulesLoadedAt, servingAt: performance.timeOrigin + performance.now() });
