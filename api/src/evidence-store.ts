// The evidence store: audit records kept in an append-only PostgreSQL table instead of in Session objects,
// which then carry only the signed chain heads (docs/evidence-store.md). This module is the schema both
// sides share: the table the sidecar appends to, the SQL that creates it with its roles and append-only
// guards, and the row a record becomes. Pure: no database client here (the sidecar and the CLI bring theirs).
import type { AuditRecord } from './audit-record.ts';

/** Schema and table of the records, fixed so verifiers find them in any evidence database. */
export const EVIDENCE_SCHEMA = 'chaperone';
export const EVIDENCE_TABLE = `${EVIDENCE_SCHEMA}.audit_records`;
/** SECURITY DEFINER function: a session's counters through a seq, callable by the writer (which cannot SELECT). */
export const EVIDENCE_COUNTERS_FUNCTION = `${EVIDENCE_SCHEMA}.session_counters`;

export const EVIDENCE_STORE_TYPES = ['postgres'] as const;
export type EvidenceStoreType = (typeof EVIDENCE_STORE_TYPES)[number];

/** Where a Session's records are (spec.store): the store type and its location, never a credential. */
export interface EvidenceLocation {
  readonly type: EvidenceStoreType;
  /** `host:port/database` of the evidence database. */
  readonly location: string;
}

/** The roles of an evidence database (docs/evidence-store.md, "Who can do what"). */
export interface EvidenceRoles {
  /** What sidecars log in as: INSERT into the table and EXECUTE of the counters function, nothing else. */
  readonly writer: string;
  /** What auditors and `kubectl chaperone verify` log in as: SELECT only. */
  readonly auditor: string;
}

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

function ident(name: string): string {
  if (!IDENTIFIER.test(name)) throw new Error(`not a plain SQL identifier: ${JSON.stringify(name)}`);
  return name;
}

/** One row of the records table: the canonical text as hashed plus the columns an auditor filters on. */
export interface EvidenceRow {
  readonly sessionId: string;
  readonly seq: number;
  readonly time: string;
  readonly type: string;
  /** decision.result of a decision, outcome.status of an outcome (what the counters count). */
  readonly result: string | null;
  readonly hash: string;
  readonly prevHash: string;
}

/** What a row's columns are made of: a record, or only these members of it (the sidecar's worker, record-fields.ts). */
export type EvidenceRowSource = Pick<AuditRecord, 'seq' | 'time' | 'type' | 'hash' | 'prevHash'> & {
  readonly decision?: Pick<NonNullable<AuditRecord['decision']>, 'result'>;
  readonly outcome?: Pick<NonNullable<AuditRecord['outcome']>, 'status'>;
};

export function evidenceRow(sessionId: string, record: AuditRecord | EvidenceRowSource): EvidenceRow {
  return {
    sessionId,
    seq: record.seq,
    time: record.time,
    type: record.type,
    result: record.decision?.result ?? record.outcome?.status ?? null,
    hash: record.hash,
    prevHash: record.prevHash,
  };
}

/** The UTC day `time` falls on, as YYYY-MM-DD. */
function day(time: Date): string {
  return time.toISOString().slice(0, 10);
}

/** DDL of the daily partition holding `date` (idempotent), with the TRUNCATE guard partitions need of their own. */
export function evidencePartitionSql(date: Date): string {
  const from = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const to = new Date(from.getTime() + 86_400_000);
  const name = `${EVIDENCE_TABLE}_${day(from).replaceAll('-', '')}`;
  const bare = name.slice(EVIDENCE_SCHEMA.length + 1);
  return `
create table if not exists ${name} partition of ${EVIDENCE_TABLE}
  for values from ('${day(from)} 00:00:00+00') to ('${day(to)} 00:00:00+00');
do $$ begin
  if not exists (select 1 from pg_trigger where tgname = 'audit_records_no_truncate' and tgrelid = '${name}'::regclass) then
    create trigger audit_records_no_truncate before truncate on ${name}
      for each statement execute function ${EVIDENCE_SCHEMA}.refuse_change();
  end if;
end $$;
comment on table ${name} is 'Audit records of ${day(from)} (UTC); dropped whole by retention (${bare}).';`;
}

const PARTITION_NAME = /^audit_records_([0-9]{4})([0-9]{2})([0-9]{2})$/;

/** The UTC day a daily partition (`audit_records_YYYYMMDD`, without schema) holds; undefined for any other table. */
export function evidencePartitionDay(name: string): Date | undefined {
  const m = PARTITION_NAME.exec(name);
  if (m === null) return undefined;
  const date = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  return day(date) === `${m[1] ?? ''}-${m[2] ?? ''}-${m[3] ?? ''}` ? date : undefined;
}

