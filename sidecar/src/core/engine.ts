// The seam between the protocol-neutral core and the protocol engines. An engine is registered by the
// ProtectedResource type it speaks (engines/registry.ts); the sidecar binds it to each configured resource
// and a core ResourceListener hands it every accepted socket. Per connection, the engine decodes traffic
// into protocol-neutral commands (core/command.ts), asks its AgentSession to decide and record them, applies
// the verdict in its own protocol and reports each command's outcome. The core never imports an engine.
import type { Socket } from 'node:net';
import type { ResourceType } from '@chaperone/api';
import type { ApprovalDesk } from './approvals/approval-desk.ts';
import type { AuditSink } from './audit/audit-sink.ts';
import type { SidecarError } from './errors.ts';
import type { PodChain } from './audit/pod-chain.ts';
import type { TokenVerifier } from './identity/token-verifier.ts';
import type { Logger } from './observability/logger.ts';
import type { SidecarMetrics } from './observability/metrics.ts';
import type { PolicyEngine } from './policy/policy-engine.ts';
import type { SourceCounts } from './source-counts.ts';

/** What the core lends every engine: identity, policy, the audit trail, metrics and logging. */
export interface EngineServices {
  readonly pod: { readonly name: string; readonly namespace: string };
  readonly verifier: TokenVerifier;
  readonly policy: PolicyEngine;
  readonly sink: AuditSink;
  readonly podChain: PodChain;
  readonly metrics: SidecarMetrics;
  readonly logger: Logger;
  /** Where approve decisions file their requests; absent: approvals are not enabled (approve refuses). */
  readonly approvals?: ApprovalDesk;
  /** The other event loops serving the same listeners; absent with one loop (docs/sidecar-event-loops.md). */
  readonly peers?: LoopPeers;
  /**
   * The listener's connections per client address, counted with every event loop's; absent when one loop
   * serves for good (the engine counts alone). Lent per listener (ResourceEndpoint bind).
   */
  readonly sourceCounts?: SourceCounts;
  /**
   * One Int32 in memory every event loop's endpoint of the listener shares: an engine that caches what the
   * upstream's catalogue says bumps it when it learns the catalogue changed, and every loop's engine drops
   * its cache when it sees it moved (postgres masking/relation-catalog.ts). Absent with one loop for good.
   */
  readonly catalogGeneration?: Int32Array;
}

/**
 * The sidecar's other event loops (worker threads), as one loop's engines reach them: for what arrives on
 * one loop but belongs to a connection of another (a PostgreSQL CancelRequest).
 */
export interface LoopPeers {
  /**
   * Hands `message` (structured-cloneable) to the same listener's endpoint on every other loop
   * (ResourceEndpoint.fromPeer); resolves to their answers.
   */
  ask(listener: string, message: unknown): Promise<unknown[]>;
}

/** The part of a listener's configuration the core reads; everything else belongs to the engine. */
export interface ResourceListenerConfig {
  /** The ProtectedResource's name: the listener's name in logs, metrics and audit records. */
  readonly name: string;
  readonly type: ResourceType;
  /** host:port. */
  readonly listen: string;
  /** Client connections open at once; past it the listener refuses new ones (TooManyConnections). */
  readonly maxConnections?: number;
}

/** One client connection, as the listener that accepted it sees it. */
export interface ConnectionHandler {
  /** Ends the connection (the sidecar is shutting down); outstanding commands are recorded as cancelled. */
  close(reason: string): void;
}

/** An engine bound to one resource. */
export interface ResourceEndpoint {
  /** Takes over an accepted socket; called once per connection. */
  accept(socket: Socket): ConnectionHandler;
  /**
   * Takes over a socket the listener will not serve (its connection limit is reached) to send `refusal` in
   * the engine's protocol once the client has said enough to understand it, then close. Without it the
   * listener just closes such sockets.
   */
  refuse?(socket: Socket, refusal: SidecarError): ConnectionHandler;
  /**
   * Called once the listener is open, before the sidecar reports ready: finishes what needs I/O (a generated
   * certificate) and writes what clients need to reach the endpoint (the agent's kubeconfig). Optional.
   */
  ready?(address: { readonly host: string; readonly port: number }): Promise<void>;
  /**
   * Called once the listener is closed and every connection of it ended (the sidecar stops): ends what the
   * endpoint keeps beyond its connections (parked upstream sessions). Optional.
   */
  close?(): Promise<void>;
  /** Answers a message of the same listener's endpoint on another event loop (LoopPeers.ask). Optional. */
  fromPeer?(message: unknown): Promise<unknown>;
}

export interface Engine<Config extends ResourceListenerConfig = ResourceListenerConfig> {
  readonly type: Config['type'];
  /** Loads what the engine needs once per process (a parser, ...), before any of its listeners opens. */
  init(): Promise<void>;
  /** Binds the engine to one configured resource; throws on configuration it cannot use (unreadable files). */
  bind(config: Config, services: EngineServices): ResourceEndpoint;
}
