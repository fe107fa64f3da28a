// The fast JCS serializer and the sealed-record path against the reference (`canonicalize`), on many
// generated values: the hash chain must stay recomputable by any JCS implementation (docs/audit.md).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import canonicalize from 'canonicalize';
import { jcs, jcsMembersAround } from './jcs.ts';
import {
  AUDIT_EVENT_TYPES,
  canonicalRecordText,
  formatAuditTime,
  formatAuditTimeSlow,
  hashRecord,
  sealRecord,
  verifyChain,
  type AuditRecord,
  type UnhashedRecord,
} from './index.ts';

/** Deterministic PRNG (mulberry32), so a failure can be reproduced from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  'a',
  'Z',
  ' ',
  '"',
  '\\',
  '/',
  '\n',
  '\r',
  '\t',
  '\b',
  '\f',
  '\u0000',
  '\u0001',
  '\u001f',
  '\u007f',
  '\u0080',
  'é',
  'ß',
  '€',
  '\u2028',
  '\u2029',
  '\ufeff',
  '\uffff',
  '😀',
  '𝄞',
  '中文',
  "'",
  '$$',
  '--',
  '/*',
  'SELECT 1',
  '<script>',
  '%s',
  '\u00a0',
];

const NUMBERS = [
  0,
  -0,
  1,
  -1,
  42,
  2147483647,
  2147483648,
  -2147483649,
  Number.MAX_SAFE_INTEGER,
  -Number.MAX_SAFE_INTEGER,
  2 ** 53 + 2,
  1e21,
  1e-7,
  1e-6,
  0.1,
  0.30000000000000004,
  123.456,
  -5e-324,
  5e-324,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  1.7976931348623157e308,
  333333333.3333333,
  4.35,
  0.000001,
  100,
  1e20,
  1e22,
];

function gen(rand: () => number) {
  const int = (n: number) => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  const string = (max = 12): string => {
    let s = '';
    const n = int(max);
    for (let i = 0; i < n; i++) s += rand() < 0.3 ? String.fromCharCode(32 + int(95)) : pick(PIECES);
    return s;
  };
  const number = (): number => {
    switch (int(4)) {
      case 0:
        return pick(NUMBERS);
      case 1:
        return int(1_000_000_000);
      case 2:
        return (rand() - 0.5) * 10 ** int(30);
      default:
        return -int(1000);
    }
  };
  const json = (depth: number): unknown => {
    switch (depth > 3 ? int(4) : int(7)) {
      case 0:
        return string();
      case 1:
        return number();
      case 2:
        return rand() < 0.5;
      case 3:
        return null;
      case 4: {
        const a: unknown[] = [];
        for (let i = int(5); i > 0; i--) a.push(json(depth + 1));
        return a;
      }
      default: {
        const o: Record<string, unknown> = {};
        for (let i = int(6); i > 0; i--) o[string(6)] = json(depth + 1);
        return o;
      }
    }
  };
  const maybe = <T>(f: () => T): T | undefined => (rand() < 0.5 ? f() : undefined);
  const unhashed = (): UnhashedRecord => {
    const r: Record<string, unknown> = {
      v: 1,
      seq: 1 + int(100000),
      time: formatAuditTime(BigInt(int(2 ** 31)) * 1000000n + BigInt(int(1000000))),
      type: pick(AUDIT_EVENT_TYPES),
    };
    const optional: Record<string, () => unknown> = {
      identity: () => ({
        subject: string(),
        issuer: string(),
        ...(rand() < 0.5 ? { groups: [string(), string()] } : {}),
        ...(rand() < 0.5 ? { kind: string() } : {}),
        ...(rand() < 0.5 ? { chain: [{ subject: string(), issuer: string() }, { subject: string() }] } : {}),
        ...(rand() < 0.5 ? { tokenHash: `sha256:${'ab'.repeat(32)}` } : {}),
        ...(rand() < 0.5 ? { claims: { [string(5)]: string(), [string(5)]: string(), pod: string() } } : {}),
      }),
      source: () => ({ address: string(), applicationName: string(), user: string(), database: string() }),
      command: () => ({
        id: 1 + int(1000),
        kind: pick(['sql', 'kubernetes', 'http']),
        ...(rand() < 0.7 ? { text: string(40) } : {}),
        ...(rand() < 0.2 ? { truncated: rand() < 0.5 } : {}),
        ...(rand() < 0.4 ? { parameters: [string(), 'NULL', string()] } : {}),
        ...(rand() < 0.6 ? { statementKinds: [pick(['select', 'insert', 'ddl'])] } : {}),
        ...(rand() < 0.6 ? { relations: [string(), 'public.t'] } : {}),
      }),
      decision: () => ({
        result: pick(['allow', 'deny', 'approve']),
        ...(rand() < 0.5 ? { policy: string() } : {}),
        rule: string(),
        ...(rand() < 0.5 ? { bundleDigest: `sha256:${'0f'.repeat(32)}` } : {}),
        ...(rand() < 0.5 ? { reasons: [string(), string()] } : {}),
        ...(rand() < 0.2 ? { approval: string() } : {}),
      }),
      outcome: () => ({
        status: pick(['success', 'error', 'denied', 'cancelled']),
        ...(rand() < 0.5 ? { code: string(5) } : {}),
        ...(rand() < 0.5 ? { message: string(30) } : {}),
        ...(rand() < 0.5 ? { rows: number() } : {}),
        ...(rand() < 0.5 ? { durationMicros: int(10 ** 9) } : {}),
      }),
      gap: () => ({ lostRecords: int(100), reason: string() }),
      // Not in the schema: a generic value where a future field might be.
      extra: () => json(0),
    };
    for (const [key, make] of Object.entries(optional)) {
      const v = maybe(make);
      if (v !== undefined) r[key] = v;
      else if (rand() < 0.05) r[key] = undefined; // present but undefined: omitted by both
    }
    r.prevHash = `sha256:${'12'.repeat(32)}`;
    // Insertion order should not matter: shuffle the keys.
    const keys = Object.keys(r).sort(() => rand() - 0.5);
    const shuffled: Record<string, unknown> = {};
    for (const k of keys) shuffled[k] = r[k];
    return shuffled as unknown as UnhashedRecord;
  };
  return { json, unhashed, string };
}

/** A copy with every object's keys inserted in sorted order: the values take jcs's JSON.stringify path. */
function sortedCopy(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortedCopy);
  if (typeof v !== 'object' || v === null) return v;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v).sort()) out[k] = sortedCopy((v as Record<string, unknown>)[k]);
  return out;
}

