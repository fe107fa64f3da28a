// The readable rendering of a verification report: one line per session, then every problem with where
// it is (object, part, seq) and what it means.
import type { TrailProblem, TrailReport } from './verify-trail.ts';

/** `authority`: where the audit authority's keys came from, when the report used them. */
export function renderReport(report: TrailReport, authority?: 'pinned' | 'cluster' | 'none'): string {
  const out: string[] = [];
  const { summary } = report;
  for (const s of report.sessions) {
    const range = s.firstSeq === undefined ? 'no records' : `seq ${s.firstSeq}..${s.lastSeq ?? s.firstSeq}`;
    const signed = s.signedThrough === undefined ? 'unsigned' : `signed through ${s.signedThrough}`;
    const parts = s.parts.length === 1 ? s.parts[0] : `${s.parts[0] ?? ''} (+${s.parts.length - 1} part(s))`;
    out.push(
      `${s.ok ? 'OK  ' : 'FAIL'} ${s.namespace}/${parts ?? ''}  ${s.subject}  ${range}, ${signed}` +
        (s.previousSession === undefined ? '' : `, follows ${s.previousSession}`),
    );
  }
  if (report.problems.length > 0) {
    out.push('', 'Problems:');
    for (const p of report.problems) out.push(`  ${renderProblem(p)}`);
  }
  out.push(
    '',
    `${summary.sessions} session(s), ${summary.objects} object(s), ${summary.records} record(s): ` +
      `${summary.errors} error(s), ${summary.warnings} warning(s).`,
  );
  for (const c of report.checkpoints) {
    out.push(`Checkpoint ${c.index} of ${c.time}: ${c.sessions} head(s) stated by the operator, checked.`);
  }
  if (report.keyTrust === 'certified') {
    out.push(
      authority === 'cluster'
        ? "Keys: certified by the operator's audit authority, whose key was read from the cluster. Pin it with --authority-keys to rule out a replaced authority."
        : "Keys: certified by the operator's audit authority (pinned key).",
    );
  }
  if (report.keyTrust === 'self-asserted') {
    out.push(
      'Keys: self-asserted (each Session names its own signer key). Pin keys with --trusted-keys to rule out a trail rewritten and re-signed with another key.',
    );
  }
  out.push(
    report.ok
      ? 'VERIFIED: no alteration or removal detected.'
      : 'NOT VERIFIED: the trail was altered or is incomplete.',
  );
  return `${out.join('\n')}\n`;
}

export function renderProblem(p: TrailProblem): string {
  const where = [
    p.object ?? (p.sessionId === '' ? 'checkpoints' : `session ${p.sessionId}`),
    p.part === undefined ? undefined : `part ${p.part}`,
    p.seq === undefined ? undefined : `seq ${p.seq}`,
  ]
    .filter((x) => x !== undefined)
    .join(', ');
  return `${p.severity === 'error' ? 'ERROR' : 'WARN '} ${p.kind.padEnd(21)} ${where}: ${p.detail}`;
}
