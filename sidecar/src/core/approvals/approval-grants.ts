// Time-bound grants (docs/approvals.md, "Time-bound grants"): when every approval that approved a request
// also asked for a grant, the sidecar that held the command lets later commands the same policy rule
// decides `approve` run without a new request, for the same requester chain on the same resource, within
// every scope asked for (the same normalised statement, the same session, or any command of that rule),
// until the grant expires, is revoked (status.revocation), its request is deleted or replaced, its session
// ends (a session-scoped grant), or the sidecar stops. The grant lives in this process and is mirrored into
// the request's status.grant for people; the process follows the request to see a revocation at once.
// Nothing here trusts the status it reads but the revocation, which only takes power away.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ApprovalDecisionEntry, ApprovalGrant, GrantScope, GrantTerms, Identity } from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import type { ApprovalRequestStore, ObservedRequest } from './approval-requests.ts';

export type GrantEnd = NonNullable<ApprovalGrant['endReason']>;

/** Who and what a grant is for: a later command must have the same. */
export interface GrantParty {
  readonly resource: { readonly name: string; readonly namespace: string };
  readonly requester: Pick<Identity, 'subject' | 'issuer' | 'chain'>;
  readonly policy: string;
  readonly rule: string;
}

/** A later command, as a grant is matched against it. */
export interface GrantQuery extends GrantParty {
  readonly session: string;
  /** The normalised statement (SQL: libpg-query fingerprints; HTTP: method, path and the matched parts). */
  readonly normalized: string;
  /** What the policy allows now: a grant whose scopes or duration it no longer allows does not apply. */
  readonly allowed: { readonly scopes: readonly GrantScope[]; readonly maxSeconds: number } | undefined;
}

/** A grant as the records and the client see it. */
export interface ActiveGrant {
  /** The request whose approval made it: the grant's id. */
  readonly request: string;
  readonly scopes: readonly GrantScope[];
  readonly expiresTime: string;
  readonly durationSeconds: number;
  /** The counted approving decisions that made it. */
  readonly decisions: readonly ApprovalDecisionEntry[];
}

/** sha256 of the normalised statement, as status.grant shows it. */
export function normalizedHash(normalized: string): string {
  return `sha256:${createHash('sha256').update(normalized).digest('hex')}`;
}

/** The same JSON for the same party: every member is written in one fixed order. */
function partyKey(party: GrantParty): string {
  return JSON.stringify({
    policy: party.policy,
    requester: {
      chain: (party.requester.chain ?? []).map((a) => ({ issuer: a.issuer ?? '', subject: a.subject })),
      issuer: party.requester.issuer,
      subject: party.requester.subject,
    },
    resource: { name: party.resource.name, namespace: party.resource.namespace },
    rule: party.rule,
  });
}

/** A function, not a field read: the grant can end while an API call is awaited. */
function ended(grant: { readonly ended: GrantEnd | undefined }): boolean {
  return grant.ended !== undefined;
}

function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

class Grant implements ActiveGrant {
  readonly request: string;
  readonly scopes: readonly GrantScope[];
  readonly expiresTime: string;
  readonly durationSeconds: number;
  readonly decisions: readonly ApprovalDecisionEntry[];
  readonly key: string;
  readonly session: string | undefined;
  readonly fingerprint: string | undefined;
  readonly expiresMs: number;
  readonly status: ApprovalGrant;
  ended: GrantEnd | undefined;
  timer: NodeJS.Timeout | undefined;
  abort: AbortController | undefined;
  resourceVersion: string | undefined;
  readonly uid: string;
  /** The status write that made it visible; the end is written after it. */
  written: Promise<void> = Promise.resolve();

  constructor(
    made: {
      request: string;
      uid: string;
      resourceVersion: string | undefined;
      party: GrantParty;
      session: string;
      normalized: string;
      terms: GrantTerms;
      decisions: readonly ApprovalDecisionEntry[];
    },
    now: number,
  ) {
    this.request = made.request;
    this.uid = made.uid;
    this.resourceVersion = made.resourceVersion;
    this.scopes = made.terms.scopes;
    this.durationSeconds = made.terms.durationSeconds;
    this.decisions = made.decisions;
    this.key = partyKey(made.party);
    this.session = this.scopes.includes('session') ? made.session : undefined;
    this.fingerprint = this.scopes.includes('fingerprint') ? normalizedHash(made.normalized) : undefined;
    this.expiresMs = now + made.terms.durationSeconds * 1000;
    this.expiresTime = rfc3339(this.expiresMs);
    this.status = {
      scopes: [...this.scopes],
      ...(this.session === undefined ? {} : { session: this.session }),
      ...(this.fingerprint === undefined ? {} : { fingerprint: this.fingerprint }),
      startTime: rfc3339(now),
      expiresTime: this.expiresTime,
      approvers: made.terms.approvers.slice(0, 32),
    };
  }

