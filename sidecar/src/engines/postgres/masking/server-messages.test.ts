// What a masking session's server messages keep (server-messages.ts), on frames built by the encoder, and
// the response tracker counting what it withheld on the command's outcome. No sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CombinedDecision, MaskingInstruction } from '@chaperone/api';
import type { CommandOutcome, DecidedCommand } from '../../../core/command.ts';
import { errorResponse, noticeResponse } from '../protocol/backend-encoder.ts';
import { BackendCode, type ErrorFields } from '../protocol/backend-messages.ts';
import { decodeErrorFields } from '../protocol/backend-scanner.ts';
import { ResponseTracker } from '../response-tracker.ts';
import { ServerMessages } from './server-messages.ts';

const EMAIL = 'alice.secret@example.com';

function decidedWith(masking: readonly MaskingInstruction[], id = 1): DecidedCommand {
  const decision: CombinedDecision = {
    decision: 'allow',
    policy: 'p',
    rule: 'r',
    bundleDigest: '',
    reasons: [],
    masking,
  };
  return { id, decision, startedAt: 0, recorded: true, audit: { state: 'clear' } };
}

const COLUMN_RULE: MaskingInstruction = {
  rule: 'emails',
  columns: ['customers.email'],
  detectors: [],
  strategy: 'hash',
};
const DETECTOR_RULE: MaskingInstruction = { rule: 'found', columns: [], detectors: ['email'], strategy: 'redact' };

function masked(): ServerMessages {
  const s = new ServerMessages();
  s.noteCommand(decidedWith([COLUMN_RULE]));
  return s;
}

const raised: ErrorFields = {
  severity: 'ERROR',
  code: '42601',
  message: EMAIL,
  detail: EMAIL,
  hint: EMAIL,
  column: EMAIL,
  constraint: EMAIL,
  file: 'pl_exec.c',
  routine: 'exec_stmt_raise',
};

test('only a decision with column or type rules makes the session a masking one, and it stays one', () => {
  const s = new ServerMessages();
  s.noteCommand(undefined);
  s.noteCommand(decidedWith([]));
  assert.equal(s.notice(noticeResponse(raised)), undefined, 'sent as it is');
  s.noteCommand(decidedWith([DETECTOR_RULE]));
  assert.equal(s.active, false);
  s.noteCommand(decidedWith([{ ...DETECTOR_RULE, types: ['int4'] }]));
  assert.equal(s.active, true);
  s.noteCommand(decidedWith([]));
  assert.equal(s.active, true);
});

test('a notice keeps severity and SQLSTATE only', () => {
  const f = decodeErrorFields(
    masked().notice(noticeResponse({ ...raised, severity: 'WARNING', code: '01000' })) ?? Buffer.alloc(0),
  );
  assert.equal(f.severity, 'WARNING');
  assert.equal(f.code, '01000');
  assert.match(f.message, /withheld/);
  assert.deepEqual(
    [f.detail, f.hint, f.column, f.constraint, f.file],
    [undefined, undefined, undefined, undefined, undefined],
  );
});

test('an error raised by code the statement ran keeps severity and SQLSTATE, not its position; a faked 42601 too', () => {
  const s = masked();
  for (const fields of [
    raised,
    { ...raised, file: 'scan.l', position: '8', where: 'PL/pgSQL function f() line 2 at EXECUTE' },
    { ...raised, file: 'parse_relation.c', internalQuery: `select "${EMAIL}"`, internalPosition: '8' },
    // A built-in error from an inlined SQL function: no context, but not the parser's file or position.
    { ...raised, code: '22P02', file: 'numutils.c' },
    { ...raised, file: 'scan.l' }, // the parser's file without a position in the agent's text
    // `translate(ssn, '5', ',')::regtype`: the grammar run over the value, its position a character of it.
    { ...raised, file: 'scan.l', position: '5', where: 'invalid type name ",23-45-6789"' },
  ]) {
    const scrubbed = s.error(errorResponse(fields));
    assert.equal(scrubbed?.withheld, true);
    const f = decodeErrorFields(scrubbed.frame);
    assert.equal(f.code, fields.code);
    assert.equal(f.position, undefined, 'a position outside the agent’s text may count characters of a value');
    assert.match(f.message, /withheld/);
    assert.ok(!scrubbed.frame.toString('latin1').includes(EMAIL));
  }
});

