// The self-review APIs (kubectl auth can-i, kubectl auth can-i --list, kubectl auth whoami) answered by the
// sidecar. Forwarded as they are, they would answer for the sidecar's own credential: its rights and its
// name, which are neither what the agent may do nor who the agent is. So a SelfSubjectAccessReview is
// answered from the AccessPolicy decision for the asked attributes (and, when the policy allows, the
// upstream credential's own review, since the API server enforces that too); a SelfSubjectReview names the
// agent; a SelfSubjectRulesReview says it is incomplete, because policy rules are not RBAC rules.
import type { Identity, KubernetesCommand } from '@chaperone/api';
import type { RequestInfo } from './request-info.ts';

export type SelfReviewKind = 'access' | 'rules' | 'subject';

/** Which self-review a request is, if it is one (a create of the review resource in its group). */
export function selfReviewKind(info: RequestInfo): SelfReviewKind | undefined {
  if (!info.isResourceRequest || info.verb !== 'create' || info.subresource !== '' || info.name !== '')
    return undefined;
  if (info.apiGroup === 'authorization.k8s.io' && info.resource === 'selfsubjectaccessreviews') return 'access';
  if (info.apiGroup === 'authorization.k8s.io' && info.resource === 'selfsubjectrulesreviews') return 'rules';
  if (info.apiGroup === 'authentication.k8s.io' && info.resource === 'selfsubjectreviews') return 'subject';
  return undefined;
}

export class MalformedReview extends Error {
  override name = 'MalformedReview';
}

interface ReviewDocument {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: unknown;
  spec?: {
    resourceAttributes?: Record<string, unknown>;
    nonResourceAttributes?: Record<string, unknown>;
    namespace?: unknown;
  };
}

function field(attrs: Record<string, unknown>, name: string): string {
  const v = attrs[name];
  if (v === undefined) return '';
  if (typeof v !== 'string') throw new MalformedReview(`spec.resourceAttributes.${name} is not a string`);
  return v;
}

export function parseReview(body: string): ReviewDocument {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    throw new MalformedReview('the review is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new MalformedReview('not an object');
  return doc;
}

/**
 * The command a SelfSubjectAccessReview asks about, or the non-resource path it asks about. Wildcards (`*`)
 * are passed as they are: policy patterns compare text, so a review of `*` is allowed only by a rule that
 * allows everything.
 */
export function reviewedCommand(doc: ReviewDocument): KubernetesCommand {
  const spec = doc.spec;
  if (spec?.resourceAttributes !== undefined) {
    const a = spec.resourceAttributes;
    return {
      type: 'kubernetes',
      verb: field(a, 'verb'),
      apiGroup: field(a, 'group'),
      resource: field(a, 'resource'),
      subresource: field(a, 'subresource'),
      namespace: field(a, 'namespace'),
      name: field(a, 'name'),
      nonResourcePath: '',
    };
  }
  if (spec?.nonResourceAttributes !== undefined) {
    const a = spec.nonResourceAttributes;
    const path = field(a, 'path');
    if (!path.startsWith('/')) throw new MalformedReview('spec.nonResourceAttributes.path must start with /');
    return {
      type: 'kubernetes',
      verb: field(a, 'verb'),
      apiGroup: '',
      resource: '',
      subresource: '',
      namespace: '',
      name: '',
      nonResourcePath: path,
    };
  }
  throw new MalformedReview('spec has neither resourceAttributes nor nonResourceAttributes');
}

/** The review answered: the request's object with its status. */
export function accessReviewResponse(
  doc: ReviewDocument,
  status: { allowed: boolean; denied?: boolean; reason: string },
): string {
  return JSON.stringify({
    kind: 'SelfSubjectAccessReview',
    apiVersion: typeof doc.apiVersion === 'string' ? doc.apiVersion : 'authorization.k8s.io/v1',
    metadata: { creationTimestamp: null },
    spec: doc.spec,
    status,
  });
}

export function rulesReviewResponse(doc: ReviewDocument): string {
  return JSON.stringify({
    kind: 'SelfSubjectRulesReview',
    apiVersion: typeof doc.apiVersion === 'string' ? doc.apiVersion : 'authorization.k8s.io/v1',
    metadata: { creationTimestamp: null },
    spec: doc.spec ?? {},
    status: {
      resourceRules: [],
      nonResourceRules: [],
      incomplete: true,
      evaluationError:
        'chaperone: requests are decided one by one by AccessPolicy rules, which cannot be listed as RBAC rules; ask about one request with kubectl auth can-i VERB RESOURCE',
    },
  });
}

/** `kubectl auth whoami`: the agent as the sidecar verified it, never the sidecar's upstream credential. */
export function subjectReviewResponse(doc: ReviewDocument, identity: Identity): string {
  const extra: Record<string, string[]> = { 'chaperone.dev/issuer': [identity.issuer] };
  if (identity.kind !== undefined) extra['chaperone.dev/agent-kind'] = [identity.kind];
  if (identity.chain !== undefined && identity.chain.length > 0) {
    extra['chaperone.dev/actors'] = identity.chain.map((a) => a.subject);
  }
  return JSON.stringify({
    kind: 'SelfSubjectReview',
    apiVersion: typeof doc.apiVersion === 'string' ? doc.apiVersion : 'authentication.k8s.io/v1',
    metadata: { creationTimestamp: null },
    status: { userInfo: { username: identity.subject, groups: identity.groups ?? [], extra } },
  });
}
