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
import type { AgentSession } from '../../core/agent-session.ts';
import type { CommandDescription } from '../../core/command.ts';
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

function probe(kind: StatementKind, sideEffects: boolean): CommandDescription {
  const facts: SqlStatementFacts[] = [{ kind, relations: [], functions: [], sideEffects }];
  return {
    command: { type: 'sql', statements: facts },
    fingerprint: factsFingerprint(facts),
    text: `-- write probe: ${kind}`,
  };
}

/** The probe commands, built once. */
export const WRITE_PROBES: readonly CommandDescription[] = [
  ...STATEMENT_KINDS.filter((k) => !NON_WRITING_KINDS.has(k)).flatMap((k) => [probe(k, true), probe(k, false)]),
  ...READS_WITH_SIDE_EFFECTS.map((k) => probe(k, true)),
];

/** Whether any policy in force could allow (or hold for approval) a write in this session. Records nothing. */
export function policiesGrantWrite(session: Pick<AgentSession, 'evaluate'>): boolean {
  return WRITE_PROBES.some((p) => session.evaluate(p, { inTransaction: false }).decision !== 'deny');
}
