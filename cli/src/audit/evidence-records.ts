// Records of Sessions kept in an evidence store (docs/evidence-store.md): such a Session object carries
// only the signed head and `spec.store`; verify, show and evidence export read its records from the store
// and check them against that head exactly as if they were in the object. The store is reached with a
// connection URL of its auditor role (SELECT only); the password comes from PGPASSWORD or ~/.pgpass, never
// from the command line.
import pg from 'pg';
import { EVIDENCE_SELECT_SQL, type AuditRecord, type Session } from '@chaperone/api';

/** parseArgs option descriptor of the store flag. */
export const EVIDENCE_STORE_OPTIONS = {
  'evidence-store': { type: 'string' },
} as const;

export const EVIDENCE_STORE_USAGE = `  --evidence-store URL    postgresql:// URL of the evidence store (its auditor role; password from
                          PGPASSWORD or ~/.pgpass), for Sessions whose records are kept there
`;

export interface EvidenceStoreFlags {
  readonly 'evidence-store'?: string | undefined;
}

/**
 * The Sessions with the records of those kept in the store filled in from it (in seq order, every row: a
 * duplicated or reordered row shows up as such). Sessions without `spec.store` are returned unchanged.
 */
export async function withStoredRecords(sessions: readonly Session[], url: string | undefined): Promise<Session[]> {
  const stored = sessions.filter((s) => s.spec.store !== undefined);
  if (stored.length === 0) return [...sessions];
  if (url === undefined) {
    const locations = [...new Set(stored.map((s) => `${s.spec.store?.type ?? ''} ${s.spec.store?.location ?? ''}`))];
    throw new Error(
      `${String(stored.length)} Session(s) keep their records in an evidence store (${locations.join(', ')}): pass --evidence-store URL`,
    );
  }
  const client = new pg.Client({ connectionString: url, application_name: 'kubectl-chaperone' });
  await client.connect();
  const bySession = new Map<string, AuditRecord[]>();
  try {
    const ids = [...new Set(stored.map((s) => s.spec.sessionId))];
    for (let i = 0; i < ids.length; i += 1000) {
      const { rows } = await client.query<{ session_id: string; record: string }>(EVIDENCE_SELECT_SQL, [
        ids.slice(i, i + 1000),
      ]);
      for (const row of rows) {
        let list = bySession.get(row.session_id);
        if (list === undefined) bySession.set(row.session_id, (list = []));
        list.push(JSON.parse(row.record) as AuditRecord);
      }
    }
  } finally {
    await client.end();
  }
  return sessions.map((s) =>
    s.spec.store === undefined ? s : { ...s, spec: { ...s.spec, records: bySession.get(s.spec.sessionId) ?? [] } },
  );
}
