// The one place where the PostgreSQL engine turns the sidecar's errors (core/errors.ts) into wire bytes: the
// SQLSTATE and the severity come from the catalogue, the words from the SidecarError. It also names the few
// SQLSTATEs of the upstream's own errors the engine reads. No other file of the engine spells a SQLSTATE.
import type { SessionEnding } from '../../core/agent-session.ts';
import { SIDECAR_ERRORS, type SidecarError, type SidecarErrorId } from '../../core/errors.ts';
import type { ClientNotice } from '../../core/approvals/approval-notice.ts';
import { errorResponse, noticeResponse } from './protocol/backend-encoder.ts';

/** One of our ErrorResponses, sent in place of the upstream's answer to a substituted message. */
export interface Denial {
  readonly frame: Buffer;
  /** Its SQLSTATE, for the command's outcome record. */
  readonly code: string;
  /** The catalogue entry and the words: a refusal made before policy is recorded as the sidecar's own deny. */
  readonly id: SidecarErrorId;
  readonly message: string;
}

/** SQLSTATE query_canceled: the upstream's error for a cancelled statement, recorded as `cancelled`. */
export const QUERY_CANCELED = '57014';

/**
 * The ErrorResponse for an error of the catalogue. Severity FATAL when the connection ends with it: always
 * for the catalogue's fatal entries, and for any error that refuses the session itself (an AuditUnavailable
 * at session start); ERROR when only the command fails.
 */
export function errorResponseFor(error: SidecarError, endsConnection = SIDECAR_ERRORS[error.id].fatal): Buffer {
  const entry = SIDECAR_ERRORS[error.id];
  return errorResponse({
    severity: endsConnection ? 'FATAL' : 'ERROR',
    code: entry.sqlState,
    message: error.message,
    ...(error.detail === undefined ? {} : { detail: error.detail }),
    ...(error.hint === undefined ? {} : { hint: error.hint }),
    ...(error.position === undefined ? {} : { position: String(error.position) }),
  });
}

/** A refusal of one command, delivered in place of the upstream's error for its substitute. */
export function denial(error: SidecarError): Denial {
  return {
    frame: errorResponseFor(error, false),
    code: SIDECAR_ERRORS[error.id].sqlState,
    id: error.id,
    message: error.message,
  };
}

/** The SQLSTATE of a catalogue entry, for records that carry one without a frame. */
export function sqlStateOf(id: SidecarErrorId): string {
  return SIDECAR_ERRORS[id].sqlState;
}

/** FATALs that end a session as a refusal (`denied`) rather than a failure (`error`). */
const REFUSALS: ReadonlySet<SidecarErrorId> = new Set([
  'StartupParameterRefused',
  'StartupParameterUnsupported',
  'UnsupportedServer',
  'AuditUnavailable',
  'AuthenticationFailed',
  'TlsRequired',
  'TooManyUnauthenticated',
]);

/** How a session ended by this FATAL is recorded (its session.end outcome). */
export function sessionEnding(error: SidecarError): SessionEnding {
  return { status: REFUSALS.has(error.id) ? 'denied' : 'error', code: sqlStateOf(error.id) };
}

/** SQLSTATE class 53 (insufficient resources) and cannot_connect_now: refusals a client backs off on and retries. */
const TOO_MANY_CONNECTIONS = '53300';
const CANNOT_CONNECT_NOW = '57P03';

/** Whether a failed login's SQLSTATE says the server (or the role, or the database) has no free connection slot. */
export function isOutOfConnectionSlots(sqlState: string | undefined): boolean {
  return sqlState === TOO_MANY_CONNECTIONS;
}

/**
 * The refusal for a failed upstream login. The upstream's own too_many_connections (max_connections, a
 * role's or a database's CONNECTION LIMIT) and cannot_connect_now keep their SQLSTATE, so a client or pooler
 * that backs off on them can tell them from the database being down; the upstream's message is kept, with
 * the sidecar's context. Everything else is UpstreamUnavailable (08006), naming the upstream's SQLSTATE
 * when it sent one.
 */
export function upstreamRefusal(
  reason: string,
  serverError: { readonly code?: string; readonly message?: string } | undefined,
): SidecarError {
  const code = serverError?.code;
  const theirs = serverError?.message ?? '';
  if (code === TOO_MANY_CONNECTIONS) {
    return {
      id: 'UpstreamTooManyConnections',
      message: `chaperone: the protected database refused the connection: ${theirs}`,
      hint: 'The database has no free connection slot for the sidecar; retry later or close other sessions.',
    };
  }
  if (code === CANNOT_CONNECT_NOW) {
    return {
      id: 'UpstreamNotAccepting',
      message: `chaperone: the protected database is not accepting connections: ${theirs}`,
      hint: 'Retry later.',
    };
  }
  return {
    id: 'UpstreamUnavailable',
    message: `chaperone: could not connect to the protected database (${reason})`,
    ...(code === undefined ? {} : { detail: `the database answered SQLSTATE ${code}` }),
  };
}

/** SQLSTATE successful_completion: the code PostgreSQL's own NOTICE messages carry. */
const SUCCESSFUL_COMPLETION = '00000';

/** A NoticeResponse (severity NOTICE) for a message of the sidecar that is not an error. */
export function noticeFor(notice: ClientNotice): Buffer {
  return noticeResponse({
    severity: 'NOTICE',
    code: SUCCESSFUL_COMPLETION,
    message: notice.message,
    ...(notice.detail === undefined ? {} : { detail: notice.detail }),
    ...(notice.hint === undefined ? {} : { hint: notice.hint }),
  });
}
