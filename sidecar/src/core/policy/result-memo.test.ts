import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ResultMemo } from './result-memo.ts';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('ResultMemo', () => {
  it('finds a value by equal bytes, not by the view it was stored from', () => {
    const memo = new ResultMemo<string>(8);
    const memory = new Uint8Array(64);
    memory.set(bytes('{"allow":true}'), 10);
    const view = memory.subarray(10, 24);
    memo.set(view, 'allow');
    memory.set(bytes('{"deny":true} '), 10); // the module's memory is reused by the next evaluation
    assert.equal(memo.get(view), undefined, 'the changed view is another result');
    assert.equal(memo.get(bytes('{"allow":true}')), 'allow', 'the stored copy kept the old bytes');
  });

  it('tells apart results of the same length', () => {
    const memo = new ResultMemo<number>(8);
    memo.set(bytes('aaaa'), 1);
    memo.set(bytes('aaab'), 2);
    assert.equal(memo.get(bytes('aaaa')), 1);
    assert.equal(memo.get(bytes('aaab')), 2);
    assert.equal(memo.get(bytes('aaac')), undefined);
    assert.equal(memo.get(bytes('aaa')), undefined);
  });

  it('keeps at most 8 results of one length, dropping the oldest of them', () => {
    const memo = new ResultMemo<number>(512);
    for (let i = 10; i < 20; i++) memo.set(bytes(`statement ${String(i)}`), i);
    assert.equal(memo.get(bytes('statement 10')), undefined);
    assert.equal(memo.get(bytes('statement 11')), undefined);
    for (let i = 12; i < 20; i++) assert.equal(memo.get(bytes(`statement ${String(i)}`)), i);
    memo.set(bytes('statement 9'), 9); // another length: unaffected
    assert.equal(memo.get(bytes('statement 9')), 9);
    assert.equal(memo.get(bytes('statement 19')), 19);
  });

  it('drops everything when full, and keeps working', () => {
    const memo = new ResultMemo<number>(2);
    memo.set(bytes('a'), 1);
    memo.set(bytes('bb'), 2);
    memo.set(bytes('ccc'), 3);
    assert.equal(memo.get(bytes('a')), undefined);
    assert.equal(memo.get(bytes('bb')), undefined);
    assert.equal(memo.get(bytes('ccc')), 3);
  });

  it('remembers nothing with capacity 0', () => {
    const memo = new ResultMemo<number>(0);
    memo.set(bytes('a'), 1);
    assert.equal(memo.get(bytes('a')), undefined);
  });
});
