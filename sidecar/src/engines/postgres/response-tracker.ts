// What the PostgreSQL engine expects the upstream to answer, in pipeline order, and how each decided command
// ended. Pure: the connection tells it what it forwarded (expect, sync, copyEnd) and shows it the few
// upstream frames it registered interest in (onFrame); it returns the bytes to send the client in their
// place and reports outcomes through a callback. No sockets, no timers: tested on its own.
//
// Denials travel through the upstream (statement-gate.ts): the substituted message fails there, and the
// upstream's ErrorResponse for it is replaced here by the unit's Denial, so responses keep pipeline order and
// PostgreSQL's own failed-transaction and skip-until-Sync semantics hold.
import type { CommandOutcome, DecidedCommand, RolledBack } from '../../core/command.ts';
import { QUERY_CANCELED, type Denial } from './error-responses.ts';
import { BackendCode, type ErrorFields, type TransactionStatus } from './protocol/backend-messages.ts';
import { commandCompleteRows, decodeErrorFields, decodeReadyForQuery } from './protocol/backend-scanner.ts';
import type { ResultRewriter } from './masking/row-masker.ts';
import { ServerMessages, type WithheldMessage } from './masking/server-messages.ts';
import { TransactionLog, type TransactionControl } from './transaction-log.ts';
import { completes, undo, withheldCounts, type ResponseUnit, type UndoFailed, type UnitKind } from './response-unit.ts';

export type { UndoFailed, UnitKind } from './response-unit.ts';

/**
 * Rewrites one command's response (result masking, masking/row-masker.ts): called for its RowDescription,
 * every DataRow, ErrorResponse and NoticeResponse while its unit is the head of the pipeline, and at the end
 * of each statement; each call returns the frame to send instead. Its counts go to the outcome record.
 */
export type { ResultRewriter } from './masking/row-masker.ts';

/** Backend frames the tracker must see whole; everything else streams to the client untouched. */
export const TRACKED_FRAMES: readonly BackendCode[] = [
  BackendCode.CommandComplete,
  BackendCode.ErrorResponse,
  BackendCode.ReadyForQuery,
  BackendCode.EmptyQueryResponse,
  BackendCode.PortalSuspended,
  BackendCode.ParseComplete,
  BackendCode.BindComplete,
  BackendCode.CloseComplete,
  BackendCode.RowDescription,
  BackendCode.NoData,
  BackendCode.CopyInResponse,
];

export interface ResponseTrackerOptions {
  /** Called once for every decided command, when its outcome is known. */
  readonly onOutcome: (command: DecidedCommand, outcome: CommandOutcome) => void;
  /** Transaction status from the upstream's ReadyForQuery at login. */
  readonly transactionStatus?: TransactionStatus;
  /** The masking hash key: detectors with the hash strategy in server messages (masking/server-messages.ts). */
  readonly hashKey?: Buffer;
}

export class ResponseTracker {
  private readonly onOutcome: ResponseTrackerOptions['onOutcome'];
  private readonly units: ResponseUnit[] = [];
  private head = 0;
  /** After an extended-protocol error the upstream ignores messages until Sync; so do we. */
  private skipping = false;
  /**
   * The sidecar sent a refusal's substitute (a Parse, Bind or Execute) since the client's last Sync: what the
   * client pipelines behind it up to its Sync is skipped upstream, but still decided for the record.
   */
  private refused = false;
  /** The refusal the commands skipped behind wait for, while its own outcome is not recorded yet. */
  private refusal: ResponseUnit | undefined;
  /** What the gate assumed the commands skipped behind a refusal did to names: taken back at the Sync. */
  private readonly skippedUndos: (() => void)[] = [];
  /** The upstream entered copy-in and neither the client (CopyDone/CopyFail) nor the server (its error) ended it. */
  private clientInCopyIn = false;
  /** Units queued so far: each unit's `seq`, the pipeline position of a client message. */
  private queued = 0;
  /**
   * Set by CopyData the client sent while units queued before it were unanswered (one of them may be a COPY
   * FROM STDIN the server is running): the `seq` the next unit would get then. Cleared by CopyDone or CopyFail.
   */
  private copyDataAfter: number | undefined;
  /** Units queued that carry a ResultRewriter. */
  private rewriters = 0;
  /** The rewriters of the commands answered since the last ReadyForQuery: what the next Sync commits. */
  private committing: ResultRewriter[] = [];
  /**
   * Executes that completed since the last ReadyForQuery or transaction-control statement: their outcome
   * waits for the transaction they ran in. An implicit transaction commits at Sync (or at a Query, or an
   * Execute of COMMIT) and may still fail there (a deferred constraint, a serialization failure), or an
   * error later in the batch rolls it back: the outcome must say so, not `success`.
   */
  private uncommitted: ResponseUnit[] = [];
  /** The first error since the last ReadyForQuery: what ended the transaction if it ends idle ('I'). */
  private transactionError: ErrorFields | undefined;
  /** The commands recorded `success` in the open transaction block: what a rollback undoes. */
  private readonly transactionLog = new TransactionLog();
  /** While a COMMIT or ROLLBACK Execute settles the Executes before it: they ran in its transaction. */
  private ending = false;
  /** An Execute was answered since the last ReadyForQuery: what it changed is not committed yet. */
  private executedBeforeSync = false;
  /** From the upstream's latest ReadyForQuery. */
  transactionStatus: TransactionStatus;
  /** What a masking session's notices, errors, notifications and reported settings keep. */
  readonly serverMessages: ServerMessages;

