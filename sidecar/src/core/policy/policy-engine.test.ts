import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { compilePolicy, defaultOpaPath, readTarEntry } from '@chaperone/operator/policy-compiler';
import { DecisionCache } from './decision-cache.ts';
import { PolicyEngine, bundleDigest } from './policy-engine.ts';
import type { BundleManifest, PolicyBundle } from './policy-engine.ts';
import { ZonedClock } from './zoned-time.ts';
import { identity, request, spec, sql, stmt } from './policy-fixtures.test-helpers.ts';

/** Builds a bundle from hand-written Rego, bypassing the renderer, to feed the engine bad results. */
function rawBundle(policy: string, rego: string): PolicyBundle {
  const dir = mkdtempSync(join(tmpdir(), 'chaperone-engine-test-'));
  try {
    writeFileSync(join(dir, 'p.rego'), rego);
    execFileSync(
      defaultOpaPath(),
      ['build', '-t', 'wasm', '-e', 'chaperone/policy/result', '-o', 'b.tar.gz', 'p.rego'],
      { cwd: dir },
    );
    const wasm = readTarEntry(gunzipSync(readFileSync(join(dir, 'b.tar.gz'))), 'policy.wasm');
    assert.ok(wasm);
    const manifest: BundleManifest = { timeZones: [], policy, entrypoint: 'chaperone/policy/result', rawRego: false };
    return { wasm, manifest, digest: bundleDigest(wasm, manifest) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const compiled = new Map<string, PolicyBundle>();

async function compileTo(name: string, s: Parameters<typeof spec>[0]): Promise<void> {
  const r = await compilePolicy({ namespace: 'team', name, spec: spec(s) });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  assert.equal(bundleDigest(r.wasm, r.manifest), r.digest, 'operator and sidecar agree on the digest');
  compiled.set(name, { wasm: r.wasm, manifest: r.manifest, digest: r.digest });
}

function get(name: string): PolicyBundle {
  return compiled.get(name) ?? assert.fail(`no bundle ${name}`);
}

describe('PolicyEngine', () => {
  before(async () => {
    await Promise.all([
      compileTo('reads', {
        rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
      }),
      compileTo('nothing', { rules: [] }),
      compileTo('hours', {
        rules: [
          {
            name: 'day',
            decision: 'allow',
            match: {},
            when: { timeWindows: [{ start: '09:00', end: '17:00', timeZone: 'America/New_York' }] },
          },
        ],
      }),
      compileTo('rego', {
        rules: [{ name: 'all', decision: 'allow', match: {} }],
        rego: 'package chaperone.custom\n\ndeny contains "late" if input.time.unixMillis > 1000\n',
      }),
    ]);
  });

  it('caches decisions per identity, resource and command fingerprint', async () => {
    const engine = new PolicyEngine();
    await engine.replaceBundles([get('reads')]);
    const req = request(sql(stmt('select', ['public.a'])));
    const first = engine.decide(req, 'select:public.a');
    assert.equal(first.decision, 'allow');
    assert.equal(engine.decide(req, 'select:public.a'), first, 'a hit returns the cached object');
    // An equal identity in a new object shares the entry; another identity does not.
    assert.equal(engine.decide({ ...req, identity: identity() }, 'select:public.a'), first);
    engine.decide({ ...req, identity: identity({ subject: 'other' }) }, 'select:public.a');
    assert.deepEqual(engine.cacheStats(), { hits: 2, misses: 2, size: 2 });
    engine.decide(req);
    assert.equal(engine.cacheStats().size, 2, 'no fingerprint, no caching');
  });

  it('clears the cache and swaps atomically on replaceBundles, exposing digests', async () => {
    const engine = new PolicyEngine();
    await engine.replaceBundles([get('reads')]);
    const req = request(sql(stmt('select')));
    assert.equal(engine.decide(req, 'k').decision, 'allow');
    assert.deepEqual(engine.bundleDigests, [get('reads').digest]);
    const pending = engine.replaceBundles([get('nothing')]);
    assert.equal(engine.decide(req, 'k').decision, 'allow', 'the old set serves until the new one is loaded');
    await pending;
    assert.equal(engine.cacheStats().size, 0);
    assert.equal(engine.decide(req, 'k').decision, 'deny');
    assert.deepEqual(engine.bundleDigests, [get('nothing').digest]);
  });

  it('the last of overlapping replaceBundles calls wins', async () => {
    const engine = new PolicyEngine();
    const a = engine.replaceBundles([get('reads')]);
    const b = engine.replaceBundles([get('nothing'), get('reads')]);
    await Promise.all([a, b]);
    assert.deepEqual(
      engine.bundles().map((x) => x.policy),
      ['team/nothing', 'team/reads'],
    );
  });

  it('adds a minute bucket to the key only when a bundle uses time windows', async () => {
    let now = Date.parse('2025-01-15T14:00:10Z'); // 09:00 in New York
    const engine = new PolicyEngine({ clock: () => now });
    const req = request(sql(stmt('select')));
    await engine.replaceBundles([get('hours')]);
    assert.equal(engine.decide(req, 'k').decision, 'allow');
    now += 30_000;
    engine.decide(req, 'k');
    assert.deepEqual(engine.cacheStats(), { hits: 1, misses: 1, size: 1 });
    now = Date.parse('2025-01-15T22:00:00Z'); // 17:00 in New York
    assert.equal(engine.decide(req, 'k').decision, 'deny', 'a new minute is a new key');
    assert.equal(engine.cacheStats().size, 2);

    const plain = new PolicyEngine({ clock: () => now });
    await plain.replaceBundles([get('reads')]);
    plain.decide(req, 'k');
    now += 3_600_000;
    plain.decide(req, 'k');
    assert.deepEqual(plain.cacheStats(), { hits: 1, misses: 1, size: 1 });
  });

  it('bypasses the cache while a bundle carries raw Rego', async () => {
    let now = 0;
    const engine = new PolicyEngine({ clock: () => now });
    await engine.replaceBundles([get('rego')]);
    const req = request(sql(stmt('select')));
    assert.equal(engine.decide(req, 'k').decision, 'allow');
    now = 5000;
    assert.equal(engine.decide(req, 'k').decision, 'deny');
    assert.equal(engine.cacheStats().size, 0);
  });

  it('turns a malformed policy result into a deny', async () => {
    const engine = new PolicyEngine();
    await engine.replaceBundles([
      rawBundle(
        'team/bad',
        'package chaperone.policy\n\nresult := {"applicable": true, "decision": "maybe", "rule": "x", "reasons": [], "masking": []}\n',
      ),
    ]);
    const got = engine.decide(request(sql(stmt('select'))));
    assert.equal(got.decision, 'deny');
    assert.equal(got.rule, 'invalid-result');
    assert.match(got.reasons[0] ?? '', /team\/bad: result.decision/);
  });

  it('turns an undefined result and an evaluation error into a deny', async () => {
    const engine = new PolicyEngine();
    await engine.replaceBundles([
      rawBundle('team/undef', 'package chaperone.policy\n\nresult := 1 if input.nothing\n'),
      rawBundle(
        'team/conflict',
        'package chaperone.policy\n\nresult := 1 if input.version\n\nresult := 2 if input.version\n',
      ),
    ]);
    const { evaluated } = engine.evaluateAll(request(sql()));
    assert.deepEqual(
      evaluated.map((e) => [e.policy, e.result.decision, e.result.rule]),
      [
        ['team/conflict', 'deny', 'evaluation-error'],
        ['team/undef', 'deny', 'invalid-result'],
      ],
    );
  });

  it('keeps a bundle that fails to load as a deny (bad digest, bad bytes)', async () => {
    const engine = new PolicyEngine();
    const good = get('reads');
    await engine.replaceBundles([
      { ...good, manifest: { ...good.manifest, policy: 'team/tampered' } },
      { wasm: new Uint8Array([0, 1, 2]), manifest: { ...good.manifest, policy: 'team/garbage' }, digest: 'sha256:x' },
    ]);
    const status = engine.bundles();
    assert.match(status[0]?.error ?? '', /digest/);
    assert.match(status[1]?.error ?? '', /digest/);
    const noVerify = new PolicyEngine({ verifyDigests: false });
    await noVerify.replaceBundles([{ wasm: new Uint8Array([0, 1, 2]), manifest: good.manifest, digest: 'sha256:x' }]);
    assert.match(noVerify.bundles()[0]?.error ?? '', /failed to load/);
    const got = engine.decide(request(sql(stmt('select'))));
    assert.equal(got.decision, 'deny');
    assert.equal(got.rule, 'load-error');
  });
});

describe('DecisionCache', () => {
  it('evicts the least recently used entry', () => {
    const c = new DecisionCache<number>(2);
    c.set('a', 1);
    c.set('b', 2);
    assert.equal(c.get('a'), 1);
    c.set('c', 3);
    assert.equal(c.get('b'), undefined);
    assert.equal(c.get('a'), 1);
    assert.equal(c.get('c'), 3);
    c.clear();
    assert.equal(c.stats().size, 0);
  });

  it('stays within its capacity under churn and drops the oldest entries first, in batches', () => {
    const c = new DecisionCache<number>(64);
    for (let i = 0; i < 1000; i++) {
      c.set(`k${String(i)}`, i);
      assert.ok(c.stats().size <= 64);
    }
    // A batch is capacity / 16 = 4 entries: after the last eviction between 61 and 64 are kept, the newest.
    assert.ok(c.stats().size >= 61);
    assert.equal(c.get('k999'), 999);
    assert.equal(c.get('k936'), 936);
    assert.equal(c.get('k900'), undefined);
  });

  it('capacity 0 disables caching', () => {
    const c = new DecisionCache<number>(0);
    c.set('a', 1);
    assert.equal(c.get('a'), undefined);
  });
});

describe('ZonedClock', () => {
  it('gives weekday and minute per zone, UTC always included', () => {
    const clock = new ZonedClock(['Asia/Kolkata', 'America/New_York']);
    assert.deepEqual(clock.zoneNames, ['America/New_York', 'Asia/Kolkata', 'UTC']);
    assert.deepEqual(clock.at(Date.parse('2025-01-19T23:50:00Z')), {
      'America/New_York': { weekday: 'Sun', minute: 18 * 60 + 50 },
      'Asia/Kolkata': { weekday: 'Mon', minute: 5 * 60 + 20 },
      UTC: { weekday: 'Sun', minute: 23 * 60 + 50 },
    });
    assert.deepEqual(clock.at(Date.parse('2025-01-20T00:00:00Z')).UTC, { weekday: 'Mon', minute: 0 });
  });
});
