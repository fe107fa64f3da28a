// The two pod webhooks. The mutator resolves the pod's ProtectedResources and policies from the admission
// cache and hands everything to the pure injector (renderPodPatch). The validator runs after every
// mutation, only in strict namespaces, and refuses what would let an agent around the sidecar.
import type { V1Pod } from '@kubernetes/client-node';
import type { ProtectedResource } from '@chaperone/api';
import {
  ANNOTATION_INJECT,
  ANNOTATION_RESOURCES,
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  LABEL_STRICT,
  SIDECAR_CONTAINER,
  VOLUME_AUDIT,
  VOLUME_CREDENTIALS,
  VOLUME_SIDECAR_API_ACCESS,
} from '../injection/constants.ts';
import {
  credentialSecretNames,
  hasSidecar,
  isolationViolations,
  requestedResourceNames,
  strictViolations,
} from '../injection/inspect-pod.ts';
import { injectionRequested, isStrictNamespace, renderPodPatch } from '../injection/render-pod-patch.ts';
import type { InjectionSettings } from '../injection/settings.ts';
import type { SignerCertificationEndpoint, TokenExchangeEndpoint } from '../injection/render-sidecar-config.ts';
import type { Logger } from '../observability/logger.ts';
import type { AdmissionLookups } from './admission-cache.ts';
import { allow, allowWithPatch, refuse, type AdmissionRequest, type AdmissionResponse } from './admission-review.ts';
import type { AdmissionHandler } from './admission-server.ts';

export interface PodWebhookOptions {
  readonly lookups: AdmissionLookups;
  readonly settings: InjectionSettings;
  readonly logger: Logger;
  /** The operator's signer certification endpoint now (its CA rotates), when it runs one. */
  readonly signerCertification?: () => SignerCertificationEndpoint;
  /** The operator's token exchange now (its CA rotates), when it runs one. */
  readonly tokenExchange?: () => TokenExchangeEndpoint;
}

function isPod(request: AdmissionRequest): boolean {
  return request.kind?.kind === 'Pod' || request.resource?.resource === 'pods';
}

async function resolveResources(
  lookups: AdmissionLookups,
  namespace: string,
  names: readonly string[],
): Promise<{ resources: ProtectedResource[] } | { missing: string[] }> {
  const found = await Promise.all(names.map((n) => lookups.protectedResource(namespace, n)));
  const missing = names.filter((_, i) => found[i] === undefined);
  if (missing.length > 0) return { missing };
  return { resources: found.filter((r): r is ProtectedResource => r !== undefined) };
}

export function createPodMutator(options: PodWebhookOptions): AdmissionHandler {
  const { lookups, settings } = options;
  return async (request) => {
    const { uid } = request;
    if (!isPod(request) || request.operation !== 'CREATE' || request.subResource !== undefined) return allow(uid);
    const pod = request.object as V1Pod;
    const namespace = request.namespace ?? pod.metadata?.namespace ?? '';
    if (!injectionRequested(pod, namespace, settings)) return allow(uid);
    const requested = requestedResourceNames(pod);
    if ('error' in requested) return refuse(uid, 400, `chaperone: ${requested.error}`);
    const [labels, resolved] = await Promise.all([
      lookups.namespaceLabels(namespace),
      resolveResources(lookups, namespace, requested.names),
    ]);
    if ('missing' in resolved) {
      return refuse(
        uid,
        400,
        `chaperone: ProtectedResource ${resolved.missing.join(', ')} not found in namespace ${namespace} (annotation ${ANNOTATION_RESOURCES})`,
      );
    }
    const result = renderPodPatch({
      pod,
      namespace,
      namespaceLabels: labels,
      resources: resolved.resources,
      policies: lookups.policiesCovering(namespace, resolved.resources),
      settings,
      ...(options.signerCertification === undefined ? {} : { signerCertification: options.signerCertification() }),
      ...(options.tokenExchange === undefined ? {} : { tokenExchange: options.tokenExchange() }),
    });
    switch (result.kind) {
      case 'skip':
        return allow(uid);
      case 'deny':
        return refuse(uid, result.code, result.message);
      case 'patch':
        return allowWithPatch(uid, result.patch, result.warnings);
    }
  };
}

export function createPodValidator(options: PodWebhookOptions): AdmissionHandler {
  const { lookups } = options;
  return async (request) => {
    const { uid } = request;
    if (!isPod(request)) return allow(uid);
    const pod = request.object as V1Pod;
    const namespace = request.namespace ?? pod.metadata?.namespace ?? '';
    const labels = await lookups.namespaceLabels(namespace);
    // Registration selects strict namespaces already; checking again keeps a mis-registration harmless.
    if (!isStrictNamespace(labels)) return allow(uid);
    const strict = (problems: string[]): AdmissionResponse =>
      refuse(
        uid,
        403,
        `chaperone strict mode (namespace label ${LABEL_STRICT}=true) refuses this pod: ${problems.join('; ')}`,
      );

    if (request.subResource === 'ephemeralcontainers') {
      const problems: string[] = [];
      for (const c of pod.spec?.ephemeralContainers ?? []) {
        if (c.targetContainerName === SIDECAR_CONTAINER) {
          problems.push(
            `ephemeral container ${c.name} targets ${SIDECAR_CONTAINER} (it would share its processes and files)`,
          );
        }
        for (const m of c.volumeMounts ?? []) {
          // The audit volume holds the key that signs the sidecar's chain heads.
          if (m.name === VOLUME_CREDENTIALS || m.name === VOLUME_SIDECAR_API_ACCESS || m.name === VOLUME_AUDIT) {
            problems.push(`ephemeral container ${c.name} mounts ${m.name}`);
          }
        }
      }
      return problems.length > 0 ? strict(problems) : allow(uid);
    }
    if (request.subResource !== undefined) return allow(uid);

    if (request.operation === 'UPDATE') {
      const old = request.oldObject as V1Pod | undefined;
      const before = old?.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG];
      const after = pod.metadata?.annotations?.[ANNOTATION_SIDECAR_CONFIG];
      if (before !== after)
        return strict([`annotation ${ANNOTATION_SIDECAR_CONFIG} is set by the injector and cannot change`]);
      return allow(uid);
    }

    const requested = requestedResourceNames(pod);
    if ('error' in requested) return strict([requested.error]);
    const problems = strictViolations(pod);
    const sidecar = hasSidecar(pod);
    if (requested.names.length > 0 && !sidecar) {
      problems.unshift(
        `it names ProtectedResources (${requested.names.join(', ')}) but has no ${SIDECAR_CONTAINER}; label the namespace ${LABEL_INJECTION}=${LABEL_INJECTION_ENABLED} and annotate the pod ${ANNOTATION_INJECT}: "true"`,
      );
    }
    // Every ProtectedResource of the namespace, not only the named ones: a pod that names none must not
    // mount a target credential either.
    problems.push(
      ...isolationViolations(pod, credentialSecretNames(lookups.protectedResources(namespace)), new Set(), sidecar),
    );
    if (sidecar && pod.spec?.automountServiceAccountToken !== false) {
      problems.push('automountServiceAccountToken is not false on a pod with the sidecar');
    }
    return problems.length > 0 ? strict(problems) : allow(uid);
  };
}
