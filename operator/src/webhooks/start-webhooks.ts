// Wires the admission side of the operator: admission cache (informers), webhook certificates (Secret,
// rotation, caBundle), the HTTPS server, and optionally the webhook registration. Every replica runs
// this (admission is not leader-elected); certificate renewal is safe from any replica. Used by the
// operator bin and, in-process, by the e2e tests and the benchmark.
import {
  AdmissionregistrationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type V1LabelSelectorRequirement,
} from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import { TOKEN_EXCHANGE_PATHS, statementSigner } from '@chaperone/api';
import { loadOrCreateAuditAuthority, type AuditAuthority } from '../audit/audit-authority.ts';
import { MountedCertificates } from '../certificates/mounted-certificates.ts';
import { WebhookCertificates, type ServingMaterial } from '../certificates/webhook-certificates.ts';
import type { InjectionSettings } from '../injection/settings.ts';
import type { Logger } from '../observability/logger.ts';
import { startAdmissionCache, type AdmissionCache } from './admission-cache.ts';
import {
  startAdmissionServer,
  type AdmissionOutcome,
  type AdmissionServer,
  type AdmissionServerOptions,
} from './admission-server.ts';
import { createPodMutator, createPodValidator, createSealValidator } from './pod-admission.ts';
import { createSessionValidator } from './session-admission.ts';
import {
  DEFAULT_MUTATING_NAME,
  DEFAULT_VALIDATING_NAME,
  MUTATE_PATH,
  VALIDATE_PATH,
  VALIDATE_SEALED_PATH,
  VALIDATE_SESSIONS_PATH,
  applyWebhookConfigurations,
  deleteWebhookConfigurations,
  type WebhookEndpoint,
} from './webhook-registration.ts';

export interface InjectionWebhooksOptions {
  readonly kubeConfig: KubeConfig;
  readonly logger: Logger;
  /** Validated with validateInjectionSettings. */
  readonly settings: InjectionSettings;
  /**
   * The operator's key (the audit authority's), which seals injected sidecars. Default: loaded from, or
   * created in, the Secret chaperone-audit-authority of settings.operatorNamespace.
   */
  readonly authority?: AuditAuthority;
  /** Default 0.0.0.0:9443. */
  readonly host?: string;
  readonly port?: number;
  /** Registry for the admission metrics (pass the operator's registry). */
  readonly registry?: Registry;
  readonly certificates: {
    /** Default settings.operatorNamespace. */
    readonly namespace?: string;
    /** Default chaperone-webhook-tls. */
    readonly secretName?: string;
    /** SANs; in a cluster <service>.<namespace>.svc (and .svc.cluster.local). */
    readonly dnsNames: readonly string[];
    readonly ipAddresses?: readonly string[];
    readonly caLifetimeMs?: number;
    readonly leafLifetimeMs?: number;
    readonly checkIntervalMs?: number;
    /**
     * Serve tls.crt/tls.key (and ca.crt for sidecars) from this mounted directory instead: another issuer
     * (cert-manager) owns the certificate and writes caBundle. The other fields are then unused.
     */
    readonly dir?: string;
  };
  /** Register the webhook configurations from this process. Omit when Helm renders them. */
  readonly registration?: {
    /** "self" registers this server's own https://host:port (tests, single-host setups). */
    readonly endpoint: WebhookEndpoint | 'self';
    readonly mutatingName?: string;
    readonly validatingName?: string;
    readonly extraNamespaceSelector?: readonly V1LabelSelectorRequirement[];
    /** Delete the configurations on stop (tests). Default false: a stopped replica must not disable admission. */
    readonly deleteOnStop?: boolean;
  };
  /** Names of configurations whose caBundle is kept in step when registration is done elsewhere (Helm). */
  readonly webhookConfigurationNames?: { readonly mutating: string; readonly validating: string };
  readonly onReview?: (path: string, outcome: AdmissionOutcome, seconds: number) => void;
  /** Other endpoints on the same HTTPS listener (the signer certification endpoint). */
  readonly routes?: AdmissionServerOptions['routes'];
  /**
   * Path of the signer certification endpoint among `routes`: injected sidecars are told to use it, at
   * this server's registered address (URL, Service, or its own address), with this server's CA.
   */
  readonly signerCertificationPath?: string;
  /** iss of the operator's token exchange among `routes`: injected sidecars trust it (JWKS at this server). */
  readonly tokenExchangeIssuer?: string;
}

export interface InjectionWebhooks {
  readonly server: AdmissionServer;
  readonly certificates: WebhookCertificates | MountedCertificates;
  readonly cache: AdmissionCache;
  /** The key that seals injected sidecars. */
  readonly authority: AuditAuthority;
  readonly names: { readonly mutating: string; readonly validating: string };
  stop(): Promise<void>;
}