  covers(query: GrantQuery, key: string, now: number): boolean {
    if (this.ended !== undefined || now >= this.expiresMs || this.key !== key) return false;
    if (this.session !== undefined && this.session !== query.session) return false;
    if (this.fingerprint !== undefined && this.fingerprint !== normalizedHash(query.normalized)) return false;
    // The policy as it is now: a scope it no longer allows, or a shorter maximum, ends the grant's reach.
    const allowed = query.allowed;
    if (allowed === undefined || !this.scopes.every((s) => allowed.scopes.includes(s))) return false;
    return this.durationSeconds <= allowed.maxSeconds;
  }
}

export interface ApprovalGrantsOptions {
  readonly store: ApprovalRequestStore;
  readonly logger: Logger;
  readonly now?: () => number;
}

/** The grants this sidecar made; shared by its sessions (a grant may reach beyond its session). */
export class ApprovalGrants {
  private readonly options: ApprovalGrantsOptions;
  private readonly grants = new Set<Grant>();

  constructor(options: ApprovalGrantsOptions) {
    this.options = options;
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** Makes a grant from an approval (the request is Approved), writes it into status and follows the request. */
  start(made: ConstructorParameters<typeof Grant>[0], phaseWritten: Promise<void>): ActiveGrant {
    const grant = new Grant(made, this.now());
    this.grants.add(grant);
    grant.timer = setTimeout(() => {
      this.end(grant, 'Expired');
    }, grant.expiresMs - this.now());
    grant.timer.unref();
    // After the phase: admission accepts a grant only on an Approved request.
    grant.written = phaseWritten
      .then(async () => this.options.store.setGrant(grant.request, grant.status))
      .catch((err: unknown) => {
        this.options.logger.warn('approval grant not written into its request', {
          request: grant.request,
          error: err,
        });
      });
    this.options.logger.info('approval grant made', {
      request: grant.request,
      scopes: grant.scopes,
      expiresTime: grant.expiresTime,
      approvers: grant.status.approvers,
    });
    this.follow(grant);
    return grant;
  }

  /** The live grant that covers a command, if any (the first made). */
  find(query: GrantQuery): ActiveGrant | undefined {
    if (this.grants.size === 0) return undefined;
    const key = partyKey(query);
    const now = this.now();
    for (const g of this.grants) {
      if (g.covers(query, key, now)) return g;
    }
    return undefined;
  }

  /** A session ended: the grants limited to it end too. */
  endSession(session: string): void {
    for (const g of this.grants) if (g.session === session) this.end(g, 'SessionEnded');
  }

  /** The sidecar stops: every grant ends (nothing could use it any more). Resolves once they are written. */
  async close(): Promise<void> {
    const all = [...this.grants];
    for (const g of all) this.end(g, 'SidecarStopped');
    await Promise.race([Promise.allSettled(all.map((g) => g.written)), sleep(3000)]);
  }

  get size(): number {
    return this.grants.size;
  }

  private end(grant: Grant, reason: GrantEnd): void {
    if (grant.ended !== undefined) return;
    grant.ended = reason;
    this.grants.delete(grant);
    clearTimeout(grant.timer);
    grant.abort?.abort();
    grant.abort = undefined;
    this.options.logger.info('approval grant ended', { request: grant.request, reason });
    if (reason === 'Withdrawn') return; // the request is gone or another object: nothing to write
    const ended: ApprovalGrant = { ...grant.status, endTime: rfc3339(this.now()), endReason: reason };
    grant.written = grant.written
      .then(async () => this.options.store.setGrant(grant.request, ended))
      .catch((err: unknown) => {
        this.options.logger.warn('approval grant end not written into its request', {
          request: grant.request,
          error: err,
        });
      });
  }

  /** Watches the request while the grant lives: a revocation, deletion or replacement ends it at once. */
  private follow(grant: Grant): void {
    if (grant.ended !== undefined) return;
    this.options.store
      .watch(
        grant.request,
        grant.resourceVersion,
        (event) => {
          this.observe(grant, event);
        },
        () => {
          grant.abort = undefined;
          void this.resume(grant);
        },
      )
      .then(
        (abort) => {
          if (grant.ended === undefined) grant.abort = abort;
          else abort.abort();
        },
        () => void this.resume(grant),
      );
  }

  private async resume(grant: Grant): Promise<void> {
    if (grant.ended !== undefined) return;
    await sleep(250);
    if (ended(grant)) return;
    try {
      const current = await this.options.store.get(grant.request);
      this.observe(grant, current === undefined ? { type: 'deleted' } : { type: 'changed', object: current });
    } catch (err) {
      this.options.logger.warn('approval grant request read failed; retrying', { request: grant.request, error: err });
      await sleep(1000);
      grant.resourceVersion = undefined;
    }
    this.follow(grant);
  }

  private observe(grant: Grant, event: ObservedRequest): void {
    if (grant.ended !== undefined) return;
    if (event.type === 'deleted' || event.object.metadata.uid !== grant.uid) {
      this.end(grant, 'Withdrawn');
      return;
    }
    if (event.object.metadata.resourceVersion !== undefined)
      grant.resourceVersion = event.object.metadata.resourceVersion;
    const revocation = event.object.status?.revocation;
    if (revocation !== undefined) {
      this.options.logger.info('approval grant revoked', { request: grant.request, by: revocation.revokedBy.username });
      this.end(grant, 'Revoked');
    }
  }
}
