import { test } from 'node:test';
import assert from 'node:assert/strict';
import { refuseUncertified } from './authority.ts';

function run(values: Parameters<typeof refuseUncertified>[0]): { result: boolean | 2; stderr: string } {
  let stderr = '';
  const result = refuseUncertified(values, { stderr: { write: (text: string) => (stderr += text) } });
  return { result, stderr };
}

test('uncertified keys are refused by default, silently', () => {
  assert.deepEqual(run({}), { result: true, stderr: '' });
});

test('--allow-uncertified accepts them', () => {
  assert.deepEqual(run({ 'allow-uncertified': true }), { result: false, stderr: '' });
});

test('--require-certified still refuses them and says it is deprecated', () => {
  const { result, stderr } = run({ 'require-certified': true });
  assert.equal(result, true);
  assert.match(stderr, /^warning: --require-certified is deprecated/);
});

test('both flags are a usage error', () => {
  const { result, stderr } = run({ 'allow-uncertified': true, 'require-certified': true });
  assert.equal(result, 2);
  assert.match(stderr, /contradict/);
});
