// One Kubernetes API request through the sidecar, socket to record: check the framing (request-hygiene.ts),
// identify the agent by its bearer token (client-sessions.ts), classify the request as the API server does
// (request-info.ts), decide it (AgentSession.decide: the decision record, with the Audit-ID and the request
// body of a mutation), and either answer with a Status or forward it with the sidecar's credential, masking
// Secrets on the way back (secret-redaction.ts); the outcome record follows the response. Upgrades (exec,
// attach, port-forward) are decided before the upgrade is forwarded.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { parse as parseYaml } from 'yaml';
import type { CombinedDecision, KubernetesCommand } from '@chaperone/api';
import { maskText, type AgentSession, type ResourceContext } from '../../core/agent-session.ts';
import type { CommandDescription, DecidedCommand } from '../../core/command.ts';
import type { EngineServices } from '../../core/engine.ts';
import { policyRefusal, type SidecarError } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { KubernetesListenerConfig } from '../../config.ts';
import { awaitApproval, exactRequest, holdable } from '../http-base/approval-hold.ts';
import type { ClientSessions } from '../http-base/client-sessions.ts';
import {
  admitRequest,
  auditCleared,
  builtInDecision as builtIn,
  CLIENT_CLOSED_STATUS,
  clientStillThere,
  outcomeOnce,
  readBody,
  relayFailures,
  relayRewrittenJson,
  sendError,
  watchClient,
  watchSocket,
  writeRawError,
} from '../http-base/http-exchange.ts';
import {
  FORWARDING_HEADERS,
  forwardableHeaders,
  forwardableResponseHeaders,
  type CheckedHeaders,
  type RequestTarget,
} from '../http-base/request-hygiene.ts';
import type { CredentialFile, Upstream } from '../http-base/upstream.ts';
import {
  accessReviewResponse,
  MalformedReview,
  parseReview,
  reviewedCommand,
  rulesReviewResponse,
  selfReviewKind,
  subjectReviewResponse,
} from './access-review.ts';
import { ExecTranscript } from './exec-transcript.ts';
import { decodeProtobufReview } from './protobuf-review.ts';
import {
  classifyRequest,
  MUTATING_VERBS,
  UnclassifiableRequest,
  withDeleteOptions,
  type RequestInfo,
} from './request-info.ts';
import { containsMaskedValue, redactSecrets } from './secret-redaction.ts';
import { statusFor } from './status.ts';

/** What an exchange needs from its endpoint (kubernetes-engine.ts), so the two do not import each other. */
export interface ExchangeContext {
  readonly config: KubernetesListenerConfig;
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly upstream: Upstream;
  readonly credential: CredentialFile;
  readonly sessions: ClientSessions;
  connectionRefusal(req: IncomingMessage): SidecarError | undefined;
}

const OUTSIDE_TRANSACTION = { inTransaction: false } as const;

/** Non-resource URLs every authenticated client may read (the API server's system:discovery and public-info roles). */
const DISCOVERY = /^\/(?:apis?(?:\/[^/]+){0,2}|version|openapi\/v2|openapi\/v3(?:\/.*)?|healthz|livez|readyz)\/?$/;

/** Bytes of each exec/attach channel kept for the outcome record (stdin, stdout, stderr, error). */
const EXEC_TRANSCRIPT_BYTES = 192;

/** An outcome message fits the record's 1024 characters. */
function truncateMessage(text: string): string {
  return text.length <= 1024 ? text : `${text.slice(0, 1023)}…`;
}

/** The decision cache's key of a Kubernetes command: every field the policy reads. */
function kubernetesFingerprint(c: KubernetesCommand): string {
  return `k8s\0${c.verb}\0${c.apiGroup}\0${c.resource}\0${c.subresource}\0${c.namespace}\0${c.name}\0${c.nonResourcePath}`;
}

/**
 * A non-resource request (`/healthz`, `/metrics`, `/apis`) is decided by policy (rules with
 * `nonResourceURLs`). Discovery, version and health documents, which the API server opens to every
 * authenticated client (system:discovery, system:public-info-viewer), stay readable when no rule names
 * them — kubectl cannot work without them — and a rule can still deny them.
 */
