// The HTTP/1.1 server of an HTTP-speaking engine (Kubernetes API, HTTP). It never listens: the core's
// ResourceListener accepts sockets and the engine feeds them to it. Strict parsing (no lenient llhttp
// flags, Host required), TLS from files or a self-signed loopback certificate made at start, HTTP/1.1 only
// over ALPN (upgrades and the framing checks are HTTP/1.1's), and a 400 in the engine's own error body for
// bytes Node's parser refuses. Sockets accepted before the server is ready wait for it.
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../core/observability/logger.ts';
import { createLoopbackCertificate } from './loopback-certificate.ts';

/** How long a refused connection's remaining bytes are read and dropped before it is closed (ms). */
const LINGER_MS = 2000;

export interface EngineServerOptions {
  readonly tls?: { readonly certFile?: string; readonly keyFile?: string; readonly selfSignedCertFile?: string };
  readonly logger: Logger;
  /** How long a client may take to send a request's headers, and the whole request, ms. */
  readonly timeouts: { readonly headersMs: number; readonly requestMs: number };
  readonly onRequest: (req: IncomingMessage, res: ServerResponse) => void;
  readonly onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
  /**
   * The answer to bytes Node's parser refuses, by its error code (HPE_HEADER_OVERFLOW: headers too large;
   * ERR_HTTP_REQUEST_TIMEOUT: headers or request not received within the timeouts).
   */
  readonly malformed: (code: string) => { readonly code: number; readonly contentType: string; readonly body: string };
}

export class EngineServer {
  private server: Server | undefined;
  private readonly prepared: Promise<Server>;
  private readonly options: EngineServerOptions;
  /** Connections whose bytes Node's parser refused, with its error code: answered 400 and ending. */
  private readonly refusedConnections = new WeakMap<Duplex, string>();
  /** Connections that carried an HTTP/1.0 request: its answer closes them, nothing after it is served. */
  private readonly lastRequestSeen = new WeakSet<Duplex>();

  constructor(options: EngineServerOptions) {
    this.options = options;
    this.prepared = this.prepare().then(
      (server) => {
        this.server = server;
        return server;
      },
      (err: unknown) => {
        options.logger.error('cannot serve TLS', { error: err });
        throw err;
      },
    );
    // accept() and ready() report the failure; until then it must not be an unhandled rejection.
    this.prepared.catch(() => undefined);
  }

  /** Resolves once the server exists (its certificate made); rejects when it cannot. */
  ready(): Promise<unknown> {
    return this.prepared;
  }

  /** The serving certificate's file (the CA of clients' configuration), when the listener has TLS. */
  get certFile(): string | undefined {
    return this.options.tls?.selfSignedCertFile ?? this.options.tls?.certFile;
  }

  /**
   * The parser's error code when bytes on this request's connection were refused (after or inside the
   * request): such a connection has had its 400 and is ending, and a request on it that has not been
   * forwarded yet must not be (its client was told the connection was malformed, and a body may be cut).
   */
  refusal(socket: Duplex): string | undefined {
    return this.refusedConnections.get(socket);
  }

  accept(socket: Socket): void {
    socket.setNoDelay(true);
    if (this.server !== undefined) this.server.emit('connection', socket);
    else {
      this.prepared.then(
        (server) => server.emit('connection', socket),
        () => socket.destroy(),
      );
    }
  }

  /**
   * An HTTP/1.0 request is answered with `Connection: close`, and a request pipelined behind it on the same
   * connection is refused before it is decided. HTTP/1.0 has no chunked framing, so whether Node keeps such a
   * connection alive would otherwise depend on whether the upstream's answer had a length: a request behind
   * it was served or not by chance. Node's parser refuses bytes after any other answer that closes.
   */
  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const socket = req.socket;
    if (this.lastRequestSeen.has(socket)) {
      this.options.logger.warn('request after an HTTP/1.0 request on its connection refused', {
        method: req.method,
      });
      req.resume();
      const { code, contentType, body } = this.options.malformed('HPE_CLOSED_CONNECTION');
      res.writeHead(code, { 'content-type': contentType, connection: 'close' }).end(body);
      return;
    }
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) {
      this.lastRequestSeen.add(socket);
      res.setHeader('connection', 'close');
    }
    this.options.onRequest(req, res);
  };

  private async prepare(): Promise<Server> {
    const { tls, logger, timeouts } = this.options;
    const options = {
      insecureHTTPParser: false,
      requireHostHeader: true,
      maxHeaderSize: 64 * 1024,
      // Slow-header and slow-body clients (slowloris) are cut off with a 408 (clientError below). Both
      // bound only how the request arrives: watches, log streams and exec sessions answer for long after
      // their request is complete, and the upstream's own timeouts bound them.
      headersTimeout: timeouts.headersMs,
      requestTimeout: Math.max(timeouts.requestMs, timeouts.headersMs),
      // Node checks the two timeouts at this interval (30 s by default): a timeout is kept within a quarter.
      connectionsCheckingInterval: Math.max(250, Math.min(30_000, Math.floor(timeouts.headersMs / 4))),
      keepAliveTimeout: 65_000,
    };
    let server: Server;
    if (tls === undefined) {
      server = createServer(options, this.onRequest);
    } else {
      let cert: string;
      let key: string;
      if (tls.selfSignedCertFile !== undefined) {
        ({ certPem: cert, keyPem: key } = await createLoopbackCertificate());
        await writeFile(tls.selfSignedCertFile, cert, { mode: 0o644 });
      } else {
        cert = await readFile(tls.certFile ?? '', 'utf8');
        key = await readFile(tls.keyFile ?? '', 'utf8');
      }
      server = createHttpsServer(
        { ...options, cert, key, ALPNProtocols: ['http/1.1'], minVersion: 'TLSv1.2' },
        this.onRequest,
      );
      server.on('tlsClientError', (err: Error) => logger.debug('TLS handshake failed', { error: err.message }));
    }
    server.on('upgrade', this.options.onUpgrade);
    // Node enforces headersTimeout and requestTimeout only on the connections of a server that listened: its
    // connection tracking starts on 'listening'. This one never listens (the core's listener feeds it
    // sockets), so without this event slow clients were never cut off at all.
    server.emit('listening');
    server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
      // Bytes Node's parser refuses (smuggling attempts among them): a 400, then the connection ends. On a
      // TLS socket the parser reads from 'data' events and reports every later chunk again: answered once.
      if (this.refusedConnections.has(socket)) return;
      this.refusedConnections.set(socket, err.code ?? 'parse error');
      logger.warn('malformed HTTP request', { code: err.code, error: err.message });
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      const { code, contentType, body } = this.options.malformed(err.code ?? 'parse error');
      // A lingering close (RFC 9112 §9.6): what the client still sends (the rest of oversized headers) is
      // read and dropped, so that closing with unread bytes does not reset the connection and lose this
      // answer; bounded, so a client that keeps sending is cut off.
      socket.removeAllListeners('data');
      socket.on('data', () => undefined);
      setTimeout(() => socket.destroy(), LINGER_MS).unref();
      socket.end(
        `HTTP/1.1 ${String(code)} ${STATUS_CODES[code] ?? ''}\r\nContent-Type: ${contentType}\r\nContent-Length: ${String(Buffer.byteLength(body))}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    return server;
  }
}
