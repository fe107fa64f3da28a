// RFC 8785 (JCS) canonical JSON, fast path for plain data. Byte-identical to the `canonicalize` package
// (the reference the hash chain is specified against, docs/audit.md) for every value: plain objects,
// arrays, strings, finite numbers, booleans and null are serialised here; anything else (toJSON, boxed
// primitives, class instances, bigint, non-finite numbers, lone surrogates, very deep or cyclic values)
// is handed to `canonicalize` itself, so its output and its errors are exactly the reference's.
// jcs.test.ts compares both on generated values.
import canonicalize from 'canonicalize';

/** Deeper values go to the reference implementation, which also detects cycles. */
const MAX_DEPTH = 64;

/** Thrown inside the fast path when a value needs the reference implementation (one instance, no stack). */
class NeedsReference extends Error {
  override name = 'NeedsReference';
}
const NEEDS_REFERENCE = new NeedsReference('value needs the reference JCS implementation');

function str(value: string): string {
  if (!value.isWellFormed()) throw NEEDS_REFERENCE;
  return JSON.stringify(value);
}

/** Sorts by UTF-16 code units (the JCS order, also `sort()`'s default); insertion sort: keys are few and often sorted. */
function sortKeys(keys: string[]): string[] {
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i] as string;
    let j = i - 1;
    if ((keys[j] as string) <= key) continue;
    while (j >= 0 && (keys[j] as string) > key) {
      keys[j + 1] = keys[j] as string;
      j--;
    }
    keys[j + 1] = key;
  }
  return keys;
}

/** The member list of a plain object, `"k":v,...` without braces; '' when it has no members. */
function members(object: Record<string, unknown>, depth: number, omit?: string): string {
  const keys = sortKeys(Object.keys(object));
  let out = '';
  for (const key of keys) {
    if (key === omit) continue;
    const text = value(object[key], depth);
    if (text === undefined) continue;
    out += out === '' ? `${str(key)}:${text}` : `,${str(key)}:${text}`;
  }
  return out;
}

/** Serialises one value; undefined for values JSON omits (undefined, functions, symbols). */
function value(v: unknown, depth: number): string | undefined {
  switch (typeof v) {
    case 'string':
      return str(v);
    case 'number':
      if (!Number.isFinite(v)) throw NEEDS_REFERENCE;
      return JSON.stringify(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
    case 'object':
      return v === null ? 'null' : container(v, depth + 1);
    default:
      throw NEEDS_REFERENCE; // bigint
  }
}

function container(v: object, depth: number): string {
  if (depth > MAX_DEPTH) throw NEEDS_REFERENCE;
  const proto: unknown = Object.getPrototypeOf(v);
  if (Array.isArray(v)) {
    if (proto !== Array.prototype || typeof (v as { toJSON?: unknown }).toJSON === 'function') throw NEEDS_REFERENCE;
    let out = '[';
    for (let i = 0; i < v.length; i++) {
      if (i > 0) out += ',';
      out += value(v[i], depth) ?? 'null';
    }
    return `${out}]`;
  }
  if ((proto !== Object.prototype && proto !== null) || typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    throw NEEDS_REFERENCE;
  }
  return `{${members(v as Record<string, unknown>, depth)}}`;
}

function reference(v: unknown): string | undefined {
  return canonicalize(v);
}

/**
 * Whether JSON.stringify(v) is already v's JCS form: plain objects whose keys (in Object.keys order,
 * which is JSON.stringify's) are sorted by UTF-16 code units, plain arrays, well-formed strings, finite
 * numbers, booleans and null (undefined, functions and symbols are dropped or nulled alike by both).
 * Records built with their keys in sorted order take this path: one native JSON.stringify.
 */
function isCanonicalAsIs(v: unknown, depth: number): boolean {
  switch (typeof v) {
    case 'string':
      return v.isWellFormed();
    case 'number':
      return Number.isFinite(v);
    case 'boolean':
    case 'undefined':
    case 'function':
    case 'symbol':
      return true;
    case 'object': {
      if (v === null) return true;
      if (depth > MAX_DEPTH || typeof (v as { toJSON?: unknown }).toJSON === 'function') return false;
      const proto: unknown = Object.getPrototypeOf(v);
      if (Array.isArray(v)) {
        if (proto !== Array.prototype) return false;
        for (let i = 0; i < v.length; i++) if (!isCanonicalAsIs(v[i], depth + 1)) return false;
        return true;
      }
      if (proto !== Object.prototype && proto !== null) return false;
      const keys = Object.keys(v);
      let previous = '';
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i] as string;
        if ((i > 0 && !(previous < key)) || !key.isWellFormed()) return false;
        if (!isCanonicalAsIs((v as Record<string, unknown>)[key], depth + 1)) return false;
        previous = key;
      }
      return true;
    }
    default:
      return false; // bigint
  }
}