function decideNonResource(session: AgentSession, command: KubernetesCommand, path: string): CombinedDecision {
  const description = { command, fingerprint: kubernetesFingerprint(command), text: `${command.verb} ${path}` };
  const decision = session.evaluate(description, OUTSIDE_TRANSACTION);
  const noRule = decision.rule === 'default' || decision.rule === 'no-policy';
  if (noRule && DISCOVERY.test(path) && (command.verb === 'get' || command.verb === 'head')) {
    return builtIn('allow', 'discovery', 'discovery documents are public to every authenticated client');
  }
  return decision;
}

/** Subresources whose upgrade the API server authorizes as `create` whatever the method (websocket GETs too). */
const STREAM_SUBRESOURCES: ReadonlySet<string> = new Set(['exec', 'attach', 'portforward']);
/**
 * Subresources whose upgrade is forwarded. Any other request with an Upgrade header is refused: the API
 * server answers a get or list it does not upgrade as usual, and streams a watch over a WebSocket of its
 * own, and either answer would pass to the client as raw bytes, past the Secret masking.
 */
const UPGRADABLE_SUBRESOURCES: ReadonlySet<string> = new Set([...STREAM_SUBRESOURCES, 'proxy']);

/** The Accept header for a response the engine must read: JSON only (protobuf and YAML cannot be masked here). */
function jsonAccept(accept: string | undefined): string {
  const kept = (accept ?? '')
    .split(',')
    .map((a) => a.trim())
    .filter((a) => /^application\/json(?:;|$)/i.test(a));
  return kept.length === 0 ? 'application/json' : kept.join(',');
}

/** Whether a request's responses carry Secret values. */
function touchesSecrets(info: RequestInfo): boolean {
  return info.isResourceRequest && info.apiGroup === '' && info.resource === 'secrets';
}

export class KubernetesExchange {
  private readonly ctx: ExchangeContext;
  private readonly req: IncomingMessage;
  private auditId: string = randomUUID();
  private session: AgentSession | undefined;
  private info: RequestInfo | undefined;
  private checked: CheckedHeaders | undefined;
  private target: RequestTarget | undefined;

  constructor(ctx: ExchangeContext, req: IncomingMessage) {
    this.ctx = ctx;
    this.req = req;
  }

