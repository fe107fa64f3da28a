// The sidecar's event loops beyond the main thread (docs/sidecar-event-loops.md): `eventLoops - 1` worker
// threads, each running a loop (loop.ts) on the same ports as the main thread's (SO_REUSEPORT; the kernel
// spreads new connections). The main thread owns what is per pod: it connects every loop to the one
// JSON-lines audit worker (json-lines-writer.ts, which keeps the pod chain's head), holds the listeners'
// connection counts in shared memory, sums the
// loops' metrics when /metrics is scraped, relays messages between loops (a cancel request that landed on
// the loop that does not serve its connection) and has every loop re-read the policies. Loops are started
// at once (`eventLoops`) or one by one while the sidecar runs and stopped again (lazy-event-loops.ts).
import { existsSync } from 'node:fs';
import { Worker, type MessagePort } from 'node:worker_threads';
import {
  AggregatorRegistry,
  Counter,
  Gauge,
  type MetricObjectWithValues,
  type MetricValue,
  type Registry,
} from 'prom-client';
import { MAX_EVENT_LOOPS, type SidecarConfig } from './config.ts';
import type { JsonLinesWriter } from './core/audit/json-lines-writer.ts';
import type { Logger } from './core/observability/logger.ts';
import { LOOP_CONNECTIONS_BYTES, type RunningLoop } from './loop.ts';

/** What every loop shares, created by the main thread and handed to each worker. */
export interface LoopShared {
  /** PodChain.shared's buffer (sharedPodChainHead). */
  readonly podChainHead: SharedArrayBuffer;
  /** LoopPlace.openConnections. */
  readonly openConnections: SharedArrayBuffer;
  /** LoopPlace.loopConnections: one slot per loop index, MAX_EVENT_LOOPS of them. */
  readonly loopConnections: SharedArrayBuffer;
  /** LoopPlace.sourceCounts: every listener's connections per source address (core/source-counts.ts). */
  readonly sourceCounts: SharedArrayBuffer;
  /** LoopPlace.sourceCountsKey. */
  readonly sourceCountsKey: Uint8Array;
  /** LoopPlace.catalogGenerations. */
  readonly catalogGenerations: SharedArrayBuffer;
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
  | { readonly type: 'close' }
  /** Stop accepting, wait for this loop's connections to end, flush its audit records: then `drained`. */
  | { readonly type: 'drain' };

/** Messages from a worker loop to the main thread. */
export type FromLoop =
  /** Listening; when its modules were loaded and when it was serving (performance.timeOrigin + now(), ms). */
  | { readonly type: 'ready'; readonly modulesLoadedAt: number; readonly servingAt: number }
  | { readonly type: 'failed'; readonly error: string }
  | { readonly type: 'ask'; readonly id: number; readonly listener: string; readonly message: unknown }
  | { readonly type: 'answer'; readonly id: number; readonly answer: unknown }
  | { readonly type: 'metrics'; readonly id: number; readonly metrics: MetricObjectWithValues<MetricValue<string>>[] }
  | { readonly type: 'reloaded'; readonly id: number }
  | { readonly type: 'closed' }
  | { readonly type: 'drained' };

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

/** Why a worker loop started: configured (`eventLoops`), a busy sample, or a burst of logins (lazy-event-loops.ts). */
export type LoopStartTrigger = 'configured' | 'busy' | 'logins';

type LoopMetrics = MetricObjectWithValues<MetricValue<string>>[];

/** The worker loops, seen from the main thread (loop 0). */
export class WorkerLoops {
  /** Running worker loops by index (1 and up; the main loop is 0). */
  private readonly workers = new Map<number, Worker>();
  /** Loops being stopped on purpose (drain): their exit is no failure. */
  private readonly stopping = new Set<Worker>();
  private readonly pending = new Map<number, { worker: Worker; resolve: (value: unknown) => void }>();
  /** The last metrics of loops that were stopped: their counters stay in the sums (counters never go down). */
  private readonly retired: LoopMetrics[] = [];
  private nextId = 1;
  private closing = false;
  private readonly main: RunningLoop;
  private readonly logger: Logger;
  private readonly config: SidecarConfig;
  private readonly shared: LoopShared;
  private readonly sink: JsonLinesWriter;
  private readonly onFailure: (err: Error) => void;
  private readonly running: Gauge;
  private readonly starts: Counter<'trigger'>;
  private readonly startSeconds: Gauge;
  private readonly startedAt: Gauge;

