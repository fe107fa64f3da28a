// The startup phase of a PostgreSQL client connection, up to the first ReadyForQuery: what a StartupMessage
// may ask for, verifying the identity token (the client's password), opening the AgentSession, the session's
// pins (read-only when its policies grant no write), the upstream login with the sidecar's own credential
// (or its least-privilege one) and the pinned settings, the check of what the server reports, and the
// greeting. The connection drives the socket; this says what to do. Every refusal is a SidecarError the
// connection sends as a FATAL ErrorResponse (thrown, in the asynchronous steps, as StartupRefused); refusals
// before a session exists are recorded as auth.failure records of their own.
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Identity } from '@chaperone/api';
import { AgentSession, policyIdentity, type ClientSource } from '../../core/agent-session.ts';
import { AuditUnavailable } from '../../core/audit/audit-sink.ts';
import { RecordChain } from '../../core/audit/record-chain.ts';
import { auditUnavailableReason, type SidecarError } from '../../core/errors.ts';
import { AuthenticationFailed, tokenHash } from '../../core/identity/token-verifier.ts';
import type { ConnectionContext } from './connection-context.ts';
import { sqlStateOf, upstreamRefusal } from './error-responses.ts';
import { AUTHENTICATION_OK, backendKeyData, parameterStatus, readyForQuery } from './protocol/backend-encoder.ts';
import type { StartupMessage } from './protocol/frontend-messages.ts';
import { runSimpleQueries, UpstreamError, type UpstreamConnection } from './protocol/upstream-connection.ts';
import {
  DEFAULT_PINNED_SCHEMA,
  ServerReportedState,
  sessionTimeoutsSql,
  upstreamStartupParameters,
  type SessionPins,
  type StartupParameters,
} from './analysis/session-state.ts';
import { UnsupportedServerVersion, type SqlAnalyzer, type SqlAnalyzers } from './analysis/sql-analyzer.ts';
import { policiesGrantWrite } from './write-grant.ts';
import { loginKey, type LeasedUpstream } from './upstream-reuse.ts';

/** A refusal during startup; the connection sends `refusal` as a FATAL ErrorResponse and closes. */
export class StartupRefused extends Error {
  override name = 'StartupRefused';
  readonly refusal: SidecarError;
  constructor(refusal: SidecarError) {
    super(refusal.message);
    this.refusal = refusal;
  }
}

/** Why a StartupMessage is refused before authentication; undefined when it may go on. */
export function refuseStartup(msg: StartupMessage, pins: SessionPins): SidecarError | undefined {
  if (msg.majorVersion !== 3) {
    return {
      id: 'UnsupportedProtocol',
      message: `unsupported frontend protocol ${String(msg.majorVersion)}.${String(msg.minorVersion)}`,
    };
  }
  // Checked again with the session's own pins once the identity is known (a read-only session refuses more).
  const parameters = upstreamStartupParameters(msg.parameters, pins);
  return parameters.ok ? undefined : startupParameterRefusal(parameters);
}

/** The FATAL for a refused upstreamStartupParameters result. */
export function startupParameterRefusal(result: Extract<StartupParameters, { ok: false }>): SidecarError {
  return {
    id: result.privilege ? 'StartupParameterRefused' : 'StartupParameterUnsupported',
    message: `chaperone: ${result.reason}`,
  };
}

/** The FATAL for a server report (ParameterStatus) the session cannot run with. */
export function serverStateRefusal(reason: string): SidecarError {
  return { id: 'UnsupportedServer', message: `chaperone: ${reason}` };
}

/** Who the client says it is, as recorded in session.start and auth.failure. */
export function sessionSource(msg: StartupMessage | undefined, socket: Socket): ClientSource {
  return {
    address: `${socket.remoteAddress ?? ''}:${String(socket.remotePort ?? '')}`,
    applicationName: msg?.parameters.get('application_name') ?? '',
    user: msg?.parameters.get('user') ?? '',
    database: msg?.parameters.get('database') ?? '',
  };
}

/**
 * Verifies the identity token. A failure is counted, logged with the token's hash (never the token),
 * recorded as `auth.failure`, and thrown as StartupRefused.
 */
export async function verifyToken(
  ctx: ConnectionContext,
  token: string,
  source: ClientSource,
  cancelKey: number,
): Promise<Identity> {
  try {
    return await ctx.services.verifier.verify(token);
  } catch (err) {
    const failure =
      err instanceof AuthenticationFailed
        ? err
        : new AuthenticationFailed('malformed', 'identity token could not be verified');
    ctx.services.metrics.authFailures.inc({ listener: ctx.config.name, reason: failure.reason });
    ctx.logger.warn('authentication failed', {
      reason: failure.reason,
      tokenHash: tokenHash(token),
      client: source.address,
    });
    recordRefusedConnection(ctx, source, cancelKey, {
      id: 'AuthenticationFailed',
      message: `${failure.reason}: ${failure.message}`,
    });
    throw new StartupRefused({
      id: 'AuthenticationFailed',
      message: `chaperone: authentication failed: ${failure.message}`,
    });
  }
}

