// The forwarding half of a Kubernetes exchange (kubernetes-exchange.ts decides, this relays): a decided
// request sent upstream with the sidecar's credential and its answer relayed, Secrets masked on the way back
// (secret-redaction.ts), and upgrades (exec, attach, port-forward, proxy) relayed as bytes with a bounded
// transcript (exec-transcript.ts). Every relay ends in one outcome record.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { maskText, type AgentSession } from '../../core/agent-session.ts';
import type { DecidedCommand } from '../../core/command.ts';
import type { SidecarError } from '../../core/errors.ts';
import {
  CLIENT_CLOSED_STATUS,
  clientStillThere,
  outcomeOnce,
  relayFailures,
  relayRewrittenJson,
  watchClient,
  watchSocket,
} from '../http-base/http-exchange.ts';
import {
  forwardableHeaders,
  forwardableResponseHeaders,
  type CheckedHeaders,
  type RequestTarget,
} from '../http-base/request-hygiene.ts';
import { touchesSecrets, type ExchangeContext } from './exchange-context.ts';
import { ExecTranscript } from './exec-transcript.ts';
import type { RequestInfo } from './request-info.ts';
import { redactSecrets } from './secret-redaction.ts';
import { statusFor } from './status.ts';

/** An admitted request as the relay needs it: its exchange's context, bytes, Audit-ID and error replies. */
export interface RelayedRequest {
  readonly ctx: ExchangeContext;
  readonly req: IncomingMessage;
  readonly checked: CheckedHeaders;
  readonly target: RequestTarget;
  readonly auditId: string;
  sendStatus(res: ServerResponse, error: SidecarError, info?: RequestInfo): void;
  writeRawStatus(socket: Duplex, error: SidecarError): void;
}

/** Bytes of each exec/attach channel kept for the outcome record (stdin, stdout, stderr, error). */
const EXEC_TRANSCRIPT_BYTES = 192;

/** An outcome message fits the record's 1024 characters. */
function truncateMessage(text: string): string {
  return text.length <= 1024 ? text : `${text.slice(0, 1023)}…`;
}

/** The Accept header for a response the engine must read: JSON only (protobuf and YAML cannot be masked here). */
function jsonAccept(accept: string | undefined): string {
  const kept = (accept ?? '')
    .split(',')
    .map((a) => a.trim())
    .filter((a) => /^application\/json(?:;|$)/i.test(a));
  return kept.length === 0 ? 'application/json' : kept.join(',');
}

function upstreamHeaders(r: RelayedRequest, masked: boolean): Record<string, string> {
  const headers = forwardableHeaders(
    r.checked,
    (n) =>
      n === 'authorization' || n === 'audit-id' || n.startsWith('impersonate-') || (masked && n === 'accept-encoding'),
  );
  headers.authorization = `Bearer ${r.ctx.credential.current()}`;
  headers['audit-id'] = r.auditId;
  if (masked) headers.accept = jsonAccept(headers.accept);
  return headers;
}

function upstreamPath(r: RelayedRequest): string {
  const target = r.target;
  return `${r.ctx.upstream.pathPrefix}${target.rawPath}${target.rawQuery === '' ? '' : `?${target.rawQuery}`}`;
}

