// admission.k8s.io/v1 AdmissionReview: the subset the pod webhooks read and write, and the response
// builders (uid echoed, JSON patch base64-encoded, refusals as a Status with a code and a message).
import type { JsonPatchOperation } from '../injection/json-patch.ts';

export interface AdmissionRequest {
  readonly uid: string;
  readonly kind?: { readonly group: string; readonly version: string; readonly kind: string };
  readonly resource?: { readonly group: string; readonly version: string; readonly resource: string };
  readonly subResource?: string;
  readonly name?: string;
  readonly namespace?: string;
  readonly operation: 'CREATE' | 'UPDATE' | 'DELETE' | 'CONNECT';
  /** The requester as the API server authenticated it. */
  readonly userInfo?: {
    readonly username?: string;
    readonly uid?: string;
    readonly groups?: readonly string[];
    readonly extra?: Record<string, string[]>;
  };
  readonly object?: unknown;
  readonly oldObject?: unknown;
  readonly dryRun?: boolean;
}

export interface AdmissionResponse {
  readonly uid: string;
  readonly allowed: boolean;
  readonly patchType?: 'JSONPatch';
  /** base64 of the JSON patch. */
  readonly patch?: string;
  readonly status?: { readonly code: number; readonly message: string; readonly reason?: string };
  readonly warnings?: string[];
}

export interface AdmissionReview {
  readonly apiVersion: 'admission.k8s.io/v1';
  readonly kind: 'AdmissionReview';
  readonly request?: AdmissionRequest;
  readonly response?: AdmissionResponse;
}

export class AdmissionReviewError extends Error {
  override name = 'AdmissionReviewError';
}

/** Parses and checks the envelope; throws AdmissionReviewError (answered with HTTP 400) when it is not a v1 review. */
export function parseAdmissionReview(body: string): AdmissionRequest {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new AdmissionReviewError('body is not JSON');
  }
  const review = value as Partial<AdmissionReview> | null;
  if (review?.apiVersion !== 'admission.k8s.io/v1' || review.kind !== 'AdmissionReview') {
    throw new AdmissionReviewError('expected an admission.k8s.io/v1 AdmissionReview');
  }
  const request = review.request;
  if (request === undefined || typeof request.uid !== 'string' || request.uid === '') {
    throw new AdmissionReviewError('AdmissionReview has no request.uid');
  }
  return request;
}

export function reviewResponse(response: AdmissionResponse): AdmissionReview {
  return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
}

export function allow(uid: string, warnings: string[] = []): AdmissionResponse {
  return { uid, allowed: true, ...(warnings.length > 0 ? { warnings } : {}) };
}

export function allowWithPatch(
  uid: string,
  patch: readonly JsonPatchOperation[],
  warnings: string[] = [],
): AdmissionResponse {
  if (patch.length === 0) return allow(uid, warnings);
  return {
    uid,
    allowed: true,
    patchType: 'JSONPatch',
    patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
    ...(warnings.length > 0 ? { warnings } : {}),
  };
}

export function refuse(uid: string, code: number, message: string): AdmissionResponse {
  return {
    uid,
    allowed: false,
    status: { code, message, reason: code === 403 ? 'Forbidden' : code >= 500 ? 'InternalError' : 'BadRequest' },
  };
}
