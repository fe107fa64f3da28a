// kubectl chaperone approvals | approve NAME | deny NAME: the approver's side of held commands
// (docs/approvals.md). Listing shows what waits, with the requester chain and the statement; approve and
// deny append one decision naming the caller as the API server authenticates it (a SelfSubjectReview), so
// the decision passes admission only when that is who is calling. The sidecar counts the decisions itself.
import { parseArgs } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { GROUP, VERSION, tallyDecisions, type ApprovalRequest } from '@chaperone/api';
import { CLUSTER_OPTIONS, connect, describeError, type Cluster, type CommandIo } from '../audit/cluster.ts';
import { formatTable } from '../table.ts';

const PLURAL = 'approvalrequests';

export const APPROVALS_USAGE = `Usage:
  kubectl chaperone approvals [flags]                  held commands waiting for approval
  kubectl chaperone approve NAME [--comment TEXT] [flags]
  kubectl chaperone deny NAME [--comment TEXT] [flags]

approvals lists Pending requests (--all: every phase) with age, requester and its delegation chain,
approvals counted so far, expiry and the statement (parameters as masked by policy).

approve and deny add one decision to the request, naming you as the API server authenticates you. It is
refused unless you are one of the request's approvers or in one of its approverGroups, you are not the
requester or anyone in its delegation chain (unless the policy allows self-approval), you have not decided
it already, and it is still Pending. One deny ends the request; it is approved when requiredApprovals
distinct people approved. The held statement then runs once, on the agent's open connection.

Flags:
  --comment TEXT          why (kept in the request and in the audit trail)
  --all                   (approvals) every phase, not only Pending
  -n, --namespace NS      namespace (default: the context's)
  -A, --all-namespaces    (approvals) every namespace
  -o, --output FORMAT     (approvals) json or yaml (the ApprovalRequest objects)
  --kubeconfig FILE       kubeconfig (default: $KUBECONFIG, then ~/.kube/config)
  --context NAME          kubeconfig context
`;

/** "3m", "2h", "5d": kubectl's short age. */
function age(from: string | undefined, now: Date): string {
  if (from === undefined) return '<unknown>';
  const s = Math.max(0, Math.floor((now.getTime() - Date.parse(from)) / 1000));
  if (s < 120) return `${String(s)}s`;
  if (s < 7200) return `${String(Math.floor(s / 60))}m`;
  if (s < 172_800) return `${String(Math.floor(s / 3600))}h`;
  return `${String(Math.floor(s / 86_400))}d`;
}

function oneLine(text: string, max = 60): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** subject ← actor ← earlier actor, as the chain reads from the top. */
export function requesterChain(request: ApprovalRequest): string {
  const chain = request.spec.requester.chain ?? [];
  return [request.spec.requester.subject, ...[...chain].reverse().map((a) => a.subject)].join(' → ');
}

async function listRequests(cluster: Cluster): Promise<ApprovalRequest[]> {
  const list = (
    cluster.namespace === undefined
      ? await cluster.custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL })
      : await cluster.custom.listNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: cluster.namespace,
          plural: PLURAL,
        })
  ) as { items?: ApprovalRequest[] };
  return list.items ?? [];
}

export function approvalsTable(requests: readonly ApprovalRequest[], now: Date, namespaces: boolean): string {
  const rows = requests.map((r) => {
    const tally = tallyDecisions(r.spec, r.status?.decisions ?? []);
    const params = r.spec.command.parameters ?? [];
    const statement = oneLine(r.spec.command.text) + (params.length === 0 ? '' : ` [${params.join(', ')}]`);
    return [
      ...(namespaces ? [r.metadata.namespace ?? ''] : []),
      r.metadata.name ?? '',
      age(r.metadata.creationTimestamp, now),
      r.status?.phase ?? 'Pending',
      requesterChain(r),
      r.spec.resource,
      `${String(tally.approvals)}/${String(tally.required)}`,
      r.spec.expiresTime,
      oneLine(statement, 80),
    ];
  });
  return formatTable(
    [
      ...(namespaces ? ['NAMESPACE'] : []),
      'NAME',
      'AGE',
      'PHASE',
      'REQUESTER',
      'RESOURCE',
      'APPROVALS',
      'EXPIRES',
      'STATEMENT',
    ],
    rows,
  );
}

/** Who the API server says is calling. */
async function whoAmI(kc: k8s.KubeConfig): Promise<{ username: string; uid?: string; groups: string[] }> {
  const review = await kc.makeApiClient(k8s.AuthenticationV1Api).createSelfSubjectReview({
    body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' },
  });
  const user = review.status?.userInfo;
  if (user?.username === undefined || user.username === '') throw new Error('the API server did not say who you are');
  return {
    username: user.username,
    ...(user.uid === undefined || user.uid === '' ? {} : { uid: user.uid }),
    groups: user.groups ?? [],
  };
}

