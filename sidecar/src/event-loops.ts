// The sidecar's event loops beyond the main thread (docs/sidecar-event-loops.md): `eventLoops - 1` worker
// threads, each running a loop (loop.ts) on the same ports as the main thread's (SO_REUSEPORT; the kernel
// spreads new connections). The main thread owns what is per pod: it connects every loop to the one
// JSON-lines audit worker (json-lines-writer.ts, which keeps the pod chain's head), holds the listeners'
// connection counts in shared memory, sums the
// loops' metrics when /metrics is scraped, relays messages between loops (a cancel request that landed on
// the loop that does not serve its connection) and has every loop re-read the policies.
import { existsSync } from 'node:fs';
import { Worker, type MessagePort } from 'node:worker_threads';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client';
import type { SidecarConfig } from './config.ts';
import type { JsonLinesWriter } from './core/audit/json-lines-writer.ts';
import type { Logger } from './core/observability/logger.ts';
import type { RunningLoop } from './loop.ts';

/** What every loop shares, created by the main thread and handed to each worker. */
export interface LoopShared {
  /** PodChain.shared's buffer (sharedPodChainHead). */
  readonly podChainHead: SharedArrayBuffer;
  /** LoopPlace.openConnections. */
  readonly openConnections: SharedArrayBuffer;
  /** The hash masking strategy's per-process key: one value must mask alike on every loop. */
  readonly processHashKey: Uint8Array;
}

/** What a worker thread is started with. */
export interface LoopWorkerData {
  readonly index: number;
  /** The configuration with every listener's `listen` set to the address the main thread's listener got. */
  readonly config: SidecarConfig;
  readonly shared: LoopShared;
  /** The loop's port to the JSON-lines audit worker (JsonLinesWriter.connect): its records go there. */
  readonly auditPort: MessagePort;
}

/** Messages from the main thread to a worker loop. */
export type ToLoop =
  | { readonly type: 'ask'; readonly id: number; readonly listener: string; readonly message: unknown }
  | { readonly type: 'answers'; readonly id: number; readonly answers: unknown[] }
  | { readonly type: 'metrics'; readonly id: number }
  | { readonly type: 'reload'; readonly id: number }
  | { readonly type: 'close' };

/** Messages from a worker loop to the main thread. */
export type FromLoop =
  | { readonly type: 'ready' }
  | { readonly type: 'failed'; readonly error: string }
  | { readonly type: 'ask'; readonly id: number; readonly listener: string; readonly message: unknown }
  | { readonly type: 'answer'; readonly id: number; readonly answer: unknown }
  | { readonly type: 'metrics'; readonly id: number; readonly metrics: MetricObjectWithValues<MetricValue<string>>[] }
  | { readonly type: 'reloaded'; readonly id: number }
  | { readonly type: 'closed' };

/** The worker's script: next to this module in the sources; in the bundle an entry of its own at its root. */
function workerScript(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL('./loop-worker.ts', here);
  for (const candidate of ['./loop-worker.js', '../loop-worker.js']) {
    const url = new URL(candidate, here);
    if (existsSync(url)) return url;
  }
  throw new Error(`the event loop worker's script is not next to ${here}`);
}

/** `host:port` of a bound address, IPv6 hosts in brackets. */
function listenAddress(address: { host: string; port: number }): string {
  return `${address.host.includes(':') ? `[${address.host}]` : address.host}:${String(address.port)}`;
}

/** The worker loops, seen from the main thread (loop 0). */
export class WorkerLoops {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, (value: unknown) => void>();
  private nextId = 1;
  private closing = false;
  private readonly main: RunningLoop;
  private readonly logger: Logger;

  private constructor(main: RunningLoop, logger: Logger) {
    this.main = main;
    this.logger = logger;
  }

