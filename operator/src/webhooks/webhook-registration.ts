// The MutatingWebhookConfiguration and ValidatingWebhookConfiguration for pods, rendered from a few
// options (Helm renders the same objects in a cluster; tests register by URL). Both fail closed; both skip
// kube-system, kube-public, kube-node-lease and the operator's namespace by name, so a broken webhook can
// always be repaired from there.
import {
  ApiException,
  type AdmissionregistrationV1Api,
  type AdmissionregistrationV1WebhookClientConfig,
  type V1LabelSelectorRequirement,
  type V1MutatingWebhookConfiguration,
  type V1ValidatingWebhookConfiguration,
} from '@kubernetes/client-node';
import { GROUP } from '@chaperone/api';
import {
  ALWAYS_EXCLUDED_NAMESPACES,
  LABEL_INJECTION,
  LABEL_INJECTION_ENABLED,
  LABEL_STRICT,
} from '../injection/constants.ts';

export const DEFAULT_MUTATING_NAME = 'chaperone-pod-injector';
export const DEFAULT_VALIDATING_NAME = 'chaperone-pod-validator';
export const MUTATE_PATH = '/mutate-pods';
export const VALIDATE_PATH = '/validate-pods';
export const VALIDATE_SEALED_PATH = '/validate-sealed-pods';
export const VALIDATE_SESSIONS_PATH = '/validate-sessions';
const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'chaperone-operator' };

export type WebhookEndpoint =
  | { readonly url: string }
  | { readonly service: { readonly namespace: string; readonly name: string; readonly port?: number } };

export interface WebhookRegistrationOptions {
  /** Base URL (https://host:port) or Service of the admission server. */
  readonly endpoint: WebhookEndpoint;
  readonly caBundlePem: string;
  readonly operatorNamespace: string;
  /** Default chaperone-pod-injector / chaperone-pod-validator. */
  readonly mutatingName?: string;
  readonly validatingName?: string;
  /** Extra namespace selector terms (tests use one to select only their own namespaces). */
  readonly extraNamespaceSelector?: readonly V1LabelSelectorRequirement[];
  /** Default 5; the API server allows 1..30. */
  readonly timeoutSeconds?: number;
}

function clientConfig(
  endpoint: WebhookEndpoint,
  path: string,
  caBundlePem: string,
): AdmissionregistrationV1WebhookClientConfig {
  const caBundle = Buffer.from(caBundlePem).toString('base64');
  if ('url' in endpoint) return { url: `${endpoint.url.replace(/\/$/, '')}${path}`, caBundle };
  return { service: { ...endpoint.service, port: endpoint.service.port ?? 443, path }, caBundle };
}

