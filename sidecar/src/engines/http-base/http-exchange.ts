// The steps of one request that the HTTP-speaking engines (Kubernetes API, HTTP) take alike: admission
// (framing checks, the request id, the agent's session), reading a bounded body, waiting for the decision
// record's durability, answering with an error, and relaying the upstream's response with exactly one
// outcome record however it ends. What differs — classification, policy input, masking — stays in each
// engine; errors are rendered by the engine's own protocol (RenderedError).
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { PolicyCommand } from '@chaperone/api';
import type { AgentSession } from '../../core/agent-session.ts';
import type { DecidedCommand } from '../../core/command.ts';
import { auditRefusal, type SidecarError } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { ClientSessions } from './client-sessions.ts';
import type { RenderedError } from './http-endpoint.ts';
import {
  AmbiguousRequest,
  bearerToken,
  checkHeaders,
  splitTarget,
  type CheckedHeaders,
  type RequestTarget,
} from './request-hygiene.ts';

/** Errors after which the connection's framing cannot be trusted: the answer closes it. */
function closesConnection(error: SidecarError): boolean {
  return error.id === 'AmbiguousRequest' || error.id === 'RequestTooLarge';
}

/**
 * Answers `res` with an error: its rendered body, the request id under `idHeader`, a Bearer challenge for
 * authentication failures, and `Connection: close` when the framing is in doubt.
 */
export function sendError(
  res: ServerResponse,
  error: SidecarError,
  rendered: RenderedError,
  idHeader: string,
  requestId: string,
): void {
  res.writeHead(rendered.code, {
    'content-type': rendered.contentType,
    'content-length': Buffer.byteLength(rendered.body),
    [idHeader]: requestId,
    ...(error.id === 'AuthenticationFailed' ? { 'www-authenticate': 'Bearer realm="chaperone"' } : {}),
    ...(closesConnection(error) ? { connection: 'close' } : {}),
  });
  res.end(rendered.body);
}

/** Answers a socket that is no HTTP response any more (an upgrade request) with an error, and ends it. */
export function writeRawError(socket: Duplex, rendered: RenderedError, reason: string, headers: string[] = []): void {
  socket.end(
    [
      `HTTP/1.1 ${String(rendered.code)} ${reason}`,
      `Content-Type: ${rendered.contentType}`,
      `Content-Length: ${String(Buffer.byteLength(rendered.body))}`,
      ...headers,
      'Connection: close',
      '',
      rendered.body,
    ].join('\r\n'),
  );
}

export interface Admitted {
  readonly checked: CheckedHeaders;
  readonly target: RequestTarget;
  readonly session: AgentSession;
  /** The request id: the client's own when `idPattern` accepts it, else the one passed in. */
  readonly requestId: string;
}

export interface AdmissionOptions {
  readonly sessions: ClientSessions;
  readonly logger: Logger;
  /** Lower-case name of the header carrying the request id (audit-id, x-request-id). */
  readonly idHeader: string;
  /** Client-sent ids this pattern accepts are kept. */
  readonly idPattern: RegExp;
  /** The id when the client sent none (or one not accepted). */
  readonly requestId: string;
  /** Answers a refusal (framing, authentication) with the request id chosen so far. */
  readonly reply: (error: SidecarError, requestId: string) => void;
}

/**
 * Framing checks, request target, request id and the agent's session; undefined when the request was
 * refused (and answered) already. A refusal before authentication has no session to record it in; the
 * authentication failure itself is recorded by ClientSessions.
 */
export async function admitRequest(req: IncomingMessage, options: AdmissionOptions): Promise<Admitted | undefined> {
  let requestId = options.requestId;
  let checked: CheckedHeaders;
  let target: RequestTarget;
  try {
    // Node's parser takes any single-digit version; HTTP/2.0 in an HTTP/1 request line is no request this
    // listener speaks (RFC 9113 §3.3 has the preface for that), so it is refused like HTTP/1.2 is.
    if (req.httpVersionMajor !== 1) throw new AmbiguousRequest(`HTTP/${req.httpVersion} in an HTTP/1.1 request line`);
    checked = checkHeaders(req.rawHeaders);
    target = splitTarget(req.url ?? '', checked.host);
  } catch (err) {
    if (!(err instanceof AmbiguousRequest)) throw err;
    options.logger.warn('ambiguous request refused', { reason: err.message });
    options.reply({ id: 'AmbiguousRequest', message: `chaperone: ${err.message}` }, requestId);
    return undefined;
  }
  const clientId = checked.headers.get(options.idHeader);
  if (clientId !== undefined && options.idPattern.test(clientId)) requestId = clientId;
  const socket = req.socket;
  const auth = await options.sessions.authenticate(socket, bearerToken(checked.headers.get('authorization')), {
    address: `${socket.remoteAddress ?? ''}:${String(socket.remotePort ?? '')}`,
    applicationName: (checked.headers.get('user-agent') ?? '').slice(0, 256),
    user: '',
    database: '',
  });
  if ('refusal' in auth) {
    options.reply(auth.refusal, requestId);
    return undefined;
  }
  return { checked, target, session: auth.session, requestId };
}

/**
 * The whole body of a message, or undefined when it is larger than `limit` (the rest is not read). Rejects
 * when the message is cut before its end (its connection closed, even before reading began).
 */
export function readBody(message: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const cut = () => reject(new Error('the message was cut before its end: its connection closed'));
    if (message.destroyed && !message.readableEnded) {
      cut();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    message.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        message.removeAllListeners('data');
        message.pause();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    });
    message.once('end', () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
    message.once('error', reject);
    // Destroyed without an error event (none is emitted to a message nobody listened to for errors before).
    message.once('close', () => {
      if (!message.readableEnded) cut();
    });
  });
}

