// The reconcile contract, after controller-runtime's pkg/reconcile: a request names one object by
// namespace/name; the reconciler reads the current state and makes the world match it, then returns a
// decision. It never sleeps: it returns requeueAfter for a timed revisit, throws for a rate-limited
// retry, or throws a TerminalError when retrying cannot help (a status condition then says why).
import type { Logger } from '../observability/logger.ts';

export interface ReconcileRequest {
  readonly namespace: string;
  readonly name: string;
}

export interface ReconcileResult {
  /** Revisit the object after this many milliseconds (the key's backoff is reset). */
  readonly requeueAfterMs?: number;
}

export interface ReconcileContext {
  /** Unique per reconcile, also in every log line of it. */
  readonly reconcileId: string;
  /** Aborted when the reconcile times out or the controller stops; pass it to API calls. */
  readonly signal: AbortSignal;
  readonly logger: Logger;
}

export interface Reconciler {
  reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | undefined>;
}

/** A failure that retrying will not fix; the key is not requeued until its object changes. */
export class TerminalError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TerminalError';
  }
}

/** The reconcile ran past its deadline. Treated like any other error: rate-limited retry. */
export class ReconcileTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`reconcile did not finish within ${timeoutMs} ms`);
    this.name = 'ReconcileTimeoutError';
  }
}

/** namespace/name, or name for cluster-scoped objects (client-go's MetaNamespaceKeyFunc). */
export function objectKey(namespace: string | undefined, name: string): string {
  return namespace === undefined || namespace === '' ? name : `${namespace}/${name}`;
}

export function parseKey(key: string): ReconcileRequest {
  const slash = key.indexOf('/');
  return slash === -1 ? { namespace: '', name: key } : { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

/** Anything thrown, as an Error: reconcilers may throw strings or objects, which must not crash a worker. */
export function asError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  const message =
    typeof thrown === 'string'
      ? thrown
      : typeof thrown === 'object' && thrown !== null && typeof (thrown as { message?: unknown }).message === 'string'
        ? (thrown as { message: string }).message
        : `non-error thrown: ${String(thrown)}`;
  return new Error(message, { cause: thrown });
}
