// Token exchange latency: RFC 8693 requests over HTTPS (keep-alive) to the exchange in this process, against
// a real API server, with a real OIDC issuer on loopback for the actor tokens. Each timed request is the
// whole round trip: parse, authenticate both tokens (a TokenReview for service-account subjects), decide,
// write the evidence record into a TokenExchangeLog (group commit) and sign. Three runs:
//   sa-subject     a pod's service-account token delegates to an AI agent (TokenReview + JWKS), sequential
//   child-subject  that child token delegates to a script (the exchange's own key + JWKS), sequential
//   concurrent     child-subject with 8 requests in flight (evidence writes shared)
// and, as a yardstick, a small ConfigMap patch to the same API server (the evidence write is one such
// write, of a larger object, per batch of exchanges).
//
//   node bench/token-exchange.ts [--requests 300]
//
// Starts its own control plane (unless CHAPERONE_TEST_KUBECONFIG points at one) and stops it by PID.
import { Agent, request } from 'node:https';
import { parseArgs } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import {
  GROUP,
  TOKEN_EXCHANGE_GRANT_TYPE,
  TOKEN_EXCHANGE_PATHS,
  TOKEN_TYPES,
  VERSION,
  resourceUri,
} from '@chaperone/api';
import { startControlPlane, type ControlPlane } from '../e2e/harness/control-plane.ts';
import { applyCrds } from '../e2e/harness/kube.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { startOidcIssuer } from '../e2e/identity/oidc-issuer.ts';
import {
  createCertificateAuthority,
  issueServingCertificate,
} from '../operator/src/certificates/certificate-authority.ts';
import { startTokenExchange } from '../operator/src/identity/start-token-exchange.ts';
import { silentLogger } from '../operator/src/observability/logger.ts';
import { startAdmissionServer } from '../operator/src/webhooks/admission-server.ts';

export interface ExchangeLatency {
  readonly requests: number;
  readonly concurrency: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly perSecond: number;
}

export interface TokenExchangeBenchResult {
  readonly saSubject: ExchangeLatency;
  readonly childSubject: ExchangeLatency;
  readonly concurrent: ExchangeLatency;
  /** Yardstick: one small write to the same API server (a ConfigMap annotation patch), sequential. */
  readonly apiWrite: ExchangeLatency;
  /** Evidence records written (one per issued token) and the TokenExchangeLog objects holding them. */
  readonly records: number;
  readonly logObjects: number;
}

function summarise(samples: number[], concurrency: number, wallMs: number): ExchangeLatency {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  const round = (n: number) => Math.round(n * 1000) / 1000;
  return {
    requests: sorted.length,
    concurrency,
    p50Ms: round(at(0.5)),
    p99Ms: round(at(0.99)),
    maxMs: round(at(1)),
    perSecond: Math.round((sorted.length / wallMs) * 1000),
  };
}