  constructor(options: ResponseTrackerOptions) {
    this.onOutcome = options.onOutcome;
    this.transactionStatus = options.transactionStatus ?? 'I';
    this.serverMessages = new ServerMessages(options.hashKey);
  }

  /**
   * True after an extended-protocol error until the client's next Sync: the upstream discards what the
   * client sends meanwhile, so no response is expected (and, after a server error, nothing is decided).
   */
  get discardingUntilSync(): boolean {
    return this.skipping;
  }

  /**
   * True after the sidecar refused a Parse, Bind or Execute until the client's next Sync: the upstream skips
   * what follows, which is decided and recorded `cancelled` but never held or filed for approval.
   */
  get refusedUntilSync(): boolean {
    return this.refused;
  }

  /**
   * A command skipped behind a refusal: `undo` (what the gate assumed it did to the names of statements and
   * portals) runs at the Sync, so that later commands of the pipeline are decided as what they would run.
   */
  skippedBehindRefusal(undo: (() => void) | undefined): void {
    if (undo !== undefined) this.skippedUndos.push(undo);
  }

  /**
   * The outcome of a command skipped behind a refusal. It is known when the client sends the command, but
   * the refusal's own outcome only when the upstream's error for its substitute arrives: recorded after that
   * one, so that outcomes follow the order the client sent the commands in.
   */
  skippedOutcome(command: DecidedCommand, outcome: CommandOutcome): void {
    const refusal = this.refusal;
    if (refusal === undefined) this.onOutcome(command, outcome);
    else (refusal.behind ??= []).push([command, outcome]);
  }

  /** Calls `ready` with the transaction status of the ReadyForQuery that answers the message queued last. */
  atReady(ready: ((status: TransactionStatus) => void) | undefined): void {
    const unit = this.units.at(-1);
    if (unit !== undefined && ready !== undefined) unit.ready = ready;
  }

  /** True while some queued command has a ResultRewriter: DataRows must then be shown to onFrame. */
  get wantsDataRows(): boolean {
    return this.rewriters > 0;
  }

  /** True while notices must be shown to onFrame: a command rewrites its response, or the session is masked. */
  get wantsNotices(): boolean {
    return this.rewriters > 0 || this.serverMessages.active;
  }

  /** A server message of `kind` was withheld: counted on the outcome of the command being answered. */
  noteWithheld(kind: WithheldMessage): void {
    const unit = this.units[this.head];
    if (unit?.command === undefined) return;
    unit.withheld ??= new Map();
    unit.withheld.set(kind, (unit.withheld.get(kind) ?? 0) + 1);
  }

  /** Responses still expected. */
  get pending(): number {
    return this.units.length - this.head;
  }

