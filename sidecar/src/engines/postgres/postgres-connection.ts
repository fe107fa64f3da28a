// One client connection through the PostgreSQL engine: startup and token authentication, the upstream
// login with the sidecar's own credential, then the relay. Client→upstream messages are decoded because
// policy gates them; upstream→client bytes are forwarded raw and only the frames that complete a command
// (CommandComplete, ErrorResponse, ReadyForQuery, ...) are looked at.
//
// Denials are sent *through* the upstream: a denied statement is replaced by a cheap statement that fails
// to parse, and the upstream's ErrorResponse for it is replaced by ours (SQLSTATE 42501). Responses
// therefore stay in pipeline order, and PostgreSQL itself puts an open transaction into the failed state
// and discards the rest of an extended-protocol batch until Sync, exactly as for any other error.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Socket } from 'node:net';
import type { Identity, PolicyCommand, SqlStatementFacts } from '@chaperone/api';
import {
  AgentSession,
  type CommandDescription,
  type CommandOutcome,
  type DecidedCommand,
} from '../../core/agent-session.ts';
import { AuthenticationFailed, tokenHash } from '../../core/identity/token-verifier.ts';
import { SessionRecorder } from '../../core/audit/session-recorder.ts';
import { AuditUnavailable } from '../../core/audit/audit-sink.ts';
import { SIDECAR_ERRORS } from '../../core/errors.ts';
import type { PostgresListenerContext } from './postgres-listener.ts';
import type { AnalyzedStatement } from './analysis/analyze-sql.ts';
import { PARSER_SENSITIVE_SETTINGS } from './analysis/analyze-sql.ts';
import { factsSource } from './analysis/sql-analyzer.ts';
import { FrontendDecoder } from './protocol/frontend-decoder.ts';
import {
  readPasswordString,
  protocolNegotiation,
  type FrontendMessage,
  type StartupMessage,
  type Bind,
  type CancelRequest,
} from './protocol/frontend-messages.ts';
import { ProtocolViolation } from './protocol/protocol-violation.ts';
import {
  AUTHENTICATION_CLEARTEXT_PASSWORD,
  AUTHENTICATION_OK,
  backendKeyData,
  errorResponse,
  negotiateProtocolVersion,
  parameterStatus,
  readyForQuery,
  sslResponse,
} from './protocol/backend-encoder.ts';
import { BackendCode, type ErrorFields, type TransactionStatus } from './protocol/backend-messages.ts';
import {
  BackendScanner,
  decodeCommandComplete,
  decodeErrorFields,
  decodeReadyForQuery,
} from './protocol/backend-scanner.ts';
import { encodeExecute, encodeParse, encodeQuery } from './protocol/frontend-encoder.ts';
import { UpstreamError, type UpstreamConnection } from './protocol/upstream-connection.ts';

/** Statement text that fails in the upstream's parser at once; its error is replaced by the denial. */
const FAILING_SQL = 'CHAPERONE_DENIED';
/** Portal name no client can have created (names starting with a NUL cannot be sent). */
const MISSING_PORTAL = 'chaperone\u0001denied';

/** Startup parameters passed to the upstream; anything else (notably `options`) could change privileges or parsing. */
const PASSED_PARAMETERS: ReadonlySet<string> = new Set([
  'application_name',
  'client_encoding',
  'datestyle',
  'timezone',
  'intervalstyle',
  'extra_float_digits',
  'search_path',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
]);
const SAFE_CLIENT_ENCODINGS: ReadonlySet<string> = new Set(['utf8', 'utf-8', 'unicode', 'sql_ascii']);

const INTEREST: readonly BackendCode[] = [
  BackendCode.CommandComplete,
  BackendCode.ErrorResponse,
  BackendCode.ReadyForQuery,
  BackendCode.EmptyQueryResponse,
  BackendCode.PortalSuspended,
  BackendCode.ParseComplete,
  BackendCode.BindComplete,
  BackendCode.CloseComplete,
  BackendCode.RowDescription,
  BackendCode.NoData,
  BackendCode.CopyInResponse,
  BackendCode.NotificationResponse,
];

/** What the proxy expects the upstream to answer, in pipeline order. */
interface ResponseUnit {
  /** `copy-end` marks where the client ended a COPY before the upstream's CopyInResponse arrived. */
  readonly kind: 'query' | 'parse' | 'bind' | 'describe' | 'execute' | 'close' | 'sync' | 'copy-end';
  /** The decided command this unit reports the outcome of. */
  readonly command?: DecidedCommand;
  /** Our ErrorResponse frame, sent instead of the upstream's error for the substituted message. */
  readonly denial?: Buffer;
  /** SQLSTATE of `denial` in the outcome record, when not 42501. */
  readonly denialCode?: string;
  rows: number;
  error?: ErrorFields;
}

interface PreparedStatement {
  readonly text: string;
  readonly analysis: readonly AnalyzedStatement[] | undefined;
  /** Our ErrorResponse when the statement could not be analysed; every use is denied with it. */
  readonly refusal?: Buffer;
}

type Phase = 'startup' | 'authenticating' | 'connecting' | 'ready' | 'closed';

