// The pod webhooks. The mutator resolves the pod's ProtectedResources from the admission cache and hands
// everything to the pure injector (renderPodPatch), which seals the sidecar it renders. The strict
// validator runs after every mutation in strict namespaces and refuses what would let an agent around the
// sidecar. The seal validator runs on updates in every injection namespace and refuses any change to a
// sealed sidecar (its image included) and ephemeral containers that could reach it.
import type { V1EphemeralContainer, V1Pod } from '@kubernetes/client-node';
import type { ProtectedResource, StatementSigner } from '@chaperone/api';
import {
  ANNOTATION_INJECT,
  ANNOTATION_RESOURCES,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  LABEL_STRICT,
  SIDECAR_CONTAINER,
} from '../injection/constants.ts';
import {
  credentialSecretNames,
  isolationViolations,
  requestedResourceNames,
  strictViolations,
} from '../injection/inspect-pod.ts';
import { injectionRequested, isStrictNamespace, renderPodPatch } from '../injection/render-pod-patch.ts';
import {
  attestationProblems,
  injectorNamesIn,
  otherContainerProblems,
  sealedPartsChanged,
  sealProblems,
  type PublicKeys,
} from '../injection/sealed-pod.ts';
import type { InjectionSettings } from '../injection/settings.ts';
import type {
  OperatorEndpoint,
  SignerCertificationEndpoint,
  TokenExchangeEndpoint,
} from '../injection/render-sidecar-config.ts';
import type { Logger } from '../observability/logger.ts';
import type { AdmissionLookups } from './admission-cache.ts';
import { allow, allowWithPatch, refuse, type AdmissionRequest } from './admission-review.ts';
import type { AdmissionHandler } from './admission-server.ts';

export interface PodWebhookOptions {
  readonly lookups: AdmissionLookups;
  readonly settings: InjectionSettings;
  readonly logger: Logger;
  /** The operator's signer certification endpoint now (its CA rotates), when it runs one. */
  readonly signerCertification?: () => SignerCertificationEndpoint;
  /** The operator's token exchange now (its CA rotates), when it runs one. */
  readonly tokenExchange?: () => TokenExchangeEndpoint;
  /** The operator's HTTPS server now (Session proxy, credential delivery). */
  readonly operatorEndpoint?: () => OperatorEndpoint;
  /** The operator's key, which seals injected sidecars, and the public keys seals are checked against. */
  readonly operatorKey: { readonly signer: StatementSigner; readonly publicKeys: PublicKeys };
}

const strictMessage = (problems: readonly string[]) =>
  `chaperone strict mode (namespace label ${LABEL_STRICT}=true) refuses this pod: ${problems.join('; ')}`;

/** The injector's names (sidecar, volumes, annotations) or a seal: the pod is, or claims to be, injected. */
function claimsInjection(pod: V1Pod): boolean {
  return injectorNamesIn(pod).length > 0;
}