/** Waits for the decision record's durability: the refusal to answer when the trail refused it. */
export async function auditCleared(decided: DecidedCommand): Promise<SidecarError | undefined> {
  let audit = decided.audit;
  if (audit.state === 'pending') audit = await audit.settled;
  return audit.state === 'refused' ? auditRefusal(audit.error) : undefined;
}

export type OutcomeStatus = 'success' | 'error' | 'cancelled' | 'denied';
export type Finish = (status: OutcomeStatus, code: string, message?: string) => void;

/** The outcome record of a decided request, written once whichever way the exchange ends first. */
export function outcomeOnce(session: AgentSession, decided: DecidedCommand, kind: PolicyCommand['type']): Finish {
  let done = false;
  return (status, code, message) => {
    if (done) return;
    done = true;
    session.complete(decided, kind, message === undefined ? { status, code } : { status, code, message });
  };
}

/** The HTTP status an outcome record gives a request whose client went away before its answer (nginx's). */
export const CLIENT_CLOSED_STATUS = '499';

/**
 * The client's end of one request: whether it has gone, and a subscription to its going (the returned
 * function unsubscribes). Gone is the connection closing before the answer was delivered, however it closes.
 */
export interface ClientWatch {
  gone(): boolean;
  onGone(listener: () => void): () => void;
}

/**
 * The client of a plain request. gone() asks the connection, which knows even when its close came before
 * anyone listened (while the request was decided or its decision record became durable). The connection is
 * watched as well as the response: a pipelined request's response is not attached to the connection until
 * those before it are answered (Node 20 never told it of the connection closing). Listening stops once the
 * response is finished.
 */
export function watchClient(req: IncomingMessage, res: ServerResponse): ClientWatch {
  const socket = req.socket;
  return {
    gone: () => socket.destroyed || (res.destroyed && !res.writableFinished),
    onGone: (listener) => {
      let stopped = false;
      const stop = (): void => {
        stopped = true;
        res.off('close', onClose);
        socket.off('close', onClose);
      };
      // Once: the response's close is emitted from inside the connection's, whose listeners are already taken.
      const onClose = (): void => {
        if (stopped) return;
        stop();
        if (!res.writableFinished) listener();
      };
      res.once('close', onClose);
      socket.once('close', onClose);
      return stop;
    },
  };
}

/** The client of an upgrade request: its socket, which is no HTTP response any more. */
export function watchSocket(socket: Duplex): ClientWatch {
  return {
    gone: () => socket.destroyed,
    onGone: (listener) => {
      socket.once('close', listener);
      return () => socket.off('close', listener);
    },
  };
}

/**
 * Whether a decided request may still be forwarded: not when its client has gone (while its body was read,
 * while it was decided or held, while its decision record became durable), since nobody would read the
 * answer and a write would run unseen. Then its outcome is recorded `cancelled` here.
 */
export function clientStillThere(client: ClientWatch, finish: Finish): boolean {
  if (!client.gone()) return true;
  finish(
    'cancelled',
    CLIENT_CLOSED_STATUS,
    'client closed the connection before the request was forwarded; not forwarded',
  );
  return false;
}

/**
 * The failure paths of a forwarded request: the upstream unreachable before a response (`unavailable`
 * answers it), lost mid-response (the client's connection is cut), or the client gone first (a stopped
 * watch or `logs -f`: the upstream request is cancelled).
 */
export function relayFailures(
  upstreamReq: ClientRequest,
  client: ClientWatch,
  res: ServerResponse,
  logger: Logger,
  finish: Finish,
  unavailable: (message: string) => void,
): void {
  upstreamReq.on('error', (err) => {
    logger.warn('upstream request failed', { error: err.message });
    if (!res.headersSent) unavailable(err.message);
    else {
      res.destroy();
      finish('error', String(res.statusCode), 'upstream connection lost');
    }
  });
  client.onGone(() => {
    upstreamReq.destroy();
    // Forwarded already: the upstream may have acted; its status when the answer had begun.
    finish(
      'cancelled',
      res.headersSent ? String(res.statusCode) : CLIENT_CLOSED_STATUS,
      'client closed the connection before the answer was delivered (forwarded)',
    );
  });
}

/**
 * Reads a JSON response whole (up to `limit` bytes), rewrites it (masking) and sends it with its new length;
 * `fail` says why when it is too large, does not parse or breaks, `done` when it was sent.
 */
export function relayRewrittenJson(
  upstreamRes: IncomingMessage,
  res: ServerResponse,
  response: { readonly code: number; readonly headers: readonly [string, string][]; readonly limit: number },
  rewrite: (doc: unknown) => string,
  fail: (reason: string) => void,
  done: () => void,
): void {
  readBody(upstreamRes, response.limit).then(
    (whole) => {
      if (whole === undefined) {
        fail('larger than maxMaskedResponseBytes');
        return;
      }
      let text: string;
      try {
        text = rewrite(JSON.parse(whole.toString('utf8')));
      } catch {
        fail('the JSON body does not parse');
        return;
      }
      const headers = response.headers.filter(([n]) => n.toLowerCase() !== 'content-length');
      res.writeHead(response.code, [...headers, ['Content-Length', String(Buffer.byteLength(text))]].flat());
      res.end(text);
      done();
    },
    (err: unknown) => fail(String(err)),
  );
}