  /**
   * No worker yet: add() starts one on the ports `main` listens on. `config` is what every worker runs with
   * (the bounds a loop counts alone, upstream reuse's, already split into shares). A worker that fails later stops the sidecar
   * (`onFailure`): its connections are gone and a loop less would serve part of the ports' connections for
   * nothing. The loop gauges are registered in `registry` (the main thread's).
   */
  constructor(options: {
    config: SidecarConfig;
    shared: LoopShared;
    main: RunningLoop;
    sink: JsonLinesWriter;
    logger: Logger;
    registry: Registry;
    onFailure: (err: Error) => void;
  }) {
    const { main } = options;
    this.main = main;
    this.logger = options.logger;
    this.shared = options.shared;
    this.sink = options.sink;
    this.onFailure = options.onFailure;
    this.config = {
      ...options.config,
      listeners: options.config.listeners.map((l, i) => ({
        ...l,
        listen: listenAddress(main.addresses[i] ?? { host: '', port: 0 }),
      })),
    };
    const registers = [options.registry];
    this.running = new Gauge({
      name: 'chaperone_event_loops',
      help: 'Event loops serving the listeners now, the main thread included (docs/sidecar-event-loops.md).',
      registers,
    });
    this.running.set(1);
    this.starts = new Counter({
      name: 'chaperone_event_loop_starts_total',
      help: 'Worker event loops started, by trigger: configured (eventLoops), busy (a busy sample) or logins (a burst of logins).',
      labelNames: ['trigger'],
      registers,
    });
    this.startSeconds = new Gauge({
      name: 'chaperone_event_loop_start_seconds',
      help: 'How long the last worker event loop took from its start to listening.',
      registers,
    });
    this.startedAt = new Gauge({
      name: 'chaperone_event_loop_last_ready_timestamp_seconds',
      help: 'When the last worker event loop started listening (Unix time).',
      registers,
    });
    const perLoop = new Int32Array(this.shared.loopConnections);
    const workers = this.workers;
    new Gauge({
      name: 'chaperone_event_loop_open_connections',
      help: 'Open connections per running event loop (every listener): how the kernel split them (SO_REUSEPORT).',
      labelNames: ['loop'],
      registers,
      collect() {
        // Read at the scrape from the counts every loop keeps in shared memory; stopped loops are not listed.
        this.reset();
        for (const index of [0, ...workers.keys()]) {
          this.set({ loop: String(index) }, Atomics.load(perLoop, index));
        }
      },
    });
  }

  /** Loops serving now, the main one included. */
  get count(): number {
    return 1 + this.workers.size;
  }

  /** The highest running worker index (the one a lazy stop drains), or undefined with none. */
  get last(): number | undefined {
    return this.workers.size === 0 ? undefined : Math.max(...this.workers.keys());
  }

  /** Starts a worker loop at the lowest free index; resolves with the index once it listens. */
  async add(trigger: LoopStartTrigger): Promise<number> {
    let index = 1;
    while (this.workers.has(index)) index++;
    if (index >= MAX_EVENT_LOOPS) throw new Error(`at most ${String(MAX_EVENT_LOOPS)} event loops`);
    const began = performance.now();
    const beganAt = performance.timeOrigin + began;
    const phases = await this.startWorker({
      index,
      config: this.config,
      shared: this.shared,
      auditPort: this.sink.connect(),
    });
    const seconds = (performance.now() - began) / 1000;
    this.starts.inc({ trigger });
    this.startSeconds.set(seconds);
    this.startedAt.set(Date.now() / 1000);
    this.running.set(this.count);
    this.logger.info('event loop started', {
      loop: index,
      loops: this.count,
      trigger,
      startMs: Math.round(seconds * 1000),
      // From the start: the thread's modules loaded; serving (then the SQL parser, the policy, listening).
      modulesLoadedMs: Math.round(phases.modulesLoadedAt - beganAt),
      servingMs: Math.round(phases.servingAt - beganAt),
    });
    return index;
  }

  /**
   * Stops worker `index` without cutting a connection: it stops accepting (the other loops' sockets get the
   * new ones), its connections end on their own, its last audit records reach the sink; its metrics so far
   * stay in the sums. Resolves once the thread is gone.
   */
  async drain(index: number): Promise<void> {
    const worker = this.workers.get(index);
    if (worker === undefined) return;
    this.stopping.add(worker);
    await new Promise<void>((resolve) => {
      worker.on('message', (msg: FromLoop) => {
        if (msg.type === 'drained') resolve();
      });
      worker.once('exit', () => resolve());
      worker.postMessage({ type: 'drain' } satisfies ToLoop);
    });
    const last = await this.request<LoopMetrics | undefined>(worker, (id) => ({ type: 'metrics', id }));
    this.workers.delete(index);
    if (last !== undefined) this.retired.push(last);
    Atomics.store(new Int32Array(this.shared.loopConnections, index * LOOP_CONNECTIONS_BYTES, 1), 0, 0);
    await worker.terminate();
    this.stopping.delete(worker);
    this.running.set(this.count);
    this.logger.info('event loop stopped', { loop: index, loops: this.count });
  }