export function renderWebhookConfigurations(options: WebhookRegistrationOptions): {
  mutating: V1MutatingWebhookConfiguration;
  validating: V1ValidatingWebhookConfiguration;
} {
  const excluded: V1LabelSelectorRequirement = {
    key: 'kubernetes.io/metadata.name',
    operator: 'NotIn',
    values: [...ALWAYS_EXCLUDED_NAMESPACES, options.operatorNamespace],
  };
  const extra = options.extraNamespaceSelector ?? [];
  const timeoutSeconds = options.timeoutSeconds ?? 5;
  const labels = MANAGED_BY;
  return {
    mutating: {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: options.mutatingName ?? DEFAULT_MUTATING_NAME, labels },
      webhooks: [
        {
          name: 'inject.pods.chaperone.dev',
          clientConfig: clientConfig(options.endpoint, MUTATE_PATH, options.caBundlePem),
          rules: [
            { apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' },
          ],
          // Annotations cannot be selected on, so opted-in namespaces are: pods there without the
          // annotation are answered "allowed, unchanged" in microseconds.
          namespaceSelector: {
            matchExpressions: [
              { key: LABEL_INJECTION, operator: 'In', values: [LABEL_INJECTION_ENABLED] },
              excluded,
              ...extra,
            ],
          },
          failurePolicy: 'Fail',
          matchPolicy: 'Equivalent',
          reinvocationPolicy: 'IfNeeded',
          sideEffects: 'None',
          timeoutSeconds,
          admissionReviewVersions: ['v1'],
        },
      ],
    },
    validating: {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'ValidatingWebhookConfiguration',
      metadata: { name: options.validatingName ?? DEFAULT_VALIDATING_NAME, labels },
      webhooks: [
        {
          name: 'validate.pods.chaperone.dev',
          clientConfig: clientConfig(options.endpoint, VALIDATE_PATH, options.caBundlePem),
          rules: [
            {
              apiGroups: [''],
              apiVersions: ['v1'],
              operations: ['CREATE', 'UPDATE'],
              resources: ['pods', 'pods/ephemeralcontainers'],
              scope: 'Namespaced',
            },
          ],
          namespaceSelector: {
            matchExpressions: [{ key: LABEL_STRICT, operator: 'In', values: ['true'] }, excluded, ...extra],
          },
          failurePolicy: 'Fail',
          matchPolicy: 'Equivalent',
          sideEffects: 'None',
          timeoutSeconds,
          admissionReviewVersions: ['v1'],
        },
        {
          // Every injection namespace, strict or not: a sealed sidecar never changes (its image included),
          // and no ephemeral container reaches it.
          name: 'seal.pods.chaperone.dev',
          clientConfig: clientConfig(options.endpoint, VALIDATE_SEALED_PATH, options.caBundlePem),
          rules: [
            {
              apiGroups: [''],
              apiVersions: ['v1'],
              operations: ['UPDATE'],
              resources: ['pods', 'pods/ephemeralcontainers', 'pods/resize'],
              scope: 'Namespaced',
            },
          ],
          namespaceSelector: {
            matchExpressions: [
              { key: LABEL_INJECTION, operator: 'In', values: [LABEL_INJECTION_ENABLED] },
              excluded,
              ...extra,
            ],
          },
          failurePolicy: 'Fail',
          matchPolicy: 'Equivalent',
          sideEffects: 'None',
          timeoutSeconds,
          admissionReviewVersions: ['v1'],
        },
        {
          // Sessions are written only by attested sidecars, and a closed session is not continued.
          name: 'sessions.chaperone.dev',
          clientConfig: clientConfig(options.endpoint, VALIDATE_SESSIONS_PATH, options.caBundlePem),
          rules: [
            {
              apiGroups: [GROUP],
              apiVersions: ['*'],
              operations: ['CREATE', 'UPDATE'],
              resources: ['sessions', 'sessions/status'],
              scope: 'Namespaced',
            },
          ],
          namespaceSelector: { matchExpressions: [excluded, ...extra] },
          failurePolicy: 'Fail',
          matchPolicy: 'Equivalent',
          sideEffects: 'None',
          timeoutSeconds,
          admissionReviewVersions: ['v1'],
        },
      ],
    },
  };
}

/** Creates or replaces both configurations. */
export async function applyWebhookConfigurations(
  api: AdmissionregistrationV1Api,
  options: WebhookRegistrationOptions,
): Promise<{ mutating: string; validating: string }> {
  const { mutating, validating } = renderWebhookConfigurations(options);
  const mName = mutating.metadata?.name ?? '';
  const vName = validating.metadata?.name ?? '';
  try {
    const existing = await api.readMutatingWebhookConfiguration({ name: mName });
    mutating.metadata = { name: mName, labels: MANAGED_BY, resourceVersion: existing.metadata?.resourceVersion ?? '' };
    await api.replaceMutatingWebhookConfiguration({ name: mName, body: mutating });
  } catch (err) {
    if (!(err instanceof ApiException) || err.code !== 404) throw err;
    await api.createMutatingWebhookConfiguration({ body: mutating });
  }
  try {
    const existing = await api.readValidatingWebhookConfiguration({ name: vName });
    validating.metadata = {
      name: vName,
      labels: MANAGED_BY,
      resourceVersion: existing.metadata?.resourceVersion ?? '',
    };
    await api.replaceValidatingWebhookConfiguration({ name: vName, body: validating });
  } catch (err) {
    if (!(err instanceof ApiException) || err.code !== 404) throw err;
    await api.createValidatingWebhookConfiguration({ body: validating });
  }
  return { mutating: mName, validating: vName };
}

export async function deleteWebhookConfigurations(
  api: AdmissionregistrationV1Api,
  names: { mutating: string; validating: string },
): Promise<void> {
  const ignore404 = (err: unknown) => {
    if (!(err instanceof ApiException) || err.code !== 404) throw err;
  };
  await api.deleteMutatingWebhookConfiguration({ name: names.mutating }).catch(ignore404);
  await api.deleteValidatingWebhookConfiguration({ name: names.validating }).catch(ignore404);
}
