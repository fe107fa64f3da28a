// One client connection through the PostgreSQL engine: the socket wiring. Client bytes are decoded
// (protocol/frontend-decoder.ts); during startup each message goes to client-startup.ts, afterwards to the
// session relay (session-relay.ts: the statement gate's verdicts, the response tracker, held commands).
// Upstream bytes are forwarded raw, looked at only where upstream-frames.ts must (the tracker reports each
// command's outcome to the AgentSession; a ParameterStatus that makes the server read statements differently
// from the analysis ends the session, docs/postgres-engine.md). Backpressure is propagated both ways.
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { AgentSession, SessionEnding } from '../../core/agent-session.ts';
import type { ConnectionHandler } from '../../core/engine.ts';
import type { SidecarError } from '../../core/errors.ts';
import type { ServerReportedState, SessionPins } from './analysis/session-state.ts';
import type { SqlAnalyzer } from './analysis/sql-analyzer.ts';
import {
  analyzerFor,
  checkServerReports,
  greeting,
  listenerPins,
  loginPinned,
  openSession,
  recordRefusedConnection,
  refuseStartup,
  serverStateRefusal,
  sessionPins,
  sessionSource,
  StartupRefused,
  verifyToken,
} from './client-startup.ts';
import type { CancelTarget, ConnectionContext } from './connection-context.ts';
import { ApprovalWait } from './approval-wait.ts';
import { errorResponseFor, sessionEnding } from './error-responses.ts';
import { OutboundBytes } from './outbound-bytes.ts';
import { ResultMasking } from './masking/result-masking.ts';
import { ResponseTracker, TRACKED_FRAMES } from './response-tracker.ts';
import { SessionRelay } from './session-relay.ts';
import { StatementGate } from './statement-gate.ts';
import {
  AUTHENTICATION_CLEARTEXT_PASSWORD,
  negotiateProtocolVersion,
  sslResponse,
} from './protocol/backend-encoder.ts';
import { BackendCode } from './protocol/backend-messages.ts';
import { BackendScanner } from './protocol/backend-scanner.ts';
import { FrontendDecoder } from './protocol/frontend-decoder.ts';
import {
  protocolNegotiation,
  readPasswordString,
  type CancelRequest,
  type FrontendMessage,
  type StartupMessage,
} from './protocol/frontend-messages.ts';
import { ProtocolViolation } from './protocol/protocol-violation.ts';
import type { UpstreamConnection } from './protocol/upstream-connection.ts';
import type { LeasedUpstream } from './upstream-reuse.ts';
import { UpstreamFrames } from './upstream-frames.ts';

type Phase = 'startup' | 'authenticating' | 'connecting' | 'ready' | 'closed';

export class PostgresConnection implements CancelTarget, ConnectionHandler {
  private readonly ctx: ConnectionContext;
  private client: Duplex;
  private readonly rawClient: Socket;
  private readonly decoder: FrontendDecoder;
  private phase: Phase = 'startup';
  private startup: StartupMessage | undefined;
  private upstream: UpstreamConnection | undefined;
  /** The upstream session this connection holds (upstream-reuse.ts); handed back when it closes. */
  private lease: LeasedUpstream | undefined;
  private agentSession: AgentSession | undefined;
  private relay: SessionRelay | undefined;
  private tracker: ResponseTracker | undefined;
  private upstreamFrames: UpstreamFrames | undefined;
  private readonly scanner = new BackendScanner({
    interest: [...TRACKED_FRAMES, BackendCode.NotificationResponse, BackendCode.ParameterStatus],
    dataRowRuns: true,
  });
  /** Whether this connection's refusal before any session was recorded already (auth.failure). */
  private refusalRecorded = false;
  /** The client address while this connection counts against maxUnauthenticatedPerSource. */
  private unauthenticatedFrom: string | undefined;
  /** What this turn forwards upstream and sends to the client: each leaves in one write (outbound-bytes.ts). */
  private readonly toUpstream = new OutboundBytes();
  private readonly toClientBytes = new OutboundBytes();
  private busy = false;
  private readonly approvalWait = new ApprovalWait();
  private authTimer: NodeJS.Timeout | undefined;
  /** Client-facing cancel key; the upstream's own key never leaves the sidecar. */
  readonly cancelKey = { processId: randomBytes(4).readInt32BE(0) & 0x7fffffff, secretKey: randomBytes(4) };

