/**
 * Raised by the codecs when bytes on the wire do not form a valid PostgreSQL v3 message.
 *
 * A decoder that throws this is left unusable: the caller is expected to send one FATAL ErrorResponse (the
 * catalogue's `ProtocolViolation`, SQLSTATE protocol_violation; see error-responses.ts) and close the
 * connection, as the server does. The message says what was wrong but never echoes message payloads, which
 * may hold secrets.
 */
export class ProtocolViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}
