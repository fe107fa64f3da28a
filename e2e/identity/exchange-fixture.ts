// The token exchange as tests use it: the real operator (startOperator with webhooks and the exchange) on
// 127.0.0.1 against the shared API server, its own exchange namespace, helpers to apply TrustedIssuers and
// DelegationPolicies and wait until the exchange has loaded them, and a raw HTTPS client for the RFC 8693
// endpoint (what curl would send).
import { mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { randomBytes } from 'node:crypto';
import * as k8s from '@kubernetes/client-node';
import {
  GROUP,
  TOKEN_EXCHANGE_GRANT_TYPE,
  TOKEN_EXCHANGE_PATHS,
  TOKEN_TYPES,
  VERSION,
  type DelegationPolicySpec,
  type TokenExchangeLog,
  type TrustedIssuerSpec,
} from '@chaperone/api';
import { validateInjectionSettings } from '../../operator/src/injection/settings.ts';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { startOperator, type RunningOperator } from '../../operator/src/operator.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { INSTANCE_LABEL } from '../injection/injection-fixture.ts';

export interface ExchangeReply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Record<string, unknown>;
}

export interface ExchangeFixture {
  /** Namespace of the exchange's TrustedIssuers, DelegationPolicies, keys and logs. */
  readonly namespace: string;
  /** https://127.0.0.1:<port> of the operator's HTTPS server. */
  readonly url: string;
  readonly issuer: string;
  readonly caPem: string;
  readonly caFile: string;
  readonly operator: RunningOperator;
  readonly custom: k8s.CustomObjectsApi;
  readonly core: k8s.CoreV1Api;
  /** POSTs form parameters to the token endpoint; resolves with status, headers and the parsed body. */
  post(params: Record<string, string | readonly string[]>, headers?: Record<string, string>): Promise<ExchangeReply>;
  /** POSTs a raw body (hostile input). */
  postRaw(body: string, headers: Record<string, string>, method?: string): Promise<ExchangeReply>;
  /** Exchanges `subject` (and `actor`) and returns the issued token, failing the test on a refusal. */
  exchange(
    subject: string,
    options?: {
      actor?: string;
      resources?: string[];
      scope?: string;
      audiences?: string[];
      lifetime?: number;
      mayAct?: object;
    },
  ): Promise<string>;
  get(path: string): Promise<ExchangeReply>;
  applyTrustedIssuer(
    name: string,
    spec: Partial<TrustedIssuerSpec> & Pick<TrustedIssuerSpec, 'issuer' | 'type'>,
  ): Promise<void>;
  applyDelegationPolicy(name: string, spec: DelegationPolicySpec): Promise<void>;
  /** The sidecar's identity.issuers entry for the exchange. */
  sidecarIssuer(): Record<string, unknown>;
  /** Every exchange record this operator wrote, in order. */
  logs(): Promise<TokenExchangeLog[]>;
  stop(): Promise<void>;
}

/** The form a client posts, from named options. */
export function exchangeForm(
  subject: string,
  options: {
    actor?: string;
    resources?: string[];
    scope?: string;
    audiences?: string[];
    lifetime?: number;
    mayAct?: object;
  } = {},
): Record<string, string | string[]> {
  return {
    grant_type: TOKEN_EXCHANGE_GRANT_TYPE,
    subject_token: subject,
    subject_token_type: TOKEN_TYPES.jwt,
    ...(options.actor === undefined ? {} : { actor_token: options.actor, actor_token_type: TOKEN_TYPES.jwt }),
    ...(options.resources === undefined ? {} : { resource: options.resources }),
    ...(options.audiences === undefined ? {} : { audience: options.audiences }),
    ...(options.scope === undefined ? {} : { scope: options.scope }),
    ...(options.lifetime === undefined ? {} : { requested_lifetime: String(options.lifetime) }),
    ...(options.mayAct === undefined ? {} : { may_act: JSON.stringify(options.mayAct) }),
  };
}

