/**
 * Raised by the codecs when bytes on the wire do not form a valid PostgreSQL v3 message.
 *
 * A decoder that throws this is left unusable: the caller is expected to send one FATAL ErrorResponse (the
 * catalogue's `ProtocolViolation`, SQLSTATE protocol_violation; see error-responses.ts) and close the
 * connection, as the server does. The message says what was wrong but never echoes message payloads, which
 * may hold secrets.
 */
export class ProtocolViolation extends Error {
  /** The error catalogue's entry the connection answers with (sidecar/src/core/errors.ts). */
  readonly errorId: 'ProtocolViolation' | 'UnsupportedProtocol' = 'ProtocolViolation';
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}

/**
 * A startup packet asking for a protocol the sidecar does not speak: a major version other than 3, or a
 * second SSLRequest or GSSENCRequest (which PostgreSQL reads as a request for protocol 1234.5679 or
 * 1234.5680). PostgreSQL answers these with feature_not_supported rather than protocol_violation; the
 * caller sends the catalogue's `UnsupportedProtocol` and closes.
 */
export class UnsupportedProtocolVersion extends ProtocolViolation {
  override readonly errorId = 'UnsupportedProtocol';
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedProtocolVersion';
  }
}