  /** Set when the listener will not serve this connection (maxConnections): the StartupMessage's answer. */
  private readonly refusal: SidecarError | undefined;
  constructor(ctx: ConnectionContext, socket: Socket, refusal?: SidecarError) {
    this.ctx = ctx;
    this.refusal = refusal;
    this.client = this.rawClient = socket;
    // Until the client has authenticated, its messages are small (the password message holds a token).
    this.decoder = new FrontendDecoder({ maxMessageLength: ctx.config.maxUnauthenticatedMessageBytes });
    socket.setNoDelay(true);
    socket.on('data', this.onClientData);
    socket.on('error', () => {
      this.close('client connection error');
    });
    socket.on('close', () => {
      this.close('client disconnected');
    });
    this.authTimer = setTimeout(() => {
      this.fatal({ id: 'AuthenticationTimeout', message: 'authentication timed out' });
    }, ctx.config.authTimeoutMs);
    const address = socket.remoteAddress ?? '';
    if (!ctx.admitUnauthenticated(address)) {
      this.refuseConnection({
        id: 'TooManyUnauthenticated',
        message: `chaperone: too many connections from ${address} are still authenticating (at most ${String(ctx.config.maxUnauthenticatedPerSource)})`,
      });
      return;
    }
    this.unauthenticatedFrom = address;
  }

  /** This connection no longer counts as unauthenticated (it authenticated, or it closed). */
  private releaseUnauthenticated(): void {
    if (this.unauthenticatedFrom === undefined) return;
    this.ctx.releaseUnauthenticated(this.unauthenticatedFrom);
    this.unauthenticatedFrom = undefined;
  }

  /** Refuses a connection that is not a session yet: an auth.failure record, then the FATAL. */
  private refuseConnection(error: SidecarError): void {
    this.ctx.logger.warn('connection refused', {
      id: error.id,
      message: error.message,
      client: this.rawClient.remoteAddress,
    });
    this.recordRefusal(error);
    this.fatal(error);
  }

  /** Records a refusal of a connection that has no session (a session records its end itself). */
  private recordRefusal(error: SidecarError): void {
    if (this.refusalRecorded || this.agentSession !== undefined) return;
    this.refusalRecorded = true;
    recordRefusedConnection(this.ctx, sessionSource(this.startup, this.rawClient), this.cancelKey.processId, error);
  }

  /** A method, not a field read, because handlers called in between may have closed the connection. */
  private isClosed(): boolean {
    return this.phase === 'closed';
  }

  // ---- client → sidecar ---------------------------------------------------------------------------