export class PostgresConnection {
  private readonly ctx: PostgresListenerContext;
  private client: Duplex;
  private readonly rawClient: Socket;
  private readonly decoder: FrontendDecoder;
  private phase: Phase = 'startup';
  private startup: StartupMessage | undefined;
  private upstream: UpstreamConnection | undefined;
  private session: AgentSession | undefined;
  private readonly scanner = new BackendScanner({ interest: INTEREST });
  private readonly units: ResponseUnit[] = [];
  private unitHead = 0;
  /** After an extended-protocol error the upstream ignores messages until Sync; so do we. */
  private skipUntilSync = false;
  /** The upstream entered copy-in and the client has not sent CopyDone/CopyFail yet. */
  private clientInCopyIn = false;
  private transactionStatus: TransactionStatus = 'I';
  private readonly statements = new Map<string, PreparedStatement>();
  private readonly portals = new Map<string, { statement: PreparedStatement; params: readonly string[] }>();
  /** SQL-level PREPARE name → analysed inner statement, so EXECUTE name is decided as what it runs. */
  private readonly sqlPrepared = new Map<string, AnalyzedStatement>();
  private searchPath: readonly string[] = ['public'];
  private busy = false;
  private authTimer: NodeJS.Timeout | undefined;
  /** Client-facing cancel key; the upstream's own key never leaves the sidecar. */
  readonly cancelKey = { processId: randomBytes(4).readInt32BE(0) & 0x7fffffff, secretKey: randomBytes(4) };

  constructor(ctx: PostgresListenerContext, socket: Socket) {
    this.ctx = ctx;
    this.rawClient = socket;
    this.client = socket;
    this.decoder = new FrontendDecoder({ maxMessageLength: ctx.config.maxMessageBytes });
    socket.setNoDelay(true);
    socket.on('data', this.onClientData);
    socket.on('error', () => {
      this.close('client connection error');
    });
    socket.on('close', () => {
      this.close('client disconnected');
    });
    this.authTimer = setTimeout(() => {
      this.fatal('08006', 'authentication timed out');
    }, ctx.config.authTimeoutMs);
  }

  /** A method, not a field read, because handlers called in between may have closed the connection. */
  private isClosed(): boolean {
    return this.phase === 'closed';
  }

  private get logger() {
    return this.ctx.logger;
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
    this.drain();
  };

