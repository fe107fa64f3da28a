// The nested-agents step of `make demo` (e2e/demo.ts): the platform team trusts the cluster's issuer and an
// agents' OIDC issuer and allows CI job -> AI agent -> script; the CI job's pod token and the agent's own
// token make a child token, the agent's token and the script's make a grandchild; the script queries
// through the injected sidecar; the exchange records are listed, verified and traced from the Session.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type Session } from '@chaperone/api';
import { REPO_ROOT } from '../harness/tools.ts';
import { startOidcIssuer } from './oidc-issuer.ts';

type Show = (
  command: string,
  args: string[],
  options?: { env?: NodeJS.ProcessEnv; input?: string; display?: string },
) => string;

export interface NestedAgentsDemo {
  readonly step: (title: string) => void;
  readonly note: (text: string) => void;
  readonly show: Show;
  readonly showFailure: Show;
  readonly until: <T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms?: number) => Promise<T>;
  readonly kube: (...args: string[]) => string;
  readonly kubeIn: (input: string, ...args: string[]) => string;
  readonly custom: k8s.CustomObjectsApi;
  readonly core: k8s.CoreV1Api;
  readonly runDir: string;
  /** The cluster's service-account issuer. */
  readonly issuer: string;
  /** The operator's HTTPS server (webhooks, token exchange). */
  readonly webhookPort: number;
  /** The CI job's pod-bound token (the agent container's projected token). */
  readonly podTokenFile: string;
  /** The agent container's environment (PGHOST/PGPORT of the sidecar). */
  readonly agentEnv: NodeJS.ProcessEnv;
}

function claims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