  private readonly onClientData = (chunk: Buffer): void => {
    // After a FATAL the connection is only waiting for its socket to close; nothing more is read.
    if (this.phase === 'closed') return;
    this.ctx.bytesFromClients.inc(chunk.length);
    try {
      this.decoder.push(chunk);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    this.toUpstream.readFrom(chunk); // messages forwarded as they came leave as this very chunk
    this.drain();
  };

  /** Handles decoded messages until the decoder is empty or a step has to wait. */
  private drain(): void {
    if (this.busy || this.phase === 'closed') return;
    try {
      for (;;) {
        let msg: FrontendMessage | null;
        try {
          msg = this.decoder.next();
        } catch (err) {
          this.protocolError(err);
          return;
        }
        if (msg === null) break;
        let wait: Promise<void> | undefined;
        try {
          wait = this.handle(msg);
        } catch (err) {
          if (err instanceof ProtocolViolation) this.protocolError(err);
          else this.internalError(err);
          return;
        }
        if (wait !== undefined) {
          this.pauseFor(wait);
          return;
        }
        if (this.isClosed()) return;
      }
    } finally {
      this.flushUpstream();
    }
  }

  /** Handles nothing more until `step` settles (a hold, the authentication); reads on for approvals (approval-wait.ts). */
  private pauseFor(step: Promise<void>): void {
    this.busy = true;
    if (!this.approvalWait.active) this.client.pause();
    step.then(
      () => {
        this.busy = false;
        if (this.phase !== 'closed') {
          this.client.resume();
          this.drain();
        }
      },
      (err: unknown) => {
        this.busy = false;
        this.internalError(err);
      },
    );
  }

  /** Handles one message; returns a promise when the connection must wait for it before the next. */
  private handle(msg: FrontendMessage): Promise<void> | undefined {
    switch (this.phase) {
      case 'startup':
        return this.handleStartup(msg);
      case 'authenticating':
        if (msg.type !== 'PasswordMessage') {
          throw new ProtocolViolation(`expected a password message, got ${msg.type}`);
        }
        return this.authenticate(readPasswordString(msg));
      case 'ready':
        return (this.relay as SessionRelay).handle(msg);
      case 'connecting':
      case 'closed':
        return undefined;
    }
  }

  // ---- startup and authentication (client-startup.ts) ---------------------------------------------

  private handleStartup(msg: FrontendMessage): Promise<void> | undefined {
    switch (msg.type) {
      case 'SSLRequest':
        this.startTls();
        return undefined;
      case 'GSSENCRequest':
        this.client.write(sslResponse(false));
        return undefined;
      case 'CancelRequest':
        return this.forwardCancel(msg);
      case 'StartupMessage': {
        this.startup = msg;
        if (this.ctx.tls !== undefined && this.client === this.rawClient) {
          // The token would travel in clear: refused before it is asked for.
          this.refuseConnection({
            id: 'TlsRequired',
            message: 'chaperone: this listener requires TLS (connect with sslmode=require or stronger)',
          });
          return undefined;
        }
        // As PostgreSQL: after SSL negotiation and the startup packet, so clients see the SQLSTATE (53300).
        const refusal = this.refusal ?? refuseStartup(msg, listenerPins(this.ctx, false));
        if (refusal !== undefined) {
          this.refuseConnection(refusal);
          return undefined;
        }
        const negotiation = protocolNegotiation(msg);
        if (negotiation !== null) {
          this.client.write(negotiateProtocolVersion(negotiation.newestMinorVersion, negotiation.unrecognizedOptions));
        }
        // The agent's identity token is its password; the listener is on loopback or TLS (config enforces it).
        this.phase = 'authenticating';
        this.client.write(AUTHENTICATION_CLEARTEXT_PASSWORD);
        return undefined;
      }
      default:
        throw new ProtocolViolation(`unexpected ${msg.type} before startup`);
    }
  }

  private startTls(): void {
    const secureContext = this.ctx.tls;
    if (secureContext === undefined || this.client !== this.rawClient) {
      this.client.write(sslResponse(false));
      return;
    }
    this.rawClient.write(sslResponse(true));
    this.rawClient.removeListener('data', this.onClientData);
    const tlsSocket = new TLSSocket(this.rawClient, { isServer: true, secureContext });
    tlsSocket.on('data', this.onClientData);
    tlsSocket.on('error', () => {
      this.close('client TLS error');
    });
    this.client = tlsSocket;
  }

  private async forwardCancel(msg: CancelRequest): Promise<void> {
    // A cancel request carries no identity: its 8-byte key is the credential, as in PostgreSQL itself.
    const target = this.ctx.findByCancelKey(msg.processId, msg.secretKey);
    if (target === undefined && !(await this.ctx.cancelOnOtherLoops(msg.processId, msg.secretKey))) {
      // A guessed or stale key: recorded, since trying keys is how a cancel would be abused.
      this.ctx.logger.warn('cancel request matches no session', { client: this.rawClient.remoteAddress });
      recordRefusedConnection(this.ctx, sessionSource(undefined, this.rawClient), this.cancelKey.processId, {
        id: 'CancelRefused',
        message: `chaperone: cancel request for process ${String(msg.processId)} matches no session`,
      });
    }
    this.close('cancel request handled');
    if (target !== undefined) await target.cancelUpstream();
  }

  async cancelUpstream(): Promise<void> {
    if (this.approvalWait.cancel('cancel request')) return; // a held command: the upstream runs nothing of it
    const key = this.upstream?.backendKey;
    if (key == null) return;
    this.lease?.noteCancel();
    const up = this.ctx.config.upstream;
    try {
      await this.ctx.sendCancel(up.host, up.port, this.ctx.upstreamTls(), key.processId, key.secretKey);
      this.ctx.logger.info('cancel forwarded', { sessionId: this.agentSession?.id });
    } catch (err) {
      this.ctx.logger.warn('cancel failed', { sessionId: this.agentSession?.id, error: err });
    }
  }

  private async authenticate(token: string): Promise<void> {
    const startup = this.startup as StartupMessage;
    const source = sessionSource(startup, this.rawClient);
    let session: AgentSession;
    let upstream: UpstreamConnection;
    let lease: LeasedUpstream;
    let analyzer: SqlAnalyzer;
    let pins: SessionPins;
    let serverState: ServerReportedState;
    try {
      const identity = await verifyToken(this.ctx, token, source, this.cancelKey.processId);
      if (this.isClosed()) return; // the client went away, or timed out, during verification
      this.releaseUnauthenticated();
      this.decoder.setMaxMessageLength(this.ctx.config.maxMessageBytes);
      this.phase = 'connecting';
      session = openSession(this.ctx, identity, source);
      this.agentSession = session;
      pins = sessionPins(this.ctx, identity, session, source);
      lease = await loginPinned(this.ctx, startup, pins, identity.subject);
      if (this.isClosed()) {
        // The client went away (or timed out) while the upstream login was in flight.
        this.ctx.upstreamReuse.release(lease);
        return;
      }
      this.lease = lease;
      upstream = this.upstream = lease.connection;
      // What the server reported before its first ReadyForQuery, checked before AuthenticationOk reaches the client.
      const state = checkServerReports(upstream, pins);
      analyzer = await analyzerFor(this.ctx, state); // the first session loads the parser
      if (this.isClosed()) return; // gone while it loaded; close() ended the upstream
      serverState = state;
      clearTimeout(this.authTimer);
    } catch (err) {
      if (!(err instanceof StartupRefused)) throw err;
      this.fatal(err.refusal);
      return;
    }
    const tracker = new ResponseTracker({
      transactionStatus: upstream.transactionStatus,
      hashKey: this.ctx.maskingHashKey,
      onOutcome: (command, outcome) => session.complete(command, 'sql', outcome),
    });
    this.tracker = tracker;
    this.upstreamFrames = new UpstreamFrames({
      scanner: this.scanner,
      tracker,
      serverState,
      lease,
      upstreamPid: upstream.backendKey?.processId,
      clientPid: this.cancelKey.processId,
    });
    const masking = new ResultMasking({ catalog: this.ctx.catalog, hashKey: this.ctx.maskingHashKey });
    const gate = { analyzer, session, upstream: tracker, logger: this.ctx.logger, pins, masking };
    this.relay = this.relayFor(
      new StatementGate({ ...gate, onAnalysed: (statements) => lease.noteStatements(statements) }),
      tracker,
      lease,
      session,
    );
    this.ctx.register(this);
    lease.attach(this.client, this.onUpstreamData, (closed) => {
      const message = closed
        ? 'the protected database closed the connection'
        : 'connection to the protected database was lost';
      this.fatal({ id: 'UpstreamUnavailable', message: `chaperone: ${message}` });
    });
    this.client.write(greeting(upstream, this.cancelKey));
    this.phase = 'ready';
    upstream.socket.resume();
    const identity = session.identity;
    this.ctx.logger.info('session started', {
      sessionId: session.id,
      subject: identity.subject,
      chain: identity.chain?.map((a) => a.subject),
      tokenHash: identity.tokenHash,
      readOnly: pins.readOnly,
      // The server backend serving the session, to correlate with the server's logs; reused: it served an
      // earlier agent connection and was reset since (docs/postgres-engine.md, "Upstream session reuse").
      upstreamPid: lease.backendPid,
      upstreamReused: lease.reused,
    });
  }

  // ---- the relay (session-relay.ts) ----------------------------------------------------------------

  private relayFor(
    gate: StatementGate,
    tracker: ResponseTracker,
    lease: LeasedUpstream,
    session: AgentSession,
  ): SessionRelay {
    const scanner = this.scanner;
    return new SessionRelay({
      gate,
      tracker,
      lease,
      session,
      approvalWait: this.approvalWait,
      forward: (frame) => this.toUpstream.push(frame),
      flushUpstream: () => this.flushUpstream(),
      beginWait: (verdict, frame) => this.approvalWait.begin(verdict, frame, this.client, this.decoder, this.scanner),
      isClosed: () => this.isClosed(),
      fatal: (error) => this.fatal(error),
      close: (reason) => this.close(reason),
      get atFrameBoundary() {
        return scanner.atFrameBoundary;
      },
    });
  }

  private flushUpstream(): void {
    const upstream = this.upstream?.socket;
    if (upstream === undefined || upstream.destroyed) return;
    if (!this.toUpstream.flushTo(upstream)) this.client.pause();
  }

  // ---- upstream → client --------------------------------------------------------------------------

  private readonly onUpstreamData = (chunk: Buffer): void => {
    this.ctx.bytesToClients.inc(chunk.length);
    const out = this.toClientBytes;
    try {
      const refused = (this.upstreamFrames as UpstreamFrames).relay(chunk, out);
      if (refused !== undefined) {
        // What came before the report goes to the client, then the FATAL.
        out.flushTo(this.client);
        this.ctx.logger.warn('server state refused', {
          sessionId: this.agentSession?.id,
          name: refused.name,
          value: refused.value,
        });
        this.fatal(serverStateRefusal(refused.reason));
        return;
      }
    } catch (err) {
      out.flushTo(this.client); // what came before the bad frame, then the FATAL
      this.ctx.logger.error('upstream protocol error', { sessionId: this.agentSession?.id, error: err });
      this.fatal({
        id: 'UpstreamProtocolViolation',
        message: 'chaperone: the protected database sent an invalid message',
      });
      return;
    }
    this.approvalWait.flushTo(out, this.scanner.atFrameBoundary);
    if (!out.flushTo(this.client)) this.upstream?.socket.pause();
  };

  // ---- errors and teardown ------------------------------------------------------------------------

  private protocolError(err: unknown): void {
    this.ctx.services.metrics.protocolErrors.inc({ listener: this.ctx.config.name });
    const violation = err instanceof ProtocolViolation ? err : new ProtocolViolation('invalid message');
    this.ctx.logger.warn('protocol violation', {
      sessionId: this.agentSession?.id,
      message: violation.message,
      client: this.rawClient.remoteAddress,
    });
    this.fatal({ id: violation.errorId, message: `chaperone: protocol violation: ${violation.message}` });
  }

  private internalError(err: unknown): void {
    this.ctx.logger.error('internal error', { sessionId: this.agentSession?.id, error: err });
    this.fatal({ id: 'Internal', message: 'chaperone: internal error' });
  }

  /**
   * Sends a FATAL ErrorResponse in the client's protocol, once, and closes the connection; the session's
   * end record carries the error: `denied` for a refusal, `error` for a failure.
   */
  private fatal(error: SidecarError): void {
    if (this.phase === 'closed') return;
    // Before a session exists (a protocol violation or timeout in startup): an auth.failure record. A
    // rejected token was recorded by verifyToken.
    if (error.id !== 'AuthenticationFailed') this.recordRefusal(error);
    if (this.client.writable) this.client.end(errorResponseFor(error, true));
    this.close(error.message, sessionEnding(error));
  }

  close(reason: string, ending?: SessionEnding): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.authTimer);
    this.releaseUnauthenticated();
    this.ctx.unregister(this);
    // Outstanding commands never got their responses.
    // A transaction left open: the server rolls it back, and the session's end record names what it undid.
    const rolledBack = this.tracker?.cancelAll();
    this.relay?.connectionEnded();
    // A held command is withdrawn first: what that records comes before session.end, the session's last record.
    this.approvalWait.withdraw(reason, () => this.agentSession?.end(reason, ending, rolledBack));
    if (this.lease !== undefined) this.ctx.upstreamReuse.release(this.lease);
    if (!this.client.destroyed) {
      this.client.pause(); // nothing more is read: a refused body is held back by TCP, not read and dropped
      this.client.end();
      setTimeout(() => this.client.destroy(), 1000).unref();
    }
  }
}
