// ApprovalRequest objects through the API server, with the sidecar's own pod-bound token and Role (create,
// get, list, watch; status patch for the phase). Only the calls the approval desk needs; no decisions are
// ever written here (approvers write them, admission checks who they are).
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type KubeConfig,
} from '@kubernetes/client-node';
import {
  APPROVAL_POD_LABEL,
  GROUP,
  VERSION,
  type ApprovalGrant,
  type ApprovalPhase,
  type ApprovalRequest,
} from '@chaperone/api';

const PLURAL = 'approvalrequests';
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export function apiStatusCode(err: unknown): number | undefined {
  return err instanceof ApiException ? (err as ApiException<unknown>).code : undefined;
}

/** What a watch reports: a version of the object, or that it is gone. */
export type ObservedRequest =
  { readonly type: 'changed'; readonly object: ApprovalRequest } | { readonly type: 'deleted' };

export class ApprovalRequestStore {
  readonly namespace: string;
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly watcher: Watch;

  constructor(kc: KubeConfig, namespace: string) {
    this.namespace = namespace;
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    this.watcher = new Watch(kc);
  }

  async create(body: ApprovalRequest): Promise<ApprovalRequest> {
    return (await this.custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: this.namespace,
      plural: PLURAL,
      body,
    })) as ApprovalRequest;
  }

  async get(name: string): Promise<ApprovalRequest | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: this.namespace,
        plural: PLURAL,
        name,
      })) as ApprovalRequest;
    } catch (err) {
      if (apiStatusCode(err) === 404) return undefined;
      throw err;
    }
  }

  /** Requests filed by this pod's sidecar (any phase). */
  async listOfPod(pod: string): Promise<ApprovalRequest[]> {
    const list = (await this.custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: this.namespace,
      plural: PLURAL,
      labelSelector: `${APPROVAL_POD_LABEL}=${pod}`,
    })) as { items?: ApprovalRequest[] };
    return list.items ?? [];
  }

  /** Sets the phase and a Decided condition; decisions are left as they are (admission keeps them append-only). */
  async setPhase(name: string, phase: ApprovalPhase, reason: string, message: string): Promise<void> {
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    await this.custom.patchNamespacedCustomObjectStatus(
      {
        group: GROUP,
        version: VERSION,
        namespace: this.namespace,
        plural: PLURAL,
        name,
        body: {
          status: {
            phase,
            conditions: [
              {
                type: 'Decided',
                status: phase === 'Pending' ? 'False' : 'True',
                reason,
                message: message.slice(0, 1024),
                lastTransitionTime: now,
              },
            ],
          },
        },
      },
      MERGE_PATCH,
    );
  }

  /** Writes the grant made from the approving decisions, or how it ended (status.grant; only the sidecar may). */
  async setGrant(name: string, grant: ApprovalGrant): Promise<void> {
    await this.custom.patchNamespacedCustomObjectStatus(
      { group: GROUP, version: VERSION, namespace: this.namespace, plural: PLURAL, name, body: { status: { grant } } },
      MERGE_PATCH,
    );
  }

  /** Watches one request from `resourceVersion`; resolves with an AbortController, `done` is called when it ends. */
  watch(
    name: string,
    resourceVersion: string | undefined,
    onEvent: (event: ObservedRequest) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    return this.watcher.watch(
      `/apis/${GROUP}/${VERSION}/namespaces/${this.namespace}/${PLURAL}`,
      {
        fieldSelector: `metadata.name=${name}`,
        allowWatchBookmarks: false,
        ...(resourceVersion === undefined ? {} : { resourceVersion }),
      },
      (phase: string, object: ApprovalRequest) => {
        if (phase === 'DELETED') onEvent({ type: 'deleted' });
        else if (phase === 'ADDED' || phase === 'MODIFIED') onEvent({ type: 'changed', object });
      },
      done,
    );
  }

  /** A Normal or Warning Event on a request, where `kubectl describe` and event routers see it. */
  async event(request: ApprovalRequest, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const now = new Date();
    const name = request.metadata.name ?? '';
    await this.core.createNamespacedEvent({
      namespace: this.namespace,
      body: {
        metadata: { generateName: `${name.slice(0, 200)}.`, namespace: this.namespace },
        involvedObject: {
          apiVersion: `${GROUP}/${VERSION}`,
          kind: 'ApprovalRequest',
          name,
          namespace: this.namespace,
          ...(request.metadata.uid === undefined ? {} : { uid: request.metadata.uid }),
        },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: 'chaperone-sidecar' },
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
        reportingComponent: 'chaperone-sidecar',
        reportingInstance: request.spec.pod?.name ?? '',
      },
    });
  }
}
