/**
 * The sidecar's own connection to the real PostgreSQL server: TCP (or Unix socket), TLS negotiated with
 * SSLRequest, StartupMessage, authentication with the credential only the sidecar holds, and the startup
 * messages up to the first ReadyForQuery. Also the out-of-band CancelRequest.
 *
 * @see https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP
 * @see https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION (sslmode semantics)
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { AuthCode, BackendCode, type ErrorFields, type TransactionStatus } from './backend-messages.ts';
import {
  BackendScanner,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeDataRow,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  type BackendKey,
} from './backend-scanner.ts';
import {
  encodeCancelRequest,
  encodePasswordMessage,
  encodeQuery,
  encodeSASLInitialResponse,
  encodeSASLResponse,
  encodeSSLRequest,
  encodeStartupMessage,
} from './frontend-encoder.ts';
import { ProtocolViolation } from './protocol-violation.ts';
import { md5Password, SCRAM_SHA_256, ScramClient, ScramError } from './scram.ts';

/**
 * TLS requirement, with libpq's meaning:
 * - `disable`: plain TCP.
 * - `require`: TLS is mandatory; the certificate is not checked, unless a CA is given, in which case the
 *   chain is verified as in `verify-ca` (libpq does the same when a root certificate file exists).
 * - `verify-ca`: TLS, and the server certificate must chain to the CA.
 * - `verify-full`: as `verify-ca`, and the certificate must name the host (SAN DNS or IP).
 */
export type SslMode = 'disable' | 'require' | 'verify-ca' | 'verify-full';

export interface UpstreamTlsOptions {
  /** See {@link SslMode}. */
  readonly mode: SslMode;
  /** Trusted CA certificate(s), PEM. Default: Node's bundled public roots. */
  readonly ca?: string | Buffer;
  /** Name to verify (verify-full) and to send as SNI. Default: the connection host. */
  readonly servername?: string;
  /** Client certificate and key (PEM) for `cert` authentication. Default: none. */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /**
   * The TLS context made of `ca`, `cert` and `key` once (tls.createSecureContext), for a caller that opens
   * many connections: without it every connection parses the CA bundle and builds a context of its own.
   * Whoever sets it must build it from the same `ca`, `cert` and `key`; verification settings still come
   * from `mode` and `servername`.
   */
  readonly secureContext?: tls.SecureContext;
}

/** Authentication methods the sidecar will answer; `none` means the server skipped authentication. */
export type UpstreamAuthMethod = 'none' | 'password' | 'md5' | 'scram-sha-256';

export interface UpstreamConnectOptions {
  /** Host name or IP; a path starting with `/` is a Unix socket directory (as in libpq). */
  readonly host: string;
  /** Default 5432. */
  readonly port?: number;
  readonly user: string;
  /** Default: same as `user` (the server's rule). */
  readonly database?: string;
  /** Needed unless the server trusts the connection. */
  readonly password?: string;
  /**
   * Default `{ mode: 'verify-full' }`. Ignored for Unix sockets, where PostgreSQL does not offer TLS
   * (libpq ignores sslmode there too).
   */
  readonly tls?: UpstreamTlsOptions;
  /**
   * Further startup parameters passed through from the client, e.g. `application_name`, `options`,
   * `client_encoding`, GUCs. `user`, `database` and `_pq_.*` are refused here: the sidecar decides those.
   */
  readonly parameters?: Iterable<readonly [string, string]>;
  /** Methods the sidecar may use. Default: all of them. Restrict to `['scram-sha-256']` to refuse weaker ones. */
  readonly allowedAuthMethods?: readonly UpstreamAuthMethod[];
  /** Deadline for the whole startup, in ms. Default 10000. */
  readonly connectTimeoutMs?: number;
  /** Resolves `host` (net.connect's `lookup` option); default dns.lookup. */
  readonly lookup?: net.LookupFunction;
}