  /**
   * Starts `config.eventLoops - 1` workers on the ports `main` listens on and resolves once each listens.
   * A worker that fails later stops the sidecar (`onFailure`): its connections are gone and a loop less
   * would serve half the pod's ports' connections for nothing.
   */
  static async start(
    config: SidecarConfig,
    shared: LoopShared,
    main: RunningLoop,
    sink: JsonLinesWriter,
    logger: Logger,
    onFailure: (err: Error) => void,
  ): Promise<WorkerLoops> {
    const loops = new WorkerLoops(main, logger);
    const bound: SidecarConfig = {
      ...config,
      listeners: config.listeners.map((l, i) => ({
        ...l,
        listen: listenAddress(main.addresses[i] ?? { host: '', port: 0 }),
      })),
    };
    try {
      await Promise.all(
        Array.from({ length: config.eventLoops - 1 }, (_, i) =>
          loops.startWorker({ index: i + 1, config: bound, shared, auditPort: sink.connect() }, onFailure),
        ),
      );
    } catch (err) {
      await loops.close();
      throw err;
    }
    return loops;
  }

  private startWorker(data: LoopWorkerData, onFailure: (err: Error) => void): Promise<void> {
    const worker = new Worker(workerScript(), { workerData: data, transferList: [data.auditPort] });
    this.workers.push(worker);
    return new Promise<void>((resolve, reject) => {
      let started = false;
      worker.on('message', (msg: FromLoop) => {
        if (msg.type === 'ready') {
          started = true;
          resolve();
        } else if (msg.type === 'failed') reject(new Error(`event loop ${String(data.index)}: ${msg.error}`));
        else this.onMessage(worker, msg);
      });
      worker.on('error', (err: Error) => {
        if (!started) reject(err);
        else if (!this.closing) onFailure(err);
      });
      worker.on('exit', (code) => {
        if (!started) reject(new Error(`event loop ${String(data.index)} exited with ${String(code)}`));
        else if (!this.closing) onFailure(new Error(`event loop ${String(data.index)} exited with ${String(code)}`));
      });
    });
  }

  private onMessage(from: Worker, msg: FromLoop): void {
    switch (msg.type) {
      case 'ask':
        void this.askLoops(msg.listener, msg.message, from).then((answers) => {
          from.postMessage({ type: 'answers', id: msg.id, answers } satisfies ToLoop);
        });
        return;
      case 'answer':
      case 'reloaded':
        this.pending.get(msg.id)?.(msg.type === 'answer' ? msg.answer : undefined);
        this.pending.delete(msg.id);
        return;
      case 'metrics':
        this.pending.get(msg.id)?.(msg.metrics);
        this.pending.delete(msg.id);
        return;
      default:
        return;
    }
  }

  private request<T>(worker: Worker, make: (id: number) => ToLoop): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve) => {
      this.pending.set(id, resolve as (value: unknown) => void);
      worker.postMessage(make(id));
    });
  }

  /** LoopPeers.ask for every loop but `except` (a worker, or undefined: the main loop asks). */
  async askLoops(listener: string, message: unknown, except?: Worker): Promise<unknown[]> {
    const asks: Promise<unknown>[] = this.workers
      .filter((w) => w !== except)
      .map((w) => this.request(w, (id) => ({ type: 'ask', id, listener, message })));
    const endpoint = this.main.endpoints.get(listener);
    if (except !== undefined && endpoint?.fromPeer !== undefined) asks.push(endpoint.fromPeer(message));
    return Promise.all(asks);
  }

  /** Every worker loop re-reads its policies; resolves when all have. */
  async reloadPolicies(): Promise<void> {
    await Promise.all(this.workers.map((w) => this.request(w, (id) => ({ type: 'reload', id }))));
  }

  /** /metrics: the main loop's registry and every worker's, summed per metric and label set. */
  async metrics(main: Registry): Promise<Registry> {
    const all = await Promise.all([
      main.getMetricsAsJSON(),
      ...this.workers.map((w) =>
        this.request<MetricObjectWithValues<MetricValue<string>>[]>(w, (id) => ({ type: 'metrics', id })),
      ),
    ]);
    return AggregatorRegistry.aggregate(all);
  }

  /** Closes every worker's listeners and waits for its last audit lines (they arrive before `closed`). */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.on('message', (msg: FromLoop) => {
              if (msg.type === 'closed') resolve();
            });
            w.once('exit', () => resolve());
            w.postMessage({ type: 'close' } satisfies ToLoop);
          }),
      ),
    );
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.logger.debug('event loops closed', { loops: this.workers.length + 1 });
  }
}
