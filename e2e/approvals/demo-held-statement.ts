// The approvals step of `make demo` (e2e/demo.ts), on real pods and in the local-process fallback alike: the
// agent's write to public.refunds is held by the example policy's approve rule; psql (in the agent container,
// or as a local process) shows the notice and waits; a person of the payments-oncall group (her own client
// certificate) lists and approves the request with `kubectl chaperone`; the statement runs once on the
// agent's still-open connection.
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdirSync, symlinkSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION, type AccessPolicy } from '@chaperone/api';
import { clientIdentity } from '../harness/identities.ts';
import { REPO_ROOT } from '../harness/tools.ts';

export interface HeldStatementDemo {
  readonly step: (title: string) => void;
  readonly note: (text: string) => void;
  readonly show: (command: string, args: string[], options?: { env?: NodeJS.ProcessEnv; display?: string }) => string;
  readonly until: <T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms?: number) => Promise<T>;
  readonly kube: (...args: string[]) => string;
  readonly kubectl: string;
  readonly custom: k8s.CustomObjectsApi;
  readonly runDir: string;
  readonly controlPlane: { readonly server: string; readonly caFile: string };
  /** psql straight to PostgreSQL as the table owner (setup only). */
  readonly directEnv: NodeJS.ProcessEnv;
  /**
   * Starts psql as the agent, with its token, through its sidecar, running `sql` (in the agent container on
   * real pods, as a local process otherwise), and how the command is shown.
   */
  readonly startAgentPsql: (sql: string) => {
    readonly child: ChildProcessWithoutNullStreams;
    readonly display: string;
  };
  /** The chart installed the admission policies already (real pods); else they are applied here. */
  readonly admissionInstalled: boolean;
  /** Resolves once the sidecar enforces a policy bundle other than `before`. */
  readonly policyReloaded: (before: string) => Promise<string>;
  readonly currentDigest: () => string;
}

/** Runs the step; returns how many client sessions of the agent it opened (for the auditor's view). */
export async function heldStatementApproved(demo: HeldStatementDemo): Promise<number> {
  const { step, note, show, kube, until } = demo;
  step('A held statement: the agent writes a refund, a person approves it, it runs once on the open connection');
  show('psql', ['-X', '-q', '-c', 'create table refunds (id serial primary key, order_id int, amount numeric(10,2))'], {
    env: demo.directEnv,
  });
  note('the example policy holds refunds for payments-oncall, but only in Berlin office hours; for the demo');
  note('the time window goes (any time, then):');
  const policy = (await demo.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: 'ci',
    plural: 'accesspolicies',
    name: 'orders-readonly',
  })) as AccessPolicy;
  const index = policy.spec.rules.findIndex((r) => r.name === 'refunds-need-approval');
  const before = demo.currentDigest();
  kube(
    'patch',
    'accesspolicy',
    'orders-readonly',
    '-n',
    'ci',
    '--type=json',
    '-p',
    `[{"op":"remove","path":"/spec/rules/${String(index)}/when"}]`,
  );
  await demo.policyReloaded(before);
  note('approvers: the chaperone-approver ClusterRole for the payments-oncall group, and the admission policy');
  note('that checks every decision is made by who the API server says (both shipped in config/ and the chart)');
  kube('apply', '-f', join(REPO_ROOT, 'config/rbac/approver-role.yaml'));
  kube(
    'create',
    'rolebinding',
    'payments-oncall-approves',
    '-n',
    'ci',
    '--clusterrole=chaperone-approver',
    '--group=payments-oncall',
  );
  if (!demo.admissionInstalled) kube('apply', '-f', join(REPO_ROOT, 'config/admission/approval-decisions.yaml'));

  note('the agent, as before (its token, through the sidecar); psql prints the notice and waits:');
  const sql = 'INSERT INTO refunds (order_id, amount) VALUES (1002, 42.00)';
  const { child: agent, display } = demo.startAgentPsql(sql);
  console.log(`\x1b[2m$ ${display} &\x1b[0m`);
  let out = '';
  let err = '';
  agent.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  agent.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => agent.once('close', resolve));
  const name = await until('the notice', () => / ApprovalRequest ci\/([a-z0-9-]+) /.exec(err)?.[1]);
  await new Promise((r) => setTimeout(r, 100)); // the notice's DETAIL and HINT lines
  console.log(err.trimEnd());

  const paula = await clientIdentity('paula@example.com', ['payments-oncall'], demo.controlPlane);
  const pluginDir = join(demo.runDir, 'approvals-bin');
  mkdirSync(pluginDir, { recursive: true });
  symlinkSync(join(REPO_ROOT, 'cli/src/bin/kubectl-chaperone.ts'), join(pluginDir, 'kubectl-chaperone'));
  const asPaula = {
    ...process.env,
    KUBECONFIG: paula.kubeconfig,
    PATH: [pluginDir, dirname(process.execPath), process.env.PATH ?? ''].join(delimiter),
  };
  note(`paula@example.com (client certificate, group payments-oncall) looks at what waits, and approves it:`);
  show(demo.kubectl, ['chaperone', 'approvals', '-n', 'ci'], {
    env: asPaula,
    display: 'kubectl chaperone approvals -n ci',
  });
  show(demo.kubectl, ['chaperone', 'approve', name, '-n', 'ci', '--comment', 'refund for order 1002, ticket PAY-7'], {
    env: asPaula,
    display: `kubectl chaperone approve ${name} -n ci --comment "refund for order 1002, ticket PAY-7"`,
  });
  const code = await exited;
  note("the agent's psql, still on the same connection, gets its result:");
  console.log(out.trimEnd());
  if (code !== 0) throw new Error(`the held statement did not run: psql exited ${String(code)}\n${err}`);
  kube('get', 'approvalrequests', '-n', 'ci');
  const decided = (await demo.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: 'ci',
    plural: 'approvalrequests',
    name,
  })) as { status?: { decisions?: { approver: { username: string }; time: string; comment?: string }[] } };
  for (const d of decided.status?.decisions ?? []) {
    console.log(`  decided by ${d.approver.username} at ${d.time}${d.comment === undefined ? '' : ` (${d.comment})`}`);
  }
  show('psql', ['-X', '-c', 'select * from refunds'], { env: demo.directEnv });
  return 1;
}