  /**
   * Responses still expected to what runs or commits statements (Query, Execute, the end of a COPY, Sync):
   * the Parse, Bind, Describe and Close a driver pipelines ahead of an Execute change nothing the catalogue
   * shows. An Execute already answered counts until the next ReadyForQuery: its implicit transaction is
   * open until the client's Sync (a client that pipelines with Flush gets the CommandComplete first).
   */
  get pendingStatements(): number {
    let n = this.executedBeforeSync ? 1 : 0;
    for (let i = this.head; i < this.units.length; i++) {
      const kind = this.units[i]?.kind;
      if (kind === 'query' || kind === 'execute' || kind === 'copy-end' || kind === 'sync') n++;
    }
    return n;
  }

  // ---- what the client sent --------------------------------------------------------------------

  /** The connection forwarded a message (or its substitute) that the upstream answers. */
  expect(
    kind: UnitKind,
    command?: DecidedCommand,
    denial?: Denial,
    rows?: ResultRewriter,
    described?: (rowDescription: Buffer) => void,
    control?: TransactionControl,
  ): void {
    if (rows !== undefined) this.rewriters += 1;
    this.serverMessages.noteCommand(command);
    this.units.push({
      seq: this.queued++,
      kind,
      command,
      denial,
      rows,
      described,
      rowCount: 0,
      error: undefined,
      undo: undefined,
      withheld: undefined,
      control,
      rollbackTag: false,
      ready: undefined,
      behind: undefined,
    });
    // A substitute fails upstream (substitute-frames.ts), which then skips to Sync: what the client pipelined
    // behind it cannot run (refusedUntilSync), and gets no response.
    if (denial !== undefined && (kind === 'parse' || kind === 'bind' || kind === 'execute')) {
      this.skipping = true;
      this.refused = true;
      this.refusal = this.units.at(-1);
    }
  }

  /**
   * What to do when the message queued last does not complete in the upstream (its own error, an error in
   * an earlier statement of its Query string, or skipped after an earlier error until Sync): the gate takes
   * back what it assumed the message did to the names of statements, portals and cursors (statement-gate.ts).
   */
  onFailure(undo: UndoFailed | undefined): void {
    const unit = this.units.at(-1);
    if (unit !== undefined && undo !== undefined) unit.undo = undo;
  }

  /** expect, then onFailure: a message whose effect on names the gate assumed (Bind, Close). */
  expectUndoable(kind: UnitKind, undo: UndoFailed | undefined): void {
    this.expect(kind);
    this.onFailure(undo);
  }

  /**
   * The client sent Sync; returns whether to forward it. PostgreSQL ignores Sync during copy-in (libpq sends
   * one right after an extended-protocol COPY FROM STDIN's Execute, which CopyInResponse accounts for), but
   * answers it once the COPY failed — and a COPY fails on the data the client sent, at a point the proxy
   * cannot know. A Sync sent in copy-in, or after CopyData a COPY still running may have read (before the
   * client's CopyDone or CopyFail), is therefore not forwarded: the server would have ignored it, or ends up
   * skipping until the next Sync exactly as the tracker does, and responses never lose their commands.
   */
  sync(): boolean {
    if (this.clientInCopyIn) return false;
    const oldest = this.units[this.head];
    if (this.copyDataAfter !== undefined && oldest !== undefined && oldest.seq < this.copyDataAfter) return false;
    this.copyDataAfter = undefined;
    this.skipping = false;
    this.refused = false;
    if (this.skippedUndos.length > 0) {
      for (const taken of this.skippedUndos.splice(0).reverse()) taken();
    }
    this.expect('sync');
    return true;
  }

  /** The client sent CopyData: outside any COPY the server drops it; see sync() for why it is noted. */
  copyData(): void {
    if (this.copyDataAfter === undefined && (this.clientInCopyIn || this.pending > 0)) this.copyDataAfter = this.queued;
  }

  /** The client sent CopyDone or CopyFail. */
  copyEnd(): void {
    this.copyDataAfter = undefined;
    if (this.clientInCopyIn) this.clientInCopyIn = false;
    else this.expect('copy-end'); // copy-in not seen yet: CopyInResponse will find this marker
  }

  // ---- what the upstream answered --------------------------------------------------------------

