// Session objects as the auditor sees them: parts grouped into sessions, filters, the list table and the
// readable timeline of `kubectl chaperone sessions show`.
import { parseGoDuration, type AuditRecord, type Identity, type Session } from '@chaperone/api';

/** One client session: its parts in order (part 0 first when present). */
export interface SessionGroup {
  readonly sessionId: string;
  readonly namespace: string;
  /** The lowest part present (part 0 unless it was deleted) and the highest. */
  readonly first: Session;
  readonly last: Session;
  readonly parts: readonly Session[];
  readonly records: readonly AuditRecord[];
}

export function groupSessions(objects: readonly Session[]): SessionGroup[] {
  const map = new Map<string, [Session, ...Session[]]>();
  for (const s of objects) {
    const key = `${s.metadata.namespace ?? ''}\u0000${s.spec.sessionId}`;
    const list = map.get(key);
    if (list === undefined) map.set(key, [s]);
    else list.push(s);
  }
  const groups = [...map.values()].map((parts): SessionGroup => {
    parts.sort((a, b) => a.spec.part - b.spec.part);
    const first = parts[0];
    return {
      sessionId: first.spec.sessionId,
      namespace: first.metadata.namespace ?? '',
      first,
      last: parts.at(-1) ?? first,
      parts,
      records: parts.flatMap((p) => p.spec.records),
    };
  });
  return groups.sort(
    (a, b) =>
      a.namespace.localeCompare(b.namespace) ||
      startOf(a).localeCompare(startOf(b)) ||
      a.sessionId.localeCompare(b.sessionId),
  );
}

export const startOf = (g: SessionGroup): string => g.first.spec.startTime;
export const endOf = (g: SessionGroup): string | undefined => g.last.status?.endTime;
export const nameOf = (g: SessionGroup): string => g.first.metadata.name ?? '';

/** An RFC 3339 time, or a Go duration meaning "that long before now". */
export function parseTimeFlag(value: string, now: Date): Date {
  if (/^[0-9.]+(ns|us|µs|ms|s|m|h)/.test(value)) return new Date(now.getTime() - parseGoDuration(value));
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new Error(`not a time or duration: ${value}`);
  return new Date(t);
}

/** `*` matches any run of characters; otherwise the match is exact. */
function matches(pattern: string, value: string): boolean {
  if (!pattern.includes('*')) return pattern === value;
  const re = new RegExp(
    `^${pattern
      .split('*')
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
      .join('.*')}$`,
  );
  return re.test(value);
}

export interface SessionFilter {
  readonly identity?: string;
  readonly actor?: string;
  readonly resource?: string;
  readonly since?: Date;
  readonly until?: Date;
  readonly decision?: 'allow' | 'deny' | 'approve';
}

export function filterSessions(groups: readonly SessionGroup[], f: SessionFilter): SessionGroup[] {
  return groups.filter((g) => {
    const spec = g.first.spec;
    if (f.identity !== undefined && !matches(f.identity, spec.identity.subject)) return false;
    if (f.actor !== undefined) {
      const everyone = [spec.identity.subject, ...(spec.identity.chain ?? []).map((a) => a.subject)];
      if (!everyone.some((s) => matches(f.actor ?? '', s))) return false;
    }
    if (f.resource !== undefined && !matches(f.resource, spec.resource.name)) return false;
    const start = Date.parse(startOf(g));
    const lastRecord = g.records.at(-1)?.time;
    const end = Date.parse(endOf(g) ?? lastRecord ?? startOf(g));
    if (f.since !== undefined && end < f.since.getTime() && endOf(g) !== undefined) return false;
    if (f.until !== undefined && start > f.until.getTime()) return false;
    if (f.decision !== undefined && !g.records.some((r) => r.decision?.result === f.decision)) return false;
    return true;
  });
}

