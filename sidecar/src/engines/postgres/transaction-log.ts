// Which commands recorded `success` a ROLLBACK undid. A statement inside a transaction block is recorded
// when it completes, before anyone knows whether its transaction commits; records are sealed in the chain as
// they are written, so the ROLLBACK (ROLLBACK TO SAVEPOINT, a COMMIT the server turned into a rollback, the
// end of a session left inside a transaction) names on its own outcome what it undid (docs/audit.md,
// "Rolled-back commands"). Pure: the response tracker tells it what completed and what ended.
import type { RolledBack } from '../../core/command.ts';
import type { AnalyzedStatement, TransactionAction } from './analysis/analyze-sql.ts';

/** What a command does to the transaction: its last transaction-control statement. */
export interface TransactionControl {
  readonly action: TransactionAction;
  /** The savepoint's name (savepoint, release, rollback-to). */
  readonly name: string | undefined;
  /** The command is transaction control only (nothing of its own to undo). */
  readonly alone: boolean;
}

/** The transaction control of a command's statements; undefined for the rest (nearly every command). */
export function transactionControl(statements: readonly AnalyzedStatement[]): TransactionControl | undefined {
  let last: AnalyzedStatement | undefined;
  let alone = true;
  for (const s of statements) {
    if (s.transaction === undefined) alone = false;
    else last = s;
  }
  if (last?.transaction === undefined) return undefined;
  return { action: last.transaction, name: last.transactionName, alone };
}

interface Savepoint {
  readonly name: string | undefined;
  /** How many commands the log held when it was set: a rollback to it undoes those after. */
  readonly at: number;
}

export class TransactionLog {
  /** Ids of the commands recorded `success` in the open transaction, in order. */
  private ids: number[] = [];
  private savepoints: Savepoint[] = [];

  /** A command completed in the open transaction and was recorded `success`. */
  note(id: number): void {
    this.ids.push(id);
  }

  /**
   * A transaction-control command completed (`succeeded`) or failed. `rolledBack`: the server rolled the
   * transaction back instead (a COMMIT answered with the tag ROLLBACK, or that failed). Returns what it undid.
   */
  apply(control: TransactionControl, succeeded: boolean, rolledBack: boolean): RolledBack | undefined {
    switch (control.action) {
      case 'begin':
        if (succeeded) this.clear();
        return undefined;
      case 'savepoint':
        if (succeeded) this.savepoints.push({ name: control.name, at: this.ids.length });
        return undefined;
      case 'release': {
        const i = this.savepointIndex(control.name);
        if (succeeded && i !== -1) this.savepoints.length = i; // it and every savepoint set after it
        return undefined;
      }
      case 'rollback-to': {
        const i = this.savepointIndex(control.name);
        if (!succeeded || i === -1) return undefined;
        const mark = this.savepoints[i] as Savepoint;
        this.savepoints.length = i + 1; // the savepoint stays, later ones go
        return summary(this.ids.splice(mark.at));
      }
      case 'rollback':
        return succeeded ? this.end() : undefined;
      case 'commit':
      case 'prepare-transaction':
        if (rolledBack) return this.end();
        if (succeeded) this.clear();
        return undefined;
      default:
        // COMMIT / ROLLBACK PREPARED: not allowed inside a transaction block.
        return undefined;
    }
  }

  /** The transaction ended (ReadyForQuery says idle): nothing is open to undo. */
  clear(): void {
    if (this.ids.length > 0) this.ids = [];
    if (this.savepoints.length > 0) this.savepoints = [];
  }

  /** The transaction ends undone (a rollback, the session's end inside it): what it undid, and forget it. */
  end(): RolledBack | undefined {
    const undone = summary(this.ids);
    this.clear();
    return undone;
  }

  private savepointIndex(name: string | undefined): number {
    for (let i = this.savepoints.length - 1; i >= 0; i--) if (this.savepoints[i]?.name === name) return i;
    return -1;
  }
}

function summary(ids: readonly number[]): RolledBack | undefined {
  const first = ids[0];
  const last = ids.at(-1);
  if (first === undefined || last === undefined) return undefined;
  return { commands: ids.length, first, last };
}
