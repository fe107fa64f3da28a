// The approval desk: files an ApprovalRequest for a command an approve rule held, follows it through the
// API server (a watch on that one object, with the sidecar's own confined rights), and settles the hold
// exactly once: approved (enough distinct eligible approvers, by the sidecar's own tally of the decisions,
// never by the phase someone wrote), denied, expired, cancelled, withdrawn (the request was deleted or
// replaced) or abandoned (the sidecar stops). It then writes the phase into the request's status. It knows
// nothing of protocols: the engine shows the notice and runs or refuses the command.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Counter, type Registry } from 'prom-client';
import {
  API_VERSION,
  APPROVAL_POD_LABEL,
  approvalBindingHash,
  grantOf,
  tallyDecisions,
  type ApprovalPhase,
  type ApprovalRequest,
  type ApprovalRequirement,
  type ApprovalTally,
  type CombinedDecision,
  type Identity,
} from '@chaperone/api';
import type { SidecarError } from '../errors.ts';
import type { Logger } from '../observability/logger.ts';
import type { ApprovalRequestStore, ObservedRequest } from './approval-requests.ts';
import { ApprovalGrants, type ActiveGrant } from './approval-grants.ts';

/** How a held command ended. `Withdrawn`: the request was deleted or replaced while pending. */
export type HoldPhase = Exclude<ApprovalPhase, 'Pending'> | 'Withdrawn';

export type HoldResult =
  /** `grant`: the approvers also granted later matching commands for a while (approval-grants.ts). */
  | { readonly state: 'approved'; readonly tally: ApprovalTally; readonly grant?: ActiveGrant }
  | {
      readonly state: 'refused';
      readonly phase: HoldPhase;
      readonly error: SidecarError;
      readonly tally: ApprovalTally | undefined;
    };

/** What the engine knows of a command it holds. */
export interface HoldRequest {
  readonly resource: { readonly name: string; readonly namespace: string };
  readonly session: string;
  readonly requester: Identity;
  readonly commandId: number;
  readonly kind: 'sql' | 'kubernetes' | 'http';
  /** Exactly what runs: the text as sent and the parameters as bound (bound into the hash, never stored). */
  readonly exact: { readonly text: string; readonly parameters: readonly string[] };
  /** The normalised command a fingerprint-scoped grant is limited to. */
  readonly normalized: string;
  /** What the request shows: the text cut as in records, parameters masked as in records. */
  readonly shown: { readonly text: string; readonly parameters?: readonly string[] };
  readonly decision: CombinedDecision;
  readonly approval: ApprovalRequirement;
}

export interface HeldCommand {
  readonly name: string;
  readonly namespace: string;
  readonly bindingHash: string;
  readonly expiresTime: string;
  readonly requiredApprovals: number;
  /**
   * Settles when the request is filed (true), or false when none was: it could not be (`result` says why),
   * or a grant covers the command (`result` is approved at once).
   */
  readonly filed: Promise<boolean>;
  /** Settles once; never rejects. */
  readonly result: Promise<HoldResult>;
  /** The client cancelled or went away: settles as Cancelled unless already settled. */
  cancel(why: string): void;
}

export interface ApprovalDeskOptions {
  readonly store: ApprovalRequestStore;
  readonly pod: { readonly name: string; readonly uid: string };
  readonly logger: Logger;
  readonly registry?: Registry;
  /** ms since the epoch. */
  readonly now?: () => number;
}

/**
 * What an approval is bound to (docs/approvals.md): the hash its request carries, and by which the identical
 * command sent again is recognised (deferred-approvals.ts).
 */
export function bindingHashOf(
  request: Pick<HoldRequest, 'resource' | 'session' | 'requester' | 'kind' | 'exact'>,
): string {
  return approvalBindingHash({
    resource: request.resource,
    session: request.session,
    requester: request.requester,
    command: { kind: request.kind, text: request.exact.text, parameters: request.exact.parameters },
  });
}

/** RFC 3339 without fractions (as the CRD's date-time fields are written elsewhere). */
function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

/** A DNS-subdomain name for a request: the resource and 10 random hex digits. */
function requestName(resource: string): string {
  return `${resource
    .slice(0, 40)
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/-+$/, '')}-${randomBytes(5).toString('hex')}`;
}

