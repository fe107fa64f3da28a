// The HTTP engine (core/engine.ts, docs/http-engine.md): a reverse proxy for one HTTP API. Each request is
// checked for framing the upstream could read differently, identified by the agent's bearer token, decided
// on its method and normalised path, forwarded with the credential only the sidecar holds, and recorded;
// JSON responses are masked by the decision's masking rules and the credential never comes back.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { CombinedDecision, HttpCommand } from '@chaperone/api';
import type { HttpListenerConfig } from '../../config.ts';
import type { AgentSession } from '../../core/agent-session.ts';
import { builtInDecision, type CommandDescription, type DecidedCommand } from '../../core/command.ts';
import type { Engine, EngineServices } from '../../core/engine.ts';
import { policyRefusal, type SidecarError } from '../../core/errors.ts';
import { awaitApproval, exactRequest, holdable } from '../http-base/approval-hold.ts';
import { HttpEndpoint as HttpSpeakingEndpoint, type RenderedError } from '../http-base/http-endpoint.ts';
import {
  admitRequest,
  auditCleared,
  clientStillThere,
  outcomeOnce,
  readBody,
  relayFailures,
  relayRewrittenJson,
  sendError,
  watchClient,
  writeRawError,
} from '../http-base/http-exchange.ts';
import {
  bearerToken,
  checkHeaders,
  forwardableHeaders,
  forwardableResponseHeaders,
  type CheckedHeaders,
} from '../http-base/request-hygiene.ts';
import { CredentialFile } from '../http-base/upstream.ts';
import { CredentialScrubber, scrubText } from './credential-scrub.ts';
import { createJsonMasker } from './json-masking.ts';
import { normalisePath, UnnormalisablePath } from './path-normalisation.ts';
import { readHeaders, readQuery, UnreadableQuery } from './request-reading.ts';
import { requestOverride } from './request-override.ts';
import { PROBLEM_CONTENT_TYPE, problemFor } from './problem.ts';

const OUTSIDE_TRANSACTION = { inTransaction: false } as const;
/** Methods that can change state: their bodies are recorded. */
const MUTATING: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Never proxied: TRACE echoes the request (with the injected credential), CONNECT opens a tunnel. */
const REFUSED_METHODS: ReadonlySet<string> = new Set(['TRACE', 'TRACK', 'CONNECT']);

export function createHttpEngine(): Engine<HttpListenerConfig> {
  return {
    type: 'http',
    init: () => Promise.resolve(),
    bind: (config, services) => new HttpEndpoint(config, services),
  };
}

function builtIn(rule: string, reason: string): CombinedDecision {
  return builtInDecision('deny', rule, reason);
}

class HttpEndpoint extends HttpSpeakingEndpoint {
  readonly config: HttpListenerConfig;
  readonly credential: CredentialFile | undefined;

  constructor(config: HttpListenerConfig, services: EngineServices) {
    super('http', config, services);
    this.config = config;
    const credential = config.upstream.credential;
    this.credential = credential === undefined ? undefined : new CredentialFile(credential.valueFile);
  }

  protected onRequest(req: IncomingMessage, res: ServerResponse): void {
    void this.serve(req, res);
  }

  protected onUpgrade(req: IncomingMessage, socket: Duplex): void {
    void this.refuseUpgrade(req, socket);
  }

  protected renderError(error: SidecarError, requestId?: string): RenderedError {
    return { contentType: PROBLEM_CONTENT_TYPE, ...problemFor(error, requestId) };
  }