describe('jcs', () => {
  it('is byte-identical to canonicalize on generated JSON values', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const g = gen(prng(seed));
      for (let i = 0; i < 500; i++) {
        const v = g.json(0);
        assert.equal(jcs(v), canonicalize(v), `seed ${String(seed)} #${String(i)}`);
        const sorted = sortedCopy(v);
        assert.equal(jcs(sorted), canonicalize(sorted), `seed ${String(seed)} #${String(i)}, sorted`);
      }
    }
  });

  it('is byte-identical to canonicalize on generated audit records', () => {
    const g = gen(prng(7));
    for (let i = 0; i < 5000; i++) {
      const r = g.unhashed();
      assert.equal(jcs(r), canonicalize(r));
      const sorted = sortedCopy(r);
      assert.equal(jcs(sorted), canonicalize(sorted));
    }
  });

  it('matches canonicalize on values outside plain JSON (results and errors)', () => {
    class Point {
      x = 1;
      y = 2;
    }
    const nullProto = Object.assign(Object.create(null) as Record<string, unknown>, { b: 1, a: [2] });
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    const deep: unknown[] = [];
    let cur = deep;
    for (let i = 0; i < 200; i++) {
      const next: unknown[] = [];
      cur.push(next, i);
      cur = next;
    }
    const shared = { z: 1 };
    const values: unknown[] = [
      undefined,
      null,
      'x',
      1,
      true,
      () => 1,
      Symbol('s'),
      { a: undefined, b: () => 1, c: Symbol('c'), d: 1 },
      [undefined, () => 1, Symbol('x'), 1],
      // eslint-disable-next-line no-sparse-arrays
      [1, , 3],
      new Date(0),
      { when: new Date(1e12) },
      { toJSON: () => ({ b: 2, a: 1 }) },
      { nested: { toJSON: () => undefined }, x: 1 },
      { toJSON: 'not a function', a: 1 },
      [{ toJSON: () => undefined }],
      Object.assign(new Number(5), {}),
      { n: new String('s'), b: new Boolean(false) },
      new Point(),
      { p: new Point() },
      nullProto,
      new Map([[1, 2]]),
      { big: 1n },
      1n,
      NaN,
      { n: Infinity },
      [-Infinity],
      '\ud800',
      { '\udc00': 1 },
      { a: 'ok\ud83d' },
      cyclic,
      deep,
      { a: shared, b: shared },
      Object.defineProperty({ a: 1 }, 'hidden', { value: 2, enumerable: false }),
      { [Symbol('k')]: 1, k: 2 },
      { 10: 'a', 9: 'b', '-1': 'c', '': 'd', é: 1, e: 2, E: 3, '😀': 4, '\uffff': 5 },
      { a: 1, b: { c: [1, 'x', null, true], d: 'é' } },
      JSON.parse('{"__proto__": 1, "a": 2}'),
      JSON.parse('{"z": {"__proto__": {"x": 1}}, "a": 2}'),
      { b: 1, a: 2 },
      [{ b: 1, a: 2 }],
    ];
    for (const v of values) {
      let expected: { ok: string | undefined } | { error: string };
      try {
        expected = { ok: canonicalize(v) };
      } catch (err) {
        expected = { error: String(err) };
      }
      let actual: { ok: string | undefined } | { error: string };
      try {
        actual = { ok: jcs(v) };
      } catch (err) {
        actual = { error: String(err) };
      }
      assert.deepEqual(actual, expected);
    }
  });

  it('splits members around a key', () => {
    const parts = jcsMembersAround({ z: 1, a: 2, i: undefined }, 'hash');
    assert.deepEqual(parts, { before: '"a":2', after: '"z":1' });
    assert.equal(jcsMembersAround({ hash: 1 }, 'hash'), undefined);
    assert.equal(jcsMembersAround({ d: new Date(0) }, 'hash'), undefined);
    assert.deepEqual(jcsMembersAround({}, 'hash'), { before: '', after: '' });
  });
});

