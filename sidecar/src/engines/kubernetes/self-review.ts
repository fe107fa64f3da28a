// Self-reviews answered for the agent, never for the sidecar's credential: `kubectl auth can-i`
// (SelfSubjectAccessReview, from the policy decision and then the API server's answer for the sidecar's own
// credential), `auth whoami` (SelfSubjectReview: the agent's verified identity) and `can-i --list`
// (SelfSubjectRulesReview: incomplete). JSON or the protobuf kubectl sends (protobuf-review.ts).
import type { ServerResponse } from 'node:http';
import type { AgentSession } from '../../core/agent-session.ts';
import type { DecidedCommand } from '../../core/command.ts';
import type { SidecarError } from '../../core/errors.ts';
import {
  accessReviewResponse,
  MalformedReview,
  parseReview,
  reviewedCommand,
  rulesReviewResponse,
  subjectReviewResponse,
} from './access-review.ts';
import { decideNonResource, decideResource } from './exchange-context.ts';
import { decodeProtobufReview } from './protobuf-review.ts';
import type { RequestInfo } from './request-info.ts';
import type { RelayedRequest } from './upstream-relay.ts';
/**
 * kubectl auth can-i / whoami: answered for the agent, never for the sidecar's credential. `decided` is the
 * review's own decision record (a built-in allow), already cleared by the audit trail.
 */
export async function answerSelfReview(
  r: RelayedRequest,
  res: ServerResponse,
  session: AgentSession,
  info: RequestInfo,
  kind: 'access' | 'rules' | 'subject',
  body: Buffer,
  decided: DecidedCommand,
): Promise<void> {
  let answer: string;
  try {
    const protobuf = (r.checked.headers.get('content-type') ?? '').includes('protobuf');
    const doc = protobuf ? decodeProtobufReview(body) : parseReview(body.toString('utf8'));
    if (kind === 'subject') answer = subjectReviewResponse(doc, session.identity);
    else if (kind === 'rules') answer = rulesReviewResponse(doc);
    else answer = accessReviewResponse(doc, await reviewAccess(r, session, doc));
  } catch (err) {
    if (!(err instanceof MalformedReview)) throw err;
    const error: SidecarError = { id: 'AmbiguousRequest', message: `chaperone: malformed review: ${err.message}` };
    r.sendStatus(res, error, info);
    session.complete(decided, 'kubernetes', { status: 'error', code: '400', message: error.message });
    return;
  }
  res.writeHead(201, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(answer),
    'audit-id': r.auditId,
  });
  res.end(answer);
  session.complete(decided, 'kubernetes', { status: 'success', code: '201' });
}

async function reviewAccess(
  r: RelayedRequest,
  session: AgentSession,
  doc: ReturnType<typeof parseReview>,
): Promise<{ allowed: boolean; denied?: boolean; reason: string }> {
  const c = reviewedCommand(doc);
  const decision =
    c.nonResourcePath === ''
      ? decideResource(session, c, [], 'access review')
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
  const upstream = await upstreamAccessReview(r, Buffer.from(JSON.stringify(doc)));
  if (upstream === undefined || !upstream.allowed) {
    return {
      allowed: false,
      reason: `chaperone: allowed by ${who}, rule ${decision.rule}, but the sidecar's credential may not (${upstream?.reason ?? 'the API server did not answer'})`,
    };
  }
  return { allowed: true, reason: `chaperone: allowed by ${who}, rule ${decision.rule}` };
}

function upstreamAccessReview(
  r: RelayedRequest,
  body: Buffer,
): Promise<{ allowed: boolean; reason: string } | undefined> {
  return new Promise((resolve) => {
    const req = r.ctx.upstream.request({
      method: 'POST',
      path: `${r.ctx.upstream.pathPrefix}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews`,
      headers: {
        authorization: `Bearer ${r.ctx.credential.current()}`,
        'content-type': 'application/json',
        accept: 'application/json',
        'content-length': String(body.length),
        'audit-id': r.auditId,
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