/** What one maintenance run does: the days whose partitions to create, and the partitions past retention. */
export interface EvidencePartitionPlan {
  /** UTC days (midnight) from yesterday to `aheadDays` after today without a partition yet. */
  readonly create: readonly Date[];
  /** Daily partitions (names without schema) whose whole day ended more than `retainDays` before now. */
  readonly expire: readonly string[];
}

/**
 * Plans the partition maintenance of an evidence database from the partitions it has (table names without
 * schema; the default partition and any other table are never touched). `retainDays` undefined: nothing
 * expires. A day expires once its end is more than `retainDays` × 24 h before `now`.
 */
export function planEvidencePartitions(
  existing: readonly string[],
  now: Date,
  aheadDays: number,
  retainDays?: number,
): EvidencePartitionPlan {
  const have = new Set(existing.filter((n) => evidencePartitionDay(n) !== undefined));
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  const create: Date[] = [];
  for (let i = -1; i <= aheadDays; i++) {
    const date = new Date(today + i * 86_400_000);
    if (!have.has(`audit_records_${day(date).replaceAll('-', '')}`)) create.push(date);
  }
  const expire: string[] = [];
  if (retainDays !== undefined) {
    const cutoff = now.getTime() - retainDays * 86_400_000;
    for (const name of [...have].sort()) {
      const start = evidencePartitionDay(name);
      if (start !== undefined && start.getTime() + 86_400_000 <= cutoff) expire.push(name);
    }
  }
  return { create, expire };
}

/**
 * DDL that prepares an evidence database (idempotent): the schema, the records table partitioned by day of
 * the record's time with a default partition as a safety net, the append-only guards (no UPDATE, DELETE or
 * TRUNCATE privilege for anyone but the owner, and triggers that refuse them even to the owner), the
 * counters function, and the privileges of the writer and auditor roles, which must exist. Run it as the
 * role that is to own the table (it alone may add and drop partitions; never a sidecar's). Partitions for `days` days from `now` are created; `evidencePartitionSql` adds later ones.
 */
export function evidenceSchemaSql(roles: EvidenceRoles, now = new Date(), days = 7): string {
  const writer = ident(roles.writer);
  const auditor = ident(roles.auditor);
  const partitions: string[] = [];
  for (let i = -1; i <= days; i++) partitions.push(evidencePartitionSql(new Date(now.getTime() + i * 86_400_000)));
  return `
create schema if not exists ${EVIDENCE_SCHEMA};
revoke all on schema ${EVIDENCE_SCHEMA} from public;
create table if not exists ${EVIDENCE_TABLE} (
  session_id text not null,
  seq bigint not null check (seq >= 1),
  time timestamptz not null,
  type text not null,
  result text,
  hash text not null,
  prev_hash text not null,
  namespace text not null,
  pod_namespace text not null,
  pod text not null,
  resource text not null,
  record text not null,
  stored_at timestamptz not null default statement_timestamp(),
  primary key (session_id, seq, time)
) partition by range (time);
comment on table ${EVIDENCE_TABLE} is 'Chaperone audit records, append-only; record is the canonical JSON that hash covers (docs/audit.md).';
create table if not exists ${EVIDENCE_TABLE}_default partition of ${EVIDENCE_TABLE} default;
create or replace function ${EVIDENCE_SCHEMA}.refuse_change() returns trigger language plpgsql as $$
begin
  raise exception 'chaperone audit records are append-only: % refused', tg_op
    using errcode = 'insufficient_privilege';
end $$;
do $$ begin
  if not exists (select 1 from pg_trigger where tgname = 'audit_records_append_only' and tgrelid = '${EVIDENCE_TABLE}'::regclass) then
    create trigger audit_records_append_only before update or delete on ${EVIDENCE_TABLE}
      for each row execute function ${EVIDENCE_SCHEMA}.refuse_change();
  end if;
  if not exists (select 1 from pg_trigger where tgname = 'audit_records_no_truncate' and tgrelid = '${EVIDENCE_TABLE}'::regclass) then
    create trigger audit_records_no_truncate before truncate on ${EVIDENCE_TABLE}
      for each statement execute function ${EVIDENCE_SCHEMA}.refuse_change();
  end if;
end $$;
do $$ begin
  if not exists (select 1 from pg_trigger where tgname = 'audit_records_no_truncate' and tgrelid = '${EVIDENCE_TABLE}_default'::regclass) then
    create trigger audit_records_no_truncate before truncate on ${EVIDENCE_TABLE}_default
      for each statement execute function ${EVIDENCE_SCHEMA}.refuse_change();
  end if;
end $$;
${partitions.join('\n')}
create or replace function ${EVIDENCE_COUNTERS_FUNCTION}(p_session text, p_through bigint)
  returns table (commands bigint, allowed bigint, denied bigint, held bigint, errors bigint)
  language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select count(*) filter (where type = 'command.decision'),
         count(*) filter (where type = 'command.decision' and result = 'allow'),
         count(*) filter (where type = 'command.decision' and result = 'deny'),
         count(*) filter (where type = 'command.decision' and result = 'approve'),
         count(*) filter (where (type = 'command.outcome' and result = 'error')
           or (type = 'command.decision' and strpos(record, '"outcome":') > 0
               and record::jsonb #>> '{outcome,status}' = 'error'))
    from ${EVIDENCE_TABLE} where session_id = p_session and seq <= p_through
$$;
revoke all on function ${EVIDENCE_COUNTERS_FUNCTION}(text, bigint) from public;
revoke all on ${EVIDENCE_TABLE} from public;
grant usage on schema ${EVIDENCE_SCHEMA} to ${writer}, ${auditor};
grant insert on ${EVIDENCE_TABLE} to ${writer};
grant execute on function ${EVIDENCE_COUNTERS_FUNCTION}(text, bigint) to ${writer};
grant select on ${EVIDENCE_TABLE} to ${auditor};
`;
}