/** kubectl-style age: 45s, 12m, 5h, 3d. */
export function age(from: string, now: Date): string {
  const s = Math.max(0, Math.floor((now.getTime() - Date.parse(from)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

export function sessionTable(groups: readonly SessionGroup[], allNamespaces: boolean, now: Date): string {
  const header = ['NAME', 'IDENTITY', 'RESOURCE', 'POD', 'PARTS', 'RECORDS', 'COMMANDS', 'DENIED', 'PHASE', 'AGE'];
  const rows = groups.map((g) => {
    const last = g.last;
    const counters = last.status?.counters;
    const spec = g.first.spec;
    const row = [
      nameOf(g),
      spec.identity.subject,
      spec.resource.name,
      spec.pod.name,
      String(g.parts.length),
      String(g.records.length),
      String(counters?.commands ?? g.records.filter((r) => r.type === 'command.decision').length),
      String(counters?.denied ?? g.records.filter((r) => r.decision?.result === 'deny').length),
      last.status?.phase ?? '',
      age(startOf(g), now),
    ];
    return allNamespaces ? [g.namespace, ...row] : row;
  });
  return table(allNamespaces ? ['NAMESPACE', ...header] : header, rows);
}

/** One line per record: time, seq, event and what it says (its identity only where it differs from `session`'s). */
export function describeRecord(r: AuditRecord, session?: Identity): string {
  const parts: string[] = [];
  if (r.identity !== undefined && (session === undefined || JSON.stringify(r.identity) !== JSON.stringify(session))) {
    const chain = (r.identity.chain ?? []).map((a) => a.subject);
    parts.push(`identity ${[r.identity.subject, ...chain].join(' <- ')}`);
  }
  if (r.source !== undefined) {
    const s = r.source;
    parts.push(
      [
        s.address === undefined ? undefined : `from ${s.address}`,
        s.applicationName === undefined ? undefined : `app ${s.applicationName}`,
        s.user === undefined ? undefined : `user ${s.user}`,
        s.database === undefined ? undefined : `db ${s.database}`,
      ]
        .filter((x) => x !== undefined)
        .join(', '),
    );
  }
  if (r.command !== undefined) {
    const c = r.command;
    const text =
      c.text === undefined ? '' : ` ${JSON.stringify(c.text.length > 160 ? `${c.text.slice(0, 157)}...` : c.text)}`;
    parts.push(`#${c.id} ${c.kind}${text}${c.parameters === undefined ? '' : ` params [${c.parameters.join(', ')}]`}`);
  }
  if (r.decision !== undefined) {
    const d = r.decision;
    parts.push(
      `=> ${d.result.toUpperCase()}${d.rule === undefined ? '' : ` by rule ${d.rule}`}${d.policy === undefined ? '' : ` of ${d.policy}`}` +
        `${d.approval === undefined ? '' : ` (approval ${d.approval})`}${d.reasons === undefined ? '' : `: ${d.reasons.join('; ')}`}`,
    );
  }
  if (r.outcome !== undefined) {
    const o = r.outcome;
    parts.push(
      `${o.status}${o.code === undefined ? '' : ` ${o.code}`}${o.rows === undefined ? '' : `, ${o.rows} row(s)`}` +
        `${o.durationMicros === undefined ? '' : `, ${(o.durationMicros / 1000).toFixed(1)} ms`}${o.message === undefined ? '' : `: ${o.message}`}` +
        (o.rolledBack === undefined ? '' : `; rolled back ${rolledBackText(o.rolledBack)}`),
    );
  }
  if (r.gap !== undefined) parts.push(`${r.gap.lostRecords} record(s) lost: ${r.gap.reason}`);
  return `${r.time}  ${String(r.seq).padStart(4)}  ${r.type.padEnd(18)}  ${parts.join('  ')}`.trimEnd();
}

/** The commands a rollback undid, as `show` prints them: `3 command(s) recorded success, #4..#9`. */
export function rolledBackText(r: { commands: number; first: number; last: number }): string {
  const range = r.first === r.last ? `#${r.first}` : `#${r.first}..#${r.last}`;
  return `${r.commands} command(s) recorded success, ${range}`;
}

export function describeSession(g: SessionGroup): string {
  const { first, last } = g;
  const spec = first.spec;
  const id = spec.identity;
  const out = [
    `Session:      ${g.namespace}/${nameOf(g)}`,
    `Session ID:   ${g.sessionId}`,
    `Identity:     ${id.subject}${id.kind === undefined ? '' : ` (${id.kind})`}`,
    `Issuer:       ${id.issuer}`,
  ];
  if (id.groups !== undefined && id.groups.length > 0) out.push(`Groups:       ${id.groups.join(', ')}`);
  const chain = id.chain ?? [];
  if (chain.length > 0) {
    out.push('Chain:        (current actor first; every record carries it)');
    chain.forEach((a, i) => {
      out.push(
        `  ${i + 1}. ${a.subject}${a.kind === undefined ? '' : ` (${a.kind})`}${a.issuer === undefined ? '' : ` from ${a.issuer}`}`,
      );
    });
  }
  if (id.exchange !== undefined) {
    out.push(`Exchange:     ${id.exchange.id} (record ${id.exchange.record}; kubectl chaperone token trace)`);
  }
  if (id.resources !== undefined) out.push(`Narrowed to:  ${id.resources.join(', ')}`);
  if (id.scopes !== undefined) out.push(`Scopes:       ${id.scopes.join(' ') || '(none)'}`);
  out.push(
    `Pod:          ${spec.pod.name}${spec.pod.uid === undefined ? '' : ` (uid ${spec.pod.uid})`}${spec.pod.container === undefined ? '' : `, container ${spec.pod.container}`}`,
    `Resource:     ${spec.resource.name} (${spec.resource.type})`,
    `Started:      ${spec.startTime}`,
    `Ended:        ${last.status?.endTime ?? '-'}`,
    `Phase:        ${last.status?.phase ?? '-'}`,
    `Parts:        ${g.parts.map((p) => `${p.metadata.name ?? ''} (${p.spec.records.length} records)`).join(', ')}`,
  );
  const c = last.status?.counters;
  if (c !== undefined) {
    out.push(
      `Commands:     ${c.commands} (allowed ${c.allowed}, denied ${c.denied}, held ${c.held}, errors ${c.errors})`,
    );
  }
  const signers = [...new Set(g.parts.map((p) => p.spec.signer?.keyId).filter((k) => k !== undefined))];
  // Whether the operator certified the key; `verify` checks the certificate, this only shows it is there.
  const certified = g.parts.every((p) => p.spec.signer?.certificate !== undefined);
  out.push(
    `Signed by:    ${signers.length === 0 ? '-' : `${signers.join(', ')} (${certified ? 'key certified by the operator' : 'self-asserted key'})`}`,
  );
  const head = last.spec.head;
  out.push(`Head:         ${head === undefined ? '-' : `seq ${head.seq} ${head.hash}`}`, '', 'Records:');
  for (const r of g.records) out.push(`  ${describeRecord(r, id)}`);
  return `${out.join('\n')}\n`;
}