describe('sealRecord', () => {
  it('hashes as hashRecord does and keeps the canonical text of the sealed record', () => {
    const g = gen(prng(11));
    let prevHash = `sha256:${'0'.repeat(64)}`;
    const chain: AuditRecord[] = [];
    for (let i = 0; i < 3000; i++) {
      const generated = { ...g.unhashed(), seq: i + 1, prevHash };
      // Half with sorted keys (the JSON.stringify path), half as generated (the general path).
      const unhashed = (i % 2 === 0 ? sortedCopy(generated) : generated) as UnhashedRecord;
      const { record: sealed, canonical, compact } = sealRecord(unhashed);
      assert.equal(sealed.hash, hashRecord(unhashed));
      assert.equal(sealed.hash, hashRecord(sealed));
      assert.equal(canonical, canonicalize(sealed));
      assert.equal(canonicalRecordText(sealed), canonical);
      // The compact JSON-lines text: the same record without prevHash, the hash in base64url.
      const { prevHash: _link, hash, ...rest } = sealed;
      const b64 = Buffer.from(hash.slice('sha256:'.length), 'hex').toString('base64url');
      assert.equal(compact, canonicalize({ ...rest, hash: b64 }));
      chain.push(sealed);
      prevHash = sealed.hash;
    }
    assert.deepEqual(verifyChain(chain), []);
  });

  it('handles records with nothing before or after the hash member, and non-plain values', () => {
    for (const unhashed of [
      { v: 1 },
      { command: { id: 1, kind: 'sql' } },
      {},
      { v: 1, extra: new Date(0) },
      { v: 1, hash: undefined },
      JSON.parse('{"__proto__": "x", "v": 1, "command": {"b": 1, "a": 2}}'),
      { v: 1, seq: 2, command: { id: 1, kind: 'sql', text: 'lone \ud800' } },
      { 9: 1, 10: 2, v: 1 },
    ] as unknown as UnhashedRecord[]) {
      let expected: string;
      try {
        expected = hashRecord(unhashed);
      } catch (err) {
        assert.throws(() => sealRecord(unhashed), { message: (err as Error).message });
        continue;
      }
      const { record: sealed, canonical } = sealRecord(unhashed);
      assert.equal(sealed.hash, expected);
      assert.equal(canonical, canonicalize(sealed));
    }
  });

  it('uses a known member text only for that very object, and seals as without it', () => {
    const identity = Object.freeze({ subject: 'a', groups: Object.freeze(['g']), issuer: 'https://i' });
    const known = [{ key: 'identity', value: identity, text: jcs(identity) ?? '' }];
    // A stale text for another object of equal content must not be used: only the same object counts.
    const stale = [{ key: 'identity', value: { ...identity }, text: '{"subject":"forged"}' }];
    const g = gen(prng(5));
    for (let i = 0; i < 500; i++) {
      const unhashed = { ...g.unhashed(), seq: i + 1, identity } as unknown as UnhashedRecord;
      const plain = sealRecord(unhashed);
      for (const k of [known, stale]) {
        const sealed = sealRecord(unhashed, k);
        assert.equal(sealed.record.hash, plain.record.hash);
        assert.equal(sealed.canonical, plain.canonical);
        assert.equal(sealed.canonical, canonicalize(sealed.record));
      }
    }
    // A member sorting between `hash` and the known key: the known text is not spliced in first.
    const between = { v: 1, i: 2, identity } as unknown as UnhashedRecord;
    assert.equal(sealRecord(between, known).canonical, canonicalize(sealRecord(between).record));
  });

  it('canonicalRecordText computes the text of a record that was not sealed', () => {
    const record = { v: 1, seq: 1, hash: 'sha256:x', type: 'session.end' } as unknown as AuditRecord;
    assert.equal(canonicalRecordText(record), canonicalize(record));
  });
});