const REASONS: Readonly<Record<HoldPhase, string>> = {
  Approved: 'Approved',
  Denied: 'Denied',
  Expired: 'Expired',
  Cancelled: 'Cancelled',
  Abandoned: 'SidecarStopped',
  Withdrawn: 'Withdrawn',
};

class Hold implements HeldCommand {
  readonly name: string;
  readonly namespace: string;
  readonly bindingHash: string;
  readonly expiresTime: string;
  readonly requiredApprovals: number;
  readonly filed: Promise<boolean>;
  readonly result: Promise<HoldResult>;
  private settleWith!: (r: HoldResult) => void;
  private settled: HoldResult | undefined;
  private uid: string | undefined;
  private resourceVersion: string | undefined;
  private abort: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  private tally: ApprovalTally | undefined;
  private readonly desk: ApprovalDesk;
  private readonly spec: ApprovalRequest['spec'];
  /** What a grant made from this request's approval is for. */
  private readonly grantFor: Pick<HoldRequest, 'resource' | 'requester' | 'session' | 'normalized'> & {
    readonly policy: string;
    readonly rule: string;
  };
  /** wait: false: nobody waits on a connection; the identical command sent again runs once approved. */
  private readonly answeredAtOnce: boolean;
  /** Phase write in flight after settling (awaited on shutdown). */
  phaseWritten: Promise<void> = Promise.resolve();

  constructor(desk: ApprovalDesk, request: HoldRequest, now: number) {
    this.desk = desk;
    const store = desk.options.store;
    this.namespace = store.namespace;
    this.name = requestName(request.resource.name);
    this.bindingHash = bindingHashOf(request);
    const approval = request.approval;
    this.answeredAtOnce = approval.wait === false;
    this.requiredApprovals = Math.min(10, Math.max(1, approval.requiredApprovals));
    const timeoutMs = Math.max(1, approval.timeoutSeconds) * 1000;
    this.expiresTime = rfc3339(now + timeoutMs);
    this.result = new Promise((resolve) => {
      this.settleWith = resolve;
    });
    const requester = request.requester;
    this.grantFor = {
      resource: request.resource,
      requester,
      session: request.session,
      normalized: request.normalized,
      policy: request.decision.policy,
      rule: request.decision.rule,
    };
    this.spec = {
      resource: request.resource.name,
      session: request.session,
      pod: { name: desk.options.pod.name, ...(desk.options.pod.uid === '' ? {} : { uid: desk.options.pod.uid }) },
      requester: {
        subject: requester.subject,
        issuer: requester.issuer,
        ...(requester.kind === undefined ? {} : { kind: requester.kind }),
        ...(requester.groups === undefined ? {} : { groups: requester.groups.slice(0, 64) }),
        ...(requester.chain === undefined ? {} : { chain: requester.chain }),
        ...(requester.exchange === undefined ? {} : { exchange: requester.exchange }),
        ...(requester.tokenHash === undefined ? {} : { tokenHash: requester.tokenHash }),
      },
      bindingHash: this.bindingHash,
      commandId: request.commandId,
      command: {
        kind: request.kind,
        text: request.shown.text,
        ...(request.shown.parameters === undefined
          ? {}
          : { parameters: request.shown.parameters.slice(0, 64).map((p) => p.slice(0, 1024)) }),
      },
      policy: {
        name: request.decision.policy.slice(0, 256),
        rule: request.decision.rule.slice(0, 256),
        ...(request.decision.bundleDigest === '' ? {} : { bundleDigest: request.decision.bundleDigest }),
      },
      requiredApprovals: this.requiredApprovals,
      ...(approval.approverGroups.length === 0 ? {} : { approverGroups: approval.approverGroups.slice(0, 32) }),
      ...(approval.approvers.length === 0 ? {} : { approvers: approval.approvers.slice(0, 32) }),
      allowSelfApproval: approval.allowSelfApproval,
      expiresTime: this.expiresTime,
      ...(approval.grants === undefined || approval.grants.scopes.length === 0
        ? {}
        : {
            grants: {
              scopes: [...approval.grants.scopes],
              maxDurationSeconds: Math.min(86_400, Math.max(1, Math.floor(approval.grants.maxSeconds))),
            },
          }),
    };
    // The timer runs from now, not from filing: the expiry written into the request is what counts.
    this.timer = setTimeout(() => {
      this.settle({
        state: 'refused',
        phase: 'Expired',
        error: {
          id: 'ApprovalExpired',
          message: `chaperone: approval request ${this.name} expired at ${this.expiresTime} without enough approvals; the statement did not run`,
          hint: 'Run the statement again to file a new request.',
        },
        tally: this.tally,
      });
    }, timeoutMs);
    this.filed = this.file();
  }

