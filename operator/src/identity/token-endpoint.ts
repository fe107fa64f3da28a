// The exchange's HTTP surface on the operator's HTTPS server: POST <issuer>/token (RFC 8693 request as
// application/x-www-form-urlencoded, RFC 6749 §5 responses with no-store caching), GET <issuer>/jwks (the
// keys sidecars verify issued tokens with) and GET <issuer>/.well-known/openid-configuration.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { TOKEN_EXCHANGE_GRANT_TYPE, TOKEN_EXCHANGE_PATHS } from '@chaperone/api';
import type { JSONWebKeySet } from 'jose';
import { ExchangeRefusal } from './exchange-refusal.ts';
import { SIGNING_ALGORITHM } from './signing-keys.ts';
import type { TokenExchangeService } from './token-exchange.ts';

const MAX_BODY_BYTES = 64 * 1024;

export type Route = (req: IncomingMessage, res: ServerResponse) => void;

const NO_STORE = { 'cache-control': 'no-store', pragma: 'no-cache' };

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res
    .writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
    .end(text);
}

function refuse(res: ServerResponse, refusal: ExchangeRefusal, headers: Record<string, string> = {}): void {
  send(res, refusal.status, refusal.body(), { ...NO_STORE, ...headers });
}

function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        // Stop reading; the caller answers 413 and then closes the connection.
        req.removeAllListeners('data');
        req.pause();
        reject(new ExchangeRefusal('invalid_request', 'body-too-large', 'request body over 64 KiB', { status: 413 }));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      resolve(new URLSearchParams(text));
    });
    req.on('error', reject);
  });
}

export interface TokenEndpointOptions {
  readonly service: TokenExchangeService;
  readonly issuer: string;
  readonly jwks: () => JSONWebKeySet;
}

/** The exchange's routes, by path, for the operator's HTTPS server. */
export function tokenExchangeRoutes(options: TokenEndpointOptions): Record<string, Route> {
  const token: Route = (req, res) => {
    if (req.method !== 'POST') {
      refuse(res, new ExchangeRefusal('invalid_request', 'method', 'use POST', { status: 405 }), { allow: 'POST' });
      return;
    }
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') {
      refuse(
        res,
        new ExchangeRefusal('invalid_request', 'content-type', 'the body must be application/x-www-form-urlencoded', {
          status: 415,
        }),
      );
      return;
    }
    readForm(req)
      .then((params) => options.service.exchange(params))
      .then(
        (result) => send(res, 200, result.response, NO_STORE),
        (err: unknown) => {
          const refusal =
            err instanceof ExchangeRefusal
              ? err
              : new ExchangeRefusal('server_error', 'internal', 'the token exchange failed');
          if (refusal.status === 413) {
            // The rest of the body is never read: answer, then drop the connection.
            res.on('finish', () => req.destroy());
            refuse(res, refusal, { connection: 'close' });
            return;
          }
          refuse(res, refusal);
        },
      );
  };
  const jwks: Route = (req, res) => {
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    send(res, 200, options.jwks(), { 'content-type': 'application/jwk-set+json', 'cache-control': 'max-age=30' });
  };
  const base = options.issuer.replace(/\/$/, '');
  const discovery: Route = (req, res) => {
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    send(
      res,
      200,
      {
        issuer: options.issuer,
        token_endpoint: `${base}/token`,
        jwks_uri: `${base}/jwks`,
        grant_types_supported: [TOKEN_EXCHANGE_GRANT_TYPE],
        token_endpoint_auth_methods_supported: ['none'],
        id_token_signing_alg_values_supported: [SIGNING_ALGORITHM],
        response_types_supported: ['token'],
        subject_types_supported: ['public'],
      },
      { 'cache-control': 'max-age=300' },
    );
  };
  return {
    [TOKEN_EXCHANGE_PATHS.token]: token,
    [TOKEN_EXCHANGE_PATHS.jwks]: jwks,
    [TOKEN_EXCHANGE_PATHS.discovery]: discovery,
  };
}
