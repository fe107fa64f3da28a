// What the upstream sends the client, looked at where the sidecar must: the frames the response tracker
// tracks go through it (it reports outcomes and rewrites masked results), NotificationResponses from this
// session's own backend get the pid the client knows, and every ParameterStatus is noted for upstream reuse
// and checked against what the analysis assumes (analysis/session-state.ts). Everything else streams as it
// came. No sockets: the connection feeds it chunks and writes what it queued.
import type { ServerReportedState } from './analysis/session-state.ts';
import type { OutboundBytes } from './outbound-bytes.ts';
import type { ResponseTracker } from './response-tracker.ts';
import { BackendCode } from './protocol/backend-messages.ts';
import { decodeParameterStatus, withNotifierPid, type BackendScanner } from './protocol/backend-scanner.ts';
import type { LeasedUpstream } from './upstream-reuse.ts';

/** A reported setting that makes the server read statements differently from the analysis. */
export interface StateRefusal {
  readonly name: string;
  readonly value: string;
  readonly reason: string;
}

export interface UpstreamFramesOptions {
  readonly scanner: BackendScanner;
  readonly tracker: ResponseTracker;
  readonly serverState: ServerReportedState;
  readonly lease: LeasedUpstream;
  /** The upstream backend's pid, and the one the client was given in its place. */
  readonly upstreamPid: number | undefined;
  readonly clientPid: number;
}

export class UpstreamFrames {
  private readonly scanner: BackendScanner;
  private readonly tracker: ResponseTracker;
  private readonly serverState: ServerReportedState;
  private readonly lease: LeasedUpstream;
  private readonly upstreamPid: number | undefined;
  private readonly clientPid: number;

  constructor(options: UpstreamFramesOptions) {
    this.scanner = options.scanner;
    this.tracker = options.tracker;
    this.serverState = options.serverState;
    this.lease = options.lease;
    this.upstreamPid = options.upstreamPid;
    this.clientPid = options.clientPid;
  }

  /**
   * Queues on `out` what the client gets for `chunk`. Stops at a ParameterStatus the analysis cannot accept
   * (what came before it is queued) and returns why; throws a ProtocolViolation on a malformed frame.
   */
  relay(chunk: Buffer, out: OutboundBytes): StateRefusal | undefined {
    const tracker = this.tracker;
    // DataRows are looked at only while a queued command rewrites its response (result masking), notices
    // also for good once the session is masked (masking/server-messages.ts).
    const server = tracker.serverMessages;
    this.scanner.setInterested(BackendCode.DataRow, tracker.wantsDataRows);
    this.scanner.setInterested(BackendCode.NoticeResponse, tracker.wantsNotices);
    this.scanner.push(chunk);
    out.readFrom(chunk); // usually written as it was read: nothing in it is replaced
    for (let seg = this.scanner.next(); seg !== null; seg = this.scanner.next()) {
      if (seg.kind === 'raw') out.push(seg.bytes);
      else if (seg.code === BackendCode.NotificationResponse) {
        // Notifications from this session's own backend carry the pid the client knows: ours.
        const pid = this.upstreamPid;
        const frame = pid == null ? seg.frame : withNotifierPid(seg.frame, pid, this.clientPid);
        const scrubbed = server.notification(frame);
        if (scrubbed !== undefined) tracker.noteWithheld('NotificationResponse');
        out.push(scrubbed ?? frame);
      } else if (seg.code === BackendCode.ParameterStatus) {
        const { name, value } = decodeParameterStatus(seg.frame);
        this.lease.noteParameter(name, value);
        const reason = this.serverState.note(name, value);
        // The server now reads statements differently from the analysis (or dropped the read-only guard):
        // nothing more may reach it.
        if (reason !== undefined) return { name, value, reason };
        if (server.reports(name)) out.push(seg.frame);
        else tracker.noteWithheld('ParameterStatus');
      } else out.push(tracker.onFrame(seg.code, seg.frame));
    }
    return undefined;
  }
}
