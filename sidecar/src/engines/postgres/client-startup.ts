// The startup phase of a PostgreSQL client connection, up to the first ReadyForQuery: what a StartupMessage
// may ask for, verifying the identity token (the client's password), the upstream login with the sidecar's
// own credential, opening the AgentSession, and the greeting. The connection drives the socket; this says
// what to do. Every refusal is a SidecarError the connection sends as a FATAL ErrorResponse (thrown, in the
// asynchronous steps, as StartupRefused).
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Identity } from '@chaperone/api';
import { AgentSession, type ClientSource } from '../../core/agent-session.ts';
import { AuditUnavailable } from '../../core/audit/audit-sink.ts';
import { RecordChain } from '../../core/audit/record-chain.ts';
import { auditUnavailableReason, type SidecarError } from '../../core/errors.ts';
import { AuthenticationFailed, tokenHash } from '../../core/identity/token-verifier.ts';
import type { ConnectionContext } from './connection-context.ts';
import { sqlStateOf } from './error-responses.ts';
import { AUTHENTICATION_OK, backendKeyData, parameterStatus, readyForQuery } from './protocol/backend-encoder.ts';
import type { StartupMessage } from './protocol/frontend-messages.ts';
import { UpstreamError, type UpstreamConnection } from './protocol/upstream-connection.ts';

/** A refusal during startup; the connection sends `refusal` as a FATAL ErrorResponse and closes. */
export class StartupRefused extends Error {
  override name = 'StartupRefused';
  readonly refusal: SidecarError;
  constructor(refusal: SidecarError) {
    super(refusal.message);
    this.refusal = refusal;
  }
}

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

/** Why a StartupMessage is refused before authentication; undefined when it may go on. */
export function refuseStartup(msg: StartupMessage): SidecarError | undefined {
  if (msg.majorVersion !== 3) {
    return {
      id: 'UnsupportedProtocol',
      message: `unsupported frontend protocol ${String(msg.majorVersion)}.${String(msg.minorVersion)}`,
    };
  }
  if (msg.parameters.has('replication')) {
    return {
      id: 'ReplicationRefused',
      message: 'replication connections are not allowed through the chaperone sidecar',
    };
  }
  const encoding = msg.parameters.get('client_encoding');
  if (encoding !== undefined && !SAFE_CLIENT_ENCODINGS.has(encoding.toLowerCase())) {
    // The sidecar decodes statements as UTF-8; a multibyte client encoding could hide text from analysis.
    return {
      id: 'UnsupportedEncoding',
      message: `client_encoding ${encoding} is not supported through the chaperone sidecar; use UTF8`,
    };
  }
  return undefined;
}

/** The search_path the client asked for at startup, as a list of schemas. */
export function startupSearchPath(msg: StartupMessage): readonly string[] | undefined {
  const searchPath = msg.parameters.get('search_path');
  return searchPath?.split(',').map((s) => s.trim().replace(/^"|"$/g, ''));
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
    recordAuthFailure(ctx, failure, source, cancelKey);
    throw new StartupRefused({
      id: 'AuthenticationFailed',
      message: `chaperone: authentication failed: ${failure.message}`,
    });
  }
}

function recordAuthFailure(
  ctx: ConnectionContext,
  failure: AuthenticationFailed,
  source: ClientSource,
  cancelKey: number,
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
      outcome: {
        status: 'denied',
        code: sqlStateOf('AuthenticationFailed'),
        message: `${failure.reason}: ${failure.message}`,
      },
    });
  } catch (err) {
    // The connection is refused anyway; the log line is what remains of it.
    if (!(err instanceof AuditUnavailable)) throw err;
  }
}

/**
 * Logs in upstream with the sidecar's own credential, passing only the allowed startup parameters. The
 * credential files are read per connection, so a rotated Secret reaches new connections.
 */
export async function loginUpstream(
  ctx: ConnectionContext,
  msg: StartupMessage | undefined,
  subject: string,
): Promise<UpstreamConnection> {
  const parameters: [string, string][] = [];
  for (const [name, value] of msg?.parameters ?? []) {
    if (PASSED_PARAMETERS.has(name.toLowerCase())) parameters.push([name, value]);
  }
  const up = ctx.config.upstream;
  try {
    return await ctx.connect({
      host: up.host,
      port: up.port,
      database: up.database,
      user: readFileSync(up.usernameFile, 'utf8').trim(),
      password: readFileSync(up.passwordFile, 'utf8').replace(/\r?\n$/, ''),
      tls: ctx.upstreamTls(),
      parameters,
    });
  } catch (err) {
    const reason = err instanceof UpstreamError ? err.reason : 'connect';
    ctx.logger.error('upstream connection failed', { reason, error: err, subject });
    throw new StartupRefused({
      id: 'UpstreamUnavailable',
      message: `chaperone: could not connect to the protected database (${reason})`,
    });
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