/** JCS text of `v`, exactly as `canonicalize(v)`: undefined for values with no JSON form; throws where it throws. */
export function jcs(v: unknown): string | undefined {
  // JSON.stringify returns undefined (typed as string) for undefined, functions and symbols, as canonicalize does.
  if (isCanonicalAsIs(v, 0)) return JSON.stringify(v);
  try {
    return value(v, 0);
  } catch (err) {
    if (err === NEEDS_REFERENCE) return reference(v);
    throw err;
  }
}

/**
 * A member value whose canonical text is known already: `text` is used for the member `key` when the
 * object's value there is `value` itself (the same object). The caller keeps `value` from changing (a
 * frozen object, as the decision member a cached decision's records share).
 */
export interface KnownMember {
  readonly key: string;
  readonly value: unknown;
  readonly text: string;
}

/** Quoted member names seen so far (records use a handful); bounded, since keys can come from data. */
const keyTexts = new Map<string, string>();

function keyText(key: string): string {
  let text = keyTexts.get(key);
  if (text === undefined) {
    text = str(key);
    if (keyTexts.size < 256) keyTexts.set(key, text);
  }
  return text;
}

/** The canonical text of one member value (one level down); throws NEEDS_REFERENCE where value() does. */
function memberValue(v: unknown, known: readonly KnownMember[] | undefined, key: string): string | undefined {
  if (known !== undefined) {
    for (const k of known) if (k.key === key && k.value === v) return k.text;
  }
  switch (typeof v) {
    case 'string':
      return str(v);
    case 'number':
      if (!Number.isFinite(v)) throw NEEDS_REFERENCE;
      return JSON.stringify(v);
    case 'object':
      // One native JSON.stringify when the value is canonical as it is (records build theirs in sorted order).
      if (v !== null && isCanonicalAsIs(v, 1)) return JSON.stringify(v);
      return value(v, 0);
    default:
      return value(v, 0);
  }
}

/**
 * A plain object's canonical members split around one key that is not in it: `before` holds the members
 * whose keys sort before `key`, `after` the rest. `{before,"key":x,after}` is then the canonical form of
 * the object with that key added, without serialising it again. Each member is serialised on its own;
 * `known` members (see KnownMember) are not serialised at all. Undefined when the object needs the
 * reference implementation (the caller then uses `jcs` on both forms).
 */
export function jcsMembersAround(
  object: Readonly<Record<string, unknown>>,
  key: string,
  known?: readonly KnownMember[],
): { readonly before: string; readonly after: string } | undefined {
  if (Object.getPrototypeOf(object) !== Object.prototype || typeof object.toJSON === 'function') return undefined;
  const keys = sortKeys(Object.keys(object));
  let before = '';
  let after = '';
  try {
    for (const k of keys) {
      if (k === key) return undefined;
      const text = memberValue(object[k], known, k);
      if (text === undefined) continue;
      const member = `${keyText(k)}:${text}`;
      if (k < key) before = before === '' ? member : `${before},${member}`;
      else after = after === '' ? member : `${after},${member}`;
    }
  } catch (err) {
    if (err === NEEDS_REFERENCE) return undefined;
    throw err;
  }
  return { before, after };
}

/**
 * As jcsMembersAround, split around two keys `first` < `second`, neither in the object: the members before
 * `first`, those between the two, and those after `second`.
 */
export function jcsMembersBetween(
  object: Readonly<Record<string, unknown>>,
  first: string,
  second: string,
  known?: readonly KnownMember[],
): readonly [before: string, between: string, after: string] | undefined {
  if (Object.getPrototypeOf(object) !== Object.prototype || typeof object.toJSON === 'function') return undefined;
  const keys = sortKeys(Object.keys(object));
  let before = '';
  let between = '';
  let after = '';
  try {
    for (const k of keys) {
      if (k === first || k === second) return undefined;
      const text = memberValue(object[k], known, k);
      if (text === undefined) continue;
      const member = `${keyText(k)}:${text}`;
      if (k < first) before = before === '' ? member : `${before},${member}`;
      else if (k < second) between = between === '' ? member : `${between},${member}`;
      else after = after === '' ? member : `${after},${member}`;
    }
  } catch (err) {
    if (err === NEEDS_REFERENCE) return undefined;
    throw err;
  }
  return [before, between, after];
}
