import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Condition } from '@chaperone/api';
import {
  conditionsEqual,
  findCondition,
  isConditionTrue,
  removeCondition,
  rfc3339,
  setCondition,
} from './conditions.ts';

const T0 = new Date('2026-03-01T10:00:00.123Z');
const T1 = new Date('2026-03-01T10:05:00.999Z');

const ready = (status: Condition['status'], reason: string, message = '', observedGeneration = 1) => ({
  type: 'Ready',
  status,
  reason,
  message,
  observedGeneration,
});

describe('conditions', () => {
  it('adds a new condition stamped with now, at second precision', () => {
    const list = setCondition(undefined, ready('True', 'Compiled'), T0);
    assert.deepEqual(list, [
      {
        type: 'Ready',
        status: 'True',
        reason: 'Compiled',
        message: '',
        observedGeneration: 1,
        lastTransitionTime: '2026-03-01T10:00:00Z',
      },
    ]);
  });

  it('keeps lastTransitionTime when the status stays, and updates reason, message and generation', () => {
    const first = setCondition([], ready('False', 'CompileFailed', 'line 3', 1), T0);
    const second = setCondition(first, ready('False', 'CompileFailed', 'line 7', 2), T1);
    const [c] = second;
    assert.ok(c !== undefined);
    assert.equal(c.lastTransitionTime, '2026-03-01T10:00:00Z');
    assert.equal(c.message, 'line 7');
    assert.equal(c.observedGeneration, 2);
  });

  it('changes lastTransitionTime when the status changes', () => {
    const first = setCondition([], ready('False', 'CompileFailed'), T0);
    const second = setCondition(first, ready('True', 'Compiled', '', 2), T1);
    const [c] = second;
    assert.ok(c !== undefined);
    assert.equal(c.lastTransitionTime, '2026-03-01T10:05:00Z');
    assert.equal(c.status, 'True');
  });

  it('leaves other types and the input list alone', () => {
    const other: Condition = {
      type: 'Published',
      status: 'True',
      reason: 'Applied',
      message: '',
      lastTransitionTime: '2026-01-01T00:00:00Z',
    };
    const input: Condition[] = [other];
    const out = setCondition(input, ready('True', 'Compiled'), T0);
    assert.equal(input.length, 1, 'input not mutated');
    assert.deepEqual(
      out.map((c) => c.type),
      ['Published', 'Ready'],
    );
    assert.equal(findCondition(out, 'Published'), other);
    assert.equal(isConditionTrue(out, 'Ready'), true);
    assert.equal(isConditionTrue(out, 'Missing'), false);
    assert.deepEqual(removeCondition(out, 'Published'), [out[1]]);
  });

  it('compares lists by type, ignoring order', () => {
    const a = setCondition(setCondition([], ready('True', 'Compiled'), T0), { ...ready('True', 'X'), type: 'B' }, T0);
    const b = [a[1] as Condition, a[0] as Condition];
    assert.equal(conditionsEqual(a, b), true);
    assert.equal(conditionsEqual(a, setCondition(a, ready('True', 'Compiled', 'changed'), T1)), false);
    assert.equal(conditionsEqual(undefined, []), true);
    assert.equal(conditionsEqual(a, a.slice(1)), false);
  });

  it('formats metav1.Time without fractional seconds', () => {
    assert.equal(rfc3339(new Date('2026-12-31T23:59:59.999Z')), '2026-12-31T23:59:59Z');
  });
});
