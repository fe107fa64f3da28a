// Calls to the operator's HTTPS endpoints (Session proxy, credential delivery) with the sidecar's pod-bound
// service-account token as bearer, which the operator authenticates and attests (docs/audit.md, "Trust
// model"). One JSON request, one JSON answer; a non-2xx answer is an OperatorCallError with the Kubernetes
// Status message the operator sent.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';

export interface OperatorEndpoint {
  /** https URL of the endpoint. */
  readonly url: string;
  /** CA bundle (PEM) of the operator's serving certificate, inline or as a file; default the system roots. */
  readonly ca?: string;
  readonly caFile?: string;
  /** The pod-bound token, re-read on every call (the kubelet rotates it). */
  readonly tokenFile: string;
  /** Per-request timeout, ms. Default 10 000. */
  readonly timeoutMs?: number;
}

export class OperatorCallError extends Error {
  override name = 'OperatorCallError';
  /** HTTP status; undefined when the operator was not reached. */
  readonly status: number | undefined;
  constructor(message: string, status?: number, options?: ErrorOptions) {
    super(message, options);
    this.status = status;
  }
}

const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

export function callOperator(endpoint: OperatorEndpoint, body: unknown): Promise<unknown> {
  let token: string;
  let ca: string | undefined;
  try {
    token = readFileSync(endpoint.tokenFile, 'utf8').trim();
    ca = endpoint.ca ?? (endpoint.caFile === undefined ? undefined : readFileSync(endpoint.caFile, 'utf8'));
  } catch (err) {
    return Promise.reject(new OperatorCallError(`cannot read the token or CA: ${(err as Error).message}`));
  }
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      endpoint.url,
      {
        method: 'POST',
        ...(ca === undefined ? {} : { ca }),
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(text),
        },
        timeout: endpoint.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size <= MAX_ANSWER_BYTES) chunks.push(c);
        });
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
          } catch {
            reject(new OperatorCallError(`HTTP ${String(status)}: the answer is not JSON`, status));
            return;
          }
          if (status < 200 || status > 299) {
            const message = (parsed as { message?: unknown } | null)?.message;
            reject(
              new OperatorCallError(
                `HTTP ${String(status)}: ${typeof message === 'string' ? message : 'refused'}`,
                status,
              ),
            );
            return;
          }
          resolve(parsed);
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new OperatorCallError('the operator did not answer in time')));
    req.on('error', (err) =>
      reject(err instanceof OperatorCallError ? err : new OperatorCallError(err.message, undefined, { cause: err })),
    );
    req.end(text);
  });
}