/**
 * Records a connection refused before it became a session (a rejected token, a refused startup parameter,
 * a plaintext startup on a TLS listener, too many unauthenticated connections, a cancel request matching no
 * session) as an `auth.failure` record of its own one-record trail. The connection is refused whatever the
 * trail says; when the record itself is refused, the log line is what remains of it.
 */
export function recordRefusedConnection(
  ctx: ConnectionContext,
  source: ClientSource,
  cancelKey: number,
  refusal: SidecarError,
): void {
  const chain = new RecordChain(
    ctx.services.sink,
    {
      sessionId: `auth-${cancelKey.toString(16)}-${Date.now().toString(36)}`,
      resource: ctx.config.name,
      resourceType: ctx.resource.type,
      namespace: ctx.services.pod.namespace,
      pod: ctx.services.pod.name,
    },
    ctx.services.podChain,
  );
  try {
    chain.record({
      type: 'auth.failure',
      source: { ...source },
      outcome: { status: 'denied', code: sqlStateOf(refusal.id), message: refusal.message.slice(0, 1024) },
    });
  } catch (err) {
    if (!(err instanceof AuditUnavailable)) throw err;
    ctx.logger.warn('refused connection not recorded: audit trail unavailable', { client: source.address });
  }
}

/** Which upstream login a session uses: the resource's credential, or its least-privilege one. */
export type UpstreamLogin = 'full' | 'read-only';

/**
 * An upstream session for `parameters` (upstreamStartupParameters: the client's allowed settings plus the
 * pins) with the sidecar's own credential (or its least-privilege one): a parked session of exactly this
 * login when there is one (upstream-reuse.ts), else a new login. The credential files are read per
 * connection, so a rotated Secret changes the login key and reaches new connections.
 */
export async function loginUpstream(
  ctx: ConnectionContext,
  parameters: readonly (readonly [string, string])[],
  login: UpstreamLogin,
  subject: string,
): Promise<LeasedUpstream> {
  const up = ctx.config.upstream;
  const usernameFile = login === 'read-only' ? up.readOnlyUsernameFile : up.usernameFile;
  const passwordFile = login === 'read-only' ? up.readOnlyPasswordFile : up.passwordFile;
  if (usernameFile === undefined || passwordFile === undefined) throw new Error(`no ${login} credential configured`);
  const user = readFileSync(usernameFile, 'utf8').trim();
  const password = readFileSync(passwordFile, 'utf8').replace(/\r?\n$/, '');
  const tls = ctx.upstreamTls();
  const key = loginKey({ host: up.host, port: up.port, database: up.database, login, user, password, tls, parameters });
  try {
    return await ctx.upstreamReuse.lease(key, () =>
      ctx.connect({ host: up.host, port: up.port, database: up.database, user, password, tls, parameters }),
    );
  } catch (err) {
    const reason = err instanceof UpstreamError ? err.reason : 'connect';
    const serverError = err instanceof UpstreamError ? err.fields : undefined;
    ctx.logger.error('upstream connection failed', { reason, sqlState: serverError?.code, error: err, subject, login });
    throw new StartupRefused(upstreamRefusal(reason, serverError));
  }
}

/** Opens the session (its session.start record); throws StartupRefused on a FailClosed resource whose trail refuses it. */
export function openSession(ctx: ConnectionContext, identity: Identity, source: ClientSource): AgentSession {
  try {
    return new AgentSession({
      policy: ctx.services.policy,
      sink: ctx.services.sink,
      podChain: ctx.services.podChain,
      metrics: ctx.services.metrics,
      listener: ctx.config.name,
      resource: ctx.resource,
      pod: ctx.services.pod,
      identity,
      source,
      auditFailureMode: ctx.config.auditFailureMode,
      ...(ctx.services.approvals === undefined ? {} : { approvals: ctx.services.approvals }),
    });
  } catch (err) {
    if (!(err instanceof AuditUnavailable)) throw err;
    // No session without a trail (NIST AU-5).
    throw new StartupRefused({
      id: 'AuditUnavailable',
      message: `chaperone: audit trail unavailable (${auditUnavailableReason(err)}); resource is fail-closed`,
    });
  }
}

/** AuthenticationOk, the upstream's ParameterStatus values, our BackendKeyData and the first ReadyForQuery, in one write. */
export function greeting(upstream: UpstreamConnection, cancelKey: { processId: number; secretKey: Buffer }): Buffer {
  const frames: Buffer[] = [AUTHENTICATION_OK];
  for (const [name, value] of upstream.parameters) frames.push(parameterStatus(name, value));
  frames.push(backendKeyData(cancelKey.processId, cancelKey.secretKey));
  frames.push(readyForQuery(upstream.transactionStatus));
  return Buffer.concat(frames);
}

