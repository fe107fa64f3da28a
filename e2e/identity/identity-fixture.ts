// The parties of the identity tests: a CI job's pod (a Pod object with a service account whose
// TokenRequest tokens are bound to it), an external OIDC issuer for AI agents and scripts, and the
// TrustedIssuers and DelegationPolicy the platform team would apply for them.
import type { TestContext } from 'node:test';
import type * as k8s from '@kubernetes/client-node';
import { resourceUri, type DelegationPolicySpec } from '@chaperone/api';
import { controlPlaneEnv } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { podToken } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import type { ExchangeFixture } from './exchange-fixture.ts';
import { startOidcIssuer, type OidcIssuer } from './oidc-issuer.ts';

export const CI_ACCOUNT = 'ci-runner';

export interface IdentityWorld {
  /** Namespace of the CI job (its pod, its service account, its resources). */
  readonly namespace: string;
  readonly agents: OidcIssuer;
  readonly pod: k8s.V1Pod;
  /** A fresh TokenRequest token bound to the CI job's pod, audience chaperone. */
  ciToken(): Promise<string>;
  resource(name: string): string;
}

export async function createIdentityWorld(t: TestContext, exchange: ExchangeFixture): Promise<IdentityWorld> {
  const core = exchange.core;
  const namespace = await createTestNamespace(t);
  await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: CI_ACCOUNT } } });
  await poll('service account', async () =>
    core.readNamespacedServiceAccount({ namespace, name: CI_ACCOUNT }).catch(() => undefined),
  );
  // The CI job's pod: stored by the API server (pods never run here), so TokenRequest can bind tokens to it.
  const pod = await core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name: 'ci-job', labels: { app: 'ci' } },
      spec: { serviceAccountName: CI_ACCOUNT, containers: [{ name: 'job', image: 'example.invalid/ci:1' }] },
    },
  });
  const agents = await startOidcIssuer();
  t.after(() => agents.close());
  await exchange.applyTrustedIssuer('cluster', {
    issuer: controlPlaneEnv().issuer,
    type: 'kubernetes',
    kinds: [{ subject: `system:serviceaccount:${namespace}:ci-*`, kind: 'ci' }],
  });
  await exchange.applyTrustedIssuer('agents', {
    issuer: agents.issuer,
    type: 'oidc',
    oidc: { caBundle: agents.caPem, algorithms: ['ES256'], cacheSeconds: 300 },
    kinds: [
      { subject: 'agent:*', kind: 'ai-agent' },
      { subject: 'script:*', kind: 'script' },
    ],
  });
  return {
    namespace,
    agents,
    pod,
    ciToken: () => podToken(core, pod, 'chaperone'),
    resource: (name) => resourceUri(namespace, name),
  };
}

/** CI jobs may hand work to AI agents, agents to scripts and to other agents; at most two hops. */
export function ciDelegation(world: IdentityWorld): DelegationPolicySpec {
  return {
    rules: [
      {
        name: 'ci-to-agents',
        from: [{ kinds: ['ci'] }],
        to: [{ issuer: world.agents.issuer, kinds: ['ai-agent'] }],
        maxDepth: 2,
        maxLifetime: '10m',
        audiences: ['chaperone'],
        resources: [world.resource('*')],
        scopes: ['db:*'],
      },
      {
        name: 'agents-to-scripts-and-agents',
        from: [{ kinds: ['ai-agent'] }],
        to: [{ issuer: world.agents.issuer, kinds: ['script', 'ai-agent'] }],
        maxDepth: 2,
        maxLifetime: '5m',
        audiences: ['chaperone'],
      },
    ],
  };
}

/** The payload of a JWT, unverified (tests look at what the exchange issued). */
export function claimsOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}