/** Runs the step; resolves with the number of client sessions it opened through the sidecar. */
export async function nestedAgents(d: NestedAgentsDemo): Promise<number> {
  d.step('Nested agents: the CI job hands work to an AI agent, the agent to a script (RFC 8693 token exchange)');
  d.note('the agents get their own identity from an OIDC issuer (here a small HTTPS issuer on loopback, as SPIRE');
  d.note("or a CI provider would be); the platform team trusts it and the cluster's issuer, and says who may act");
  const agents = await startOidcIssuer();
  try {
    const indent = (pem: string) => pem.trimEnd().split('\n').join('\n      ');
    d.kubeIn(
      `apiVersion: chaperone.dev/v1alpha1
kind: TrustedIssuer
metadata: {name: cluster, namespace: chaperone-system}
spec:
  issuer: ${d.issuer}
  type: kubernetes
  kinds: [{subject: 'system:serviceaccount:ci:*', kind: ci}]
---
apiVersion: chaperone.dev/v1alpha1
kind: TrustedIssuer
metadata: {name: agents, namespace: chaperone-system}
spec:
  issuer: ${agents.issuer}
  type: oidc
  oidc:
    algorithms: [ES256]
    caBundle: |
      ${indent(agents.caPem)}
  kinds: [{subject: 'agent:*', kind: ai-agent}, {subject: 'script:*', kind: script}]
---
apiVersion: chaperone.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: ci, namespace: chaperone-system}
spec:
  rules:
    - {name: ci-to-agents, from: [{kinds: [ci]}], to: [{kinds: [ai-agent]}], maxDepth: 2, maxLifetime: 10m,
       resources: ['urn:chaperone:resource:ci:*'], scopes: ['db:*']}
    - {name: agents-to-scripts, from: [{kinds: [ai-agent]}], to: [{kinds: [script]}], maxDepth: 2, maxLifetime: 5m}
`,
      'apply',
      '-f',
      '-',
    );
    await d.until('the exchange to load the issuers and the rules', async () => {
      const ready = async (plural: string, name: string) => {
        const o = (await d.custom.getNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: 'chaperone-system',
          plural,
          name,
        })) as { status?: { conditions?: { status: string }[] } };
        return o.status?.conditions?.[0]?.status === 'True';
      };
      const all = await Promise.all([
        ready('trustedissuers', 'cluster'),
        ready('trustedissuers', 'agents'),
        ready('delegationpolicies', 'ci'),
      ]);
      return all.every(Boolean) ? true : undefined;
    });
    d.kube('get', 'trustedissuers,delegationpolicies', '-n', 'chaperone-system', '-o', 'wide');

    const secret = await d.core.readNamespacedSecret({ namespace: 'chaperone-system', name: 'chaperone-webhook-tls' });
    const caFile = join(d.runDir, 'operator-ca.crt');
    writeFileSync(caFile, Buffer.from(secret.data?.['ca.crt'] ?? '', 'base64'));
    const agentTokenFile = join(d.runDir, 'agent.token');
    const scriptTokenFile = join(d.runDir, 'script.token');
    writeFileSync(agentTokenFile, await agents.sign({ sub: 'agent:report-writer' }));
    writeFileSync(scriptTokenFile, await agents.sign({ sub: 'script:etl' }));
    const url = `https://127.0.0.1:${String(d.webhookPort)}/identity/v1`;
    const cli = join(REPO_ROOT, 'cli/src/bin/kubectl-chaperone.ts');
    const exchange = (display: string, ...args: string[]) =>
      d
        .show(process.execPath, [cli, 'token', 'exchange', '--url', url, '--cacert', caFile, ...args], {
          display: `kubectl chaperone token exchange --url ${url} --cacert operator-ca.crt ${display}`,
        })
        .trim();
    d.note("the CI job mints the agent's token: its own pod-bound token as subject, the agent's token as actor");
    const child = exchange(
      '--subject-token-file $CHAPERONE_TOKEN_FILE --actor-token-file agent.token --resource ci/orders-db --scope "db:read"',
      ...['--subject-token-file', d.podTokenFile, '--actor-token-file', agentTokenFile],
      ...['--resource', 'ci/orders-db', '--scope', 'db:read'],
    );
    const c = claims(child);
    console.log(`child:      sub=${String(c.sub)} act=${JSON.stringify(c.act)}`);
    console.log(
      `            resources=${JSON.stringify(c['chaperone.dev/resources'])} scope=${String(c.scope)} expires in ${String(Number(c.exp) - Number(c.iat))} s`,
    );
    d.note('the agent hands a narrower token to its script: the chain nests, the current actor outermost');
    const childFile = join(d.runDir, 'child.token');
    writeFileSync(childFile, child);
    const grandchild = exchange(
      '--subject-token-file child.token --actor-token-file script.token',
      ...['--subject-token-file', childFile, '--actor-token-file', scriptTokenFile],
    );
    console.log(`grandchild: sub=${String(claims(grandchild).sub)} act=${JSON.stringify(claims(grandchild).act)}`);
    d.note('narrowing is enforced: the script asks for a scope its parent does not have');
    d.showFailure(
      process.execPath,
      [
        cli,
        'token',
        'exchange',
        '--url',
        url,
        '--cacert',
        caFile,
        '--subject-token-file',
        childFile,
        '--scope',
        'db:read db:write',
      ],
      {
        display: 'kubectl chaperone token exchange ... --subject-token-file child.token --scope "db:read db:write"',
      },
    );
    d.note('the script queries through the same sidecar with its own token; the sidecar verifies the whole chain');
    const env = { ...d.agentEnv, PGPASSWORD: grandchild };
    d.show('psql', ['-X', '-c', 'select count(*) as orders from orders'], {
      env,
      display: 'PGPASSWORD="$(cat grandchild.token)" psql -c "select count(*) as orders from orders"',
    });
    const session = await d.until('the Session of the script', async () => {
      const list = (await d.custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: 'ci',
        plural: 'sessions',
      })) as { items: Session[] };
      return list.items.find((s) => s.spec.identity.chain?.length === 2 && s.status?.phase === 'Closed');
    });
    const chaperone = (...args: string[]) =>
      d.show(process.execPath, [cli, ...args], { display: `kubectl chaperone ${args.join(' ')}` });
    d.note('every exchange is evidence: hash-chained records with a signed head, listed and verified');
    chaperone('token', 'log', '--exchange-namespace', 'chaperone-system', '--verify');
    d.note("the auditor follows the script's session back through every exchange to the CI pod's token");
    chaperone('token', 'trace', session.metadata.name ?? '', '-n', 'ci', '--exchange-namespace', 'chaperone-system');
    return 1;
  } finally {
    await agents.close();
  }
}
