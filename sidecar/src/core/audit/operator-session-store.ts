// The Session store when Sessions are kept in an audit namespace (docs/audit.md, "Evidence out of the
// editors' reach"): the operator writes them on the sidecar's behalf (operator/src/audit/session-proxy.ts)
// after attesting the sidecar's pod, so the sidecar's service account needs, and has, no right on Sessions.
// Same contract as KubernetesSessionStore; the operator passes the API server's refusals on with their
// status, so the writer classifies them alike.
import type { AuditRecord, Session, SessionSpec, SessionStatus } from '@chaperone/api';
import { callOperator, OperatorCallError, type OperatorEndpoint } from '../operator-client.ts';
import { SessionStoreError, storeErrorKind, type SessionStore, type StoreEvent } from './session-store.ts';

export interface OperatorSessionStoreOptions extends OperatorEndpoint {
  /** The audit namespace the operator writes into (it names the objects in signed heads). */
  readonly namespace: string;
}

export class OperatorSessionStore implements SessionStore {
  readonly namespace: string;
  private readonly endpoint: OperatorEndpoint;

  constructor(options: OperatorSessionStoreOptions) {
    this.namespace = options.namespace;
    this.endpoint = options;
  }

  private async call(what: string, body: unknown): Promise<unknown> {
    try {
      return await callOperator(this.endpoint, body);
    } catch (err) {
      const status = err instanceof OperatorCallError ? err.status : undefined;
      const message = `${what}: ${(err as Error).message}`;
      throw new SessionStoreError(
        status === undefined ? 'unavailable' : storeErrorKind(status, message),
        message,
        status,
        {
          cause: err,
        },
      );
    }
  }

  async listParts(sessionId: string): Promise<Session[]> {
    const list = (await this.call('list', { op: 'list', sessionId })) as { items?: Session[] };
    return (list.items ?? []).filter((s) => s.spec.sessionId === sessionId).sort((a, b) => a.spec.part - b.spec.part);
  }

  async create(session: Session): Promise<Session> {
    return (await this.call('create', { op: 'create', session })) as Session;
  }

  async append(
    name: string,
    resourceVersion: string,
    records: readonly AuditRecord[],
    head: NonNullable<SessionSpec['head']>,
  ): Promise<Session> {
    return (await this.call('append', { op: 'append', name, resourceVersion, records, head })) as Session;
  }

  async patchStatus(name: string, status: SessionStatus): Promise<string | undefined> {
    const updated = (await this.call('status', { op: 'status', name, status })) as Partial<Session> | undefined;
    return updated?.metadata?.resourceVersion;
  }

  async event(event: StoreEvent): Promise<void> {
    await this.call('event', { op: 'event', event });
  }
}
