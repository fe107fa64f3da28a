// The Session validating webhook (docs/audit.md, "Admission protection"). The ValidatingAdmissionPolicy
// chaperone-session-writers already requires a pod-bound token naming the Session's pod; this webhook adds
// what a policy cannot look up:
//   * the writer's pod must be attested: its sidecar is the one the operator sealed and nothing else in
//     the pod reaches it (so a pod of the same service account that runs its own "sidecar" cannot write);
//   * a closed session stays closed: a new part may not continue a part that holds session.end or whose
//     phase is final (the CRD's own rules keep records from following session.end within one object).
// Writers that are not pod-bound (the operator writing into an audit namespace, administrators) are left
// to the policies.
import { ApiException, type CoreV1Api, type CustomObjectsApi, type V1Pod } from '@kubernetes/client-node';
import { GROUP, VERSION, type Session } from '@chaperone/api';
import { attestationProblems, type PublicKeys } from '../injection/sealed-pod.ts';
import { POD_NAME_EXTRA, POD_UID_EXTRA } from '../audit/pod-attestation.ts';
import { allow, refuse, type AdmissionRequest } from './admission-review.ts';
import type { AdmissionHandler } from './admission-server.ts';

export interface SessionWebhookOptions {
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;
  readonly publicKeys: () => PublicKeys;
  /** How long a pod read is reused for further writes of the same pod, ms. Default 2000. */
  readonly podCacheMs?: number;
}

function one(extra: Record<string, string[]> | undefined, key: string): string | undefined {
  const values = extra?.[key];
  return values?.length === 1 ? values[0] : undefined;
}

function isSessions(request: AdmissionRequest): boolean {
  return request.resource?.group === GROUP && request.resource.resource === 'sessions';
}

export function createSessionValidator(options: SessionWebhookOptions): AdmissionHandler {
  const pods = new Map<string, { at: number; pod: V1Pod | undefined }>();
  const ttl = options.podCacheMs ?? 2000;
  const readPod = async (namespace: string, name: string): Promise<V1Pod | undefined> => {
    const key = `${namespace}/${name}`;
    const cached = pods.get(key);
    if (cached !== undefined && Date.now() - cached.at < ttl) return cached.pod;
    const pod = await options.core.readNamespacedPod({ namespace, name }).catch((err: unknown) => {
      if (err instanceof ApiException && (err as ApiException<unknown>).code === 404) return undefined;
      throw err;
    });
    if (pods.size > 10_000) pods.clear();
    pods.set(key, { at: Date.now(), pod });
    return pod;
  };

  return async (request) => {
    const { uid } = request;
    if (!isSessions(request) || (request.operation !== 'CREATE' && request.operation !== 'UPDATE')) {
      return allow(uid);
    }
    const session = request.object as Session | undefined;
    const namespace = request.namespace ?? session?.metadata.namespace ?? '';
    const user = request.userInfo;
    const podName = one(user?.extra, POD_NAME_EXTRA);
    const podUid = one(user?.extra, POD_UID_EXTRA);
    const problems: string[] = [];

    if (podName !== undefined) {
      // The pod-bound token's own namespace: the service account's.
      const podNamespace = /^system:serviceaccount:([a-z0-9.-]+):/.exec(user?.username ?? '')?.[1] ?? namespace;
      const pod = await readPod(podNamespace, podName);
      if (pod === undefined || pod.metadata?.uid !== podUid) {
        problems.push(`the writer's pod ${podNamespace}/${podName} does not exist with uid ${podUid ?? ''}`);
      } else {
        const unattested = attestationProblems(pod, podNamespace, options.publicKeys());
        if (unattested.length > 0) {
          problems.push(
            `only a sidecar the operator sealed, alone in its pod, writes Sessions; pod ${podNamespace}/${podName}: ${unattested.join('; ')}`,
          );
        }
      }
    }

    const previous = session?.spec.previousPart;
    if (request.operation === 'CREATE' && request.subResource === undefined && previous !== undefined) {
      try {
        const before = (await options.custom.getNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace,
          plural: 'sessions',
          name: previous,
        })) as Session;
        if (before.spec.records.some((r) => r.type === 'session.end')) {
          problems.push(`part ${previous} holds session.end: a closed session stays closed`);
        } else if (before.status?.phase === 'Closed' || before.status?.phase === 'Abandoned') {
          problems.push(`part ${previous} is ${before.status.phase}: a closed session stays closed`);
        }
      } catch (err) {
        if (!(err instanceof ApiException && (err as ApiException<unknown>).code === 404)) throw err;
      }
    }
    return problems.length > 0 ? refuse(uid, 403, `chaperone: ${problems.join('; ')}`) : allow(uid);
  };
}
