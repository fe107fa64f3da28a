import { test } from 'node:test';
import assert from 'node:assert/strict';
import { combineDecisions, type EvaluatedPolicy, type PolicyResult } from './policy.ts';

const result = (decision: PolicyResult['decision'], extra: Partial<PolicyResult> = {}): PolicyResult => ({
  applicable: true,
  decision,
  rule: `${decision}-rule`,
  reasons: [],
  masking: [],
  ...extra,
});
const evaluated = (policy: string, r: PolicyResult): EvaluatedPolicy => ({
  policy,
  bundleDigest: `sha256:${policy}`,
  result: r,
});
const mask = (rule: string) => ({ rule, columns: ['c'], detectors: [], strategy: 'redact' as const });

test('combineDecisions: no applicable policy denies', () => {
  const d = combineDecisions([evaluated('ns/a', result('allow', { applicable: false }))]);
  assert.equal(d.decision, 'deny');
  assert.equal(d.rule, 'no-policy');
});

test('combineDecisions: deny beats approve beats allow, and names the deciding policy', () => {
  assert.equal(
    combineDecisions([evaluated('ns/a', result('allow')), evaluated('ns/b', result('approve'))]).policy,
    'ns/b',
  );
  const d = combineDecisions([
    evaluated('ns/a', result('approve')),
    evaluated('ns/b', result('deny')),
    evaluated('ns/c', result('allow')),
  ]);
  assert.equal(d.decision, 'deny');
  assert.equal(d.policy, 'ns/b');
  assert.equal(d.bundleDigest, 'sha256:ns/b');
});

test('combineDecisions: ties keep the first policy', () => {
  const d = combineDecisions([evaluated('ns/a', result('allow')), evaluated('ns/b', result('allow'))]);
  assert.equal(d.policy, 'ns/a');
});

test('combineDecisions: masking is the union of non-denying policies and empty on deny', () => {
  const allowed = combineDecisions([
    evaluated('ns/a', result('allow', { masking: [mask('a')] })),
    evaluated('ns/b', result('allow', { masking: [mask('b')] })),
    evaluated('ns/c', result('allow', { applicable: false, masking: [mask('c')] })),
  ]);
  assert.deepEqual(
    allowed.masking.map((m) => m.rule),
    ['a', 'b'],
  );
  const denied = combineDecisions([
    evaluated('ns/a', result('allow', { masking: [mask('a')] })),
    evaluated('ns/b', result('deny')),
  ]);
  assert.deepEqual(denied.masking, []);
});