  /** A plain request: answered here or forwarded, and recorded. */
  async serve(res: ServerResponse): Promise<void> {
    const reply = (error: SidecarError) => this.sendStatus(res, error);
    try {
      if (!(await this.admit(reply))) return;
      const { session } = this.admitted();
      let { info } = this.admitted();
      let body: Buffer | undefined;
      const limit = this.ctx.config.maxRequestBodyBytes;
      const declared = this.checked?.body ?? 0;
      const tooLarge = () =>
        this.refuse(session, info, reply, 'request-too-large', {
          id: 'RequestTooLarge',
          message: `chaperone: the request body is larger than ${String(limit)} bytes`,
        });
      if (typeof declared === 'number' && declared > limit) {
        tooLarge();
        return;
      }
      if (this.req.method !== 'GET' && this.req.method !== 'HEAD') {
        const read = await readBody(this.req, limit).catch((err: unknown) => {
          // A body cut by a parser error ends in 'aborted' once the refused connection closes: recorded below.
          if (this.ctx.connectionRefusal(this.req) !== undefined) return Buffer.alloc(0);
          // Cut by the client going away: never whole, so never decided, and nobody to answer.
          if (watchClient(this.req, res).gone()) return 'gone' as const;
          throw err;
        });
        if (read === 'gone') {
          this.ctx.logger.info('client closed the connection while sending the request body', {
            auditId: this.auditId,
          });
          return;
        }
        body = read;
        if (body === undefined) {
          tooLarge();
          return;
        }
      }
      const refused = this.ctx.connectionRefusal(this.req);
      if (refused !== undefined) {
        this.refuse(session, info, reply, 'malformed-connection', refused, body);
        return;
      }
      if (this.req.method === 'DELETE' && body !== undefined && body.length > 0) {
        try {
          info = withDeleteOptions(info, body, this.checked?.headers.get('content-type') ?? '');
          this.info = info;
        } catch (err) {
          if (!(err instanceof UnclassifiableRequest)) throw err;
          const error: SidecarError = { id: 'AmbiguousRequest', message: `chaperone: ${err.message}` };
          this.refuse(session, info, reply, 'unclassifiable', error, body);
          return;
        }
      }
      const review = selfReviewKind(info);
      if (review !== undefined) {
        await this.answerSelfReview(res, session, info, review, body ?? Buffer.alloc(0));
        return;
      }
      if (!info.isResourceRequest) {
        const description = this.describe(info, body);
        const decided = session.record(description, decideNonResource(session, description.command, info.path));
        if (decided.decision.decision !== 'allow') {
          this.deny(res, session, info, decided);
          return;
        }
        if (!(await this.cleared(decided, reply))) return;
        this.forward(res, session, info, decided, body);
        return;
      }
      const bodyType = this.checked?.headers.get('content-type');
      if (body !== undefined && touchesSecrets(info) && containsMaskedValue(body.toString('latin1'), bodyType)) {
        this.refuse(
          session,
          info,
          reply,
          'masked-value-write',
          {
            id: 'RequestRefused',
            message:
              'chaperone: the request writes a Secret value the sidecar masked (or in a format it cannot read for one: JSON, YAML and protobuf only); it would replace the real value with the mask',
          },
          body,
        );
        return;
      }
      const description = this.describe(info, body);
      const decided = session.decide(description, OUTSIDE_TRANSACTION);
      // An approve decision holds the request (docs/kubernetes-engine.md, "Approval holds") when approvals
      // are enabled; otherwise deny() answers it ApprovalRequired.
      if (holdable(session, decided)) {
        if (!(await this.cleared(decided, reply))) return;
        const verdict = await awaitApproval(
          session,
          decided,
          description,
          exactRequest(this.req, body),
          watchClient(this.req, res),
          this.ctx.logger.child({ auditId: this.auditId }),
        );
        if (!verdict.run) {
          this.refuseHeld(res, session, info, verdict.command, verdict.error);
          return;
        }
        this.forward(res, session, info, verdict.command, body);
        return;
      }
      if (decided.decision.decision !== 'allow') {
        this.deny(res, session, info, decided);
        return;
      }
      if (!(await this.cleared(decided, reply))) return;
      this.forward(res, session, info, decided, body);
    } catch (err) {
      this.ctx.logger.error('request failed', { error: err, auditId: this.auditId });
      if (!res.headersSent) reply({ id: 'Internal', message: 'chaperone: internal error; see the sidecar log' });
      else res.destroy();
    }
  }

  /** An upgrade (exec, attach, port-forward): decided first; a WebSocket upgrade is forwarded, SPDY refused. */
  async serveUpgrade(socket: Duplex, head: Buffer): Promise<void> {
    const reply = (error: SidecarError) => this.writeRawStatus(socket, error);
    try {
      if (!(await this.admit(reply))) return;
      const { session, info } = this.admitted();
      const protocol = (this.checked?.headers.get('upgrade') ?? '').trim().toLowerCase();
      // Policy first, so a denied exec reads as the denial whichever stream protocol the client tried.
      const description = this.describe(info, undefined);
      const decided = session.decide(description, OUTSIDE_TRANSACTION);
      let refusal: SidecarError | undefined;
      const held = holdable(session, decided);
      if (decided.decision.decision !== 'allow' && !held) refusal = policyRefusal(decided.decision);
      else if (!info.isResourceRequest || !UPGRADABLE_SUBRESOURCES.has(info.subresource)) {
        refusal = {
          id: 'StreamRefused',
          message: `chaperone: only exec, attach, port-forward and proxy connections can be upgraded through the sidecar, not ${info.verb} ${info.subresource === '' ? info.resource || info.path : `${info.resource}/${info.subresource}`}: its answer would pass unread`,
        };
      } else if (protocol !== 'websocket') {
        refusal = {
          id: 'StreamRefused',
          message: `chaperone: ${protocol === '' ? 'this' : protocol} upgrade is not supported through the sidecar: its streams cannot be inspected; use a kubectl that speaks WebSocket (v5.channel.k8s.io)`,
        };
      }
      if (refusal !== undefined) {
        reply(refusal);
        session.complete(decided, 'kubernetes', {
          status: 'denied',
          code: String(statusFor(refusal).code),
          message: refusal.message,
        });
        return;
      }
      if (!(await this.cleared(decided, reply))) return;
      if (held) {
        // Held before the upgrade (docs/approvals.md): bound to the exact URL, which names the pod, the
        // container and the command; the client waits for its 101 meanwhile.
        const verdict = await awaitApproval(
          session,
          decided,
          description,
          exactRequest(this.req, undefined),
          watchSocket(socket),
          this.ctx.logger.child({ auditId: this.auditId }),
        );
        if (!verdict.run) {
          if (!socket.destroyed) reply(verdict.error);
          session.complete(verdict.command, 'kubernetes', {
            status: 'denied',
            code: String(statusFor(verdict.error).code),
            message: verdict.error.message,
          });
          return;
        }
        this.forwardUpgrade(socket, head, session, verdict.command);
        return;
      }
      this.forwardUpgrade(socket, head, session, decided);
    } catch (err) {
      this.ctx.logger.error('upgrade failed', { error: err, auditId: this.auditId });
      socket.destroy();
    }
  }