/** The pins of a session on this listener: its pinned schema, whether it is read-only, and then its timeouts' bounds. */
export function listenerPins(ctx: ConnectionContext, readOnly: boolean): SessionPins {
  const schema = ctx.config.searchPath || DEFAULT_PINNED_SCHEMA;
  if (!readOnly) return { schema, readOnly };
  const bounds = ctx.config.readOnlyTimeouts;
  return {
    schema,
    readOnly,
    timeoutBounds: {
      statement_timeout: bounds.statementTimeoutMs,
      idle_in_transaction_session_timeout: bounds.idleInTransactionSessionTimeoutMs,
      ...(bounds.lockTimeoutMs === undefined ? {} : { lock_timeout: bounds.lockTimeoutMs }),
    },
  };
}

/** The pins of an opened session: read-only when its policies grant no write (write-grant.ts). */
export function sessionPins(
  ctx: ConnectionContext,
  identity: Identity,
  session: AgentSession,
  source: ClientSource,
): SessionPins {
  const mayWrite = policiesGrantWrite(ctx.services.policy, {
    identity: policyIdentity(identity),
    resource: ctx.resource,
    session: {
      id: session.id,
      applicationName: source.applicationName,
      clientAddress: source.address,
      inTransaction: false,
    },
  });
  return listenerPins(ctx, !mayWrite);
}

/**
 * Logs in upstream with the pinned startup parameters: with the least-privilege credential for a read-only
 * session when the listener has one. Throws StartupRefused when the client's parameters cannot be honoured
 * under these pins (a read-only session refuses more than the check before authentication did).
 */
export async function loginPinned(
  ctx: ConnectionContext,
  startup: StartupMessage,
  pins: SessionPins,
  subject: string,
): Promise<LeasedUpstream> {
  const parameters = upstreamStartupParameters(startup.parameters, pins);
  if (!parameters.ok) throw new StartupRefused(startupParameterRefusal(parameters));
  const login = pins.readOnly && ctx.config.upstream.readOnlyUsernameFile !== undefined ? 'read-only' : 'full';
  ctx.logger.debug('upstream login', { subject, login, readOnly: pins.readOnly });
  const lease = await loginUpstream(ctx, parameters.parameters, login, subject);
  const timeouts = sessionTimeoutsSql(pins, parameters.timeouts);
  if (timeouts !== undefined) await boundTimeouts(ctx, lease, timeouts, subject);
  return lease;
}

/**
 * Sets a read-only session's timeouts (sessionTimeoutsSql) on its upstream before the client is greeted,
 * on a new login and on a reused one alike (DISCARD ALL reset them). A session whose bounds could not be
 * set is refused and its upstream closed, never run unbounded.
 */
async function boundTimeouts(
  ctx: ConnectionContext,
  lease: LeasedUpstream,
  sql: string,
  subject: string,
): Promise<void> {
  let failure: string | undefined;
  try {
    const outcome = await runSimpleQueries(lease.connection.socket, [sql]);
    const error = outcome.results[0]?.error;
    if (error !== undefined) failure = `${error.code} ${error.message}`;
    else if (outcome.transactionStatus !== 'I') failure = `transaction status ${outcome.transactionStatus}`;
  } catch (err) {
    failure = err instanceof Error ? err.message : String(err);
  }
  if (failure === undefined) return;
  ctx.logger.error('the timeouts of a read-only session could not be set', { subject, failure });
  ctx.upstreamReuse.release(lease); // not clean: closed, not parked
  throw new StartupRefused({
    id: 'UpstreamUnavailable',
    message: 'chaperone: the timeouts of a read-only session could not be set on the protected database',
  });
}

/**
 * The server's reports up to its first ReadyForQuery, checked against what the analysis assumes; throws
 * StartupRefused (UnsupportedServer) when the session cannot run.
 */
export function checkServerReports(upstream: UpstreamConnection, pins: SessionPins): ServerReportedState {
  const state = new ServerReportedState(pins);
  for (const [name, value] of upstream.parameters) {
    const refusal = state.note(name, value);
    if (refusal !== undefined) throw new StartupRefused(serverStateRefusal(refusal));
  }
  const missing = state.startupRefusal();
  if (missing !== undefined) throw new StartupRefused(serverStateRefusal(missing));
  return state;
}

/**
 * The analyzer of the upstream's major version (the first session loads the parser); a version without a
 * grammar here, or a parser that cannot be loaded, refuses the session.
 */
export async function analyzerFor(ctx: ConnectionContext, state: ServerReportedState): Promise<SqlAnalyzer> {
  const version = state.get('server_version') ?? '';
  let analyzers: SqlAnalyzers;
  try {
    analyzers = await ctx.analyzers();
  } catch (err) {
    ctx.logger.error('the SQL parser could not be loaded', { error: err });
    throw new StartupRefused({ id: 'Internal', message: 'chaperone: the SQL parser could not be loaded' });
  }
  try {
    return analyzers.forServerVersion(version);
  } catch (err) {
    if (!(err instanceof UnsupportedServerVersion)) throw err;
    throw new StartupRefused(serverStateRefusal(err.message));
  }
}
