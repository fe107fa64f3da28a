// What verify and evidence export read: every Session in scope, retention per resource, and the audit
// authority. Its own module, so the cluster access (cluster.ts) and the authority (authority.ts), which
// reads through the cluster, do not import each other.
import type { Session } from '@chaperone/api';
import { loadAuthority, type Authority, type AuthorityFlags } from './authority.ts';
import { connect, listSessions, retentionByResource, type Cluster, type ClusterFlags } from './cluster.ts';

export async function readTrail(flags: ClusterFlags & AuthorityFlags): Promise<{
  cluster: Cluster;
  sessions: Session[];
  retention: Map<string, number>;
  authority: Authority;
}> {
  const cluster = connect(flags);
  const sessions = await listSessions(cluster);
  const retention = await retentionByResource(cluster);
  const authority = await loadAuthority(flags, cluster);
  return { cluster, sessions, retention, authority };
}