function send(
  url: string,
  ca: string,
  method: string,
  body: string | undefined,
  headers: Record<string, string>,
): Promise<ExchangeReply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, ca, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: Record<string, unknown>;
        try {
          parsed = text === '' ? {} : (JSON.parse(text) as Record<string, unknown>);
        } catch {
          parsed = { text };
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

export interface ExchangeFixtureOptions {
  /** The operator replica's identity (two fixtures sharing a namespace are two replicas). */
  readonly replica?: string;
  /** Reuse an exchange namespace (a second replica). */
  readonly namespace?: string;
  readonly now?: () => number;
  readonly keyPublishDelayMs?: number;
  readonly keyRefreshIntervalMs?: number;
  readonly maxLifetimeMs?: number;
  /** Base URL the issuer names; default this replica's own address (replicas of one exchange share it). */
  readonly issuerUrl?: string;
}

export async function startExchangeFixture(
  t: TestContext,
  options: ExchangeFixtureOptions = {},
): Promise<ExchangeFixture> {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const instance = randomBytes(4).toString('hex');
  const namespace = options.namespace ?? (await createTestNamespace(t));
  const dir = join(testDir(t), `exchange-${instance}`);
  mkdirSync(dir, { recursive: true });
  const lines: string[] = [];
  // The issuer names the server's address, so the port is chosen before the server starts.
  const port = await freePort();
  const url = `https://127.0.0.1:${String(port)}`;
  const operator = await startOperator({
    kubeConfig: kc,
    // Controllers watch only this (empty) namespace: the test needs the exchange, not policy compiles.
    namespace,
    logger: createLogger({ level: 'info', write: (l) => lines.push(l) }),
    metricsBindAddress: '0',
    identity: options.replica ?? `e2e-exchange-${instance}`,
    webhooks: {
      settings: validateInjectionSettings({
        image: 'ghcr.io/chaperone/chaperone-sidecar:test',
        operatorNamespace: namespace,
        issuer: controlPlaneEnv().issuer,
      }),
      host: '127.0.0.1',
      port,
      certificates: {
        dnsNames: ['chaperone-webhook.test'],
        ipAddresses: ['127.0.0.1'],
        secretName: `webhook-tls-${instance}`,
      },
      registration: {
        endpoint: 'self',
        mutatingName: `chaperone-pod-injector-${instance}`,
        validatingName: `chaperone-pod-validator-${instance}`,
        extraNamespaceSelector: [{ key: INSTANCE_LABEL, operator: 'In', values: [instance] }],
        deleteOnStop: true,
      },
    },
    tokenExchange: {
      namespace,
      url: options.issuerUrl ?? url,
      ...(options.now === undefined ? {} : { now: options.now }),
      ...(options.keyPublishDelayMs === undefined ? {} : { keyPublishDelayMs: options.keyPublishDelayMs }),
      ...(options.keyRefreshIntervalMs === undefined ? {} : { keyRefreshIntervalMs: options.keyRefreshIntervalMs }),
      ...(options.maxLifetimeMs === undefined ? {} : { maxLifetimeMs: options.maxLifetimeMs }),
    },
  });
  t.after(() => operator.stop());
  const webhooks = operator.webhooks;
  const exchange = operator.tokenExchange;
  if (webhooks === undefined || exchange === undefined) throw new Error('operator started without the exchange');
  const caPem = webhooks.certificates.current().caBundlePem;
  const caFile = join(dir, 'operator-ca.crt');
  writeFileSync(caFile, caPem);
  const issuer = exchange.issuer;
  const fixture: ExchangeFixture = {
    namespace,
    url,
    issuer,
    caPem,
    caFile,
    operator,
    custom,
    core,
    post: (params, headers = {}) => {
      const form = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) {
        for (const value of typeof v === 'string' ? [v] : v) form.append(k, value);
      }
      return send(`${url}${TOKEN_EXCHANGE_PATHS.token}`, caPem, 'POST', form.toString(), {
        'content-type': 'application/x-www-form-urlencoded',
        ...headers,
      });
    },
    postRaw: (body, headers, method = 'POST') =>
      send(`${url}${TOKEN_EXCHANGE_PATHS.token}`, caPem, method, body, headers),
    async exchange(subject, exchangeOptions = {}) {
      const reply = await fixture.post(exchangeForm(subject, exchangeOptions));
      if (reply.status !== 200) throw new Error(`exchange refused: ${reply.status} ${JSON.stringify(reply.body)}`);
      return String(reply.body.access_token);
    },
    get: (path) => send(`${url}${path}`, caPem, 'GET', undefined, {}),
    async applyTrustedIssuer(name, spec) {
      await apply(custom, namespace, 'trustedissuers', 'TrustedIssuer', name, { audiences: ['chaperone'], ...spec });
      await waitLoaded(custom, namespace, 'trustedissuers', name);
    },
    async applyDelegationPolicy(name, spec) {
      await apply(custom, namespace, 'delegationpolicies', 'DelegationPolicy', name, spec);
      await waitLoaded(custom, namespace, 'delegationpolicies', name);
    },
    sidecarIssuer: () => ({
      issuer,
      jwksUrl: `${url}${TOKEN_EXCHANGE_PATHS.jwks}`,
      jwksCaFile: caFile,
      tokenExchange: true,
      audiences: ['chaperone'],
      algorithms: ['ES256'],
    }),
    async logs() {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural: 'tokenexchangelogs',
      })) as { items: TokenExchangeLog[] };
      return list.items.sort((a, b) => a.spec.part - b.spec.part);
    },
    stop: () => operator.stop(),
  };
  return fixture;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function apply(
  custom: k8s.CustomObjectsApi,
  namespace: string,
  plural: string,
  kind: string,
  name: string,
  spec: unknown,
): Promise<void> {
  const body = { apiVersion: `${GROUP}/${VERSION}`, kind, metadata: { name, namespace }, spec };
  try {
    const existing = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural,
      name,
    })) as {
      metadata: k8s.V1ObjectMeta;
    };
    await custom.replaceNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural,
      name,
      body: { ...body, metadata: { ...body.metadata, resourceVersion: existing.metadata.resourceVersion } },
    });
  } catch (err) {
    if (!(err instanceof k8s.ApiException) || err.code !== 404) throw err;
    await custom.createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural, body });
  }
}

/** Waits until the exchange reports the object's current generation Ready (it loaded it). */
async function waitLoaded(
  custom: k8s.CustomObjectsApi,
  namespace: string,
  plural: string,
  name: string,
): Promise<void> {
  await poll(
    `${plural}/${name} loaded by the exchange`,
    async () => {
      const o = (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural,
        name,
      })) as {
        metadata: { generation?: number };
        status?: { conditions?: { type: string; status: string; observedGeneration?: number; message: string }[] };
      };
      const ready = o.status?.conditions?.find((c) => c.type === 'Ready');
      if (ready?.observedGeneration !== o.metadata.generation) return undefined;
      if (ready?.status === 'False') throw new Error(`${plural}/${name} not ready: ${ready.message}`);
      return ready?.status === 'True' ? true : undefined;
    },
    30_000,
  );
}
