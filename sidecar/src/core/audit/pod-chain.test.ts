import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GENESIS_HASH } from '@chaperone/api';
import { createLogger } from '../observability/logger.ts';
import { PodChain, sharedPodChainHead } from './pod-chain.ts';

const POD = { namespace: 'ci', name: 'job-abc12', uid: 'u-1' };
const H1 = `sha256:${'1'.repeat(64)}`;
const H2 = `sha256:${'2'.repeat(64)}`;

function withDir(fn: (dir: string, warnings: string[]) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'chaperone-pod-chain-'));
  const warnings: string[] = [];
  try {
    fn(dir, warnings);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function logger(lines: string[]) {
  return createLogger({ level: 'warn', write: (line) => lines.push(line) });
}

describe('PodChain', () => {
  it('starts at genesis and keeps the newest session head, across a reopen by the same pod', () => {
    withDir((dir, warnings) => {
      const file = join(dir, 'head.json');
      const chain = PodChain.open(POD, file, logger(warnings));
      assert.equal(chain.head, GENESIS_HASH);
      chain.advance(H1);
      chain.advance(H2);
      assert.equal(chain.head, H2);
      assert.equal(PodChain.open(POD, file, logger(warnings)).head, H2);
      assert.deepEqual(warnings, []);
    });
  });

  it("ignores another pod's head and a malformed file, saying so", () => {
    withDir((dir, warnings) => {
      const file = join(dir, 'head.json');
      PodChain.open(POD, file, logger(warnings)).advance(H1);
      assert.equal(PodChain.open({ ...POD, uid: 'u-2' }, file, logger(warnings)).head, GENESIS_HASH);
      assert.match(warnings.join('\n'), /another pod/);
      writeFileSync(file, JSON.stringify({ pod: 'ci/job-abc12/u-1', hash: 'sha256:not-hex' }));
      assert.equal(PodChain.open(POD, file, logger(warnings)).head, GENESIS_HASH);
      writeFileSync(file, '{');
      assert.equal(PodChain.open(POD, file, logger(warnings)).head, GENESIS_HASH);
      assert.match(warnings.at(-1) ?? '', /unreadable/);
    });
  });

  it('shared by event loops: each session links to the one linked before it on any loop; a refused seal keeps the head', () => {
    const buffer = sharedPodChainHead();
    const loop0 = PodChain.shared(POD, buffer);
    const loop1 = PodChain.shared(POD, buffer);
    assert.equal(loop1.head, GENESIS_HASH);
    const seen: string[] = [];
    loop0.linkSession((head) => {
      seen.push(head);
      return H1;
    });
    loop1.linkSession((head) => {
      seen.push(head);
      return H2;
    });
    assert.deepEqual(seen, [GENESIS_HASH, H1]);
    assert.equal(loop0.head, H2);
    assert.throws(() =>
      loop0.linkSession(() => {
        throw new Error('sink refused');
      }),
    );
    // The lock was released and the head kept: the next session links to H2.
    loop1.linkSession((head) => {
      assert.equal(head, H2);
      return H1;
    });
    assert.equal(loop0.head, H1);
  });
});
