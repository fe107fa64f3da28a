// POST /audit/v1/sessions: the operator writes Sessions into an audit namespace on behalf of attested
// sidecars (docs/audit.md, "Evidence out of the editors' reach"). Sidecars then hold no right on Session
// objects at all, so nobody acting in the agents' namespace (an editor impersonating the pod's service
// account included) can read or write them, and the audit namespace can be one the agents' editors have
// no access to. Each call carries the sidecar's pod-bound token; the operator attests the pod
// (pod-attestation.ts) and lets it touch only Sessions whose spec.pod is that pod. The calls mirror the
// sidecar's SessionStore (sidecar/src/core/audit/session-store.ts): list, create, append, status, event.
// API server refusals are passed on with their status code and message, so the writer's retry logic is
// the same as against the API server itself.
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
} from '@kubernetes/client-node';
import { Counter, type Registry } from 'prom-client';
import { GROUP, VERSION, type AuditRecord, type Session, type SessionSpec, type SessionStatus } from '@chaperone/api';
import type { PublicKeys } from '../injection/sealed-pod.ts';
import type { Logger } from '../observability/logger.ts';
import { bearerToken, PodAttestor, readJson, Refused, statusBody, type AttestedPod } from './pod-attestation.ts';

const SESSION_ID_LABEL = 'chaperone.dev/session-id';
/** Session objects are bounded (SESSION_MAX_BYTES); an append or create is at most a part. */
const MAX_BODY_BYTES = 1536 * 1024;

export type SessionProxyRequest =
  | { readonly op: 'list'; readonly sessionId: string }
  | { readonly op: 'create'; readonly session: Session }
  | {
      readonly op: 'append';
      readonly name: string;
      readonly resourceVersion: string;
      readonly records: readonly AuditRecord[];
      readonly head: NonNullable<SessionSpec['head']>;
    }
  | { readonly op: 'status'; readonly name: string; readonly status: SessionStatus }
  | {
      readonly op: 'event';
      readonly event: {
        readonly involved: { kind: string; apiVersion: string; namespace: string; name: string; uid?: string };
        readonly type: 'Normal' | 'Warning';
        readonly reason: string;
        readonly message: string;
      };
    };

export interface SessionProxyOptions {
  readonly kubeConfig: KubeConfig;
  /** Where Sessions are kept (labelled chaperone.dev/audit-namespace=true). */
  readonly auditNamespace: string;
  readonly publicKeys: () => PublicKeys;
  readonly logger: Logger;
  readonly registry?: Registry;
}

function belongsTo(session: Session, pod: AttestedPod): boolean {
  const p = session.spec.pod;
  return p.name === pod.name && p.uid === pod.uid && p.namespace === pod.namespace;
}

