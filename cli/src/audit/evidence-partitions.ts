// Partition maintenance of an evidence database (docs/evidence-store.md, "Partitions and retention"): the
// daily partitions from yesterday to some days ahead are created before records arrive (a record whose
// day has no partition lands in the default partition, which cannot be pruned by day), and days past the
// retention are dropped whole, or detached for archiving first. Run as a login that is a member of the
// records table's owner (the installer's role, never a sidecar's): the DDL runs as that owner, so the
// partitions it creates are owned like the rest.
import pg from 'pg';
import { EVIDENCE_SCHEMA, EVIDENCE_TABLE, evidencePartitionSql, planEvidencePartitions } from '@chaperone/api';

export interface PartitionMaintenanceOptions {
  /** Days after today to have partitions for. */
  readonly aheadDays: number;
  /** Days of records to keep; undefined: nothing is dropped or detached. */
  readonly retainDays?: number;
  /** Detach expired partitions (kept as plain tables) instead of dropping them. */
  readonly detach: boolean;
  /** Only say what would be done. */
  readonly dryRun: boolean;
  readonly now: Date;
}

export interface PartitionMaintenanceResult {
  /** Partitions created (or, with dryRun, to be created), with schema. */
  readonly created: readonly string[];
  /** Partitions dropped or detached (or to be), with schema. */
  readonly expired: readonly string[];
  /** Partitions left in place. */
  readonly kept: number;
  /** Rows in the default partition: records whose day had no partition when they were stored. */
  readonly defaultRows: number;
}

export async function maintainEvidencePartitions(
  url: string,
  options: PartitionMaintenanceOptions,
  progress: (line: string) => void = () => undefined,
): Promise<PartitionMaintenanceResult> {
  const client = new pg.Client({ connectionString: url, application_name: 'kubectl-chaperone' });
  await client.connect();
  try {
    const owner = await client.query<{ owner: string }>(
      `select pg_get_userbyid(c.relowner) as owner from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = $1 and c.relname = 'audit_records' and c.relkind = 'p'`,
      [EVIDENCE_SCHEMA],
    );
    const tableOwner = owner.rows[0]?.owner;
    if (tableOwner === undefined) throw new Error(`this database has no partitioned table ${EVIDENCE_TABLE}`);
    // As the owner (the caller must be a member), dry run included: partitions belong to the table's owner.
    await client.query(`set role ${pg.escapeIdentifier(tableOwner)}`);
    const { rows } = await client.query<{ name: string }>(
      `select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = $1::regclass`,
      [EVIDENCE_TABLE],
    );
    const names = rows.map((r) => r.name);
    const plan = planEvidencePartitions(names, options.now, options.aheadDays, options.retainDays);
    const qualified = (name: string) => `${EVIDENCE_SCHEMA}.${name}`;
    const created = plan.create.map((d) => `${EVIDENCE_TABLE}_${d.toISOString().slice(0, 10).replaceAll('-', '')}`);
    const expired = plan.expire.map(qualified);
    const defaultRows = await client.query<{ n: string }>(`select count(*) as n from ${EVIDENCE_TABLE}_default`);
    if (!options.dryRun) {
      for (const [i, date] of plan.create.entries()) {
        await client.query(`begin;\n${evidencePartitionSql(date)}\ncommit;`).catch(async (err: unknown) => {
          await client.query('rollback').catch(() => undefined);
          throw new Error(
            `creating ${created[i] ?? ''}: ${(err as Error).message} (records of that day are in the default partition: move them first, docs/evidence-store.md)`,
            { cause: err },
          );
        });
        progress(`partition ${created[i] ?? ''} created`);
      }
      for (const name of expired) {
        await client.query(
          options.detach ? `alter table ${EVIDENCE_TABLE} detach partition ${name}` : `drop table ${name}`,
        );
        progress(`partition ${name} ${options.detach ? 'detached' : 'dropped'}`);
      }
    } else {
      for (const name of created) progress(`partition ${name} created (dry run)`);
      for (const name of expired) progress(`partition ${name} ${options.detach ? 'detached' : 'dropped'} (dry run)`);
    }
    return {
      created,
      expired,
      kept: names.filter((n) => n !== 'audit_records_default').length - expired.length,
      defaultRows: Number(defaultRows.rows[0]?.n ?? 0),
    };
  } finally {
    await client.end();
  }
}
