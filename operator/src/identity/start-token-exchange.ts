// Wires the token exchange for one operator replica: the shared signing keys, informers over the
// TrustedIssuers and DelegationPolicies of the exchange namespace (only that namespace counts: whoever can
// write there decides who may act for whom), the authenticator, this replica's evidence stream, and the
// HTTP routes the operator's HTTPS server serves. Every replica runs it; nothing here needs the leader.
import {
  AuthenticationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
} from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import { TOKEN_EXCHANGE_BASE_PATH, type DelegationPolicy, type TrustedIssuer } from '@chaperone/api';
import { setCondition, conditionsEqual, type ConditionUpdate } from '../controller-runtime/conditions.ts';
import { patchStatus } from '../controller-runtime/status-patch.ts';
import { cacheOf, customObjectInformer } from '../controller-runtime/custom-object-informer.ts';
import type { Logger } from '../observability/logger.ts';
import { ExchangeLog } from './exchange-log.ts';
import type { FetchReport } from './oidc-keys.ts';
import { SigningKeyRing } from './signing-keys.ts';
import { tokenExchangeRoutes, type Route } from './token-endpoint.ts';
import { TokenAuthenticator } from './token-authenticator.ts';
import { TokenExchangeService } from './token-exchange.ts';

const FIELD_MANAGER = 'chaperone-token-exchange';
const TI_PLURAL = 'trustedissuers';
const DP_PLURAL = 'delegationpolicies';

export interface TokenExchangeOptions {
  readonly kubeConfig: KubeConfig;
  readonly logger: Logger;
  readonly registry?: Registry;
  /** Namespace of the TrustedIssuers, DelegationPolicies, the key Secret and the TokenExchangeLogs. */
  readonly namespace: string;
  /** https://host[:port] where clients and sidecars reach the operator's HTTPS server; the issuer is <url>/identity/v1. */
  readonly url: string;
  /** This replica's name in exchange records. */
  readonly replica: string;
  /** Longest lifetime of any issued token. Default 1 h. */
  readonly maxLifetimeMs?: number;
  /** Audience of tokens when the request names none. Default chaperone (what sidecars accept). */
  readonly defaultAudience?: string;
  /** Signing key rotation period. Default 24 h. */
  readonly keyRotationPeriodMs?: number;
  /** Time a new key is published before it signs. Default 60 s. */
  readonly keyPublishDelayMs?: number;
  /** How often replicas re-read the key Secret. Default 30 s. */
  readonly keyRefreshIntervalMs?: number;
  /** How long an exchange waits for its evidence to be stored. Default 10 s. */
  readonly evidenceTimeoutMs?: number;
  /** Leeway on exp/nbf of presented tokens, seconds. Default 5. */
  readonly clockToleranceSeconds?: number;
  readonly now?: () => number;
}

export interface RunningTokenExchange {
  readonly issuer: string;
  readonly routes: Readonly<Record<string, Route>>;
  readonly keys: SigningKeyRing;
  readonly authenticator: TokenAuthenticator;
  readonly log: ExchangeLog;
  readonly service: TokenExchangeService;
  stop(): Promise<void>;
}

export function tokenExchangeIssuer(url: string): string {
  return `${url.replace(/\/$/, '')}${TOKEN_EXCHANGE_BASE_PATH}`;
}