  /** Looks at one frame of a tracked type (or a DataRow while wantsDataRows); returns the bytes to send in its place. */
  onFrame(code: BackendCode, frame: Buffer): Buffer {
    let unit = this.units[this.head];
    // A copy-end marker waits behind the COPY it ends (onCopyIn takes it); at the head it marks a CopyDone
    // or CopyFail sent when no COPY was active, which the server ignores without an answer. Left there, it
    // would take the next statement's response (its rows unmasked, its outcome lost).
    while (unit?.kind === 'copy-end') {
      this.shift();
      unit = this.units[this.head];
    }
    switch (code) {
      case BackendCode.DataRow:
        // One or more whole DataRows (the scanner's dataRowRuns).
        return unit?.rows === undefined ? frame : unit.rows.dataRows(frame);
      case BackendCode.NoticeResponse: {
        // A statement that read masked data drops its notices; a masking session withholds the text of the rest.
        const rewritten =
          unit?.kind === 'sync'
            ? this.committing.reduce((f, r) => r.notice(f), frame)
            : unit?.rows === undefined
              ? frame
              : unit.rows.notice(frame);
        const scrubbed = rewritten.length === 0 ? undefined : this.serverMessages.notice(rewritten);
        if (scrubbed === undefined) return rewritten;
        this.noteWithheld('NoticeResponse');
        return scrubbed;
      }
      case BackendCode.CommandComplete:
        if (unit !== undefined) {
          unit.rows?.statementEnd();
          unit.rowCount += commandCompleteRows(frame) ?? 0;
          if (unit.control !== undefined && frame.toString('latin1', 5, frame.length - 1) === 'ROLLBACK') {
            unit.rollbackTag = true;
          }
          if (unit.kind === 'execute') this.executed(frame);
        }
        return frame;
      case BackendCode.EmptyQueryResponse:
      case BackendCode.PortalSuspended:
        unit?.rows?.statementEnd();
        if (unit?.kind === 'execute') this.executed(undefined);
        return frame;
      case BackendCode.RowDescription:
        if (unit?.kind === 'describe') unit.described?.(frame);
        if (unit !== undefined && completes(unit.kind, code)) this.shift();
        return unit?.rows === undefined ? frame : unit.rows.rowDescription(frame);
      case BackendCode.ParseComplete:
      case BackendCode.BindComplete:
      case BackendCode.CloseComplete:
      case BackendCode.NoData:
        if (unit !== undefined && completes(unit.kind, code)) this.shift();
        return frame;
      case BackendCode.CopyInResponse:
        this.onCopyIn();
        return frame;
      case BackendCode.ErrorResponse:
        // In copy-in the error is the COPY's: the server left copy-in, and answers what comes next.
        this.clientInCopyIn = false;
        return this.onError(unit, frame);
      case BackendCode.ReadyForQuery: {
        this.clientInCopyIn = false;
        this.transactionStatus = decodeReadyForQuery(frame);
        this.executedBeforeSync = false;
        if (this.committing.length > 0) this.committing = [];
        // Whatever is still queued up to here belonged to this Sync/Query and got no response of its own.
        let ready: ResponseUnit['ready'];
        for (let u = this.shift(); u !== undefined; u = this.shift()) {
          if (u.kind === 'query' || u.kind === 'sync') {
            if (u.kind === 'query') this.finish(u, u.error === undefined ? 'success' : 'error');
            ready = u.ready;
            break;
          }
          undo(u);
          this.finish(u, 'cancelled');
        }
        this.transactionEnded();
        if (this.transactionStatus === 'I') this.transactionLog.clear();
        ready?.(this.transactionStatus);
        return frame;
      }
      default:
        return frame;
    }
  }

  /**
   * The connection ends: every command still waiting for its response is recorded as cancelled. Returns the
   * commands recorded `success` in a transaction left open, which the server rolls back as the session goes.
   */
  cancelAll(): RolledBack | undefined {
    // Executes whose transaction never ended: the server rolls it back when the session goes.
    for (const u of this.uncommitted.splice(0)) this.finish(u, 'cancelled');
    for (let u = this.shift(); u !== undefined; u = this.shift()) this.finish(u, 'cancelled');
    return this.transactionLog.end();
  }

  // ---- internals -------------------------------------------------------------------------------