test('parse analysis and permission errors of the agent’s own text stay readable', () => {
  const s = masked();
  const undefinedTable = {
    severity: 'ERROR',
    code: '42P01',
    message: 'relation "nope" does not exist',
    position: '15',
    file: 'parse_relation.c',
  };
  const r1 = s.error(errorResponse(undefinedTable));
  assert.equal(r1?.withheld, false);
  assert.equal(decodeErrorFields(r1.frame).message, undefinedTable.message);
  const denied = { severity: 'ERROR', code: '42501', message: 'permission denied for table t', file: 'aclchk.c' };
  assert.equal(decodeErrorFields(s.error(errorResponse(denied))?.frame ?? Buffer.alloc(0)).message, denied.message);
});

test('a notification keeps its channel and pid, its payload is withheld', () => {
  const channel = Buffer.from('jobs\0');
  const payload = Buffer.from(`${EMAIL}\0`);
  const frame = Buffer.alloc(9 + channel.length + payload.length);
  frame[0] = BackendCode.NotificationResponse;
  frame.writeInt32BE(frame.length - 1, 1);
  frame.writeInt32BE(4242, 5);
  channel.copy(frame, 9);
  payload.copy(frame, 9 + channel.length);
  const out = masked().notification(frame) ?? Buffer.alloc(0);
  assert.equal(out.readInt32BE(1), out.length - 1);
  assert.equal(out.readInt32BE(5), 4242);
  assert.deepEqual(out.subarray(9).toString('latin1').split('\0'), ['jobs', '', '']);
  assert.equal(new ServerMessages().notification(frame), undefined);
});

test('reported settings: only those with a closed set of values', () => {
  const s = masked();
  assert.equal(s.reports('client_encoding'), true);
  assert.equal(s.reports('DateStyle'), true);
  assert.equal(s.reports('application_name'), false);
  assert.equal(s.reports('TimeZone'), false);
  assert.equal(s.reports('scram_iterations'), false);
  assert.equal(new ServerMessages().reports('application_name'), true);
});

test('the tracker withholds notice and error texts of a masking command and counts them on its outcome', () => {
  const outcomes: CommandOutcome[] = [];
  const t = new ResponseTracker({ onOutcome: (_c, o) => outcomes.push(o) });
  t.expect('query', decidedWith([COLUMN_RULE]));
  assert.equal(t.wantsNotices, true);
  const n = t.onFrame(BackendCode.NoticeResponse, noticeResponse({ ...raised, severity: 'NOTICE', code: '00000' }));
  assert.ok(!n.toString('latin1').includes(EMAIL));
  const e = t.onFrame(BackendCode.ErrorResponse, errorResponse(raised));
  assert.ok(!e.toString('latin1').includes(EMAIL));
  t.onFrame(BackendCode.ReadyForQuery, Buffer.from([0x5a, 0, 0, 0, 5, 0x49]));
  assert.equal(outcomes.length, 1);
  const outcome = outcomes[0];
  assert.equal(outcome?.status, 'error');
  assert.match(outcome.message ?? '', /withheld/);
  assert.deepEqual(outcome.masked, [
    { column: 'NoticeResponse', rule: 'server-messages', strategy: 'withheld', count: 1 },
    { column: 'ErrorResponse', rule: 'server-messages', strategy: 'withheld', count: 1 },
  ]);
});

test('a detector-only session: what the detectors find is masked in notice and error texts and notification payloads', () => {
  const s = new ServerMessages(Buffer.from('key'));
  s.noteCommand(decidedWith([DETECTOR_RULE]));
  assert.equal(s.active, false);
  const n = decodeErrorFields(
    s.notice(noticeResponse({ ...raised, severity: 'NOTICE', message: `found ${EMAIL}` })) ?? Buffer.alloc(0),
  );
  assert.equal(n.message, 'found [MASKED]');
  assert.equal(n.detail, '[MASKED]');
  const e = s.error(errorResponse({ ...raised, where: `PL/pgSQL function f(${EMAIL})` }));
  assert.equal(e?.withheld, false);
  assert.ok(!e.frame.toString('latin1').includes(EMAIL));
  assert.equal(s.notice(noticeResponse({ severity: 'NOTICE', code: '00000', message: 'nothing found' })), undefined);
  const channel = Buffer.from('jobs\0');
  const payload = Buffer.from(`to ${EMAIL}\0`);
  const frame = Buffer.alloc(9 + channel.length + payload.length);
  frame[0] = BackendCode.NotificationResponse;
  frame.writeInt32BE(frame.length - 1, 1);
  channel.copy(frame, 9);
  payload.copy(frame, 9 + channel.length);
  const out = s.notification(frame) ?? Buffer.alloc(0);
  assert.equal(out.readInt32BE(1), out.length - 1);
  assert.deepEqual(out.subarray(9).toString('utf8').split('\0'), ['jobs', 'to [MASKED]', '']);
  assert.equal(s.reports('application_name'), true);
});