/** The insert the sidecar runs: one statement per batch, a replayed record (same session, seq, time) is a no-op. */
export const EVIDENCE_INSERT_SQL = `insert into ${EVIDENCE_TABLE}
  (session_id, seq, time, type, result, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
select $1, r.seq, r.time, r.type, r.result, r.hash, r.prev_hash, $2, $3, $4, $5, r.record
  from unnest($6::bigint[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
    as r (seq, time, type, result, hash, prev_hash, record)
on conflict do nothing`;

/**
 * The sidecar's fast path for records nobody can have stored yet (a live session, past anything it tried
 * before): one COPY per batch, rows in text format (evidenceCopyRows). COPY cannot skip a row already
 * there: a batch that may hold stored records (a replay, a retry after an unknown outcome) goes through
 * EVIDENCE_INSERT_SQL instead.
 */
export const EVIDENCE_COPY_SQL = `copy ${EVIDENCE_TABLE}
  (session_id, seq, time, type, result, hash, prev_hash, namespace, pod_namespace, pod, resource, record) from stdin`;

/** A field of COPY's text format: backslash, newline, carriage return and tab escaped (canonical JSON has only backslashes). */
function copyField(value: string): string {
  return /[\\\n\r\t]/.test(value)
    ? value.replace(/[\\\n\r\t]/g, (c) => (c === '\\' ? '\\\\' : c === '\n' ? '\\n' : c === '\r' ? '\\r' : '\\t'))
    : value;
}

/** Where the records of one session come from: the columns every row of it repeats. */
export interface EvidenceRowOrigin {
  readonly sessionId: string;
  readonly namespace: string;
  readonly podNamespace: string;
  readonly pod: string;
  readonly resource: string;
}

/** The COPY text of rows of one session (EVIDENCE_COPY_SQL's columns), each row with its record's canonical text. */
export function evidenceCopyRows(
  origin: EvidenceRowOrigin,
  rows: readonly { readonly row: EvidenceRow; readonly text: string }[],
): string {
  const tail = `\t${copyField(origin.namespace)}\t${copyField(origin.podNamespace)}\t${copyField(origin.pod)}\t${copyField(origin.resource)}\t`;
  const session = copyField(origin.sessionId);
  let out = '';
  for (const { row, text } of rows) {
    out += `${session}\t${String(row.seq)}\t${copyField(row.time)}\t${copyField(row.type)}\t${row.result === null ? '\\N' : copyField(row.result)}\t${copyField(row.hash)}\t${copyField(row.prevHash)}${tail}${copyField(text)}\n`;
  }
  return out;
}

/** What verifiers read: every row of some sessions, in seq order (duplicates of a seq next to each other). */
export const EVIDENCE_SELECT_SQL = `select session_id, seq, record from ${EVIDENCE_TABLE}
  where session_id = any($1::text[]) order by session_id, seq, time, hash`;

/** A session's counters (status.counters of its Session). */
export interface EvidenceCounters {
  commands: number;
  allowed: number;
  denied: number;
  held: number;
  errors: number;
}
