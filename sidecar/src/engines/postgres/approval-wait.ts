// A connection's command waiting for approval (core/approvals): the NoticeResponse naming the request, sent
// once it is filed and only at a frame boundary of the stream to the client (never inside a frame being
// relayed); the withdrawal when the client cancels or goes away; and the bound on what the client may send
// meanwhile (it is still read, so that a disconnect is seen at once).
import type { Duplex } from 'node:stream';
import type { ClientNotice } from '../../core/approvals/approval-notice.ts';
import { noticeFor } from './error-responses.ts';

/** Client bytes buffered while a command waits for approval before the socket is paused. */
export const MAX_BUFFERED_WHILE_HELD = 1024 * 1024;

export interface ApprovalHold {
  /** The notice once the request is filed; undefined when it could not be (the refusal follows). */
  readonly notice: Promise<ClientNotice | undefined>;
  cancel(why: string): void;
}

export class ApprovalWait {
  private held: ApprovalHold | undefined;
  /** When the held command has settled (its records are written by then). */
  private until: Promise<unknown> | undefined;
  private notice: Buffer | undefined;

  get active(): boolean {
    return this.held !== undefined;
  }

  /**
   * Starts waiting when the hold is for an approval (else does nothing) until `until` settles, and returns
   * the frame to forward later: a copy, since the client is still read while it waits. The notice goes to
   * the client as soon as the request is filed, if the stream to it is at a frame boundary then, else with
   * the next upstream chunk (flushTo). The client going away withdraws the request; a client that sends
   * more than MAX_BUFFERED_WHILE_HELD bytes meanwhile is paused.
   */
  begin(
    verdict: { readonly approval?: ApprovalHold; readonly until: Promise<unknown> },
    frame: Buffer,
    client: Duplex,
    decoder: { readonly bufferedBytes: number },
    stream: { readonly atFrameBoundary: boolean },
  ): Buffer {
    const { approval: hold, until } = verdict;
    if (hold === undefined) return frame;
    this.held = hold;
    this.until = until;
    const onData = (): void => {
      if (decoder.bufferedBytes > MAX_BUFFERED_WHILE_HELD) client.pause();
    };
    const onClose = (): void => {
      this.cancel('client disconnected');
    };
    client.on('data', onData);
    client.once('close', onClose);
    // Registered before the connection's own reaction to the settled hold, so it runs first.
    void until.then(() => {
      client.off('data', onData);
      client.off('close', onClose);
      if (this.held === hold) this.end();
    });
    void hold.notice.then((notice) => {
      if (notice === undefined || this.held !== hold) return;
      if (stream.atFrameBoundary) client.write(noticeFor(notice));
      else this.notice = noticeFor(notice);
    });
    return Buffer.from(frame);
  }

  /** Adds the notice still to send to `out`, when the stream is at a frame boundary now. */
  flushTo(out: { push(frame: Buffer): void }, atFrameBoundary: boolean): void {
    if (this.notice === undefined || !atFrameBoundary) return;
    out.push(this.notice);
    this.notice = undefined;
  }

  /** The hold settled. */
  end(): void {
    this.held = undefined;
    this.until = undefined;
    this.notice = undefined;
  }

  /**
   * The connection closes: withdraws the waiting command, if any, and calls `then` once it has settled, so
   * that what its withdrawal records (approval.decided) comes before the session's end; else at once.
   */
  withdraw(why: string, then: () => void): void {
    const until = this.until;
    if (until === undefined || !this.cancel(why)) {
      then();
      return;
    }
    void until.then(then, then);
  }

  /** Withdraws the waiting command, if any; false when none waits. */
  cancel(why: string): boolean {
    const held = this.held;
    if (held === undefined) return false;
    this.end();
    held.cancel(why);
    return true;
  }
}
