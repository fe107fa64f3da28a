// kubectl chaperone sessions [show SESSION]: the auditor's view of Session objects.
//   sessions [--identity S] [--actor S] [--resource R] [--since T] [--until T] [--decision allow|deny|approve]
//            [-n NS | -A] [-o json|yaml]
//   sessions show SESSION [-n NS] [-o json|yaml]     (SESSION: object name of any part, or the session id)
import { stringify } from 'yaml';
import type { Session } from '@chaperone/api';
import { CLUSTER_OPTIONS, connect, describeError, listSessions, type CommandIo } from '../audit/cluster.ts';
import { EVIDENCE_STORE_OPTIONS, EVIDENCE_STORE_USAGE, withStoredRecords } from '../audit/evidence-records.ts';
import {
  describeSession,
  filterSessions,
  groupSessions,
  parseTimeFlag,
  sessionTable,
  type SessionGroup,
} from '../audit/session-view.ts';
import { parseCommandLine } from '../command-line.ts';

export const SESSIONS_USAGE = `Usage:
  kubectl chaperone sessions [flags]              list sessions (one row per session, all parts together)
  kubectl chaperone sessions show SESSION [flags] identity, delegation chain and records as a timeline

Filters (list):
  --identity SUBJECT      verified subject (* matches anything)
  --actor SUBJECT         anyone in the delegation chain, or the subject
  --resource NAME         ProtectedResource name
  --since TIME|DURATION   sessions active at or after TIME (RFC 3339) or DURATION ago (e.g. 24h)
  --until TIME|DURATION   sessions started at or before TIME
  --decision D            sessions with at least one allow, deny or approve decision

Flags:
  -n, --namespace NS      namespace (default: the context's)
  -A, --all-namespaces    every namespace
  -o, --output FORMAT     json or yaml (the Session objects)
  --kubeconfig FILE       kubeconfig (default: $KUBECONFIG, then ~/.kube/config)
  --context NAME          kubeconfig context
${EVIDENCE_STORE_USAGE}`;

const DECISIONS = ['allow', 'deny', 'approve'] as const;

export async function run(args: string[], io: CommandIo, now: Date = new Date()): Promise<number> {
  const parsed = parseCommandLine(
    args,
    {
      ...CLUSTER_OPTIONS,
      output: { type: 'string', short: 'o' },
      identity: { type: 'string' },
      actor: { type: 'string' },
      resource: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      decision: { type: 'string' },
      ...EVIDENCE_STORE_OPTIONS,
    },
    SESSIONS_USAGE,
    io,
  );
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  const output = values.output;
  if (output !== undefined && output !== 'json' && output !== 'yaml') {
    io.stderr.write(`error: --output must be json or yaml\n`);
    return 2;
  }
  const decision = values.decision;
  if (decision !== undefined && !(DECISIONS as readonly string[]).includes(decision)) {
    io.stderr.write(`error: --decision must be one of ${DECISIONS.join(', ')}\n`);
    return 2;
  }
  const [sub, target, ...rest] = positionals;
  if ((sub !== undefined && sub !== 'show' && sub !== 'list') || rest.length > 0) {
    io.stderr.write(`error: unexpected arguments: ${positionals.join(' ')}\n\n${SESSIONS_USAGE}`);
    return 2;
  }
  if (sub === 'show' && target === undefined) {
    io.stderr.write(`error: sessions show needs a SESSION (object name or session id)\n`);
    return 2;
  }

  try {
    const cluster = connect(values);
    let sessions = await listSessions(cluster);
    // Records kept in an evidence store are read from it when asked to; the list works from the objects.
    const stored = sessions.filter((x) => x.spec.store !== undefined).length;
    if (values['evidence-store'] !== undefined) sessions = await withStoredRecords(sessions, values['evidence-store']);
    else if (stored > 0 && (sub === 'show' || decision !== undefined)) {
      io.stderr.write(
        `note: ${String(stored)} Session(s) keep their records in an evidence store; pass --evidence-store URL to see them\n`,
      );
    }
    const groups = groupSessions(sessions);
    if (sub === 'show') {
      const found = findSession(groups, target ?? '');
      if (found.length === 0) {
        io.stderr.write(
          `error: session ${target ?? ''} not found${cluster.namespace === undefined ? '' : ` in namespace ${cluster.namespace}`}\n`,
        );
        return 1;
      }
      const [g, ...more] = found;
      if (g === undefined || more.length > 0) {
        io.stderr.write(`error: ${target ?? ''} names sessions in several namespaces; use -n\n`);
        return 1;
      }
      if (output === 'json' || output === 'yaml') io.stdout.write(formatObjects(g.parts, output));
      else io.stdout.write(describeSession(g));
      return 0;
    }
    const selected = filterSessions(groups, {
      identity: values.identity,
      actor: values.actor,
      resource: values.resource,
      since: values.since === undefined ? undefined : parseTimeFlag(values.since, now),
      until: values.until === undefined ? undefined : parseTimeFlag(values.until, now),
      decision: decision as (typeof DECISIONS)[number] | undefined,
    });
    if (output === 'json' || output === 'yaml') {
      io.stdout.write(
        formatObjects(
          selected.flatMap((g) => g.parts),
          output,
        ),
      );
    } else if (selected.length === 0) {
      io.stderr.write(
        `No sessions found${cluster.namespace === undefined ? '' : ` in ${cluster.namespace} namespace`}.\n`,
      );
    } else {
      io.stdout.write(sessionTable(selected, cluster.namespace === undefined, now));
    }
    return 0;
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}

export function findSession(groups: readonly SessionGroup[], target: string): SessionGroup[] {
  return groups.filter((g) => g.sessionId === target || g.parts.some((p) => p.metadata.name === target));
}

function formatObjects(items: readonly Session[], output: 'json' | 'yaml'): string {
  const list = { apiVersion: 'v1', kind: 'List', items: items.map(withoutManagedFields) };
  return output === 'json' ? `${JSON.stringify(list, null, 2)}\n` : stringify(list);
}

function withoutManagedFields(s: Session): Session {
  const { managedFields: _managed, ...metadata } = s.metadata as Session['metadata'] & { managedFields?: unknown };
  return { ...s, metadata };
}