export function createSessionProxyHandler(
  options: SessionProxyOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  const { kubeConfig, auditNamespace } = options;
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const attestor = new PodAttestor({
    authentication: kubeConfig.makeApiClient(AuthenticationV1Api),
    core,
    publicKeys: options.publicKeys,
  });
  const calls = new Counter({
    name: 'chaperone_session_proxy_requests_total',
    help: 'Session writes proxied for attested sidecars, by operation and result (ok, or the refusal reason).',
    labelNames: ['op', 'result'],
    registers: options.registry === undefined ? [] : [options.registry],
  });
  const base = { group: GROUP, version: VERSION, namespace: auditNamespace, plural: 'sessions' };

  const own = async (name: string, pod: AttestedPod): Promise<Session> => {
    const session = (await custom.getNamespacedCustomObject({ ...base, name })) as Session;
    if (!belongsTo(session, pod)) {
      throw new Refused(403, 'Forbidden', `Session ${auditNamespace}/${name} belongs to another pod`);
    }
    return session;
  };

  const handle = async (req: IncomingMessage, call: { op: string }): Promise<unknown> => {
    if (req.method !== 'POST') throw new Refused(400, 'BadRequest', 'use POST');
    const token = bearerToken(req);
    const body = (await readJson(req, MAX_BODY_BYTES)) as Partial<SessionProxyRequest> | null;
    if (typeof body?.op === 'string' && ['list', 'create', 'append', 'status', 'event'].includes(body.op)) {
      call.op = body.op;
    }
    const pod = await attestor.attest(token);
    switch (body?.op) {
      case 'list': {
        if (typeof body.sessionId !== 'string' || !/^[a-zA-Z0-9._-]{1,64}$/.test(body.sessionId)) {
          throw new Refused(400, 'BadRequest', 'sessionId is required');
        }
        const list = (await custom.listNamespacedCustomObject({
          ...base,
          labelSelector: `${SESSION_ID_LABEL}=${body.sessionId}`,
        })) as { items?: Session[] };
        return { items: (list.items ?? []).filter((s) => belongsTo(s, pod)) };
      }
      case 'create': {
        const session = body.session;
        if (session?.spec === undefined) throw new Refused(400, 'BadRequest', 'session is required');
        if (!belongsTo(session, pod)) {
          throw new Refused(
            403,
            'Forbidden',
            `spec.pod must name the calling pod ${pod.namespace}/${pod.name} (uid ${pod.uid}) with its namespace`,
          );
        }
        session.metadata.namespace = auditNamespace;
        return custom.createNamespacedCustomObject({ ...base, body: session });
      }
      case 'append': {
        const records: unknown = body.records;
        if (typeof body.name !== 'string' || !Array.isArray(records) || body.head === undefined) {
          throw new Refused(400, 'BadRequest', 'name, resourceVersion, records and head are required');
        }
        await own(body.name, pod);
        const ops: unknown[] = [{ op: 'test', path: '/metadata/resourceVersion', value: body.resourceVersion }];
        for (const r of records as unknown[]) ops.push({ op: 'add', path: '/spec/records/-', value: r });
        ops.push({ op: 'add', path: '/spec/head', value: body.head });
        return custom.patchNamespacedCustomObject(
          { ...base, name: body.name, body: ops },
          setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
        );
      }
      case 'status': {
        if (typeof body.name !== 'string' || body.status === undefined) {
          throw new Refused(400, 'BadRequest', 'name and status are required');
        }
        await own(body.name, pod);
        return custom.patchNamespacedCustomObjectStatus(
          { ...base, name: body.name, body: { status: body.status } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        );
      }
      case 'event': {
        const event = body.event;
        const text: unknown[] = [event?.reason, event?.message, event?.involved.kind, event?.involved.name];
        if (event === undefined || !text.every((t) => typeof t === 'string')) {
          throw new Refused(400, 'BadRequest', 'event with involved, reason and message is required');
        }
        const involved = event.involved;
        const onOwnPod = involved.kind === 'Pod' && involved.namespace === pod.namespace && involved.name === pod.name;
        if (!onOwnPod) {
          if (involved.kind !== 'Session' || involved.namespace !== auditNamespace) {
            throw new Refused(403, 'Forbidden', 'events are posted on the calling pod or on its Sessions');
          }
          await own(involved.name, pod);
        }
        const now = new Date();
        return core.createNamespacedEvent({
          namespace: involved.namespace,
          body: {
            metadata: { generateName: `${involved.name.slice(0, 200)}.`, namespace: involved.namespace },
            involvedObject: involved,
            type: event.type === 'Warning' ? 'Warning' : 'Normal',
            reason: event.reason.slice(0, 128),
            message: event.message.slice(0, 1024),
            source: { component: 'chaperone-sidecar', host: pod.name },
            firstTimestamp: now,
            lastTimestamp: now,
            count: 1,
            reportingComponent: 'chaperone-sidecar',
            reportingInstance: pod.name,
          },
        });
      }
      default:
        throw new Refused(400, 'BadRequest', 'op must be list, create, append, status or event');
    }
  };

  return (req, res) => {
    const call = { op: 'unknown' };
    handle(req, call).then(
      (result) => {
        calls.inc({ op: call.op, result: 'ok' });
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(result));
      },
      (err: unknown) => {
        // API server refusals keep their code and message: the sidecar's writer classifies them.
        let code = 500;
        let message = (err as Error).message;
        let reason = 'InternalError';
        if (err instanceof Refused) {
          code = err.code;
          reason = err.reason;
        } else if (err instanceof ApiException) {
          code = (err as ApiException<unknown>).code;
          const apiBody: unknown = (err as ApiException<unknown>).body;
          try {
            const parsed = (typeof apiBody === 'string' ? JSON.parse(apiBody) : apiBody) as
              { message?: string; reason?: string } | undefined;
            message = parsed?.message ?? message;
            reason = parsed?.reason ?? reason;
          } catch {
            // not a Status
          }
        }
        calls.inc({ op: call.op, result: reason });
        const fields = { op: call.op, code };
        if (code >= 500) options.logger.error('session proxy call failed', { ...fields, error: message });
        else options.logger.info('session proxy call refused', { ...fields, reason: message });
        if (!res.headersSent) {
          res.writeHead(code, { 'content-type': 'application/json' }).end(statusBody(code, reason, message));
        }
      },
    );
  };
}
