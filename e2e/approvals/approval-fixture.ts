// The world the approval tests run in, all real: a namespace with the shipped admission policy for
// approvals (config/admission/approval-decisions.yaml, bound to this namespace only), a pod bound to a node
// whose kubelet identity mints the sidecar's pod-bound token, the sidecar's shipped Role
// (config/rbac/sidecar-role.yaml) and the approvers' shipped ClusterRole (config/rbac/approver-role.yaml),
// people with client certificates (their groups as the API server authenticates them), a database, and the
// real sidecar process with approvals enabled, holding commands in that namespace with its own token.
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { parseAllDocuments } from 'yaml';
import { CLAIMS, GROUP, VERSION, type AccessPolicySpec, type ApprovalRequest } from '@chaperone/api';
import { controlPlaneEnv, directPgOptions, postgresEnv, testDir } from '../harness/env.ts';
import { clientIdentity, createTestNode, kubeletToken, type TestIdentity } from '../harness/identities.ts';
import { createTestNamespace, kubeConfig, statusOf } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { createTestIssuer, type TestIssuer } from '../harness/tokens.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { waitForServiceAccount } from '../injection/injection-fixture.ts';

export const PLURAL = 'approvalrequests';
const LABEL = 'chaperone.dev/approvals-test';

/** Approve rules on three tables, each with its own approval section; everything else is allowed. */
function approvalPolicy(table: string, approval: NonNullable<AccessPolicySpec['approval']>): AccessPolicySpec {
  return {
    resources: { names: ['test-db'] },
    rules: [
      {
        name: `${table}-writes`,
        decision: 'approve',
        match: { sql: { statementKinds: ['insert', 'update', 'delete'], relations: [`public.${table}`] } },
      },
      { name: 'everything-else', decision: 'allow', match: {} },
    ],
    defaultDecision: 'deny',
    approval,
  };
}

export const POLICIES: Record<string, AccessPolicySpec> = {
  payouts: approvalPolicy('payouts', {
    approverGroups: ['dba'],
    requiredApprovals: 1,
    timeout: '10m',
    allowSelfApproval: false,
  }),
  transfers: approvalPolicy('transfers', {
    approverGroups: ['dba'],
    requiredApprovals: 2,
    timeout: '10m',
    allowSelfApproval: false,
  }),
  refunds: approvalPolicy('refunds', {
    approverGroups: ['dba'],
    requiredApprovals: 1,
    timeout: '3s',
    allowSelfApproval: false,
  }),
  // Writes to reports are answered at once (wait: false); the identical statement sent again runs once approved.
  reports: {
    resources: { names: ['test-db'] },
    rules: [
      {
        name: 'report-writes',
        decision: 'approve',
        wait: false,
        match: { sql: { statementKinds: ['insert', 'update', 'delete'], relations: ['public.reports'] } },
      },
      { name: 'everything-else', decision: 'allow', match: {} },
    ],
    defaultDecision: 'deny',
    approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '10m', allowSelfApproval: false },
  },
};

/**
 * A sidecar of its own for masked reads (startSidecar's `policies`): reading accounts is held, and what an
 * approved read returns is masked (IBANs redacted). Alone, since masking rules also mask recorded parameters.
 */
export const MASKED_READS: Record<string, AccessPolicySpec> = {
  accounts: {
    resources: { names: ['test-db'] },
    rules: [
      {
        name: 'account-reads',
        decision: 'approve',
        match: { sql: { statementKinds: ['select'], relations: ['public.accounts'] } },
      },
      { name: 'everything-else', decision: 'allow', match: {} },
    ],
    defaultDecision: 'deny',
    approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '10m', allowSelfApproval: false },
    masking: [{ name: 'ibans', columns: ['public.accounts.iban'], strategy: 'redact' }],
  },
};

/** The accounts' IBANs, which must never reach the agent. */
export const IBANS = ['DE89370400440532013000', 'GB29NWBK60161331926819'];

