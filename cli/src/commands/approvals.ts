// kubectl chaperone approvals | approve NAME [--for D --scope S] | deny NAME | revoke NAME: the approver's
// side of held commands and time-bound grants (docs/approvals.md). Listing shows what waits, with the requester chain and the statement; approve and
// deny append one decision naming the caller as the API server authenticates it (a SelfSubjectReview), so
// the decision passes admission only when that is who is calling. The sidecar counts the decisions itself.
import * as k8s from '@kubernetes/client-node';
import { stringify } from 'yaml';
import {
  GRANT_SCOPES,
  GROUP,
  VERSION,
  parseGoDuration,
  tallyDecisions,
  type ApprovalRequest,
  type GrantScope,
} from '@chaperone/api';
import { CLUSTER_OPTIONS, connect, describeError, type Cluster, type CommandIo } from '../audit/cluster.ts';
import { formatTable } from '../table.ts';
import { parseCommandLine } from '../command-line.ts';

const PLURAL = 'approvalrequests';

export const APPROVALS_USAGE = `Usage:
  kubectl chaperone approvals [flags]                  held commands waiting for approval
  kubectl chaperone approve NAME [--comment TEXT] [flags]
  kubectl chaperone approve NAME --for DURATION [--scope fingerprint|session|resource] [--comment TEXT] [flags]
  kubectl chaperone deny NAME [--comment TEXT] [flags]
  kubectl chaperone revoke NAME [--comment TEXT] [flags]

approvals lists Pending requests (--all: every phase) with age, requester and its delegation chain,
approvals counted so far, expiry and the statement (parameters as masked by policy).

approve and deny add one decision to the request, naming you as the API server authenticates you. It is
refused unless you are one of the request's approvers or in one of its approverGroups, you are not the
requester or anyone in its delegation chain (unless the policy allows self-approval), you have not decided
it already, and it is still Pending. One deny ends the request; it is approved when requiredApprovals
distinct people approved. The held statement then runs once, on the agent's open connection.

approve --for DURATION (15m, 1h; within the policy's approval.grants.maxDuration) also grants, for that
long from the approval, later commands the same rule holds for the same requester chain on the resource,
limited by --scope (one of the policy's approval.grants.scopes; default fingerprint): fingerprint, the same
statement up to its constants; session, any such command of the same session; resource, any such command.
They run without a new request, each recorded with this request's name and its approvers. The grant is
made only when every counted approval asks for one (the narrowest combination applies).

revoke ends the grant of an approved request at once (the sidecar follows the request); approvers of the
request and anyone of its requester chain may revoke. Commands already running are not stopped.

Flags:
  --comment TEXT          why (kept in the request and in the audit trail)
  --for DURATION          (approve) also grant later matching commands for this long
  --scope SCOPE           (approve, with --for) fingerprint (default), session or resource
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

/** The phase, with a grant's state: "Approved (grant session until …)", "Approved (grant Revoked)". */
export function phaseText(r: ApprovalRequest, now: Date): string {
  const phase = r.status?.phase ?? 'Pending';
  const grant = r.status?.grant;
  if (grant === undefined) return phase;
  const ended = grant.endReason ?? (Date.parse(grant.expiresTime) <= now.getTime() ? 'Expired' : undefined);
  return ended === undefined
    ? `${phase} (grant ${grant.scopes.join('+')} until ${grant.expiresTime})`
    : `${phase} (grant ${ended})`;
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
      phaseText(r, now),
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
  grant: { readonly scope: GrantScope; readonly durationSeconds: number } | undefined,
  io: CommandIo,
): Promise<number> {
  const namespace = cluster.namespace ?? 'default';
  const me = await whoAmI(cluster.kc);
  // Optimistic concurrency: the decision is appended to the list as read, at that resourceVersion.
  for (let attempt = 0; attempt < 5; attempt++) {
    const request = await readRequest(cluster, namespace, name);
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
      ...(grant === undefined ? {} : { grant }),
    };
    if (grant !== undefined) {
      const allowed = request.spec.grants;
      if (allowed === undefined || !allowed.scopes.includes(grant.scope)) {
        io.stderr.write(
          `error: approvalrequest ${name} allows ${allowed === undefined ? 'no grant (its policy has no approval.grants)' : `grants of scope ${allowed.scopes.join(', ')} only`}\n`,
        );
        return 1;
      }
      if (grant.durationSeconds > allowed.maxDurationSeconds) {
        io.stderr.write(
          `error: approvalrequest ${name} allows grants of at most ${String(allowed.maxDurationSeconds)}s\n`,
        );
        return 1;
      }
    }
    try {
      await patchRequestStatus(cluster, namespace, name, request, {
        // A request the sidecar has not marked Pending yet has no status, whose phase is required.
        ...(request.status === undefined ? { phase: 'Pending' } : {}),
        decisions: [...(request.status?.decisions ?? []), entry],
      });
    } catch (err) {
      if (err instanceof k8s.ApiException && (err as k8s.ApiException<unknown>).code === 409) continue;
      throw err;
    }
    const after = tallyDecisions(request.spec, [...(request.status?.decisions ?? []), entry]);
    io.stdout.write(
      `approvalrequest.chaperone.dev/${name} ${decision === 'approve' ? 'approved' : 'denied'} by ${me.username}` +
        (decision === 'approve' ? ` (${String(after.approvals)}/${String(after.required)} approvals)` : '') +
        (grant === undefined ? '' : `, granting ${grant.scope} for ${String(grant.durationSeconds)}s`) +
        '\n',
    );
    return 0;
  }
  io.stderr.write(`error: approvalrequest ${name} kept changing; try again\n`);
  return 1;
}

/** Ends the grant of an approved request: sets status.revocation naming the caller. */
async function revoke(cluster: Cluster, name: string, comment: string | undefined, io: CommandIo): Promise<number> {
  const namespace = cluster.namespace ?? 'default';
  const me = await whoAmI(cluster.kc);
  const request = await readRequest(cluster, namespace, name);
  const grant = request.status?.grant;
  if (grant === undefined) {
    io.stderr.write(`error: approvalrequest ${name} has no grant to revoke\n`);
    return 1;
  }
  if (request.status?.revocation !== undefined) {
    io.stderr.write(
      `error: the grant of approvalrequest ${name} was revoked already by ${request.status.revocation.revokedBy.username}\n`,
    );
    return 1;
  }
  await patchRequestStatus(cluster, namespace, name, request, {
    revocation: {
      revokedBy: {
        username: me.username,
        ...(me.uid === undefined ? {} : { uid: me.uid }),
        groups: me.groups,
      },
      time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      ...(comment === undefined ? {} : { comment }),
    },
  });
  io.stdout.write(
    `approvalrequest.chaperone.dev/${name} grant revoked by ${me.username}` +
      (grant.endReason === undefined ? '' : ` (it had ended already: ${grant.endReason})`) +
      '\n',
  );
  return 0;
}

function readRequest(cluster: Cluster, namespace: string, name: string): Promise<ApprovalRequest> {
  return cluster.custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: PLURAL,
    name,
  }) as Promise<ApprovalRequest>;
}

/** Merges `status` into the request at the resourceVersion it was read at (a 409 when it changed since). */
async function patchRequestStatus(
  cluster: Cluster,
  namespace: string,
  name: string,
  request: ApprovalRequest,
  status: Record<string, unknown>,
): Promise<void> {
  await cluster.custom.patchNamespacedCustomObjectStatus(
    {
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name,
      body: { metadata: { resourceVersion: request.metadata.resourceVersion }, status },
    },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
}

/** `--for` and `--scope` as a decision's grant; a message when they are wrong. */
export function grantFlags(
  forValue: string | undefined,
  scopeValue: string | undefined,
): { readonly scope: GrantScope; readonly durationSeconds: number } | undefined | string {
  if (forValue === undefined) return scopeValue === undefined ? undefined : '--scope needs --for DURATION';
  let ms: number;
  try {
    ms = parseGoDuration(forValue);
  } catch {
    return `--for ${forValue} is not a duration (for example 15m or 1h)`;
  }
  const seconds = Math.floor(ms / 1000);
  if (seconds < 1 || seconds > 86_400) return '--for must be between 1s and 24h';
  const scope = scopeValue ?? 'fingerprint';
  if (!(GRANT_SCOPES as readonly string[]).includes(scope)) {
    return `--scope must be one of ${GRANT_SCOPES.join(', ')}, not ${scope}`;
  }
  return { scope: scope as GrantScope, durationSeconds: seconds };
}

/** `kubectl chaperone approvals|approve|deny|revoke`; `verb` is which one. */
export async function run(
  verb: 'approvals' | 'approve' | 'deny' | 'revoke',
  args: string[],
  io: CommandIo,
  now: Date = new Date(),
): Promise<number> {
  const parsed = parseCommandLine(
    args,
    {
      ...CLUSTER_OPTIONS,
      output: { type: 'string', short: 'o' },
      comment: { type: 'string' },
      for: { type: 'string' },
      scope: { type: 'string' },
      all: { type: 'boolean' },
    },
    APPROVALS_USAGE,
    io,
  );
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
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
  const grant = grantFlags(values.for, values.scope);
  if (typeof grant === 'string' || (grant !== undefined && verb !== 'approve')) {
    io.stderr.write(`error: ${typeof grant === 'string' ? grant : '--for and --scope go with approve only'}\n`);
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
    if (verb === 'revoke') return await revoke(cluster, positionals[0] ?? '', values.comment, io);
    if (verb !== 'approvals') return await decide(cluster, positionals[0] ?? '', verb, values.comment, grant, io);
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