/** Ephemeral containers in `after` that `before` did not have. */
function addedEphemeralContainers(before: V1Pod | undefined, after: V1Pod): V1EphemeralContainer[] {
  const known = new Set((before?.spec?.ephemeralContainers ?? []).map((c) => c.name));
  return (after.spec?.ephemeralContainers ?? []).filter((c) => !known.has(c.name));
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
    if (!injectionRequested(pod, namespace, settings)) {
      // Not asking for injection, but bringing the injector's names: only a genuine (sealed) copy may.
      const reserved = injectorNamesIn(pod);
      if (reserved.length === 0 || namespace === settings.operatorNamespace) return allow(uid);
      const problems = sealProblems(pod, namespace, options.operatorKey.publicKeys);
      if (problems.length === 0) return allow(uid);
      return refuse(
        uid,
        403,
        `chaperone: the pod sets ${reserved.join(', ')}, which only the injector may set (${problems.join('; ')})`,
      );
    }
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
      settings,
      signer: options.operatorKey.signer,
      operatorKeys: options.operatorKey.publicKeys,
      ...(options.signerCertification === undefined ? {} : { signerCertification: options.signerCertification() }),
      ...(options.tokenExchange === undefined ? {} : { tokenExchange: options.tokenExchange() }),
      ...(options.operatorEndpoint === undefined ? {} : { operatorEndpoint: options.operatorEndpoint() }),
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

/**
 * The strict validator (namespaces labelled chaperone.dev/strict=true): pods that could get around the
 * sidecar are refused on create; injected pods must be attested (sealed sidecar, nothing else reaching
 * it); updates may not touch what the injector sealed; ephemeral containers are refused in injected pods.
 */
export function createPodValidator(options: PodWebhookOptions): AdmissionHandler {
  const { lookups } = options;
  const keys = options.operatorKey.publicKeys;
  return async (request) => {
    const { uid } = request;
    if (!isPod(request)) return allow(uid);
    const pod = request.object as V1Pod;
    const namespace = request.namespace ?? pod.metadata?.namespace ?? '';
    const labels = await lookups.namespaceLabels(namespace);
    // Registration selects strict namespaces already; checking again keeps a mis-registration harmless.
    if (!isStrictNamespace(labels)) return allow(uid);
    const old = request.oldObject as V1Pod | undefined;

    if (request.subResource === 'ephemeralcontainers') {
      const added = addedEphemeralContainers(old, pod);
      if (added.length === 0) return allow(uid);
      const problems = ephemeralProblems(pod, added);
      if (claimsInjection(old ?? pod)) {
        problems.push(
          `ephemeral containers are refused in pods with the Chaperone sidecar in strict mode (${added.map((c) => c.name).join(', ')})`,
        );
      }
      return problems.length > 0 ? refuse(uid, 403, strictMessage(problems)) : allow(uid);
    }
    if (request.subResource !== undefined) return allow(uid);

    if (request.operation === 'UPDATE') {
      const changed = old === undefined ? [] : sealedPartsChanged(old, pod);
      return changed.length > 0 ? refuse(uid, 403, strictMessage(changed)) : allow(uid);
    }

    const requested = requestedResourceNames(pod);
    if ('error' in requested) return refuse(uid, 403, strictMessage([requested.error]));
    const problems = strictViolations(pod);
    const injected = claimsInjection(pod);
    if (requested.names.length > 0 && !injected) {
      problems.unshift(
        `it names ProtectedResources (${requested.names.join(', ')}) but has no ${SIDECAR_CONTAINER}; label the namespace ${LABEL_INJECTION}=${LABEL_INJECTION_ENABLED} and annotate the pod ${ANNOTATION_INJECT}: "true"`,
      );
    }
    // Every ProtectedResource of the namespace, not only the named ones: a pod that names none must not
    // mount a target credential either.
    problems.push(
      ...isolationViolations(pod, credentialSecretNames(lookups.protectedResources(namespace)), new Set(), injected),
    );
    if (injected) {
      // A sidecar is trusted only when the operator sealed it and nothing else in the pod can reach it.
      for (const p of attestationProblems(pod, namespace, keys)) if (!problems.includes(p)) problems.push(p);
    }
    return problems.length > 0 ? refuse(uid, 403, strictMessage(problems)) : allow(uid);
  };
}

/** What an ephemeral container may not do in any pod with the sidecar: reach the sidecar or the node. */
function ephemeralProblems(pod: V1Pod, added: readonly V1EphemeralContainer[]): string[] {
  return added.flatMap((c) => otherContainerProblems(pod, c, `ephemeral container ${c.name}`));
}

/**
 * The seal validator (every injection namespace): on updates of a pod with the Chaperone sidecar, what the
 * injector sealed may not change (the sidecar's image included: a kubelet would restart it with the new
 * image, holding the pod's token and key), and ephemeral containers may not reach the sidecar.
 */
export function createSealValidator(_options: PodWebhookOptions): AdmissionHandler {
  return (request) => {
    const { uid } = request;
    if (!isPod(request) || request.operation !== 'UPDATE') return allow(uid);
    const pod = request.object as V1Pod;
    const old = request.oldObject as V1Pod | undefined;
    if (old === undefined || !claimsInjection(old)) return allow(uid);
    const message = (problems: readonly string[]) =>
      `chaperone: the Chaperone sidecar of this pod is sealed by the operator: ${problems.join('; ')}`;
    if (request.subResource === 'ephemeralcontainers') {
      const added = addedEphemeralContainers(old, pod);
      const problems = added.length === 0 ? [] : ephemeralProblems(pod, added);
      return problems.length > 0 ? refuse(uid, 403, message(problems)) : allow(uid);
    }
    if (request.subResource !== undefined && request.subResource !== 'resize') return allow(uid);
    const changed = sealedPartsChanged(old, pod);
    return changed.length > 0 ? refuse(uid, 403, message(changed)) : allow(uid);
  };
}
