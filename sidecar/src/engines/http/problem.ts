// The one place where the HTTP engine turns the sidecar's errors (core/errors.ts) into its protocol: the
// catalogue's HTTP status with an RFC 9457 problem document (application/problem+json) whose `type` names
// the catalogue entry, so a client, a log reader and an auditor can tell the sidecar's refusals from the
// upstream's own errors.
import { SIDECAR_ERRORS, type SidecarError } from '../../core/errors.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export interface ProblemResponse {
  readonly code: number;
  readonly body: string;
}

export function problemFor(error: SidecarError, requestId?: string): ProblemResponse {
  const code = SIDECAR_ERRORS[error.id].httpStatus;
  return {
    code,
    body: JSON.stringify({
      type: `urn:chaperone:error:${error.id}`,
      title: SIDECAR_ERRORS[error.id].summary,
      status: code,
      detail: error.message,
      ...(error.hint === undefined ? {} : { hint: error.hint }),
      ...(requestId === undefined ? {} : { requestId }),
    }),
  };
}