  /** Framing, identity, impersonation and classification; false when the request was answered already. */
  private async admit(reply: (error: SidecarError) => void): Promise<boolean> {
    const admitted = await admitRequest(this.req, {
      sessions: this.ctx.sessions,
      logger: this.ctx.logger,
      idHeader: 'audit-id',
      idPattern: /^[0-9a-fA-F-]{36}$/,
      requestId: this.auditId,
      reply: (error, requestId) => {
        this.auditId = requestId;
        reply(error);
      },
    });
    if (admitted === undefined) return false;
    const { checked, target, session } = admitted;
    this.checked = checked;
    this.target = target;
    this.auditId = admitted.requestId;
    this.session = session;
    const method = this.req.method ?? '';
    try {
      this.info = classifyRequest(method, target.rawPath, target.rawQuery);
    } catch (err) {
      if (!(err instanceof UnclassifiableRequest)) throw err;
      const described: CommandDescription = {
        command: {
          type: 'kubernetes',
          verb: method.toLowerCase(),
          apiGroup: '',
          resource: '',
          subresource: '',
          namespace: '',
          name: '',
          nonResourcePath: '',
        },
        fingerprint: 'unclassifiable',
        text: this.requestLine(),
        requestId: this.auditId,
      };
      const error: SidecarError = { id: 'AmbiguousRequest', message: `chaperone: ${err.message}` };
      const decided = session.record(described, builtIn('deny', 'unclassifiable', err.message));
      reply(error);
      session.complete(decided, 'kubernetes', {
        status: 'denied',
        code: String(statusFor(error).code),
        message: error.message,
      });
      return false;
    }
    // Streams are authorized as create by the API server, whichever method opened them.
    if (
      this.req.headers.upgrade !== undefined &&
      STREAM_SUBRESOURCES.has(this.info.subresource) &&
      this.info.verb === 'get'
    ) {
      this.info = { ...this.info, verb: 'create' };
    }
    for (const [spelled, value] of checked.headers) {
      // Go keeps `Impersonate_User` apart from `Impersonate-User`, but a proxy or CGI gateway in between may
      // not (nginx with underscores_in_headers, CGI's HTTP_ names): such names are read as the dashed ones.
      const name = spelled.replace(/_/g, '-');
      // A bearer token in the WebSocket subprotocol list: the API server's fallback authenticator reads it
      // when the Authorization header does not authenticate, so it could act as whoever that token names.
      if (name === 'sec-websocket-protocol' && value.toLowerCase().includes('bearer.authorization.k8s.io')) {
        this.refuse(session, this.info, reply, 'impersonation', {
          id: 'RequestRefused',
          message: 'chaperone: a bearer token in Sec-WebSocket-Protocol is not allowed; the agent acts as itself',
        });
        return false;
      }
      if (FORWARDING_HEADERS.has(name)) {
        this.refuse(session, this.info, reply, 'forwarding-header', {
          id: 'RequestRefused',
          message: `chaperone: the ${name} header is not allowed through the sidecar: the API server would record a client address the sidecar never saw`,
        });
        return false;
      }
      // X-Remote-*: the front-proxy's asserted user, groups and extras (--requestheader-*), believed from a
      // client with the front-proxy certificate; the agent asserts nothing about who it is.
      if (name.startsWith('impersonate-') || name.startsWith('x-remote-')) {
        this.refuse(session, this.info, reply, 'impersonation', {
          id: 'RequestRefused',
          message: 'chaperone: impersonation headers are not allowed through the sidecar; the agent acts as itself',
        });
        return false;
      }
    }
    return true;
  }