export const SETUP_SQL = `
  create table payouts (id serial primary key, amount int not null, note text);
  create table transfers (id serial primary key, amount int not null);
  create table refunds (id serial primary key, amount int not null);
  create table reports (id serial primary key, amount int not null);
  create table accounts (id int primary key, owner text not null, iban text not null);
  insert into accounts values (1, 'Ada', 'DE89370400440532013000'), (2, 'Ben', 'GB29NWBK60161331926819');
`;

/** The requester: bob's pipeline, started by alice, run by an AI agent (the current actor). */
export const REQUESTER = 'bob@example.com';
export const CHAIN_ACTOR = 'alice@example.com';
export const AGENT = 'ai-agent-7';

export interface ApprovalWorld {
  readonly ns: string;
  readonly database: string;
  readonly custom: k8s.CustomObjectsApi;
  readonly pod: k8s.V1Pod;
  /** People: bob (the requester) and alice (in its chain) are dba members too; mallory is not. */
  readonly people: Record<'bob' | 'alice' | 'carol' | 'dave' | 'erin' | 'mallory', TestIdentity>;
  /**
   * Starts the sidecar (in `dir`, default a fresh one) holding commands in `ns` with its pod-bound token,
   * enforcing `policies` (default POLICIES).
   */
  startSidecar(t: TestContext, dir?: string, policies?: Record<string, AccessPolicySpec>): Promise<SidecarProcess>;
  /**
   * A token for the requester with its delegation chain, signed by a stand-in for the token exchange (the
   * sidecar believes chains only from an issuer marked tokenExchange); the subject's issuer is the
   * sidecar's test issuer.
   */
  requesterToken(sidecar: SidecarProcess): Promise<string>;
  /** Rows of a table, read directly (not through the sidecar). */
  count(table: string): Promise<number>;
  request(name: string): Promise<ApprovalRequest>;
  /** Every ApprovalRequest in the world's namespace. */
  requests(): Promise<ApprovalRequest[]>;
}

async function installAdmission(t: TestContext, ns: string, instance: string): Promise<void> {
  const admission = kubeConfig().makeApiClient(k8s.AdmissionregistrationV1Api);
  const text = readFileSync(join(REPO_ROOT, 'config', 'admission', 'approval-decisions.yaml'), 'utf8');
  for (const doc of parseAllDocuments(text)) {
    const object = doc.toJS() as { kind: string; metadata: { name: string } };
    if (object.kind !== 'ValidatingAdmissionPolicy') continue;
    const policy = object as k8s.V1ValidatingAdmissionPolicy;
    const name = `${object.metadata.name}-${instance}`;
    policy.metadata = { name };
    await admission.createValidatingAdmissionPolicy({ body: policy });
    t.after(() => admission.deleteValidatingAdmissionPolicy({ name }).then(() => undefined));
    await admission.createValidatingAdmissionPolicyBinding({
      body: {
        metadata: { name },
        spec: {
          policyName: name,
          validationActions: ['Deny'],
          matchResources: { namespaceSelector: { matchLabels: { [LABEL]: instance } } },
        },
      },
    });
    t.after(() => admission.deleteValidatingAdmissionPolicyBinding({ name }).then(() => undefined));
  }
  // The API server loads policies asynchronously: wait until one refuses what it must.
  const custom = kubeConfig().makeApiClient(k8s.CustomObjectsApi);
  await poll(
    'the approval admission policies to be enforced',
    async () => {
      try {
        await custom.createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: PLURAL,
          body: {
            apiVersion: `${GROUP}/${VERSION}`,
            kind: 'ApprovalRequest',
            metadata: { name: `probe-${randomBytes(3).toString('hex')}` },
            spec: {
              resource: 'probe',
              session: 'probe',
              requester: { subject: 'probe', issuer: 'probe' },
              command: { kind: 'sql', text: 'select 1' },
              policy: { name: 'probe', rule: 'probe' },
              requiredApprovals: 1,
              allowSelfApproval: false,
              expiresTime: '2030-01-01T00:00:00Z',
            },
          },
        });
        return undefined;
      } catch (err) {
        return statusOf(err)?.code === 403 ? true : undefined;
      }
    },
    60_000,
  );
}