  private startWorker(data: LoopWorkerData): Promise<{ modulesLoadedAt: number; servingAt: number }> {
    const worker = new Worker(workerScript(), { workerData: data, transferList: [data.auditPort] });
    this.workers.set(data.index, worker);
    return new Promise((resolve, reject) => {
      let started = false;
      const failed = (err: Error) => {
        if (this.workers.get(data.index) === worker) this.workers.delete(data.index);
        void worker.terminate();
        reject(err);
      };
      worker.on('message', (msg: FromLoop) => {
        if (msg.type === 'ready') {
          started = true;
          resolve({ modulesLoadedAt: msg.modulesLoadedAt, servingAt: msg.servingAt });
        } else if (msg.type === 'failed') failed(new Error(`event loop ${String(data.index)}: ${msg.error}`));
        else this.onMessage(worker, msg);
      });
      worker.on('error', (err: Error) => {
        if (!started) failed(err);
        else if (!this.closing && !this.stopping.has(worker)) this.onFailure(err);
      });
      worker.on('exit', (code) => {
        // Requests it will never answer: a scrape or a cancel hand-over goes on without it.
        for (const [id, p] of this.pending) {
          if (p.worker !== worker) continue;
          this.pending.delete(id);
          p.resolve(undefined);
        }
        const err = new Error(`event loop ${String(data.index)} exited with ${String(code)}`);
        if (!started) failed(err);
        else if (!this.closing && !this.stopping.has(worker)) this.onFailure(err);
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
        this.pending.get(msg.id)?.resolve(msg.type === 'answer' ? msg.answer : undefined);
        this.pending.delete(msg.id);
        return;
      case 'metrics':
        this.pending.get(msg.id)?.resolve(msg.metrics);
        this.pending.delete(msg.id);
        return;
      default:
        return;
    }
  }

  private request<T>(worker: Worker, make: (id: number) => ToLoop): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve) => {
      this.pending.set(id, { worker, resolve: resolve as (value: unknown) => void });
      worker.postMessage(make(id));
    });
  }

  /** LoopPeers.ask for every loop but `except` (a worker, or undefined: the main loop asks). */
  async askLoops(listener: string, message: unknown, except?: Worker): Promise<unknown[]> {
    const asks: Promise<unknown>[] = [...this.workers.values()]
      .filter((w) => w !== except)
      .map((w) => this.request(w, (id) => ({ type: 'ask', id, listener, message })));
    const endpoint = this.main.endpoints.get(listener);
    if (except !== undefined && endpoint?.fromPeer !== undefined) asks.push(endpoint.fromPeer(message));
    return Promise.all(asks);
  }

  /** Every worker loop re-reads its policies; resolves when all have. */
  async reloadPolicies(): Promise<void> {
    await Promise.all([...this.workers.values()].map((w) => this.request(w, (id) => ({ type: 'reload', id }))));
  }

  /** /metrics: the main loop's registry, every worker's and the stopped ones' last, summed per label set. */
  async metrics(main: Registry): Promise<Registry> {
    const all = await Promise.all([
      main.getMetricsAsJSON(),
      ...[...this.workers.values()].map((w) =>
        this.request<LoopMetrics | undefined>(w, (id) => ({ type: 'metrics', id })).then((m) => m ?? []),
      ),
    ]);
    return AggregatorRegistry.aggregate([...all, ...this.retired]);
  }

  /** Closes every worker's listeners and waits for its last audit lines (they arrive before `closed`). */
  async close(): Promise<void> {
    this.closing = true;
    const workers = [...this.workers.values()];
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.on('message', (msg: FromLoop) => {
              if (msg.type === 'closed' || msg.type === 'drained') resolve();
            });
            w.once('exit', () => resolve());
            w.postMessage({ type: 'close' } satisfies ToLoop);
          }),
      ),
    );
    await Promise.all(workers.map((w) => w.terminate()));
    this.logger.debug('event loops closed', { loops: workers.length + 1 });
  }
}
