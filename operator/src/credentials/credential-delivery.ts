// POST /credentials/v1/fetch: the upstream credential of a ProtectedResource, delivered to an attested
// sidecar only (docs/injection.md, "Credentials out of the editors' reach"). The credential Secret lives in
// a namespace the agents' editors cannot read (the operator's --credential-namespace); a ProtectedResource
// names it with credentialSecretRef.namespace, and the Secret says which namespaces may use it
// (annotation chaperone.dev/allowed-namespaces, comma-separated; nothing is allowed without it). The
// operator answers a sidecar when:
//   * its pod-bound token authenticates and its pod is attested (pod-attestation.ts),
//   * the pod's namespace is strict (chaperone.dev/strict=true: no ephemeral container, no changed sidecar
//     can reach what the sidecar holds),
//   * the resource is one of the listeners of the sidecar's sealed configuration,
//   * the ProtectedResource of the pod's namespace names a Secret of the credential namespace that allows
//     the pod's namespace.
// The answer carries the username, the password, the read-only login (readOnlyUsername/readOnlyPassword,
// when the resource names readOnlyCredentialSecretRef: from the credential namespace, same allow-list), the
// CA (when the resource names one) and the key of the
// hash masking strategy (when it names maskingKeySecretRef: from the credential namespace when its
// namespace says so, with the same allow-list, else from the resource's namespace, as the CA is), base64; the operator logs a hash of the credential, never the values, and nothing of the key.
//
// The evidence store's writer credential (docs/evidence-store.md) is delivered the same way, for the body
// `{"evidenceStore": true}`: to an attested sidecar of a strict namespace whose sealed configuration keeps
// records in the evidence store (audit.evidenceStore), from the installation's Secrets in the credential
// namespace (the writer's `password`, the server's `ca.crt`); the username is the configured writer role.
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type V1Secret,
} from '@kubernetes/client-node';
import { Counter, type Registry } from 'prom-client';
import { parse } from 'yaml';
import { GROUP, VERSION, type ProtectedResource } from '@chaperone/api';
import { ANNOTATION_SIDECAR_CONFIG, LABEL_STRICT } from '../injection/constants.ts';
import type { PublicKeys } from '../injection/sealed-pod.ts';
import type { EvidenceStoreSettings } from '../injection/settings.ts';
import type { Logger } from '../observability/logger.ts';
import { bearerToken, PodAttestor, readJson, Refused, statusBody } from '../audit/pod-attestation.ts';

const MAX_BODY_BYTES = 4096;

/** Annotation of a delivered credential Secret: the namespaces whose ProtectedResources may use it. */
export const ANNOTATION_ALLOWED_NAMESPACES = 'chaperone.dev/allowed-namespaces';

export interface DeliveredCredential {
  /** base64 of each value. */
  readonly username: string;
  readonly password: string;
  readonly ca?: string;
  /** The masking key's bytes (docs/masking.md, "The hash key"). */
  readonly maskingKey?: string;
  /** The least-privilege read-only login (readOnlyCredentialSecretRef, docs/postgres-engine.md). */
  readonly readOnlyUsername?: string;
  readonly readOnlyPassword?: string;
}

export interface CredentialDeliveryOptions {
  readonly kubeConfig: KubeConfig;
  /** The namespace delivered credentials live in. */
  readonly credentialNamespace: string;
  readonly publicKeys: () => PublicKeys;
  readonly logger: Logger;
  readonly registry?: Registry;
  /** The installation's evidence store, whose writer credential attested sidecars may fetch. Default none. */
  readonly evidenceStore?: EvidenceStoreSettings;
}

/** Whether a Secret of the credential namespace allows `namespace` (its allowed-namespaces annotation). */
export function secretAllows(secret: V1Secret, namespace: string): boolean {
  const allowed = secret.metadata?.annotations?.[ANNOTATION_ALLOWED_NAMESPACES] ?? '';
  return allowed
    .split(',')
    .map((n) => n.trim())
    .includes(namespace);
}

const notFound = (err: unknown) => err instanceof ApiException && (err as ApiException<unknown>).code === 404;

