// Whether a session's effective policies could let any write through: asked once, when the session opens,
// to choose its upstream login. A session whose policies grant no write runs read-only in the database too
// (the resource's least-privilege credential when it has one, default_transaction_read_only=on always), so
// PostgreSQL itself refuses a write the statement analysis missed (docs/postgres-engine.md).
//
// The policies are WebAssembly, not data, so the question is put to them: one probe command per statement
// kind that needs write access, with no relations and no functions (an allow rule restricted to some
// relations or functions matches those vacuously: it could allow a write to them) and either side-effect
// flag. Reads (select, explain, copy-to) are probed with side effects only: a side-effecting function
// called from a SELECT writes. Transaction control and SET are not probed; in a read-only session the pins
// refuse every form of them that would lift the guard (analysis/session-state.ts, settingRefusal). Any
// probe allowed, or held for approval, means the session may write.
import { STATEMENT_KINDS, type SqlStatementFacts, type StatementKind } from '@chaperone/api';
import type { PolicyDecider } from '../../core/agent-session.ts';
import type { PolicyRequest } from '../../core/policy/policy-engine.ts';
import { factsFingerprint } from './sql-command.ts';

/** Kinds that read (or only steer the session); everything else needs write access. */
const NON_WRITING_KINDS: ReadonlySet<StatementKind> = new Set([
  'select',
  'show',
  'explain',
  'copy-to',
  'transaction',
  'set',
  'prepare',
]);
/** Reads that write when a called function has side effects. */
const READS_WITH_SIDE_EFFECTS: readonly StatementKind[] = ['select', 'explain', 'copy-to'];

interface Probe {
  readonly command: PolicyRequest['command'];
  readonly fingerprint: string;
}

function probe(kind: StatementKind, sideEffects: boolean): Probe {
  const facts: SqlStatementFacts[] = [{ kind, relations: [], functions: [], sideEffects }];
  return { command: { type: 'sql', statements: facts }, fingerprint: factsFingerprint(facts) };
}

/** The probe commands, built once. */
export const WRITE_PROBES: readonly Probe[] = [
  ...STATEMENT_KINDS.filter((k) => !NON_WRITING_KINDS.has(k)).flatMap((k) => [probe(k, true), probe(k, false)]),
  ...READS_WITH_SIDE_EFFECTS.map((k) => probe(k, true)),
];

/**
 * Whether any policy in force could allow (or hold for approval) a write for this identity, resource and
 * session. Asks the policy engine directly: a probe is not a command, so it is neither recorded nor counted.
 */
export function policiesGrantWrite(policy: PolicyDecider, request: Omit<PolicyRequest, 'command'>): boolean {
  return WRITE_PROBES.some((p) => policy.decide({ ...request, command: p.command }, p.fingerprint).decision !== 'deny');
}