export function forwardRequest(
  r: RelayedRequest,
  res: ServerResponse,
  session: AgentSession,
  info: RequestInfo,
  decided: DecidedCommand,
  body: Buffer | undefined,
): void {
  // Refused since it was decided (a later request on its connection was malformed, or during a hold).
  const refused = r.ctx.connectionRefusal(r.req);
  if (refused !== undefined) {
    session.complete(decided, 'kubernetes', { status: 'denied', code: '400', message: refused.message });
    return;
  }
  // Gone since it was decided (while its decision record became durable, while held): not forwarded.
  const client = watchClient(r.req, res);
  const finish = outcomeOnce(session, decided, 'kubernetes');
  if (!clientStillThere(client, finish)) return;
  const masked = touchesSecrets(info);
  const headers = upstreamHeaders(r, masked);
  if (body !== undefined) headers['content-length'] = String(body.length);
  const upstreamReq = r.ctx.upstream.request({
    method: r.req.method ?? 'GET',
    path: upstreamPath(r),
    headers,
  });
  relayFailures(upstreamReq, client, res, r.ctx.logger.child({ auditId: r.auditId }), finish, (reason) => {
    const error: SidecarError = {
      id: 'UpstreamUnavailable',
      message: `chaperone: the API server could not be reached (${reason})`,
    };
    r.sendStatus(res, error, info);
    finish('error', String(statusFor(error).code), error.message);
  });
  upstreamReq.on('response', (upstreamRes) => {
    const code = upstreamRes.statusCode ?? 502;
    const outcome = code < 400 ? 'success' : 'error';
    if (!masked) {
      res.writeHead(code, forwardableResponseHeaders(upstreamRes.rawHeaders).flat());
      upstreamRes.pipe(res);
      upstreamRes.once('end', () => finish(outcome, String(code)));
      return;
    }
    relayMasked(r, res, upstreamRes, info, code, (failure) =>
      failure === undefined ? finish(outcome, String(code)) : finish('error', '502', failure),
    );
  });
  upstreamReq.end(body);
}

/** Relays a response about Secrets with every value masked: a watch event by event, anything else whole. */
function relayMasked(
  r: RelayedRequest,
  res: ServerResponse,
  upstreamRes: IncomingMessage,
  info: RequestInfo,
  code: number,
  done: (failure?: string) => void,
): void {
  const limit = r.ctx.config.maxMaskedResponseBytes;
  const fail = (reason: string) => {
    upstreamRes.destroy();
    if (res.headersSent) res.destroy();
    else
      r.sendStatus(
        res,
        {
          id: 'UnmaskableResponse',
          message: `chaperone: the response cannot be masked (${reason}); it was not passed on`,
        },
        info,
      );
    done(reason);
  };
  const encoding = (upstreamRes.headers['content-encoding'] ?? 'identity').toLowerCase();
  const type = (upstreamRes.headers['content-type'] ?? '').toLowerCase();
  if (encoding !== 'identity') {
    fail(`content-encoding ${encoding}`);
    return;
  }
  if (!type.startsWith('application/json')) {
    fail(`content-type ${type === '' ? 'missing' : type}`);
    return;
  }
  const headers = forwardableResponseHeaders(upstreamRes.rawHeaders, (n) => n === 'content-length');
  if (info.verb === 'watch' && code === 200) {
    res.writeHead(code, headers.flat());
    let pending = '';
    upstreamRes.setEncoding('utf8');
    upstreamRes.on('data', (chunk: string) => {
      pending += chunk;
      let newline = pending.indexOf('\n');
      while (newline !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim() !== '') {
          try {
            const event: unknown = JSON.parse(line);
            redactSecrets(event);
            res.write(`${JSON.stringify(event)}\n`);
          } catch {
            fail('a watch event is not JSON');
            return;
          }
        }
        newline = pending.indexOf('\n');
      }
      if (pending.length > limit) fail('a watch event is larger than maxMaskedResponseBytes');
    });
    upstreamRes.once('end', () => {
      if (pending.trim() !== '') {
        fail('the watch ended inside an event');
        return;
      }
      res.end();
      done();
    });
    return;
  }
  relayRewrittenJson(
    upstreamRes,
    res,
    { code, headers, limit },
    (doc) => {
      redactSecrets(doc);
      return JSON.stringify(doc);
    },
    fail,
    done,
  );
}