  /** Handles decoded messages until the decoder is empty or a step has to wait. */
  private drain(): void {
    if (this.busy || this.phase === 'closed') return;
    const upstream = this.upstream?.socket;
    upstream?.cork();
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
          this.busy = true;
          this.client.pause();
          wait.then(
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
          return;
        }
        if (this.isClosed()) return;
      }
    } finally {
      upstream?.uncork();
    }
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
        return this.handleReady(msg);
      case 'connecting':
      case 'closed':
        return undefined;
    }
  }

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
      case 'StartupMessage':
        return this.beginAuthentication(msg);
      default:
        throw new ProtocolViolation(`unexpected ${msg.type} before startup`);
    }
  }

  private startTls(): void {
    const secureContext: SecureContext | undefined = this.ctx.tls;
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
    this.close('cancel request handled');
    if (target !== undefined) await target.cancelUpstream();
  }

  /** Sends a CancelRequest for this session to the upstream with the upstream's own key. */
  async cancelUpstream(): Promise<void> {
    const key = this.upstream?.backendKey;
    if (key == null) return;
    const up = this.ctx.config.upstream;
    try {
      await this.ctx.sendCancel(up.host, up.port, this.ctx.upstreamTls(), key.processId, key.secretKey);
      this.logger.info('cancel forwarded', { sessionId: this.session?.id });
    } catch (err) {
      this.logger.warn('cancel failed', { sessionId: this.session?.id, error: err });
    }
  }

  private beginAuthentication(msg: StartupMessage): Promise<void> | undefined {
    this.startup = msg;
    if (msg.majorVersion !== 3) {
      this.fatal('0A000', `unsupported frontend protocol ${String(msg.majorVersion)}.${String(msg.minorVersion)}`);
      return undefined;
    }
    if (msg.parameters.has('replication')) {
      this.fatal('42501', 'replication connections are not allowed through the chaperone sidecar');
      return undefined;
    }
    const encoding = msg.parameters.get('client_encoding');
    if (encoding !== undefined && !SAFE_CLIENT_ENCODINGS.has(encoding.toLowerCase())) {
      // The sidecar decodes statements as UTF-8; a multibyte client encoding could hide text from analysis.
      this.fatal('0A000', `client_encoding ${encoding} is not supported through the chaperone sidecar; use UTF8`);
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

  private async authenticate(token: string): Promise<void> {
    const listener = this.ctx.config.name;
    let identity: Identity;
    try {
      identity = await this.ctx.verifier.verify(token);
    } catch (err) {
      const failure =
        err instanceof AuthenticationFailed
          ? err
          : new AuthenticationFailed('malformed', 'identity token could not be verified');
      this.ctx.metrics.authFailures.inc({ listener, reason: failure.reason });
      this.logger.warn('authentication failed', {
        reason: failure.reason,
        tokenHash: tokenHash(token),
        client: this.rawClient.remoteAddress,
      });
      this.recordAuthFailure(failure);
      this.fatal('28P01', `chaperone: authentication failed: ${failure.message}`);
      return;
    }
    this.phase = 'connecting';
    const startup = this.startup;
    const parameters: [string, string][] = [];
    for (const [name, value] of startup?.parameters ?? []) {
      if (PASSED_PARAMETERS.has(name.toLowerCase())) parameters.push([name, value]);
    }
    const searchPath = startup?.parameters.get('search_path');
    if (searchPath !== undefined) this.searchPath = searchPath.split(',').map((s) => s.trim().replace(/^"|"$/g, ''));
    const up = this.ctx.config.upstream;
    try {
      // Credential files are read per connection, so a rotated Secret reaches new connections.
      this.upstream = await this.ctx.connect({
        host: up.host,
        port: up.port,
        database: up.database,
        user: readFileSync(up.usernameFile, 'utf8').trim(),
        password: readFileSync(up.passwordFile, 'utf8').replace(/\r?\n$/, ''),
        tls: this.ctx.upstreamTls(),
        parameters,
      });
    } catch (err) {
      const reason = err instanceof UpstreamError ? err.reason : 'connect';
      this.logger.error('upstream connection failed', { reason, error: err, subject: identity.subject });
      this.fatal('08006', `chaperone: could not connect to the protected database (${reason})`);
      return;
    }
    if (this.isClosed()) {
      // The client went away (or timed out) while the upstream login was in flight.
      this.upstream.socket.destroy();
      return;
    }
    clearTimeout(this.authTimer);
    try {
      this.session = new AgentSession({
        policy: this.ctx.policy,
        sink: this.ctx.sink,
        podChain: this.ctx.podChain,
        metrics: this.ctx.metrics,
        listener,
        resource: this.ctx.resource,
        pod: this.ctx.pod,
        identity,
        source: {
          address: `${this.rawClient.remoteAddress ?? ''}:${String(this.rawClient.remotePort ?? '')}`,
          applicationName: startup?.parameters.get('application_name') ?? '',
          user: startup?.parameters.get('user') ?? '',
          database: startup?.parameters.get('database') ?? '',
        },
        auditFailureMode: this.ctx.config.auditFailureMode,
      });
    } catch (err) {
      if (!(err instanceof AuditUnavailable)) throw err;
      // FailClosed and the session.start record was refused: no session without a trail (NIST AU-5).
      this.upstream.socket.destroy();
      const why =
        err.reason === 'spool-full' ? 'spool full' : err.reason === 'disk-error' ? 'disk error' : 'shutting down';
      this.fatal(
        SIDECAR_ERRORS.AuditUnavailable.sqlState,
        `chaperone: audit trail unavailable (${why}); resource is fail-closed`,
      );
      return;
    }
    this.ctx.register(this);
    const upstream = this.upstream.socket;
    upstream.on('data', this.onUpstreamData);
    upstream.on('error', () => {
      this.fatal('08006', 'chaperone: connection to the protected database was lost');
    });
    upstream.on('close', () => {
      this.fatal('08006', 'chaperone: the protected database closed the connection');
    });
    upstream.on('drain', () => {
      this.client.resume();
    });
    this.client.on('drain', () => {
      upstream.resume();
    });
    const greeting: Buffer[] = [AUTHENTICATION_OK];
    for (const [name, value] of this.upstream.parameters) greeting.push(parameterStatus(name, value));
    greeting.push(backendKeyData(this.cancelKey.processId, this.cancelKey.secretKey));
    greeting.push(readyForQuery(this.upstream.transactionStatus));
    this.transactionStatus = this.upstream.transactionStatus;
    this.client.write(Buffer.concat(greeting));
    this.phase = 'ready';
    upstream.resume();
    this.logger.info('session started', {
      sessionId: this.session.id,
      subject: identity.subject,
      chain: identity.chain?.map((a) => a.subject),
      tokenHash: identity.tokenHash,
    });
  }

  private recordAuthFailure(failure: AuthenticationFailed): void {
    const recorder = new SessionRecorder(
      this.ctx.sink,
      {
        sessionId: `auth-${this.cancelKey.processId.toString(16)}-${Date.now().toString(36)}`,
        resource: this.ctx.config.name,
        namespace: this.ctx.pod.namespace,
        pod: this.ctx.pod.name,
      },
      this.ctx.podChain,
    );
    try {
      this.recordAuthFailureWith(recorder, failure);
    } catch (err) {
      // The connection is refused anyway; the log line above is what remains of it.
      if (!(err instanceof AuditUnavailable)) throw err;
    }
  }

  private recordAuthFailureWith(recorder: SessionRecorder, failure: AuthenticationFailed): void {
    recorder.record({
      type: 'auth.failure',
      source: {
        address: `${this.rawClient.remoteAddress ?? ''}:${String(this.rawClient.remotePort ?? '')}`,
        applicationName: this.startup?.parameters.get('application_name') ?? '',
        user: this.startup?.parameters.get('user') ?? '',
        database: this.startup?.parameters.get('database') ?? '',
      },
      outcome: { status: 'denied', code: '28P01', message: `${failure.reason}: ${failure.message}` },
    });
  }

  // ---- the relay ----------------------------------------------------------------------------------

  private forward(frame: Buffer): void {
    const upstream = this.upstream?.socket;
    if (upstream === undefined) return;
    if (!upstream.write(frame)) this.client.pause();
  }

  private pushUnit(unit: Omit<ResponseUnit, 'rows'>): void {
    this.units.push({ ...unit, rows: 0 });
  }

  /** Returns a promise when a statement waits for its audit record to be durable before it is forwarded. */
  private handleReady(msg: FrontendMessage): Promise<void> | undefined {
    switch (msg.type) {
      case 'Query':
        return this.handleQuery(msg.query, msg.frame);
      case 'Parse':
        this.handleParse(msg.name, msg.query, msg.frame);
        return;
      case 'Bind':
        this.handleBind(msg);
        return;
      case 'Execute':
        return this.handleExecute(msg.portal, msg.frame);
      case 'Describe':
        this.forward(msg.frame);
        if (!this.skipUntilSync) this.pushUnit({ kind: 'describe' });
        return;
      case 'Close':
        if (msg.kind === 'S') this.statements.delete(msg.name);
        else this.portals.delete(msg.name);
        this.forward(msg.frame);
        if (!this.skipUntilSync) this.pushUnit({ kind: 'close' });
        return;
      case 'Sync':
        this.forward(msg.frame);
        // PostgreSQL ignores Sync during copy-in (libpq sends one right after an extended-protocol COPY
        // FROM STDIN's Execute), so such a Sync gets no ReadyForQuery and must not be waited for.
        if (this.clientInCopyIn) return;
        this.skipUntilSync = false;
        this.pushUnit({ kind: 'sync' });
        return;
      case 'CopyDone':
      case 'CopyFail':
        this.forward(msg.frame);
        if (this.clientInCopyIn) this.clientInCopyIn = false;
        else this.pushUnit({ kind: 'copy-end' }); // copy-in not seen yet: CopyInResponse will find this marker
        return;
      case 'Flush':
      case 'CopyData':
        this.forward(msg.frame);
        return;
      case 'FunctionCall': {
        // The fast-path interface calls any function by OID, out of sight of statement analysis.
        const denial = this.denialFrame('42501', 'chaperone: the fast-path function call interface is not allowed');
        this.forward(encodeQuery(FAILING_SQL));
        this.pushUnit({ kind: 'query', denial });
        return;
      }
      case 'Terminate':
        this.forward(msg.frame);
        this.close('client terminated the session');
        return;
      default:
        throw new ProtocolViolation(`unexpected ${msg.type} message during a session`);
    }
  }

  private analyse(text: string): { statements: readonly AnalyzedStatement[] } | { refusal: Buffer } {
    const analysis = this.ctx.analyzer.analyze(text, this.searchPath);
    if (!analysis.ok) {
      // Fail closed: a statement the sidecar cannot parse is never forwarded.
      return {
        refusal: this.errorFrame({
          severity: 'ERROR',
          code: '42601',
          message: `chaperone: statement not analysable: ${analysis.error.message}`,
          ...(analysis.error.position === undefined ? {} : { position: String(analysis.error.position) }),
        }),
      };
    }
    for (const s of analysis.statements) {
      if (s.setting !== undefined && PARSER_SENSITIVE_SETTINGS.has(s.setting.name)) {
        return {
          refusal: this.denialFrame(
            '42501',
            `chaperone: changing ${s.setting.name} is not allowed (it changes how statements are read)`,
          ),
        };
      }
    }
    // Most strings run no EXECUTE: the analysis is used as it is (the same array for the same analysis,
    // which lets describe() reuse what it derived from it).
    if (!analysis.statements.some((s) => s.executes !== undefined)) return { statements: analysis.statements };
    return { statements: analysis.statements.map((s) => this.resolveSqlExecute(s)) };
  }

  /** EXECUTE name is decided as the statement PREPARE name stored; unknown names keep kind `execute`. */
  private resolveSqlExecute(s: AnalyzedStatement): AnalyzedStatement {
    if (s.executes === undefined) return s;
    const prepared = this.sqlPrepared.get(s.executes);
    return prepared === undefined ? s : { ...prepared, text: s.text, fingerprint: s.fingerprint, executes: s.executes };
  }

  /** Tracks session state the analysis depends on, once a statement is allowed to run. */
  private noteAllowed(statements: readonly AnalyzedStatement[]): void {
    for (const s of statements) {
      if (s.prepares !== undefined) this.sqlPrepared.set(s.prepares, s);
      if (s.deallocates !== undefined) {
        if (s.deallocates === '*') this.sqlPrepared.clear();
        else this.sqlPrepared.delete(s.deallocates);
      }
      if (s.setting?.name === 'search_path' && s.setting.action === 'set' && s.setting.values.length > 0) {
        this.searchPath = s.setting.values;
      }
    }
  }

  private describe(
    text: string,
    statements: readonly AnalyzedStatement[],
    parameters?: readonly string[],
  ): CommandDescription {
    const facts = describeFacts(statements);
    return parameters === undefined
      ? {
          command: facts.command,
          fingerprint: facts.fingerprint,
          text,
          statementKinds: facts.statementKinds,
          relations: facts.relations,
        }
      : {
          command: facts.command,
          fingerprint: facts.fingerprint,
          text,
          parameters,
          statementKinds: facts.statementKinds,
          relations: facts.relations,
        };
  }

  private decide(
    text: string,
    statements: readonly AnalyzedStatement[],
    parameters?: readonly string[],
  ): DecidedCommand {
    const session = this.session;
    if (session === undefined) throw new Error('no session');
    return session.decide(this.describe(text, statements, parameters), {
      inTransaction: this.transactionStatus !== 'I',
    });
  }

  private handleQuery(text: string, frame: Buffer): Promise<void> | undefined {
    if (this.skipUntilSync) {
      // The upstream discards messages until Sync, so what is sent here never runs. It is a failing
      // statement anyway: if the proxy's view of the stream were ever wrong, this fails closed, not open.
      this.forward(encodeQuery(FAILING_SQL));
      return undefined;
    }
    const analysed = this.analyse(text);
    if ('refusal' in analysed) {
      const command = this.decideRefused(text);
      this.forward(encodeQuery(FAILING_SQL));
      this.pushUnit({ kind: 'query', command, denial: analysed.refusal });
      return undefined;
    }
    if (analysed.statements.length === 0) {
      this.forward(frame); // empty query: EmptyQueryResponse, nothing to decide
      this.pushUnit({ kind: 'query' });
      return undefined;
    }
    let command: DecidedCommand;
    try {
      command = this.decide(text, analysed.statements);
    } catch (err) {
      this.forward(encodeQuery(FAILING_SQL));
      this.pushUnit({ kind: 'query', denial: this.auditDenial(err), denialCode: '53100' });
      return undefined;
    }
    const denial = this.denialFor(command);
    if (denial !== undefined) {
      this.forward(encodeQuery(FAILING_SQL));
      this.pushUnit({ kind: 'query', command, denial });
      return undefined;
    }
    const statements = analysed.statements;
    return this.whenAudited(
      () => {
        this.noteAllowed(statements);
        this.forward(frame);
        this.pushUnit({ kind: 'query', command });
      },
      (auditDenial) => {
        this.forward(encodeQuery(FAILING_SQL));
        this.pushUnit({ kind: 'query', command, denial: auditDenial, denialCode: '53100' });
      },
    );
  }

  /**
   * Runs `forward` once the sink has the command's decision record on durable storage: at once when it
   * already is (the allocation-free fast path), else when the group commit completes, returning the promise
   * so the drain loop pauses the client meanwhile. If the record cannot be made durable, a FailClosed
   * resource gets `deny` (53100) instead; a FailOpen one forwards anyway.
   */
  private whenAudited(forward: () => void, deny: (denial: Buffer) => void): Promise<void> | undefined {
    const durable = this.ctx.sink.whenDurable();
    if (durable === undefined) {
      forward();
      return undefined;
    }
    return durable.then(
      () => {
        if (!this.isClosed()) forward();
      },
      (err: unknown) => {
        if (this.isClosed()) return;
        if (err instanceof AuditUnavailable && this.ctx.config.auditFailureMode === 'FailOpen') forward();
        else deny(this.auditDenial(err));
      },
    );
  }

  /** The denial for a command whose record the audit sink refused (FailClosed, NIST AU-5); rethrows anything else. */
  private auditDenial(err: unknown): Buffer {
    if (!(err instanceof AuditUnavailable)) throw err;
    const why =
      err.reason === 'spool-full' ? 'spool full' : err.reason === 'disk-error' ? 'disk error' : 'shutting down';
    this.logger.warn('statement denied: audit trail unavailable', { sessionId: this.session?.id, reason: err.reason });
    this.ctx.metrics.statements.inc({ listener: this.ctx.config.name, decision: 'error' });
    return this.errorFrame({
      severity: 'ERROR',
      code: SIDECAR_ERRORS.AuditUnavailable.sqlState,
      message: `chaperone: audit trail unavailable (${why}); resource is fail-closed`,
      detail: err.message,
      hint: 'The statement was not sent to the database. Retry when the audit trail has room again.',
    });
  }

  /** Records a decision for a statement refused before policy (unparsable or a forbidden setting). */
  private decideRefused(text: string): DecidedCommand | undefined {
    const session = this.session;
    if (session === undefined) throw new Error('no session');
    try {
      return session.decide(
        {
          command: { type: 'sql', statements: [{ kind: 'other', relations: [], functions: [], sideEffects: true }] },
          fingerprint: 'refused',
          text,
          statementKinds: ['other'],
        },
        { inTransaction: this.transactionStatus !== 'I' },
      );
    } catch (err) {
      // Refused either way; only the record is missing (the sink could not take it: FailClosed).
      if (err instanceof AuditUnavailable) return undefined;
      throw err;
    }
  }

  private handleParse(name: string, text: string, frame: Buffer): void {
    if (this.skipUntilSync) {
      this.forward(encodeParse(name, FAILING_SQL)); // discarded upstream; fails closed (see handleQuery)
      return;
    }
    const analysed = this.analyse(text);
    if ('refusal' in analysed) {
      this.statements.set(name, { text, analysis: undefined, refusal: analysed.refusal });
      const command = this.decideRefused(text);
      this.forward(encodeParse(name, FAILING_SQL));
      this.pushUnit({ kind: 'parse', command, denial: analysed.refusal });
      return;
    }
    const statement: PreparedStatement = { text, analysis: analysed.statements };
    // Decide at Parse so a forbidden statement is never prepared; each Execute is decided again (cached),
    // so a policy change reaches prepared statements too.
    const session = this.session;
    if (analysed.statements.length > 0 && session !== undefined) {
      const description = this.describe(text, analysed.statements);
      const decision = session.evaluate(description, { inTransaction: this.transactionStatus !== 'I' });
      if (decision.decision !== 'allow') {
        // Only a refusal is recorded here; an allowed statement is recorded at each Execute, with its parameters.
        let command: DecidedCommand | undefined;
        try {
          command = session.record(description, decision);
        } catch (err) {
          if (!(err instanceof AuditUnavailable)) throw err; // refused either way; only the record is missing
        }
        const denial =
          (command === undefined ? undefined : this.denialFor(command)) ??
          this.denialFrame('42501', 'chaperone: denied');
        this.statements.set(name, { text, analysis: analysed.statements, refusal: denial });
        this.forward(encodeParse(name, FAILING_SQL));
        this.pushUnit({ kind: 'parse', command, denial });
        return;
      }
    }
    this.statements.set(name, statement);
    this.forward(frame);
    this.pushUnit({ kind: 'parse' });
  }

  private handleBind(msg: Bind): void {
    this.forward(msg.frame);
    if (this.skipUntilSync) return;
    // Protocol-level Bind may name a statement created by SQL PREPARE: it is decided as what it holds.
    const sqlPrepared = this.sqlPrepared.get(msg.statement);
    const statement =
      this.statements.get(msg.statement) ??
      (sqlPrepared === undefined ? undefined : { text: sqlPrepared.text, analysis: [sqlPrepared] });
    if (statement === undefined) this.portals.delete(msg.portal);
    else this.portals.set(msg.portal, { statement, params: auditParameters(msg) });
    this.pushUnit({ kind: 'bind' });
  }

  private handleExecute(portalName: string, frame: Buffer): Promise<void> | undefined {
    if (this.skipUntilSync) {
      this.forward(encodeExecute(MISSING_PORTAL, 0)); // discarded upstream; fails closed (see handleQuery)
      return undefined;
    }
    const portal = this.portals.get(portalName);
    if (portal === undefined) {
      // A portal this sidecar did not see bound (e.g. a cursor opened by SQL DECLARE) has no analysis to
      // decide on: fail closed rather than run it unseen.
      const command = this.decideRefused(`EXECUTE PORTAL ${JSON.stringify(portalName)}`);
      this.forward(encodeExecute(MISSING_PORTAL, 0));
      this.pushUnit({
        kind: 'execute',
        command,
        denial: this.denialFrame('42501', 'chaperone: executing a portal the sidecar did not see bound is not allowed'),
      });
      return undefined;
    }
    if (portal.statement.refusal !== undefined) {
      // Refused (and recorded) at Parse; the upstream never prepared it and reports that itself.
      this.forward(encodeExecute(MISSING_PORTAL, 0));
      this.pushUnit({ kind: 'execute' });
      return undefined;
    }
    const analysis = portal.statement.analysis;
    if (analysis === undefined || analysis.length === 0) {
      // An empty statement (EmptyQueryResponse) or one refused at Parse (the upstream reports that).
      this.forward(frame);
      this.pushUnit({ kind: 'execute' });
      return undefined;
    }
    let command: DecidedCommand;
    try {
      command = this.decide(portal.statement.text, analysis, portal.params);
    } catch (err) {
      this.forward(encodeExecute(MISSING_PORTAL, 0));
      this.pushUnit({ kind: 'execute', denial: this.auditDenial(err), denialCode: '53100' });
      return undefined;
    }
    const denial = this.denialFor(command);
    if (denial !== undefined) {
      this.forward(encodeExecute(MISSING_PORTAL, 0));
      this.pushUnit({ kind: 'execute', command, denial });
      return undefined;
    }
    return this.whenAudited(
      () => {
        this.noteAllowed(analysis);
        this.forward(frame);
        this.pushUnit({ kind: 'execute', command });
      },
      (auditDenial) => {
        this.forward(encodeExecute(MISSING_PORTAL, 0));
        this.pushUnit({ kind: 'execute', command, denial: auditDenial, denialCode: '53100' });
      },
    );
  }

  private denialFor(command: DecidedCommand): Buffer | undefined {
    const d = command.decision;
    if (d.decision === 'allow') return undefined;
    const who = d.policy === '' ? 'no policy' : `policy ${d.policy}`;
    if (d.decision === 'approve') {
      // Holding for approval arrives with the approvals feature; until then an approve rule denies.
      return this.denialFrame(
        '42501',
        `chaperone: statement requires approval (${who}, rule ${d.rule}); approvals are not enabled on this sidecar`,
      );
    }
    const why = d.message ?? d.reasons.join('; ');
    return this.errorFrame({
      severity: 'ERROR',
      code: '42501',
      message: `chaperone: permission denied by ${who}, rule ${d.rule}${why === '' ? '' : `: ${why}`}`,
      ...(d.bundleDigest === '' ? {} : { detail: `policy bundle ${d.bundleDigest}` }),
      hint: 'The statement was not sent to the database. Ask the owner of the AccessPolicy if you need it.',
    });
  }

  private denialFrame(code: string, message: string): Buffer {
    return this.errorFrame({ severity: 'ERROR', code, message });
  }

  private errorFrame(fields: ErrorFields): Buffer {
    return errorResponse(fields);
  }

  // ---- upstream → client --------------------------------------------------------------------------

  private readonly onUpstreamData = (chunk: Buffer): void => {
    this.ctx.bytesToClients.inc(chunk.length);
    const client = this.client;
    client.cork();
    try {
      this.scanner.push(chunk);
      for (let seg = this.scanner.next(); seg !== null; seg = this.scanner.next()) {
        if (seg.kind === 'raw') {
          this.toClient(seg.bytes);
          continue;
        }
        const out = this.onFrame(seg.code, seg.frame);
        this.toClient(out);
      }
    } catch (err) {
      this.logger.error('upstream protocol error', { sessionId: this.session?.id, error: err });
      this.fatal('08P01', 'chaperone: the protected database sent an invalid message');
    } finally {
      client.uncork();
    }
  };

  private toClient(bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (!this.client.write(bytes)) this.upstream?.socket.pause();
  }

  private headUnit(): ResponseUnit | undefined {
    return this.units[this.unitHead];
  }

  private shiftUnit(): ResponseUnit | undefined {
    const unit = this.units[this.unitHead];
    if (unit === undefined) return undefined;
    this.unitHead += 1;
    if (this.unitHead > 1024 && this.unitHead * 2 > this.units.length) {
      this.units.splice(0, this.unitHead);
      this.unitHead = 0;
    }
    return unit;
  }

  /** Looks at one interesting frame; returns the bytes to send to the client in its place. */
  private onFrame(code: BackendCode, frame: Buffer): Buffer {
    const unit = this.headUnit();
    switch (code) {
      case BackendCode.CommandComplete: {
        if (unit !== undefined) {
          unit.rows += decodeCommandComplete(frame).rows ?? 0;
          if (unit.kind === 'execute') this.finish(this.shiftUnit(), 'success');
        }
        return frame;
      }
      case BackendCode.EmptyQueryResponse:
      case BackendCode.PortalSuspended:
        if (unit?.kind === 'execute') this.finish(this.shiftUnit(), 'success');
        return frame;
      case BackendCode.ParseComplete:
      case BackendCode.BindComplete:
      case BackendCode.CloseComplete:
      case BackendCode.NoData:
      case BackendCode.RowDescription:
        if (unit !== undefined && expectsCompletion(unit.kind, code)) this.shiftUnit();
        return frame;
      case BackendCode.CopyInResponse:
        this.onCopyIn();
        return frame;
      case BackendCode.NotificationResponse:
        return this.rewriteNotifierPid(frame);
      case BackendCode.ErrorResponse:
        return this.onError(unit, frame);
      case BackendCode.ReadyForQuery: {
        this.transactionStatus = decodeReadyForQuery(frame);
        // Whatever is still queued up to here belonged to this Sync/Query and got no response of its own.
        for (let u = this.shiftUnit(); u !== undefined; u = this.shiftUnit()) {
          if (u.kind === 'query' || u.kind === 'sync') {
            if (u.kind === 'query') this.finish(u, u.error === undefined ? 'success' : 'error');
            break;
          }
          this.finish(u, 'cancelled');
        }
        return frame;
      }
      default:
        return frame;
    }
  }

  /**
   * The upstream entered copy-in. Syncs the client sent since its COPY began are ignored by PostgreSQL, so
   * their units are dropped, up to the client's CopyDone/CopyFail if it already arrived; otherwise Syncs are
   * not queued until it does.
   */
  private onCopyIn(): void {
    const head = this.unitHead;
    let end = -1;
    for (let i = head + 1; i < this.units.length; i++) {
      if (this.units[i]?.kind === 'copy-end') {
        end = i;
        break;
      }
    }
    const limit = end === -1 ? this.units.length : end + 1;
    const kept = this.units.slice(head + 1, limit).filter((u) => u.kind !== 'sync' && u.kind !== 'copy-end');
    this.units.splice(head + 1, limit - head - 1, ...kept);
    if (end === -1) this.clientInCopyIn = true;
  }

  /** NotificationResponses from this session's own backend carry the pid the client knows: ours. */
  private rewriteNotifierPid(frame: Buffer): Buffer {
    const key = this.upstream?.backendKey;
    if (key == null || frame.length < 9 || frame.readInt32BE(5) !== key.processId) return frame;
    const copy = Buffer.from(frame);
    copy.writeInt32BE(this.cancelKey.processId, 5);
    return copy;
  }

  private onError(unit: ResponseUnit | undefined, frame: Buffer): Buffer {
    if (unit === undefined) return frame; // e.g. a FATAL error before shutdown
    if (unit.kind === 'query') {
      // In a simple query the error ends the statements; ReadyForQuery completes the unit.
      unit.error =
        unit.denial === undefined ? decodeErrorFields(frame) : { severity: 'ERROR', code: '42501', message: 'denied' };
      return unit.denial ?? frame;
    }
    // Extended protocol: this message failed and the upstream now skips everything until Sync.
    const failed = this.shiftUnit();
    let cause: ErrorFields | undefined;
    if (failed !== undefined) {
      failed.error = failed.denial === undefined ? decodeErrorFields(frame) : undefined;
      this.finish(failed, failed.denial === undefined ? 'error' : 'denied');
      // A Parse or Bind failed: the Execute that follows in this batch failed because of it.
      if (failed.command === undefined && failed.denial === undefined) cause = failed.error;
    }
    let syncQueued = false;
    for (let u = this.headUnit(); u !== undefined; u = this.headUnit()) {
      if (u.kind === 'sync') {
        syncQueued = true;
        break;
      }
      const skipped = this.shiftUnit();
      if (cause !== undefined && skipped?.kind === 'execute' && skipped.command !== undefined) {
        skipped.error = cause;
        cause = undefined;
        this.finish(skipped, 'error');
      } else {
        this.finish(skipped, 'cancelled');
      }
    }
    if (!syncQueued) this.skipUntilSync = true;
    return failed?.denial ?? frame;
  }

  private finish(unit: ResponseUnit | undefined, status: CommandOutcome['status']): void {
    const command = unit?.command;
    if (unit === undefined || command === undefined || this.session === undefined) return;
    if (unit.denial !== undefined) {
      this.session.complete(command, 'sql', { status: 'denied', code: unit.denialCode ?? '42501' });
      return;
    }
    const error = unit.error;
    this.session.complete(command, 'sql', {
      status: error === undefined ? status : error.code === '57014' ? 'cancelled' : 'error',
      ...(error === undefined ? {} : { code: error.code, message: error.message }),
      rows: unit.rows,
    });
  }

  // ---- errors and teardown ------------------------------------------------------------------------

  private protocolError(err: unknown): void {
    this.ctx.metrics.protocolErrors.inc({ listener: this.ctx.config.name });
    const message = err instanceof ProtocolViolation ? err.message : 'invalid message';
    this.logger.warn('protocol violation', {
      sessionId: this.session?.id,
      message,
      client: this.rawClient.remoteAddress,
    });
    this.fatal('08P01', `chaperone: protocol violation: ${message}`);
  }

  private internalError(err: unknown): void {
    this.logger.error('internal error', { sessionId: this.session?.id, error: err });
    this.fatal('XX000', 'chaperone: internal error');
  }

  /** Sends a FATAL ErrorResponse in the client's protocol, once, and closes the connection. */
  private fatal(code: string, message: string): void {
    if (this.phase === 'closed') return;
    if (this.client.writable) {
      this.client.end(errorResponse({ severity: 'FATAL', code, message }));
    }
    this.close(message);
  }

  close(reason: string): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.authTimer);
    this.ctx.unregister(this);
    // Outstanding commands never got their responses.
    for (let u = this.shiftUnit(); u !== undefined; u = this.shiftUnit()) this.finish(u, 'cancelled');
    this.session?.end(reason);
    const upstream = this.upstream?.socket;
    if (upstream !== undefined) {
      upstream.removeAllListeners('close');
      upstream.removeAllListeners('error');
      upstream.on('error', () => undefined);
      upstream.end();
      setTimeout(() => upstream.destroy(), 1000).unref();
    }
    if (!this.client.destroyed) {
      this.client.end();
      setTimeout(() => this.client.destroy(), 1000).unref();
    }
  }
}

