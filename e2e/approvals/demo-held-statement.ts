// The approvals step of `make demo` (e2e/demo.ts), on real pods and in the local-process fallback alike: the
// agent's write to public.refunds is held by the approve rule of examples/accesspolicy-refunds-approval.yaml,
// added to the agent's policy for this step; psql (in the agent container,
// or as a local process) shows the notice and waits; a person of the payments-oncall group (her own client
// certificate) lists and approves the request with `kubectl chaperone`; the statement runs once on the
// agent's still-open connection.
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { parse } from 'yaml';
import { GROUP, VERSION, type AccessPolicySpec } from '@chaperone/api';
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
  note('the security team lets this agent file refunds, each approved by a person: the approve rule and approval');
  note('section of examples/accesspolicy-refunds-approval.yaml (without its office-hours window and its table');
  note('restriction, for the demo: an approve rule limited to some tables is not yet seen as a grant of writes),');
  note("added to the agent's policy. A held write is a granted write: from now on the agent's new sessions log in");
  note('with the main credential, not the read-only one.');
  const example = parse(readFileSync(join(REPO_ROOT, 'examples/accesspolicy-refunds-approval.yaml'), 'utf8')) as {
    spec: AccessPolicySpec;
  };
  const rule =
    example.spec.rules.find((r) => r.name === 'refunds-need-approval') ?? assert.fail('no refunds rule in the example');
  // Without its table restriction too: the sidecar's write probes do not see an approve rule limited to some
  // tables yet (docs/postgres-engine.md), so the session would stay on the read-only login and PostgreSQL
  // would refuse the approved INSERT.
  const { when: _officeHours, ...refunds } = {
    ...rule,
    match: { sql: { statementKinds: rule.match.sql?.statementKinds ?? ['insert'] } },
  };
  const before = demo.currentDigest();
  kube(
    'patch',
    'accesspolicy',
    'orders-readonly',
    '-n',
    'ci',
    '--type=json',
    '-p',
    JSON.stringify([
      { op: 'add', path: '/spec/rules/-', value: refunds },
      { op: 'add', path: '/spec/approval', value: example.spec.approval },
    ]),
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
  let ended = false;
  void exited.then(() => (ended = true));
  const name = await until('the notice', () => {
    const found = / ApprovalRequest ci\/([a-z0-9-]+) /.exec(err)?.[1];
    if (found === undefined && ended) throw new Error(`psql ended without a held statement:\n${out}${err}`);
    return found;
  });
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