export async function startTokenExchange(options: TokenExchangeOptions): Promise<RunningTokenExchange> {
  const { kubeConfig, namespace } = options;
  const logger = options.logger.child({ component: 'token-exchange' });
  const now = options.now ?? Date.now;
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const authentication = kubeConfig.makeApiClient(AuthenticationV1Api);
  const issuer = tokenExchangeIssuer(options.url);
  const maxLifetimeMs = options.maxLifetimeMs ?? 3_600_000;

  const keys = new SigningKeyRing({
    core,
    namespace,
    logger,
    maxTokenLifetimeMs: maxLifetimeMs,
    ...(options.keyRotationPeriodMs === undefined ? {} : { rotationPeriodMs: options.keyRotationPeriodMs }),
    ...(options.keyPublishDelayMs === undefined ? {} : { publishDelayMs: options.keyPublishDelayMs }),
    ...(options.keyRefreshIntervalMs === undefined ? {} : { refreshIntervalMs: options.keyRefreshIntervalMs }),
    now,
  });
  await keys.start();

  const statusWriter = new StatusWriter(custom, logger, now);
  const authenticator = new TokenAuthenticator({
    selfIssuer: issuer,
    keys,
    tokenReview: async (token, audiences) =>
      (await authentication.createTokenReview({ body: { spec: { token, audiences: [...audiences] } } })).status,
    ...(options.clockToleranceSeconds === undefined ? {} : { clockToleranceSeconds: options.clockToleranceSeconds }),
    now,
    onFetch: (object, report) => statusWriter.issuerFetched(object, report),
  });

  const issuersInformer = customObjectInformer(kubeConfig, custom, TI_PLURAL, namespace);
  const policiesInformer = customObjectInformer(kubeConfig, custom, DP_PLURAL, namespace);
  const issuerCache = cacheOf<TrustedIssuer>(issuersInformer);
  const policyCache = cacheOf<DelegationPolicy>(policiesInformer);
  let policies: readonly DelegationPolicy[] = [];
  const reloadIssuers = () => {
    const objects = issuerCache.list(namespace);
    authenticator.setIssuers(objects);
    for (const object of objects) {
      const source = authenticator.keySource(object.spec.issuer);
      // Fetch an OIDC issuer's keys at once: status shows a bad issuer before any exchange meets it.
      if (source !== undefined && source.report === undefined) {
        source
          .keys()
          .catch((err: unknown) =>
            logger.warn('trusted issuer keys unavailable', { issuer: object.spec.issuer, error: err }),
          );
      } else statusWriter.issuerLoaded(object, source?.report);
    }
  };
  const reloadPolicies = () => {
    policies = policyCache.list(namespace);
    for (const p of policies) statusWriter.policyLoaded(p);
  };
  let stopped = false;
  const informers: [string, Informer<KubernetesObject>, () => void][] = [
    [TI_PLURAL, issuersInformer, reloadIssuers],
    [DP_PLURAL, policiesInformer, reloadPolicies],
  ];
  for (const [name, informer, reload] of informers) {
    for (const event of ['add', 'update', 'delete'] as const) informer.on(event, reload);
    informer.on('error', (err: unknown) => {
      if (stopped) return;
      logger.warn('token exchange watch failed; restarting', { informer: name, error: err });
      setTimeout(() => {
        if (!stopped)
          informer.start().catch((e: unknown) => logger.error('watch restart failed', { informer: name, error: e }));
      }, 1000).unref();
    });
  }
  try {
    await Promise.all(informers.map(([, i]) => i.start()));
  } catch (err) {
    keys.stop();
    throw err;
  }
  reloadIssuers();
  reloadPolicies();

  const log = new ExchangeLog({
    custom,
    namespace,
    issuer,
    replica: options.replica,
    signer: () => {
      const key = keys.signingKey();
      return { kid: key.kid, privateJwk: key.privateJwk };
    },
    logger,
    ...(options.evidenceTimeoutMs === undefined ? {} : { writeTimeoutMs: options.evidenceTimeoutMs }),
    now,
  });
  const service = new TokenExchangeService({
    issuer,
    signingKey: () => keys.signingKey(),
    authenticator,
    log,
    policies: () => policies,
    settings: { selfIssuer: issuer, maxLifetimeMs, defaultAudience: options.defaultAudience ?? 'chaperone' },
    logger,
    ...(options.registry === undefined ? {} : { registry: options.registry }),
    now,
  });
  logger.info('token exchange started', { issuer, namespace, stream: log.stream, keyId: keys.signingKey().kid });
  return {
    issuer,
    routes: tokenExchangeRoutes({ service, issuer, jwks: () => keys.jwks() }),
    keys,
    authenticator,
    log,
    service,
    async stop() {
      stopped = true;
      keys.stop();
      await log.stop();
      await Promise.all(informers.map(([, i]) => i.stop()));
    },
  };
}

/** Ready conditions of TrustedIssuers and DelegationPolicies, written only when they change. */
class StatusWriter {
  private readonly custom: CustomObjectsApi;
  private readonly logger: Logger;
  private readonly now: () => number;

  constructor(custom: CustomObjectsApi, logger: Logger, now: () => number) {
    this.custom = custom;
    this.logger = logger;
    this.now = now;
  }

  issuerFetched(object: TrustedIssuer, report: FetchReport): void {
    this.issuerLoaded(object, report);
  }

  issuerLoaded(object: TrustedIssuer, report: FetchReport | undefined): void {
    const generation = object.metadata.generation;
    let update: ConditionUpdate;
    const extra: Record<string, unknown> = {};
    if (object.spec.type === 'kubernetes') {
      update = {
        type: 'Ready',
        status: 'True',
        reason: 'TokenReview',
        message: 'tokens of this issuer are checked by a TokenReview',
      };
    } else if (report === undefined) {
      return;
    } else if (report.error !== undefined) {
      update = { type: 'Ready', status: 'False', reason: 'KeysUnavailable', message: report.error.slice(0, 1024) };
    } else {
      update = {
        type: 'Ready',
        status: 'True',
        reason: 'KeysFetched',
        message: `${String(report.keys)} keys fetched`,
      };
      extra.keys = report.keys;
      extra.lastFetchTime = new Date(report.fetchedAt).toISOString().replace(/\.\d{3}Z$/, 'Z');
    }
    this.write(
      TI_PLURAL,
      object,
      { ...update, ...(generation === undefined ? {} : { observedGeneration: generation }) },
      extra,
    );
  }

  policyLoaded(object: DelegationPolicy): void {
    const generation = object.metadata.generation;
    this.write(DP_PLURAL, object, {
      type: 'Ready',
      status: 'True',
      reason: 'Loaded',
      message: `${String(object.spec.rules.length)} rules in force`,
      ...(generation === undefined ? {} : { observedGeneration: generation }),
    });
  }

  private write(
    plural: string,
    object: TrustedIssuer | DelegationPolicy,
    update: ConditionUpdate,
    extra: Record<string, unknown> = {},
  ): void {
    const current = object.status?.conditions;
    const conditions = setCondition(current, update, new Date(this.now()));
    const sameExtra = Object.entries(extra).every(
      ([k, v]) => k === 'lastFetchTime' || (object.status as Record<string, unknown> | undefined)?.[k] === v,
    );
    if (
      conditionsEqual(current, conditions) &&
      sameExtra &&
      object.status?.observedGeneration === update.observedGeneration
    ) {
      return;
    }
    patchStatus({
      custom: this.custom,
      plural,
      fieldManager: FIELD_MANAGER,
      object,
      status: {
        conditions,
        ...(update.observedGeneration === undefined ? {} : { observedGeneration: update.observedGeneration }),
        ...extra,
      },
    }).catch((err: unknown) => {
      // A conflict means the object changed: the informer delivers the new one and this runs again.
      this.logger.debug('status write skipped', { plural, name: object.metadata.name, error: err });
    });
  }
}
