// The one place where the Kubernetes engine turns the sidecar's errors (core/errors.ts) into its protocol: an
// HTTP status from the catalogue and a meta/v1 Status body, with the reason and details kubectl reads to
// print its usual messages ("Error from server (Forbidden): ..."). No other file of the engine picks a status.
import { SIDECAR_ERRORS, type SidecarError } from '../../core/errors.ts';
import type { RequestInfo } from './request-info.ts';

/** metav1.StatusReason for each HTTP status the catalogue uses. */
const REASONS: Readonly<Record<number, string>> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  408: 'Timeout',
  413: 'RequestEntityTooLarge',
  415: 'UnsupportedMediaType',
  500: 'InternalError',
  502: 'InternalError',
  503: 'ServiceUnavailable',
};

export interface StatusResponse {
  readonly code: number;
  readonly body: string;
}

/** The Status for an error of the catalogue, about the request `info` when it was classified. */
export function statusFor(error: SidecarError, info?: RequestInfo): StatusResponse {
  const code = SIDECAR_ERRORS[error.id].httpStatus;
  const details: Record<string, unknown> = {};
  if (info?.isResourceRequest === true) {
    if (info.name !== '') details.name = info.name;
    if (info.apiGroup !== '') details.group = info.apiGroup;
    details.kind = info.subresource === '' ? info.resource : `${info.resource}/${info.subresource}`;
  }
  const message = [error.message, error.detail, error.hint].filter((s) => s !== undefined && s !== '').join('. ');
  const status = {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason: REASONS[code] ?? 'Unknown',
    ...(Object.keys(details).length === 0 ? {} : { details }),
    code,
  };
  return { code, body: JSON.stringify(status) };
}
