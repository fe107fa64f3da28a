// kubectl chaperone verify [SESSION] [--all]: proves the audit trail was not altered or cut.
// Exit 0 when clean, 1 when any error-level problem is found (or the cluster cannot be read), 2 on usage.
import { readFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { CLUSTER_OPTIONS, describeError, type CommandIo } from '../audit/cluster.ts';
import { readTrail } from '../audit/read-trail.ts';
import type { EvidenceBundle } from '../audit/evidence.ts';
import {
  AUTHORITY_OPTIONS,
  AUTHORITY_USAGE,
  UNCERTIFIED_OPTIONS,
  UNCERTIFIED_USAGE,
  refuseUncertified,
} from '../audit/authority.ts';
import { EVIDENCE_STORE_OPTIONS, EVIDENCE_STORE_USAGE } from '../audit/evidence-records.ts';
import { renderReport } from '../audit/render-report.ts';
import { groupSessions } from '../audit/session-view.ts';
import { loadTrustedKeys } from '../audit/trusted-keys.ts';
import { restrictReport, verifyTrail, type BaselineHead } from '../audit/verify-trail.ts';
import { findSession } from './sessions.ts';
import { parseCommandLine } from '../command-line.ts';

export const VERIFY_USAGE = `Usage:
  kubectl chaperone verify SESSION [flags]   one session (object name of any part, or session id)
  kubectl chaperone verify --all [flags]     every session in the namespace (-A: in every namespace)

Checks every record's hash, the hash links and seq continuity within and across continuation parts, the
links between sessions of one pod, each part's signed chain head, each signer's certificate from the
operator's audit authority, and that every head in the operator's newest checkpoint is still there.
Exit 0: verified; 1: altered or incomplete (the report says what and where); 2: usage.
When the authority's keys are known, a part signed by a key without the operator's certificate for its pod
(on the part or another part of the pod signed by that key) is an error (exit 1) unless --allow-uncertified
makes it a warning.

Flags:
  --trusted-keys FILE     JWKS of sidecar keys to trust (default: each Session's own spec.signer key)
  --baseline FILE         an earlier evidence export; every head it saw must still be there, unchanged
${AUTHORITY_USAGE}${UNCERTIFIED_USAGE}${EVIDENCE_STORE_USAGE}  -n, --namespace NS      namespace (default: the context's)
  -A, --all-namespaces    every namespace (with --all)
  -o, --output FORMAT     json or yaml (the structured report)
  --kubeconfig FILE, --context NAME
`;

export async function run(args: string[], io: CommandIo): Promise<number> {
  const parsed = parseCommandLine(
    args,
    {
      ...CLUSTER_OPTIONS,
      all: { type: 'boolean' },
      output: { type: 'string', short: 'o' },
      'trusted-keys': { type: 'string' },
      baseline: { type: 'string' },
      ...AUTHORITY_OPTIONS,
      ...UNCERTIFIED_OPTIONS,
      ...EVIDENCE_STORE_OPTIONS,
    },
    VERIFY_USAGE,
    io,
  );
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  const target = positionals[0];
  if (positionals.length > 1 || (target === undefined) === (values.all !== true)) {
    io.stderr.write(`error: name one SESSION or use --all\n\n${VERIFY_USAGE}`);
    return 2;
  }
  const requireCertified = refuseUncertified(values, io);
  if (requireCertified === 2) return 2;
  const output = values.output;
  if (output !== undefined && output !== 'json' && output !== 'yaml') {
    io.stderr.write('error: --output must be json or yaml\n');
    return 2;
  }
  try {
    const trustedKeys =
      values['trusted-keys'] === undefined ? undefined : await loadTrustedKeys(values['trusted-keys']);
    const baseline = values.baseline === undefined ? undefined : await loadBaseline(values.baseline);
    const { cluster, sessions, retention, authority } = await readTrail(values);
    const namespace = cluster.namespace;
    let report = await verifyTrail(sessions, {
      trustedKeys,
      baseline,
      authorityKeys: authority.keys,
      checkpoints: authority.checkpoints,
      requireCertified,
      checkpointScope: (e) => namespace === undefined || e.object.startsWith(`${namespace}/`),
      retentionFor: (ns, r) => retention.get(`${ns}/${r}`),
    });
    if (target !== undefined) {
      // Every session in scope was verified (links between sessions of a pod need them); report on one.
      const found = findSession(groupSessions(sessions), target);
      const [one] = found;
      if (one === undefined || found.length !== 1) {
        io.stderr.write(
          `error: session ${target} ${found.length === 0 ? 'not found' : 'is ambiguous; use -n'}${cluster.namespace === undefined ? '' : ` in namespace ${cluster.namespace}`}\n`,
        );
        return 1;
      }
      report = restrictReport(report, new Set([one.sessionId]));
    }
    if (output === 'json') io.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else if (output === 'yaml') io.stdout.write(stringify(report));
    else io.stdout.write(renderReport(report, authority.source));
    return report.ok ? 0 : 1;
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}

/** The heads an earlier evidence export saw, as the baseline for rollback and deletion checks. */
async function loadBaseline(path: string): Promise<BaselineHead[]> {
  const bundle = JSON.parse(await readFile(path, 'utf8')) as Partial<EvidenceBundle>;
  return (bundle.sessions ?? []).flatMap((s) => {
    const last = s.spec.records.at(-1);
    if (last === undefined) return [];
    return [
      {
        object: `${s.metadata.namespace ?? ''}/${s.metadata.name ?? ''}`,
        sessionId: s.spec.sessionId,
        seq: last.seq,
        hash: last.hash,
      },
    ];
  });
}