  private async file(): Promise<boolean> {
    const store = this.desk.options.store;
    const body: ApprovalRequest = {
      apiVersion: API_VERSION,
      kind: 'ApprovalRequest',
      metadata: {
        name: this.name,
        namespace: this.namespace,
        labels: { [APPROVAL_POD_LABEL]: this.desk.options.pod.name.slice(0, 63) },
      },
      spec: this.spec,
    };
    let created: ApprovalRequest;
    try {
      created = await store.create(body);
    } catch (err) {
      this.desk.options.logger.warn('approval request could not be filed', { request: this.name, error: err });
      this.settle(
        {
          state: 'refused',
          phase: 'Withdrawn',
          error: {
            id: 'ApprovalUnavailable',
            message:
              `chaperone: the approval request for this statement could not be filed: ${(err as Error).message}`.slice(
                0,
                1024,
              ),
            hint: 'The statement did not run.',
          },
          tally: undefined,
        },
        false,
      );
      return false;
    }
    this.uid = created.metadata.uid;
    this.resourceVersion = created.metadata.resourceVersion;
    if (this.settled !== undefined) {
      // Cancelled (or the desk closed) while the create was in flight: say so in the request.
      this.writePhase(this.settled);
      return true;
    }
    // Pending from the start, for `kubectl get` and the approvers' list (a status without phase is invalid).
    await store
      .setPhase(
        this.name,
        'Pending',
        'WaitingForApprovals',
        `waiting for ${String(this.requiredApprovals)} approval(s)`,
      )
      .catch((err: unknown) => {
        this.desk.options.logger.warn('approval request not marked Pending', { request: this.name, error: err });
      });
    const settledMeanwhile = this.settledResult();
    if (settledMeanwhile !== undefined) {
      this.writePhase(settledMeanwhile);
      return true;
    }
    void store
      .event(
        created,
        'Normal',
        'ApprovalRequested',
        `${this.spec.requester.subject} asks to run a ${this.spec.command.kind} command on ${this.spec.resource} (rule ${this.spec.policy.rule}); ${String(this.requiredApprovals)} approval(s) needed before ${this.expiresTime}`,
      )
      .catch((err: unknown) => {
        this.desk.options.logger.warn('approval event not posted', { request: this.name, error: err });
      });
    this.follow();
    return true;
  }

  /** Watches the request until it settles; re-reads and re-watches when a watch ends early. */
  private follow(): void {
    if (this.settled !== undefined) return;
    const store = this.desk.options.store;
    store
      .watch(
        this.name,
        this.resourceVersion,
        (event) => {
          this.observe(event);
        },
        () => {
          this.abort = undefined;
          void this.resume();
        },
      )
      .then(
        (abort) => {
          if (this.settled === undefined) this.abort = abort;
          else abort.abort();
        },
        () => void this.resume(),
      );
  }

  /** After a watch ended: read the object as it is (catching up on anything missed) and watch again. */
  private async resume(): Promise<void> {
    if (this.settled !== undefined) return;
    await sleep(250);
    if (this.isSettled()) return;
    try {
      const current = await this.desk.options.store.get(this.name);
      this.observe(current === undefined ? { type: 'deleted' } : { type: 'changed', object: current });
    } catch (err) {
      this.desk.options.logger.warn('approval request read failed; retrying', { request: this.name, error: err });
      await sleep(1000);
      this.resourceVersion = undefined;
    }
    this.follow();
  }

