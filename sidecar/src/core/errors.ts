// The catalogue of errors the sidecar reports to clients, with stable ids. Engines translate an entry into
// their protocol in one place (a PostgreSQL ErrorResponse with the SQLSTATE here; an HTTP status with a
// Kubernetes Status body for the HTTP engines). docs/errors.md lists every entry; a test keeps the two in
// step.

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
  ParserSettingRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: false,
    summary:
      'A SET of standard_conforming_strings, client_encoding or backslash_quote (they change how later text is read).',
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
  ReplicationRefused: {
    sqlState: '42501',
    httpStatus: 403,
    fatal: true,
    summary: 'Replication connections are not proxied.',
  },
  UnsupportedEncoding: {
    sqlState: '0A000',
    httpStatus: 400,
    fatal: true,
    summary: 'A client_encoding other than UTF8 or SQL_ASCII.',
  },
  UnsupportedProtocol: {
    sqlState: '0A000',
    httpStatus: 400,
    fatal: true,
    summary: 'A protocol major version other than 3.',
  },
  ProtocolViolation: {
    sqlState: '08P01',
    httpStatus: 400,
    fatal: true,
    summary: 'Malformed or out-of-order client bytes; only that connection ends.',
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
  Internal: {
    sqlState: 'XX000',
    httpStatus: 500,
    fatal: true,
    summary: 'A bug in the sidecar; the log has the details.',
  },
} as const satisfies Record<string, CatalogueEntry>;

export type SidecarErrorId = keyof typeof SIDECAR_ERRORS;