describe('formatAuditTime', () => {
  it('formats as the general form does', () => {
    const rand = prng(3);
    const samples: bigint[] = [
      0n,
      1n,
      999999n,
      1000000n,
      1000001n,
      59999999n,
      86400000000n - 1n,
      86400000000n,
      1795790103588123n,
      1795790103999999n,
      1795790104000000n,
      951782400000000n, // 2000-02-29
      4102444800000000n - 1n,
      253402300799999999n, // 9999-12-31T23:59:59.999999Z
      253402300800000000n, // year 10000: general form
      BigInt(Number.MAX_SAFE_INTEGER),
      BigInt(Number.MAX_SAFE_INTEGER) + 1n,
      BigInt(Number.MAX_SAFE_INTEGER) + 2n,
      -1n,
      -1000000n,
      -62135596800000000n,
    ];
    for (let i = 0; i < 20000; i++)
      samples.push(BigInt(Math.floor(rand() * 4102444800)) * 1000000n + BigInt(Math.floor(rand() * 1000000)));
    // Consecutive values in one second, and across a second boundary, use the per-second cache.
    for (let i = 0n; i < 3000n; i++) samples.push(1795790103998500n + i);
    for (const t of samples) {
      let expected: string;
      try {
        expected = formatAuditTimeSlow(t);
      } catch (err) {
        assert.throws(() => formatAuditTime(t), { message: (err as Error).message });
        continue;
      }
      assert.equal(formatAuditTime(t), expected, String(t));
    }
    assert.equal(formatAuditTime(1795790103000001n), '2026-11-27T14:35:03.000001Z');
  });
});