/** The upgrade request, sent on a connection of its own; the 101 and both streams are relayed as bytes. */
export function forwardUpgrade(
  r: RelayedRequest,
  socket: Duplex,
  head: Buffer,
  session: AgentSession,
  decided: DecidedCommand,
): void {
  const finish = outcomeOnce(session, decided, 'kubernetes');
  // Gone since it was decided: an exec nobody reads would still run in the pod. Not forwarded.
  if (!clientStillThere(watchSocket(socket), finish)) return;
  const headers = upstreamHeaders(r, false);
  headers.connection = 'Upgrade';
  headers.upgrade = r.checked.headers.get('upgrade') ?? 'websocket';
  // No compression extension: the transcript reads the frames as they pass.
  delete headers['sec-websocket-extensions'];
  const transcript = new ExecTranscript(EXEC_TRANSCRIPT_BYTES);
  const upstreamReq = r.ctx.upstream.requestOwnConnection({
    method: r.req.method ?? 'GET',
    path: upstreamPath(r),
    headers,
  });
  let fromClient = 0;
  let toClient = 0;
  // Until the API server answers the upgrade, the client going away cancels it.
  const stopWatching = watchSocket(socket).onGone(() => {
    upstreamReq.destroy();
    finish(
      'cancelled',
      CLIENT_CLOSED_STATUS,
      'client closed the connection before the upgrade was answered (forwarded)',
    );
  });
  upstreamReq.on('error', (err) => {
    r.writeRawStatus(socket, {
      id: 'UpstreamUnavailable',
      message: `chaperone: the API server could not be reached (${err.message})`,
    });
    finish('error', '502', err.message);
  });
  upstreamReq.on('response', (upstreamRes) => {
    // Not upgraded: the API server's answer (a Status) goes to the client as it is (still watched: a
    // client gone before its end cancels it).
    const code = upstreamRes.statusCode ?? 502;
    const lines = [`HTTP/1.1 ${String(code)} ${upstreamRes.statusMessage ?? ''}`];
    for (const [name, value] of forwardableResponseHeaders(upstreamRes.rawHeaders)) lines.push(`${name}: ${value}`);
    lines.push('Connection: close', '', '');
    socket.write(lines.join('\r\n'));
    upstreamRes.pipe(socket);
    upstreamRes.once('end', () => finish('error', String(code), 'the API server did not upgrade the connection'));
  });
  upstreamReq.on('upgrade', (upstreamRes, upstreamSocket: Socket, upstreamHead: Buffer) => {
    stopWatching();
    if (socket.destroyed) {
      upstreamSocket.destroy();
      finish(
        'cancelled',
        CLIENT_CLOSED_STATUS,
        'client closed the connection before the upgrade was answered (forwarded)',
      );
      return;
    }
    const lines = ['HTTP/1.1 101 Switching Protocols'];
    for (let i = 0; i + 1 < upstreamRes.rawHeaders.length; i += 2) {
      lines.push(`${upstreamRes.rawHeaders[i] ?? ''}: ${upstreamRes.rawHeaders[i + 1] ?? ''}`);
    }
    lines.push('', '');
    socket.write(lines.join('\r\n'));
    if (upstreamHead.length > 0) socket.write(upstreamHead);
    if (head.length > 0) upstreamSocket.write(head);
    if (head.length > 0) transcript.fromClient.push(head);
    if (upstreamHead.length > 0) transcript.toClient.push(upstreamHead);
    socket.on('data', (c: Buffer) => {
      fromClient += c.length;
      transcript.fromClient.push(c);
    });
    upstreamSocket.on('data', (c: Buffer) => {
      toClient += c.length;
      transcript.toClient.push(c);
    });
    socket.pipe(upstreamSocket);
    upstreamSocket.pipe(socket);
    const close = () => {
      socket.destroy();
      upstreamSocket.destroy();
      // The decision's detectors mask what was typed and printed, as they mask recorded bodies.
      const seen = maskText(transcript.summary(), decided.decision);
      finish(
        'success',
        '101',
        truncateMessage(
          `stream closed: ${String(fromClient)} bytes from the client, ${String(toClient)} to it${seen === '' ? '' : `; ${seen}`}`,
        ),
      );
    };
    socket.once('close', close);
    upstreamSocket.once('close', close);
    socket.on('error', close);
    upstreamSocket.on('error', close);
  });
  upstreamReq.end();
}
