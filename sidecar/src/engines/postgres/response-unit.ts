// One unit of the response tracker's pipeline (response-tracker.ts): a client message the upstream answers,
// what the tracker learns of its answer, and the small pure rules about units. No state of its own.
import type { CommandOutcome, DecidedCommand, MaskedCount } from '../../core/command.ts';
import type { Denial } from './error-responses.ts';
import { BackendCode, type ErrorFields, type TransactionStatus } from './protocol/backend-messages.ts';
import type { ResultRewriter } from './masking/row-masker.ts';
import type { WithheldMessage } from './masking/server-messages.ts';
import type { TransactionControl } from './transaction-log.ts';

/** The kinds of client message that get a response of their own; `copy-end` marks a COPY the client ended. */
export type UnitKind = 'query' | 'parse' | 'bind' | 'describe' | 'execute' | 'close' | 'sync' | 'copy-end';

export interface ResponseUnit {
  /** Its position in the pipeline (the how-manyth unit queued). */
  readonly seq: number;
  readonly kind: UnitKind;
  /** The decided command whose outcome this unit reports. */
  readonly command: DecidedCommand | undefined;
  /** Our ErrorResponse, sent instead of the upstream's error for the substituted message. */
  readonly denial: Denial | undefined;
  readonly rows: ResultRewriter | undefined;
  /** A Describe's unit: told the RowDescription it gets (the row shape of a later Execute). */
  readonly described: ((rowDescription: Buffer) => void) | undefined;
  rowCount: number;
  error: ErrorFields | undefined;
  /** Called when the message does not complete in the upstream (its error, or skipped until Sync). */
  undo: UndoFailed | undefined;
  /** Server messages withheld while this unit was the head (masking/server-messages.ts), by kind. */
  withheld: Map<WithheldMessage, number> | undefined;
  /** What the command does to the transaction (transaction-log.ts). */
  readonly control: TransactionControl | undefined;
  /** A transaction-control command answered with the tag ROLLBACK (also a COMMIT of a failed transaction). */
  rollbackTag: boolean;
  /** A Sync's or Query's: told the transaction status of its ReadyForQuery (statement-gate.ts, endedWithTransaction). */
  ready: ((status: TransactionStatus) => void) | undefined;
  /** A refusal's: the outcomes of the commands skipped behind it, recorded right after its own (client order). */
  behind: [DecidedCommand, CommandOutcome][] | undefined;
}

/**
 * What to take back when a message does not complete in the upstream; told the server's error when the
 * message failed on its own (undefined: skipped after an earlier error, or our refusal's substitute).
 */
export type UndoFailed = (error?: ErrorFields) => void;

/** Withheld server messages as outcome counts: a kind of message, never its text. */
export function withheldCounts(withheld: ReadonlyMap<WithheldMessage, number> | undefined): MaskedCount[] {
  if (withheld === undefined) return [];
  return [...withheld].map(([column, count]) => ({ column, rule: 'server-messages', strategy: 'withheld', count }));
}

/** Runs a failed unit's undo once, with the unit's own error if the server sent one. */
export function undo(unit: ResponseUnit): void {
  const taken = unit.undo;
  unit.undo = undefined;
  taken?.(unit.error);
}

/** Whether `code` is the whole answer to a unit of `kind` (Parse, Bind, Close, Describe). */
export function completes(kind: UnitKind, code: BackendCode): boolean {
  switch (kind) {
    case 'parse':
      return code === BackendCode.ParseComplete;
    case 'bind':
      return code === BackendCode.BindComplete;
    case 'close':
      return code === BackendCode.CloseComplete;
    case 'describe':
      return code === BackendCode.RowDescription || code === BackendCode.NoData;
    default:
      return false;
  }
}
