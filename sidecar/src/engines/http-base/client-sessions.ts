// Who is asking on an HTTP connection: the agent's bearer token, verified on every request, and the
// AgentSession it opens. HTTP clients keep connections alive across many requests, so one connection is one
// agent session as long as it presents the same token; a different token on the same connection ends that
// session and opens another. Every request's token is verified on its own (docs/identity.md, "Kept-alive
// connections"): the verifier reuses a verification for at most a minute and only while the issuer's key
// set is the one it was checked with, so a key rotated away, an expired token, a malformed one or none
// refuses that request however many requests the connection carried before. Shared by the Kubernetes and
// HTTP engines.
import type { Socket } from 'node:net';
import type { Identity } from '@chaperone/api';
import { AgentSession, type ClientSource, type ResourceContext } from '../../core/agent-session.ts';
import { AuditUnavailable } from '../../core/audit/audit-sink.ts';
import { RecordChain } from '../../core/audit/record-chain.ts';
import type { EngineServices } from '../../core/engine.ts';
import { auditRefusal, type SidecarError } from '../../core/errors.ts';
import { AuthenticationFailed, tokenHash } from '../../core/identity/token-verifier.ts';
import type { Logger } from '../../core/observability/logger.ts';

export interface SessionEndpoint {
  readonly listener: string;
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly auditFailureMode: 'FailClosed' | 'FailOpen';
}

interface ConnectionIdentity {
  /** tokenHash of the token the session was opened with. */
  readonly tokenHash: string;
  readonly session: AgentSession;
}

export type Authenticated = { readonly session: AgentSession } | { readonly refusal: SidecarError };

export class ClientSessions {
  private readonly endpoint: SessionEndpoint;
  private readonly byConnection = new WeakMap<Socket, ConnectionIdentity>();
  private failures = 0;

  constructor(endpoint: SessionEndpoint) {
    this.endpoint = endpoint;
  }

  /**
   * The session of the agent presenting `token` on `socket`, once the token is verified: the connection's
   * current one when it was opened with the same token, else a new one. A refusal is logged with the
   * token's hash (never the token) and recorded as auth.failure; the connection's session stays as it was.
   */
  async authenticate(socket: Socket, token: string | undefined, source: ClientSource): Promise<Authenticated> {
    if (token === undefined) {
      return this.refuse(new AuthenticationFailed('missing', 'no bearer token was presented'), '', source);
    }
    let identity: Identity;
    try {
      identity = await this.endpoint.services.verifier.verify(token);
    } catch (err) {
      const failure =
        err instanceof AuthenticationFailed
          ? err
          : new AuthenticationFailed('malformed', 'identity token could not be verified');
      return this.refuse(failure, token, source);
    }
    // Read after the verification: pipelined requests of one connection are verified concurrently, and
    // from here to the map's update nothing yields, so each sees the session the one before it left.
    const hash = tokenHash(token);
    const current = this.byConnection.get(socket);
    if (current?.tokenHash === hash) return { session: current.session };
    if (current !== undefined) current.session.end('token changed');
    let session: AgentSession;
    try {
      session = new AgentSession({
        policy: this.endpoint.services.policy,
        sink: this.endpoint.services.sink,
        podChain: this.endpoint.services.podChain,
        metrics: this.endpoint.services.metrics,
        listener: this.endpoint.listener,
        resource: this.endpoint.resource,
        pod: this.endpoint.services.pod,
        identity,
        source,
        auditFailureMode: this.endpoint.auditFailureMode,
        ...(this.endpoint.services.approvals === undefined ? {} : { approvals: this.endpoint.services.approvals }),
      });
    } catch (err) {
      if (!(err instanceof AuditUnavailable)) throw err;
      this.byConnection.delete(socket);
      return { refusal: auditRefusal(err) };
    }
    this.byConnection.set(socket, { tokenHash: hash, session });
    if (current === undefined) socket.once('close', () => this.end(socket));
    return { session };
  }

  /** Ends the connection's session (its session.end record). */
  end(socket: Socket, reason = 'connection closed'): void {
    const current = this.byConnection.get(socket);
    this.byConnection.delete(socket);
    current?.session.end(reason);
  }

  private refuse(failure: AuthenticationFailed, token: string, source: ClientSource): Authenticated {
    const { services, listener, logger } = this.endpoint;
    services.metrics.authFailures.inc({ listener, reason: failure.reason });
    logger.warn('authentication failed', {
      reason: failure.reason,
      ...(token === '' ? {} : { tokenHash: tokenHash(token) }),
      client: source.address,
    });
    const chain = new RecordChain(
      services.sink,
      {
        sessionId: `auth-${Date.now().toString(36)}-${String(this.failures++)}`,
        resource: listener,
        resourceType: this.endpoint.resource.type,
        namespace: services.pod.namespace,
        pod: services.pod.name,
      },
      services.podChain,
    );
    try {
      chain.record({
        type: 'auth.failure',
        source: { ...source },
        outcome: { status: 'denied', code: '401', message: `${failure.reason}: ${failure.message}` },
      });
    } catch (err) {
      // The request is refused anyway; the log line is what remains of it.
      if (!(err instanceof AuditUnavailable)) throw err;
    }
    return {
      refusal: { id: 'AuthenticationFailed', message: `chaperone: authentication failed: ${failure.message}` },
    };
  }
}
