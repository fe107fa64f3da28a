// The engines, by the ProtectedResource type they speak. The sidecar binds the engine of each configured
// listener's type; the core itself never imports an engine. A new engine (Kubernetes API, HTTP) is one
// entry here and one listener configuration type in config.ts. Each engine's modules are imported only
// when a listener of its type is configured: a sidecar for one PostgreSQL resource does not carry the
// Kubernetes and HTTP engines in its memory (bench/README.md, idle RSS).
import type { ListenerConfig } from '../config.ts';
import type { Engine } from '../core/engine.ts';

type EngineFactories = {
  readonly [T in ListenerConfig['type']]: () => Promise<Engine<Extract<ListenerConfig, { type: T }>>>;
};

export const ENGINES: EngineFactories = {
  postgres: async () => (await import('./postgres/postgres-engine.ts')).createPostgresEngine(),
  kubernetes: async () => (await import('./kubernetes/kubernetes-engine.ts')).createKubernetesEngine(),
  http: async () => (await import('./http/http-engine.ts')).createHttpEngine(),
};
