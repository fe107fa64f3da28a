// Approval latency: how long after an approver's decision is written the held statement runs. A real
// sidecar (approvals on, its pod-bound token, the shipped Role and admission policy) holds an INSERT for
// approval; node-postgres waits on the connection; as soon as the notice arrives an approver (client
// certificate, group dba) appends a decision through the API server; the INSERT returns the database's own
// clock_timestamp() of the moment it ran. Reports p50/p99 of
//   decision sent → statement running      (what a person waiting on the agent sees after pressing approve)
//   decision acknowledged → statement running (API server write done → the sidecar's watch → forward → run)
//   decision write (sent → acknowledged)    (the API server and admission, for comparison)
// Same host, same clock. Starts its own control plane (unless CHAPERONE_TEST_KUBECONFIG points at one)
// and PostgreSQL, and stops everything by PID.
//
//   node bench/approval-latency.ts [--count 40]
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { parseAllDocuments } from 'yaml';
import { GROUP, VERSION, type AccessPolicySpec } from '@chaperone/api';
import { applyCrds } from '../e2e/harness/kube.ts';
import { startControlPlane, type ControlPlane } from '../e2e/harness/control-plane.ts';
import { clientIdentity, kubeletToken } from '../e2e/harness/identities.ts';
import { startPostgres, type PostgresCluster } from '../e2e/harness/postgres.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { REPO_ROOT } from '../e2e/harness/tools.ts';

export interface ApprovalLatency {
  readonly count: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface ApprovalBenchResult {
  readonly approvals: number;
  readonly sentToRunning: ApprovalLatency;
  readonly acknowledgedToRunning: ApprovalLatency;
  readonly decisionWrite: ApprovalLatency;
}

function summarise(samples: readonly number[]): ApprovalLatency {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  const round = (n: number) => Math.round(n * 1000) / 1000;
  return { count: sorted.length, p50Ms: round(at(0.5)), p99Ms: round(at(0.99)), maxMs: round(at(1)) };
}

const POLICY: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    { name: 'ledger-writes', decision: 'approve', match: { sql: { statementKinds: ['insert'] } } },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
  approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '5m', allowSelfApproval: false },
};

/** Wall-clock now in ms with sub-ms precision (the same clock PostgreSQL's clock_timestamp reads). */
const nowMs = () => performance.timeOrigin + performance.now();

