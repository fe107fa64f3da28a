/**
 * SQLSTATE PostgreSQL uses for a malformed or out-of-sequence protocol message
 * (class 08, "protocol_violation").
 * @see https://www.postgresql.org/docs/current/errcodes-appendix.html
 */
export const PROTOCOL_VIOLATION_SQLSTATE = '08P01';

/**
 * Raised by the codecs when bytes on the wire do not form a valid PostgreSQL v3 message.
 *
 * A decoder that throws this is left unusable: the caller is expected to send one ErrorResponse
 * (severity FATAL, code {@link ProtocolViolation.code}) and close the connection, as the server does.
 * The message says what was wrong but never echoes message payloads, which may hold secrets.
 */
export class ProtocolViolation extends Error {
  /** Always `'08P01'` (protocol_violation). */
  readonly code: typeof PROTOCOL_VIOLATION_SQLSTATE = PROTOCOL_VIOLATION_SQLSTATE;

  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}
