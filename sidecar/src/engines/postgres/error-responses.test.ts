import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SIDECAR_ERRORS, type SidecarErrorId } from '../../core/errors.ts';
import { denial, errorResponseFor, sessionEnding } from './error-responses.ts';

/** ErrorResponse fields by code letter, read the simple way. */
function fields(frame: Buffer): Record<string, string> {
  assert.equal(String.fromCharCode(frame[0] as number), 'E');
  assert.equal(frame.readInt32BE(1), frame.length - 1, 'length covers everything after the type byte');
  const out: Record<string, string> = {};
  let at = 5;
  while (frame[at] !== 0) {
    const end = frame.indexOf(0, at + 1);
    out[String.fromCharCode(frame[at] as number)] = frame.subarray(at + 1, end).toString('utf8');
    at = end + 1;
  }
  assert.equal(at, frame.length - 1, 'one terminating NUL');
  return out;
}

test('every catalogue entry becomes an ErrorResponse with its SQLSTATE, FATAL exactly for the fatal entries', () => {
  for (const id of Object.keys(SIDECAR_ERRORS) as SidecarErrorId[]) {
    const f = fields(errorResponseFor({ id, message: `chaperone: ${id}` }));
    assert.equal(f.C, SIDECAR_ERRORS[id].sqlState, id);
    assert.equal(f.S, SIDECAR_ERRORS[id].fatal ? 'FATAL' : 'ERROR', id);
    assert.equal(f.V, f.S, id);
    assert.equal(f.M, `chaperone: ${id}`, id);
  }
});

test('an error that ends the connection is FATAL even when the entry alone would not be (a session refused by the audit trail)', () => {
  assert.equal(fields(errorResponseFor({ id: 'AuditUnavailable', message: 'm' }, true)).S, 'FATAL');
  assert.equal(fields(errorResponseFor({ id: 'AuditUnavailable', message: 'm' })).S, 'ERROR');
});

test('a denial carries detail, hint and position, and the SQLSTATE its outcome record takes', () => {
  const d = denial({ id: 'Unanalysable', message: 'chaperone: x', detail: 'd', hint: 'h', position: 7 });
  assert.equal(d.code, '42601');
  assert.deepEqual(fields(d.frame), { S: 'ERROR', V: 'ERROR', C: '42601', M: 'chaperone: x', D: 'd', H: 'h', P: '7' });
});

test('a session ended by a FATAL is recorded as a refusal or as a failure, with the SQLSTATE', () => {
  assert.deepEqual(sessionEnding({ id: 'UnsupportedServer', message: 'chaperone: x' }), {
    status: 'denied',
    code: '0A000',
  });
  assert.deepEqual(sessionEnding({ id: 'StartupParameterRefused', message: 'chaperone: x' }), {
    status: 'denied',
    code: '42501',
  });
  assert.deepEqual(sessionEnding({ id: 'ProtocolViolation', message: 'chaperone: x' }), {
    status: 'error',
    code: '08P01',
  });
  assert.deepEqual(sessionEnding({ id: 'UpstreamUnavailable', message: 'chaperone: x' }), {
    status: 'error',
    code: '08006',
  });
});