async function waitReady(custom: k8s.CustomObjectsApi, namespace: string, plural: string, name: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const o = (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural, name })) as {
      status?: { conditions?: { type: string; status: string }[] };
    };
    if (o.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${plural}/${name} never became Ready`);
}

export async function runTokenExchangeBench(options: { requests?: number } = {}): Promise<TokenExchangeBenchResult> {
  const requests = options.requests ?? 300;
  let controlPlane: ControlPlane | undefined;
  const kc = new k8s.KubeConfig();
  const existing = process.env.CHAPERONE_TEST_KUBECONFIG;
  let issuer = process.env.CHAPERONE_TEST_ISSUER ?? 'https://kubernetes.default.svc.cluster.local';
  if (existing === undefined) {
    controlPlane = await startControlPlane(createRunDirectory());
    await applyCrds(controlPlane.kubeconfig);
    kc.loadFromFile(controlPlane.kubeconfig);
    issuer = controlPlane.issuer;
  } else {
    kc.loadFromFile(existing);
  }
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const namespace = `chaperone-bench-exchange-${Date.now().toString(36)}`;
  const agents = await startOidcIssuer();
  let exchange: Awaited<ReturnType<typeof startTokenExchange>> | undefined;
  let server: Awaited<ReturnType<typeof startAdmissionServer>> | undefined;
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  try {
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'ci-runner' } } });
    const apply = (plural: string, kind: string, name: string, spec: unknown) =>
      custom.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural,
        body: { apiVersion: `${GROUP}/${VERSION}`, kind, metadata: { name }, spec },
      });
    await apply('trustedissuers', 'TrustedIssuer', 'cluster', {
      issuer,
      type: 'kubernetes',
      audiences: ['chaperone'],
      kinds: [{ subject: 'system:serviceaccount:*:ci-*', kind: 'ci' }],
    });
    await apply('trustedissuers', 'TrustedIssuer', 'agents', {
      issuer: agents.issuer,
      type: 'oidc',
      audiences: ['chaperone'],
      oidc: { caBundle: agents.caPem, algorithms: ['ES256'], cacheSeconds: 3600 },
      kinds: [
        { subject: 'agent:*', kind: 'ai-agent' },
        { subject: 'script:*', kind: 'script' },
      ],
    });
    await apply('delegationpolicies', 'DelegationPolicy', 'bench', {
      rules: [
        {
          name: 'ci-to-agents',
          from: [{ kinds: ['ci'] }],
          to: [{ kinds: ['ai-agent'] }],
          maxDepth: 2,
          maxLifetime: '30m',
          audiences: ['chaperone'],
        },
        {
          name: 'agents-to-scripts',
          from: [{ kinds: ['ai-agent'] }],
          to: [{ kinds: ['script'] }],
          maxDepth: 2,
          maxLifetime: '30m',
          audiences: ['chaperone'],
        },
      ],
    });
    const ca = await createCertificateAuthority({ commonName: 'bench CA', lifetimeMs: 86_400_000, now: new Date() });
    const serving = await issueServingCertificate({
      ca,
      commonName: '127.0.0.1',
      dnsNames: [],
      ipAddresses: ['127.0.0.1'],
      lifetimeMs: 86_400_000,
      now: new Date(),
    });
    exchange = await startTokenExchange({
      kubeConfig: kc,
      logger: silentLogger,
      namespace,
      url: 'https://127.0.0.1',
      replica: 'bench',
    });
    server = await startAdmissionServer({
      host: '127.0.0.1',
      port: 0,
      certPem: serving.certPem,
      keyPem: serving.keyPem,
      handlers: {},
      routes: exchange.routes,
      logger: silentLogger,
    });
    await waitReady(custom, namespace, 'trustedissuers', 'cluster');
    await waitReady(custom, namespace, 'trustedissuers', 'agents');
    await waitReady(custom, namespace, 'delegationpolicies', 'bench');
    const url = server.url(TOKEN_EXCHANGE_PATHS.token);
    const post = (form: Record<string, string>): Promise<{ status: number; body: string }> =>
      new Promise((resolve, reject) => {
        const req = request(
          url,
          { method: 'POST', ca: ca.certPem, agent, headers: { 'content-type': 'application/x-www-form-urlencoded' } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          },
        );
        req.on('error', reject);
        req.end(new URLSearchParams(form).toString());
      });
    const saToken =
      (
        await core.createNamespacedServiceAccountToken({
          namespace,
          name: 'ci-runner',
          body: { spec: { audiences: ['chaperone'], expirationSeconds: 3600 } },
        })
      ).status?.token ?? '';
    const agentToken = await agents.sign({ sub: 'agent:report-writer' }, { expiresIn: 3600 });
    const scriptToken = await agents.sign({ sub: 'script:etl' }, { expiresIn: 3600 });
    const form = (subject: string, actor: string) => ({
      grant_type: TOKEN_EXCHANGE_GRANT_TYPE,
      subject_token: subject,
      subject_token_type: TOKEN_TYPES.jwt,
      actor_token: actor,
      actor_token_type: TOKEN_TYPES.jwt,
      resource: resourceUri(namespace, 'orders-db'),
      scope: 'db:read',
    });
    const timed = async (body: Record<string, string>): Promise<{ ms: number; token: string }> => {
      const t0 = performance.now();
      const r = await post(body);
      const ms = performance.now() - t0;
      if (r.status !== 200) throw new Error(`exchange refused: ${r.body}`);
      return { ms, token: (JSON.parse(r.body) as { access_token: string }).access_token };
    };
    // Warm up: connections, JIT, the OIDC key cache, the first log part.
    let child = '';
    for (let i = 0; i < 30; i++) child = (await timed(form(saToken, agentToken))).token;
    for (let i = 0; i < 30; i++) await timed(form(child, scriptToken));

    const sequential = async (body: Record<string, string>): Promise<ExchangeLatency> => {
      const samples: number[] = [];
      const started = performance.now();
      for (let i = 0; i < requests; i++) samples.push((await timed(body)).ms);
      return summarise(samples, 1, performance.now() - started);
    };
    const saSubject = await sequential(form(saToken, agentToken));
    const childSubject = await sequential(form(child, scriptToken));
    const concurrency = 8;
    const samples: number[] = [];
    const started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < requests) {
          next++;
          samples.push((await timed(form(child, scriptToken))).ms);
        }
      }),
    );
    const concurrent = summarise(samples, concurrency, performance.now() - started);
    // The API server's own cost for a small write on this machine now, to read the numbers above against.
    await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: 'yardstick' } } });
    const writes: number[] = [];
    const writesStarted = performance.now();
    for (let i = 0; i < Math.min(requests, 100); i++) {
      const t0 = performance.now();
      await core.patchNamespacedConfigMap(
        { namespace, name: 'yardstick', body: { metadata: { annotations: { n: String(i) } } } },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
      writes.push(performance.now() - t0);
    }
    const apiWrite = summarise(writes, 1, performance.now() - writesStarted);
    const logs = (await custom.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: 'tokenexchangelogs',
    })) as { items: { spec: { records: unknown[] } }[] };
    return {
      saSubject,
      childSubject,
      concurrent,
      apiWrite,
      records: logs.items.reduce((n, l) => n + l.spec.records.length, 0),
      logObjects: logs.items.length,
    };
  } finally {
    agent.destroy();
    await server?.close();
    await exchange?.stop();
    await agents.close();
    await core.deleteNamespace({ name: namespace }).catch(() => undefined);
    await controlPlane?.stop();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { requests: { type: 'string' } } });
  const result = await runTokenExchangeBench({
    ...(values.requests === undefined ? {} : { requests: Number(values.requests) }),
  });
  console.log(JSON.stringify(result, null, 2));
}
