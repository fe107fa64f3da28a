// A refused token exchange: the RFC 6749 / RFC 8693 error code the client sees, a stable reason (metrics
// label, `chaperone_reason` in the body, docs/identity.md) and a message that names what was wrong
// without ever echoing a token.
import type { OAuthErrorCode, TokenExchangeError } from '@chaperone/api';

export class ExchangeRefusal extends Error {
  override name = 'ExchangeRefusal';
  readonly error: OAuthErrorCode;
  readonly reason: string;
  /** HTTP status: 400 for the RFC 6749 §5.2 errors except invalid_client (401); 503 temporarily_unavailable; 500 server_error. */
  readonly status: number;
  constructor(error: OAuthErrorCode, reason: string, message: string, options?: ErrorOptions & { status?: number }) {
    super(message, options);
    this.error = error;
    this.reason = reason;
    this.status =
      options?.status ??
      (error === 'invalid_client'
        ? 401
        : error === 'temporarily_unavailable'
          ? 503
          : error === 'server_error'
            ? 500
            : 400);
  }

  body(): TokenExchangeError {
    return { error: this.error, error_description: this.message, chaperone_reason: this.reason };
  }
}
