// The catalogue of errors the sidecar reports to clients, with stable ids. The core says *which* error and
// what it says (a SidecarError); each engine translates that into its protocol in one place (the PostgreSQL
// engine's error-responses.ts: an ErrorResponse with the SQLSTATE here; an HTTP status with a Kubernetes
// Status body for the HTTP engines). docs/errors.md lists every entry; a test keeps the two in step.
import type { CombinedDecision } from '@chaperone/api';
import type { AuditUnavailable } from './audit/audit-sink.ts';

export interface CatalogueEntry {
  /** SQLSTATE for the PostgreSQL engine. */
  readonly sqlState: string;
  /** HTTP status for the HTTP and Kubernetes engines. */
  readonly httpStatus: number;
  /** Whether the connection ends (FATAL) or only the command fails (ERROR). */
  readonly fatal: boolean;
  readonly summary: string;
}

export const SIDECAR_ERRORS = {
  PolicyDenied: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'An AccessPolicy rule (or the default) denied the command.',
  },
  ApprovalRequired: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'An approve rule matched and approvals are not enabled on this sidecar.',
  },
  ApprovalPending: {
    sqlState: '55000',
    httpStatus: 409,
    fatal: false,
    summary:
      'An approve rule with wait: false filed a request and answered at once; the message names it. The identical command sent again on the same session runs once it is approved.',
  },
  ApprovalInFailedTransaction: {
    sqlState: '25P02',
    httpStatus: 409,
    fatal: false,
    summary:
      'An approve rule matched inside a transaction block that already failed: as PostgreSQL, the command is ignored until the block ends; no request is filed and no approval is used.',
  },
  ApprovalDenied: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'An approver denied the held command; it did not run.',
  },
  ApprovalExpired: {
    sqlState: '57014',
    httpStatus: 408,
    fatal: false,
    summary: 'Nobody approved the held command before the request expired; it did not run.',
  },
  ApprovalCancelled: {
    sqlState: '57014',
    httpStatus: 499,
    fatal: false,
    summary: 'The client cancelled the held command (a cancel request); it did not run.',
  },
  ApprovalUnavailable: {
    sqlState: '58000',
    httpStatus: 503,
    fatal: false,
    summary:
      'The approval request could not be filed or followed (API server unreachable, request deleted or replaced); the command did not run.',
  },
  ApprovalAbandoned: {
    sqlState: '57P01',
    httpStatus: 503,
    fatal: true,
    summary:
      'The sidecar is shutting down while the command is held; the request is marked Abandoned and nothing runs.',
  },
  NoPolicy: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'No AccessPolicy covers the identity on this resource.',
  },
  Unanalysable: {
    sqlState: '42601',
    httpStatus: 400,
    fatal: false,
    summary: 'The statement could not be parsed; it is never forwarded.',
  },
  SettingRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      "A SET the session's pins forbid: search_path, client_encoding, standard_conforming_strings, backslash_quote; in a read-only session, anything that turns the read-only guard off.",
  },
  FastPathRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'The fast-path FunctionCall message is not allowed.',
  },
  UnknownPortal: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary: 'Execute of a portal the sidecar did not see bound.',
  },
  UncertainStatement: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      'Use of a prepared statement whose last Parse, PREPARE, Close or DEALLOCATE the server refused or skipped.',
  },
  ProtocolStatementExecute: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      'SQL EXECUTE (also EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE) of a statement prepared by a protocol Parse: run it with Bind/Execute.',
  },
  MaskingRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      'The statement would hand out values of masked columns on a path masking cannot cover (COPY, EXPLAIN, statistics views, file reads, writes elsewhere, an oracle predicate) or its lineage cannot be proven.',
  },
  AuditUnavailable: {
    sqlState: '53100',
    httpStatus: 503,
    fatal: false,
    summary: 'The audit trail cannot be made durable and the resource is FailClosed.',
  },
  AuthenticationFailed: {
    sqlState: '28P01',
    httpStatus: 401,
    fatal: true,
    summary: 'The identity token was rejected; the message names why.',
  },
  AuthenticationTimeout: {
    sqlState: '08006',
    httpStatus: 408,
    fatal: true,
    summary: 'Startup and authentication took longer than authTimeoutMs.',
  },
  StartupParameterRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: true,
    summary:
      'A startup parameter that changes privileges or the read-only guard (replication, role, session_authorization, session_replication_role, transaction_read_only; default_transaction_read_only in a read-only session).',
  },
  StartupParameterUnsupported: {
    sqlState: '0A000',
    httpStatus: 400,
    fatal: true,
    summary:
      'A startup parameter the sidecar cannot honour and still read statements as the server does (client_encoding other than UTF8, another search_path, standard_conforming_strings off, backslash_quote, options other than -c).',
  },
  UnsupportedServer: {
    sqlState: '0A000',
    httpStatus: 502,
    fatal: true,
    summary:
      'The protected database reports a version, encoding or setting the analysis cannot model (no grammar for its major, server_encoding not UTF8, standard_conforming_strings off, a read-only session without its guard).',
  },
  TlsRequired: {
    sqlState: '08P01',
    httpStatus: 400,
    fatal: true,
    summary: 'A plaintext startup on a listener that has tls configured.',
  },
  CancelRefused: {
    sqlState: '28000',
    httpStatus: 403,
    fatal: true,
    summary: 'A CancelRequest whose key matches no session: recorded, and (as PostgreSQL does) never answered.',
  },
  TooManyUnauthenticated: {
    sqlState: '53300',
    httpStatus: 429,
    fatal: true,
    summary: 'More connections from one client address in startup or authentication than maxUnauthenticatedPerSource.',
  },
  UnsupportedProtocol: {
    sqlState: '0A000',
    httpStatus: 400,
    fatal: true,
    summary:
      'A protocol major version other than 3, or SSLRequest or GSSENCRequest sent twice (as PostgreSQL answers them).',
  },
  ProtocolViolation: {
    sqlState: '08P01',
    httpStatus: 400,
    fatal: true,
    summary: 'Malformed or out-of-order client bytes; only that connection ends.',
  },
  TooManyConnections: {
    sqlState: '53300',
    httpStatus: 503,
    fatal: true,
    summary: "The listener's maxConnections is reached; a new connection works once others have closed.",
  },
  UpstreamTooManyConnections: {
    sqlState: '53300',
    httpStatus: 503,
    fatal: true,
    summary:
      "The protected database refused the sidecar's login with too_many_connections (max_connections, or a role's or database's limit); its message is included.",
  },
  UpstreamNotAccepting: {
    sqlState: '57P03',
    httpStatus: 503,
    fatal: true,
    summary:
      'The protected database is starting up, shutting down or in recovery (cannot_connect_now); its message is included.',
  },
  UpstreamUnavailable: {
    sqlState: '08006',
    httpStatus: 502,
    fatal: true,
    summary: 'The protected resource could not be reached or closed the connection.',
  },
  UpstreamProtocolViolation: {
    sqlState: '08P01',
    httpStatus: 502,
    fatal: true,
    summary: 'The protected resource sent bytes the sidecar cannot frame.',
  },
  RequestRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      'An HTTP request the sidecar refuses whatever the policy: impersonation headers, non-resource Kubernetes URLs other than discovery, writing back a masked value.',
  },
  AmbiguousRequest: {
    sqlState: '08P01',
    httpStatus: 400,
    fatal: true,
    summary:
      'An HTTP request the target could read differently (duplicate or conflicting framing headers, encoded slashes, dot segments); the connection ends.',
  },
  RequestTooLarge: {
    sqlState: '54000',
    httpStatus: 413,
    fatal: true,
    summary: 'An HTTP request body larger than maxRequestBodyBytes.',
  },
  RequestTimeout: {
    sqlState: '08006',
    httpStatus: 408,
    fatal: true,
    summary:
      'An HTTP request whose headers or whole body did not arrive within requestHeadersTimeoutMs / requestTimeoutMs (slow clients); the connection ends.',
  },
  RequestHeadersTooLarge: {
    sqlState: '54000',
    httpStatus: 431,
    fatal: true,
    summary: 'HTTP request headers larger than 64 KiB; the connection ends.',
  },
  StreamRefused: {
    sqlState: '0A000',
    httpStatus: 400,
    fatal: false,
    summary:
      'An upgrade to a stream the sidecar cannot inspect (SPDY, any upgrade on an HTTP resource, a Kubernetes request other than exec, attach, port-forward or proxy).',
  },
  UnsupportedMediaType: {
    sqlState: '0A000',
    httpStatus: 415,
    fatal: false,
    summary:
      'A Kubernetes DELETE body in a media type the sidecar cannot read for its DeleteOptions (JSON, YAML and protobuf only).',
  },
  UnmaskableResponse: {
    sqlState: '08P01',
    httpStatus: 502,
    fatal: false,
    summary:
      'A response that must be masked arrived in a form the sidecar cannot mask (not JSON, compressed, too large).',
  },
  Internal: {
    sqlState: 'XX000',
    httpStatus: 500,
    fatal: true,
    summary: 'A bug in the sidecar; the log has the details.',
  },
} as const satisfies Record<string, CatalogueEntry>;

