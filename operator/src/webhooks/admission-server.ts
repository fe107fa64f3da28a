// The HTTPS endpoint the API server calls: POST /mutate-pods and /validate-pods with an AdmissionReview,
// GET /healthz. The certificate is swapped in place (setSecureContext) when it rotates; connections already
// open keep the certificate they were accepted with, which is still valid. Each review is timed into a
// prom-client histogram and logged as one JSON line at debug (refusals and errors at info/error).
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Histogram, Registry } from 'prom-client';
import type { Logger } from '../observability/logger.ts';
import {
  AdmissionReviewError,
  parseAdmissionReview,
  refuse,
  reviewResponse,
  type AdmissionRequest,
  type AdmissionResponse,
} from './admission-review.ts';

export type AdmissionHandler = (request: AdmissionRequest) => AdmissionResponse | Promise<AdmissionResponse>;

export type AdmissionOutcome = 'allowed' | 'patched' | 'denied' | 'error';

export interface AdmissionServerOptions {
  /** Default 0.0.0.0 in a cluster; tests use 127.0.0.1. */
  readonly host?: string;
  /** Default 9443; 0 picks a free port. */
  readonly port?: number;
  readonly certPem: string;
  readonly keyPem: string;
  /** Handlers by path, e.g. { '/mutate-pods': ..., '/validate-pods': ... }. */
  readonly handlers: Readonly<Record<string, AdmissionHandler>>;
  /** Other endpoints served on the same listener, by path (the signer certification endpoint). */
  readonly routes?: Readonly<Record<string, (req: IncomingMessage, res: ServerResponse) => void>>;
  /** Registry for the admission metrics; default a fresh one. Pass the operator's to serve them together. */
  readonly registry?: Registry;
  readonly logger: Logger;
  /** Largest request body, bytes. Default 3 MiB (the API server's own object limit is 3 MiB). */
  readonly maxBodyBytes?: number;
  /** Observes every review's server-side duration (benchmarks read exact values). */
  readonly onReview?: (path: string, outcome: AdmissionOutcome, seconds: number) => void;
}

export interface AdmissionServer {
  readonly host: string;
  readonly port: number;
  readonly registry: Registry;
  readonly duration: Histogram<'webhook' | 'outcome'>;
  url(path: string): string;
  /** Serves `certPem`/`keyPem` to every new connection from now on. */
  setCertificate(certPem: string, keyPem: string): void;
  close(): Promise<void>;
}

export async function startAdmissionServer(options: AdmissionServerOptions): Promise<AdmissionServer> {
  const registry = options.registry ?? new Registry();
  const registers = [registry];
  const duration = new Histogram({
    name: 'chaperone_admission_duration_seconds',
    help: 'Time from a complete AdmissionReview request to its response, by webhook path and outcome.',
    labelNames: ['webhook', 'outcome'],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers,
  });
  const total = new Counter({
    name: 'chaperone_admission_reviews_total',
    help: 'AdmissionReviews answered, by webhook path and outcome (allowed, patched, denied, error).',
    labelNames: ['webhook', 'outcome'],
    registers,
  });
  const maxBody = options.maxBodyBytes ?? 3 * 1024 * 1024;
  const { logger } = options;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (req.method === 'GET' && (path === '/healthz' || path === '/readyz')) {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
      return;
    }
    const route = options.routes?.[path];
    if (route !== undefined) {
      route(req, res);
      return;
    }
    const handler = options.handlers[path];
    if (handler === undefined || req.method !== 'POST') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBody) {
        res.writeHead(413, { 'content-type': 'text/plain' }).end('request too large');
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (res.headersSent) return;
      const started = process.hrtime.bigint();
      let uid = '';
      const finish = (status: number, body: string, outcome: AdmissionOutcome, fields: Record<string, unknown>) => {
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        duration.observe({ webhook: path, outcome }, seconds);
        total.inc({ webhook: path, outcome });
        options.onReview?.(path, outcome, seconds);
        const log = { webhook: path, uid, outcome, durationMs: Math.round(seconds * 1e6) / 1e3, ...fields };
        if (outcome === 'error') logger.error('admission review failed', log);
        else if (outcome === 'denied') logger.info('admission review denied', log);
        else logger.debug('admission review', log);
      };
      let request: AdmissionRequest;
      try {
        request = parseAdmissionReview(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        const message = err instanceof AdmissionReviewError ? err.message : String(err);
        finish(400, JSON.stringify({ error: message }), 'error', { error: message });
        return;
      }
      uid = request.uid;
      const fields = {
        namespace: request.namespace,
        name: request.name,
        operation: request.operation,
        ...(request.subResource === undefined ? {} : { subResource: request.subResource }),
      };
      Promise.resolve()
        .then(() => handler(request))
        .then(
          (response) => {
            const outcome: AdmissionOutcome = !response.allowed
              ? 'denied'
              : response.patch === undefined
                ? 'allowed'
                : 'patched';
            finish(200, JSON.stringify(reviewResponse(response)), outcome, {
              ...fields,
              ...(response.status === undefined ? {} : { message: response.status.message }),
            });
          },
          (err: unknown) => {
            // An answer the API server can show the user beats an opaque webhook failure.
            const response = refuse(
              request.uid,
              500,
              `chaperone webhook error: ${err instanceof Error ? err.message : String(err)}`,
            );
            finish(200, JSON.stringify(reviewResponse(response)), 'error', { ...fields, error: err });
          },
        );
    });
  };

  const server: Server = createServer(
    { cert: options.certPem, key: options.keyPem, minVersion: 'TLSv1.2', keepAliveTimeout: 60_000 },
    handle,
  );
  server.keepAliveTimeout = 60_000;
  server.on('tlsClientError', (err) => logger.debug('tls client error', { error: err }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 9443, options.host ?? '0.0.0.0', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.address;
  logger.info('admission webhook server listening', { host, port: address.port });
  return {
    host,
    port: address.port,
    registry,
    duration,
    url: (path) => `https://${host.includes(':') ? `[${host}]` : host}:${String(address.port)}${path}`,
    setCertificate(certPem, keyPem) {
      server.setSecureContext({ cert: certPem, key: keyPem, minVersion: 'TLSv1.2' });
      logger.info('admission webhook certificate reloaded');
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
