// One event loop's share of the sidecar: the engines, the policy engine and its bundle watcher, the token
// verifier and, per configured resource, a listener served by the engine registered for its type
// (engines/registry.ts). The main thread runs one; with `eventLoops` > 1 every worker thread runs one too
// (event-loops.ts, loop-worker.ts), on the same ports. What is per pod (audit sink, pod chain, approvals,
// credentials, metrics endpoint) is made by the caller and lent through `services`.
import type { SidecarConfig } from './config.ts';
import type { Engine, EngineServices, LoopPeers, ResourceEndpoint } from './core/engine.ts';
import { TokenVerifier } from './core/identity/token-verifier.ts';
import { BundleWatcher } from './core/policy/bundle-directory.ts';
import { PolicyEngine } from './core/policy/policy-engine.ts';
import type { PolicySetSource } from './core/policy/policy-set-source.ts';
import { ResourceListener, type ListenerLoop } from './core/resource-listener.ts';
import { SOURCE_COUNT_SLOTS, SOURCE_COUNTS_BYTES, SourceCounts } from './core/source-counts.ts';
import { ENGINES } from './engines/registry.ts';

/** What a loop is lent: the services but its own policy engine and verifier, and where it stands among loops. */
export type LoopServices = Omit<EngineServices, 'policy' | 'verifier' | 'peers' | 'sourceCounts' | 'catalogGeneration'>;

/** Bytes of one listener's catalogue generation in LoopPlace.catalogGenerations. */
export const CATALOG_GENERATION_BYTES = 4;

/** With more than one event loop: this loop's index, the shared connection counts and the other loops. */
export interface LoopPlace {
  readonly index: number;
  /** One Int32 per configured listener, in config order: its open connections on every loop. */
  readonly openConnections: SharedArrayBuffer;
  /** One Int32 per loop index: the loop's open connections on every listener (LOOP_CONNECTIONS_BYTES each). */
  readonly loopConnections: SharedArrayBuffer;
  /** One table of SOURCE_COUNTS_BYTES per configured listener, in config order: its connections per source. */
  readonly sourceCounts: SharedArrayBuffer;
  /** The key of the source counts' slot hash, the same on every loop (sourceCountsKey). */
  readonly sourceCountsKey: Uint8Array;
  /** One Int32 per configured listener, in config order: EngineServices.catalogGeneration. */
  readonly catalogGenerations: SharedArrayBuffer;
  readonly peers: LoopPeers;
  /** Called on every connection this loop's listeners accept (the main loop's: lazy loops on a login burst). */
  readonly onAccept?: () => void;
}

export interface RunningLoop {
  readonly addresses: readonly { name: string; host: string; port: number }[];
  readonly policy: PolicyEngine;
  /** Per listener name: its endpoint, for messages of other loops (ResourceEndpoint.fromPeer). */
  readonly endpoints: ReadonlyMap<string, ResourceEndpoint>;
  /** Re-reads the policies now instead of at the next poll. */
  reloadPolicies(): Promise<void>;
  /** Stops the watcher and closes the listeners (their connections end); the services stay open. */
  close(): Promise<void>;
  /** Stops accepting and resolves once this loop's connections have ended on their own, then as close(). */
  drain(): Promise<void>;
}

/** Bytes of one listener's connection count in LoopPlace.openConnections. */
export const OPEN_CONNECTIONS_BYTES = Int32Array.BYTES_PER_ELEMENT;
/** Bytes of one loop's connection count in LoopPlace.loopConnections. */
export const LOOP_CONNECTIONS_BYTES = Int32Array.BYTES_PER_ELEMENT;

export async function startLoop(
  config: SidecarConfig,
  services: LoopServices,
  place?: LoopPlace,
): Promise<RunningLoop> {
  const { logger, metrics } = services;
  const policy = new PolicyEngine({ cacheSize: config.policy.decisionCacheSize });
  const policySet = config.policy.kubernetes;
  const watcher: BundleWatcher | PolicySetSource =
    policySet === undefined
      ? new BundleWatcher({
          dir: config.policy.bundleDir ?? '',
          engine: policy,
          logger,
          pollIntervalMs: config.policy.pollIntervalMs,
          onReload: (result) => metrics.bundleReloads.inc({ result }),
        })
      : new (await import('./core/policy/policy-set-source.ts')).PolicySetSource({
          configMap: policySet.configMap,
          namespace: policySet.namespace ?? config.pod.namespace,
          access: policySet,
          trustedKeys: config.policy.trustedKeys ?? [],
          engine: policy,
          logger: logger.child({ component: 'policy-set' }),
          resyncMs: policySet.resyncSeconds * 1000,
          pod: { name: config.pod.name, uid: config.pod.uid },
          onReload: (result) => metrics.bundleReloads.inc({ result }),
        });
  // One engine per type in use, initialised once per loop (a parser to load, ...).
  const engines = new Map<string, Engine>();
  for (const l of config.listeners) {
    if (!engines.has(l.type)) engines.set(l.type, await ENGINES[l.type]());
  }
  await Promise.all([...[...engines.values()].map((e) => e.init()), watcher.start()]);
  const verifier = new TokenVerifier({
    issuers: config.identity.issuers,
    clockToleranceSeconds: config.identity.clockToleranceSeconds,
  });
  const loopServices: EngineServices = {
    ...services,
    verifier,
    policy,
    ...(place === undefined ? {} : { peers: place.peers }),
  };
  const listeners: ResourceListener[] = [];
  const addresses: { name: string; host: string; port: number }[] = [];
  const endpoints = new Map<string, ResourceEndpoint>();
  try {
    for (const [i, l] of config.listeners.entries()) {
      const engine = engines.get(l.type) as Engine;
      // Tokens the exchange narrowed to other resources are refused on this one.
      const verifierHere = verifier.forResource({ namespace: l.resource.namespace, name: l.name });
      const sourceCounts =
        place === undefined
          ? undefined
          : new SourceCounts(
              new Int32Array(place.sourceCounts, i * SOURCE_COUNTS_BYTES, SOURCE_COUNT_SLOTS),
              place.sourceCountsKey,
            );
      const endpoint = engine.bind(l, {
        ...loopServices,
        verifier: verifierHere,
        ...(sourceCounts === undefined ? {} : { sourceCounts }),
        ...(place === undefined
          ? {}
          : { catalogGeneration: new Int32Array(place.catalogGenerations, i * CATALOG_GENERATION_BYTES, 1) }),
      });
      const listenerLoop: ListenerLoop | undefined =
        place === undefined
          ? undefined
          : {
              index: place.index,
              openConnections: new Int32Array(place.openConnections, i * OPEN_CONNECTIONS_BYTES, 1),
              loopConnections: new Int32Array(place.loopConnections, place.index * LOOP_CONNECTIONS_BYTES, 1),
              ...(place.onAccept === undefined ? {} : { onAccept: place.onAccept }),
            };
      const listener = new ResourceListener(l, endpoint, loopServices, listenerLoop);
      const address = await listener.listen();
      await endpoint.ready?.(address);
      listeners.push(listener);
      endpoints.set(l.name, endpoint);
      addresses.push({ name: l.name, ...address });
    }
  } catch (err) {
    watcher.stop();
    await Promise.allSettled(listeners.map((l) => l.close()));
    throw err;
  }
  return {
    addresses,
    policy,
    endpoints,
    reloadPolicies: () => watcher.check(),
    async close() {
      watcher.stop();
      await Promise.allSettled(listeners.map((l) => l.close()));
    },
    async drain() {
      await Promise.allSettled(listeners.map((l) => l.drain()));
      watcher.stop();
    },
  };
}