  private observe(event: ObservedRequest): void {
    if (this.settled !== undefined) return;
    const withdrawn = (why: string): void => {
      this.settle({
        state: 'refused',
        phase: 'Withdrawn',
        error: {
          id: 'ApprovalUnavailable',
          message: `chaperone: approval request ${this.name} ${why} while pending; the statement did not run`,
        },
        tally: this.tally,
      });
    };
    if (event.type === 'deleted') {
      withdrawn('was deleted');
      return;
    }
    const object = event.object;
    // Only the object this sidecar filed, bound to exactly this command, can approve it.
    if (object.metadata.uid !== this.uid || object.spec.bindingHash !== this.bindingHash) {
      withdrawn('was replaced by another object');
      return;
    }
    if (object.metadata.resourceVersion !== undefined) this.resourceVersion = object.metadata.resourceVersion;
    // The tally runs over the spec this sidecar wrote (immutable; the hash above proves it is ours).
    const tally = tallyDecisions(this.spec, object.status?.decisions ?? []);
    this.tally = tally;
    if (tally.state === 'approved') this.settle({ state: 'approved', tally });
    else if (tally.state === 'denied') {
      const by = tally.counted.filter((d) => d.decision === 'deny').map((d) => d.approver.username);
      const comment = tally.counted.find((d) => d.decision === 'deny')?.comment;
      this.settle({
        state: 'refused',
        phase: 'Denied',
        error: {
          id: 'ApprovalDenied',
          message: `chaperone: approval request ${this.name} was denied by ${by.join(', ')}; the statement did not run`,
          ...(comment === undefined ? {} : { detail: `comment: ${comment}` }),
        },
        tally,
      });
    } else if (tally.counted.length > 0) {
      this.desk.options.logger.info('approval request partly approved', {
        request: this.name,
        approvals: tally.approvals,
        required: tally.required,
      });
    }
  }

  /** Methods, not field reads: the hold can settle while an API call is awaited. */
  private isSettled(): boolean {
    return this.settled !== undefined;
  }

  private settledResult(): HoldResult | undefined {
    return this.settled;
  }

  cancel(why: string): void {
    this.settle({
      state: 'refused',
      phase: 'Cancelled',
      error: {
        id: 'ApprovalCancelled',
        message: `chaperone: the held statement was cancelled (${why}); approval request ${this.name} is withdrawn and the statement did not run`,
      },
      tally: this.tally,
    });
  }

  abandon(): void {
    this.settle({
      state: 'refused',
      phase: 'Abandoned',
      error: {
        id: 'ApprovalAbandoned',
        message: `chaperone: the sidecar is shutting down; approval request ${this.name} is abandoned and the statement did not run`,
      },
      tally: this.tally,
    });
  }

  /** Settles once: stops the watch and the timer and records the phase in the request. */
  private settle(result: HoldResult, write = true): void {
    if (this.settled !== undefined) return;
    this.settled = result;
    clearTimeout(this.timer);
    this.abort?.abort();
    this.abort = undefined;
    if (write && this.uid !== undefined) this.writePhase(result);
    let final = result;
    const terms = result.state === 'approved' ? grantOf(this.spec, result.tally) : undefined;
    if (result.state === 'approved' && terms !== undefined && this.uid !== undefined) {
      const grant = this.desk.grants.start(
        {
          request: this.name,
          uid: this.uid,
          resourceVersion: this.resourceVersion,
          party: this.grantFor,
          session: this.grantFor.session,
          normalized: this.grantFor.normalized,
          terms,
          decisions: result.tally.counted.filter((d) => d.decision === 'approve'),
        },
        this.phaseWritten,
      );
      final = { ...result, grant };
      this.settled = final;
    }
    this.desk.settled(this, final);
    this.settleWith(final);
  }

  private writePhase(result: HoldResult): void {
    const phase: ApprovalPhase =
      result.state === 'approved' ? 'Approved' : result.phase === 'Withdrawn' ? 'Cancelled' : result.phase;
    if (result.state === 'refused' && result.phase === 'Withdrawn' && this.uid === undefined) return;
    const message =
      result.state === 'approved'
        ? `approved by ${result.tally.counted.map((d) => d.approver.username).join(', ')}; ${this.answeredAtOnce ? 'the statement runs once when the client sends it again on its session' : 'the sidecar runs the statement'}`
        : result.error.message;
    const reason = result.state === 'approved' ? 'Approved' : REASONS[result.phase];
    this.phaseWritten = this.desk.options.store.setPhase(this.name, phase, reason, message).catch((err: unknown) => {
      // A deleted request (Withdrawn) has no status to write; anything else is only a missing label for humans.
      this.desk.options.logger.warn('approval request phase not written', { request: this.name, phase, error: err });
    });
  }
}