/** A logged-in upstream session, ready for queries. */
export interface UpstreamConnection {
  /**
   * The session's byte stream (a `net.Socket` or `tls.TLSSocket`), explicitly paused, with no listeners of
   * ours left and any bytes read past the first ReadyForQuery pushed back (`unshift`). Attach an `'error'`
   * listener right away, then `resume()` (adding a `'data'` listener alone does not resume a paused stream).
   */
  readonly socket: Duplex;
  /** ParameterStatus values sent during startup (server_version, client_encoding, TimeZone, …). */
  readonly parameters: ReadonlyMap<string, string>;
  /** Process id and cancel key for {@link sendCancelRequest}; `null` if the server sent none. */
  readonly backendKey: BackendKey | null;
  /** Status from the first ReadyForQuery (normally 'I'). */
  readonly transactionStatus: TransactionStatus;
  /** Whether the stream is TLS. */
  readonly encrypted: boolean;
  /** How the server authenticated the sidecar. */
  readonly authMethod: UpstreamAuthMethod;
  /** NoticeResponses received during startup. */
  readonly notices: readonly ErrorFields[];
}

/**
 * Why connecting upstream failed:
 * - `connect`: TCP/Unix connection failed; `tls`: TLS refused by the server or handshake/verification failed;
 * - `auth`: the sidecar could not or would not authenticate (missing password, method not allowed, SCRAM
 *   check failed); `server`: the server sent an ErrorResponse (see `fields`, e.g. code 28P01);
 * - `protocol`: the server broke the protocol; `closed`: it closed the connection early; `timeout`.
 */
export type UpstreamErrorReason = 'connect' | 'tls' | 'auth' | 'server' | 'protocol' | 'closed' | 'timeout';

/** Failure of {@link connectUpstream} or {@link sendCancelRequest}. Messages never contain credentials. */
export class UpstreamError extends Error {
  readonly reason: UpstreamErrorReason;
  /** The server's ErrorResponse, when `reason` is `server`. */
  readonly fields: ErrorFields | undefined;
  /** SQLSTATE of `fields`, for convenience. */
  readonly sqlState: string | undefined;