function expectsCompletion(kind: ResponseUnit['kind'], code: BackendCode): boolean {
  switch (kind) {
    case 'parse':
      return code === BackendCode.ParseComplete;
    case 'bind':
      return code === BackendCode.BindComplete;
    case 'close':
      return code === BackendCode.CloseComplete;
    case 'describe':
      return code === BackendCode.RowDescription || code === BackendCode.NoData;
    default:
      return false;
  }
}

/** What describe() derives from a list of analysed statements; the same for every use of one analysis. */
interface DescribedFacts {
  readonly command: PolicyCommand;
  readonly fingerprint: string;
  readonly statementKinds: readonly string[];
  readonly relations: readonly string[];
}

/**
 * Keyed by the analysis's statement array (factsSource: texts that share a cache entry share one), so a
 * prepared statement executed again, a repeated string and the same statement with other literals
 * reuse the policy input and fingerprint instead of deriving them per statement. Frozen: they are shared.
 */
const describedFacts = new WeakMap<readonly AnalyzedStatement[], DescribedFacts>();

function describeFacts(statements: readonly AnalyzedStatement[]): DescribedFacts {
  const source = factsSource(statements);
  let described = describedFacts.get(source);
  if (described === undefined) {
    const facts: SqlStatementFacts[] = statements.map((s) =>
      Object.freeze({ kind: s.kind, relations: s.relations, functions: s.functions, sideEffects: s.sideEffects }),
    );
    described = Object.freeze({
      command: Object.freeze({ type: 'sql' as const, statements: Object.freeze(facts) }),
      fingerprint: factsFingerprint(facts),
      statementKinds: Object.freeze([...new Set(statements.map((s) => s.kind))]),
      relations: Object.freeze([...new Set(statements.flatMap((s) => s.relations))]),
    });
    describedFacts.set(source, described);
  }
  return described;
}

/** The key of what a decision depends on: statement facts, not literal values. */
export function factsFingerprint(facts: readonly SqlStatementFacts[]): string {
  let key = '';
  for (const f of facts) {
    key += `${f.kind}|${f.relations.join(',')}|${f.functions.join(',')}|${f.sideEffects ? 1 : 0};`;
  }
  return key;
}

/** Bound parameters as recorded: text values as sent (cut to 1 KiB), binary ones as hex, NULL as "NULL". */
export function auditParameters(bind: Bind): string[] {
  return bind.params.slice(0, 64).map((p, i) => {
    if (p === null) return 'NULL';
    const format = bind.paramFormats.length === 1 ? bind.paramFormats[0] : bind.paramFormats[i];
    const text = format === 1 ? `\\x${p.subarray(0, 512).toString('hex')}` : p.subarray(0, 1024).toString('utf8');
    return text;
  });
}