  private admitted(): { session: AgentSession; info: RequestInfo } {
    if (this.session === undefined || this.info === undefined) throw new Error('request not admitted');
    return { session: this.session, info: this.info };
  }

  private requestLine(): string {
    return `${this.req.method ?? ''} ${this.req.url ?? ''}`;
  }

  /** The protocol-neutral command: the classified request, its Audit-ID, and a mutation's body as recorded. */
  private describe(
    info: RequestInfo,
    body: Buffer | undefined,
  ): CommandDescription & { readonly command: KubernetesCommand } {
    const command: KubernetesCommand = {
      type: 'kubernetes',
      verb: info.verb,
      apiGroup: info.apiGroup,
      resource: info.resource,
      subresource: info.subresource,
      namespace: info.namespace,
      name: info.name,
      nonResourcePath: info.isResourceRequest ? '' : info.path,
    };
    const fingerprint = kubernetesFingerprint(command);
    const text = info.dryRun ? `${this.requestLine()} (dry run)` : this.requestLine();
    const recorded =
      body !== undefined && body.length > 0 && MUTATING_VERBS.has(info.verb)
        ? this.recordedBody(info, body)
        : undefined;
    return recorded === undefined
      ? { command, fingerprint, text, requestId: this.auditId }
      : { command, fingerprint, text, requestId: this.auditId, body: recorded };
  }

  /** A mutation's body as the audit record keeps it: text, with Secret values masked. */
  private recordedBody(info: RequestInfo, body: Buffer): string {
    const type = (this.checked?.headers.get('content-type') ?? '').toLowerCase();
    if (type.includes('protobuf')) return `[protobuf body, ${String(body.length)} bytes]`;
    const text = body.toString('utf8');
    if (!touchesSecrets(info)) return text;
    try {
      const doc: unknown = type.includes('yaml') ? parseYaml(text) : JSON.parse(text);
      redactSecrets(doc);
      return JSON.stringify(doc);
    } catch {
      return `[Secret body of ${String(body.length)} bytes not recorded: not readable as JSON or YAML]`;
    }
  }

  /** Waits for the decision record's durability; false (and a 503 sent) when the trail refused it. */
  private async cleared(decided: DecidedCommand, reply: (error: SidecarError) => void): Promise<boolean> {
    const refusal = await auditCleared(decided);
    if (refusal !== undefined) reply(refusal);
    return refusal === undefined;
  }

  /** Records a refusal the engine makes whatever the policy, and answers it. */
  private refuse(
    session: AgentSession,
    info: RequestInfo,
    reply: (error: SidecarError) => void,
    rule: string,
    error: SidecarError,
    body?: Buffer,
  ): void {
    const decided = session.record(this.describe(info, body), builtIn('deny', rule, error.message));
    reply(error);
    session.complete(decided, 'kubernetes', {
      status: 'denied',
      code: String(statusFor(error, info).code),
      message: error.message,
    });
  }

  private deny(res: ServerResponse, session: AgentSession, info: RequestInfo, decided: DecidedCommand): void {
    // An approve decision lands here when approvals are not enabled: the core words it as ApprovalRequired.
    const error = policyRefusal(decided.decision);
    this.sendStatus(res, error, info);
    session.complete(decided, 'kubernetes', {
      status: 'denied',
      code: String(statusFor(error, info).code),
      message: error.message,
    });
  }

  /** A held request that will not be forwarded (denied, expired, cancelled, ...): a Status, if anyone listens. */
  private refuseHeld(
    res: ServerResponse,
    session: AgentSession,
    info: RequestInfo,
    decided: DecidedCommand,
    error: SidecarError,
  ): void {
    if (!res.destroyed) this.sendStatus(res, error, info);
    session.complete(decided, 'kubernetes', {
      status: 'denied',
      code: String(statusFor(error, info).code),
      message: error.message,
    });
  }

