// Where the Session writer puts Session objects: the interface the writer needs (so its logic is tested
// against the real API server and reasoned about without it) and its implementation with
// @kubernetes/client-node. Records are appended with a JSON Patch guarded by a `test` of the
// resourceVersion, so a retry after a lost response can never append twice: it fails, and the writer
// re-reads the object and skips what is already there.
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type RequestContext,
} from '@kubernetes/client-node';
import { GROUP, VERSION, type AuditRecord, type Session, type SessionSpec, type SessionStatus } from '@chaperone/api';

export const SESSION_PLURAL = 'sessions';
export const SESSION_ID_LABEL = 'chaperone.dev/session-id';

export type StoreErrorKind = 'conflict' | 'exists' | 'not-found' | 'rejected' | 'unavailable';

/** A failed store call, classified for the writer's retry decision. */
export class SessionStoreError extends Error {
  override name = 'SessionStoreError';
  readonly kind: StoreErrorKind;
  readonly status: number | undefined;
  constructor(kind: StoreErrorKind, message: string, status?: number, options?: ErrorOptions) {
    super(message, options);
    this.kind = kind;
    this.status = status;
  }
}

export interface StoreEvent {
  readonly involved: { kind: string; apiVersion: string; namespace: string; name: string; uid?: string };
  readonly type: 'Normal' | 'Warning';
  readonly reason: string;
  readonly message: string;
}

export interface SessionStore {
  readonly namespace: string;
  /** Every part of one session (by label), ordered by spec.part. */
  listParts(sessionId: string): Promise<Session[]>;
  create(session: Session): Promise<Session>;
  /** Appends records and sets spec.head, only if the object is still at `resourceVersion`. */
  append(
    name: string,
    resourceVersion: string,
    records: readonly AuditRecord[],
    head: NonNullable<SessionSpec['head']>,
  ): Promise<Session>;
  /** Merges `status`; returns the object's new resourceVersion when the answer carries it. */
  patchStatus(name: string, status: SessionStatus): Promise<string | undefined>;
  event(event: StoreEvent): Promise<void>;
}

export interface KubernetesSessionStoreOptions {
  /** Path of a kubeconfig; absent means `server` with `tokenFile` and `caFile`, or else client-node's in-cluster. */
  readonly kubeconfig?: string;
  /** API server URL (the sidecar config resolves it, in a pod from KUBERNETES_SERVICE_HOST/PORT). */
  readonly server?: string;
  /** Bearer token file, re-read every minute, so the kubelet's rotation of a projected token is picked up. */
  readonly tokenFile?: string;
  /** CA bundle of the API server. */
  readonly caFile?: string;
  readonly namespace: string;
  /** Deadline of one API call, ms. Default 10 s. */
  readonly requestTimeoutMs?: number;
  /** Component named in Events. */
  readonly component?: string;
  /** Host (pod name) named in Events. */
  readonly host?: string;
}

/** How long one connection pool to the API server serves before a fresh one (CA, certificate) replaces it, ms. */
const DISPATCHER_REUSE_MS = 60_000;

type Dispatcher = NonNullable<ReturnType<RequestContext['getDispatcher']>>;

/**
 * A KubeConfig whose requests share one connection pool. client-node (2.x) builds a new undici Agent for
 * every request, so every Session write paid a new TCP connection and TLS handshake, in the sidecar and in
 * the API server (in the sidecar's profile ~15 µs per statement with the evidence store under load,
 * bench/README.md). The pool is replaced every DISPATCHER_REUSE_MS, so a rotated CA or client certificate
 * is picked up as before within a minute; the old pool closes once its requests are done.
 */
export class ConnectionReusingKubeConfig extends KubeConfig {
  private dispatcher: Dispatcher | undefined;
  private dispatcherSince = 0;

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    // A fresh Agent opens no connection until it is used: the one built here is dropped unless it replaces ours.
    const fresh = context.getDispatcher();
    if (fresh === undefined) return;
    const now = Date.now();
    if (this.dispatcher === undefined || now - this.dispatcherSince >= DISPATCHER_REUSE_MS) {
      const old = this.dispatcher;
      this.dispatcher = fresh;
      this.dispatcherSince = now;
      old?.close().catch(() => undefined);
      return;
    }
    context.setDispatcher(this.dispatcher);
  }
}