  constructor(reason: UpstreamErrorReason, message: string, options: { fields?: ErrorFields; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UpstreamError';
    this.reason = reason;
    this.fields = options.fields;
    this.sqlState = options.fields?.code;
  }
}

const DEFAULT_PORT = 5432;
const DEFAULT_TIMEOUT_MS = 10_000;
const ALL_AUTH_METHODS: readonly UpstreamAuthMethod[] = ['none', 'password', 'md5', 'scram-sha-256'];

/**
 * Connects and logs in to the real server.
 * @throws UpstreamError (the socket is destroyed on failure).
 */
export async function connectUpstream(options: UpstreamConnectOptions): Promise<UpstreamConnection> {
  const startup = startupParameters(options);
  const deadline = new Deadline(options.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS);
  let socket: net.Socket | tls.TLSSocket | null = null;
  try {
    const opened = await openTransport(
      options.host,
      options.port ?? DEFAULT_PORT,
      options.tls,
      deadline,
      options.lookup,
    );
    socket = opened.socket;
    socket.write(encodeStartupMessage(startup));
    const session = await runStartup(socket, options, deadline);
    return { socket, encrypted: opened.encrypted, ...session };
  } catch (err) {
    socket?.destroy();
    throw toUpstreamError(err);
  } finally {
    deadline.clear();
  }
}

/**
 * Cancels the query running in another session, the PostgreSQL way: a fresh connection carrying only a
 * CancelRequest, which the server closes without answering. With TLS, the request is sent after SSLRequest
 * and the handshake, so the key never crosses the network in clear. Resolves once the server has closed
 * the connection; success does not mean a query was running.
 *
 * @param tlsOptions default `{ mode: 'verify-full' }`, as for {@link connectUpstream}.
 * @param secretKey 4-byte key as a number (protocol 3.0) or the key bytes from BackendKeyData.
 * @param timeoutMs default 10000.
 */
export async function sendCancelRequest(
  host: string,
  port: number,
  tlsOptions: UpstreamTlsOptions | undefined,
  processId: number,
  secretKey: number | Uint8Array,
  timeoutMs: number = DEFAULT_TIMEOUT_MS,
): Promise<void> {
  const deadline = new Deadline(timeoutMs);
  let socket: net.Socket | tls.TLSSocket | null = null;
  try {
    const opened = await openTransport(host, port, tlsOptions, deadline);
    const s = opened.socket;
    socket = s;
    await new Promise<void>((resolve, reject) => {
      deadline.onExpire(() => {
        reject(new UpstreamError('timeout', 'timed out waiting for the server to close the cancel connection'));
      });
      // Once the request is written, any way the connection ends means the server has read it.
      s.once('close', () => {
        resolve();
      });
      s.on('error', () => undefined);
      s.on('data', () => undefined);
      s.end(encodeCancelRequest(processId, secretKey));
    });
  } catch (err) {
    throw toUpstreamError(err);
  } finally {
    deadline.clear();
    socket?.destroy();
  }
}

/** What one simple Query of {@link runSimpleQueries} answered. */
export interface SimpleQueryResult {
  /** The first column of the first row, as text (`null` for SQL NULL, `undefined` when there was no row). */
  readonly firstValue: string | null | undefined;
  /** The ErrorResponse, when the statement failed. */
  readonly error: ErrorFields | undefined;
}

export interface SimpleQueriesOutcome {
  readonly results: readonly SimpleQueryResult[];
  /** Status of the last ReadyForQuery. */
  readonly transactionStatus: TransactionStatus;
  /** Every ParameterStatus the server sent meanwhile, in order. */
  readonly parameterStatus: readonly (readonly [string, string])[];
}

/**
 * Runs `queries` as simple Query messages (pipelined) on an idle session the caller owns (paused, no data
 * listener of anyone else), and reads up to the ReadyForQuery of the last one. Notifications and notices
 * are dropped; bytes after the last ReadyForQuery, a COPY, or the connection ending reject with
 * UpstreamError; so does `timeoutMs` passing. The socket is paused again afterwards.
 */
export function runSimpleQueries(
  socket: Duplex,
  queries: readonly string[],
  timeoutMs: number = DEFAULT_TIMEOUT_MS,
): Promise<SimpleQueriesOutcome> {
  const scanner = new BackendScanner({ interest: Object.values(BackendCode) });
  const results: SimpleQueryResult[] = [];
  const parameterStatus: [string, string][] = [];
  let firstValue: string | null | undefined;
  let error: ErrorFields | undefined;
  return new Promise<SimpleQueriesOutcome>((resolve, reject) => {
    const timer = setTimeout(() => {
      fail(new UpstreamError('timeout', 'timed out waiting for the server to answer'));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.off('end', onClose);
      socket.pause();
    };
    const fail = (err: unknown): void => {
      cleanup();
      reject(toUpstreamError(err));
    };
    const handle = (code: BackendCode, frame: Buffer): TransactionStatus | null => {
      switch (code) {
        case BackendCode.DataRow:
          if (firstValue === undefined) firstValue = decodeDataRow(frame)[0]?.toString('utf8') ?? null;
          return null;
        case BackendCode.ErrorResponse:
          error ??= decodeErrorFields(frame);
          return null;
        case BackendCode.ParameterStatus: {
          const { name, value } = decodeParameterStatus(frame);
          parameterStatus.push([name, value]);
          return null;
        }
        case BackendCode.ReadyForQuery:
          return decodeReadyForQuery(frame);
        case BackendCode.CopyInResponse:
        case BackendCode.CopyOutResponse:
        case BackendCode.CopyBothResponse:
          throw new UpstreamError('protocol', 'unexpected COPY in answer to a session reset');
        default:
          // RowDescription, CommandComplete, EmptyQueryResponse, notices, notifications.
          return null;
      }
    };
    const onData = (chunk: Buffer): void => {
      try {
        scanner.push(chunk);
        for (let seg = scanner.next(); seg !== null; seg = scanner.next()) {
          if (seg.kind !== 'frame') continue;
          const status = handle(seg.code, seg.frame);
          if (status === null) continue;
          results.push({ firstValue, error });
          firstValue = undefined;
          error = undefined;
          if (results.length < queries.length) continue;
          if (!scanner.atFrameBoundary || scanner.next() !== null) {
            throw new UpstreamError('protocol', 'the server sent more than was asked for');
          }
          cleanup();
          resolve({ results, transactionStatus: status, parameterStatus });
          return;
        }
      } catch (err) {
        fail(err);
      }
    };
    const onError = (err: Error): void => {
      fail(new UpstreamError('closed', `connection failed: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      fail(new UpstreamError('closed', 'the server closed the connection'));
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('end', onClose);
    socket.write(Buffer.concat(queries.map((q) => encodeQuery(q))));
    socket.resume();
  });
}

function startupParameters(options: UpstreamConnectOptions): [string, string][] {
  const params: [string, string][] = [['user', options.user]];
  if (options.database !== undefined) params.push(['database', options.database]);
  const seen = new Set(['user', 'database']);
  for (const [name, value] of options.parameters ?? []) {
    if (seen.has(name) || name.startsWith('_pq_.') || name === '') {
      throw new RangeError(`startup parameter "${name}" cannot be passed through`);
    }
    seen.add(name);
    params.push([name, value]);
  }
  return params;
}

/** One timer for the whole operation; whatever is waiting registers to be told. */
class Deadline {
  private readonly timer: NodeJS.Timeout;
  private expired = false;
  private listeners: (() => void)[] = [];

  constructor(ms: number) {
    this.timer = setTimeout(() => {
      this.expired = true;
      for (const l of this.listeners) l();
    }, ms);
  }

  onExpire(listener: () => void): void {
    if (this.expired) listener();
    else this.listeners = [listener];
  }

  clear(): void {
    clearTimeout(this.timer);
    this.listeners = [];
  }
}

interface Transport {
  readonly socket: net.Socket | tls.TLSSocket;
  readonly encrypted: boolean;
}

/** Connects and, unless disabled or on a Unix socket, negotiates TLS with SSLRequest. */
async function openTransport(
  host: string,
  port: number,
  tlsOptions: UpstreamTlsOptions | undefined,
  deadline: Deadline,
  lookup?: net.LookupFunction,
): Promise<Transport> {
  const unix = host.startsWith('/');
  const plain = unix
    ? net.createConnection({ path: `${host.replace(/\/+$/, '')}/.s.PGSQL.${port}` })
    : net.createConnection({ host, port, ...(lookup === undefined ? {} : { lookup }) });
  plain.setNoDelay(true);
  try {
    await new Promise<void>((resolve, reject) => {
      deadline.onExpire(() => {
        reject(new UpstreamError('timeout', `timed out connecting to ${describe(host, port)}`));
      });
      plain.once('connect', () => {
        plain.off('error', reject);
        resolve();
      });
      plain.once('error', (err) => {
        reject(
          new UpstreamError('connect', `cannot connect to ${describe(host, port)}: ${err.message}`, { cause: err }),
        );
      });
    });
    const mode = tlsOptions?.mode ?? 'verify-full';
    if (unix || mode === 'disable') return { socket: plain, encrypted: false };
    await requestTls(plain, deadline);
    return { socket: await handshake(plain, host, tlsOptions ?? { mode }, deadline), encrypted: true };
  } catch (err) {
    plain.destroy();
    throw err;
  }
}

/** Sends SSLRequest and requires the single byte 'S' with nothing after it. */
async function requestTls(socket: net.Socket, deadline: Deadline): Promise<void> {
  const answer = await new Promise<Buffer>((resolve, reject) => {
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      cleanup();
      socket.pause();
      resolve(chunk);
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new UpstreamError('connect', `connection failed during SSLRequest: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new UpstreamError('closed', 'server closed the connection in answer to SSLRequest'));
    };
    deadline.onExpire(() => {
      cleanup();
      reject(new UpstreamError('timeout', 'timed out waiting for the answer to SSLRequest'));
    });
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.write(encodeSSLRequest());
  });
  if (answer[0] === 0x4e /* 'N' */) throw new UpstreamError('tls', 'server does not support TLS (answered N)');
  if (answer[0] !== 0x53 /* 'S' */) {
    throw new UpstreamError('protocol', 'unexpected answer to SSLRequest');
  }
  // Bytes after 'S' were sent in clear before the handshake and could be spliced into the session
  // (CVE-2021-23222), so they are refused rather than processed.
  if (answer.length !== 1) throw new UpstreamError('protocol', 'server sent unencrypted data after its TLS answer');
}

async function handshake(
  socket: net.Socket,
  host: string,
  options: UpstreamTlsOptions,
  deadline: Deadline,
): Promise<tls.TLSSocket> {
  const verifyName = options.servername ?? host;
  const verifyChain = options.mode !== 'require' || options.ca !== undefined;
  const connectOptions: tls.ConnectionOptions = {
    socket,
    ALPNProtocols: ['postgresql'],
    rejectUnauthorized: verifyChain,
    // verify-full checks the name against SAN DNS/IP entries; the other modes check the chain only.
    checkServerIdentity:
      options.mode === 'verify-full' ? (_hostname, cert) => tls.checkServerIdentity(verifyName, cert) : () => undefined,
  };
  // SNI must be a DNS name (RFC 6066), never an IP address.
  if (net.isIP(verifyName) === 0) connectOptions.servername = verifyName;
  if (options.secureContext !== undefined) connectOptions.secureContext = options.secureContext;
  else {
    if (options.ca !== undefined) connectOptions.ca = options.ca;
    if (options.cert !== undefined) connectOptions.cert = options.cert;
    if (options.key !== undefined) connectOptions.key = options.key;
  }
  const secure = tls.connect(connectOptions);
  try {
    await new Promise<void>((resolve, reject) => {
      deadline.onExpire(() => {
        reject(new UpstreamError('timeout', 'timed out during the TLS handshake'));
      });
      secure.once('secureConnect', () => {
        secure.off('error', reject);
        resolve();
      });
      secure.once('error', (err: Error) => {
        reject(new UpstreamError('tls', `TLS handshake failed: ${err.message}`, { cause: err }));
      });
    });
  } catch (err) {
    secure.destroy();
    throw err;
  }
  return secure;
}

type StartupResult = Omit<UpstreamConnection, 'socket' | 'encrypted'>;

/** Runs authentication and reads startup messages until ReadyForQuery. */
function runStartup(
  socket: net.Socket | tls.TLSSocket,
  options: UpstreamConnectOptions,
  deadline: Deadline,
): Promise<StartupResult> {
  const allowed = new Set(options.allowedAuthMethods ?? ALL_AUTH_METHODS);
  const scanner = new BackendScanner({ interest: Object.values(BackendCode) });
  const parameters = new Map<string, string>();
  const notices: ErrorFields[] = [];
  let backendKey: BackendKey | null = null;
  let authMethod: UpstreamAuthMethod = 'none';
  let authenticated = false;
  let scram: ScramClient | null = null;

  const requirePassword = (method: UpstreamAuthMethod): string => {
    if (!allowed.has(method))
      throw new UpstreamError('auth', `server requested ${method} authentication, which is not allowed`);
    if (options.password === undefined) {
      throw new UpstreamError('auth', `server requested ${method} authentication but no password is configured`);
    }
    authMethod = method;
    return options.password;
  };

  /** Handles one frame; returns the final status on ReadyForQuery. */
  const handle = (frame: Buffer): TransactionStatus | null => {
    const code = frame[0];
    switch (code) {
      case BackendCode.Authentication: {
        if (authenticated) throw new UpstreamError('protocol', 'authentication request after AuthenticationOk');
        const req = decodeAuthentication(frame);
        switch (req.code) {
          case AuthCode.Ok:
            if (scram !== null && !scram.isVerified) {
              throw new UpstreamError('auth', 'server ended SCRAM authentication without proving its identity');
            }
            if (authMethod === 'none' && !allowed.has('none')) {
              throw new UpstreamError(
                'auth',
                'server accepted the connection without authentication, which is not allowed',
              );
            }
            authenticated = true;
            return null;
          case AuthCode.CleartextPassword:
            socket.write(encodePasswordMessage(requirePassword('password')));
            return null;
          case AuthCode.MD5Password:
            socket.write(encodePasswordMessage(md5Password(options.user, requirePassword('md5'), req.salt)));
            return null;
          case AuthCode.SASL: {
            if (!req.mechanisms.includes(SCRAM_SHA_256)) {
              throw new UpstreamError('auth', `no supported SASL mechanism among: ${req.mechanisms.join(', ')}`);
            }
            scram = new ScramClient({ password: requirePassword('scram-sha-256') });
            socket.write(encodeSASLInitialResponse(SCRAM_SHA_256, scram.clientFirstMessage()));
            return null;
          }
          case AuthCode.SASLContinue:
            if (scram === null) throw new UpstreamError('protocol', 'SASLContinue without a SASL exchange');
            socket.write(encodeSASLResponse(scram.clientFinalMessage(req.data)));
            return null;
          case AuthCode.SASLFinal:
            if (scram === null) throw new UpstreamError('protocol', 'SASLFinal without a SASL exchange');
            scram.verifyServerFinal(req.data);
            return null;
          default:
            throw new UpstreamError('auth', `unsupported authentication request ${req.code}`);
        }
      }
      case BackendCode.ErrorResponse: {
        const fields = decodeErrorFields(frame);
        throw new UpstreamError('server', `server error ${fields.code}: ${fields.message}`, { fields });
      }
      case BackendCode.NoticeResponse:
        notices.push(decodeErrorFields(frame));
        return null;
      case BackendCode.NegotiateProtocolVersion:
        // The sidecar asks for 3.0 without protocol options, so any answer is compatible.
        return null;
      case BackendCode.ParameterStatus: {
        const { name, value } = decodeParameterStatus(frame);
        parameters.set(name, value);
        return null;
      }
      case BackendCode.BackendKeyData: {
        const key = decodeBackendKeyData(frame);
        backendKey = { processId: key.processId, secretKey: Buffer.from(key.secretKey) };
        return null;
      }
      case BackendCode.ReadyForQuery:
        if (!authenticated) throw new UpstreamError('protocol', 'ReadyForQuery before AuthenticationOk');
        return decodeReadyForQuery(frame);
      default:
        throw new UpstreamError('protocol', `unexpected message '${String.fromCharCode(code ?? 0)}' during startup`);
    }
  };

  return new Promise<StartupResult>((resolve, reject) => {
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (err: unknown): void => {
      cleanup();
      reject(toUpstreamError(err));
    };
    const onData = (chunk: Buffer): void => {
      try {
        scanner.push(chunk);
        for (let seg = scanner.next(); seg !== null; seg = scanner.next()) {
          if (seg.kind !== 'frame') continue;
          const status = handle(seg.frame);
          if (status !== null) {
            cleanup();
            socket.pause();
            const rest = scanner.detachRemainder();
            if (rest.length > 0) socket.unshift(Buffer.from(rest));
            resolve({ parameters, backendKey, transactionStatus: status, authMethod, notices });
            return;
          }
        }
      } catch (err) {
        fail(err);
      }
    };
    const onError = (err: Error): void => {
      fail(new UpstreamError('closed', `connection failed during startup: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      fail(new UpstreamError('closed', 'server closed the connection during startup'));
    };
    deadline.onExpire(() => {
      fail(new UpstreamError('timeout', 'timed out during startup'));
    });
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.resume();
  });
}

function toUpstreamError(err: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err;
  if (err instanceof ScramError)
    return new UpstreamError('auth', `SCRAM authentication failed: ${err.message}`, { cause: err });
  if (err instanceof ProtocolViolation) {
    return new UpstreamError('protocol', `server broke the protocol: ${err.message}`, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new UpstreamError('connect', message, { cause: err });
}

function describe(host: string, port: number): string {
  return host.startsWith('/') ? `${host}/.s.PGSQL.${port}` : `${host}:${port}`;
}