  private sendStatus(res: ServerResponse, error: SidecarError, info = this.info): void {
    sendError(res, error, { contentType: 'application/json', ...statusFor(error, info) }, 'audit-id', this.auditId);
  }

  private writeRawStatus(socket: Duplex, error: SidecarError): void {
    writeRawError(socket, { contentType: 'application/json', ...statusFor(error, this.info) }, error.id, [
      `Audit-Id: ${this.auditId}`,
    ]);
  }

  private upstreamHeaders(masked: boolean): Record<string, string> {
    const checked = this.checked;
    if (checked === undefined) throw new Error('request not admitted');
    const headers = forwardableHeaders(
      checked,
      (n) =>
        n === 'authorization' ||
        n === 'audit-id' ||
        n.startsWith('impersonate-') ||
        (masked && n === 'accept-encoding'),
    );
    headers.authorization = `Bearer ${this.ctx.credential.current()}`;
    headers['audit-id'] = this.auditId;
    if (masked) headers.accept = jsonAccept(headers.accept);
    return headers;
  }

  private upstreamPath(): string {
    const target = this.target;
    if (target === undefined) throw new Error('request not admitted');
    return `${this.ctx.upstream.pathPrefix}${target.rawPath}${target.rawQuery === '' ? '' : `?${target.rawQuery}`}`;
  }

  private forward(
    res: ServerResponse,
    session: AgentSession,
    info: RequestInfo,
    decided: DecidedCommand,
    body: Buffer | undefined,
  ): void {
    // Refused since it was decided (a later request on its connection was malformed, or during a hold).
    const refused = this.ctx.connectionRefusal(this.req);
    if (refused !== undefined) {
      session.complete(decided, 'kubernetes', { status: 'denied', code: '400', message: refused.message });
      return;
    }
    // Gone since it was decided (while its decision record became durable, while held): not forwarded.
    const client = watchClient(this.req, res);
    const finish = outcomeOnce(session, decided, 'kubernetes');
    if (!clientStillThere(client, finish)) return;
    const masked = touchesSecrets(info);
    const headers = this.upstreamHeaders(masked);
    if (body !== undefined) headers['content-length'] = String(body.length);
    const upstreamReq = this.ctx.upstream.request({
      method: this.req.method ?? 'GET',
      path: this.upstreamPath(),
      headers,
    });
    relayFailures(upstreamReq, client, res, this.ctx.logger.child({ auditId: this.auditId }), finish, (reason) => {
      const error: SidecarError = {
        id: 'UpstreamUnavailable',
        message: `chaperone: the API server could not be reached (${reason})`,
      };
      this.sendStatus(res, error, info);
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
      this.relayMasked(res, upstreamRes, info, code, (failure) =>
        failure === undefined ? finish(outcome, String(code)) : finish('error', '502', failure),
      );
    });
    upstreamReq.end(body);
  }