export class ApprovalDesk {
  readonly options: ApprovalDeskOptions;
  /** Time-bound grants made by approvals of this sidecar's requests. */
  readonly grants: ApprovalGrants;
  private readonly held = new Set<Hold>();
  private readonly outcomes: Counter<'result'> | undefined;
  private closed = false;

  constructor(options: ApprovalDeskOptions) {
    this.options = options;
    this.grants = new ApprovalGrants({
      store: options.store,
      logger: options.logger,
      ...(options.now === undefined ? {} : { now: options.now }),
    });
    this.outcomes =
      options.registry === undefined
        ? undefined
        : new Counter({
            name: 'chaperone_approvals_total',
            help: 'Commands held for approval, by how the hold ended (Granted: run under a time-bound grant, not held).',
            labelNames: ['result'],
            registers: [options.registry],
          });
  }

  /**
   * Marks requests this pod's sidecar filed before it (re)started and left Pending as Abandoned: their
   * connections died with the old process, so they can never run, and nobody should approve them.
   */
  async start(): Promise<void> {
    const { store, pod, logger } = this.options;
    let mine: ApprovalRequest[];
    try {
      mine = await store.listOfPod(pod.name);
    } catch (err) {
      logger.warn('pending approval requests of an earlier run could not be listed', { error: err });
      return;
    }
    const ofThisPod = (r: ApprovalRequest): boolean =>
      pod.uid === '' || r.spec.pod?.uid === undefined || r.spec.pod.uid === pod.uid;
    const leftovers = mine.filter((r) => (r.status?.phase ?? 'Pending') === 'Pending' && ofThisPod(r));
    // Grants an earlier run made died with it: say so in their requests.
    const granted = mine.filter(
      (r) => r.status?.grant !== undefined && r.status.grant.endReason === undefined && ofThisPod(r),
    );
    for (const r of granted) {
      const grant = r.status?.grant;
      if (grant === undefined) continue;
      await store
        .setGrant(r.metadata.name ?? '', {
          ...grant,
          endTime: rfc3339((this.options.now ?? Date.now)()),
          endReason: 'SidecarStopped',
        })
        .catch((err: unknown) => {
          logger.warn('approval grant of an earlier run not marked ended', { request: r.metadata.name, error: err });
        });
    }
    for (const r of leftovers) {
      const name = r.metadata.name ?? '';
      await store
        .setPhase(
          name,
          'Abandoned',
          'SidecarRestarted',
          'the sidecar holding this statement restarted; its client connection is gone and the statement never ran',
        )
        .then(() => {
          logger.info('approval request of an earlier run abandoned', { request: name });
          this.outcomes?.inc({ result: 'Abandoned' });
        })
        .catch((err: unknown) => {
          logger.warn('approval request of an earlier run not marked abandoned', { request: name, error: err });
        });
    }
  }

  /** Files a request for a held command and follows it; see HeldCommand. */
  hold(request: HoldRequest): HeldCommand {
    const hold = new Hold(this, request, (this.options.now ?? Date.now)());
    this.held.add(hold);
    if (this.closed) hold.abandon();
    return hold;
  }

  /** Called by a hold when it settles. */
  settled(hold: Hold, result: HoldResult): void {
    this.held.delete(hold);
    this.outcomes?.inc({ result: result.state === 'approved' ? 'Approved' : result.phase });
    this.options.logger.info('approval request settled', {
      request: hold.name,
      result: result.state === 'approved' ? 'Approved' : result.phase,
      approvers: (result.tally?.counted ?? []).map((d) => d.approver.username),
    });
  }

  /** A command ran under a grant instead of being held. */
  countGranted(): void {
    this.outcomes?.inc({ result: 'Granted' });
  }

  /**
   * Abandons every held command (their clients get ApprovalAbandoned), ends every grant, and waits for the
   * phases and grants to be written.
   */
  async close(): Promise<void> {
    this.closed = true;
    const holds = [...this.held];
    for (const h of holds) h.abandon();
    await Promise.all([
      Promise.race([Promise.allSettled(holds.map((h) => h.phaseWritten)), sleep(3000)]),
      this.grants.close(),
    ]);
  }
}
