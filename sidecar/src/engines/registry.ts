// The engines, by the ProtectedResource type they speak. The sidecar binds the engine of each configured
// listener's type; the core itself never imports an engine. A new engine (Kubernetes API, HTTP) is one
// entry here and one listener configuration type in config.ts.
import type { ListenerConfig } from '../config.ts';
import type { Engine } from '../core/engine.ts';
import { createHttpEngine } from './http/http-engine.ts';
import { createKubernetesEngine } from './kubernetes/kubernetes-engine.ts';
import { createPostgresEngine } from './postgres/postgres-engine.ts';

type EngineFactories = {
  readonly [T in ListenerConfig['type']]: () => Engine<Extract<ListenerConfig, { type: T }>>;
};

export const ENGINES: EngineFactories = {
  postgres: createPostgresEngine,
  kubernetes: createKubernetesEngine,
  http: createHttpEngine,
};