  /** The head Execute completed (`complete`: its CommandComplete; none for an empty query or a suspended portal). */
  private executed(complete: Buffer | undefined): void {
    this.executedBeforeSync = true;
    const unit = this.shift();
    if (unit?.command === undefined || unit.denial !== undefined) return;
    this.uncommitted.push(unit);
    // A transaction-control statement ended the transaction the earlier ones ran in: COMMIT committed them
    // (its failure is an ErrorResponse, not a CommandComplete), ROLLBACK is itself on the record.
    if (complete !== undefined && ENDS_TRANSACTION.test(complete.toString('latin1', 5, complete.length - 1))) {
      this.ending = true;
      for (const u of this.uncommitted.splice(0)) this.finish(u, 'success');
      this.ending = false;
    }
  }

  /**
   * At ReadyForQuery: the Executes held since the last one ran in a transaction that is now either still
   * open ('T', 'E': their statements succeeded; the block's end is recorded with its own statement),
   * committed, or, if an error came since and the session is idle, rolled back — then they did not happen,
   * and their outcome says which SQLSTATE undid them.
   */
  private transactionEnded(): void {
    const cause = this.transactionError;
    this.transactionError = undefined;
    if (this.uncommitted.length === 0) return;
    const rolledBack = cause !== undefined && this.transactionStatus === 'I';
    for (const u of this.uncommitted.splice(0)) {
      if (rolledBack) {
        // The cause's own message may echo rows this command may not see: its code only.
        u.error = {
          severity: 'ERROR',
          code: cause.code,
          message: `rolled back: the transaction failed with ${cause.code}`,
        };
        this.finish(u, 'error');
      } else this.finish(u, 'success');
    }
  }

  private shift(): ResponseUnit | undefined {
    const unit = this.units[this.head];
    if (unit === undefined) return undefined;
    this.head += 1;
    if (unit.rows !== undefined) {
      this.rewriters -= 1;
      this.committing.push(unit.rows);
    }
    if (this.head === this.units.length) {
      // Drained (the common case after every ReadyForQuery): reuse the array from the start.
      this.units.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.units.length) {
      this.units.splice(0, this.head);
      this.head = 0;
    }
    return unit;
  }

  /**
   * The upstream entered copy-in. Syncs the client sent since its COPY began are ignored by PostgreSQL, so
   * their units are dropped, up to the client's CopyDone/CopyFail if it already arrived; otherwise Syncs are
   * not queued until it does.
   */
  private onCopyIn(): void {
    const head = this.head;
    let end = -1;
    for (let i = head + 1; i < this.units.length; i++) {
      if (this.units[i]?.kind === 'copy-end') {
        end = i;
        break;
      }
    }
    const limit = end === -1 ? this.units.length : end + 1;
    const kept = this.units.slice(head + 1, limit).filter((u) => u.kind !== 'sync' && u.kind !== 'copy-end');
    this.units.splice(head + 1, limit - head - 1, ...kept);
    if (end === -1) this.clientInCopyIn = true;
  }