  /** Relays a response about Secrets with every value masked: a watch event by event, anything else whole. */
  private relayMasked(
    res: ServerResponse,
    upstreamRes: IncomingMessage,
    info: RequestInfo,
    code: number,
    done: (failure?: string) => void,
  ): void {
    const limit = this.ctx.config.maxMaskedResponseBytes;
    const fail = (reason: string) => {
      upstreamRes.destroy();
      if (res.headersSent) res.destroy();
      else
        this.sendStatus(
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
  private forwardUpgrade(socket: Duplex, head: Buffer, session: AgentSession, decided: DecidedCommand): void {
    const finish = outcomeOnce(session, decided, 'kubernetes');
    // Gone since it was decided: an exec nobody reads would still run in the pod. Not forwarded.
    if (!clientStillThere(watchSocket(socket), finish)) return;
    const headers = this.upstreamHeaders(false);
    headers.connection = 'Upgrade';
    headers.upgrade = this.checked?.headers.get('upgrade') ?? 'websocket';
    // No compression extension: the transcript reads the frames as they pass.
    delete headers['sec-websocket-extensions'];
    const transcript = new ExecTranscript(EXEC_TRANSCRIPT_BYTES);
    const upstreamReq = this.ctx.upstream.requestOwnConnection({
      method: this.req.method ?? 'GET',
      path: this.upstreamPath(),
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
      this.writeRawStatus(socket, {
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

  /** kubectl auth can-i / whoami: answered for the agent, never for the sidecar's credential. */
  private async answerSelfReview(
    res: ServerResponse,
    session: AgentSession,
    info: RequestInfo,
    kind: 'access' | 'rules' | 'subject',
    body: Buffer,
  ): Promise<void> {
    const decided = session.record(
      this.describe(info, body),
      builtIn('allow', 'self-review', 'self-reviews are answered by the sidecar for the agent'),
    );
    if (!(await this.cleared(decided, (e) => this.sendStatus(res, e, info)))) return;
    let answer: string;
    try {
      const protobuf = (this.checked?.headers.get('content-type') ?? '').includes('protobuf');
      const doc = protobuf ? decodeProtobufReview(body) : parseReview(body.toString('utf8'));
      if (kind === 'subject') answer = subjectReviewResponse(doc, session.identity);
      else if (kind === 'rules') answer = rulesReviewResponse(doc);
      else answer = accessReviewResponse(doc, await this.reviewAccess(session, doc));
    } catch (err) {
      if (!(err instanceof MalformedReview)) throw err;
      const error: SidecarError = { id: 'AmbiguousRequest', message: `chaperone: malformed review: ${err.message}` };
      this.sendStatus(res, error, info);
      session.complete(decided, 'kubernetes', { status: 'error', code: '400', message: error.message });
      return;
    }
    res.writeHead(201, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(answer),
      'audit-id': this.auditId,
    });
    res.end(answer);
    session.complete(decided, 'kubernetes', { status: 'success', code: '201' });
  }

  private async reviewAccess(
    session: AgentSession,
    doc: ReturnType<typeof parseReview>,
  ): Promise<{ allowed: boolean; denied?: boolean; reason: string }> {
    const c = reviewedCommand(doc);
    const description = { command: c, fingerprint: kubernetesFingerprint(c), text: 'access review' };
    const decision =
      c.nonResourcePath === ''
        ? session.evaluate(description, OUTSIDE_TRANSACTION)
        : decideNonResource(session, c, c.nonResourcePath);
    const who = decision.policy === '' ? 'no policy' : `policy ${decision.policy}`;
    if (decision.decision !== 'allow') {
      return {
        allowed: false,
        denied: true,
        reason: `chaperone: ${decision.decision === 'approve' ? 'requires approval' : 'denied'} by ${who}, rule ${decision.rule}`,
      };
    }
    // The policy allows it; the API server must also accept the sidecar's credential for it.
    const upstream = await this.upstreamAccessReview(Buffer.from(JSON.stringify(doc)));
    if (upstream === undefined || !upstream.allowed) {
      return {
        allowed: false,
        reason: `chaperone: allowed by ${who}, rule ${decision.rule}, but the sidecar's credential may not (${upstream?.reason ?? 'the API server did not answer'})`,
      };
    }
    return { allowed: true, reason: `chaperone: allowed by ${who}, rule ${decision.rule}` };
  }

  private upstreamAccessReview(body: Buffer): Promise<{ allowed: boolean; reason: string } | undefined> {
    return new Promise((resolve) => {
      const req = this.ctx.upstream.request({
        method: 'POST',
        path: `${this.ctx.upstream.pathPrefix}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews`,
        headers: {
          authorization: `Bearer ${this.ctx.credential.current()}`,
          'content-type': 'application/json',
          accept: 'application/json',
          'content-length': String(body.length),
          'audit-id': this.auditId,
        },
      });
      req.on('error', () => resolve(undefined));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('end', () => {
          try {
            const doc = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
              status?: { allowed?: boolean; reason?: string };
            };
            resolve({
              allowed: doc.status?.allowed === true,
              reason: doc.status?.reason ?? `HTTP ${String(res.statusCode)}`,
            });
          } catch {
            resolve(undefined);
          }
        });
      });
      req.end(body);
    });
  }
}
