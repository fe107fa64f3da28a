// What the server sends a masking session besides rows (docs/masking.md, "Server messages"). Owner code —
// triggers, constraint and domain checks, defaults, generated columns, index expressions, operators, casts,
// row-level security policies, event triggers — runs inside statements that read no masked column, and can
// put any value it reads into a NoticeResponse, an ErrorResponse (message, detail, hint, context, the names
// RAISE may set, with any SQLSTATE), a NotificationResponse payload or a reported setting. The sidecar cannot
// see which statements run owner code, so once a command of the session carried column or type rules, for
// the rest of the connection (fail closed, also between statements):
// - every NoticeResponse keeps its severity and SQLSTATE; its text is withheld;
// - every ErrorResponse keeps severity and SQLSTATE; its message (with detail and hint) and its position only
//   when its fields show parse analysis or the permission check of the agent's own statement text raised it
//   (any other position may be one in a value: `ssn::regtype` parses the value and points into it);
// - a NotificationResponse keeps its channel and pid, its payload is withheld (LISTEN still wakes a job queue);
// - a ParameterStatus is passed only for settings whose values are a closed set drivers decode by.
// A session whose decisions carry detector rules only gets its notice and error texts and notification
// payloads through those detectors instead.
import type { DecidedCommand } from '../../../core/command.ts';
import { createValueMasker, type ValueMasker } from '../../../core/masking/mask-value.ts';
import { maskingRules } from '../../../core/masking/result-plan.ts';
import { decodeErrorFields } from '../protocol/backend-scanner.ts';
import { errorResponse, noticeResponse } from '../protocol/backend-encoder.ts';
import { BackendCode, type ErrorFields } from '../protocol/backend-messages.ts';

/**
 * Source files of the server's parser, parse analysis and permission check: an error raised there, at a
 * position in the statement text, with no context of a function or internal query, is about the agent's own
 * text. RAISE reports pl_exec.c and cannot choose the file; functions that run later add a CONTEXT, except
 * RAISE in the function raising and built-in errors in an inlined SQL function, whose files are not these.
 */
const ANALYSIS_FILE = /^(scan\.l|gram\.y|parser\.c|analyze\.c|parse_[a-z_]+\.c)$/;
const PERMISSION_FILE = 'aclchk.c';

/**
 * Reported settings whose values drivers decode by and that take no free text (encodings, date and interval
 * styles, booleans, versions fixed by the server). application_name, TimeZone (a POSIX zone carries letters),
 * scram_iterations (any integer) and anything else are withheld.
 */
const CLOSED_SETTINGS: ReadonlySet<string> = new Set([
  'client_encoding',
  'DateStyle',
  'IntervalStyle',
  'standard_conforming_strings',
  'integer_datetimes',
  'is_superuser',
  'in_hot_standby',
  'default_transaction_read_only',
  'server_version',
  'server_encoding',
  'session_authorization',
]);

/** What was withheld, for the outcome record (MaskedCount's column). */
export type WithheldMessage = 'NoticeResponse' | 'ErrorResponse' | 'NotificationResponse' | 'ParameterStatus';

/** The text fields of a notice or error that detectors scan in a detector-only session. */
const TEXT_FIELDS = [
  'message',
  'detail',
  'hint',
  'where',
  'internalQuery',
  'schema',
  'table',
  'column',
  'dataType',
  'constraint',
] as const;

export class ServerMessages {
  private masking = false;
  /** The detectors of a session whose decisions carry no column or type rules (the first such decision's). */
  private detectors: ValueMasker | undefined;
  private readonly hashKey: Buffer;

  constructor(hashKey: Buffer = Buffer.alloc(0)) {
    this.hashKey = hashKey;
  }

  /** Whether the session's messages are scrubbed: a command of it carried column or type rules. */
  get active(): boolean {
    return this.masking;
  }

  /** A command was sent: when its decision carries column or type rules, from now on, for good. */
  noteCommand(command: DecidedCommand | undefined): void {
    if (this.masking || command === undefined || command.decision.masking.length === 0) return;
    const instructions = command.decision.masking;
    this.masking = maskingRules(instructions).byColumn.length > 0;
    this.detectors ??= createValueMasker(
      instructions.filter((i) => i.detectors.length > 0),
      this.hashKey,
    );
  }