  private onError(unit: ResponseUnit | undefined, serverFrame: Buffer): Buffer {
    // In a masking session, before anything reads it: owner code may have raised it (masking/server-messages.ts).
    const scrubbed = this.serverMessages.error(serverFrame);
    if (scrubbed?.withheld === true) this.noteWithheld('ErrorResponse');
    const upstreamFrame = scrubbed?.frame ?? serverFrame;
    if (unit === undefined) return upstreamFrame; // e.g. a FATAL error before shutdown
    // Our denial fails its substitute upstream, which ends the transaction too: recorded with the denial's code.
    this.transactionError ??=
      unit.denial === undefined ? decodeErrorFields(upstreamFrame) : { ...DENIED, code: unit.denial.code };
    if (unit.kind === 'sync') {
      // Raised while the upstream processed Sync: the commit of the implicit transaction (a deferred
      // constraint, a serialization failure). Its ReadyForQuery follows and nothing is skipped. It may echo
      // rows the committed statements wrote ("Key (id, email)=(…) is not present"): scrubbed by each of their
      // rewriters.
      return this.committing.reduce((f, r) => r.error(f), upstreamFrame);
    }
    // A statement that read masked data may echo a value in its error: scrubbed before it is read or sent.
    const frame = unit.rows === undefined ? upstreamFrame : unit.rows.error(upstreamFrame);
    if (unit.kind === 'query') {
      // In a simple query the error ends the statements; ReadyForQuery completes the unit.
      unit.error = unit.denial === undefined ? decodeErrorFields(frame) : DENIED;
      undo(unit); // a statement of the string failed: the ones after it did not run, and may not have stuck
      return unit.denial?.frame ?? frame;
    }
    // Extended protocol: this message failed and the upstream now skips everything until Sync.
    const failed = this.shift();
    let cause: ErrorFields | undefined;
    if (failed !== undefined) {
      failed.error = failed.denial === undefined ? decodeErrorFields(frame) : undefined;
      undo(failed); // told its error: a Bind approved before it failed records it (statement-gate.ts)
      this.finish(failed, failed.denial === undefined ? 'error' : 'denied');
      // A Parse or Bind failed: the Execute that follows in this batch failed because of it.
      if (failed.command === undefined && failed.denial === undefined) cause = failed.error;
    }
    let syncQueued = false;
    for (let u = this.units[this.head]; u !== undefined; u = this.units[this.head]) {
      if (u.kind === 'sync') {
        syncQueued = true;
        break;
      }
      const skipped = this.shift();
      if (skipped !== undefined) undo(skipped);
      if (cause !== undefined && skipped?.kind === 'execute' && skipped.command !== undefined) {
        skipped.error = cause;
        cause = undefined;
        this.finish(skipped, 'error');
      } else {
        this.finish(skipped, 'cancelled');
      }
    }
    if (!syncQueued) this.skipping = true;
    return failed?.denial?.frame ?? frame;
  }

  private finish(unit: ResponseUnit | undefined, status: CommandOutcome['status']): void {
    this.report(unit, status);
    if (unit === undefined || unit.denial === undefined) return;
    if (unit === this.refusal) this.refusal = undefined;
    for (const [command, outcome] of unit.behind ?? []) this.onOutcome(command, outcome);
  }

  private report(unit: ResponseUnit | undefined, status: CommandOutcome['status']): void {
    const command = unit?.command;
    if (unit === undefined || command === undefined) return;
    if (unit.denial !== undefined) {
      this.onOutcome(command, { status: 'denied', code: unit.denial.code });
      return;
    }
    const error = unit.error;
    const succeeded = error === undefined && status === 'success';
    const control = unit.control;
    let rolledBack: RolledBack | undefined;
    if (control !== undefined) {
      // A COMMIT that failed ended its transaction rolled back (a simple query's only if the session is idle
      // after it: an earlier statement of its string may have failed instead, leaving the block open).
      const commitFailed = status === 'error' && (unit.kind !== 'query' || this.transactionStatus === 'I');
      rolledBack = this.transactionLog.apply(control, succeeded, unit.rollbackTag || commitFailed);
    }
    // Outside a transaction block (the common case) nothing is kept: an implicit transaction ended already.
    if (succeeded && (this.transactionStatus !== 'I' || this.ending) && control?.alone !== true) {
      this.transactionLog.note(command.id);
    }
    if (error === undefined && rolledBack === undefined && unit.rows === undefined && unit.withheld === undefined) {
      // The common outcome (nothing masked, withheld or rolled back), built without the spreads below.
      this.onOutcome(command, { status, rows: unit.rowCount });
      return;
    }
    const masked = [...(unit.rows?.counts() ?? []), ...withheldCounts(unit.withheld)];
    const counts = masked.length === 0 ? {} : { masked };
    if (error === undefined) {
      const rows = unit.rowCount;
      this.onOutcome(
        command,
        rolledBack === undefined ? { status, rows, ...counts } : { status, rows, ...counts, rolledBack },
      );
      return;
    }
    this.onOutcome(command, {
      status: error.code === QUERY_CANCELED ? 'cancelled' : 'error',
      code: error.code,
      message: error.message,
      rows: unit.rowCount,
      ...counts,
      ...(rolledBack === undefined ? {} : { rolledBack }),
    });
  }
}

/** CommandComplete tags of statements that end a transaction (ROLLBACK also ends a savepoint's work). */
const ENDS_TRANSACTION = /^(COMMIT|ROLLBACK|PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED)$/;

/** Marks a simple query whose error was our denial (the outcome record takes the denial's code). */
const DENIED: ErrorFields = Object.freeze({ severity: 'ERROR', code: '', message: 'denied' });