  private send(res: ServerResponse, error: SidecarError, requestId: string): void {
    sendError(res, error, this.renderError(error, requestId), 'x-request-id', requestId);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let requestId: string = randomUUID();
    try {
      const admitted = await admitRequest(req, {
        sessions: this.sessions,
        logger: this.logger,
        idHeader: 'x-request-id',
        idPattern: /^[A-Za-z0-9._:-]{1,128}$/,
        requestId,
        reply: (error, id) => this.send(res, error, id),
      });
      if (admitted === undefined) return;
      const { checked, session } = admitted;
      const { rawPath, rawQuery } = admitted.target;
      requestId = admitted.requestId;
      const method = req.method ?? '';
      const line = `${method} ${req.url ?? ''}`;
      const host = this.upstream.base.hostname.toLowerCase();
      const refuse = (rule: string, error: SidecarError, description?: CommandDescription) => {
        const decided = session.record(
          description ?? {
            command: { type: 'http', method, path: '', host, query: {}, headers: {} },
            fingerprint: 'refused',
            text: line,
            requestId,
          },
          builtIn(rule, error.message),
        );
        this.send(res, error, requestId);
        session.complete(decided, 'http', {
          status: 'denied',
          code: String(problemFor(error).code),
          message: error.message,
        });
      };
      let path: string;
      try {
        path = normalisePath(rawPath);
      } catch (err) {
        if (!(err instanceof UnnormalisablePath)) throw err;
        refuse('unnormalisable-path', { id: 'AmbiguousRequest', message: `chaperone: ${err.message}` });
        return;
      }
      let query: Record<string, string[]>;
      try {
        query = readQuery(rawQuery);
      } catch (err) {
        if (!(err instanceof UnreadableQuery)) throw err;
        refuse('unreadable-query', { id: 'AmbiguousRequest', message: `chaperone: ${err.message}` });
        return;
      }
      const target = rawQuery === '' ? path : `${path}?${rawQuery}`;
      // The headers the upstream will read (the agent's credentials and what the engine sets itself left out).
      const forwarded = this.forwardedHeaders(checked);
      const headers = readHeaders(forwarded);
      const command: HttpCommand = { type: 'http', method, path, host, query, headers };
      const fingerprint = `http\0${method}\0${path}\0${host}\0${JSON.stringify(query)}\0${JSON.stringify(headers)}`;
      const describe = (body?: Buffer): CommandDescription => {
        const base = {
          command,
          fingerprint,
          text: `${method} ${target}`,
          requestId,
        };
        return body === undefined || body.length === 0 || !MUTATING.has(method)
          ? base
          : { ...base, body: body.toString('utf8') };
      };
      if (REFUSED_METHODS.has(method)) {
        refuse('method', { id: 'RequestRefused', message: `chaperone: ${method} is never proxied` }, describe());
        return;
      }
      const limit = this.config.maxRequestBodyBytes;
      const tooLarge = () =>
        refuse(
          'request-too-large',
          { id: 'RequestTooLarge', message: `chaperone: the request body is larger than ${String(limit)} bytes` },
          describe(),
        );
      const declared = checked.body;
      if (typeof declared === 'number' && declared > limit) {
        tooLarge();
        return;
      }
      let body: Buffer | undefined;
      try {
        body = await readBody(req, limit);
      } catch (err) {
        // A body cut by a parser error ends in 'aborted' once the refused connection closes: recorded.
        const cut = this.connectionRefusal(req);
        if (cut === undefined && watchClient(req, res).gone()) {
          // Cut by the client going away: never whole, so never decided, and nobody to answer.
          this.logger.info('client closed the connection while sending the request body', { requestId });
          return;
        }
        if (cut === undefined) throw err;
        refuse('malformed-connection', cut, describe());
        return;
      }
      if (body === undefined) {
        tooLarge();
        return;
      }
      const refused = this.connectionRefusal(req);
      if (refused !== undefined) {
        refuse('malformed-connection', refused, describe(body));
        return;
      }
      const override = requestOverride(checked.headers.keys(), query, body, checked.headers.get('content-type'));
      if (override !== undefined) {
        const message = `chaperone: ${override} could make the upstream act on another method, path or client than the one decided`;
        refuse('request-override', { id: 'RequestRefused', message }, describe());
        return;
      }
      // Decided first, recorded with the body's JSON fields masked by that decision's masking rules.
      const description = describe(body);
      const decision = session.evaluate(description, OUTSIDE_TRANSACTION);
      const recorded =
        description.body === undefined
          ? description
          : { ...description, body: maskJsonBody(description.body, decision) };
      const decided = session.record(recorded, decision);
      // An approve decision holds the request (docs/http-engine.md, "Approval holds") when approvals are
      // enabled, with the body read and recorded; otherwise it is refused ApprovalRequired below.
      if (holdable(session, decided)) {
        const auditRefused = await auditCleared(decided);
        if (auditRefused !== undefined) {
          this.send(res, auditRefused, requestId);
          return;
        }
        const verdict = await awaitApproval(
          session,
          decided,
          recorded,
          exactRequest(req, body),
          watchClient(req, res),
          this.logger.child({ requestId }),
        );
        if (!verdict.run) {
          if (!res.destroyed) this.send(res, verdict.error, requestId);
          session.complete(verdict.command, 'http', {
            status: 'denied',
            code: String(problemFor(verdict.error).code),
            message: verdict.error.message,
          });
          return;
        }
        this.forward(req, res, session, verdict.command, forwarded, target, body, requestId);
        return;
      }
      if (decided.decision.decision !== 'allow') {
        const error = policyRefusal(decided.decision);
        this.send(res, error, requestId);
        session.complete(decided, 'http', {
          status: 'denied',
          code: String(problemFor(error).code),
          message: error.message,
        });
        return;
      }
      const auditRefused = await auditCleared(decided);
      if (auditRefused !== undefined) {
        this.send(res, auditRefused, requestId);
        return;
      }
      this.forward(req, res, session, decided, forwarded, target, body, requestId);
    } catch (err) {
      this.logger.error('request failed', { error: err, requestId });
      if (!res.headersSent)
        this.send(res, { id: 'Internal', message: 'chaperone: internal error; see the sidecar log' }, requestId);
      else res.destroy();
    }
  }

  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    session: AgentSession,
    decided: DecidedCommand,
    forwarded: Readonly<Record<string, string>>,
    target: string,
    body: Buffer,
    requestId: string,
  ): void {
    // Refused since it was decided (a later request on its connection was malformed, or during a hold).
    const refused = this.connectionRefusal(req);
    if (refused !== undefined) {
      session.complete(decided, 'http', { status: 'denied', code: '400', message: refused.message });
      return;
    }
    // Gone since it was decided (while its decision record became durable, while held): not forwarded.
    const client = watchClient(req, res);
    const finish = outcomeOnce(session, decided, 'http');
    if (!clientStillThere(client, finish)) return;
    const credential = this.config.upstream.credential;
    const secret = this.credential?.current() ?? '';
    const headers = { ...forwarded };
    // Identity only: a compressed body could hide the credential from the scrubber and fields from masking.
    headers['accept-encoding'] = 'identity';
    headers['x-request-id'] = requestId;
    if (credential !== undefined) headers[credential.header.toLowerCase()] = `${credential.prefix}${secret}`;
    if (body.length > 0 || MUTATING.has(req.method ?? '')) headers['content-length'] = String(body.length);
    const upstreamReq = this.upstream.request({
      method: req.method ?? 'GET',
      path: `${this.upstream.pathPrefix}${target}`,
      headers,
    });
    relayFailures(upstreamReq, client, res, this.logger.child({ requestId }), finish, (reason) => {
      const error: SidecarError = {
        id: 'UpstreamUnavailable',
        message: `chaperone: the upstream could not be reached (${reason})`,
      };
      this.send(res, error, requestId);
      finish('error', '502', error.message);
    });
    upstreamReq.on('response', (upstreamRes) => {
      const code = upstreamRes.statusCode ?? 502;
      const outcome = code < 400 ? 'success' : 'error';
      const encoding = (upstreamRes.headers['content-encoding'] ?? 'identity').toLowerCase();
      const fail = (reason: string) => {
        upstreamRes.destroy();
        const error: SidecarError = {
          id: 'UnmaskableResponse',
          message: `chaperone: the response cannot be checked (${reason}); it was not passed on`,
        };
        if (res.headersSent) res.destroy();
        else this.send(res, error, requestId);
        finish('error', '502', error.message);
      };
      if (encoding !== 'identity') {
        fail(`content-encoding ${encoding}`);
        return;
      }
      const responseHeaders = forwardableResponseHeaders(upstreamRes.rawHeaders).map(
        ([name, value]): [string, string] => [name, scrubText(value, secret)],
      );
      const masker = createJsonMasker(decided.decision.masking);
      const json = /^application\/(?:[\w.+-]+\+)?json/i.test(upstreamRes.headers['content-type'] ?? '');
      if (masker === undefined || !json) {
        // Streamed: only the credential scrubber looks at the bytes, and it changes their length.
        const scrubber = new CredentialScrubber(secret);
        res.writeHead(code, responseHeaders.filter(([n]) => n.toLowerCase() !== 'content-length').flat());
        upstreamRes.pipe(scrubber).pipe(res);
        res.once('finish', () =>
          finish(
            outcome,
            String(code),
            scrubber.found > 0 ? `credential scrubbed ${String(scrubber.found)}x` : undefined,
          ),
        );
        return;
      }
      relayRewrittenJson(
        upstreamRes,
        res,
        { code, headers: responseHeaders, limit: this.config.maxMaskedResponseBytes },
        (doc) => {
          masker.mask(doc);
          return scrubText(JSON.stringify(doc), secret);
        },
        fail,
        () => finish(outcome, String(code)),
      );
    });
    upstreamReq.end(body.length > 0 ? body : undefined);
  }

  /** The agent's headers that travel upstream: not its credentials, nor those the engine sets itself. */
  private forwardedHeaders(checked: CheckedHeaders): Record<string, string> {
    const credential = this.config.upstream.credential?.header.toLowerCase();
    return forwardableHeaders(
      checked,
      (n) => n === 'authorization' || n === 'x-request-id' || n === 'accept-encoding' || n === credential,
    );
  }

  /** Upgrades (WebSocket, h2c) open streams the engine cannot inspect: refused. */
  private async refuseUpgrade(req: IncomingMessage, socket: Duplex): Promise<void> {
    const problem = problemFor({
      id: 'StreamRefused',
      message: 'chaperone: protocol upgrades are not proxied by the HTTP engine',
    });
    // Identify and record when possible; the refusal stands either way.
    try {
      const checked = checkHeaders(req.rawHeaders);
      const auth = await this.sessions.authenticate(req.socket, bearerToken(checked.headers.get('authorization')), {
        address: `${req.socket.remoteAddress ?? ''}:${String(req.socket.remotePort ?? '')}`,
        applicationName: '',
        user: '',
        database: '',
      });
      if ('session' in auth) {
        const decided = auth.session.record(
          {
            command: {
              type: 'http',
              method: req.method ?? '',
              path: '',
              host: this.upstream.base.hostname.toLowerCase(),
              query: {},
              headers: {},
            },
            fingerprint: 'refused',
            text: `${req.method ?? ''} ${req.url ?? ''}`,
          },
          builtIn('upgrade', problem.body),
        );
        auth.session.complete(decided, 'http', { status: 'denied', code: String(problem.code) });
      }
    } catch {
      // Malformed as well: the same refusal.
    }
    writeRawError(socket, { contentType: PROBLEM_CONTENT_TYPE, ...problem }, 'Bad Request');
  }
}

/** A recorded body with the decision's field rules applied when it is JSON (detectors are the core's). */
function maskJsonBody(body: string, decision: CombinedDecision): string {
  const masker = createJsonMasker(decision.masking.filter((m) => m.columns.length > 0));
  if (masker === undefined) return body;
  try {
    const doc: unknown = JSON.parse(body);
    masker.mask(doc);
    return JSON.stringify(doc);
  } catch {
    // Not JSON: no field can be named, so none is kept.
    return '[body not recorded: field masking rules apply and it is not JSON]';
  }
}