export async function runApprovalLatencyBench(options: { count?: number } = {}): Promise<ApprovalBenchResult> {
  const count = options.count ?? 40;
  const runDir = createRunDirectory();
  let controlPlane: ControlPlane | undefined;
  let postgres: PostgresCluster | undefined;
  let sidecar: SidecarProcess | undefined;
  const admin = new k8s.KubeConfig();
  let cp: { server: string; caFile: string };
  const existing = process.env.CHAPERONE_TEST_KUBECONFIG;
  if (existing === undefined) {
    controlPlane = await startControlPlane(runDir);
    await applyCrds(controlPlane.kubeconfig);
    admin.loadFromFile(controlPlane.kubeconfig);
    cp = { server: controlPlane.server, caFile: controlPlane.caFile };
  } else {
    admin.loadFromFile(existing);
    cp = { server: admin.getCurrentCluster()?.server ?? '', caFile: process.env.CHAPERONE_TEST_CA_FILE ?? '' };
  }
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  const admission = admin.makeApiClient(k8s.AdmissionregistrationV1Api);
  const suffix = randomBytes(4).toString('hex');
  const ns = `chaperone-bench-approvals-${suffix}`;
  const policyNames: string[] = [];
  const nodes: string[] = [];
  try {
    await core.createNamespace({ body: { metadata: { name: ns, labels: { 'chaperone.dev/bench': suffix } } } });
    for (let i = 0; i < 600; i++) {
      try {
        await core.readNamespacedServiceAccount({ namespace: ns, name: 'default' });
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // The shipped admission policy for approvals, bound to this namespace (decisions pay its cost).
    const vap = readFileSync(join(REPO_ROOT, 'config', 'admission', 'approval-decisions.yaml'), 'utf8');
    for (const doc of parseAllDocuments(vap)) {
      const object = doc.toJS() as k8s.V1ValidatingAdmissionPolicy & { metadata: { name: string } };
      if (object.kind !== 'ValidatingAdmissionPolicy') continue;
      const name = `${object.metadata.name}-${suffix}`;
      object.metadata = { name };
      await admission.createValidatingAdmissionPolicy({ body: object });
      await admission.createValidatingAdmissionPolicyBinding({
        body: {
          metadata: { name },
          spec: {
            policyName: name,
            validationActions: ['Deny'],
            matchResources: { namespaceSelector: { matchLabels: { 'chaperone.dev/bench': suffix } } },
          },
        },
      });
      policyNames.push(name);
    }
    const role = parseAllDocuments(readFileSync(join(REPO_ROOT, 'config', 'rbac', 'sidecar-role.yaml'), 'utf8'))
      .map((d) => d.toJS() as k8s.V1Role)
      .find((d) => d.kind === 'Role');
    await rbac.createNamespacedRole({
      namespace: ns,
      body: { metadata: { name: 'sidecar' }, rules: role?.rules ?? [] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: ns,
      body: {
        metadata: { name: 'sidecar' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'sidecar' },
        subjects: [{ kind: 'ServiceAccount', name: 'default', namespace: ns }],
      },
    });
    const approverRole = parseAllDocuments(
      readFileSync(join(REPO_ROOT, 'config', 'rbac', 'approver-role.yaml'), 'utf8'),
    )[0]?.toJS() as k8s.V1ClusterRole;
    await rbac.createNamespacedRole({
      namespace: ns,
      body: { metadata: { name: 'approver' }, rules: approverRole.rules ?? [] },
    });
    const approver = await clientIdentity('bench-approver@example.com', ['dba'], cp);
    await rbac.createNamespacedRoleBinding({
      namespace: ns,
      body: {
        metadata: { name: 'approver' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'approver' },
        subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: approver.user }],
      },
    });
    // The Node the pod is bound to must exist: the pod garbage collector deletes a pod on a missing Node
    // after ~40 s, and with it the token the sidecar files requests with (e2e/harness/identities.ts,
    // createTestNode). No kubelet runs for it: tainted, and the pod tolerates every taint.
    const nodeName = `bench-node-${suffix}`;
    await core.createNode({
      body: {
        metadata: { name: nodeName },
        spec: { taints: [{ key: 'chaperone.dev/test-node', effect: 'NoSchedule' }] },
      },
    });
    nodes.push(nodeName);
    const created = await core.createNamespacedPod({
      namespace: ns,
      body: {
        metadata: { name: 'agent' },
        spec: {
          nodeName,
          tolerations: [{ operator: 'Exists' }],
          containers: [{ name: 'agent', image: 'busybox' }],
        },
      },
    });
    const pod = await core.readNamespacedPod({ namespace: ns, name: created.metadata?.name ?? '' });

    postgres = await startPostgres(runDir);
    const direct = new pg.Client({
      host: postgres.host,
      port: postgres.port,
      user: postgres.user,
      password: postgres.password,
      database: postgres.database,
      ssl: { ca: readFileSync(postgres.caFile, 'utf8'), servername: 'localhost' },
    });
    await direct.connect();
    await direct.query('create table ledger (id serial primary key, n int not null)');
    await direct.end();

    const dir = join(runDir, 'approval-sidecar');
    mkdirSync(dir, { recursive: true });
    const tokenFile = join(dir, 'pod-token');
    writeFileSync(tokenFile, await kubeletToken(pod, undefined, cp));
    sidecar = await spawnSidecar({
      dir,
      upstream: {
        host: 'localhost',
        port: postgres.port,
        database: postgres.database,
        user: postgres.user,
        password: postgres.password,
        caFile: postgres.caFile,
      },
      policies: { approvals: POLICY },
      policyNamespace: ns,
      listener: { resource: { namespace: ns, labels: {} } },
      pod: { namespace: ns, name: 'agent', uid: pod.metadata?.uid ?? '' },
      approvals: { kubernetes: { server: cp.server, tokenFile, caFile: cp.caFile, namespace: ns } },
      logLevel: 'warn',
    });
    const client = new pg.Client({
      host: sidecar.host,
      port: sidecar.port,
      user: 'agent',
      database: 'agent-db',
      password: await sidecar.issuer.sign({ sub: 'system:serviceaccount:bench:agent' }, { expiresIn: 3600 }),
      ssl: false,
    });
    let onNotice: ((name: string) => void) | undefined;
    client.on('notice', (n) => {
      const name = / ApprovalRequest [a-z0-9-]+\/([a-z0-9-]+) /.exec(n.message ?? '')?.[1];
      if (name !== undefined) onNotice?.(name);
    });
    await client.connect();
    const custom = approver.kc.makeApiClient(k8s.CustomObjectsApi);
    const sent: number[] = [];
    const acknowledged: number[] = [];
    const write: number[] = [];
    const warmup = 5;
    for (let i = 0; i < warmup + count; i++) {
      const noticed = new Promise<string>((resolve) => {
        onNotice = resolve;
      });
      const ran = client.query<{ at: string }>(
        'INSERT INTO ledger(n) VALUES ($1) RETURNING extract(epoch from clock_timestamp())::text AS at',
        [i],
      );
      const name = await noticed;
      const t0 = nowMs();
      await custom.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: ns,
          plural: 'approvalrequests',
          name,
          body: {
            status: {
              phase: 'Pending',
              decisions: [
                {
                  approver: { username: approver.user, groups: ['dba'] },
                  decision: 'approve',
                  time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
                },
              ],
            },
          },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
      const t1 = nowMs();
      const result = await ran;
      const running = Number(result.rows[0]?.at ?? 'NaN') * 1000;
      if (i < warmup) continue;
      sent.push(running - t0);
      acknowledged.push(running - t1);
      write.push(t1 - t0);
    }
    await client.end();
    return {
      approvals: count,
      sentToRunning: summarise(sent),
      acknowledgedToRunning: summarise(acknowledged),
      decisionWrite: summarise(write),
    };
  } finally {
    await sidecar?.stop().catch(() => undefined);
    await postgres?.stop().catch(() => undefined);
    for (const name of policyNames) {
      await admission.deleteValidatingAdmissionPolicyBinding({ name }).catch(() => undefined);
      await admission.deleteValidatingAdmissionPolicy({ name }).catch(() => undefined);
    }
    await core.deleteNamespace({ name: ns }).catch(() => undefined);
    for (const name of nodes) await core.deleteNode({ name }).catch(() => undefined);
    await controlPlane?.stop();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { count: { type: 'string' } } });
  const r = await runApprovalLatencyBench(values.count === undefined ? {} : { count: Number(values.count) });
  console.log(JSON.stringify(r, null, 2));
}
