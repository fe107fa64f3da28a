import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUNDLE_MANIFEST_FILE, BUNDLE_WASM_FILE } from '@chaperone/api';
import { compilePolicy } from '@chaperone/operator/policy-compiler';
import { silentLogger } from '../observability/logger.ts';
import { BundleWatcher, readBundleDirectory } from './bundle-directory.ts';
import { PolicyEngine } from './policy-engine.ts';
import type { PolicyBundle } from './policy-engine.ts';
import { request, spec, sql, stmt } from './policy-fixtures.test-helpers.ts';

function writeEntry(dir: string, entry: string, manifestOf: PolicyBundle, wasmOf: PolicyBundle): void {
  mkdirSync(join(dir, entry), { recursive: true });
  writeFileSync(join(dir, entry, BUNDLE_WASM_FILE), wasmOf.wasm);
  writeFileSync(
    join(dir, entry, BUNDLE_MANIFEST_FILE),
    JSON.stringify({ manifest: manifestOf.manifest, digest: manifestOf.digest }),
  );
}

describe('BundleWatcher', () => {
  const bundles = new Map<string, PolicyBundle>();
  before(async () => {
    for (const [version, kinds] of [
      ['v1', ['select', 'insert']],
      ['v2', ['select']],
    ] as const) {
      const r = await compilePolicy({
        namespace: 'team',
        name: 'p',
        spec: spec({ rules: [{ name: version, decision: 'allow', match: { sql: { statementKinds: [...kinds] } } }] }),
      });
      if (!r.ok) throw new Error(JSON.stringify(r.errors));
      bundles.set(version, { wasm: r.wasm, manifest: r.manifest, digest: r.digest });
    }
  });

  it('keeps the last good bundle while an entry reads torn or broken, and loads the new one once it reads cleanly', async () => {
    const v1 = bundles.get('v1') ?? assert.fail();
    const v2 = bundles.get('v2') ?? assert.fail();
    const dir = mkdtempSync(join(tmpdir(), 'chaperone-bundles-test-'));
    try {
      const engine = new PolicyEngine();
      const reloads: string[] = [];
      const watcher = new BundleWatcher({
        dir,
        engine,
        logger: silentLogger,
        pollIntervalMs: 3_600_000,
        onReload: (result) => reloads.push(result),
      });
      const insert = request(sql(stmt('insert', ['public.t'])));
      writeEntry(dir, 'p', v1, v1);
      await watcher.start();
      watcher.stop();
      assert.equal(engine.decide(insert).decision, 'allow');

      // New manifest, old module: a read straddling an update. The previous bundle stays in force.
      writeEntry(dir, 'p', v2, v1);
      await watcher.check();
      assert.deepEqual(engine.bundleDigests, [v1.digest]);
      assert.equal(engine.decide(insert).decision, 'allow');
      assert.equal(reloads.at(-1), 'error', 'the unreadable entry is reported');

      // A half-written manifest: still the previous bundle.
      writeFileSync(join(dir, 'p', BUNDLE_MANIFEST_FILE), '{"manifest":');
      await watcher.check();
      assert.deepEqual(engine.bundleDigests, [v1.digest]);

      // Consistent again: v2 is loaded and denies the insert.
      writeEntry(dir, 'p', v2, v2);
      await watcher.check();
      assert.deepEqual(engine.bundleDigests, [v2.digest]);
      assert.equal(engine.decide(insert).decision, 'deny');
      assert.equal(reloads.at(-1), 'success');

      // An entry that is gone is dropped: nothing allows anything.
      rmSync(join(dir, 'p'), { recursive: true });
      await watcher.check();
      assert.deepEqual(engine.bundleDigests, []);
      assert.equal(engine.decide(request(sql(stmt('select', ['public.t'])))).decision, 'deny');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads a module only for a digest it has not read before: a known digest is the bundle already checked', () => {
    const v1 = bundles.get('v1') ?? assert.fail();
    const v2 = bundles.get('v2') ?? assert.fail();
    const dir = mkdtempSync(join(tmpdir(), 'chaperone-bundles-test-'));
    try {
      writeEntry(dir, 'p', v1, v1);
      const first = readBundleDirectory(dir);
      assert.deepEqual(first.errors, []);
      const read = first.byEntry.get('p') ?? assert.fail();
      assert.equal(read.digest, v1.digest);

      // The poll of an unchanged entry: the module on disk is not read (it is not even there).
      rmSync(join(dir, 'p', BUNDLE_WASM_FILE));
      const again = readBundleDirectory(dir, new Map([[v1.digest, read]]));
      assert.deepEqual(again.errors, []);
      assert.equal(again.byEntry.get('p'), read, 'the known bundle itself');

      // A digest not known is read and checked: a module that does not match it is unreadable.
      writeEntry(dir, 'p', v2, v1);
      const torn = readBundleDirectory(dir, new Map([[v1.digest, read]]));
      assert.deepEqual(torn.unreadable, ['p']);
      assert.match(torn.errors[0] ?? '', /do not match the manifest digest/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