export function createCredentialDeliveryHandler(
  options: CredentialDeliveryOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  const { kubeConfig, credentialNamespace } = options;
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const attestor = new PodAttestor({
    authentication: kubeConfig.makeApiClient(AuthenticationV1Api),
    core,
    publicKeys: options.publicKeys,
    // Each delivery sees the pod as it is now.
    tokenCacheMs: 0,
  });
  const deliveries = new Counter({
    name: 'chaperone_credential_deliveries_total',
    help: 'Credentials delivered to attested sidecars, by result (delivered, or the refusal reason).',
    labelNames: ['result'],
    registers: options.registry === undefined ? [] : [options.registry],
  });

  /** The attested pod of `token`, in a strict namespace, and its sealed sidecar configuration. */
  const attestStrict = async (token: string) => {
    const pod = await attestor.attest(token);
    const namespace = await core.readNamespace({ name: pod.namespace });
    if (namespace.metadata?.labels?.[LABEL_STRICT] !== 'true') {
      throw new Refused(
        403,
        'Forbidden',
        `credentials are delivered only into strict namespaces (label ${LABEL_STRICT}=true); ${pod.namespace} is not`,
      );
    }
    // The sealed configuration (the seal covers it) says what this sidecar serves and where its records go.
    const config = parse(pod.pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG] ?? '') as {
      listeners?: { name?: string }[];
      audit?: { evidenceStore?: unknown };
    } | null;
    return { pod, config };
  };

  const readSecret = (name: string) =>
    core.readNamespacedSecret({ namespace: credentialNamespace, name }).catch((err: unknown) => {
      if (notFound(err)) throw new Refused(404, 'NotFound', `Secret ${credentialNamespace}/${name} not found`);
      throw err;
    });

  const deliverEvidenceStore = async (
    token: string,
  ): Promise<{ body: DeliveredCredential; log: Record<string, unknown> }> => {
    // Attested first: an unauthenticated caller learns nothing, not even whether there is a store.
    const { pod, config } = await attestStrict(token);
    const store = options.evidenceStore;
    if (store === undefined) throw new Refused(404, 'NotFound', 'this installation has no evidence store');
    if (config?.audit?.evidenceStore === undefined) {
      throw new Refused(
        403,
        'Forbidden',
        `the sidecar of pod ${pod.namespace}/${pod.name} does not keep its records in the evidence store`,
      );
    }
    const secret = await readSecret(store.passwordSecret);
    const password = secret.data?.password;
    if (password === undefined) {
      throw new Refused(404, 'NotFound', `Secret ${credentialNamespace}/${store.passwordSecret} lacks password`);
    }
    let ca: string | undefined;
    if (store.caSecret !== undefined) {
      ca = (await readSecret(store.caSecret)).data?.['ca.crt'];
      if (ca === undefined)
        throw new Refused(404, 'NotFound', `Secret ${credentialNamespace}/${store.caSecret} lacks ca.crt`);
    }
    const username = Buffer.from(store.writerUser).toString('base64');
    const hash = createHash('sha256').update(username).update('\0').update(password).digest('hex').slice(0, 16);
    return {
      body: { username, password, ...(ca === undefined ? {} : { ca }) },
      log: {
        pod: `${pod.namespace}/${pod.name}`,
        evidenceStore: `${store.host}:${String(store.port)}/${store.database}`,
        secret: `${credentialNamespace}/${store.passwordSecret}`,
        credentialHash: hash,
      },
    };
  };

  const deliver = async (
    req: IncomingMessage,
  ): Promise<{ body: DeliveredCredential; log: Record<string, unknown> }> => {
    if (req.method !== 'POST') throw new Refused(400, 'BadRequest', 'use POST');
    const token = bearerToken(req);
    const body = (await readJson(req, MAX_BODY_BYTES)) as { resource?: unknown; evidenceStore?: unknown } | null;
    if (body?.evidenceStore === true && body.resource === undefined) return deliverEvidenceStore(token);
    const resourceName = body?.resource;
    if (typeof resourceName !== 'string' || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(resourceName)) {
      throw new Refused(400, 'BadRequest', 'resource (a ProtectedResource name) is required');
    }
    const { pod, config } = await attestStrict(token);
    if (!(config?.listeners ?? []).some((l) => l.name === resourceName)) {
      throw new Refused(
        403,
        'Forbidden',
        `the sidecar of pod ${pod.namespace}/${pod.name} does not serve ${resourceName}`,
      );
    }
    const resource = (await custom
      .getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: pod.namespace,
        plural: 'protectedresources',
        name: resourceName,
      })
      .catch((err: unknown) => {
        if (notFound(err))
          throw new Refused(404, 'NotFound', `ProtectedResource ${pod.namespace}/${resourceName} not found`);
        throw err;
      })) as ProtectedResource;
    const ref = resource.spec.credentialSecretRef;
    if (ref?.namespace !== credentialNamespace) {
      throw new Refused(
        403,
        'Forbidden',
        `ProtectedResource ${pod.namespace}/${resourceName} does not name a Secret of the credential namespace ${credentialNamespace}`,
      );
    }
    const secret = await readSecret(ref.name);
    if (!secretAllows(secret, pod.namespace)) {
      throw new Refused(
        403,
        'Forbidden',
        `Secret ${credentialNamespace}/${ref.name} does not allow namespace ${pod.namespace} (annotation ${ANNOTATION_ALLOWED_NAMESPACES})`,
      );
    }
    const username = secret.data?.[ref.usernameKey];
    const password = secret.data?.[ref.passwordKey];
    if (username === undefined || password === undefined) {
      throw new Refused(
        404,
        'NotFound',
        `Secret ${credentialNamespace}/${ref.name} lacks ${ref.usernameKey} or ${ref.passwordKey}`,
      );
    }
    // The read-only login comes from the same namespace under the same allow-list, or the answer is refused:
    // the sidecar's configuration names its files, and a session must never get the full login instead.
    let readOnly: { username: string; password: string } | undefined;
    const readOnlyRef = resource.spec.readOnlyCredentialSecretRef;
    if (readOnlyRef !== undefined) {
      if (readOnlyRef.namespace !== credentialNamespace) {
        throw new Refused(
          403,
          'Forbidden',
          `ProtectedResource ${pod.namespace}/${resourceName} names a read-only credential outside the credential namespace ${credentialNamespace}`,
        );
      }
      const readOnlySecret = await readSecret(readOnlyRef.name);
      if (!secretAllows(readOnlySecret, pod.namespace)) {
        throw new Refused(
          403,
          'Forbidden',
          `Secret ${credentialNamespace}/${readOnlyRef.name} does not allow namespace ${pod.namespace} (annotation ${ANNOTATION_ALLOWED_NAMESPACES})`,
        );
      }
      const roUsername = readOnlySecret.data?.[readOnlyRef.usernameKey];
      const roPassword = readOnlySecret.data?.[readOnlyRef.passwordKey];
      if (roUsername === undefined || roPassword === undefined) {
        throw new Refused(
          404,
          'NotFound',
          `Secret ${credentialNamespace}/${readOnlyRef.name} lacks ${readOnlyRef.usernameKey} or ${readOnlyRef.passwordKey}`,
        );
      }
      readOnly = { username: roUsername, password: roPassword };
    }
    let ca: string | undefined;
    const caRef = resource.spec.tls?.caSecretRef;
    if (caRef !== undefined) {
      const caSecret = await core.readNamespacedSecret({ namespace: pod.namespace, name: caRef.name });
      ca = caSecret.data?.[caRef.key];
    }
    let maskingKey: string | undefined;
    const keyRef = resource.spec.maskingKeySecretRef;
    if (keyRef !== undefined) {
      // Never an answer without it: the sidecar would hash with a key of its own, and hashes would not join.
      // Next to the credential (keyRef.namespace) it is out of the resource namespace's editors' reach.
      const keyNamespace = keyRef.namespace ?? pod.namespace;
      if (keyRef.namespace !== undefined && keyRef.namespace !== credentialNamespace) {
        throw new Refused(
          403,
          'Forbidden',
          `ProtectedResource ${pod.namespace}/${resourceName} names a masking key outside the credential namespace ${credentialNamespace}`,
        );
      }
      const keySecret = await core
        .readNamespacedSecret({ namespace: keyNamespace, name: keyRef.name })
        .catch((err: unknown) => {
          if (notFound(err)) throw new Refused(404, 'NotFound', `Secret ${keyNamespace}/${keyRef.name} not found`);
          throw err;
        });
      if (keyRef.namespace !== undefined && !secretAllows(keySecret, pod.namespace)) {
        throw new Refused(
          403,
          'Forbidden',
          `Secret ${keyNamespace}/${keyRef.name} does not allow namespace ${pod.namespace} (annotation ${ANNOTATION_ALLOWED_NAMESPACES})`,
        );
      }
      maskingKey = keySecret.data?.[keyRef.key];
      if (maskingKey === undefined) {
        throw new Refused(404, 'NotFound', `Secret ${keyNamespace}/${keyRef.name} lacks ${keyRef.key}`);
      }
    }
    const hash = createHash('sha256').update(username).update('\0').update(password).digest('hex').slice(0, 16);
    return {
      body: {
        username,
        password,
        ...(ca === undefined ? {} : { ca }),
        ...(maskingKey === undefined ? {} : { maskingKey }),
        ...(readOnly === undefined ? {} : { readOnlyUsername: readOnly.username, readOnlyPassword: readOnly.password }),
      },
      log: {
        pod: `${pod.namespace}/${pod.name}`,
        resource: resourceName,
        secret: `${credentialNamespace}/${ref.name}`,
        credentialHash: hash,
      },
    };
  };

  return (req, res) => {
    deliver(req).then(
      ({ body, log }) => {
        deliveries.inc({ result: 'delivered' });
        options.logger.info('credential delivered', log);
        res
          .writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' })
          .end(JSON.stringify(body));
      },
      (err: unknown) => {
        const refused =
          err instanceof Refused
            ? err
            : new Refused(500, 'InternalError', `delivery failed: ${(err as Error).message}`);
        deliveries.inc({ result: refused.reason });
        const fields = { code: refused.code, reason: refused.message };
        if (refused.code >= 500) options.logger.error('credential delivery failed', fields);
        else options.logger.info('credential delivery refused', fields);
        if (!res.headersSent) {
          res
            .writeHead(refused.code, { 'content-type': 'application/json' })
            .end(statusBody(refused.code, refused.reason, refused.message));
        }
      },
    );
  };
}