export async function createApprovalWorld(t: TestContext): Promise<ApprovalWorld> {
  const instance = randomBytes(4).toString('hex');
  const admin = kubeConfig();
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  const custom = admin.makeApiClient(k8s.CustomObjectsApi);
  const ns = await createTestNamespace(t, { [LABEL]: instance });
  await waitForServiceAccount(core, ns, 'default');
  await installAdmission(t, ns, instance);

  // The sidecar's Role as shipped, bound to the pod's service account.
  const docs = parseAllDocuments(readFileSync(join(REPO_ROOT, 'config', 'rbac', 'sidecar-role.yaml'), 'utf8'));
  const role = docs.map((d) => d.toJS() as k8s.V1Role).find((d) => d.kind === 'Role');
  if (role === undefined) throw new Error('config/rbac/sidecar-role.yaml has no Role');
  await rbac.createNamespacedRole({
    namespace: ns,
    body: { metadata: { name: 'chaperone-sidecar' }, rules: role.rules ?? [] },
  });
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: {
      metadata: { name: 'chaperone-sidecar' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'chaperone-sidecar' },
      subjects: [{ kind: 'ServiceAccount', name: 'default', namespace: ns }],
    },
  });

  // The approvers' ClusterRole as shipped, bound in this namespace to everyone (admission decides who counts).
  const approverRole = parseAllDocuments(
    readFileSync(join(REPO_ROOT, 'config', 'rbac', 'approver-role.yaml'), 'utf8'),
  )[0]?.toJS() as k8s.V1ClusterRole;
  const clusterRole = `chaperone-approver-${instance}`;
  await rbac.createClusterRole({ body: { metadata: { name: clusterRole }, rules: approverRole.rules ?? [] } });
  t.after(() => rbac.deleteClusterRole({ name: clusterRole }).then(() => undefined));
  const people = {
    bob: await clientIdentity(REQUESTER, ['dba']),
    alice: await clientIdentity(CHAIN_ACTOR, ['dba']),
    carol: await clientIdentity('carol@example.com', ['dba']),
    dave: await clientIdentity('dave@example.com', ['dba']),
    erin: await clientIdentity('erin@example.com', ['dba']),
    mallory: await clientIdentity('mallory@example.com', ['developers']),
  };
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: {
      metadata: { name: 'approvers' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: clusterRole },
      subjects: Object.values(people).map((p) => ({
        kind: 'User',
        apiGroup: 'rbac.authorization.k8s.io',
        name: p.user,
      })),
    },
  });

  // The Node must exist (createTestNode says why); the pod tolerates every taint (never-Ready evictions).
  const nodeName = await createTestNode(core, t, `approvals-node-${instance}`, { [LABEL]: instance });
  const created = await core.createNamespacedPod({
    namespace: ns,
    body: {
      metadata: { name: 'agent' },
      spec: {
        nodeName,
        tolerations: [{ operator: 'Exists' }],
        containers: [{ name: 'agent', image: 'busybox', command: ['sleep', 'infinity'] }],
      },
    },
  });
  const pod = await core.readNamespacedPod({ namespace: ns, name: created.metadata?.name ?? '' });
  const database = await createTestDatabase(t, SETUP_SQL);
  const cp = controlPlaneEnv();
  const pgEnv = postgresEnv();

  const exchanges = new WeakMap<SidecarProcess, TestIssuer>();
  return {
    ns,
    database,
    custom,
    pod,
    people,
    async startSidecar(t2, dir = join(testDir(t2), `sidecar-${randomBytes(3).toString('hex')}`), policies = POLICIES) {
      mkdirSync(dir, { recursive: true });
      const tokenFile = join(dir, 'pod-token');
      writeFileSync(tokenFile, await kubeletToken(pod, undefined));
      const access = { server: cp.server, tokenFile, caFile: cp.caFile };
      const exchange = await createTestIssuer(join(dir, 'exchange-jwks.json'), 'https://exchange.test.chaperone.dev');
      const sidecar = await spawnSidecar({
        dir,
        extraIssuers: [
          {
            issuer: exchange.issuer,
            jwksFile: exchange.jwksFile,
            tokenExchange: true,
            audiences: ['chaperone'],
            algorithms: ['RS256'],
          },
        ],
        upstream: {
          host: 'localhost',
          port: pgEnv.port,
          database,
          user: pgEnv.user,
          password: pgEnv.password,
          caFile: pgEnv.caFile,
        },
        policies,
        policyNamespace: ns,
        listener: { resource: { namespace: ns, labels: {} } },
        pod: { namespace: ns, name: pod.metadata?.name ?? '', uid: pod.metadata?.uid ?? '' },
        approvals: { kubernetes: { ...access, namespace: ns } },
        // Sessions written with the same pod-bound token, so `kubectl chaperone verify` sees the trail.
        audit: {
          spoolDir: join(dir, 'audit'),
          kubernetes: { ...access, namespace: ns },
          exportJsonLines: true,
          flushIntervalMs: 200,
        },
        logLevel: 'debug',
      });
      t2.after(() => sidecar.stop());
      exchanges.set(sidecar, exchange);
      return sidecar;
    },
    requesterToken(sidecar) {
      const exchange = exchanges.get(sidecar);
      if (exchange === undefined) throw new Error('requesterToken: a sidecar this fixture did not start');
      const iss = sidecar.issuer.issuer;
      return exchange.sign({
        sub: REQUESTER,
        [CLAIMS.subjectIssuer]: iss,
        [CLAIMS.exchange]: { id: 'approval-fixture', record: 'approval-fixture' },
        act: { sub: AGENT, iss, act: { sub: CHAIN_ACTOR, iss } },
      });
    },
    async count(table) {
      const client = new pg.Client(directPgOptions(database));
      await client.connect();
      try {
        const r = await client.query<{ n: string }>(`select count(*) as n from ${table}`);
        return Number(r.rows[0]?.n ?? -1);
      } finally {
        await client.end();
      }
    },
    async request(name) {
      return (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: PLURAL,
        name,
      })) as ApprovalRequest;
    },
    async requests() {
      const list = (await custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: PLURAL,
      })) as { items: ApprovalRequest[] };
      return list.items;
    },
  };
}

/** A psql process whose output is read as it comes (notices go to stderr). */
export interface PsqlRun {
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  readonly exitCode: () => number | null;
  signal(signal: NodeJS.Signals): void;
}

export function startPsql(env: NodeJS.ProcessEnv, args: readonly string[], input?: string): PsqlRun {
  const child = spawn('psql', ['-X', '-v', 'VERBOSITY=verbose', ...args], {
    env,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr?.on('data', (c: Buffer) => (err += c.toString('utf8')));
  if (input !== undefined) child.stdin?.end(input);
  let code: number | null = null;
  const exited = new Promise<number | null>((resolve) => {
    child.on('close', (c) => {
      code = c;
      resolve(c);
    });
  });
  return {
    stdout: () => out,
    stderr: () => err,
    exited,
    exitCode: () => code,
    signal: (s) => child.kill(s),
  };
}

const NOTICE = /ApprovalRequest ([a-z0-9-]+)\/([a-z0-9-]+) /;

/** The request a held statement names in its notice, once the notice has arrived. */
export function requestNamed(text: () => string, after = 0): Promise<string> {
  return poll('the approval notice', () => {
    const match = NOTICE.exec(text().slice(after));
    return Promise.resolve(match?.[2]);
  });
}
