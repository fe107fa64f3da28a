// One Kubernetes API request through the sidecar, socket to record: check the framing (request-hygiene.ts),
// identify the agent by its bearer token (client-sessions.ts), classify the request as the API server does
// (request-info.ts), decide it (AgentSession.decide: the decision record, with the Audit-ID and the request
// body of a mutation), and either answer with a Status or forward it with the sidecar's credential, masking
// Secrets on the way back (secret-redaction.ts); the outcome record follows the response. Upgrades (exec,
// attach, port-forward) are decided before the upgrade is forwarded.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { parse as parseYaml } from 'yaml';
import type { KubernetesCommand } from '@chaperone/api';
import type { AgentSession } from '../../core/agent-session.ts';
import { builtInDecision as builtIn, type CommandDescription, type DecidedCommand } from '../../core/command.ts';
import { policyRefusal, type SidecarError } from '../../core/errors.ts';
import { awaitApproval, exactRequest, holdable } from '../http-base/approval-hold.ts';
import {
  admitRequest,
  auditCleared,
  readBody,
  sendError,
  watchClient,
  watchSocket,
  writeRawError,
} from '../http-base/http-exchange.ts';
import { FORWARDING_HEADERS, type CheckedHeaders, type RequestTarget } from '../http-base/request-hygiene.ts';
import { selfReviewKind } from './access-review.ts';
import {
  decideNonResource,
  decideResource,
  kubernetesFingerprint,
  OUTSIDE_TRANSACTION,
  touchesSecrets,
  type ExchangeContext,
} from './exchange-context.ts';
import { UnreadableDeleteOptions, withDeleteOptions } from './delete-options.ts';
import {
  classifyRequest,
  dryRunMark,
  MUTATING_VERBS,
  UnclassifiableRequest,
  type RequestInfo,
} from './request-info.ts';
import { containsMaskedValue, redactSecrets } from './secret-redaction.ts';
import { answerSelfReview } from './self-review.ts';
import { statusFor } from './status.ts';
import { forwardRequest, forwardUpgrade, type RelayedRequest } from './upstream-relay.ts';

export type { ExchangeContext } from './exchange-context.ts';

/** Subresources whose upgrade the API server authorizes as `create` whatever the method (websocket GETs too). */
const STREAM_SUBRESOURCES: ReadonlySet<string> = new Set(['exec', 'attach', 'portforward']);
/**
 * Subresources whose upgrade is forwarded. Any other request with an Upgrade header is refused: the API
 * server answers a get or list it does not upgrade as usual, and streams a watch over a WebSocket of its
 * own, and either answer would pass to the client as raw bytes, past the Secret masking.
 */
const UPGRADABLE_SUBRESOURCES: ReadonlySet<string> = new Set([...STREAM_SUBRESOURCES, 'proxy']);

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
          if (err instanceof UnreadableDeleteOptions) {
            const error: SidecarError = { id: 'UnsupportedMediaType', message: `chaperone: ${err.message}` };
            this.refuse(session, info, reply, 'unreadable-body', error, body);
            return;
          }
          if (!(err instanceof UnclassifiableRequest)) throw err;
          const error: SidecarError = { id: 'AmbiguousRequest', message: `chaperone: ${err.message}` };
          this.refuse(session, info, reply, 'unclassifiable', error, body);
          return;
        }
      }
      const review = selfReviewKind(info);
      if (review !== undefined) {
        const decided = session.record(
          this.describe(info, body),
          builtIn('allow', 'self-review', 'self-reviews are answered by the sidecar for the agent'),
        );
        if (!(await this.cleared(decided, reply))) return;
        await answerSelfReview(this.relayed(), res, session, info, review, body ?? Buffer.alloc(0), decided);
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
        forwardRequest(this.relayed(), res, session, info, decided, body);
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
      const decided = this.decide(session, description, info);
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
        forwardRequest(this.relayed(), res, session, info, verdict.command, body);
        return;
      }
      if (decided.decision.decision !== 'allow') {
        this.deny(res, session, info, decided);
        return;
      }
      if (!(await this.cleared(decided, reply))) return;
      forwardRequest(this.relayed(), res, session, info, decided, body);
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
      const decided = this.decide(session, description, info);
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
        forwardUpgrade(this.relayed(), socket, head, session, verdict.command);
        return;
      }
      forwardUpgrade(this.relayed(), socket, head, session, decided);
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
    const text = `${this.requestLine()}${dryRunMark(info)}`;
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

  /**
   * Decides and records a request: a resource request as itself and every command it implies
   * (implied-commands.ts: the kubelet's exec through nodes/proxy, the Namespace object), the strictest winning.
   */
  private decide(
    session: AgentSession,
    description: CommandDescription & { readonly command: KubernetesCommand },
    info: RequestInfo,
  ): DecidedCommand {
    const startedAt = performance.now();
    if (!info.isResourceRequest) return session.decide(description, OUTSIDE_TRANSACTION);
    const decision = decideResource(session, description.command, info.parts, description.text);
    return session.record(description, decision, startedAt);
  }

  /** The admitted request as the relay and the self-reviews read it. */
  private relayed(): RelayedRequest {
    const { checked, target } = this;
    if (checked === undefined || target === undefined) throw new Error('request not admitted');
    return {
      ctx: this.ctx,
      req: this.req,
      checked,
      target,
      auditId: this.auditId,
      sendStatus: (res, error, info) => this.sendStatus(res, error, info),
      writeRawStatus: (socket, error) => this.writeRawStatus(socket, error),
    };
  }
}
