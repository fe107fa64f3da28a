// Session retention: deletes the Session objects of a namespace whose session ended (or, while no end is
// recorded, started) longer ago than the retention of their ProtectedResource (spec.audit.retention, a Go
// duration, default 720h). etcd is not a log store (docs/audit.md, "Retention"): export evidence before
// the horizon if records must outlive it.
//
// Rules that keep verification meaningful:
//   - a session is pruned as a whole: every part, and only once every part is past the horizon;
//   - a session still Active is never pruned, whatever its age;
//   - a resource whose retention is unknown (ProtectedResource gone, malformed duration) keeps its sessions.
// Deletions are allowed only for the operator's service account (config/admission/session-protection.yaml).
import type { CustomObjectsApi } from '@kubernetes/client-node';
import { GROUP, VERSION, parseGoDuration, type ProtectedResource, type Session } from '@chaperone/api';
import { listSessions } from '../audit/list-sessions.ts';

/** Retention in milliseconds for a ProtectedResource name of the namespace, or undefined to keep everything. */
export type RetentionFor = (resourceName: string) => number | undefined;

export interface PruneResult {
  /** namespace/name of each deleted Session object. */
  readonly deleted: readonly string[];
  /** Sessions kept because their resource's retention is unknown. */
  readonly unknownRetention: readonly string[];
  /** Earliest time at which a kept, closed session expires (for a requeue-after), if any. */
  readonly nextExpiry?: Date;
}

/** Deletes expired Sessions of one namespace; `now` is injected so tests and the controller control it. */
export async function pruneExpiredSessions(
  client: CustomObjectsApi,
  namespace: string,
  now: Date,
  retentionFor: RetentionFor,
): Promise<PruneResult> {
  const sessions = await listSessions(client, namespace);

  const bySession = new Map<string, [Session, ...Session[]]>();
  for (const s of sessions) {
    const list = bySession.get(s.spec.sessionId);
    if (list === undefined) bySession.set(s.spec.sessionId, [s]);
    else list.push(s);
  }

  const deleted: string[] = [];
  const unknownRetention: string[] = [];
  let nextExpiry: number | undefined;
  for (const parts of bySession.values()) {
    const resource = parts[0].spec.resource.name;
    const retention = retentionFor(resource);
    if (retention === undefined) {
      unknownRetention.push(...parts.map((p) => `${namespace}/${p.metadata.name ?? ''}`));
      continue;
    }
    if (parts.some((p) => p.status?.phase === 'Active')) continue;
    const ended = Math.max(...parts.map(endedAt));
    const expiresAt = ended + retention;
    if (expiresAt > now.getTime()) {
      nextExpiry = Math.min(nextExpiry ?? expiresAt, expiresAt);
      continue;
    }
    // Last part first: an interrupted prune leaves a shorter session, never a continuation without its start.
    for (const p of [...parts].sort((a, b) => b.spec.part - a.spec.part)) {
      const name = p.metadata.name ?? '';
      try {
        await client.deleteNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace,
          plural: 'sessions',
          name,
          body: { preconditions: { uid: p.metadata.uid } },
        });
      } catch (err) {
        if ((err as { code?: number }).code !== 404) throw err;
      }
      deleted.push(`${namespace}/${name}`);
    }
  }
  return { deleted, unknownRetention, ...(nextExpiry === undefined ? {} : { nextExpiry: new Date(nextExpiry) }) };
}

/** When a part ended: status.endTime, else its last record's time, else its start. */
function endedAt(s: Session): number {
  const t = s.status?.endTime ?? s.spec.records.at(-1)?.time ?? s.spec.startTime;
  return Date.parse(t);
}

/** Builds a RetentionFor from the namespace's ProtectedResources (malformed durations keep everything). */
export function retentionFromResources(resources: readonly ProtectedResource[]): RetentionFor {
  const map = new Map<string, number>();
  for (const r of resources) {
    try {
      map.set(r.metadata.name ?? '', parseGoDuration(r.spec.audit.retention));
    } catch {
      // Unknown retention: keep the sessions rather than guess.
    }
  }
  return (name) => map.get(name);
}