async function decide(
  cluster: Cluster,
  name: string,
  decision: 'approve' | 'deny',
  comment: string | undefined,
  io: CommandIo,
): Promise<number> {
  const namespace = cluster.namespace ?? 'default';
  const me = await whoAmI(cluster.kc);
  // Optimistic concurrency: the decision is appended to the list as read, at that resourceVersion.
  for (let attempt = 0; attempt < 5; attempt++) {
    const request = (await cluster.custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name,
    })) as ApprovalRequest;
    const phase = request.status?.phase ?? 'Pending';
    if (phase !== 'Pending') {
      io.stderr.write(`error: approvalrequest ${name} is ${phase}; it can no longer be decided\n`);
      return 1;
    }
    // Admission refuses a second decision too; an identical one (same second) would otherwise look like none.
    if ((request.status?.decisions ?? []).some((d) => d.approver.username === me.username)) {
      io.stderr.write(
        `error: ${me.username} decided approvalrequest ${name} already: an approver decides a request once\n`,
      );
      return 1;
    }
    const entry = {
      approver: { username: me.username, ...(me.uid === undefined ? {} : { uid: me.uid }), groups: me.groups },
      decision,
      time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      ...(comment === undefined ? {} : { comment }),
    };
    try {
      await cluster.custom.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace,
          plural: PLURAL,
          name,
          body: {
            metadata: { resourceVersion: request.metadata.resourceVersion },
            // A request the sidecar has not marked Pending yet has no status, whose phase is required.
            status: {
              ...(request.status === undefined ? { phase: 'Pending' } : {}),
              decisions: [...(request.status?.decisions ?? []), entry],
            },
          },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    } catch (err) {
      if (err instanceof k8s.ApiException && (err as k8s.ApiException<unknown>).code === 409) continue;
      throw err;
    }
    const after = tallyDecisions(request.spec, [...(request.status?.decisions ?? []), entry]);
    io.stdout.write(
      `approvalrequest.chaperone.dev/${name} ${decision === 'approve' ? 'approved' : 'denied'} by ${me.username}` +
        (decision === 'approve' ? ` (${String(after.approvals)}/${String(after.required)} approvals)` : '') +
        '\n',
    );
    return 0;
  }
  io.stderr.write(`error: approvalrequest ${name} kept changing; try again\n`);
  return 1;
}

/** `kubectl chaperone approvals|approve|deny`; `verb` is which one. */
export async function run(
  verb: 'approvals' | 'approve' | 'deny',
  args: string[],
  io: CommandIo,
  now: Date = new Date(),
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        ...CLUSTER_OPTIONS,
        output: { type: 'string', short: 'o' },
        comment: { type: 'string' },
        all: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n\n${APPROVALS_USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help === true) {
    io.stdout.write(APPROVALS_USAGE);
    return 0;
  }
  const output = values.output;
  if (output !== undefined && (verb !== 'approvals' || (output !== 'json' && output !== 'yaml'))) {
    io.stderr.write(`error: --output must be json or yaml, and only for approvals\n`);
    return 2;
  }
  if (verb === 'approvals' ? positionals.length > 0 : positionals.length !== 1) {
    io.stderr.write(
      `error: ${verb === 'approvals' ? 'unexpected arguments' : `${verb} takes one request NAME`}\n\n${APPROVALS_USAGE}`,
    );
    return 2;
  }
  if (verb !== 'approvals' && (values['all-namespaces'] === true || values.all === true)) {
    io.stderr.write(`error: ${verb} decides one request in one namespace\n`);
    return 2;
  }
  if (values.comment !== undefined && values.comment.length > 1024) {
    io.stderr.write(`error: --comment is at most 1024 characters\n`);
    return 2;
  }
  let cluster: Cluster;
  try {
    cluster = connect(values);
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
  try {
    if (verb !== 'approvals') return await decide(cluster, positionals[0] ?? '', verb, values.comment, io);
    const requests = (await listRequests(cluster))
      .filter((r) => values.all === true || (r.status?.phase ?? 'Pending') === 'Pending')
      .sort((a, b) => (a.metadata.creationTimestamp ?? '').localeCompare(b.metadata.creationTimestamp ?? ''));
    if (output === 'json') io.stdout.write(`${JSON.stringify({ items: requests }, null, 2)}\n`);
    else if (output === 'yaml') io.stdout.write(stringify({ items: requests }));
    else if (requests.length === 0) {
      io.stderr.write(`No ${values.all === true ? '' : 'pending '}approval requests found.\n`);
    } else io.stdout.write(approvalsTable(requests, now, cluster.namespace === undefined));
    return 0;
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}