export type SidecarErrorId = keyof typeof SIDECAR_ERRORS;

/** One error as the core words it; the engine adds the protocol (SQLSTATE and severity, or HTTP status). */
export interface SidecarError {
  readonly id: SidecarErrorId;
  /** Starts with `chaperone:` so clients, log readers and auditors can tell it from the target's own errors. */
  readonly message: string;
  readonly detail?: string;
  readonly hint?: string;
  /** 1-based character position in the command text the error refers to. */
  readonly position?: number;
}

/** The error for a command the policy did not allow: names the policy, the rule and the bundle digest. */
export function policyRefusal(decision: CombinedDecision): SidecarError {
  const who = decision.policy === '' ? 'no policy' : `policy ${decision.policy}`;
  if (decision.decision === 'approve') {
    // Holding for approval arrives with the approvals feature; until then an approve rule denies.
    return {
      id: 'ApprovalRequired',
      message: `chaperone: statement requires approval (${who}, rule ${decision.rule}); approvals are not enabled on this sidecar`,
    };
  }
  const why = decision.message ?? decision.reasons.join('; ');
  const refusal = {
    id: decision.policy === '' ? 'NoPolicy' : 'PolicyDenied',
    message: `chaperone: permission denied by ${who}, rule ${decision.rule}${why === '' ? '' : `: ${why}`}`,
    hint: 'It was not sent to the target. Ask the owner of the AccessPolicy if you need it.',
  } as const;
  return decision.bundleDigest === '' ? refusal : { ...refusal, detail: `policy bundle ${decision.bundleDigest}` };
}

/** The error for a command whose decision record the audit trail could not take on a FailClosed resource (NIST AU-5). */
export function auditRefusal(error: AuditUnavailable): SidecarError {
  return {
    id: 'AuditUnavailable',
    message: `chaperone: audit trail unavailable (${auditUnavailableReason(error)}); resource is fail-closed`,
    detail: error.message,
    hint: 'It was not sent to the target. Retry when the audit trail has room again.',
  };
}

/** The reason of an AuditUnavailable in the words of the error messages. */
export function auditUnavailableReason(error: AuditUnavailable): string {
  return error.reason === 'spool-full' ? 'spool full' : error.reason === 'disk-error' ? 'disk error' : 'shutting down';
}