const JSON_PATCH = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export class KubernetesSessionStore implements SessionStore {
  readonly namespace: string;
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly timeoutMs: number;
  private readonly component: string;
  private readonly host: string;

  constructor(options: KubernetesSessionStoreOptions) {
    const kc = new ConnectionReusingKubeConfig();
    if (options.kubeconfig !== undefined) kc.loadFromFile(options.kubeconfig);
    else if (options.server === undefined) kc.loadFromCluster();
    else {
      // A `tokenFile` auth provider is what loadFromCluster uses too: client-node re-reads the file every 60 s.
      kc.loadFromClusterAndUser(
        { name: 'api-server', server: options.server, skipTLSVerify: false, caFile: options.caFile },
        { name: 'service-account', authProvider: { name: 'tokenFile', config: { tokenFile: options.tokenFile } } },
      );
    }
    this.namespace = options.namespace;
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    this.timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.component = options.component ?? 'chaperone-sidecar';
    this.host = options.host ?? '';
  }

  async listParts(sessionId: string): Promise<Session[]> {
    const list = (await this.call('list', () =>
      this.custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: this.namespace,
        plural: SESSION_PLURAL,
        labelSelector: `${SESSION_ID_LABEL}=${sessionId}`,
      }),
    )) as { items?: Session[] };
    return (list.items ?? []).filter((s) => s.spec.sessionId === sessionId).sort((a, b) => a.spec.part - b.spec.part);
  }

  async create(session: Session): Promise<Session> {
    return (await this.call('create', () =>
      this.custom.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: this.namespace,
        plural: SESSION_PLURAL,
        body: session,
      }),
    )) as Session;
  }

  async append(
    name: string,
    resourceVersion: string,
    records: readonly AuditRecord[],
    head: NonNullable<SessionSpec['head']>,
  ): Promise<Session> {
    const ops: unknown[] = [{ op: 'test', path: '/metadata/resourceVersion', value: resourceVersion }];
    for (const r of records) ops.push({ op: 'add', path: '/spec/records/-', value: r });
    ops.push({ op: 'add', path: '/spec/head', value: head });
    return (await this.call('append', () =>
      this.custom.patchNamespacedCustomObject(
        { group: GROUP, version: VERSION, namespace: this.namespace, plural: SESSION_PLURAL, name, body: ops },
        JSON_PATCH,
      ),
    )) as Session;
  }

  async patchStatus(name: string, status: SessionStatus): Promise<string | undefined> {
    const updated = (await this.call('status', () =>
      this.custom.patchNamespacedCustomObjectStatus(
        { group: GROUP, version: VERSION, namespace: this.namespace, plural: SESSION_PLURAL, name, body: { status } },
        MERGE_PATCH,
      ),
    )) as Partial<Session> | undefined;
    return updated?.metadata?.resourceVersion;
  }

  async event(event: StoreEvent): Promise<void> {
    const now = new Date();
    await this.call('event', () =>
      this.core.createNamespacedEvent({
        namespace: event.involved.namespace,
        body: {
          metadata: { generateName: `${event.involved.name.slice(0, 200)}.`, namespace: event.involved.namespace },
          involvedObject: event.involved,
          type: event.type,
          reason: event.reason,
          message: event.message.slice(0, 1024),
          source: { component: this.component, ...(this.host === '' ? {} : { host: this.host }) },
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
          reportingComponent: this.component,
          reportingInstance: this.host,
        },
      }),
    );
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        fn(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            reject(new SessionStoreError('unavailable', `${what}: no answer within ${String(this.timeoutMs)} ms`));
          }, this.timeoutMs);
        }),
      ]);
    } catch (err) {
      throw classify(what, err);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** How the writer treats a refused call, from its HTTP status (and, for 409, whether the object exists). */
export function storeErrorKind(code: number, message: string): StoreErrorKind {
  // A failed `test` op of a JSON Patch is 422 with "the server rejected our request due to an error in
  // our request"/"testing value"; a CEL rejection is 422 too: both mean "re-read and start over".
  return code === 409
    ? message.includes('already exists')
      ? 'exists'
      : 'conflict'
    : code === 404
      ? 'not-found'
      : code === 422 || code === 400
        ? 'rejected'
        : code === 429 || code >= 500
          ? 'unavailable'
          : 'rejected';
}

function classify(what: string, err: unknown): SessionStoreError {
  if (err instanceof SessionStoreError) return err;
  if (err instanceof ApiException) {
    const code = (err as ApiException<unknown>).code;
    const body: unknown = (err as ApiException<unknown>).body;
    let message = `${what}: HTTP ${String(code)}`;
    try {
      const parsed = (typeof body === 'string' ? JSON.parse(body) : body) as { message?: string } | undefined;
      if (parsed?.message !== undefined) message = `${message}: ${parsed.message}`;
    } catch {
      // not a Status
    }
    return new SessionStoreError(storeErrorKind(code, message), message, code, { cause: err });
  }
  return new SessionStoreError('unavailable', `${what}: ${(err as Error).message}`, undefined, { cause: err });
}
