// What verify and evidence export read: every Session in scope (with the records of those kept in an
// evidence store), retention per resource, and the audit authority. Its own module, so the cluster access (cluster.ts) and the authority (authority.ts), which
// reads through the cluster, do not import each other.
import type { Session } from '@chaperone/api';
import { loadAuthority, type Authority, type AuthorityFlags } from './authority.ts';
import { connect, listSessions, retentionByResource, type Cluster, type ClusterFlags } from './cluster.ts';
import { withStoredRecords, type EvidenceStoreFlags } from './evidence-records.ts';

export async function readTrail(flags: ClusterFlags & AuthorityFlags & EvidenceStoreFlags): Promise<{
  cluster: Cluster;
  sessions: Session[];
  retention: Map<string, number>;
  authority: Authority;
}> {
  const cluster = connect(flags);
  const sessions = await withStoredRecords(await listSessions(cluster), flags['evidence-store']);
  const retention = await retentionByResource(cluster);
  const authority = await loadAuthority(flags, cluster);
  return { cluster, sessions, retention, authority };
}
