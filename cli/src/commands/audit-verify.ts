// kubectl chaperone audit verify FILE...: verifies JSON-lines audit files written by a sidecar
// (`audit.path`, standalone or exported). Exit 0 when every file verifies, 1 when any record was altered,
// removed, inserted or reordered (or a file cannot be read), 2 on usage.
import { readFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import type { CommandIo } from '../audit/cluster.ts';
import { verifyJsonLines, type JsonLinesReport } from '../audit/verify-json-lines.ts';
import { formatTable } from '../table.ts';
import { parseCommandLine } from '../command-line.ts';

export const AUDIT_VERIFY_USAGE = `Usage:
  kubectl chaperone audit verify FILE... [-o json|yaml]

Verifies JSON-lines audit files (one {"session", "record"} object per line, as a sidecar writes them to
audit.path): every record's hash, the hash links and seq continuity of each session, that a session keeps
its resource and pod, and the links between sessions of one pod. Notes (not failures): sessions without a
session.end (still open, or cut at the end) and links to sessions outside the file. JSON lines carry no
signature, so a file rewritten as a whole with fresh hashes is not detected: verify Session objects with
\`kubectl chaperone verify\` for that (docs/audit.md).
Exit 0: verified; 1: altered, or a file cannot be read; 2: usage.

Flags:
  -o, --output FORMAT   json or yaml (the structured report, one per file)
`;

function render(file: string, report: JsonLinesReport): string {
  const rows = report.sessions.map((s) => [
    s.sessionId,
    s.pod,
    s.resource,
    String(s.records),
    s.ended ?? '-',
    s.ok ? 'verified' : 'ALTERED',
  ]);
  let out = `${file}: ${String(report.records)} records in ${String(report.sessions.length)} sessions, ${report.verified ? 'verified' : `${String(report.problems.length)} problems`}\n`;
  if (rows.length > 0) out += formatTable(['SESSION', 'POD', 'RESOURCE', 'RECORDS', 'ENDED', 'RESULT'], rows);
  for (const p of report.problems) {
    const where =
      p.sessionId === undefined ? '' : ` session ${p.sessionId}${p.seq === undefined ? '' : ` seq ${String(p.seq)}`}`;
    out += `error: line ${String(p.line)}${where}: ${p.kind}: ${p.detail}\n`;
  }
  for (const n of report.notes) out += `note: session ${n.sessionId}: ${n.kind}: ${n.detail}\n`;
  return out;
}

export async function run(args: string[], io: CommandIo): Promise<number> {
  const parsed = parseCommandLine(args, { output: { type: 'string', short: 'o' } }, AUDIT_VERIFY_USAGE, io);
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  if (positionals[0] !== 'verify' || positionals.length < 2) {
    io.stderr.write(`error: name the files to verify\n\n${AUDIT_VERIFY_USAGE}`);
    return 2;
  }
  const output = values.output;
  if (output !== undefined && output !== 'json' && output !== 'yaml') {
    io.stderr.write('error: --output must be json or yaml\n');
    return 2;
  }
  let exitCode = 0;
  for (const file of positionals.slice(1)) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      io.stderr.write(`error: ${file}: ${(err as Error).message}\n`);
      exitCode = 1;
      continue;
    }
    const report = verifyJsonLines(text);
    if (!report.verified) exitCode = 1;
    if (output === 'json') io.stdout.write(`${JSON.stringify({ file, ...report }, null, 2)}\n`);
    else if (output === 'yaml') io.stdout.write(`---\n${stringify({ file, ...report })}`);
    else io.stdout.write(render(file, report));
  }
  return exitCode;
}