  /** A notice or error with what the detectors find in its text fields masked; undefined when none found. */
  private detected(frame: Buffer): Buffer | undefined {
    const detectors = this.detectors;
    if (detectors === undefined) return undefined;
    const f = decodeErrorFields(frame);
    const masked: Partial<Record<(typeof TEXT_FIELDS)[number], string>> = {};
    let changed = false;
    for (const name of TEXT_FIELDS) {
      const text = f[name];
      if (text === undefined) continue;
      masked[name] = detectors.mask(text);
      changed ||= masked[name] !== text;
    }
    if (!changed) return undefined;
    const fields: ErrorFields = { ...f, ...masked };
    return frame[0] === BackendCode.NoticeResponse ? noticeResponse(fields) : errorResponse(fields);
  }

  /** The NoticeResponse to send instead; undefined when the session is not masked (send it as it is). */
  notice(frame: Buffer): Buffer | undefined {
    if (!this.masking) return this.detected(frame);
    const f = decodeErrorFields(frame);
    return noticeResponse({
      severity: f.severity,
      ...(f.severityNonLocalized === undefined ? {} : { severityNonLocalized: f.severityNonLocalized }),
      code: f.code,
      message: `chaperone: the notice text is withheld in a session whose results are masked (SQLSTATE ${f.code})`,
    });
  }

  /** The ErrorResponse to send instead, and whether its text was withheld; undefined when the session is not masked. */
  error(frame: Buffer): { readonly frame: Buffer; readonly withheld: boolean } | undefined {
    if (!this.masking) {
      const detected = this.detected(frame);
      return detected === undefined ? undefined : { frame: detected, withheld: false };
    }
    const f = decodeErrorFields(frame);
    const kept: ErrorFields = {
      severity: f.severity,
      ...(f.severityNonLocalized === undefined ? {} : { severityNonLocalized: f.severityNonLocalized }),
      code: f.code,
      message: `chaperone: the error text is withheld in a session whose results are masked: code the statement ran may have raised it (SQLSTATE ${f.code})`,
    };
    if (!raisedByAnalysis(f)) return { frame: errorResponse(kept), withheld: true };
    const readable = errorResponse({
      ...kept,
      ...(f.position === undefined ? {} : { position: f.position }),
      message: f.message,
      ...(f.detail === undefined ? {} : { detail: f.detail }),
      ...(f.hint === undefined ? {} : { hint: f.hint }),
    });
    return { frame: readable, withheld: false };
  }

  /** The NotificationResponse to send instead (its payload empty); undefined when the session is not masked. */
  notification(frame: Buffer): Buffer | undefined {
    if (!this.masking && this.detectors === undefined) return undefined;
    if (frame.length < 9 || frame[0] !== BackendCode.NotificationResponse) return undefined;
    const channelEnd = frame.indexOf(0, 9);
    if (channelEnd < 0) return undefined; // malformed: the scanner's framing is all that was checked
    if (!this.masking) return this.detectedPayload(frame, channelEnd);
    const out = Buffer.alloc(channelEnd + 2); // the last byte, zero: the empty payload's NUL
    frame.copy(out, 0, 0, channelEnd + 1);
    out.writeInt32BE(out.length - 1, 1);
    return out;
  }

  /** A notification whose payload has what the detectors find masked; undefined when none found. */
  private detectedPayload(frame: Buffer, channelEnd: number): Buffer | undefined {
    const payloadEnd = frame.indexOf(0, channelEnd + 1);
    if (payloadEnd < 0) return undefined;
    const payload = frame.toString('utf8', channelEnd + 1, payloadEnd);
    const masked = this.detectors?.mask(payload) ?? payload;
    if (masked === payload) return undefined;
    const text = Buffer.from(masked.replaceAll('\0', ''));
    const out = Buffer.alloc(channelEnd + 2 + text.length);
    frame.copy(out, 0, 0, channelEnd + 1);
    text.copy(out, channelEnd + 1);
    out.writeInt32BE(out.length - 1, 1);
    return out;
  }

  /** Whether a ParameterStatus of `name` reaches the client. */
  reports(name: string): boolean {
    return !this.masking || CLOSED_SETTINGS.has(name);
  }
}

/**
 * Whether parse analysis or the permission check of the agent's own statement text raised the error: only
 * then are its text and position about that text. The server parses values too (a cast to regtype,
 * regprocedure or regoperator runs the grammar over the value, with a CONTEXT), and such a position counts
 * characters of the value: `translate(ssn, '5', ',')::regtype` fails where the first 5 is.
 */
export function raisedByAnalysis(f: ErrorFields): boolean {
  if (f.where !== undefined || f.internalQuery !== undefined || f.internalPosition !== undefined) return false;
  const file = f.file ?? '';
  if (file === PERMISSION_FILE) return true;
  return f.position !== undefined && ANALYSIS_FILE.test(file);
}