export async function startInjectionWebhooks(options: InjectionWebhooksOptions): Promise<InjectionWebhooks> {
  const { kubeConfig, logger, settings } = options;
  const log = logger.child({ component: 'admission' });
  const names = {
    mutating:
      options.registration?.mutatingName ?? options.webhookConfigurationNames?.mutating ?? DEFAULT_MUTATING_NAME,
    validating:
      options.registration?.validatingName ?? options.webhookConfigurationNames?.validating ?? DEFAULT_VALIDATING_NAME,
  };
  const admissionRegistration = kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  const authority =
    options.authority ??
    (await loadOrCreateAuditAuthority(kubeConfig.makeApiClient(CoreV1Api), settings.operatorNamespace, log));
  const operatorKey = { signer: statementSigner(authority.privateJwk), publicKeys: authority.publicKeys };
  const cache = await startAdmissionCache({ kubeConfig, logger: log });
  let server: AdmissionServer | undefined;
  const onChange = (m: ServingMaterial) => server?.setCertificate(m.certPem, m.keyPem);
  const certificateDir = options.certificates.dir;
  const certificates =
    certificateDir !== undefined
      ? new MountedCertificates({ dir: certificateDir, logger: log, onChange })
      : new WebhookCertificates({
          core: kubeConfig.makeApiClient(CoreV1Api),
          admissionRegistration,
          namespace: options.certificates.namespace ?? settings.operatorNamespace,
          secretName: options.certificates.secretName ?? 'chaperone-webhook-tls',
          dnsNames: options.certificates.dnsNames,
          ...(options.certificates.ipAddresses === undefined ? {} : { ipAddresses: options.certificates.ipAddresses }),
          mutatingWebhookConfigurations: [names.mutating],
          validatingWebhookConfigurations: [names.validating],
          ...(options.certificates.caLifetimeMs === undefined
            ? {}
            : { caLifetimeMs: options.certificates.caLifetimeMs }),
          ...(options.certificates.leafLifetimeMs === undefined
            ? {}
            : { leafLifetimeMs: options.certificates.leafLifetimeMs }),
          ...(options.certificates.checkIntervalMs === undefined
            ? {}
            : { checkIntervalMs: options.certificates.checkIntervalMs }),
          logger: log,
          onChange,
        });
  let material: ServingMaterial;
  try {
    material = await certificates.start();
    const certificationPath = options.signerCertificationPath;
    const lookups = {
      lookups: cache,
      settings,
      logger: log,
      operatorKey,
      operatorEndpoint: () => ({ baseUrl: baseUrl(), caPem: certificates.current().caBundlePem }),
      ...(certificationPath === undefined
        ? {}
        : {
            signerCertification: () => ({
              url: `${baseUrl()}${certificationPath}`,
              caPem: certificates.current().caBundlePem,
            }),
          }),
      ...(options.tokenExchangeIssuer === undefined
        ? {}
        : {
            tokenExchange: () => ({
              issuer: options.tokenExchangeIssuer ?? '',
              jwksUrl: `${baseUrl()}${TOKEN_EXCHANGE_PATHS.jwks}`,
              caPem: certificates.current().caBundlePem,
            }),
          }),
    };
    // Where pods reach this server: the registered URL, the Service, or (self-registered) its own address.
    const baseUrl = (): string => {
      const endpoint = options.registration?.endpoint;
      if (endpoint === undefined || endpoint === 'self') {
        if (endpoint === 'self' && server !== undefined) return `https://${server.host}:${String(server.port)}`;
        return `https://${options.certificates.dnsNames[0] ?? 'chaperone-webhook'}`;
      }
      if ('url' in endpoint) return endpoint.url.replace(/\/$/, '');
      return `https://${endpoint.service.name}.${endpoint.service.namespace}.svc:${String(endpoint.service.port ?? 443)}`;
    };
    server = await startAdmissionServer({
      host: options.host ?? '0.0.0.0',
      port: options.port ?? 9443,
      certPem: material.certPem,
      keyPem: material.keyPem,
      handlers: {
        [MUTATE_PATH]: createPodMutator(lookups),
        [VALIDATE_PATH]: createPodValidator(lookups),
        [VALIDATE_SEALED_PATH]: createSealValidator(lookups),
        [VALIDATE_SESSIONS_PATH]: createSessionValidator({
          core: kubeConfig.makeApiClient(CoreV1Api),
          custom: kubeConfig.makeApiClient(CustomObjectsApi),
          publicKeys: () => authority.publicKeys,
        }),
      },
      logger: log,
      ...(options.registry === undefined ? {} : { registry: options.registry }),
      ...(options.onReview === undefined ? {} : { onReview: options.onReview }),
      ...(options.routes === undefined ? {} : { routes: options.routes }),
    });
    if (options.registration !== undefined) {
      await applyWebhookConfigurations(admissionRegistration, {
        endpoint:
          options.registration.endpoint === 'self'
            ? { url: `https://${server.host}:${String(server.port)}` }
            : options.registration.endpoint,
        caBundlePem: certificates.current().caBundlePem,
        operatorNamespace: settings.operatorNamespace,
        mutatingName: names.mutating,
        validatingName: names.validating,
        ...(options.registration.extraNamespaceSelector === undefined
          ? {}
          : { extraNamespaceSelector: options.registration.extraNamespaceSelector }),
      });
    }
  } catch (err) {
    certificates.stop();
    await server?.close();
    await cache.stop();
    throw err;
  }
  const running = server;
  return {
    server: running,
    certificates,
    cache,
    authority,
    names,
    async stop() {
      certificates.stop();
      if (options.registration?.deleteOnStop === true) {
        await deleteWebhookConfigurations(admissionRegistration, names).catch((err: unknown) =>
          log.warn('could not delete webhook configurations', { error: err }),
        );
      }
      await running.close();
      await cache.stop();
    },
  };
}
